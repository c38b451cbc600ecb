"""`/metrics` says what calbroker did upstream: calls by provider, operation and outcome with their
latency, throttling waits, token fetches, coalesced reads, and connections by status."""

from __future__ import annotations

import asyncpg
import prometheus_client
from litestar.testing import AsyncTestClient

from calbroker.metrics import Metrics
from calbroker.sandbox import SandboxThread
from calbroker.store.applications import IssuedKey
from tests.e2e.conftest import Tenants
from tests.e2e.test_availability import ADELE, ANNA, _auth, _week
from tests.fixtures.metrics import samples, value
from tests.fixtures.sandbox import SandboxControl

GET_SCHEDULE = "POST users/{id}/calendar/getSchedule"


async def _scrape(client: AsyncTestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:  # type: ignore[type-arg]
    response = await client.get("/metrics")
    assert response.status_code == 200
    return samples(response.text)


async def test_upstream_calls_throttling_tokens_and_connections_are_counted(
    client: AsyncTestClient,  # type: ignore[type-arg]
    api_key: IssuedKey,
    tenants: Tenants,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
    pool: asyncpg.Pool,  # type: ignore[type-arg]
) -> None:
    before = await _scrape(client)
    start, end = _week(sandbox)
    sandbox_control.fault(route="graph:getSchedule", status=429, retry_after=1, count=1)
    response = await client.post(
        "/v1/free_busy",
        json={"mailboxes": [ADELE, ANNA], "start": start.isoformat(), "end": end.isoformat(), "freshness": "live"},
        headers=_auth(api_key),
    )
    assert response.status_code == 200, response.text
    assert all("error" not in entry for entry in response.json()["free_busy"]), response.text
    after = await _scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    graph_ok = {"provider": "graph", "operation": GET_SCHEDULE, "outcome": "ok"}
    assert grew("calbroker_upstream_calls_total", **graph_ok) == 1
    assert grew("calbroker_upstream_calls_total", **{**graph_ok, "outcome": "http-429"}) == 1
    assert grew("calbroker_upstream_call_duration_seconds_count", **graph_ok) == 1
    assert grew("calbroker_upstream_call_duration_seconds_sum", **graph_ok) > 0
    ews = {"provider": "ews", "operation": "GetUserAvailability", "outcome": "ok"}
    assert grew("calbroker_upstream_calls_total", **ews) == 1
    assert grew("calbroker_upstream_throttle_waits_total", provider="graph") == 1
    assert grew("calbroker_upstream_throttle_wait_seconds_total", provider="graph") == 1.0
    # The app's first Graph call fetched a token from Entra; msal's cache answered any later one.
    assert value(after, "calbroker_token_refreshes_total", outcome="ok") >= 1
    active = await pool.fetchval("SELECT count(*) FROM connections WHERE status = 'active'")
    assert value(after, "calbroker_connections", status="active") == active >= 2
    assert ("calbroker_connections", frozenset({("status", "revoked")})) in after


def test_each_process_has_its_own_registry_and_nothing_goes_to_the_global_one() -> None:
    first, second = Metrics(), Metrics()
    first.coalesced_reads.inc()
    assert second.registry.get_sample_value("calbroker_coalesced_schedule_reads_total") == 0
    assert not [name for name in prometheus_client.REGISTRY._names_to_collectors if name.startswith("calbroker")]
