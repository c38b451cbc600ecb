"""The worker's metrics endpoint: `/metrics` (Prometheus) and `/healthz`, on a port of its own.

A worker serves no API, so it needs its own small HTTP server for Prometheus to scrape its
counters (sync rounds, upstream calls, EWS stream events) and for an orchestrator's liveness
probe. aiohttp's server runs on the worker's event loop; the port is CALBROKER_WORKER_METRICS_PORT
(or `calbroker worker --metrics-port`), on CALBROKER_HOST; without one there is no endpoint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from calbroker.services import Services, refresh_gauges

__all__ = ["metrics_endpoint"]


@asynccontextmanager
async def metrics_endpoint(services: Services, host: str, port: int) -> AsyncIterator[int]:
    """Serve /metrics and /healthz on host:port while the block runs; yields the bound port (for port 0)."""

    async def scrape(_request: web.Request) -> web.Response:
        await refresh_gauges(services)
        return web.Response(
            body=generate_latest(services.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = next(iter(runner.addresses))[1] if runner.addresses else port
        yield int(bound)
    finally:
        await runner.cleanup()
