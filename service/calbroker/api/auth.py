"""API-key authentication for every /v1 route (a router guard, so no route can forget it)."""

from __future__ import annotations

from dataclasses import dataclass

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from calbroker.api.dependencies import provide_services
from calbroker.domain.errors import Unauthenticated
from calbroker.store.applications import ApiKey, Application, authenticate

__all__ = ["Caller", "provide_caller", "require_api_key"]


@dataclass(frozen=True, slots=True)
class Caller:
    """The application behind the request's API key."""

    application: Application
    key: ApiKey


async def require_api_key(connection: ASGIConnection, _handler: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    """Guard: resolve `Authorization: Bearer <key>` or refuse with 401."""
    header = connection.headers.get("authorization")
    if not header:
        raise Unauthenticated(
            "This endpoint needs an API key: send `Authorization: Bearer <api key>`.",
            reason="invalid_request",
        )
    scheme, _sep, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("The Authorization header must use the Bearer scheme.", reason="invalid_request")
    services = provide_services(connection.app.state)
    async with services.pool.acquire() as conn:
        found = await authenticate(conn, token.strip())
    if found is None:
        raise Unauthenticated("The API key is malformed, unknown or revoked.")
    application, key = found
    connection.scope["state"]["application_id"] = str(application.id)
    connection.state.caller = Caller(application, key)


def provide_caller(request: Request) -> Caller:  # type: ignore[type-arg]
    """Dependency: the caller the guard authenticated."""
    caller = request.state.get("caller")
    if not isinstance(caller, Caller):
        raise Unauthenticated("This endpoint needs an API key.", reason="invalid_request")
    return caller
