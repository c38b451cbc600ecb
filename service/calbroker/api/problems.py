"""RFC 9457 problem details: the one place errors become HTTP responses.

Every error the API returns has a stable `type` (`/problems/<slug>`) documented here and served
as a short HTML page that explains the problem and the fix. Domain and store code raise
`CalbrokerError`s; Litestar's own HTTP exceptions (404, 405, 413, body validation) and anything
unexpected are mapped by the same table, so no handler builds an error response by hand.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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

from calbroker.domain import errors
from calbroker.logs import get_logger
from calbroker.redaction import redact_text
from calbroker.store.keyring import KeyringError

__all__ = [
    "CATALOGUE",
    "UPSTREAM_PROBLEMS",
    "V1_PROBLEMS",
    "FieldErrorBody",
    "Problem",
    "ProblemBody",
    "embedded_problem",
    "problem_plugin",
    "problem_response",
    "problem_type",
]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Problem:
    """A documented problem type: what went wrong and how to fix it."""

    slug: str
    status: int
    title: str
    explanation: str
    fix: str


def _p(slug: str, status: int, title: str, explanation: str, fix: str) -> tuple[str, Problem]:
    return slug, Problem(slug, status, title, explanation, fix)


CATALOGUE: Mapping[str, Problem] = dict(
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
            "Microsoft rejected the connection's credentials (wrong or expired secret, missing consent, "
            "unknown tenant).",
            "Ask the tenant admin to reconnect through a new authorize link.",
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
            "A sealed secret is wrapped by a master key this server does not have, or failed authentication.",
            "Operator: restore the missing key to CALBROKER_MASTER_KEYS and run `calbroker keys rotate`.",
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
    field: str
    message: str


class ProblemBody(msgspec.Struct, omit_defaults=True):
    """The RFC 9457 document every error response carries (for the OpenAPI contract)."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str | None = None
    errors: list[FieldErrorBody] | None = None


def embedded_problem(exc: errors.CalbrokerError) -> dict[str, Any]:
    """The problem document for an error reported inside a successful response (per mailbox)."""
    problem = _from_domain(exc)
    body: dict[str, Any] = {
        "type": problem.type_,
        "title": problem.title,
        "status": problem.status_code,
        "detail": problem.detail,
    }
    extra = problem.extra if isinstance(problem.extra, dict) else {}
    body.update({k: v for k, v in extra.items() if k != "request_id" and v is not None})
    return body


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
        case errors.WriteInProgress():
            headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
        case errors.TeamsUnavailable():
            extra["mailbox"] = exc.mailbox
        case errors.UpstreamThrottled() if exc.retry_after is not None:
            headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
        case errors.MailboxError():
            extra["mailbox"] = exc.mailbox
        case errors.Unauthenticated():
            headers = {"WWW-Authenticate": f'Bearer realm="calbroker", error="{exc.reason}"'}
        case _:
            pass
    extra.update(exc.extensions())
    if isinstance(exc, errors.UpstreamError):
        if exc.upstream_code:
            extra["upstream_code"] = exc.upstream_code
        if exc.mailbox:
            extra["mailbox"] = exc.mailbox
    return _build(slug, exc.detail, field_errors=field_errors, headers=headers, extra=extra)


_MSGSPEC_PATH = re.compile(r"\s*-\s*at\s*`\$(?P<path>[^`]*)`\s*$")
_NAMED_FIELD = re.compile(r"(?:unknown|required) field `(?P<name>[^`]+)`")


def _field_from(path: str, message: str) -> str:
    # msgspec reports `$.participants[0].members[1].email`, and names a missing or unknown field
    # only in the message ("Object missing required field `end`"); callers want one dotted path.
    field = path.lstrip(".")
    named = _NAMED_FIELD.search(message)
    if named:
        field = f"{field}.{named.group('name')}" if field else named.group("name")
    return field or "body"


def _validation_errors(exc: ValidationException) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    items = exc.extra if isinstance(exc.extra, list) else []
    for item in items:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", "invalid value"))
        key = str(item.get("key") or "")
        match = _MSGSPEC_PATH.search(message)
        if match:
            path = match.group("path")
            message = message[: match.start()]
        else:
            # Litestar moves msgspec's `$.a.b` location into `key` (prefixed by the parameter, `data`).
            path = "" if key in ("", "data") else key.removeprefix("data.")
        field = _field_from(path, message)
        if item.get("source") and item.get("source") != "body" and item.get("key"):
            field = f"{item['source']}.{item['key']}"
        found.append({"field": field, "message": message.rstrip(". ")})
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


def _from_keyring(exc: KeyringError) -> ProblemDetailsException:
    log.error("sealed secret unavailable", error=str(exc))
    return _build("secrets-unavailable", "A stored credential cannot be decrypted on this server.")


def problem_plugin() -> ProblemDetailsPlugin:
    """The plugin that turns every exception into a problem+json response."""
    mapping: dict[type[Exception], Any] = {
        errors.CalbrokerError: _from_domain,
        KeyringError: _from_keyring,
        HTTPException: _from_http,
        Exception: _from_unexpected,
    }
    return ProblemDetailsPlugin(ProblemDetailsConfig(exception_to_problem_detail_map=mapping))


def problem_response(description: str, slug: str, detail: str) -> ResponseSpec:
    """The OpenAPI response of one catalogued problem, with an example, for a handler's `responses`."""
    return _spec(description, slug, detail)


def _spec(description: str, slug: str, detail: str, errors: list[dict[str, str]] | None = None) -> ResponseSpec:
    problem = CATALOGUE[slug]
    example: dict[str, Any] = {
        "type": problem_type(slug),
        "title": problem.title,
        "status": problem.status,
        "detail": detail,
        "request_id": "3f0c6bb2a1d44e0f9c1b5d2e7a8f9012",
    }
    if errors:
        example["errors"] = errors
    return ResponseSpec(
        ProblemBody,
        description=description,
        media_type="application/problem+json",
        generate_examples=False,
        examples=[Example(summary=problem.title, value=example)],
    )


V1_PROBLEMS: Mapping[int, ResponseSpec] = {
    400: _spec(
        "The body is not valid JSON (`/problems/malformed-body`)",
        "malformed-body",
        "The request body is not valid JSON.",
    ),
    401: _spec(
        "Missing, malformed or revoked API key (`/problems/unauthorized`)",
        "unauthorized",
        "The API key is malformed, unknown or revoked.",
    ),
    422: _spec(
        "Invalid input or a limit exceeded; `errors` names each field (`/problems/invalid-request`, "
        "`/problems/limit-exceeded`)",
        "invalid-request",
        "query_periods[0].end: must be after start",
        [{"field": "query_periods[0].end", "message": "must be after start"}],
    ),
    500: _spec(
        "Unexpected error, logged with the request id (`/problems/internal-error`)",
        "internal-error",
        "An unexpected error occurred; it was logged with the request id.",
    ),
}
"""Problem responses every /v1 operation can return; handlers add their own on top."""


UPSTREAM_PROBLEMS: Mapping[int, ResponseSpec] = {
    502: _spec(
        "Microsoft answered with an error (`/problems/upstream-rejected`, `/problems/credentials-rejected`); "
        "`upstream_code` names it",
        "credentials-rejected",
        "AADSTS7000222: The provided client secret keys for app '…' are expired.",
    ),
    503: _spec(
        "Microsoft is throttling or unavailable (`/problems/upstream-throttled` with `Retry-After`, "
        "`/problems/upstream-unavailable`)",
        "upstream-throttled",
        "Microsoft Graph answered 429 and the back-off did not end within the request's deadline.",
    ),
    504: _spec(
        "Microsoft did not answer within the deadline (`/problems/upstream-timeout`)",
        "upstream-timeout",
        "Microsoft Graph did not answer within the request deadline.",
    ),
}
"""For operations that wait on Microsoft and report its failure as the whole answer."""
