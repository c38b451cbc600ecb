"""Who is calling the compat API: an account token, a service-account token, or the client secret.

Cronofy has three bearer credentials (cronofy.md §1): account tokens (one mailbox), service-account
tokens (Enterprise Connect: one connection), and the application's client secret used as an API key.
A router guard resolves whichever was sent; each handler then asks for the kind and scope it needs,
so an endpoint cannot forget to check them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from calbroker.api.compat.cronofy.errors import insufficient_scope
from calbroker.api.dependencies import provide_services
from calbroker.domain.errors import Unauthenticated
from calbroker.store.cronofy import (
    SERVICE_ACCOUNT_SCOPE,
    Account,
    CronofyClient,
    Grant,
    authenticate_token,
    client_by_secret,
)

__all__ = [
    "SERVICE_ACCOUNT_SCOPE",
    "Caller",
    "account_caller",
    "caller_of",
    "expand_scope",
    "require_cronofy_token",
    "service_account_caller",
]


_COMPOSITES: dict[str, frozenset[str]] = {
    "read_only": frozenset({"read_account", "list_calendars", "read_events", "read_free_busy"}),
    "read_write": frozenset(
        {"read_account", "list_calendars", "read_events", "read_free_busy", "create_event", "delete_event"}
    ),
    "write_only": frozenset({"read_account", "list_calendars", "create_event", "delete_event"}),
    "free_busy": frozenset({"read_account", "list_calendars", "read_free_busy"}),
    "free_busy_write": frozenset({"read_account", "list_calendars", "read_free_busy", "create_event", "delete_event"}),
    # Reading events reveals free/busy, so the narrower grant follows from the wider one.
    "read_events": frozenset({"read_events", "read_free_busy"}),
}
EVENT_SCOPES = frozenset({"read_events", "create_event", "delete_event"})


def expand_scope(scope: str) -> frozenset[str]:
    """Cronofy's space-separated scope with its composite names (`read_write`…) spelled out."""
    found: set[str] = set()
    for name in scope.split():
        found |= _COMPOSITES.get(name, frozenset({name}))
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class Caller:
    """The client behind the request and, for a token, the grant it stands for."""

    client: CronofyClient
    grant: Grant | None


async def require_cronofy_token(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """Guard: `Authorization: Bearer <access token | client secret>`, or 401."""
    header = connection.headers.get("authorization", "")
    scheme, _sep, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("Send `Authorization: Bearer <access token>`.", reason="invalid_request")
    services = provide_services(connection.app.state)
    async with services.pool.acquire() as conn:
        grant = await authenticate_token(conn, token)
        client = grant.client if grant is not None else await client_by_secret(conn, token)
    if client is None:
        raise Unauthenticated("The access token is unknown, expired or revoked.")
    connection.scope["state"]["application_id"] = str(client.application_id)
    connection.state.cronofy = Caller(client, grant)


def caller_of(request: Request[Any, Any, Any]) -> Caller:
    caller = request.state.get("cronofy")
    if not isinstance(caller, Caller):
        raise Unauthenticated("Send `Authorization: Bearer <access token>`.", reason="invalid_request")
    return caller


def account_caller(request: Request[Any, Any, Any], scope: str | None = None) -> tuple[Grant, Account]:
    """An account token with `scope`, or 401 (another kind of credential) / 403 (scope not granted)."""
    caller = caller_of(request)
    grant = caller.grant
    if grant is None or grant.account is None:
        raise Unauthenticated("This endpoint needs an account access token (from /oauth/token).")
    if scope is not None and scope not in expand_scope(grant.scope):
        raise insufficient_scope(scope)
    return grant, grant.account


def service_account_caller(request: Request[Any, Any, Any]) -> Grant:
    """A service-account token (Enterprise Connect), or 401."""
    caller = caller_of(request)
    grant = caller.grant
    if grant is None or grant.account is not None:
        raise Unauthenticated("This endpoint needs a service-account access token.")
    if SERVICE_ACCOUNT_SCOPE not in expand_scope(grant.scope):
        raise insufficient_scope(SERVICE_ACCOUNT_SCOPE)
    return grant
