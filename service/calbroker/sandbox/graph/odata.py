"""Graph's request/response model: routes, the caller, the error envelope, `Prefer` headers, paging.

Every Graph error uses one envelope — `{"error": {"code", "message", "innerError": {"date",
"request-id", "client-request-id"}}}` with `request-id`/`client-request-id` headers
(https://learn.microsoft.com/graph/errors) — rendered here once for direct and `$batch` answers.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode

from calbroker.sandbox.directory import Mailbox, ServicePrincipal, Tenant
from calbroker.sandbox.faults import FaultRule

if TYPE_CHECKING:
    from calbroker.sandbox.graph.delta import DeltaBook
    from calbroker.sandbox.graph.subscriptions import SubscriptionBook
    from calbroker.sandbox.state import SandboxState

__all__ = [
    "JSON_CONTENT_TYPE",
    "Caller",
    "Filters",
    "GraphContext",
    "GraphError",
    "GraphRequest",
    "GraphResponse",
    "Handler",
    "Route",
    "apply_filter",
    "body_get",
    "error_body",
    "graph_instant",
    "make_route",
    "page",
    "prefer",
]

T = TypeVar("T")
JSON_CONTENT_TYPE = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
ACCESS_DENIED = "Access is denied. Check credentials and try again."


class GraphError(Exception):
    """An error Graph answers with; `headers` carries e.g. `Retry-After`."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


@dataclass(slots=True)
class Caller:
    """Who the bearer token says is calling: an app (roles) or an app on behalf of a user (scp)."""

    tenant: Tenant
    client_id: str
    roles: frozenset[str]
    scopes: frozenset[str]
    user: Mailbox | None = None
    principal: ServicePrincipal | None = None
    token_id: str = ""

    @property
    def delegated(self) -> bool:
        return self.user is not None

    def has_any(self, permissions: frozenset[str]) -> bool:
        return not permissions or bool(permissions & (self.roles | self.scopes))


@dataclass(slots=True)
class GraphRequest:
    """One Graph call, from the wire or from inside a `$batch`."""

    method: str
    path: str  # after /v1.0, starting with "/"
    query: dict[str, str]  # keys lower-cased (OData system options keep their "$")
    headers: Mapping[str, str]  # case-insensitive mapping
    body: Any
    caller: Caller
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_request_id: str = ""
    params: dict[str, str] = field(default_factory=dict)
    mailbox: Mailbox | None = None
    raw_query: dict[str, str] = field(default_factory=dict)  # as sent, for nextLinks
    fault: FaultRule | None = None  # a behaviour fault (e.g. omit_join_url) the handler must honour
    routes: tuple[Route, ...] = ()  # the table this call was dispatched against ($batch reuses it)

    def option(self, name: str) -> str | None:
        return self.query.get(name.lower())

    @property
    def target(self) -> Mailbox:
        """The mailbox named by `/users/{user}`, resolved before any handler of such a route runs."""
        assert self.mailbox is not None, self.path
        return self.mailbox

    def select(self) -> set[str] | None:
        """The properties of `$select`, or None for the default set."""
        raw = self.option("$select")
        return {s.strip() for s in raw.split(",") if s.strip()} if raw else None


@dataclass(slots=True)
class GraphResponse:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class GraphContext:
    """What Graph handlers share: the sandbox state, the subscription book and the delta tokens."""

    state: SandboxState
    subscriptions: SubscriptionBook
    deltas: DeltaBook

    @property
    def graph_url(self) -> str:
        return self.state.graph_url


Handler = Callable[[GraphContext, GraphRequest], Awaitable[GraphResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    """A Graph operation: method + path pattern, its route key, required permissions and family.

    `family` picks the error dialect for missing permissions — Outlook endpoints answer
    `ErrorAccessDenied`, directory endpoints `Authorization_RequestDenied` — and whether the
    application access policy and the per-mailbox throttle apply (Outlook only).
    """

    method: str
    pattern: re.Pattern[str]
    key: str
    handler: Handler
    permissions: frozenset[str]
    family: str
    own_mailbox_only: bool = True

    @property
    def needs_mailbox(self) -> bool:
        return "user" in self.pattern.groupindex


def make_route(
    method: str,
    template: str,
    key: str,
    handler: Handler,
    permissions: set[str] | frozenset[str],
    *,
    family: str,
    own_mailbox_only: bool = True,
) -> Route:
    """`template` uses `{name}` for one path segment; matching is case-insensitive like Graph's."""
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
    return Route(
        method,
        re.compile(f"^{regex}/?$", re.IGNORECASE),
        key,
        handler,
        frozenset(permissions),
        family,
        own_mailbox_only,
    )


def error_body(code: str, message: str, request_id: str, client_request_id: str, at: datetime) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": client_request_id or request_id,
            },
        }
    }


def body_get(body: Any, name: str, default: Any = None) -> Any:
    """A JSON property by case-insensitive name — Graph accepts `Schedules` and `schedules` alike."""
    if not isinstance(body, dict):
        return default
    lowered = name.lower()
    for key, value in body.items():
        if isinstance(key, str) and key.lower() == lowered:
            return value
    return default


_PREFER_TZ = re.compile(r'outlook\.timezone\s*=\s*"?([^",;]+)"?', re.IGNORECASE)
_PREFER_PAGE = re.compile(r"odata\.maxpagesize\s*=\s*(\d+)", re.IGNORECASE)


def prefer(headers: Mapping[str, str]) -> tuple[str | None, int | None]:
    """(outlook.timezone, odata.maxpagesize) from the `Prefer` header(s)."""
    raw = headers.get("Prefer", "")
    tz_match = _PREFER_TZ.search(raw)
    page_match = _PREFER_PAGE.search(raw)
    return (tz_match.group(1).strip() if tz_match else None, int(page_match.group(1)) if page_match else None)


# The `$filter` forms an endpoint understands: a pattern and the predicate its match stands for.
Filters = tuple[tuple[re.Pattern[str], Callable[[T, re.Match[str]], bool]], ...]


def apply_filter(items: list[T], raw: str | None, filters: Filters[T], invalid: GraphError) -> list[T]:
    """`items` that pass `$filter` (`raw`); a clause none of `filters` matches answers `invalid`."""
    if not raw:
        return items
    for pattern, predicate in filters:
        match = pattern.match(raw)
        if match:
            return [item for item in items if predicate(item, match)]
    raise invalid


def graph_instant(moment: datetime) -> str:
    """Graph's UTC timestamp form for createdDateTime & co: 7 fractional digits and `Z`."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond:06d}0Z"


def page(
    ctx: GraphContext, req: GraphRequest, items: list[T], *, default_size: int, max_size: int
) -> tuple[list[T], str | None, int]:
    """Slice `items` by `$skip` and `$top`/`Prefer: odata.maxpagesize`; the nextLink to follow, if any."""
    _, preferred = prefer(req.headers)
    top_raw = req.option("$top")
    try:
        size = int(top_raw) if top_raw is not None else (preferred or default_size)
        skip = int(req.option("$skip") or 0)
    except ValueError as exc:
        raise GraphError(400, "BadRequest", "Invalid $top or $skip value.") from exc
    size = max(1, min(size, max_size))
    chunk = items[skip : skip + size]
    next_link = None
    if skip + size < len(items):
        query = {k: v for k, v in req.raw_query.items() if k.lower() not in ("$skip", "$top")}
        query["$top"] = str(size)
        query["$skip"] = str(skip + size)
        next_link = f"{ctx.graph_url}{req.path}?{urlencode(query, safe='$:,/@()')}"
    return chunk, next_link, size
