"""Authorize links and the connections they create: `/v1/connect_links`, `/v1/connections[...]`.

An application sees only its own connections: every lookup is by (application, id), so another
application's id is simply not found (404), never forbidden (which would confirm it exists).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated
from urllib.parse import urlsplit

import msgspec
from litestar import delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import Body as BodyParam
from litestar.params import FromPath, QueryParameter

from calbroker.api.auth import Caller
from calbroker.api.problems import EmbeddedProblem, embedded_problem, problem_response, problem_responses
from calbroker.api.wire import EMAIL_PATTERN, Body, Response, doc, text
from calbroker.config import Settings
from calbroker.domain.connections import (
    AccessLevel,
    Connection,
    ConnectionKind,
    ConnectionMethod,
    ConnectionPurpose,
    ConnectionStatus,
    normalize_email,
)
from calbroker.domain.errors import Conflict, InvalidRequest
from calbroker.domain.secret_expiry import secret_warning
from calbroker.store.connect_links import create_link
from calbroker.store.connection_checks import test_mailbox_of
from calbroker.store.connections import delete_connection, get_connection, list_connections, mark_connection_health

__all__ = [
    "connection_rooms",
    "create_connect_link",
    "get_connection_by_id",
    "list_application_connections",
    "offered_methods",
    "revoke_connection",
    "verify_connection",
]

DEFAULT_LINK_LIFETIME = timedelta(days=7)
REDIRECT_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\u0000-\u0020/?#@\\]+([/?][^\u0000-\u0020#]*)?$"
"""An absolute http(s) URL: a host, no credentials, no fragment, no spaces or control characters."""
_OPERATOR_METHODS = (ConnectionMethod.GRAPH_CONSENT, ConnectionMethod.GRAPH_DELEGATED)
_ALL_METHODS = (
    ConnectionMethod.GRAPH_CONSENT,
    ConnectionMethod.GRAPH_APP,
    ConnectionMethod.EWS,
    ConnectionMethod.GRAPH_DELEGATED,
)


# --- wire -----------------------------------------------------------------------------------------


class ConnectLinkRequest(Body):
    """What an authorize link offers the tenant admin, and where it sends them afterwards."""

    redirect_url: Annotated[
        str,
        msgspec.Meta(
            max_length=2000,
            pattern=REDIRECT_URL_PATTERN,
            description="Your page the admin returns to, with `connection_id` and `state` added to its query: an "
            "absolute https URL (http only where the operator allows it), without credentials or #fragment",
            examples=["https://app.example.com/calendar/connected"],
        ),
    ]
    state: Annotated[str, text(1024, "Echoed back on the redirect")] | None = None
    methods: (
        Annotated[
            list[ConnectionMethod],
            msgspec.Meta(min_length=1, description="Methods offered; default: every method this server supports."),
        ]
        | None
    ) = None
    access_level: Annotated[
        AccessLevel | None, msgspec.Meta(description="Offer only this access level; default: the admin chooses")
    ] = None
    expires_in: (
        Annotated[
            int, msgspec.Meta(ge=300, le=30 * 86400, description="Seconds until the link expires; default 7 days.")
        ]
        | None
    ) = None


class ConnectLinkOut(Response):
    """A single-use authorize link."""

    id: Annotated[uuid.UUID, msgspec.Meta(description="The link's id")]
    url: Annotated[str, msgspec.Meta(description="Send this to the tenant admin; it works once and is shown only here")]
    expires_at: Annotated[datetime, msgspec.Meta(description="When the link stops working")]
    methods: Annotated[list[ConnectionMethod], msgspec.Meta(description="The ways of connecting the link offers")]


class WarningOut(Response):
    """Something about the connection that needs attention before it fails."""

    code: Annotated[str, msgspec.Meta(description="Stable code, e.g. secret_expiring")]
    message: Annotated[str, msgspec.Meta(description="What to do, for a person to read")]


class ConnectionOut(Response):
    """How this application reaches one organisation's mailboxes."""

    id: Annotated[uuid.UUID, doc("The connection's id")]
    kind: Annotated[ConnectionKind, doc("graph (Microsoft 365) or ews (Exchange on-premises)")]
    method: Annotated[ConnectionMethod, doc("How the tenant admin connected")]
    purpose: Annotated[
        ConnectionPurpose,
        doc(
            "`calendars`: free/busy, availability and events of its domains. `online_meetings`: Teams "
            "meetings only, for organizers whose calendars another connection serves (hybrid tenants)."
        ),
    ]
    access_level: Annotated[
        AccessLevel | None,
        doc("full, restricted (calendar folders) or free_busy; null for an online-meetings connection"),
    ]
    display_name: Annotated[str, doc("A name for people: the organisation and protocol")]
    domains: Annotated[list[str], doc("Mailbox domains this connection serves")]
    allowed_mailboxes: Annotated[list[str], doc("If not empty, only these mailboxes may be used")]
    status: Annotated[
        ConnectionStatus,
        doc("active, degraded (health checks failing), superseded (connected again) or revoked"),
    ]
    warnings: Annotated[list[WarningOut], doc("What needs attention soon (empty if nothing)")]
    cloud: Annotated[str, doc("The Microsoft cloud: global, usgov, usgov-dod, china or sandbox")]
    tenant_id: Annotated[str | None, doc("The Entra ID tenant (Graph connections)")] = None
    endpoint: Annotated[str | None, doc("The EWS URL (Exchange on-premises connections)")] = None
    last_error: Annotated[str | None, doc("The last failure of a health check or verification")] = None
    last_verified_at: Annotated[datetime | None, doc("When Microsoft last accepted the credentials")] = None
    created_at: Annotated[datetime | None, doc("When the connection was made")] = None
    secret_expires_at: Annotated[datetime | None, doc("When the client secret expires, as the admin entered it")] = None
    superseded_by: Annotated[
        uuid.UUID | None,
        doc(
            "The connection that replaced this one when the organisation was connected again "
            "(`status: superseded`); events booked through this one are managed through it."
        ),
    ] = None


class ConnectionList(Response):
    """A page of connections, oldest first."""

    connections: Annotated[list[ConnectionOut], doc("This page's connections")]
    next_cursor: Annotated[str | None, doc("Pass as `cursor` for the next page; absent on the last")] = None


class VerificationOut(Response):
    """The outcome of checking a connection against Microsoft now."""

    verified: Annotated[bool, doc("Whether Microsoft accepted the credentials for the test mailbox")]
    connection: Annotated[ConnectionOut, doc("The connection, with its updated status")]
    error: Annotated[EmbeddedProblem | None, doc("Why verification failed")] = None


class RoomOut(Response):
    """A room or resource mailbox, bookable as an attendee of type `resource`: one shape for both protocols,
    a field the tenant's protocol does not report is null."""

    email: Annotated[str, doc("The room's mailbox")]
    name: Annotated[str, doc("Its display name")]
    capacity: Annotated[int | None, doc("Seats; null when unknown (Exchange on-premises over EWS never says)")] = None
    building: Annotated[
        str | None,
        doc(
            "Graph: the place's building. EWS: the room mailbox's Office (location) in the directory. "
            "Null when not set."
        ),
    ] = None
    room_list: Annotated[str | None, doc("Display name of the room's room list")] = None
    room_list_email: Annotated[str | None, doc("Address of the room's room list")] = None


class RoomList(Response):
    """The tenant's rooms."""

    rooms: Annotated[list[RoomOut], doc("Rooms, by email")]


def connection_out(connection: Connection, now: datetime | None = None) -> ConnectionOut:
    warning = secret_warning(connection.secret_expires_at, now or datetime.now(UTC))
    return ConnectionOut(
        id=connection.id,
        kind=connection.kind,
        method=connection.method,
        purpose=connection.purpose,
        access_level=connection.access_level if connection.purpose is ConnectionPurpose.CALENDARS else None,
        display_name=connection.display_name,
        domains=list(connection.domains),
        allowed_mailboxes=list(connection.allowed_mailboxes),
        status=connection.status,
        warnings=[WarningOut(warning.code, warning.message)] if warning else [],
        cloud=connection.cloud,
        tenant_id=connection.tenant_id,
        endpoint=connection.endpoint,
        last_error=connection.last_error,
        last_verified_at=connection.last_verified_at,
        created_at=connection.created_at,
        secret_expires_at=connection.secret_expires_at,
        superseded_by=connection.superseded_by,
    )


# --- validation -------------------------------------------------------------------------------------


def offered_methods(settings: Settings, requested: list[ConnectionMethod] | None) -> list[ConnectionMethod]:
    """The methods a link offers: those asked for, each one this server can actually run."""
    if requested is None:
        return [m for m in _ALL_METHODS if settings.operator_app is not None or m not in _OPERATOR_METHODS]
    methods = list(dict.fromkeys(requested))
    for position, method in enumerate(methods):
        if method in _OPERATOR_METHODS and settings.operator_app is None:
            raise InvalidRequest.field(
                f"methods[{position}]",
                f"{method.value} goes through the operator's multi-tenant Entra app, which this server does not "
                "have (CALBROKER_GRAPH_CLIENT_ID); offer graph_app or ews instead",
            )
    return methods


def redirect_target(raw: str, settings: Settings) -> str:
    """The application's own return URL: absolute https (http only where the operator allows it).

    No DNS or private-address check: calbroker never fetches it, the admin's browser goes there.
    """
    url = raw.strip()
    try:
        parts = urlsplit(url)
    except ValueError:  # unbalanced [ ] in the host
        raise InvalidRequest.field("redirect_url", "must be an absolute https:// URL of your application") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname:
        raise InvalidRequest.field("redirect_url", "must be an absolute https:// URL of your application")
    if scheme == "http" and not settings.allow_http_upstreams:
        raise InvalidRequest.field("redirect_url", "must use https (this server does not allow plain http)")
    if parts.username or parts.password:
        raise InvalidRequest.field("redirect_url", "must not contain a user name or password")
    if parts.fragment:
        raise InvalidRequest.field(
            "redirect_url", "must not have a #fragment (connection_id and state go in the query)"
        )
    if any(ord(ch) < 0x21 for ch in url):
        raise InvalidRequest.field("redirect_url", "must not contain spaces or control characters")
    return url


def _link_url(settings: Settings, token: str) -> str:
    return f"{settings.public_url.rstrip('/')}/connect/{token}"


def _cursor(connection: Connection) -> str:
    created = connection.created_at.isoformat() if connection.created_at else ""
    return base64.urlsafe_b64encode(f"{created}|{connection.id}".encode()).decode().rstrip("=")


def _after_cursor(connections: list[Connection], cursor: str) -> list[Connection]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        _created, _sep, ident = raw.partition("|")
        last = uuid.UUID(ident)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidRequest.field("cursor", "is not a cursor this API returned") from None
    ids = [c.id for c in connections]
    if last not in ids:
        raise InvalidRequest.field("cursor", "is not a cursor this API returned (or its connection was deleted)")
    return connections[ids.index(last) + 1 :]


async def _own_connection(caller: Caller, connection_id: uuid.UUID) -> Connection:
    async with caller.services.pool.acquire() as conn:
        return await get_connection(conn, caller.application.id, connection_id)


def _live(connection: Connection) -> Connection:
    if connection.status is ConnectionStatus.REVOKED:
        raise Conflict(
            f"Connection {connection.id} was revoked; its credentials are gone. Create a new authorize link."
        )
    if connection.status is ConnectionStatus.SUPERSEDED:
        raise Conflict(
            f"Connection {connection.id} was replaced by connection {connection.superseded_by} when the organisation "
            "was connected again; its credentials are gone. Use the new connection."
        )
    return connection


_NOT_FOUND = problem_response(
    "No connection with this id belongs to your application (`/problems/not-found`)",
    ("not-found", "no connection 6f1c2a9e-3d4b-4e8f-9a7c-2b1d0e5f4a3c"),
)
_REVOKED = problem_response(
    "The connection was revoked, or superseded by a newer one (`/problems/conflict`)",
    ("conflict", "Connection 6f1c2a9e-3d4b-4e8f-9a7c-2b1d0e5f4a3c was revoked; its credentials are gone."),
)


_LINK_EXAMPLE = {
    "redirect_url": "https://app.example.com/calendar/connected",
    "state": "customer-4711",
    "methods": ["graph_consent", "graph_app", "ews"],
    "expires_in": 86400,
}


# --- handlers ---------------------------------------------------------------------------------------


@post(
    "/connect_links",
    operation_id="createConnectLink",
    status_code=201,
    tags=["connections"],
    summary="Create a single-use authorize link for a tenant admin",
    responses=problem_responses(body=True),
)
async def create_connect_link(
    data: Annotated[ConnectLinkRequest, BodyParam(examples=[Example(summary="Every method", value=_LINK_EXAMPLE)])],
    caller: NamedDependency[Caller],
) -> ConnectLinkOut:
    """The admin opens `url`, picks how to connect, and is sent back to `redirect_url` with `connection_id`."""
    settings = caller.services.settings
    redirect_url = redirect_target(data.redirect_url, settings)
    methods = offered_methods(settings, data.methods)
    lifetime = timedelta(seconds=data.expires_in) if data.expires_in else DEFAULT_LINK_LIFETIME
    async with caller.services.pool.acquire() as conn:
        issued = await create_link(
            conn,
            application_id=caller.application.id,
            redirect_url=redirect_url,
            state=data.state,
            methods=methods,
            access_level=data.access_level,
            expires_in=lifetime,
            actor=f"key:{caller.key.prefix}",
        )
    return ConnectLinkOut(
        id=issued.link.id, url=_link_url(settings, issued.token), expires_at=issued.link.expires_at, methods=methods
    )


@get(
    "/connections",
    operation_id="listConnections",
    tags=["connections"],
    summary="Connections of this application",
    responses=problem_responses(params=True),
)
async def list_application_connections(
    caller: NamedDependency[Caller],
    limit: Annotated[int, QueryParameter(ge=1, le=200, description="Page size")] = 50,
    cursor: Annotated[
        str | None, QueryParameter(pattern=r"^[A-Za-z0-9_-]{1,400}$", description="`next_cursor` of the previous page")
    ] = None,
) -> ConnectionList:
    """Oldest first; pass `next_cursor` back as `cursor` for the next page. Superseded and revoked ones are not
    listed (read them by id)."""
    async with caller.services.pool.acquire() as conn:
        connections = await list_connections(conn, caller.application.id)
    if cursor:
        connections = _after_cursor(connections, cursor)
    page = connections[:limit]
    now = datetime.now(UTC)
    return ConnectionList(
        connections=[connection_out(c, now) for c in page],
        next_cursor=_cursor(page[-1]) if len(connections) > limit else None,
    )


@get(
    "/connections/{connection_id:uuid}",
    operation_id="getConnection",
    tags=["connections"],
    summary="One connection: status, last error, secret expiry warnings",
    responses=problem_responses(s404=_NOT_FOUND),
)
async def get_connection_by_id(connection_id: FromPath[uuid.UUID], caller: NamedDependency[Caller]) -> ConnectionOut:
    return connection_out(await _own_connection(caller, connection_id))


@delete(
    "/connections/{connection_id:uuid}",
    operation_id="revokeConnection",
    status_code=204,
    tags=["connections"],
    summary="Revoke a connection and wipe its credentials",
    responses=problem_responses(s404=_NOT_FOUND),
)
async def revoke_connection(connection_id: FromPath[uuid.UUID], caller: NamedDependency[Caller]) -> None:
    """Repeating it answers 204 again; the row stays (events refer to it) without credentials."""
    async with caller.services.pool.acquire() as conn:
        connection = await get_connection(conn, caller.application.id, connection_id)
        if connection.status is not ConnectionStatus.REVOKED:
            await delete_connection(conn, connection, actor=f"key:{caller.key.prefix}")
    await caller.services.upstream.forget(connection)


@post(
    "/connections/{connection_id:uuid}/verify",
    operation_id="verifyConnection",
    status_code=200,
    tags=["connections"],
    summary="Check the connection against Microsoft now",
    responses=problem_responses(params=True, upstream=True, s404=_NOT_FOUND, s409=_REVOKED),
)
async def verify_connection(
    connection_id: FromPath[uuid.UUID],
    caller: NamedDependency[Caller],
    test_mailbox: Annotated[
        str | None,
        QueryParameter(
            pattern=EMAIL_PATTERN,
            max_length=320,
            description="Mailbox to read instead of the one given at connect time",
        ),
    ] = None,
) -> VerificationOut:
    """Reads the test mailbox given at connect time (or `test_mailbox`) with fresh tokens.

    The outcome updates `status` and `last_error` like a health check; a failure is reported in
    `error` with `verified: false` (HTTP 200: the check itself ran).
    """
    connection = _live(await _own_connection(caller, connection_id))
    async with caller.services.pool.acquire() as conn:
        mailbox = test_mailbox or await test_mailbox_of(conn, connection.id)
    if not mailbox and connection.allowed_mailboxes:
        mailbox = connection.allowed_mailboxes[0]
    if not mailbox:
        raise InvalidRequest.field("test_mailbox", "no test mailbox is known for this connection; pass one")
    mailbox = normalize_email(mailbox, field_name="test_mailbox")
    # Fresh tokens: this is the "check it now" button.
    error = await caller.services.upstream.verify(connection, mailbox, caller.deadline, fresh=True)
    async with caller.services.pool.acquire() as conn:
        await mark_connection_health(conn, connection.id, error=error.detail if error else None)
        updated = await get_connection(conn, caller.application.id, connection.id)
    return VerificationOut(
        verified=error is None,
        connection=connection_out(updated),
        error=embedded_problem(error) if error else None,
    )


@get(
    "/connections/{connection_id:uuid}/rooms",
    operation_id="listRooms",
    tags=["connections"],
    summary="Room and resource mailboxes of the connection's tenant",
    responses=problem_responses(upstream=True, s404=_NOT_FOUND, s409=_REVOKED),
)
async def connection_rooms(
    connection_id: FromPath[uuid.UUID],
    caller: NamedDependency[Caller],
) -> RoomList:
    """Graph places (needs Place.Read.All) or EWS room lists; book them as attendees of type `resource`."""
    connection = _live(await _own_connection(caller, connection_id))
    connection.require_calendars_purpose("list rooms")
    provider = await caller.services.upstream.provider(connection)
    rooms = await provider.list_rooms(caller.deadline)
    return RoomList(
        rooms=[
            RoomOut(
                email=r.email,
                name=r.name,
                capacity=r.capacity,
                building=r.building,
                room_list=r.room_list.name if r.room_list else None,
                room_list_email=r.room_list.email if r.room_list else None,
            )
            for r in rooms
        ]
    )
