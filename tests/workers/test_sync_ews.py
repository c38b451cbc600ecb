"""On-premises Exchange kept in sync through the real exchangelib: streaming groups with catch-up
rounds, SyncFolderItems for singles and calendar views for series, resubscription after Exchange
restarts, polling when streaming is refused, and full rounds when a sync state is rejected."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from calbroker.domain.connections import Connection
from calbroker.domain.sync import FeedState, SyncState
from calbroker.sandbox import SandboxThread
from calbroker.services import verify_and_save
from calbroker.services.sync import request_round
from calbroker.store.sync_state import SyncRow
from tests.e2e.conftest import ews_draft
from tests.fixtures.sandbox import SandboxControl
from tests.fixtures.sync import SyncWorld, next_week
from tests.fixtures.waiting import eventually

ANNA = "anna.schmidt@fabrikam.com"
BEN = "ben.taylor@fabrikam.com"


@pytest.fixture(scope="module")
async def fabrikam(world: SyncWorld, sandbox: SandboxThread) -> AsyncIterator[Connection]:
    """Fabrikam's on-premises Exchange with Anna and Ben synced (rows made, first rounds done)."""
    connection = await verify_and_save(world.services, ews_draft(world.key.application.id, sandbox), actor="test")
    response = await world.http.put(
        f"/v1/connections/{connection.id}/sync", json={"mode": "list", "mailboxes": [ANNA, BEN]}
    )
    assert response.status_code == 200, response.text
    await world.drain()
    yield connection
    await world.http.put(f"/v1/connections/{connection.id}/sync", json={"mode": "off"})
    await world.drain()


@contextlib.asynccontextmanager
async def running_worker(world: SyncWorld, **sync: Any) -> AsyncIterator[None]:
    """A worker in its continuous mode (EWS streams only run there), stopped after the block.

    Its streams ask for one-minute connections: with the sandbox's one-second minutes, they close
    and reconnect every second."""
    settings = replace(world.settings, sync=replace(world.settings.sync, ews_stream_minutes=1, **sync))
    worker = await world.worker(settings, streams_refresh=timedelta(milliseconds=300), grace=timedelta(seconds=20))
    task = asyncio.create_task(worker.run())
    try:
        yield
    finally:
        worker.stop()
        await task


@pytest.fixture
def short_streams(sandbox_control: SandboxControl) -> SandboxControl:
    """Sandbox "minutes" of a second, so streams close and reconnect within a test."""
    sandbox_control.tune(ews_stream_minute_s=1.0)
    return sandbox_control


async def rows(world: SyncWorld, fabrikam: Connection) -> dict[str, SyncRow]:
    return await world.rows(fabrikam.id)


async def fresh(world: SyncWorld, mailbox: str) -> dict[str, Any] | None:
    """The copy's answer for `mailbox` when it answers and agrees with Microsoft, else None."""
    start, end = next_week()
    cached = (await world.free_busy([mailbox], start, end))[mailbox]
    if cached["source"] != "cache":
        return None
    live = (await world.free_busy([mailbox], start, end, freshness="live"))[mailbox]
    return cached if cached["busy"] == live["busy"] else None


def outlook_event(control: SandboxControl, mailbox: str, slot: datetime, **extra: Any) -> dict[str, Any]:
    made: dict[str, Any] = control.post(
        f"/_sandbox/mailboxes/{mailbox}/events",
        {
            "subject": "Made in Outlook",
            "start": {"dateTime": slot.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {"dateTime": (slot + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            **extra,
        },
    )
    return made


def shows(answer: dict[str, Any] | None, slot: datetime, status: str = "busy") -> bool:
    return answer is not None and any(
        datetime.fromisoformat(b["start"]) == slot and b["status"] == status for b in answer["busy"]
    )


async def test_streamed_mailboxes_answer_from_the_copy_and_follow_outlook(
    world: SyncWorld, fabrikam: Connection, short_streams: SandboxControl
) -> None:
    async with running_worker(world):

        async def streaming() -> bool:
            found = await rows(world, fabrikam)
            return all(r.feed is FeedState.ACTIVE and r.state is SyncState.ACTIVE for r in found.values())

        await eventually(streaming, what="both mailboxes to stream")
        assert await eventually(lambda: fresh(world, ANNA), what="Anna's copy")
        assert await eventually(lambda: fresh(world, BEN), what="Ben's copy")
        start, _ = next_week()
        slot = start + timedelta(days=2, hours=21)
        single = outlook_event(short_streams, BEN, slot, showAs="oof")
        series = outlook_event(
            short_streams,
            ANNA,
            slot,
            recurrence={
                "pattern": {"type": "daily", "interval": 1},
                "range": {"type": "numbered", "startDate": slot.date().isoformat(), "numberOfOccurrences": 3},
            },
            showAs="tentative",
        )
        try:

            async def ben_shows() -> bool:
                return shows(await fresh(world, BEN), slot, "oof")

            async def anna_shows() -> bool:
                answer = await fresh(world, ANNA)
                return all(shows(answer, slot + timedelta(days=d), "tentative") for d in range(3))

            await eventually(ben_shows, what="Ben's Outlook edit in the copy")
            await eventually(anna_shows, what="Anna's new series in the copy")
        finally:
            short_streams.delete(f"/_sandbox/mailboxes/{BEN}/events/{single['id']}")
            short_streams.delete(f"/_sandbox/mailboxes/{ANNA}/events/{series['id']}")

            async def gone() -> bool:
                return not shows(await fresh(world, BEN), slot, "oof") and await fresh(world, BEN) is not None

            await eventually(gone, what="the deletion in the copy")
        assert short_streams.count("ews:GetStreamingEvents") >= 2  # reconnected at least once


async def test_after_an_exchange_restart_the_group_subscribes_again(
    world: SyncWorld, fabrikam: Connection, short_streams: SandboxControl
) -> None:
    async with running_worker(world):

        async def streaming() -> dict[str, SyncRow] | None:
            found = await rows(world, fabrikam)
            ok = all(r.feed is FeedState.ACTIVE and r.subscription_id for r in found.values())
            return found if ok else None

        before = await eventually(streaming, what="the group to stream")
        short_streams.post("/_sandbox/ews/restart")

        async def resubscribed() -> bool:
            now = await streaming()
            return now is not None and all(now[m].subscription_id != before[m].subscription_id for m in (ANNA, BEN))

        await eventually(resubscribed, what="new subscriptions after the restart")
        slot = next_week()[0] + timedelta(days=3, hours=22)
        made = outlook_event(short_streams, BEN, slot)
        try:

            async def followed() -> bool:
                return shows(await fresh(world, BEN), slot)

            await eventually(followed, what="an edit after the restart")
        finally:
            short_streams.delete(f"/_sandbox/mailboxes/{BEN}/events/{made['id']}")


async def test_refused_streaming_falls_back_to_polling(
    world: SyncWorld, fabrikam: Connection, short_streams: SandboxControl
) -> None:
    short_streams.tune(ews_hanging_connection_limit=0)
    async with running_worker(world, ews_poll_every=timedelta(seconds=2)):

        async def polling() -> bool:
            found = await rows(world, fabrikam)
            return all(r.feed is FeedState.POLLING for r in found.values())

        await eventually(polling, what="polling mode")
        slot = next_week()[0] + timedelta(days=4, hours=22)
        made = outlook_event(short_streams, ANNA, slot)
        try:

            async def polled() -> bool:
                return shows(await fresh(world, ANNA), slot)

            await eventually(polled, what="a polling round to pick up the edit")
        finally:
            short_streams.delete(f"/_sandbox/mailboxes/{ANNA}/events/{made['id']}")


async def test_a_rejected_sync_state_means_a_full_round(
    world: SyncWorld, fabrikam: Connection, sandbox_control: SandboxControl
) -> None:
    before = (await rows(world, fabrikam))[BEN]
    sandbox_control.post("/_sandbox/ews/sync/expire")
    async with world.services.pool.acquire() as conn, conn.transaction():
        await request_round(conn, before.id, notified=True)
    await world.drain()
    after = (await rows(world, fabrikam))[BEN]
    assert after.state is SyncState.ACTIVE
    assert after.cursor != before.cursor
    assert after.full_synced_at is not None
    assert before.full_synced_at is not None
    assert after.full_synced_at > before.full_synced_at


async def test_a_stopping_worker_closes_its_open_streams_at_once(
    world: SyncWorld, fabrikam: Connection, sandbox_control: SandboxControl
) -> None:
    """A stream Exchange would hold for half an hour is closed by the worker's stop, not waited for:
    the thread reading it ends and the event loop is never blocked on it."""

    def hanging() -> int:
        return sum(sandbox_control.get("/_sandbox/ews/subscriptions")["hanging"].values())

    def stream_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "calbroker-ews-stream" and t.is_alive()]

    settings = replace(world.settings, sync=replace(world.settings.sync, ews_stream_minutes=30))
    worker = await world.worker(settings, streams_refresh=timedelta(milliseconds=300), grace=timedelta(minutes=5))
    task = asyncio.create_task(worker.run())
    try:
        await eventually(hanging, what="a GetStreamingEvents connection held open")
    finally:
        worker.stop()
        # Bounds a failing test only: the stream itself would stay open for 30 (sandbox) minutes.
        await asyncio.wait_for(task, timeout=60)
    await eventually(lambda: not stream_threads(), what="the threads reading streams to end")
