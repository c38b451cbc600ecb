"""The sync worker against the sandbox, end to end: scope → subscription → rounds → answers from the
copy; Outlook edits arriving by notification; reads of your own writes; and never an answer from a
copy that cannot be proved fresh."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from calbroker.domain.connections import Connection
from tests.fixtures.sandbox import SandboxControl
from tests.fixtures.sync import SyncWorld, next_week
from tests.fixtures.waiting import eventually
from tests.workers.conftest import ADELE, ALEX


def busy_of(entry: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(b["start"], b["end"], b["status"]) for b in entry["busy"]]


async def test_synced_mailboxes_answer_from_the_copy_without_asking_microsoft(
    world: SyncWorld, contoso: Connection, control: SandboxControl
) -> None:
    rows = await world.rows(contoso.id)
    assert {m: (r.state.value, r.feed.value) for m, r in rows.items()} == {
        ADELE: ("active", "active"),
        ALEX: ("active", "active"),
    }
    start, end = next_week()
    control.clean()
    cached = await world.free_busy([ADELE, ALEX], start, end)
    assert control.stats()["total"] == 0  # not one upstream call
    assert {m: e["source"] for m, e in cached.items()} == {ADELE: "cache", ALEX: "cache"}
    live = await world.free_busy([ADELE, ALEX], start, end, freshness="live")
    assert {m: e["source"] for m, e in live.items()} == {ADELE: "live", ALEX: "live"}
    assert control.count("graph:getSchedule") == 1
    # The copy says exactly what Microsoft says (occurrences hydrated from their series, no subjects).
    for mailbox in (ADELE, ALEX):
        assert busy_of(cached[mailbox]) == busy_of(live[mailbox]), mailbox
        assert cached[mailbox]["working_hours"] == live[mailbox]["working_hours"]
    assert busy_of(cached[ADELE])
    assert busy_of(cached[ALEX])


async def test_an_outlook_edit_arrives_by_notification_and_the_copy_follows(
    world: SyncWorld, contoso: Connection, control: SandboxControl
) -> None:
    start, end = next_week()
    slot = start + timedelta(days=2, hours=22)  # late evening UTC: free in every seeded calendar
    event = control.post(
        f"/_sandbox/mailboxes/{ALEX}/events",
        {
            "subject": "Edited in Outlook",
            "start": {"dateTime": slot.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {"dateTime": (slot + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "showAs": "oof",
        },
    )
    try:
        # The receiver marks the copy stale the moment Graph's notification lands.
        before = (await world.rows(contoso.id))[ALEX].synced_at
        assert before is not None
        await eventually(
            lambda: _notified_after(world, contoso.id, ALEX, before), what="the notification to reach the receiver"
        )
        pending = await world.free_busy([ALEX], start, end)
        assert pending[ALEX]["source"] == "live"
        assert _has(pending[ALEX], slot, "oof")
        summary = await world.drain()
        assert summary.rounds >= 1
        synced = await world.free_busy([ALEX], start, end)
        assert synced[ALEX]["source"] == "cache"
        assert _has(synced[ALEX], slot, "oof")
    finally:
        control.delete(f"/_sandbox/mailboxes/{ALEX}/events/{event['id']}")
        await world.drain()
    gone = await world.free_busy([ALEX], start, end)
    assert gone[ALEX]["source"] == "cache"
    assert not _has(gone[ALEX], slot, "oof")


async def test_a_copy_that_cannot_be_proved_fresh_is_never_the_answer(
    world: SyncWorld, contoso: Connection, control: SandboxControl
) -> None:
    """Outlook changes the calendar while no worker runs: once Graph has told the receiver, every
    answer is live or shows the edit, for free/busy and availability alike."""
    start, end = next_week()
    slot = start + timedelta(days=3, hours=23)
    event = outlook_event(control, ADELE, slot, "While the worker is down")
    try:
        await eventually(lambda: delivered(control, world, contoso, since=event), what="Graph to notify the receiver")
        for _ in range(10):
            answer = (await world.free_busy([ADELE], start, end))[ADELE]
            assert answer["source"] == "live" or _has(answer, slot, "busy"), answer
        availability = await world.http.post(
            "/v1/availability",
            json={
                "participants": [{"members": [{"email": ADELE}, {"email": ALEX}], "required": "all"}],
                "duration": {"minutes": 30},
                "query_periods": [{"start": slot.isoformat(), "end": (slot + timedelta(minutes=30)).isoformat()}],
            },
        )
        assert availability.status_code == 200, availability.text
        assert availability.json()["slots"] == []  # Adele's new meeting blocks the slot
        sources = {s["email"]: s["source"] for s in availability.json()["member_sources"]}
        assert sources == {ADELE: "live", ALEX: "cache"}
    finally:
        control.delete(f"/_sandbox/mailboxes/{ADELE}/events/{event['id']}")
        await world.drain()


async def test_notifications_dropped_for_a_slow_receiver_end_in_a_full_resync(
    world: SyncWorld, contoso: Connection, control: SandboxControl
) -> None:
    """Graph drops notifications to an endpoint it judges slow and says `missed`: from then on the
    mailbox is read live until a full round has caught up."""
    start, end = next_week()
    control.tune(notification_slow_ms=0, notification_window=1, notification_copies_max=1)
    first = outlook_event(control, ALEX, start + timedelta(days=1, hours=23), "Judged slow")
    await eventually(lambda: delivered(control, world, contoso, since=first), what="the first notification")
    slot = start + timedelta(days=5, hours=23)
    dropped = outlook_event(control, ALEX, slot, "Dropped")
    try:

        async def told_missed() -> bool:
            return (await world.rows(contoso.id))[ALEX].lifecycle_pending_at is not None

        await eventually(told_missed, what="the missed lifecycle event")
        answer = (await world.free_busy([ALEX], start, end))[ALEX]
        assert answer["source"] == "live"
        assert _has(answer, slot, "busy")
        control.tune(notification_slow_ms=2900, notification_window=100)
        await world.drain()
        answer = (await world.free_busy([ALEX], start, end))[ALEX]
        assert answer["source"] == "cache"
        assert _has(answer, slot, "busy")
    finally:
        for made in (first, dropped):
            control.delete(f"/_sandbox/mailboxes/{ALEX}/events/{made['id']}")
        await world.drain()


def outlook_event(control: SandboxControl, mailbox: str, slot: datetime, subject: str) -> dict[str, Any]:
    """A 30-minute meeting made in Outlook (the sandbox's control plane), not through calbroker."""
    made: dict[str, Any] = control.post(
        f"/_sandbox/mailboxes/{mailbox}/events",
        {
            "subject": subject,
            "start": {"dateTime": slot.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {"dateTime": (slot + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
        },
    )
    return made


def delivered(control: SandboxControl, world: SyncWorld, contoso: Connection, *, since: dict[str, Any]) -> bool:
    """Whether Graph has delivered (202) a notification about `since` to the receiver."""
    return any(
        d["kind"] == "notification"
        and d["status"] == 202
        and d["url"].startswith(world.url)
        and d["payload"]["value"][0]["resourceData"]["id"] == since["id"]
        for d in control.get("/_sandbox/deliveries")["deliveries"]
    )


async def _notified_after(world: SyncWorld, connection_id: uuid.UUID, mailbox: str, when: Any) -> bool:
    row = (await world.rows(connection_id))[mailbox]
    return row.last_notified_at is not None and row.last_notified_at > when


def _has(entry: dict[str, Any], start: Any, status: str) -> bool:
    return any(datetime.fromisoformat(b["start"]) == start and b["status"] == status for b in entry.get("busy") or [])
