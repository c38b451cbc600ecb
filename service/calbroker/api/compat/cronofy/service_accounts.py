"""`POST /v1/service_account_authorizations`: Enterprise Connect's per-mailbox authorization.

With a service-account token (one connection), the application asks for mailboxes; calbroker checks
each against Microsoft through the connection, then (in the transaction that issues its code) puts the
callback on the channels' outbox and answers 202. `calbroker worker` POSTs `{"authorization": {"code",
"state"}}` to `callback_url` (or `{"authorization": {"error", "error_description", "state"}}`), as
Cronofy does, at least once and with the native retries and delivery log, whatever happens to the
process that answered. The code redeems at `/oauth/token` with `redirect_uri` = `callback_url` for
that mailbox's account token. `callback_url` is the application's input: it passes the URL policy when
the request is made and again on every attempt.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency

from calbroker.api.compat.cronofy.auth import EVENT_SCOPES, expand_scope, service_account_caller
from calbroker.api.compat.cronofy.oauth import CODE_TTL
from calbroker.api.compat.cronofy.wire import Body, decode_body
from calbroker.domain.connections import normalize_email, route_mailbox
from calbroker.domain.errors import CalbrokerError, InvalidRequest
from calbroker.logs import get_logger
from calbroker.providers.protocol import Deadline
from calbroker.services import Services
from calbroker.services.cronofy import queue_authorization_callback
from calbroker.store.connections import get_connection
from calbroker.store.cronofy import Grant, issue_code, save_account
from calbroker.store.database import Connection as DbConnection

__all__ = ["authorize_mailboxes"]

log = get_logger(__name__)

MAX_BATCH = 50
_CONCURRENT_CHECKS = 8


class _Authorization(Body):
    email: str
    scope: str
    callback_url: str
    state: str | None = None


class _Batch(Body):
    service_account_authorizations: Annotated[list[_Authorization], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]
    state: str | None = None


def _failure(error: str, description: str) -> dict[str, Any]:
    return {"error": error, "error_description": description}


async def _check(services: Services, grant: Grant, item: _Authorization, email: str) -> dict[str, Any] | None:
    """Whether the connection may grant `item` for the mailbox: None if so, else the failure to call back."""
    deadline = Deadline.after(services.settings.upstream_deadline_s)
    try:
        async with services.pool.acquire() as conn:
            connection = await get_connection(conn, grant.client.application_id, grant.connection_id)
        route_mailbox([connection], email)
        if not connection.access_level.opens_calendars and expand_scope(item.scope) & EVENT_SCOPES:
            return _failure(
                "unable_to_grant_scope",
                f"{connection.display_name!r} has free/busy-only access; ask for the free_busy scope.",
            )
        error = await services.upstream.verify(connection, email, deadline)
    except CalbrokerError as exc:
        return _failure(exc.slug.replace("-", "_"), exc.detail)
    return _failure(error.slug.replace("-", "_"), error.detail) if error is not None else None


async def _queue_callback(
    conn: DbConnection,
    services: Services,
    grant: Grant,
    item: _Authorization,
    email: str,
    *,
    state: str | None,
    refused: dict[str, Any] | None,
) -> None:
    """Issue the mailbox's code (unless refused) and queue its callback, in the caller's transaction."""
    client = grant.client
    if refused is None:
        account = await save_account(conn, client, grant.connection_id, email)
        code = await issue_code(
            conn, client, redirect_uri=item.callback_url, scope=item.scope, account=account, ttl=CODE_TTL
        )
        authorization: dict[str, Any] = {"code": code, "state": state}
    else:
        authorization = {**refused, "state": state}
    await queue_authorization_callback(conn, services, client, item.callback_url, authorization, mailbox=email)
    log.info("cronofy.service_account_authorization", granted=refused is None)


@post("/service_account_authorizations", status_code=202, include_in_schema=False)
async def authorize_mailboxes(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[None]:
    """One `{email, scope, callback_url, state}` or a batch of 1 to 50 under `service_account_authorizations`."""
    grant = service_account_caller(request)
    raw = await request.body()
    try:
        shape = msgspec.json.decode(raw or b"{}")
    except msgspec.DecodeError:
        shape = None
    if isinstance(shape, dict) and "service_account_authorizations" in shape:
        batch = await decode_body(request, _Batch)
        entries = [
            (f"service_account_authorizations[{i}]", a, a.state or batch.state)
            for i, a in enumerate(batch.service_account_authorizations)
        ]
    else:
        single = await decode_body(request, _Authorization)
        entries = [("", single, single.state)]
    checked: list[tuple[_Authorization, str, str | None]] = []
    for prefix, item, state in entries:
        where = f"{prefix}." if prefix else ""
        email = normalize_email(item.email, field_name=f"{where}email")
        if not item.scope.strip():
            raise InvalidRequest.field(f"{where}scope", "is required, e.g. read_write or free_busy")
        await services.callbacks.check(item.callback_url, field=f"{where}callback_url")
        checked.append((item, email, state))
    limit = asyncio.Semaphore(_CONCURRENT_CHECKS)

    async def check(item: _Authorization, email: str) -> dict[str, Any] | None:
        async with limit:
            return await _check(services, grant, item, email)

    async with asyncio.TaskGroup() as group:
        verdicts = [group.create_task(check(item, email)) for item, email, _state in checked]
    # Every code and callback of the request in one transaction: all are queued, or none (and no 202).
    async with services.pool.acquire() as conn, conn.transaction():
        for (item, email, state), verdict in zip(checked, verdicts, strict=True):
            await _queue_callback(conn, services, grant, item, email, state=state, refused=verdict.result())
    return Response(None, status_code=202)
