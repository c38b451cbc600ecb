"""`POST /hooks/graph/{connection_id}`: where Microsoft Graph delivers change and lifecycle notifications.

No API key: Graph authenticates each notification with the subscription's clientState, which the
worker checks (in constant time) before acting; the connection id in the path is only a routing
hint. The receiver answers within milliseconds — Graph counts answers over 2.9 s as slow, delays
then drops an endpoint's notifications when too many are
(https://learn.microsoft.com/graph/change-notifications-delivery-webhooks) — so it only stores:

- `?validationToken=…` (on subscription create): echo the decoded token, 200, `text/plain`.
- a notification batch: mark the named copies stale, queue the body for the worker, 202.

`receiver_heartbeat` lets the worker see receiver outages: while the API runs it beats every
`every`; a silence over five minutes ends in a resync of every mailbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
from litestar import MediaType, Request, Response, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from calbroker.domain.errors import InvalidRequest
from calbroker.logs import get_logger
from calbroker.services import Services
from calbroker.services.sync import beat, store_graph_notifications

__all__ = ["graph_notifications", "receiver_heartbeat"]

log = get_logger(__name__)

MAX_NOTIFICATION_BYTES = 1024 * 1024


@post(
    "/hooks/graph/{connection_id:uuid}",
    # Microsoft's side of the contract, not the applications': it stays out of their OpenAPI document.
    include_in_schema=False,
    status_code=202,
    tags=["webhooks"],
    summary="Microsoft Graph change notifications (called by Microsoft, not by applications)",
    media_type=MediaType.TEXT,
    security=[],
)
async def graph_notifications(
    connection_id: FromPath[uuid.UUID], request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Response[str]:
    """The subscription validation handshake, or a batch of notifications stored for the worker."""
    token = request.query_params.get("validationToken")
    if token is not None:
        return Response(token, status_code=200, media_type=MediaType.TEXT)
    body = await request.body()
    if len(body) > MAX_NOTIFICATION_BYTES:
        raise InvalidRequest.field("body", f"a notification batch is at most {MAX_NOTIFICATION_BYTES} bytes")
    kept = await store_graph_notifications(services.pool, connection_id, body)
    services.metrics.notifications.labels("graph").inc(kept)
    if not kept:
        log.info("hooks.graph_ignored", connection_id=str(connection_id), bytes=len(body))
    return Response("", status_code=202, media_type=MediaType.TEXT)


@contextlib.asynccontextmanager
async def receiver_heartbeat(services: Services, every: timedelta = timedelta(seconds=30)) -> AsyncIterator[None]:
    """Beat for as long as the block runs (the API's lifespan)."""

    async def loop() -> None:
        while True:
            try:
                if await beat(services.pool):
                    log.warning("hooks.receiver_was_down")
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("hooks.heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(every.total_seconds())

    task = asyncio.create_task(loop(), name="calbroker-receiver-heartbeat")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
