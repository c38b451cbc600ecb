"""Push channels: `POST`, `GET` and `DELETE /v1/channels` (cronofy.md §2.5), on the native outbox.

A channel belongs to the account whose token made it. Its notifications (`verification`, `change`
with `changes_since`, `profile_disconnected`) are signed in `Cronofy-HMAC-SHA256` with the client
secret and delivered by `calbroker worker` at least once, with the native retries and delivery log.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from calbroker.api.compat.cronofy.auth import account_caller
from calbroker.api.compat.cronofy.wire import Body, decode_body
from calbroker.domain.errors import InvalidRequest
from calbroker.services import Services
from calbroker.services.cronofy import close_push_channel, open_push_channel
from calbroker.store.cronofy import Account, CronofyChannel, account_channels

__all__ = ["close_channel", "create_channel", "list_channels"]

MAX_CALLBACK_URL = 2000


class _Filters(Body):
    calendar_ids: list[str] = msgspec.field(default_factory=list)
    only_managed: bool = False


class _NewChannel(Body):
    callback_url: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CALLBACK_URL)]
    filters: _Filters | None = None


def channel_out(channel: CronofyChannel) -> dict[str, Any]:
    filters: dict[str, Any] = {"only_managed": channel.only_managed}
    if channel.calendar_ids:
        filters["calendar_ids"] = list(channel.calendar_ids)
    return {"channel_id": channel.public_id, "callback_url": channel.callback_url, "filters": filters}


def _calendars(filters: _Filters, account: Account) -> list[str]:
    calendar_ids = list(dict.fromkeys(filters.calendar_ids))
    for i, calendar_id in enumerate(calendar_ids):
        if calendar_id != account.calendar_id:
            raise InvalidRequest.field(
                f"filters.calendar_ids[{i}]", f"{calendar_id!r} is not a calendar of this account"
            )
    return calendar_ids


@post("/channels", status_code=200, include_in_schema=False)
async def create_channel(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> dict[str, Any]:
    """`{callback_url, filters?: {calendar_ids, only_managed}}`; an identical request answers the same channel."""
    grant, account = account_caller(request, "read_free_busy")
    data = await decode_body(request, _NewChannel)
    filters = data.filters or _Filters()
    channel = await open_push_channel(
        services,
        grant.client,
        account,
        data.callback_url,
        _calendars(filters, account),
        only_managed=filters.only_managed,
    )
    return {"channel": channel_out(channel)}


@get("/channels", include_in_schema=False)
async def list_channels(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> dict[str, Any]:
    _grant, account = account_caller(request, "read_free_busy")
    async with services.pool.acquire() as conn:
        found = await account_channels(conn, account)
    return {"channels": [channel_out(c) for c in found]}


@delete("/channels/{channel_id:str}", status_code=202, include_in_schema=False)
async def close_channel(
    channel_id: FromPath[str], request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Response[None]:
    grant, account = account_caller(request, "read_free_busy")
    await close_push_channel(services, grant.client, account, channel_id)
    return Response(None, status_code=202)
