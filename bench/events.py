"""Event-write latency against the sandbox at a set round-trip time, and concurrent-booking throughput.

Run: ``make bench`` or ``.venv/bin/python bench/events.py [--rtt-ms 50] [--runs 15]``.

For Graph (contoso) and EWS (fabrikam) it times ``PUT /v1/events/{id}`` (create), a PUT that moves
the event (update), the same PUT again (idempotent replay: no upstream call) and ``DELETE``
(cancel), end to end through the API, and prints p50/p95, the upstream calls each costs (counted by
the sandbox) and p50 as a ratio of the upstream floor: one round trip of the same protocol
measured in the same run. Then the booking scenarios with ``check_availability``: twenty
concurrent PUTs for one slot of one organizer (exactly one may win) and many independent bookings
at once. The app runs in this event loop behind httpx's ASGI transport, so requests really overlap.
Figures go to ``bench/results/events.json``.
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
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.world import bench_database, contoso_secret, percentile, remove_root
from calbroker.app import create_app
from calbroker.config import MasterKey, Settings, sandbox_cloud
from calbroker.domain.connections import AccessLevel, ConnectionMethod, EwsServiceAccount
from calbroker.logs import configure_logging
from calbroker.providers import Deadline
from calbroker.sandbox import SandboxThread, start_sandbox_in_thread, this_week_monday
from calbroker.services import ConnectionDraft, verify_and_save
from calbroker.store.applications import create_application
from calbroker.store.connections import list_connections

RESULTS = Path(__file__).parent / "results" / "events.json"
CONTOSO = ("adele.vance@contoso.com", "alex.wilber@contoso.com", "megan.bowen@contoso.com", "lynne.robbins@contoso.com")
FABRIKAM = ("anna.schmidt@fabrikam.com", "ben.taylor@fabrikam.com", "chloe.martin@fabrikam.com")


class Control:
    def __init__(self, sandbox: SandboxThread) -> None:
        self.url = sandbox.url
        self.context = ssl.create_default_context(cafile=str(sandbox.ca_path))

    def call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(self.url + path, method=method)
        with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def reset_stats(self) -> None:
        self.call("DELETE", "/_sandbox/stats")

    def calls(self, prefix: str) -> int:
        routes: dict[str, int] = self.call("GET", "/_sandbox/stats")["routes"]
        return sum(count for route, count in routes.items() if route.startswith(prefix))


def _summary(samples: list[float], calls: float, floor_ms: float) -> dict[str, Any]:
    p50 = statistics.median(samples)
    return {
        "p50_ms": round(p50, 1),
        "p95_ms": round(percentile(samples, 0.95), 1),
        "upstream_calls": round(calls, 2),
        "p50_over_floor": round(p50 / floor_ms, 2),
    }


async def _connect(app: Any, sandbox: SandboxThread, application_id: uuid.UUID) -> None:
    services = app.state.services
    fabrikam = sandbox.directory.tenants["fabrikam"]
    graph = contoso_secret(sandbox)
    account = fabrikam.service_accounts["svc-full"]
    drafts = [
        ConnectionDraft(
            application_id=application_id,
            method=ConnectionMethod.GRAPH_APP,
            access_level=AccessLevel.FULL,
            credentials=graph,
            domains=["contoso.com"],
            test_mailbox=CONTOSO[0],
            cloud="sandbox",
            tenant_id=graph.tenant_id,
        ),
        ConnectionDraft(
            application_id=application_id,
            method=ConnectionMethod.EWS,
            access_level=AccessLevel.FULL,
            credentials=EwsServiceAccount(sandbox.ews_url, f"FABRIKAM\\{account.username}", account.password, "basic"),
            domains=["fabrikam.com"],
            test_mailbox=FABRIKAM[0],
            cloud="sandbox",
        ),
    ]
    for draft in drafts:
        await verify_and_save(
            services,
            draft,
            actor="bench",
        )


async def _floor(app: Any, application_id: uuid.UUID, organizer: str, upstream_id: str, runs: int) -> float:
    """One upstream round trip of the organizer's protocol: reading one event by id."""
    services = app.state.services
    async with services.pool.acquire() as conn:
        connections = await list_connections(conn, application_id)
    domain = organizer.rpartition("@")[2]
    connection = next(c for c in connections if domain in c.domains)
    provider = await services.upstream.provider(connection)
    await provider.get_event(organizer, upstream_id, Deadline.after(30))
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        await provider.get_event(organizer, upstream_id, Deadline.after(30))
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples)


async def _timed(http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> tuple[float, httpx.Response]:
    began = time.perf_counter()
    response = await http.request(method, url, **kwargs)
    return (time.perf_counter() - began) * 1000, response


async def _lifecycle(
    http: httpx.AsyncClient,
    control: Control,
    headers: dict[str, str],
    *,
    organizer: str,
    attendee: str,
    first_slot: datetime,
    runs: int,
    teams: bool,
) -> tuple[dict[str, list[float]], dict[str, float], str]:
    """`runs` events: create, replay, move, cancel each; latencies and upstream calls per step."""
    samples: dict[str, list[float]] = {"create": [], "replay": [], "update": [], "cancel": []}
    calls: Counter[str] = Counter()
    prefix = "graph:" if organizer.endswith("contoso.com") else "ews:"
    upstream_id = ""
    for index in range(runs):
        start = first_slot + timedelta(hours=2 * index)
        body = {
            "organizer": organizer,
            "start": start.isoformat(),
            "end": (start + timedelta(minutes=30)).isoformat(),
            "summary": f"bench {index}",
            "attendees": [{"email": attendee}],
            "teams_meeting": teams,
        }
        url = f"/v1/events/bench-{prefix[:-1]}-{uuid.uuid4().hex[:10]}"
        moved = {
            **body,
            "start": (start + timedelta(minutes=30)).isoformat(),
            "end": (start + timedelta(hours=1)).isoformat(),
        }
        for step, method, payload, ok in (
            ("create", "PUT", body, 201),
            ("replay", "PUT", body, 201),
            ("update", "PUT", moved, 200),
            ("cancel", "DELETE", None, 204),
        ):
            control.reset_stats()
            elapsed, response = await _timed(http, method, url, json=payload, headers=headers)
            assert response.status_code == ok, response.text
            calls[step] += control.calls(prefix)
            samples[step].append(elapsed)
            if step == "create":
                upstream_id = response.json()["ical_uid"] or upstream_id
    return samples, {step: calls[step] / runs for step in samples}, upstream_id


async def _contention(
    http: httpx.AsyncClient, headers: dict[str, str], organizer: str, slot: datetime, count: int
) -> dict[str, Any]:
    body = {
        "organizer": organizer,
        "start": slot.isoformat(),
        "end": (slot + timedelta(minutes=30)).isoformat(),
        "summary": "contended",
        "check_availability": True,
    }
    run = uuid.uuid4().hex[:8]
    began = time.perf_counter()
    responses = await asyncio.gather(
        *(http.put(f"/v1/events/race-{run}-{i}", json=body, headers=headers) for i in range(count))
    )
    wall = time.perf_counter() - began
    statuses = Counter(r.status_code for r in responses)
    for response in responses:
        if response.status_code == 201:
            await http.delete(f"/v1/events/{response.json()['event_id']}", headers=headers)
    return {
        "requests": count,
        "created": statuses.get(201, 0),
        "refused_409": statuses.get(409, 0),
        "other": sum(v for k, v in statuses.items() if k not in (201, 409)),
        "wall_ms": round(wall * 1000, 1),
        "requests_per_s": round(count / wall, 1),
    }


async def _independent(
    http: httpx.AsyncClient, headers: dict[str, str], organizers: tuple[str, ...], first_slot: datetime, count: int
) -> dict[str, Any]:
    bodies = []
    for index in range(count):
        start = first_slot + timedelta(minutes=30 * (index // len(organizers)))
        bodies.append(
            {
                "organizer": organizers[index % len(organizers)],
                "start": start.isoformat(),
                "end": (start + timedelta(minutes=30)).isoformat(),
                "summary": f"independent {index}",
                "check_availability": True,
            }
        )
    run = uuid.uuid4().hex[:8]
    began = time.perf_counter()
    responses = await asyncio.gather(
        *(http.put(f"/v1/events/many-{run}-{i}", json=body, headers=headers) for i, body in enumerate(bodies))
    )
    wall = time.perf_counter() - began
    statuses = Counter(r.status_code for r in responses)
    await asyncio.gather(
        *(http.delete(f"/v1/events/{r.json()['event_id']}", headers=headers) for r in responses if r.status_code == 201)
    )
    return {
        "requests": count,
        "organizers": len(organizers),
        "created": statuses.get(201, 0),
        "other": {str(k): v for k, v in statuses.items() if k != 201},
        "wall_ms": round(wall * 1000, 1),
        "bookings_per_s": round(statuses.get(201, 0) / wall, 1),
    }


async def run(rtt_ms: float, runs: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="calbroker-bench-events-"))
    anchor = this_week_monday(datetime.now(UTC).date())
    sandbox = start_sandbox_in_thread(seed=0, state_dir=root / "sandbox", latency_ms=rtt_ms, anchor=anchor)
    control = Control(sandbox)
    try:
        settings = Settings(
            data_dir=root / "data",
            database_url=await bench_database(root, "bench_events"),
            master_keys=(MasterKey("bench", b"b" * 32),),
            clouds={"sandbox": sandbox_cloud(sandbox.url, sandbox.ca_path)},
            allow_private_upstreams=True,
        )
        app = create_app(settings)
        async with app.lifespan():
            async with app.state.services.pool.acquire() as conn:
                issued = await create_application(conn, "bench events", actor="bench")
            await _connect(app, sandbox, issued.application.id)
            headers = {"Authorization": f"Bearer {issued.token}"}
            # Evenings in Redmond and nights in Berlin, two weeks out: nothing seeded there.
            base = datetime.combine(anchor + timedelta(days=13), datetime.min.time(), UTC) + timedelta(hours=2)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://calbroker.bench", timeout=60) as http:
                rows: list[dict[str, Any]] = []
                for label, organizer, attendee, teams, offset in (
                    ("graph", CONTOSO[0], CONTOSO[1], False, 0),
                    ("graph + teams", CONTOSO[2], CONTOSO[3], True, 1),
                    ("ews", FABRIKAM[0], FABRIKAM[1], False, 2),
                ):
                    first = base + timedelta(days=offset)
                    await _lifecycle(
                        http,
                        control,
                        headers,
                        organizer=organizer,
                        attendee=attendee,
                        first_slot=first - timedelta(days=7),
                        runs=1,
                        teams=teams,
                    )  # warm tokens, TLS and exchangelib's folder cache
                    samples, calls, _ = await _lifecycle(
                        http,
                        control,
                        headers,
                        organizer=organizer,
                        attendee=attendee,
                        first_slot=first,
                        runs=runs,
                        teams=teams,
                    )
                    probe = await http.put(
                        f"/v1/events/floor-{uuid.uuid4().hex[:8]}",
                        json={
                            "organizer": organizer,
                            "start": (first - timedelta(days=3)).isoformat(),
                            "end": (first - timedelta(days=3, minutes=-30)).isoformat(),
                            "summary": "floor probe",
                        },
                        headers=headers,
                    )
                    assert probe.status_code == 201, probe.text
                    async with app.state.services.pool.acquire() as conn:
                        upstream_id = await conn.fetchval(
                            "SELECT upstream_id FROM events WHERE event_id = $1", probe.json()["event_id"]
                        )
                    floor_ms = await _floor(app, issued.application.id, organizer, upstream_id, runs)
                    await http.delete(f"/v1/events/{probe.json()['event_id']}", headers=headers)
                    rows.append(
                        {
                            "protocol": label,
                            "floor_ms": round(floor_ms, 1),
                            **{step: _summary(samples[step], calls[step], floor_ms) for step in samples},
                        }
                    )
                # Sundays again: a week and two weeks later.
                contention = await _contention(http, headers, CONTOSO[0], base + timedelta(days=7), 20)
                contention_ews = await _contention(http, headers, FABRIKAM[0], base + timedelta(days=7, hours=1), 20)
                independent = await _independent(http, headers, CONTOSO, base + timedelta(days=14), 40)
        return {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
            "rtt_ms": rtt_ms,
            "runs_per_point": runs,
            "lifecycle": rows,
            "contention_one_slot_graph": contention,
            "contention_one_slot_ews": contention_ews,
            "independent_bookings_graph": independent,
        }
    finally:
        sandbox.stop()
        remove_root(root)


def _cell(step: dict[str, Any]) -> str:
    return (
        f"{step['p50_ms']:>5.0f}/{step['p95_ms']:<5.0f} {step['p50_over_floor']:>5.2f} {step['upstream_calls']:>5.1f}"
    )


def _print(result: dict[str, Any]) -> None:
    print(f"events against the sandbox at {result['rtt_ms']:g} ms RTT, {result['runs_per_point']} runs per point")
    print(f"{'protocol':<15} {'floor':>7}  " + "  ".join(f"{s:>24}" for s in ("create", "replay", "update", "cancel")))
    print(f"{'':<15} {'ms':>7}  " + "  ".join(f"{'p50/p95 ms  ×floor calls':>24}" for _ in range(4)))
    for row in result["lifecycle"]:
        cells = [_cell(row[step]) for step in ("create", "replay", "update", "cancel")]
        print(f"{row['protocol']:<15} {row['floor_ms']:>7.1f}  " + "  ".join(f"{c:>24}" for c in cells))
    for key, label in (
        ("contention_one_slot_graph", "20 PUTs, one slot, Graph"),
        ("contention_one_slot_ews", "20 PUTs, one slot, EWS"),
    ):
        c = result[key]
        print(
            f"{label}: {c['created']} created, {c['refused_409']} × 409, {c['other']} other, "
            f"{c['wall_ms']:.0f} ms ({c['requests_per_s']:.1f} requests/s)"
        )
    i = result["independent_bookings_graph"]
    print(
        f"{i['requests']} independent bookings over {i['organizers']} organizers (check_availability): "
        f"{i['created']} created in {i['wall_ms']:.0f} ms ({i['bookings_per_s']:.1f} bookings/s), other {i['other']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtt-ms", type=float, default=50.0)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    configure_logging("warning")
    result = asyncio.run(run(args.rtt_ms, args.runs))
    _print(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()
