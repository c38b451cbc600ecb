"""Errors as Cronofy shapes them: the one place compat errors become responses.

- 422 `{"errors": {field: [{"key": "errors.…", "description": …}]}}` for bad input;
- 400 `{"error": …, "error_description": …}` (RFC 6749 §5.2) on the OAuth endpoints only;
- 401 with `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750), 403 for a missing scope;
- 404, 429 (with `Retry-After`) and 5xx as `{"error": …, "error_description": …}`.

Native errors (`CalbrokerError`) raised by the services underneath map here, registered on the
compat router so they never reach the native problem+json mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, MethodNotAllowedException, NotFoundException
from structlog.contextvars import get_contextvars

from calbroker.api.compat.cronofy.wire import MissingField, UnsupportedParameter
from calbroker.domain import errors
from calbroker.logs import get_logger
from calbroker.redaction import redact_text
from calbroker.store.keyring import KeyringError

__all__ = ["NotSupported", "OAuthError", "error_handlers", "insufficient_scope"]

log = get_logger(__name__)

_DOCS = "docs/cronofy.md"

# Native field names where Cronofy's differ (the engine validates in its own words).
_FIELD_NAMES = {"duration": "required_duration"}


class OAuthError(Exception):
    """An RFC 6749 §5.2 error of the OAuth endpoints, always 400 (credentials travel in the body)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class NotSupported(Exception):
    """A Cronofy feature with no counterpart in calbroker: 501 with the reason."""

    def __init__(self, feature: str, description: str) -> None:
        super().__init__(description)
        self.feature = feature
        self.description = description


class _Forbidden(errors.AccessDenied):
    """The token lacks a scope the endpoint needs."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"This token was not granted the `{scope}` scope.")
        self.scope = scope


def insufficient_scope(scope: str) -> errors.AccessDenied:
    return _Forbidden(scope)


def _request_id() -> str | None:
    value = get_contextvars().get("request_id")
    return value if isinstance(value, str) else None


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[Any]:
    request_id = _request_id()
    if request_id and "errors" not in body:
        body["request_id"] = request_id
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def _plain(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> Response[Any]:
    return _json(status, {"error": error, "error_description": redact_text(description)}, headers)


def _key(error: errors.InvalidRequest) -> str:
    if isinstance(error, UnsupportedParameter | MissingField):
        return error.key
    if isinstance(error, errors.LimitExceeded):
        return "errors.limit_exceeded"
    return "errors.invalid"


def validation_body(error: errors.InvalidRequest) -> dict[str, Any]:
    """Cronofy's 422 body for an input error (also a batch entry's `data`)."""
    found: dict[str, list[dict[str, str]]] = {}
    key = _key(error)
    for item in error.errors or [errors.FieldError("base", error.detail)]:
        field = _FIELD_NAMES.get(item.field, item.field)
        found.setdefault(field, []).append({"key": key, "description": redact_text(item.message)})
    return {"errors": found}


def cronofy_error(exc: Exception) -> Response[Any]:
    """Any exception as the response Cronofy would have sent for it."""
    match exc:
        case OAuthError():
            return _plain(400, exc.error, exc.description)
        case NotSupported():
            return _plain(
                501,
                "not_supported",
                f"{exc.description} See {_DOCS} for what calbroker's Cronofy-compatible API covers.",
            )
        case errors.InvalidRequest():
            return _json(422, validation_body(exc))
        case errors.Unauthenticated():
            return _plain(
                401,
                exc.reason,
                exc.detail,
                {"WWW-Authenticate": f'Bearer realm="calbroker", error="{exc.reason}"'},
            )
        case _Forbidden():
            return _plain(
                403,
                "insufficient_scope",
                exc.detail,
                {"WWW-Authenticate": f'Bearer realm="calbroker", error="insufficient_scope", scope="{exc.scope}"'},
            )
        case errors.AccessDenied() | errors.MailboxOutOfScope() | errors.ImpersonationDenied():
            return _plain(403, exc.slug.replace("-", "_"), exc.detail)
        case errors.NotFound():
            return _plain(404, "not_found", exc.detail)
        case errors.TeamsUnavailable():
            return _json(422, validation_body(errors.InvalidRequest.field("conferencing", exc.detail)))
        case errors.MailboxError():
            return _json(422, validation_body(errors.InvalidRequest.field("base", exc.detail)))
        case errors.WriteInProgress():
            retry = str(max(1, round(exc.retry_after)))
            return _plain(429, "too_many_requests", exc.detail, {"Retry-After": retry})
        case errors.UpstreamThrottled():
            retry = str(max(1, round(exc.retry_after or 1)))
            return _plain(429, "too_many_requests", exc.detail, {"Retry-After": retry})
        case errors.Conflict():
            return _json(422, validation_body(errors.InvalidRequest.field("base", exc.detail)))
        case errors.UpstreamTimeout():
            return _plain(504, "upstream_timeout", exc.detail)
        case errors.UpstreamUnavailable():
            return _plain(503, "upstream_unavailable", exc.detail)
        case errors.CalbrokerError():
            return _plain(502, exc.slug.replace("-", "_"), exc.detail)
        case KeyringError():
            log.error("sealed secret unavailable", error=str(exc))
            return _plain(503, "secrets_unavailable", "A stored credential cannot be decrypted on this server.")
        case NotFoundException():
            return _plain(404, "not_found", f"No Cronofy-compatible endpoint matches this path. See {_DOCS}.")
        case MethodNotAllowedException():
            return _plain(405, "method_not_allowed", str(exc.detail), dict(exc.headers or {}))
        case HTTPException() if exc.status_code == 413:
            return _plain(413, "payload_too_large", "The request body is larger than the server accepts.")
        case HTTPException() if exc.status_code < 500:
            return _plain(exc.status_code, "bad_request", str(exc.detail))
        case _:
            log.error("unhandled exception", exc_info=exc)
            return _plain(500, "internal_error", "An unexpected error occurred; it was logged with the request id.")


def _handle(_request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return cronofy_error(exc)


def error_handlers() -> dict[int | type[Exception], Callable[[Request[Any, Any, Any], Any], Response[Any]]]:
    """The compat router's exception handlers: nearer than the app's problem+json plugin, so they win."""
    return {
        OAuthError: _handle,
        NotSupported: _handle,
        errors.CalbrokerError: _handle,
        KeyringError: _handle,
        HTTPException: _handle,
        Exception: _handle,
    }
