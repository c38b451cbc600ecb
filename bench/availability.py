"""Availability latency against the sandbox at a set round-trip time, versus a naive baseline.

Run: ``make bench`` or ``.venv/bin/python bench/availability.py [--rtt-ms 50] [--runs 15]``.

For each member count it prints the upstream calls one query costs (counted by the sandbox),
p50/p95 of ``POST /v1/availability`` end to end (over HTTP to ``calbroker serve`` in a process
of its own, as deployed: the sandbox, standing in for Microsoft, runs in this one), p50 as a
ratio of the one-round-trip floor,
and the same members read by a naive one-call-per-member client in the same run. Contoso has
fewer than 250 in-scope addresses, so large counts are padded with addresses that do not exist:
Graph answers those per schedule inside the same batched calls, which is what is measured.
Figures go to ``bench/results/availability.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.engine import build_query, median_ms
from bench.serving import api_environment, free_port, served
from bench.world import bench_database, connect_contoso, contoso_secret, percentile, remove_root
from calbroker.config import MasterKey, Settings, sandbox_cloud
from calbroker.domain import Interval, ResponseFormat
from calbroker.logs import configure_logging
from calbroker.providers import Deadline
from calbroker.sandbox import SandboxThread, start_sandbox_in_thread, this_week_monday
from calbroker.services import open_services
from calbroker.store.applications import create_application

MEMBER_COUNTS = (1, 10, 50, 100, 250)
RESULTS = Path(__file__).parent / "results" / "availability.json"


class Control:
    def __init__(self, sandbox: SandboxThread) -> None:
        self.url = sandbox.url
        self.context = ssl.create_default_context(cafile=str(sandbox.ca_path))

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def reset_stats(self) -> None:
        self.call("DELETE", "/_sandbox/stats")

    def calls(self, route: str) -> int:
        return int(self.call("GET", "/_sandbox/stats")["routes"].get(route, 0))


def _members(sandbox: SandboxThread, count: int) -> list[str]:
    contoso = sandbox.directory.tenants["contoso"]
    scope = set(contoso.groups[contoso.scope_group].members)
    real = sorted(
        address
        for mailbox in contoso.mailboxes.values()
        if mailbox.email in scope
        for address in mailbox.addresses
        if address.endswith("@contoso.com")
    )
    padding = [f"bench.member{i:03d}@contoso.com" for i in range(max(0, count - len(real)))]
    return (real + padding)[:count]


async def run(rtt_ms: float, runs: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="calbroker-bench-"))
    sandbox = start_sandbox_in_thread(
        seed=0, state_dir=root / "sandbox", latency_ms=rtt_ms, anchor=this_week_monday(datetime.now(UTC).date())
    )
    control = Control(sandbox)
    try:
        url = await bench_database(root, "bench")
        key = MasterKey("bench", b"b" * 32)
        settings = Settings(
            data_dir=root / "data",
            database_url=url,
            master_keys=(key,),
            clouds={"sandbox": sandbox_cloud(sandbox.url, sandbox.ca_path)},
            allow_private_upstreams=True,
            database_pool_size=4,
        )
        async with open_services(settings) as services:
            async with services.pool.acquire() as conn:
                issued = await create_application(conn, "bench", actor="bench")
            connection = await connect_contoso(services, sandbox, issued.application.id, "adele.vance@contoso.com")
            provider = services.upstream.registry.build(connection, contoso_secret(sandbox))
            start = datetime.combine(
                this_week_monday(datetime.now(UTC).date()) + timedelta(days=7), datetime.min.time(), UTC
            )
            window = Interval(start, start + timedelta(days=7))
            # The floor: one getSchedule round trip for one mailbox, measured in this run.
            await provider.fetch_schedules(["adele.vance@contoso.com"], window, Deadline.after(30))
            floor_samples = []
            for _ in range(runs):
                began = time.perf_counter()
                await provider.fetch_schedules(["adele.vance@contoso.com"], window, Deadline.after(30))
                floor_samples.append((time.perf_counter() - began) * 1000)
            floor_ms = statistics.median(floor_samples)

            rows: list[dict[str, Any]] = []
            env = api_environment(database=url, key=key, sandbox=sandbox, port=free_port(), data_dir=str(root / "data"))
            async with served(env) as api, httpx.AsyncClient(base_url=api.url, timeout=60) as client:
                headers = {"Authorization": f"Bearer {issued.token}"}
                for count in MEMBER_COUNTS:
                    members = _members(sandbox, count)
                    body = {
                        "participants": [{"members": [{"email": m} for m in members], "required": 1}],
                        "duration": {"minutes": 30},
                        "query_periods": [{"start": window.start.isoformat(), "end": window.end.isoformat()}],
                        "freshness": "live",  # cold: Microsoft's answer, whatever the synced copy holds
                    }
                    first = await client.post("/v1/availability", json=body, headers=headers)  # warm token + TLS
                    assert first.status_code == 200, first.text
                    latencies = []
                    control.reset_stats()
                    for _ in range(runs):
                        began = time.perf_counter()
                        response = await client.post("/v1/availability", json=body, headers=headers)
                        latencies.append((time.perf_counter() - began) * 1000)
                        assert response.status_code == 200, response.text
                    calls = control.calls("graph:getSchedule") / runs
                    naive = []
                    for _ in range(max(3, runs // 3)):
                        began = time.perf_counter()
                        await asyncio.gather(
                            *(provider.fetch_schedules([m], window, Deadline.after(60)) for m in members)
                        )
                        naive.append((time.perf_counter() - began) * 1000)
                    p50 = statistics.median(latencies)
                    rows.append(
                        {
                            "members": count,
                            "upstream_calls_per_query": calls,
                            "p50_ms": round(p50, 1),
                            "p95_ms": round(percentile(latencies, 0.95), 1),
                            "p50_over_rtt": round(p50 / rtt_ms, 2) if rtt_ms else None,
                            "p50_over_measured_floor": round(p50 / floor_ms, 2),
                            "naive_calls_per_query": count,
                            "naive_p50_ms": round(statistics.median(naive), 1),
                            "naive_over_calbroker": round(statistics.median(naive) / p50, 2),
                        }
                    )
            await provider.aclose()
        engine_query = build_query(required=3, max_results=512, response_format=ResponseFormat.SLOTS)
        engine_ms, _ = median_ms(engine_query, runs)
        return {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
            "rtt_ms": rtt_ms,
            "runs_per_point": runs,
            "measured_floor_ms": round(floor_ms, 1),
            "rows": rows,
            "engine_100_members_30_days_ms": round(engine_ms, 2),
        }
    finally:
        sandbox.stop()
        remove_root(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rtt-ms", type=float, default=50.0, help="simulated round trip to Microsoft")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    configure_logging("warning")
    figures = asyncio.run(run(args.rtt_ms, args.runs))
    print(
        f"availability vs sandbox RTT {figures['rtt_ms']:.0f} ms (one getSchedule measured at "
        f"{figures['measured_floor_ms']} ms), {figures['runs_per_point']} runs per point, {figures['machine']}"
    )
    header = (
        f"{'members':>7} {'calls':>6} {'p50 ms':>8} {'p95 ms':>8} {'p50/RTT':>8} {'p50/floor':>9} "
        f"{'naive p50':>10} {'naive/us':>9}"
    )
    print(header)
    for row in figures["rows"]:
        print(
            f"{row['members']:>7} {row['upstream_calls_per_query']:>6.1f} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} "
            f"{row['p50_over_rtt'] or 0:>8.2f} {row['p50_over_measured_floor']:>9.2f} {row['naive_p50_ms']:>10.1f} "
            f"{row['naive_over_calbroker']:>9.2f}"
        )
    print(f"engine compute, 100 members × 30 days (slots): {figures['engine_100_members_30_days_ms']} ms median")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()
