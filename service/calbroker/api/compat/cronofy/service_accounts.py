"""`POST /v1/service_account_authorizations`: Enterprise Connect's per-mailbox authorization.

With a service-account token (one connection), the application asks for a mailbox; calbroker
answers 202 at once, then checks the mailbox against Microsoft through the connection and POSTs
`{"authorization": {"code", "state"}}` to `callback_url` (or `{"authorization": {"error",
"error_description", "state"}}`), as Cronofy does. The code redeems at `/oauth/token` with
`redirect_uri` = `callback_url` for that mailbox's account token. `callback_url` is the
application's input: it passes the URL policy when the request is made and again when called.

The callback is attempted (three tries within the request deadline) after the 202 by the process
that answered; it is not queued, so a process that stops in between does not send it, and the
application asks again.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, post
from litestar.background_tasks import BackgroundTask
from litestar.di import NamedDependency

from calbroker.api.compat.cronofy.auth import EVENT_SCOPES, expand_scope, service_account_caller
from calbroker.api.compat.cronofy.oauth import CODE_TTL
from calbroker.api.compat.cronofy.wire import Body, decode_body
from calbroker.domain.connections import normalize_email, route_mailbox
from calbroker.domain.errors import CalbrokerError, InvalidRequest
from calbroker.logs import get_logger
from calbroker.providers.protocol import Deadline
from calbroker.services import Services
from calbroker.store.connections import get_connection
from calbroker.store.cronofy import Grant, issue_code, save_account

__all__ = ["authorize_mailboxes"]

log = get_logger(__name__)

MAX_BATCH = 50


class _Authorization(Body):
    email: str
    scope: str
    callback_url: str
    state: str | None = None


class _Batch(Body):
    service_account_authorizations: Annotated[list[_Authorization], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]
    state: str | None = None


def _failure(error: str, description: str, state: str | None) -> dict[str, Any]:
    return {"authorization": {"error": error, "error_description": description, "state": state}}


async def _authorize_one(services: Services, grant: Grant, item: _Authorization, email: str, state: str | None) -> None:
    """Check the mailbox through the connection, then call back with a code or the reason it failed."""
    deadline = Deadline.after(services.settings.upstream_deadline_s)
    client = grant.client
    body: dict[str, Any]
    try:
        async with services.pool.acquire() as conn:
            connection = await get_connection(conn, client.application_id, grant.connection_id)
        route_mailbox([connection], email)
        if not connection.access_level.opens_calendars and expand_scope(item.scope) & EVENT_SCOPES:
            body = _failure(
                "unable_to_grant_scope",
                f"{connection.display_name!r} has free/busy-only access; ask for the free_busy scope.",
                state,
            )
        else:
            error = await services.upstream.verify(connection, email, deadline)
            if error is not None:
                body = _failure(error.slug.replace("-", "_"), error.detail, state)
            else:
                async with services.pool.acquire() as conn, conn.transaction():
                    account = await save_account(conn, client, connection.id, email)
                    code = await issue_code(
                        conn, client, redirect_uri=item.callback_url, scope=item.scope, account=account, ttl=CODE_TTL
                    )
                body = {"authorization": {"code": code, "state": state}}
    except CalbrokerError as exc:
        body = _failure(exc.slug.replace("-", "_"), exc.detail, state)
    delivered = await services.callbacks.post_json(item.callback_url, json.dumps(body).encode(), Deadline.after(30))
    log.info("cronofy.service_account_authorization", delivered=delivered, granted="error" not in body["authorization"])


async def _authorize_all(services: Services, grant: Grant, items: list[tuple[_Authorization, str, str | None]]) -> None:
    for item, email, state in items:
        try:
            await _authorize_one(services, grant, item, email, state)
        except Exception:
            log.exception("cronofy.service_account_authorization_failed")


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
    return Response(None, status_code=202, background=BackgroundTask(_authorize_all, services, grant, checked))
