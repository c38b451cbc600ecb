"""`GET /v1/me`: which application a key belongs to (the first call every integrator makes)."""

from __future__ import annotations

from datetime import datetime

import msgspec
from litestar import get
from litestar.di import NamedDependency

from calbroker.api.auth import Caller
from calbroker.api.problems import problem_responses

__all__ = ["me"]


class KeyInfo(msgspec.Struct):
    prefix: str
    created_at: datetime
    last_used_at: datetime | None


class Me(msgspec.Struct):
    id: str
    name: str
    created_at: datetime
    api_key: KeyInfo


@get(
    "/me",
    operation_id="getMe",
    tags=["applications"],
    summary="The application calling the API",
    responses=problem_responses(),
)
async def me(caller: NamedDependency[Caller]) -> Me:
    app = caller.application
    key = caller.key
    return Me(
        id=str(app.id),
        name=app.name,
        created_at=app.created_at,
        api_key=KeyInfo(prefix=key.prefix, created_at=key.created_at, last_used_at=key.last_used_at),
    )
