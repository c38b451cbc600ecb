"""The synced copy, measured against the sandbox at a set round-trip time.

Run: ``.venv/bin/python bench/sync.py`` (``--rtt-ms 50 --seconds 8 --edits 12``). It prints, in one run:

- warm availability, 100 members × 7 days all fresh in the copy: upstream calls counted by the
  sandbox, and p50/p95 in-process (the service call, and the whole ASGI app without a socket);
- HTTP throughput of distinct 10-member availability requests (no two alike, so nothing coalesces)
  against ``GET /v1/me``, the same load tool, the same server process, the same run — and the ratio;
  with the server's CPU time per request, the figure a machine busy with other work does not move;
- where a 10-member availability request's CPU goes, in process (no socket), next to ``GET /v1/me``:
  turning the body into a query, reading the copy (and, for scale, one bare round trip to the
  database), the engine, and writing the answer;
- freshness: how long an edit made in the sandbox's Outlook takes to show in free/busy (from any
  source) and to reach the copy, with notifications flowing, and with every notification dropped
  (the copy then catches up at reconciliation; the bench shortens it, see the printed settings).

Figures go to ``bench/results/sync.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import random
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import httpx
import msgspec

from bench.serving import Served, api_environment, eventually, free_port, served
from bench.world import bench_database, connect_contoso, percentile, remove_root
from calbroker.api.availability import AvailabilityRequest, AvailabilityResponse
from calbroker.app import create_app
from calbroker.config import MasterKey, Settings, SyncSettings, sandbox_cloud
from calbroker.domain import AvailabilityQuery, Group, Interval, Member, ResponseFormat, find_availability
from calbroker.logs import configure_logging
from calbroker.providers import Deadline
from calbroker.sandbox import SandboxThread, start_sandbox_in_thread, this_week_monday
from calbroker.services import Services, answer_availability, open_services
from calbroker.store.applications import create_application
from calbroker.store.sync_state import ScopeMode, list_sync_rows
from calbroker.workers.runner import Worker

RESULTS = Path(__file__).parent / "results" / "sync.json"
MEMBERS = 100
RECONCILE = timedelta(seconds=30)
MAX_AGE = timedelta(seconds=45)


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

    def total_calls(self) -> int:
        return int(self.call("GET", "/_sandbox/stats")["total"])


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 2),
        "p95": round(percentile(values, 0.95), 2),
        "max": round(max(values), 2),
    }


async def load(
    api: Served, make: Callable[[int], tuple[str, str, Any]], key: str, seconds: float, concurrency: int
) -> dict[str, Any]:
    """The load tool: `concurrency` clients, each sending back to back for `seconds`; requests/s, latency,
    and the server's CPU time per request."""
    url = api.url
    latencies: list[float] = []
    failures = 0
    counter = 0
    stop = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def client() -> None:
            nonlocal failures, counter
            while time.monotonic() < stop:
                counter += 1
                method, path, body = make(counter)
                began = time.perf_counter()
                async with session.request(method, url + path, json=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        failures += 1
                latencies.append((time.perf_counter() - began) * 1000)

        began, cpu = time.monotonic(), api.cpu_seconds()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed, cpu = time.monotonic() - began, api.cpu_seconds() - cpu
    return {
        "requests": len(latencies),
        "failures": failures,
        "per_second": round(len(latencies) / elapsed, 1),
        "latency_ms": _summary(latencies),
        "server_cpu_ms_per_request": round(cpu * 1000 / len(latencies), 3),
    }


def _query(members: list[str], window: Interval) -> AvailabilityQuery:
    return AvailabilityQuery(
        groups=(Group(tuple(members), 1),),
        members={m: Member(m) for m in members},
        duration=timedelta(minutes=30),
        query_periods=(window,),
        now=datetime.now(UTC),
        tz=UTC,  # type: ignore[arg-type]
        response_format=ResponseFormat.SLOTS,
    )


async def run(rtt_ms: float, seconds: float, edits: int, runs: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="calbroker-bench-sync-"))
    monday = this_week_monday(datetime.now(UTC).date())
    sandbox = start_sandbox_in_thread(
        seed=0,
        state_dir=root / "sandbox",
        latency_ms=rtt_ms,
        anchor=monday,
        people_per_tenant=130,
        allow_http_notification_urls=True,  # the receiver listens on plain http on loopback
    )
    control = Control(sandbox)
    try:
        database = await bench_database(root, "bench_sync")
        key = MasterKey("bench", b"s" * 32)
        port = free_port()
        settings = Settings(
            data_dir=root / "data",
            database_url=database,
            master_keys=(key,),
            clouds={"sandbox": sandbox_cloud(sandbox.url, sandbox.ca_path)},
            allow_private_upstreams=True,
            public_url=f"http://127.0.0.1:{port}",
            database_pool_size=8,
            sync=SyncSettings(max_age=MAX_AGE, reconcile_every=RECONCILE),
        )
        env = api_environment(
            database=database,
            key=key,
            sandbox=sandbox,
            port=port,
            data_dir=str(root / "data"),
            CALBROKER_SYNC_MAX_AGE_S=str(int(MAX_AGE.total_seconds())),
            CALBROKER_SYNC_RECONCILE_S=str(int(RECONCILE.total_seconds())),
        )
        async with open_services(settings) as services:
            async with services.pool.acquire() as conn:
                issued = await create_application(conn, "bench", actor="bench")
            connection = await connect_contoso(services, sandbox, issued.application.id, "adele.vance@contoso.com")
            contoso = sandbox.directory.tenants["contoso"]
            scope = sorted(contoso.groups[contoso.scope_group].members)
            members = [m for m in scope if m.endswith("@contoso.com") and not sandbox.directory.mailbox(m).is_room][
                :MEMBERS
            ]  # type: ignore[union-attr]
            assert len(members) == MEMBERS, len(members)
            await services.sync.scopes.set(issued.application.id, connection.id, ScopeMode.LIST, members)
            # The receiver first: subscriptions are validated against it.
            async with served(env) as api, open_services(settings, pool_size=20) as worker_services:
                worker = Worker(worker_services, concurrency=16)
                working = asyncio.create_task(worker.run())
                try:
                    figures = await _measure(
                        services, control, api, issued, connection.id, members, runs, seconds, edits
                    )
                finally:
                    worker.stop()
                    await working
        return {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
            "cpus": os.cpu_count(),
            "rtt_ms": rtt_ms,
            "settings": {
                "debounce_s": settings.sync.debounce.total_seconds(),
                "max_age_s": MAX_AGE.total_seconds(),
                "reconcile_s": RECONCILE.total_seconds(),
            },
            **figures,
        }
    finally:
        sandbox.stop()
        remove_root(root)


async def _measure(
    services: Services,
    control: Control,
    api: Served,
    issued: Any,
    connection_id: Any,
    members: list[str],
    runs: int,
    seconds: float,
    edits: int,
) -> dict[str, Any]:
    async def synced() -> bool:
        async with services.pool.acquire() as conn:
            rows = await list_sync_rows(conn, connection_id)
        return len(rows) == len(members) and all(
            r.state.value == "active"
            and r.feed.value == "active"
            and (r.last_notified_at is None or (r.synced_at is not None and r.synced_at >= r.last_notified_at))
            for r in rows
        )

    started = time.monotonic()
    await eventually(synced, 300, "every member to be synced")
    first_sync_s = time.monotonic() - started

    # --- warm, in process ----------------------------------------------------------------------
    start = datetime.combine(datetime.now(UTC).date() + timedelta(days=1), datetime.min.time(), UTC)
    window = Interval(start, start + timedelta(days=7))
    query = _query(members, window)
    control.call("DELETE", "/_sandbox/stats")
    service_ms = []
    for _ in range(runs):
        began = time.perf_counter()
        answer = await answer_availability(services.schedules, issued.application.id, query, Deadline.after(30))
        service_ms.append((time.perf_counter() - began) * 1000)
    sources = {source.value for _, source, _ in answer.sources}
    app = create_app(services.settings)
    body = {
        "participants": [{"members": [{"email": m} for m in members], "required": 1}],
        "duration": {"minutes": 30},
        "query_periods": [{"start": window.start.isoformat(), "end": window.end.isoformat()}],
    }
    asgi_ms = []
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            headers = {"Authorization": f"Bearer {issued.token}"}
            for _ in range(runs):
                began = time.perf_counter()
                response = await client.post("/v1/availability", json=body, headers=headers)
                asgi_ms.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 200, response.text
            http_sources = {s["source"] for s in response.json()["member_sources"]}
    warm_calls = control.total_calls()

    # --- HTTP throughput: GET /v1/me against distinct 10-member availability requests ------------
    rng = random.Random(7)

    def me(_: int) -> tuple[str, str, Any]:
        return "GET", "/v1/me", None

    def availability(counter: int) -> tuple[str, str, Any]:
        chosen = rng.sample(members, 10)
        first = start + timedelta(minutes=15 * (counter % 500))
        return (
            "POST",
            "/v1/availability",
            {
                "participants": [{"members": [{"email": m} for m in chosen], "required": "all"}],
                "duration": {"minutes": 30},
                "query_periods": [{"start": first.isoformat(), "end": (first + timedelta(days=5)).isoformat()}],
            },
        )

    control.call("DELETE", "/_sandbox/stats")
    await load(api, me, issued.token, 1.0, 8)  # warm the server's pools
    me_load = await load(api, me, issued.token, seconds, 8)
    availability_load = await load(api, availability, issued.token, seconds, 8)
    throughput_calls = control.total_calls()
    parts = await _parts(services, issued, [availability(n)[2] for n in range(PART_REQUESTS)])

    # --- freshness ------------------------------------------------------------------------------
    flowing = dropped = None
    if edits:
        flowing = await _freshness(services, control, api.url, issued.token, members, edits, start)
        control.call("PATCH", "/_sandbox/settings", {"notifications_blocked": True})
        try:
            dropped = await _freshness(services, control, api.url, issued.token, members, max(3, edits // 3), start)
        finally:
            control.call("PATCH", "/_sandbox/settings", {"notifications_blocked": False})
    return {
        "members": len(members),
        "first_sync_s": round(first_sync_s, 1),
        "warm": {
            "window_days": 7,
            "upstream_calls": warm_calls,
            "sources": sorted(sources | http_sources),
            "service_ms": _summary(service_ms),
            "asgi_ms": _summary(asgi_ms),
        },
        "http": {
            "me": me_load,
            "availability_10_members": availability_load,
            "ratio": round(availability_load["per_second"] / me_load["per_second"], 2),
            "cpu_ratio": round(
                me_load["server_cpu_ms_per_request"] / availability_load["server_cpu_ms_per_request"], 2
            ),
            "upstream_calls": throughput_calls,
        },
        "parts_us": parts,
        "freshness": {"notifications_flowing": flowing, "notifications_dropped": dropped},
    }


PART_REQUESTS = 500
PART_BATCHES = 5


async def _parts(services: Services, issued: Any, bodies: list[Any]) -> dict[str, float]:
    """CPU µs per request, in this process and without a socket, each the best of a few batches over the
    same distinct 10-member bodies: the whole app for both routes, then availability's own steps."""
    application_id = issued.application.id
    raw = [json.dumps(body).encode() for body in bodies]
    decoder = msgspec.json.Decoder(AvailabilityRequest, strict=True)
    now = datetime.now(UTC)
    queries = [decoder.decode(body).to_domain(now) for body in raw]
    found = [
        await services.schedules.read(application_id, list(q.members), q.busy_window, Deadline.after(30))
        for q in queries
    ]
    filled = [
        dataclasses.replace(q, members={e: Member(e, f[e].busy, working_hours=f[e].working_hours) for e in q.members})  # type: ignore[union-attr]
        for q, f in zip(queries, found, strict=True)
    ]
    answers = [await answer_availability(services.schedules, application_id, q, Deadline.after(30)) for q in queries]
    encoder = msgspec.json.Encoder()
    figures: dict[str, float] = {}

    async def measure(name: str, step: Callable[[], Any]) -> None:
        best = float("inf")
        for _ in range(PART_BATCHES):
            began = time.process_time()
            await step()
            best = min(best, time.process_time() - began)
        figures[name] = round(best * 1e6 / len(bodies), 1)

    async def request_to_query() -> None:
        for body in raw:
            decoder.decode(body).to_domain(now)

    async def read() -> None:
        for q in queries:
            await services.schedules.read(application_id, list(q.members), q.busy_window, Deadline.after(30))

    async def round_trip() -> None:
        for _ in queries:
            async with services.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")

    async def engine() -> None:
        for q in filled:
            find_availability(q)

    async def response() -> None:
        for answer, q in zip(answers, queries, strict=True):
            AvailabilityResponse.from_domain(answer, q)

    written = [AvailabilityResponse.from_domain(answer, q) for answer, q in zip(answers, queries, strict=True)]

    async def encode() -> None:
        for out in written:
            encoder.encode(out)

    app = create_app(services.settings)
    authorization = (b"authorization", f"Bearer {issued.token}".encode())

    async def call(method: str, path: str, body: bytes) -> None:
        sent: list[Any] = []
        headers = [authorization, (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        await app(scope, receive, send)  # type: ignore[arg-type]
        assert sent[0]["status"] == 200, sent

    async def whole_me() -> None:
        for _ in raw:
            await call("GET", "/v1/me", b"")

    async def whole_availability() -> None:
        for body in raw:
            await call("POST", "/v1/availability", body)

    async with app.lifespan():
        for name, step in (
            ("me", whole_me),
            ("availability", whole_availability),
            ("request_to_query", request_to_query),
            ("read", read),
            ("bare_round_trip", round_trip),
            ("engine", engine),
            ("response", response),
            ("encode", encode),
        ):
            await measure(name, step)
    own = ("request_to_query", "read", "engine", "response", "encode")
    figures["other"] = round(figures["availability"] - figures["me"] - sum(figures[k] for k in own), 1)
    # The least availability must add to what /v1/me costs on this stack: one round trip for the copy,
    # the engine, and encoding the answer; the throughput ratio cannot beat me / (me + floor).
    figures["floor"] = round(figures["bare_round_trip"] + figures["engine"] + figures["encode"], 1)
    figures["best_ratio"] = round(figures["me"] / (figures["me"] + figures["floor"]), 2)
    return figures


async def _freshness(
    services: Services, control: Control, url: str, token: str, members: list[str], edits: int, start: datetime
) -> dict[str, Any]:
    """Per edit: seconds until free/busy shows it (any source), and until the copy holds it."""
    shown: list[float] = []
    cached: list[float] = []
    stale_answers = 0
    answers = 0
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        for index in range(edits):
            mailbox = members[(index * 7) % len(members)]
            slot = start + timedelta(days=index % 6, hours=23)
            event = control.call(
                "POST",
                f"/_sandbox/mailboxes/{mailbox}/events",
                {
                    "subject": "Edited in Outlook",
                    "start": {"dateTime": slot.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
                    "end": {
                        "dateTime": (slot + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S"),
                        "timeZone": "UTC",
                    },
                    "showAs": "oof",
                },
            )
            edited = time.monotonic()
            seen_at: float | None = None
            while True:
                response = await client.post(
                    "/v1/free_busy",
                    json={
                        "mailboxes": [mailbox],
                        "start": slot.isoformat(),
                        "end": (slot + timedelta(hours=1)).isoformat(),
                    },
                )
                entry = response.json()["free_busy"][0]
                reflects = any(b["status"] == "oof" for b in entry.get("busy") or [])
                answers += 1
                if not reflects and entry["source"] == "cache":
                    stale_answers += 1
                if reflects and seen_at is None:
                    seen_at = time.monotonic()
                if reflects and entry["source"] == "cache":
                    break
                if time.monotonic() - edited > RECONCILE.total_seconds() * 3:
                    raise RuntimeError(f"edit {index} never reached the copy")
                await asyncio.sleep(0.05)
            shown.append((seen_at or time.monotonic()) - edited)
            cached.append(time.monotonic() - edited)
            control.call("DELETE", f"/_sandbox/mailboxes/{mailbox}/events/{event['id']}")
    return {
        "edits": edits,
        "shown_in_free_busy_s": _summary(shown),
        "in_the_copy_s": _summary(cached),
        "answers": answers,
        "answers_from_a_stale_copy": stale_answers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rtt-ms", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each load run")
    parser.add_argument(
        "--edits", type=int, default=12, help="Outlook edits with notifications flowing (0: skip freshness)"
    )
    parser.add_argument("--runs", type=int, default=25)
    args = parser.parse_args()
    configure_logging("warning")
    figures = asyncio.run(run(args.rtt_ms, args.seconds, args.edits, args.runs))
    warm, http, fresh = figures["warm"], figures["http"], figures["freshness"]
    print(f"sandbox RTT {figures['rtt_ms']:.0f} ms, {figures['machine']}, {figures['cpus']} CPUs")
    print(f"{figures['members']} members synced in {figures['first_sync_s']} s (first rounds)")
    print(
        f"warm availability, {figures['members']} members × 7 days from the copy: {warm['upstream_calls']} upstream "
        f"calls; p50 {warm['service_ms']['p50']} ms in the service, {warm['asgi_ms']['p50']} ms through the ASGI app "
        f"(p95 {warm['asgi_ms']['p95']} ms); sources {warm['sources']}"
    )
    print(
        f"HTTP, 8 clients × {args.seconds:g} s: GET /v1/me {http['me']['per_second']} req/s, distinct 10-member "
        f"availability {http['availability_10_members']['per_second']} req/s → ratio {http['ratio']} "
        f"({http['upstream_calls']} upstream calls)"
    )
    print(
        f"server CPU per request: GET /v1/me {http['me']['server_cpu_ms_per_request']} ms, availability "
        f"{http['availability_10_members']['server_cpu_ms_per_request']} ms → ratio {http['cpu_ratio']} "
        "(what throughput would be on cores the server had to itself)"
    )
    parts = figures["parts_us"]
    print(
        f"in process, CPU µs per request (no socket): GET /v1/me {parts['me']}; 10-member availability "
        f"{parts['availability']} = what /v1/me costs + body → query {parts['request_to_query']}, read "
        f"{parts['read']} (one bare round trip to the database: {parts['bare_round_trip']}), engine {parts['engine']}, "
        f"building the answer {parts['response']}, encoding it {parts['encode']}, other {parts['other']}"
    )
    print(
        f"  the least availability adds on this stack (one round trip, the engine, encoding): {parts['floor']} µs, "
        f"against {round(parts['availability'] - parts['me'], 1)} µs now; with nothing else, the ratio would be "
        f"{parts['best_ratio']}"
    )
    for label, key in (
        ("notifications flowing", "notifications_flowing"),
        ("all notifications dropped", "notifications_dropped"),
    ):
        entry = fresh[key]
        if entry is None:
            continue
        print(
            f"freshness, {label} ({entry['edits']} Outlook edits): shown in free/busy p50 "
            f"{entry['shown_in_free_busy_s']['p50']} s / p95 {entry['shown_in_free_busy_s']['p95']} s; in the copy p50 "
            f"{entry['in_the_copy_s']['p50']} s / p95 {entry['in_the_copy_s']['p95']} s; "
            f"{entry['answers_from_a_stale_copy']} of {entry['answers']} answers came from a copy without the edit"
        )
    print(
        f"(debounce {figures['settings']['debounce_s']:g} s; the bench reconciles every "
        f"{figures['settings']['reconcile_s']:g} s with a {figures['settings']['max_age_s']:g} s maximum age — "
        "production defaults are 10 and 15 minutes)"
    )
    if args.edits:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
