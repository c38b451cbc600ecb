"""Microsoft Graph v1.0 at `/v1.0/*`: bearer-token checks, routing, Microsoft's enforcement
(roles, application access policy, on-premises mailboxes, throttling), faults, and JSON `$batch`.

Enforcement order for one call: token (401 InvalidAuthenticationToken) → route → mailbox
(404 ErrorInvalidUser / Request_ResourceNotFound) → permission (403 ErrorAccessDenied /
Authorization_RequestDenied) → mailbox location and access policy (404 MailboxNotEnabledForRESTAPI,
403 "Access to OData is disabled.") → per-(app, mailbox) concurrency and rate limits (429 +
Retry-After) → injected fault (inside the concurrency slot) → handler. Every call is counted in
the stats under its route key, whatever it answers.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import yarl
from aiohttp import web
from multidict import CIMultiDict

from calbroker.sandbox.directory import ExchangeLocation
from calbroker.sandbox.entra.tokens import TokenError, verify
from calbroker.sandbox.faults import FaultAction, Throttled
from calbroker.sandbox.graph import calendar, events, online_meetings, subscriptions, users
from calbroker.sandbox.graph.odata import (
    ACCESS_DENIED,
    JSON_CONTENT_TYPE,
    Caller,
    GraphContext,
    GraphError,
    GraphRequest,
    GraphResponse,
    Route,
    body_get,
    error_body,
    make_route,
)

__all__ = ["GRAPH_AUDIENCES", "authenticate", "dispatch", "routes"]

# Graph accepts its App ID URI and its application id as audience.
GRAPH_AUDIENCES = frozenset(
    {"https://graph.microsoft.com", "https://graph.microsoft.com/", "00000003-0000-0000-c000-000000000000"}
)
_WWW_AUTHENTICATE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
    'client_id="00000003-0000-0000-c000-000000000000"'
)
_DIAGNOSTIC = (
    '{"ServerInfo":{"DataCenter":"Sandbox","Slice":"E","Ring":"5","ScaleUnit":"000","RoleInstance":"SANDBOX"}}'
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
    table: Iterable[Route] | None = None,
) -> tuple[str, GraphResponse]:
    """Run one Graph call (direct or inside `$batch`); returns (route key, response)."""
    state = ctx.state
    request_id = str(uuid.uuid4())
    key = "graph:unknown"
    counted = False
    try:
        try:
            route, params = _find(ROUTES if table is None else table, method.upper(), path)
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
        )
        if route.needs_mailbox:
            _resolve_mailbox(ctx, route, req)
        _authorize(ctx, route, req)
        mailbox = req.mailbox.email if req.mailbox else None

        async def run() -> GraphResponse:
            nonlocal counted
            counted = True
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


def _inner_target(url: str) -> tuple[str, dict[str, str]]:
    parsed = yarl.URL(url)
    path = parsed.path
    if parsed.is_absolute():
        path = path.split("/v1.0", 1)[-1]
    if not path.startswith("/"):
        path = "/" + path
    return path, {k: v for k, v in parsed.query.items()}


def _order_ok(items: list[dict[str, Any]]) -> bool:
    """dependsOn must reference ids of the batch and form no cycle."""
    graph = {str(i["id"]).lower(): [str(d).lower() for d in i.get("dependsOn") or []] for i in items}
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(node: str) -> bool:
        if node in done:
            return True
        if node in visiting or node not in graph:
            return False
        visiting.add(node)
        ok = all(visit(dep) for dep in graph[node])
        visiting.discard(node)
        done.add(node)
        return ok

    return all(visit(node) for node in graph)


async def batch(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/json-batching — at most 20 requests, unique ids (else 400),
    # dependsOn ordering with 424 for dependants of a failed request; each inner request is
    # evaluated against throttling individually.
    settings = ctx.state.settings
    items = body_get(req.body, "requests")
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise GraphError(400, "BadRequest", "Invalid batch payload format.")
    if len(items) > settings.batch_max_requests:
        raise GraphError(
            400,
            "BadRequest",
            f"The number of batch requests ({len(items)}) exceeds the limit of {settings.batch_max_requests}.",
        )
    normalised: list[dict[str, Any]] = []
    for item in items:
        lowered = {k.lower(): v for k, v in item.items()}
        if not lowered.get("id") or not lowered.get("method") or not lowered.get("url"):
            raise GraphError(400, "BadRequest", "Invalid batch payload format.")
        if "body" in lowered and not any(k.lower() == "content-type" for k in (lowered.get("headers") or {})):
            raise GraphError(
                400, "BadRequest", f"Write request id : {lowered['id']} does not contain Content-Type header or body."
            )
        normalised.append(
            {
                "id": str(lowered["id"]),
                "method": str(lowered["method"]),
                "url": str(lowered["url"]),
                "headers": lowered.get("headers") or {},
                "body": lowered.get("body"),
                "dependsOn": lowered.get("dependson") or [],
            }
        )
    ids = [i["id"].lower() for i in normalised]
    if len(set(ids)) != len(ids):
        raise GraphError(400, "BadRequest", "Batch request ids must be unique.")
    if not _order_ok(normalised):
        raise GraphError(400, "BadRequest", "dependsOn must reference requests of this batch without cycles.")
    results: dict[str, dict[str, Any]] = {}
    finished = {i: asyncio.Event() for i in ids}
    gate = asyncio.Semaphore(settings.batch_concurrency)
    inner_routes = [r for r in ROUTES if r.key != "graph:batch"]

    async def run(item: dict[str, Any]) -> None:
        key = item["id"].lower()
        try:
            for dep in item["dependsOn"]:
                await finished[str(dep).lower()].wait()
            if any(results[str(dep).lower()]["status"] >= 400 for dep in item["dependsOn"]):
                results[key] = {
                    "id": item["id"],
                    "status": 424,
                    "headers": {"Content-Type": JSON_CONTENT_TYPE},
                    "body": error_body(
                        "FailedDependency",
                        "A dependent request failed.",
                        str(uuid.uuid4()),
                        req.client_request_id,
                        ctx.state.clock(),
                    ),
                }
                return
            path, query = _inner_target(item["url"])
            try:
                path = _normalise_path(path, req.caller)
            except GraphError as exc:
                results[key] = {
                    "id": item["id"],
                    "status": exc.status,
                    "headers": {"Content-Type": JSON_CONTENT_TYPE},
                    "body": error_body(
                        exc.code, exc.message, str(uuid.uuid4()), req.client_request_id, ctx.state.clock()
                    ),
                }
                return
            inner_headers = CIMultiDict(req.headers)
            inner_headers.update({str(k): str(v) for k, v in item["headers"].items()})
            async with gate:
                _, response = await dispatch(
                    ctx,
                    method=item["method"],
                    path=path,
                    query=query,
                    headers=inner_headers,
                    body=item["body"],
                    caller=req.caller,
                    client_request_id=req.client_request_id,
                    table=inner_routes,
                )
            out_headers = {
                k: v for k, v in response.headers.items() if k.lower() not in ("request-id", "client-request-id")
            }
            out_headers.setdefault("Cache-Control", "no-cache")
            if response.body is not None:
                out_headers.setdefault("OData-Version", "4.0")
                out_headers.setdefault("Content-Type", JSON_CONTENT_TYPE)
            entry: dict[str, Any] = {"id": item["id"], "status": response.status, "headers": out_headers}
            if response.body is not None:
                entry["body"] = response.body
            results[key] = entry
        finally:
            finished[key].set()

    await asyncio.gather(*(run(item) for item in normalised))
    return GraphResponse(200, {"responses": [results[i] for i in ids]})


ROUTES: tuple[Route, ...] = (
    *users.ROUTES,
    *online_meetings.ROUTES,
    *calendar.ROUTES,
    *events.ROUTES,
    *subscriptions.ROUTES,
    make_route("POST", r"/\$batch", "graph:batch", batch, set(), family="batch"),
)


def _render(response: GraphResponse) -> web.Response:
    headers = dict(response.headers)
    headers.setdefault("x-ms-ags-diagnostic", _DIAGNOSTIC)
    headers.setdefault("Cache-Control", "no-cache")
    if response.body is None:
        return web.Response(status=response.status, headers=headers)
    headers["Content-Type"] = JSON_CONTENT_TYPE
    headers.setdefault("OData-Version", "4.0")
    return web.Response(status=response.status, body=json.dumps(response.body).encode(), headers=headers)


def _normalise_path(tail: str, caller: Caller | GraphError) -> str:
    path = "/" + tail.strip("/")
    lowered = path.lower()
    if lowered == "/me" or lowered.startswith("/me/"):
        if isinstance(caller, Caller) and caller.user is not None:
            return "/users/" + caller.user.id + path[3:]
        if isinstance(caller, Caller):
            raise GraphError(400, "BadRequest", "/me request is only valid with delegated authentication flow.")
    return path


def routes(ctx: GraphContext) -> list[web.RouteDef]:
    """The aiohttp routes serving Graph under `/v1.0/`."""

    async def handle(request: web.Request) -> web.StreamResponse:
        client_request_id = request.headers.get("client-request-id", "")
        try:
            caller: Caller | GraphError = authenticate(ctx, request.headers.get("Authorization"))
        except GraphError as exc:
            caller = exc
        body: Any = None
        try:
            path = _normalise_path(request.match_info["tail"], caller)
            if request.can_read_body:
                raw = await request.read()
                if raw.strip():
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        raise GraphError(
                            400,
                            "BadRequest",
                            "Unable to read JSON request payload. Please ensure Content-Type header is set and "
                            "payload is of valid JSON format.",
                        ) from None
        except GraphError as exc:
            request_id = str(uuid.uuid4())
            payload = error_body(exc.code, exc.message, request_id, client_request_id, ctx.state.clock())
            return _render(GraphResponse(exc.status, payload, {"request-id": request_id, **exc.headers}))
        _, response = await dispatch(
            ctx,
            method=request.method,
            path=path,
            query={k: v for k, v in request.query.items()},
            headers=request.headers,
            body=body,
            caller=caller,
            client_request_id=client_request_id,
        )
        return _render(response)

    return [web.route("*", "/v1.0/{tail:.*}", handle)]
