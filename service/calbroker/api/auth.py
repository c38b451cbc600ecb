"""API-key authentication for every /v1 route (a router guard, so no route can forget it)."""

from __future__ import annotations

from dataclasses import dataclass

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from calbroker.api.dependencies import provide_services
from calbroker.domain.errors import Unauthenticated
from calbroker.providers.protocol import Deadline
from calbroker.services import Bookings, ScheduleReader, Services
from calbroker.store.applications import ApiKey, Application, authenticate

__all__ = ["Caller", "provide_caller", "require_api_key"]


@dataclass(frozen=True, slots=True)
class Caller:
    """The application behind the request's API key, the services it is served by, and its request's
    upstream budget (retries and back-off included).

    The one dependency /v1 handlers take: Litestar resolves two or more dependencies of a handler
    concurrently, in a task group per request (litestar-org/litestar#4563), which cost a
    10-member availability request about as much as its engine.
    """

    application: Application
    key: ApiKey
    services: Services
    deadline: Deadline

    @property
    def schedules(self) -> ScheduleReader:
        return self.services.schedules

    @property
    def bookings(self) -> Bookings:
        return self.services.bookings


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
    deadline = Deadline.after(services.settings.upstream_deadline_s)
    connection.state.caller = Caller(application, key, services, deadline)


def provide_caller(request: Request) -> Caller:  # type: ignore[type-arg]
    """Dependency: the caller the guard authenticated."""
    caller = request.state.get("caller")
    if not isinstance(caller, Caller):
        raise Unauthenticated("This endpoint needs an API key.", reason="invalid_request")
    return caller
