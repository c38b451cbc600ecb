"""Webhook delivery, measured: throughput through the worker, and an Outlook edit's way to a webhook.

Run: ``.venv/bin/python bench/channels.py`` (``--deliveries 2000 --edits 20 --rtt-ms 50``). It prints:

- deliveries per second: `--deliveries` notices spread over 4 channels × 25 mailboxes, sent by a
  worker (the production job path, `Worker.run`) to a receiver on loopback that answers 204 at once
  and verifies every signature with `standardwebhooks`; the receiver runs on an event loop (a
  thread) of its own, so it does not share the worker's loop;
- sandbox edit → webhook: an event booked through calbroker is moved in the sandbox's Outlook
  `--edits` times; each time, the seconds from the edit to the verified `event.changed` at the
  receiver (p50/p95), with the production sync settings (3 s debounce) and Graph notifications
  delivered by the sandbox to `calbroker serve` in a process of its own.

Figures go to ``bench/results/channels.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import ssl
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from aiohttp import web
from standardwebhooks import Webhook

from bench.serving import api_environment, eventually, free_port, served
from bench.world import bench_database, connect_contoso, percentile, remove_root
from calbroker.config import ChannelSettings, MasterKey, Settings, sandbox_cloud
from calbroker.domain.channels import Notice, NoticeType
from calbroker.logs import configure_logging
from calbroker.sandbox import SandboxThread, start_sandbox_in_thread, this_week_monday
from calbroker.services import Services, open_services
from calbroker.store.applications import IssuedKey, create_application
from calbroker.store.sync_state import ScopeMode, list_sync_rows
from calbroker.workers.runner import Worker

RESULTS = Path(__file__).parent / "results" / "channels.json"
CHANNELS = 4
MAILBOXES = 25
ORGANIZER = "adele.vance@contoso.com"


class Receiver:
    """A webhook receiver on its own event loop in a thread: verifies, records arrival times, answers 204."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.arrivals: list[tuple[float, dict[str, Any]]] = []
        self.failures = 0
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        secret = self.secrets.get(request.path)
        try:
            payload = Webhook(secret).verify(body, dict(request.headers)) if secret else json.loads(body)
        except Exception:  # noqa: BLE001 - a bench counts what does not verify
            self.failures += 1
            return web.Response(status=400)
        self.arrivals.append((time.monotonic(), payload))
        return web.Response(status=204)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    @contextmanager
    def running(self) -> Iterator[Receiver]:
        self._thread.start()
        self._ready.wait(30)
        try:
            yield self
        finally:
            if self._loop is not None and self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)


async def _channel(http: httpx.AsyncClient, receiver: Receiver, path: str, **body: Any) -> dict[str, Any]:
    response = await http.post("/v1/channels", json={"callback_url": f"{receiver.url}{path}", **body})
    response.raise_for_status()
    channel: dict[str, Any] = response.json()
    receiver.secrets[path] = channel["secret"]
    return channel


async def throughput(services: Services, http: httpx.AsyncClient, issued: IssuedKey, deliveries: int) -> dict[str, Any]:
    with Receiver().running() as receiver:
        for n in range(CHANNELS):
            await _channel(http, receiver, f"/throughput/{n}", types=["event.changed"])
        per_channel = deliveries // CHANNELS
        # Queue everything first (notices for 25 mailboxes, in order per mailbox), then let one worker go.
        async with services.pool.acquire() as conn, conn.transaction():
            for n in range(per_channel):
                mailbox = f"user{n % MAILBOXES}@contoso.com"
                await services.channels.notices.publish(
                    conn,
                    issued.application.id,
                    Notice(
                        NoticeType.EVENT_CHANGED,
                        {"mailbox": mailbox, "n": n},
                        order_key=f"mailbox:bench:{mailbox}",
                        mailbox=mailbox,
                        managed=True,
                    ),
                )
        expected = CHANNELS + per_channel * CHANNELS  # the verifications too
        worker = Worker(services, concurrency=16)
        began = time.monotonic()
        working = asyncio.create_task(worker.run())
        try:
            await eventually(lambda: _at_least(receiver, expected), 600, "every delivery")
        finally:
            worker.stop()
            await working
        elapsed = max(t for t, _ in receiver.arrivals) - began
        return {
            "deliveries": expected,
            "seconds": round(elapsed, 2),
            "per_second": round(expected / elapsed, 1),
            "unverified": receiver.failures,
            "channels": CHANNELS,
            "mailboxes_per_channel": MAILBOXES,
        }


async def _at_least(receiver: Receiver, count: int) -> bool:
    return len(receiver.arrivals) >= count


def _control(sandbox: SandboxThread, method: str, path: str, body: Any = None) -> Any:
    context = ssl.create_default_context(cafile=str(sandbox.ca_path))
    request = urllib.request.Request(
        sandbox.url + path, data=json.dumps(body).encode() if body is not None else None, method=method
    )
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


async def edit_latency(
    services: Services, http: httpx.AsyncClient, sandbox: SandboxThread, connection_id: uuid.UUID, edits: int
) -> dict[str, Any]:
    async def synced() -> bool:
        async with services.pool.acquire() as conn:
            rows = await list_sync_rows(conn, connection_id)
        return bool(rows) and all(r.state.value == "active" and r.feed.value == "active" for r in rows)

    await eventually(synced, 120, "the organizer's mailbox to be synced")
    with Receiver().running() as receiver:
        await _channel(http, receiver, "/latency", types=["event.changed"], only_managed=True)
        start = datetime.combine(datetime.now(UTC).date() + timedelta(days=2), datetime.min.time(), UTC)
        slot = start + timedelta(hours=21)
        event_id = f"bench-{uuid.uuid4().hex[:8]}"
        booked = await http.put(
            f"/v1/events/{event_id}",
            json={
                "organizer": ORGANIZER,
                "summary": "Bench",
                "start": slot.isoformat(),
                "end": (slot + timedelta(minutes=30)).isoformat(),
            },
        )
        booked.raise_for_status()
        async with services.pool.acquire() as conn:
            upstream_id = await conn.fetchval("SELECT upstream_id FROM events WHERE event_id = $1", event_id)
        seconds = []
        for n in range(1, edits + 1):
            seen = len(receiver.arrivals)
            began = time.monotonic()
            path = f"/_sandbox/mailboxes/{ORGANIZER}/events/{upstream_id}"
            await asyncio.to_thread(_control, sandbox, "PATCH", path, {"shift_minutes": 5})
            moved = (slot + timedelta(minutes=5 * n)).isoformat()

            async def arrived(seen: int = seen, moved: str = moved) -> bool:
                return any(p["data"].get("start") == moved for _, p in receiver.arrivals[seen:])

            await eventually(arrived, 120, f"event.changed for edit {n}")
            at = next(t for t, p in receiver.arrivals[seen:] if p["data"].get("start") == moved)
            seconds.append(at - began)
            await asyncio.sleep(1)  # let the round's echo settle before the next edit
        await http.delete(f"/v1/events/{event_id}")
        return {
            "edits": edits,
            "p50_s": round(statistics.median(seconds), 2),
            "p95_s": round(percentile(seconds, 0.95), 2),
            "max_s": round(max(seconds), 2),
            "unverified": receiver.failures,
        }


async def run(deliveries: int, edits: int, rtt_ms: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="calbroker-bench-channels-"))
    sandbox = start_sandbox_in_thread(
        seed=0,
        state_dir=root / "sandbox",
        latency_ms=rtt_ms,
        anchor=this_week_monday(datetime.now(UTC).date()),
        allow_http_notification_urls=True,  # the served API listens on plain http on loopback
    )
    try:
        database = await bench_database(root, "bench_channels")
        key = MasterKey("bench", b"c" * 32)
        port = free_port()
        settings = Settings(
            data_dir=root / "data",
            database_url=database,
            master_keys=(key,),
            clouds={"sandbox": sandbox_cloud(sandbox.url, sandbox.ca_path)},
            allow_private_upstreams=True,
            public_url=f"http://127.0.0.1:{port}",
            database_pool_size=8,
            channels=ChannelSettings(allow_loopback_http=True),
        )
        env = api_environment(
            database=database,
            key=key,
            sandbox=sandbox,
            port=port,
            data_dir=str(root / "data"),
            CALBROKER_CALLBACKS_ALLOW_LOOPBACK_HTTP="true",
        )
        async with open_services(settings, pool_size=24) as services:
            async with services.pool.acquire() as conn:
                issued = await create_application(conn, "bench", actor="bench")
            async with (
                served(env) as api,
                httpx.AsyncClient(
                    base_url=api.url, headers={"Authorization": f"Bearer {issued.token}"}, timeout=60
                ) as http,
            ):
                sent = await throughput(services, http, issued, deliveries)
                connection = await connect_contoso(services, sandbox, issued.application.id, ORGANIZER)
                await services.sync.scopes.set(issued.application.id, connection.id, ScopeMode.LIST, [ORGANIZER])
                worker = Worker(services, concurrency=8)
                working = asyncio.create_task(worker.run())
                try:
                    latency = await edit_latency(services, http, sandbox, connection.id, edits)
                finally:
                    worker.stop()
                    await working
        return {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
            "cpus": os.cpu_count(),
            "rtt_ms": rtt_ms,
            "throughput": sent,
            "edit_to_webhook": latency,
        }
    finally:
        sandbox.stop()
        remove_root(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--rtt-ms", type=float, default=50.0)
    args = parser.parse_args()
    configure_logging("warning")
    figures = asyncio.run(run(args.deliveries, args.edits, args.rtt_ms))
    sent, latency = figures["throughput"], figures["edit_to_webhook"]
    print(f"{figures['machine']}, {figures['cpus']} CPUs, sandbox RTT {figures['rtt_ms']:.0f} ms")
    print(
        f"deliveries: {sent['deliveries']} in {sent['seconds']} s = {sent['per_second']} deliveries/s "
        f"({sent['channels']} channels x {sent['mailboxes_per_channel']} mailboxes, {sent['unverified']} unverified)"
    )
    print(
        f"sandbox edit -> event.changed webhook: p50 {latency['p50_s']} s, p95 {latency['p95_s']} s, "
        f"max {latency['max_s']} s over {latency['edits']} edits"
    )
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
