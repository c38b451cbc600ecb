"""The worker's Prometheus endpoint (`calbroker worker --metrics-port`): webhook attempts by outcome,
their latency, the outbox's depth and the age of its oldest undelivered delivery.

Attempts are counted where they are made, so each worker replica is scraped on its own port; the queue
gauges are read from the database and are the same on every replica (the API's `/metrics` has them too).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from calbroker.services.channels import Deliveries

__all__ = ["serving_metrics"]


@contextlib.asynccontextmanager
async def serving_metrics(deliveries: Deliveries, *, host: str, port: int) -> AsyncIterator[str]:
    """`GET /metrics` on host:port for the block (port 0: any free one); yields the URL it serves."""

    async def scrape(_request: web.Request) -> web.Response:
        return web.Response(body=await deliveries.scrape(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = port
        for address in runner.addresses:  # the port the OS chose when asked for 0
            bound = address[1]
        yield f"http://{host}:{bound}/metrics"
    finally:
        await runner.cleanup()
