"""`GET /v1/me`: which application a key belongs to (the first call every integrator makes)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import get
from litestar.di import NamedDependency

from calbroker.api.auth import Caller
from calbroker.api.problems import problem_responses

__all__ = ["me"]


class KeyInfo(msgspec.Struct):
    """The API key this request was made with (never the secret part)."""

    prefix: Annotated[str, msgspec.Meta(description="The key's public prefix, as shown by `calbroker apps list`")]
    created_at: Annotated[datetime, msgspec.Meta(description="When the key was issued")]
    last_used_at: Annotated[
        datetime | None, msgspec.Meta(description="Last use, updated at most once a minute; null if never")
    ]
    expires_at: Annotated[
        datetime | None,
        msgspec.Meta(
            description="When this key stops working, after `calbroker apps rotate-key --keep-old-for`: "
            "switch to the new key before then; null if it does not expire"
        ),
    ] = None


class Me(msgspec.Struct):
    """The application an API key belongs to."""

    id: Annotated[str, msgspec.Meta(description="The application's id")]
    name: Annotated[str, msgspec.Meta(description="The application's name, as given to `calbroker apps create`")]
    created_at: Annotated[datetime, msgspec.Meta(description="When the application was created")]
    api_key: Annotated[KeyInfo, msgspec.Meta(description="The key used for this request")]


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
        api_key=KeyInfo(
            prefix=key.prefix, created_at=key.created_at, last_used_at=key.last_used_at, expires_at=key.expires_at
        ),
    )
