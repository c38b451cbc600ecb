"""The Graph endpoint at `/v1.0/*`: the route table, JSON bodies in, Graph's headers out."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

from calbroker.sandbox.graph import (
    batch,
    calendar,
    calendars,
    delta,
    events,
    online_meetings,
    places,
    schedule,
    subscriptions,
    users,
)
from calbroker.sandbox.graph.dispatch import authenticate, dispatch, normalise_path
from calbroker.sandbox.graph.odata import (
    JSON_CONTENT_TYPE,
    Caller,
    GraphContext,
    GraphError,
    GraphResponse,
    Route,
    error_body,
)

__all__ = ["ROUTES", "routes"]

_DIAGNOSTIC = (
    '{"ServerInfo":{"DataCenter":"Sandbox","Slice":"E","Ring":"5","ScaleUnit":"000","RoleInstance":"SANDBOX"}}'
)

ROUTES: tuple[Route, ...] = (
    *users.ROUTES,
    *places.ROUTES,
    *online_meetings.ROUTES,
    *schedule.ROUTES,
    *calendar.ROUTES,
    *delta.ROUTES,
    *events.ROUTES,
    *calendars.ROUTES,
    *subscriptions.ROUTES,
    *batch.ROUTES,
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
            path = normalise_path(request.match_info["tail"], caller)
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
            table=ROUTES,
        )
        return _render(response)

    return [web.route("*", "/v1.0/{tail:.*}", handle)]
