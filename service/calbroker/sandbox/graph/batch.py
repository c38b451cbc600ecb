"""JSON batching: `POST /v1.0/$batch` runs up to 20 Graph calls, each through the same dispatch.

https://learn.microsoft.com/graph/json-batching — at most 20 requests, unique ids (else 400),
dependsOn ordering with 424 for dependants of a failed request; each inner request is evaluated
against throttling individually.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import yarl
from multidict import CIMultiDict

from calbroker.sandbox.graph.dispatch import dispatch, normalise_path
from calbroker.sandbox.graph.odata import (
    JSON_CONTENT_TYPE,
    GraphContext,
    GraphError,
    GraphRequest,
    GraphResponse,
    Route,
    body_get,
    error_body,
    make_route,
)

__all__ = ["ROUTES", "batch"]


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
    inner_routes = tuple(r for r in req.routes if r.key != "graph:batch")

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
                path = normalise_path(path, req.caller)
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


ROUTES: tuple[Route, ...] = (make_route("POST", r"/\$batch", "graph:batch", batch, set(), family="batch"),)
