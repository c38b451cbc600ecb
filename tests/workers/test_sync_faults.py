"""What goes wrong in the wild, each as a test: subscriptions removed, notifications missed, delta
tokens expired, a worker killed mid-round, two workers at once, consent revoked, forged lifecycle
events, a receiver outage, Microsoft's subscription quota — and the copy never lies through any."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sys
from datetime import datetime, timedelta
from typing import Any

from calbroker.domain.connections import Connection
from calbroker.domain.sync import FeedState, SyncState
from calbroker.sandbox import SandboxThread
from calbroker.services.sync import SyncScopes, beat, request_round
from calbroker.store.sync_state import SyncRow
from tests.fixtures.sandbox import SandboxControl
from tests.fixtures.sync import SyncWorld, fast_sync, next_week
from tests.fixtures.waiting import eventually
from tests.workers.conftest import ADELE, ALEX


async def row_of(world: SyncWorld, contoso: Connection, mailbox: str) -> SyncRow:
    return (await world.rows(contoso.id))[mailbox]


async def ask_round(world: SyncWorld, row: SyncRow, **options: Any) -> None:
    async with world.services.pool.acquire() as conn, conn.transaction():
        await request_round(conn, row.id, **options)


async def same_as_live(world: SyncWorld, mailbox: str) -> dict[str, Any]:
    """The copy answers for `mailbox`, and says what Microsoft says."""
    start, end = next_week()
    cached = (await world.free_busy([mailbox], start, end))[mailbox]
    live = (await world.free_busy([mailbox], start, end, freshness="live"))[mailbox]
    assert cached["source"] == "cache", cached
    assert cached["busy"] == live["busy"]
    return cached


async def lifecycle(
    world: SyncWorld, contoso: Connection, control: SandboxControl, mailbox: str, **body: Any
) -> SyncRow:
    """Have Graph send a lifecycle event for the mailbox's subscription; returns the row once the receiver marked it."""
    row = await row_of(world, contoso, mailbox)
    assert row.subscription_id is not None
    control.post(f"/_sandbox/subscriptions/{row.subscription_id}/lifecycle", body)

    async def marked() -> bool:
        return (await row_of(world, contoso, mailbox)).lifecycle_pending_at is not None

    await eventually(marked, what="the receiver to mark the lifecycle event")
    return row


async def test_a_removed_subscription_is_recreated_and_the_mailbox_resynced(
    world: SyncWorld, contoso: Connection, control: SandboxControl
) -> None:
    before = await lifecycle(world, contoso, control, ALEX, event="subscriptionRemoved")
    start, end = next_week()
    assert (await world.free_busy([ALEX], start, end))[ALEX]["source"] == "live"
    await world.drain()
    after = await row_of(world, contoso, ALEX)
    assert after.subscription_id not in (None, before.subscription_id)
    assert (after.feed, after.state, after.lifecycle_pending_at) == (FeedState.ACTIVE, SyncState.ACTIVE, None)
    assert after.full_synced_at is not None
    assert before.full_synced_at is not None
    assert after.full_synced_at > before.full_synced_at
    await same_as_live(world, ALEX)


async def test_missed_notifications_bring_a_full_resync(
    world: SyncWorld, contoso: Connection, control: SandboxControl
) -> None:
    # In the shape seen in the wild: organizationId instead of tenantId.
    before = await lifecycle(world, contoso, control, ADELE, event="missed", variant="organizationId")
    start, end = next_week()
    assert (await world.free_busy([ADELE], start, end))[ADELE]["source"] == "live"
    await world.drain()
    after = await row_of(world, contoso, ADELE)
    assert after.subscription_id == before.subscription_id
    assert after.full_synced_at is not None
    assert before.full_synced_at is not None
    assert after.full_synced_at > before.full_synced_at
    await same_as_live(world, ADELE)


async def test_an_expired_delta_token_falls_back_to_a_full_round(
    world: SyncWorld, contoso: Connection, control: SandboxControl
) -> None:
    before = await row_of(world, contoso, ALEX)
    control.post("/_sandbox/delta/expire", {"mailbox": ALEX})
    await ask_round(world, before, notified=True)
    await world.drain()
    after = await row_of(world, contoso, ALEX)
    assert after.state is SyncState.ACTIVE
    assert after.cursor != before.cursor
    assert after.full_synced_at is not None
    assert before.full_synced_at is not None
    assert after.full_synced_at > before.full_synced_at
    assert control.stats()["statuses"]["graph:calendarView.delta"].get("410") == 1
    await same_as_live(world, ALEX)


async def test_a_forged_lifecycle_event_changes_nothing(
    world: SyncWorld, contoso: Connection, control: SandboxControl
) -> None:
    before = await row_of(world, contoso, ADELE)
    forged = {
        "value": [
            {
                "subscriptionId": before.subscription_id,
                "clientState": "not-the-secret",
                "lifecycleEvent": "subscriptionRemoved",
            }
        ]
    }
    response = await world.http.post(f"/hooks/graph/{contoso.id}", json=forged)
    assert response.status_code == 202
    assert (await row_of(world, contoso, ADELE)).lifecycle_pending_at is not None
    await world.drain()
    after = await row_of(world, contoso, ADELE)
    assert after.subscription_id == before.subscription_id  # not recreated
    assert after.lifecycle_pending_at is None
    await same_as_live(world, ADELE)


async def test_the_receiver_answers_the_validation_handshake_as_text(world: SyncWorld, contoso: Connection) -> None:
    token = "Validation: Testing client application reachability for subscription Request-Id: 1 & 2"
    response = await world.http.post(f"/hooks/graph/{contoso.id}", params={"validationToken": token})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == token
    junk = await world.http.post(f"/hooks/graph/{contoso.id}", content=b"not json at all")
    assert junk.status_code == 202


async def test_after_a_receiver_outage_every_mailbox_resyncs(world: SyncWorld, contoso: Connection) -> None:
    before = await world.rows(contoso.id)
    async with world.services.pool.acquire() as conn:
        await conn.execute("UPDATE sync_receiver SET seen_at = now() - interval '10 minutes'")
    assert await beat(world.services.pool) is True
    await world.drain()
    after = await world.rows(contoso.id)
    for mailbox in (ADELE, ALEX):
        assert after[mailbox].full_synced_at > before[mailbox].full_synced_at  # type: ignore[operator]
        await same_as_live(world, mailbox)


async def test_two_workers_never_sync_one_mailbox_at_once(
    world: SyncWorld, contoso: Connection, control: SandboxControl
) -> None:
    control.fault(route="graph:calendarView.delta", action="delay", latency_ms=300)
    rows = await world.rows(contoso.id)
    first, second = await world.worker(), await world.worker()

    async def keep_asking() -> None:
        for _ in range(6):
            for row in rows.values():
                await ask_round(world, row, notified=True)
            await asyncio.sleep(0.1)

    asking = asyncio.create_task(keep_asking())
    done = await asyncio.gather(first.drain(), second.drain(), asking)
    peaks = control.stats()["peaks"]["graph:calendarView.delta"]
    assert peaks == {ADELE: 1, ALEX: 1}
    assert done[0].rounds + done[1].rounds >= 4
    for mailbox in (ADELE, ALEX):
        await same_as_live(world, mailbox)


async def test_a_worker_killed_mid_round_leaves_nothing_half_done(
    world: SyncWorld, contoso: Connection, control: SandboxControl, sandbox: SandboxThread
) -> None:
    before = await row_of(world, contoso, ALEX)
    control.fault(route="graph:calendarView.delta", mailbox=ALEX, action="delay", latency_ms=5000, count=1)
    await ask_round(world, before, notified=True, full=True)
    key = world.settings.master_keys[0]  # type: ignore[index]
    env = {
        **os.environ,
        "DATABASE_URL": world.settings.database_url or "",
        "CALBROKER_MASTER_KEYS": f"{key.kid}:{base64.b64encode(key.key).decode()}",
        "CALBROKER_SANDBOX_URL": sandbox.url,
        "CALBROKER_SANDBOX_CA": str(sandbox.ca_path),
        "CALBROKER_ALLOW_PRIVATE_UPSTREAMS": "true",
        "CALBROKER_PUBLIC_URL": world.url,
        "CALBROKER_HEALTH_CHECK_INTERVAL_S": "0",
        "CALBROKER_LOG_LEVEL": "warning",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "calbroker.cli", "worker", "--concurrency", "2", env=env
    )
    try:
        await eventually(
            lambda: control.stats()["peaks"].get("graph:calendarView.delta", {}).get(ALEX, 0) >= 1,
            timeout_s=60,
            what="the subprocess worker to be mid-round",
        )
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    start, end = next_week()
    # The round never finished: its mailbox is read live, not from a copy that may be stale.
    assert (await world.free_busy([ALEX], start, end))[ALEX]["source"] == "live"

    async def job_orphaned() -> bool:
        async with world.services.pool.acquire() as conn:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM pgqueuer WHERE status = 'picked' AND heartbeat < now() - interval '2 seconds'"
                )
            )

    await eventually(job_orphaned, what="the killed worker's job to go stale")
    await world.drain(heartbeat_timeout=timedelta(seconds=2))
    after = await row_of(world, contoso, ALEX)
    assert after.state is SyncState.ACTIVE
    assert after.synced_at is not None
    assert before.synced_at is not None
    assert after.synced_at > before.synced_at
    await same_as_live(world, ALEX)


async def test_revoked_consent_stops_the_copy_at_once(
    world: SyncWorld, contoso: Connection, control: SandboxControl, sandbox: SandboxThread
) -> None:
    client_id = control.app("contoso-secret")["client_id"]
    saved = sandbox.call(lambda state: state.directory.tenants["contoso"].service_principals[client_id])
    start, end = next_week()
    try:
        control.delete(f"/_sandbox/tenants/contoso/consent/{client_id}")

        async def both_marked() -> bool:
            rows = await world.rows(contoso.id)
            return all(rows[m].lifecycle_pending_at is not None for m in (ADELE, ALEX))

        await eventually(both_marked, what="reauthorizationRequired to reach the receiver")
        answers = await world.free_busy([ADELE, ALEX], start, end)
        for mailbox in (ADELE, ALEX):
            assert answers[mailbox]["source"] == "live"
            assert answers[mailbox]["error"]["type"].startswith("/problems/"), answers[mailbox]
        await world.drain()
        rows = await world.rows(contoso.id)
        assert {rows[m].feed for m in (ADELE, ALEX)} == {FeedState.FAILED}
        answers = await world.free_busy([ADELE, ALEX], start, end)
        assert {a["source"] for a in answers.values()} == {"live"}
    finally:
        sandbox.call(lambda state: state.directory.tenants["contoso"].service_principals.__setitem__(client_id, saved))
    await world.drain()  # the next maintenance renews (and reauthorizes) both subscriptions
    rows = await world.rows(contoso.id)
    assert {rows[m].feed for m in (ADELE, ALEX)} == {FeedState.ACTIVE}
    for mailbox in (ADELE, ALEX):
        await same_as_live(world, mailbox)


async def test_microsofts_subscription_quota_is_a_clear_problem(
    world: SyncWorld, contoso: Connection, control: SandboxControl
) -> None:
    megan = "megan.bowen@contoso.com"
    control.tune(subscription_max_per_mailbox=0)
    response = await world.http.put(
        f"/v1/connections/{contoso.id}/sync", json={"mode": "list", "mailboxes": [ADELE, ALEX, megan]}
    )
    assert response.status_code == 200, response.text
    try:
        await world.drain()
        status = (await world.http.get(f"/v1/connections/{contoso.id}/sync")).json()
        entry = next(m for m in status["mailboxes"] if m["mailbox"] == megan)
        assert (entry["state"], entry["feed"]["state"]) == ("unsupported", "unsupported")
        assert entry["problem"]["type"] == "/problems/subscription-limit"
        start, end = next_week()
        assert (await world.free_busy([megan], start, end))[megan]["source"] == "live"
    finally:
        await world.http.put(f"/v1/connections/{contoso.id}/sync", json={"mode": "list", "mailboxes": [ADELE, ALEX]})
        await world.drain()
    assert set(await world.rows(contoso.id)) == {ADELE, ALEX}


async def test_a_scope_larger_than_the_cap_is_cut_and_said_so(world: SyncWorld, contoso: Connection) -> None:
    too_many = [f"user{i}@contoso.com" for i in range(world.settings.sync.max_mailboxes + 1)]
    refused = await world.http.put(f"/v1/connections/{contoso.id}/sync", json={"mode": "list", "mailboxes": too_many})
    assert refused.status_code == 422
    assert refused.json()["type"] == "/problems/limit-exceeded"
    elsewhere = await world.http.put(
        f"/v1/connections/{contoso.id}/sync", json={"mode": "list", "mailboxes": ["anna.schmidt@fabrikam.com"]}
    )
    assert elsewhere.status_code == 422
    assert elsewhere.json()["errors"][0]["field"] == "mailboxes[0]"

    capped = SyncScopes(
        world.services.pool,
        world.services.upstream,
        world.services.sync.feeds,
        fast_sync(world.settings, max_mailboxes=1),
    )
    async with world.services.pool.acquire() as conn:
        await conn.execute("UPDATE sync_scopes SET mode = 'all' WHERE connection_id = $1", contoso.id)
    try:
        await capped.apply(contoso.id)
        report = await capped.report(world.key.application.id, contoso.id)
        assert report.scope is not None
        assert report.scope.problem is not None
        assert "only the first 1" in report.scope.problem
        assert len(report.mailboxes) == 1
    finally:
        await world.http.put(f"/v1/connections/{contoso.id}/sync", json={"mode": "list", "mailboxes": [ADELE, ALEX]})
        await world.drain()
    assert set(await world.rows(contoso.id)) == {ADELE, ALEX}


async def test_writes_through_calbroker_are_read_back_at_once_and_bookings_check_live(
    world: SyncWorld, contoso: Connection, control: SandboxControl
) -> None:
    start, _ = next_week()
    slot = start + timedelta(days=4, hours=21, minutes=30)
    window = (slot, slot + timedelta(hours=1))
    await same_as_live(world, ALEX)
    control.clean()
    # No notification will tell the copy about this write: only calbroker's own bookkeeping can.
    control.tune(notifications_blocked=True)
    booked = await world.http.put(
        "/v1/events/sync-read-your-writes",
        json={
            "organizer": ALEX,
            "summary": "Booked through calbroker",
            "start": slot.isoformat(),
            "end": (slot + timedelta(minutes=30)).isoformat(),
            "check_availability": True,
        },
    )
    assert booked.status_code == 201, booked.text
    assert control.count("graph:getSchedule") == 1  # the booking check read Microsoft, not the copy
    try:
        seen = (await world.free_busy([ALEX], *window))[ALEX]
        assert seen["source"] == "cache"
        assert [(datetime.fromisoformat(b["start"]), b["status"]) for b in seen["busy"]] == [(slot, "busy")]
    finally:
        cancelled = await world.http.delete("/v1/events/sync-read-your-writes")
        assert cancelled.status_code == 204
    after = (await world.free_busy([ALEX], *window))[ALEX]
    assert after["source"] == "cache"
    assert after["busy"] == []
    await ask_round(world, await row_of(world, contoso, ALEX))
    await world.drain()
    await same_as_live(world, ALEX)
