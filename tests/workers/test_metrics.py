"""The worker's metrics endpoint: its sync rounds and upstream calls, the synced copies' freshness
and the queue's depth, on a port of its own (a worker serves no API)."""

from __future__ import annotations

import aiohttp

from calbroker.domain.connections import Connection
from calbroker.services import open_services
from calbroker.services.sync.queue import request_round
from calbroker.store.sync_state import request_full_everywhere
from calbroker.workers.metrics import metrics_endpoint
from calbroker.workers.runner import Worker
from tests.fixtures.metrics import samples, value
from tests.fixtures.sync import SyncWorld
from tests.workers.conftest import ADELE


async def test_the_worker_serves_its_rounds_freshness_and_queue(world: SyncWorld, contoso: Connection) -> None:
    async with (
        open_services(world.settings, pool_size=6) as services,
        metrics_endpoint(services, "127.0.0.1", 0) as port,
        aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http,
    ):
        async with services.pool.acquire() as conn, conn.transaction():
            assert await request_full_everywhere(conn) >= 2
            await request_round(conn, (await world.rows(contoso.id))[ADELE].id, full=True)
        async with http.get("/metrics") as response:
            assert response.status == 200
            waiting = samples(await response.text())
        await Worker(services).drain()
        async with http.get("/metrics") as response:
            scraped = samples(await response.text())
        async with http.get("/healthz") as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})

    assert value(scraped, "calbroker_sync_rounds_total", kind="full", outcome="ok") >= 2
    assert value(scraped, "calbroker_sync_round_duration_seconds_count") >= 2
    graph_calls = sum(
        count
        for (name, labels), count in scraped.items()
        if name == "calbroker_upstream_calls_total" and ("provider", "graph") in labels
    )
    assert graph_calls >= 2  # each full round read Graph
    assert value(scraped, "calbroker_synced_mailboxes", state="active") >= 2
    assert value(scraped, "calbroker_sync_stale_mailboxes") == 0  # every round just ran
    assert 0 < value(scraped, "calbroker_sync_oldest_round_age_seconds") < 600
    assert value(waiting, "calbroker_queue_jobs", job="sync.round", status="queued") >= 1
    assert value(scraped, "calbroker_queue_jobs", job="sync.round", status="queued") == 0
