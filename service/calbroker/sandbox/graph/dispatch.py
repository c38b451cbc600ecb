"""One Graph call, from the wire or from inside `$batch`: bearer-token checks, routing and
Microsoft's enforcement (roles, application access policy, on-premises mailboxes, throttling), faults.

Enforcement order for one call: token (401 InvalidAuthenticationToken) → route → mailbox
(404 ErrorInvalidUser / Request_ResourceNotFound) → permission (403 ErrorAccessDenied /
Authorization_RequestDenied) → mailbox location and access policy (404 MailboxNotEnabledForRESTAPI,
403 "Access to OData is disabled.") → per-(app, mailbox) concurrency and rate limits (429 +
Retry-After) → injected fault (inside the concurrency slot) → handler. Every call is counted in
the stats under its route key, whatever it answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from calbroker.sandbox.directory import ExchangeLocation
from calbroker.sandbox.entra import TokenError, verify
from calbroker.sandbox.faults import FaultAction, Throttled
from calbroker.sandbox.graph.odata import (
    ACCESS_DENIED,
    Caller,
    GraphContext,
    GraphError,
    GraphRequest,
    GraphResponse,
    Route,
    error_body,
)

__all__ = ["GRAPH_AUDIENCES", "authenticate", "dispatch", "normalise_path"]

# Graph accepts its App ID URI and its application id as audience.
GRAPH_AUDIENCES = frozenset(
    {"https://graph.microsoft.com", "https://graph.microsoft.com/", "00000003-0000-0000-c000-000000000000"}
)
_WWW_AUTHENTICATE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
    'client_id="00000003-0000-0000-c000-000000000000"'
)
_DEFAULT_ERRORS = {
    400: ("BadRequest", "Bad request."),
    401: ("InvalidAuthenticationToken", "Access token validation failure."),
    403: ("ErrorAccessDenied", ACCESS_DENIED),
    404: ("ErrorItemNotFound", "The specified object was not found in the store."),
    409: (
        "ErrorIrresolvableConflict",
        "The send or update operation could not be performed because the change key passed in the request does "
        "not match the current change key for the item.",
    ),
    429: ("ApplicationThrottled", "Application is over its MailboxConcurrency limit."),
    500: ("generalException", "An unspecified error has occurred."),
    503: ("ServiceNotAvailable", "The service is temporarily unavailable. Please try again later."),
    504: ("GatewayTimeout", "The request timed out."),
}


def authenticate(ctx: GraphContext, authorization: str | None) -> Caller:
    """The caller of a bearer token signed by this sandbox, or 401 as Graph answers it."""
    state = ctx.state
    if not authorization or not authorization.lower().startswith("bearer ") or not authorization[7:].strip():
        raise GraphError(
            401, "InvalidAuthenticationToken", "Access token is empty.", {"WWW-Authenticate": _WWW_AUTHENTICATE}
        )
    token = authorization[7:].strip()
    try:
        _, claims = verify(token, state.keys.signing_key.public_key())
    except TokenError:
        raise GraphError(
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure.",
            {"WWW-Authenticate": _WWW_AUTHENTICATE},
        ) from None
    if claims.get("aud") not in GRAPH_AUDIENCES:
        raise GraphError(
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
            {"WWW-Authenticate": _WWW_AUTHENTICATE},
        )
    now = state.clock().timestamp()
    skew = state.settings.token_clock_skew_s
    if now > float(claims.get("exp", 0)) + skew:
        raise GraphError(
            401,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
            {"WWW-Authenticate": _WWW_AUTHENTICATE},
        )
    if now + skew < float(claims.get("nbf", 0)):
        raise GraphError(401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is not yet valid.")
    tenant = state.directory.tenant_by_id(str(claims.get("tid", "")))
    if tenant is None:
        raise GraphError(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid tenant.")
    client_id = str(claims.get("appid", ""))
    scopes = frozenset(str(claims.get("scp", "")).split())
    user = state.directory.mailbox_by_id(str(claims.get("oid", ""))) if scopes else None
    return Caller(
        tenant=tenant,
        client_id=client_id,
        roles=frozenset(claims.get("roles") or ()),
        scopes=scopes,
        user=user,
        principal=state.directory.service_principal(tenant, client_id),
        token_id=str(claims.get("uti", "")),
    )


def _find(table: Iterable[Route], method: str, path: str) -> tuple[Route, dict[str, str]]:
    allowed = False
    for route in table:
        match = route.pattern.match(path)
        if match is None:
            continue
        if route.method == method:
            return route, {k: v for k, v in match.groupdict().items() if v is not None}
        allowed = True
    if allowed:
        raise GraphError(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target.")
    segment = path.strip("/").split("/")[-1] or path
    raise GraphError(400, "BadRequest", f"Resource not found for the segment '{segment}'.")


def _resolve_mailbox(ctx: GraphContext, route: Route, req: GraphRequest) -> None:
    ref = req.params["user"]
    mailbox = ctx.state.directory.mailbox_in_tenant(req.caller.tenant, ref)
    if mailbox is None:
        if route.family == "directory":
            raise GraphError(
                404,
                "Request_ResourceNotFound",
                f"Resource '{ref}' does not exist or one of its queried reference-property objects are not present.",
            )
        raise GraphError(404, "ErrorInvalidUser", f"The requested user '{ref}' is invalid.")
    req.mailbox = mailbox


def _authorize(ctx: GraphContext, route: Route, req: GraphRequest) -> None:
    caller = req.caller
    if not caller.has_any(route.permissions):
        if route.family == "directory":
            raise GraphError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
        raise GraphError(403, "ErrorAccessDenied", ACCESS_DENIED)
    mailbox = req.mailbox
    if mailbox is None:
        return
    if caller.delegated and route.own_mailbox_only and caller.user is not None and mailbox.id != caller.user.id:
        if route.family == "directory" and caller.has_any(frozenset({"User.Read.All", "User.ReadBasic.All"})):
            return
        raise GraphError(403, "ErrorAccessDenied", ACCESS_DENIED)
    if route.family != "outlook":
        return
    # https://learn.microsoft.com/graph/auth-limit-mailbox-access
    if ctx.state.directory.tenant_of(mailbox).exchange is not ExchangeLocation.ONLINE:
        raise GraphError(
            404, "MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, soft-deleted, or is hosted on-premise."
        )
    if not caller.delegated and (
        caller.principal is None or not ctx.state.directory.mailbox_in_policy_scope(caller.principal, mailbox)
    ):
        raise GraphError(403, "ErrorAccessDenied", "Access to OData is disabled.")


def _fault_error(
    ctx: GraphContext, status: int, code: str | None, message: str | None, retry_after: float | None
) -> GraphError:
    default_code, default_message = _DEFAULT_ERRORS.get(status, ("BadRequest", "Bad request."))
    headers = {}
    if retry_after is None and status in (429, 503):
        retry_after = ctx.state.settings.throttle_retry_after_s
    if retry_after is not None:
        headers["Retry-After"] = str(round(retry_after)) if float(retry_after).is_integer() else str(retry_after)
    return GraphError(status, code or default_code, message or default_message, headers)


async def dispatch(
    ctx: GraphContext,
    *,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: Any,
    caller: Caller | GraphError,
    client_request_id: str = "",
    table: tuple[Route, ...],
) -> tuple[str, GraphResponse]:
    """Run one Graph call (direct or inside `$batch`) against `table`; returns (route key, response)."""
    state = ctx.state
    request_id = str(uuid.uuid4())
    key = "graph:unknown"
    counted = False
    try:
        try:
            route, params = _find(table, method.upper(), path)
        except GraphError:
            if isinstance(caller, GraphError):
                raise caller from None  # an invalid token answers 401 before routing
            raise
        key = route.key
        if isinstance(caller, GraphError):
            raise caller
        req = GraphRequest(
            method=method.upper(),
            path=path,
            query={k.lower(): v for k, v in query.items()},
            raw_query=dict(query),
            headers=headers,
            body=body,
            caller=caller,
            request_id=request_id,
            client_request_id=client_request_id,
            params=params,
            routes=table,
        )
        if route.needs_mailbox:
            _resolve_mailbox(ctx, route, req)
        _authorize(ctx, route, req)
        mailbox = req.mailbox.email if req.mailbox else None

        async def run() -> GraphResponse:
            nonlocal counted
            counted = True
            with state.stats.running(key, mailbox):
                fault = await state.checkpoint(key, mailbox=mailbox, client_id=caller.client_id)
                if fault is not None and fault.action is FaultAction.ERROR:
                    raise _fault_error(ctx, fault.status, fault.code, fault.message, fault.retry_after)
                req.fault = fault
                return await route.handler(ctx, req)

        if route.family == "outlook" and mailbox is not None:
            # Injected latency runs inside the slot, so a slow upstream holds its concurrency slot.
            try:
                async with state.throttle.slot(caller.client_id, mailbox):
                    response = await run()
            except Throttled as exc:
                raise GraphError(
                    429, "ApplicationThrottled", exc.reason, {"Retry-After": str(max(1, round(exc.retry_after)))}
                ) from None
        else:
            response = await run()
    except GraphError as exc:
        if not counted:
            state.stats.record(key)
        body_out = error_body(exc.code, exc.message, request_id, client_request_id, state.clock())
        response = GraphResponse(exc.status, body_out, dict(exc.headers))
    state.stats.record_status(key, response.status)
    response.headers.setdefault("request-id", request_id)
    response.headers.setdefault("client-request-id", client_request_id or request_id)
    return key, response


def normalise_path(tail: str, caller: Caller | GraphError) -> str:
    """The path after `/v1.0` with `/me` replaced by the signed-in user (delegated tokens only)."""
    path = "/" + tail.strip("/")
    lowered = path.lower()
    if lowered == "/me" or lowered.startswith("/me/"):
        if isinstance(caller, Caller) and caller.user is not None:
            return "/users/" + caller.user.id + path[3:]
        if isinstance(caller, Caller):
            raise GraphError(400, "BadRequest", "/me request is only valid with delegated authentication flow.")
    return path
