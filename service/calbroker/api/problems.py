"""RFC 9457 problem details: the one place errors become HTTP responses.

Every error the API returns has a stable `type` (`/problems/<slug>`) documented here and served
as a short HTML page that explains the problem and the fix. Domain and store code raise
`CalbrokerError`s; Litestar's own HTTP exceptions (404, 405, 413, body validation) and anything
unexpected are mapped by the same table, so no handler builds an error response by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)
from structlog.contextvars import get_contextvars

from calbroker.api.wire import UnsupportedMediaType, field_error
from calbroker.domain import errors
from calbroker.logs import get_logger
from calbroker.redaction import redact_text
from calbroker.store.database import DATABASE_UNAVAILABLE
from calbroker.store.keyring import KeyringError

__all__ = [
    "CATALOGUE",
    "DATABASE_RETRY_AFTER_S",
    "EmbeddedProblem",
    "FieldErrorBody",
    "Problem",
    "ProblemType",
    "embedded_problem",
    "problem_plugin",
    "problem_response",
    "problem_responses",
    "problem_type",
]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ProblemType:
    """A documented problem type: what went wrong and how to fix it."""

    slug: str
    status: int
    title: str
    explanation: str
    fix: str


def _p(slug: str, status: int, title: str, explanation: str, fix: str) -> tuple[str, ProblemType]:
    return slug, ProblemType(slug, status, title, explanation, fix)


CATALOGUE: Mapping[str, ProblemType] = dict(
    [
        _p(
            "invalid-request",
            422,
            "The request is invalid",
            "A field is missing, has the wrong type, or has a value outside what the API accepts. "
            "`errors` lists each field at fault and what would be valid.",
            "Correct the fields named in `errors` and send the request again.",
        ),
        _p(
            "limit-exceeded",
            422,
            "A limit was exceeded",
            "The request asks for more than calbroker (or Microsoft behind it) allows in one call, "
            "for example too many members, too long a span or too many query periods.",
            "Split the request, or stay within the limit named in `errors`.",
        ),
        _p(
            "malformed-body",
            400,
            "The body is not valid JSON",
            "The request body could not be parsed as JSON.",
            "Send a UTF-8 JSON document with `Content-Type: application/json`.",
        ),
        _p(
            "unsupported-media-type",
            415,
            "The body is not JSON",
            "The request's `Content-Type` is not `application/json`, so calbroker does not read the body.",
            "Send the body as JSON with `Content-Type: application/json`.",
        ),
        _p(
            "payload-too-large",
            413,
            "The body is too large",
            "The request body is larger than the server accepts.",
            "Send a smaller body; very long text fields are usually the cause.",
        ),
        _p(
            "unauthorized",
            401,
            "A valid API key is required",
            "The request has no `Authorization: Bearer <api key>` header, or the key is malformed, unknown or revoked.",
            "Send the key printed by `calbroker apps create` (or `apps rotate-key`) as a bearer token.",
        ),
        _p(
            "access-denied",
            403,
            "Not allowed",
            "Your application may not perform this operation on this resource.",
            "Check that the resource belongs to your application and the connection grants the access.",
        ),
        _p(
            "access-level-insufficient",
            403,
            "The connection's access level does not allow this",
            "The tenant connected calbroker with an access level (for example free/busy only) that does "
            "not include this operation.",
            "Ask the tenant admin to reconnect with a higher access level through a new authorize link.",
        ),
        _p(
            "not-found",
            404,
            "Not found",
            "The resource does not exist, or it belongs to another application.",
            "Check the identifier in the URL.",
        ),
        _p(
            "route-not-found",
            404,
            "No such endpoint",
            "No API endpoint matches this path.",
            "Check the path against the OpenAPI document at /openapi.json.",
        ),
        _p(
            "method-not-allowed",
            405,
            "Method not allowed",
            "The endpoint exists but does not accept this HTTP method.",
            "Use one of the methods in the `Allow` response header.",
        ),
        _p(
            "conflict",
            409,
            "Conflict",
            "The request conflicts with the current state of the resource.",
            "Read the resource again and retry with the current state.",
        ),
        _p(
            "slot-unavailable",
            409,
            "The slot is no longer available",
            "`check_availability` found busy time overlapping the requested event for at least one "
            "mailbox. `conflicts` lists the overlapping intervals.",
            "Pick another slot (for example from /v1/availability) and try again.",
        ),
        _p(
            "write-in-progress",
            409,
            "Another request is writing this event",
            "A request for the same event_id (or a booking check for the same mailboxes) is still in "
            "progress, or died within its deadline and holds its lease until then.",
            "Retry after the number of seconds in the `Retry-After` header; the retry finishes (or heals) the write.",
        ),
        _p(
            "teams-unavailable",
            422,
            "Teams meetings are not available for this organizer",
            "The organizer's mailbox is on Exchange on-premises (EWS), which cannot create Teams meetings, and "
            "no Microsoft Graph connection of your application for the same domain can create them.",
            "Have the tenant admin add a Microsoft Graph connection for the domain whose app has the "
            "OnlineMeetings.ReadWrite.All application permission and a Teams application access policy, or "
            "book the event without `teams_meeting`.",
        ),
        _p(
            "mailbox-error",
            422,
            "A mailbox cannot be used",
            "calbroker could not use a mailbox for this request.",
            "See `detail` for the reason.",
        ),
        _p(
            "mailbox-not-connected",
            422,
            "No connection covers this mailbox",
            "The mailbox's domain is not listed on any connection of your application.",
            "Have the tenant admin connect the organisation through an authorize link, listing this domain.",
        ),
        _p(
            "mailbox-out-of-scope",
            403,
            "The mailbox is outside the connection's scope",
            "The mailbox is outside the connection's allow-list or the tenant's application access policy.",
            "Ask the tenant admin to add the mailbox to the allowed set (or the access policy's group).",
        ),
        _p(
            "mailbox-not-found",
            422,
            "The mailbox does not exist",
            "Microsoft reports that no mailbox exists for this address.",
            "Check the spelling of the address.",
        ),
        _p(
            "impersonation-denied",
            403,
            "The service account may not act for this mailbox",
            "The Exchange service account lacks impersonation rights for the mailbox.",
            "Ask the Exchange admin to grant ApplicationImpersonation with a scope that includes it.",
        ),
        _p(
            "upstream-error",
            502,
            "Microsoft returned an error",
            "The request to Microsoft 365 or Exchange failed.",
            "Retry later; if it persists, check the connection's status.",
        ),
        _p(
            "upstream-throttled",
            503,
            "Microsoft is throttling requests",
            "Microsoft answered 429 or ErrorServerBusy and the back-off did not end within the request's deadline.",
            "Retry after the number of seconds in the `Retry-After` header.",
        ),
        _p(
            "upstream-unavailable",
            503,
            "Microsoft is unavailable",
            "Microsoft 365 or the Exchange server could not be reached or answered with a server error.",
            "Retry later.",
        ),
        _p(
            "upstream-timeout",
            504,
            "Microsoft did not answer in time",
            "The upstream call did not complete within calbroker's deadline.",
            "Retry later; narrowing the request (fewer mailboxes, shorter span) helps.",
        ),
        _p(
            "upstream-rejected",
            502,
            "Microsoft rejected the request",
            "Microsoft answered with an error calbroker did not expect.",
            "Retry later; if it persists, report it with the request id.",
        ),
        _p(
            "credentials-rejected",
            502,
            "The connection's credentials were rejected",
            "Microsoft rejected the connection's credentials (wrong or expired secret, consent withdrawn, "
            "unknown tenant). Only the mailboxes of that connection are affected: each reports this problem "
            "(never as free time), and the health checks mark the connection `degraded` with the reason in "
            "`last_error`.",
            "Ask the tenant admin to fix the app registration (or consent) and check again with "
            "`POST /v1/connections/{id}/verify`, or to connect the organisation again through a new authorize "
            "link. A new connection for the same tenant (or EWS endpoint) and purpose that covers the old one's "
            "domains replaces it at once: the old one turns `superseded` (with `superseded_by`) and loses its "
            "credentials, and events booked through it are changed and cancelled through the new one.",
        ),
        _p(
            "sync-state-expired",
            502,
            "Microsoft forgot the mailbox's sync state",
            "Microsoft no longer recognises the cursor calbroker synced this mailbox with (410 Gone or "
            "SyncStateNotFound); until a full resynchronisation finishes the mailbox is read live.",
            "Nothing to do: the worker resynchronises the mailbox on its own.",
        ),
        _p(
            "subscription-limit",
            409,
            "The mailbox has too many change subscriptions",
            "Microsoft refused a change-notification subscription because the mailbox already has the "
            "maximum its service allows (Exchange Online: 1,000 per mailbox, shared by every application). "
            "calbroker reads this mailbox live instead of from its synced copy.",
            "Ask the tenant admin to find the applications holding subscriptions on the mailbox, or stop "
            "syncing it (PUT /v1/connections/{id}/sync without it).",
        ),
        _p(
            "secrets-unavailable",
            503,
            "Stored credentials cannot be decrypted",
            "A connection's sealed credentials are wrapped by a master key this server does not have, or failed "
            "authentication. Only that connection is affected: in free/busy and availability its mailboxes "
            "report this problem, the others answer as usual; `/readyz` names the missing key.",
            "Operator: give this server the missing key (in CALBROKER_MASTER_KEYS on every replica, in the order "
            "the README's key rotation steps give). The embedded default's key file is re-read by running servers.",
        ),
        _p(
            "not-ready",
            503,
            "Not ready to serve",
            "A readiness check failed: the database is unreachable, migrations are pending or the keyring "
            "is not loaded. `checks` says which.",
            "Operator: fix the failing check; the process keeps retrying.",
        ),
        _p(
            "service-unavailable",
            503,
            "calbroker is temporarily unavailable",
            "calbroker cannot reach its database (stopped, restarting or unreachable). Nothing was written.",
            "Retry after the number of seconds in the `Retry-After` header. Operator: check PostgreSQL.",
        ),
        _p(
            "internal-error",
            500,
            "Unexpected error",
            "Something failed inside calbroker. Nothing was half-written; the error was logged with the request id.",
            "Retry; if it persists, report the `request_id` to the operator.",
        ),
    ]
)


def problem_type(slug: str) -> str:
    """The stable `type` URI reference of a problem."""
    return f"/problems/{slug}"


class FieldErrorBody(msgspec.Struct, frozen=True):
    """One input field at fault."""

    field: Annotated[str, msgspec.Meta(description="Dotted path of the field, e.g. `query_periods[0].end`")]
    message: Annotated[str, msgspec.Meta(description="What is wrong and what would be valid")]


class ConflictBody(msgspec.Struct, frozen=True):
    """Busy time that overlaps a requested booking."""

    mailbox: Annotated[str, msgspec.Meta(description="The mailbox that is busy")]
    start: Annotated[str, msgspec.Meta(description="Start of the busy interval, RFC 3339")]
    end: Annotated[str, msgspec.Meta(description="End of the busy interval, RFC 3339")]
    status: Annotated[str, msgspec.Meta(description="busy, tentative, oof or working_elsewhere")]


_TYPE = msgspec.Meta(description="Stable URI reference of the problem type; a page under /problems explains it")
_TITLE = msgspec.Meta(description="Short summary of the problem type")
_STATUS = msgspec.Meta(description="The HTTP status code of the problem")
_DETAIL = msgspec.Meta(description="What happened in this occurrence, for a person to read")
_MAILBOX = msgspec.Meta(description="The mailbox the problem is about")
_UPSTREAM_CODE = msgspec.Meta(description="Microsoft's error code (AADSTS…, ErrorAccessDenied…), when it gave one")


class EmbeddedProblem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem reported inside a successful response (one mailbox of many)."""

    type: Annotated[str, _TYPE]
    title: Annotated[str, _TITLE]
    status: Annotated[int, _STATUS]
    detail: Annotated[str, _DETAIL]
    mailbox: Annotated[str | None, _MAILBOX] = None
    upstream_code: Annotated[str | None, _UPSTREAM_CODE] = None
    retry_after: Annotated[
        float | None, msgspec.Meta(description="Seconds Microsoft asked to wait before reading this mailbox again")
    ] = None


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The RFC 9457 document every error response carries (`application/problem+json`)."""

    type: Annotated[str, _TYPE]
    title: Annotated[str, _TITLE]
    status: Annotated[int, _STATUS]
    detail: Annotated[str, _DETAIL]
    request_id: Annotated[
        str | None, msgspec.Meta(description="The request's id (also in `X-Request-Id`); quote it to the operator")
    ] = None
    errors: Annotated[
        list[FieldErrorBody] | None, msgspec.Meta(description="Each input field at fault (invalid-request)")
    ] = None
    limit: Annotated[int | str | None, msgspec.Meta(description="The limit that was exceeded (limit-exceeded)")] = None
    conflicts: Annotated[
        list[ConflictBody] | None, msgspec.Meta(description="Busy time overlapping the booking (slot-unavailable)")
    ] = None
    mailbox: Annotated[str | None, _MAILBOX] = None
    upstream_code: Annotated[str | None, _UPSTREAM_CODE] = None
    checks: Annotated[
        dict[str, str] | None, msgspec.Meta(description="Each readiness check and its state (not-ready)")
    ] = None


def embedded_problem(exc: errors.CalbrokerError) -> EmbeddedProblem:
    """The problem document for an error reported inside a successful response (per mailbox)."""
    problem = _from_domain(exc)
    extra = problem.extra if isinstance(problem.extra, dict) else {}
    retry_after = getattr(exc, "retry_after", None)
    return EmbeddedProblem(
        type=problem.type_ or problem_type("internal-error"),
        title=problem.title or "",
        status=problem.status_code,
        detail=problem.detail,
        mailbox=extra.get("mailbox"),
        upstream_code=extra.get("upstream_code"),
        retry_after=float(retry_after) if isinstance(retry_after, int | float) else None,
    )


def _request_id() -> str | None:
    value = get_contextvars().get("request_id")
    return value if isinstance(value, str) else None


def _build(
    slug: str,
    detail: str,
    *,
    field_errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    status: int | None = None,
) -> ProblemDetailsException:
    problem = CATALOGUE[slug]
    body: dict[str, Any] = {"request_id": _request_id()}
    if field_errors:
        body["errors"] = field_errors
    if extra:
        body.update(extra)
    return ProblemDetailsException(
        detail=redact_text(detail),
        status_code=status or problem.status,
        type_=problem_type(slug),
        title=problem.title,
        headers=headers,
        extra=body,
    )


def _from_domain(exc: errors.CalbrokerError) -> ProblemDetailsException:
    slug = exc.slug if exc.slug in CATALOGUE else "internal-error"
    headers: dict[str, str] | None = None
    extra: dict[str, Any] = {}
    field_errors: list[dict[str, str]] | None = None
    match exc:
        case errors.InvalidRequest():
            field_errors = [{"field": e.field, "message": e.message} for e in exc.errors]
            if isinstance(exc, errors.LimitExceeded):
                extra["limit"] = exc.limit
        case errors.SlotUnavailable():
            extra["conflicts"] = [
                {
                    "mailbox": c.mailbox,
                    "start": c.start.isoformat(),
                    "end": c.end.isoformat(),
                    "status": c.status,
                }
                for c in exc.conflicts
            ]
        case errors.TeamsUnavailable():
            extra["mailbox"] = exc.mailbox
        case errors.MailboxError():
            extra["mailbox"] = exc.mailbox
        case errors.Unauthenticated():
            headers = {"WWW-Authenticate": f'Bearer realm="calbroker", error="{exc.reason}"'}
        case _:
            pass
    extra.update(exc.extensions())
    retry_after = getattr(exc, "retry_after", None)
    if headers is None and isinstance(retry_after, int | float):  # any error that knows when to retry says so
        headers = {"Retry-After": str(max(1, round(retry_after)))}
    if isinstance(exc, errors.UpstreamError):
        if exc.upstream_code:
            extra["upstream_code"] = exc.upstream_code
        if exc.mailbox:
            extra["mailbox"] = exc.mailbox
    return _build(slug, exc.detail, field_errors=field_errors, headers=headers, extra=extra)


def _validation_errors(exc: ValidationException) -> list[dict[str, str]]:
    """Litestar's parameter errors (query, path, header) as full field paths, like body errors."""
    found: list[dict[str, str]] = []
    items = exc.extra if isinstance(exc.extra, list) else []
    for item in items:
        if not isinstance(item, dict):
            continue
        error, _limit = field_error(str(item.get("message", "invalid value")))
        key = str(item.get("key") or "")
        # A parameter is named by its name; a body member by its path.
        field = key if key and item.get("source") not in (None, "body") else error.field
        if field == "body" and key:
            field = key
        found.append({"field": field, "message": error.message})
    return found


def _from_http(exc: HTTPException) -> ProblemDetailsException:
    headers = dict(exc.headers or {})
    match exc:
        case ValidationException():
            detail = str(exc.detail or "")
            lowered = detail.lower()
            if "malformed" in lowered or ("json" in lowered and "decode" in lowered):
                return _build("malformed-body", "The request body is not valid JSON.")
            field_errors = _validation_errors(exc)
            summary = "; ".join(f"{e['field']}: {e['message']}" for e in field_errors) or detail
            return _build("invalid-request", summary, field_errors=field_errors or None)
        case NotFoundException():
            return _build("route-not-found", "No endpoint matches this path.", headers=headers)
        case MethodNotAllowedException():
            return _build("method-not-allowed", str(exc.detail), headers=headers)
        case UnsupportedMediaType():
            return _build("unsupported-media-type", str(exc.detail), headers={"Accept-Post": "application/json"})
        case _ if exc.status_code == 413:
            return _build("payload-too-large", "The request body is larger than the server accepts.")
        case _ if exc.status_code == 401:
            return _build(
                "unauthorized",
                str(exc.detail),
                headers={"WWW-Authenticate": 'Bearer realm="calbroker"', **headers},
            )
        case _ if exc.status_code == 400:
            return _build("malformed-body", str(exc.detail))
        case _:
            return _build("internal-error", str(exc.detail), status=exc.status_code, headers=headers)


def _from_unexpected(exc: Exception) -> ProblemDetailsException:
    # The trace goes to the server log only; the caller gets the request id to quote.
    log.error("unhandled exception", exc_info=exc)
    return _build("internal-error", "An unexpected error occurred; it was logged with the request id.")


DATABASE_RETRY_AFTER_S = 5


def _from_database(exc: Exception) -> ProblemDetailsException:
    log.warning("database unavailable", error=f"{type(exc).__name__}: {exc}")
    return _build(
        "service-unavailable",
        "calbroker cannot reach its database right now; nothing was written.",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


def _from_keyring(exc: KeyringError) -> ProblemDetailsException:
    log.error("sealed secret unavailable", error=str(exc))
    return _build("secrets-unavailable", "A stored credential cannot be decrypted on this server.")


def problem_plugin() -> ProblemDetailsPlugin:
    """The plugin that turns every exception into a problem+json response."""
    mapping: dict[type[Exception], Any] = {
        **dict.fromkeys(DATABASE_UNAVAILABLE, _from_database),
        errors.CalbrokerError: _from_domain,
        KeyringError: _from_keyring,
        HTTPException: _from_http,
        Exception: _from_unexpected,
    }
    return ProblemDetailsPlugin(ProblemDetailsConfig(exception_to_problem_detail_map=mapping))


Sample = tuple[str, str] | tuple[str, str, list[dict[str, str]]]
"""An example of a problem: (slug, detail) or (slug, detail, field errors)."""


def problem_response(description: str, *samples: Sample) -> ResponseSpec:
    """The OpenAPI response of one status: its problem types, each with an example."""
    examples = []
    for sample in samples:
        slug, detail = sample[0], sample[1]
        problem = CATALOGUE[slug]
        value: dict[str, Any] = {
            "type": problem_type(slug),
            "title": problem.title,
            "status": problem.status,
            "detail": detail,
            "request_id": "3f0c6bb2a1d44e0f9c1b5d2e7a8f9012",
        }
        if len(sample) == 3:
            value["errors"] = sample[2]
        examples.append(Example(summary=problem.title, value=value))
    return ResponseSpec(
        Problem,
        description=description,
        media_type="application/problem+json",
        generate_examples=False,
        examples=examples,
    )


_UNAUTHORIZED = problem_response(
    "Missing, malformed or revoked API key (`/problems/unauthorized`)",
    ("unauthorized", "The API key is malformed, unknown or revoked."),
)
_INTERNAL = problem_response(
    "Unexpected error, logged with the request id (`/problems/internal-error`)",
    ("internal-error", "An unexpected error occurred; it was logged with the request id."),
)
_UNAVAILABLE = problem_response(
    "calbroker cannot reach its database (`/problems/service-unavailable`, with `Retry-After`)",
    ("service-unavailable", "calbroker cannot reach its database right now; nothing was written."),
)
_UPSTREAM_UNAVAILABLE = problem_response(
    "calbroker cannot reach its database (`/problems/service-unavailable`), or Microsoft is throttling "
    "(`/problems/upstream-throttled`) or unavailable (`/problems/upstream-unavailable`); `Retry-After` says "
    "when to retry where it is known",
    ("upstream-throttled", "Microsoft Graph answered 429 and the back-off did not end within the request's deadline."),
    ("upstream-unavailable", "Microsoft Graph failed POST /users/adele.vance@contoso.com/events: HTTP 503 …"),
    ("service-unavailable", "calbroker cannot reach its database right now; nothing was written."),
)
_INVALID = problem_response(
    "Invalid input or a limit exceeded; `errors` names each field (`/problems/invalid-request`, "
    "`/problems/limit-exceeded`)",
    (
        "invalid-request",
        "query_periods[0].end: must be after start",
        [{"field": "query_periods[0].end", "message": "must be after start"}],
    ),
)


def problem_responses(
    *, body: bool = False, params: bool = False, upstream: bool = False, **more: ResponseSpec
) -> dict[int, ResponseSpec]:
    """The problem responses of one /v1 operation: those every operation has, plus what it can add.

    `body`: it reads a JSON body (400, 415, 422). `params`: it validates path or query parameters
    (422). `upstream`: its answer waits on Microsoft (502, 503 upstream, 504). `more`: its own,
    keyed `s404`, `s409`… (they replace a default of the same status).
    """
    found: dict[int, ResponseSpec] = {401: _UNAUTHORIZED, 500: _INTERNAL, 503: _UNAVAILABLE}
    if body:
        found[400] = problem_response(
            "The body is missing or not valid JSON (`/problems/malformed-body`)",
            ("malformed-body", "The request body is missing or not valid UTF-8 JSON."),
        )
        found[415] = problem_response(
            "The body is not sent as JSON (`/problems/unsupported-media-type`)",
            ("unsupported-media-type", "The body must be JSON, sent with Content-Type: application/json."),
        )
    if body or params:
        found[422] = _INVALID
    if upstream:
        found[502] = problem_response(
            "Microsoft answered with an error (`/problems/upstream-rejected`, `/problems/upstream-error`, "
            "`/problems/credentials-rejected`); `upstream_code` names it",
            ("credentials-rejected", "AADSTS7000222: The provided client secret keys for app '…' are expired."),
        )
        found[503] = _UPSTREAM_UNAVAILABLE
        found[504] = problem_response(
            "Microsoft did not answer within the deadline (`/problems/upstream-timeout`)",
            ("upstream-timeout", "Microsoft Graph did not answer within the request deadline."),
        )
    for key, spec in more.items():
        found[int(key.removeprefix("s"))] = spec
    return dict(sorted(found.items()))
