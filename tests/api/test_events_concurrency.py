"""Double booking and crash healing, with real concurrency: the app runs in this event loop, so
requests interleave at every await, two apps on one database play two replicas, and a request can
be killed between Microsoft's answer and our commit. The calendars are read from the sandbox.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg
import pytest

from calbroker.config import Settings
from calbroker.sandbox import SandboxThread
from calbroker.store.applications import IssuedKey
from tests.api.events_world import (
    Api,
    Slots,
    auth,
    connect_ews,
    connect_graph,
    event_body,
    live,
    sandbox_events,
    sandbox_settings,
    serve,
)
from tests.fixtures.database import new_master_key
from tests.fixtures.sandbox import SandboxControl

ADELE = "adele.vance@contoso.com"
MEGAN = "megan.bowen@contoso.com"
ANNA = "anna.schmidt@fabrikam.com"
SPREE = "spree@fabrikam.com"
FABRIKAM_PEOPLE = (
    "anna.schmidt@fabrikam.com",
    "ben.taylor@fabrikam.com",
    "chloe.martin@fabrikam.com",
    "dan.jones@fabrikam.com",
    "erin.baker@fabrikam.com",
)


@pytest.fixture(scope="module")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory, sandbox: SandboxThread) -> Settings:
    return sandbox_settings(database_url, tmp_path_factory.mktemp("data"), sandbox, new_master_key())


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with serve(settings) as running:
        yield running


@pytest.fixture(scope="module")
async def replica(settings: Settings) -> AsyncIterator[Api]:
    """A second calbroker on the same database: its own pool, provider registry and HTTP sessions."""
    async with serve(settings) as running:
        yield running


@dataclass
class World:
    token: str
    application_id: uuid.UUID


@pytest.fixture(scope="module")
async def world(api: Api, make_application: Callable[[str], Awaitable[IssuedKey]], sandbox: SandboxThread) -> World:
    issued = await make_application("events concurrency")
    await connect_graph(api.services, issued.application.id, sandbox)
    await connect_ews(api.services, issued.application.id, sandbox)
    return World(issued.token, issued.application.id)


@pytest.fixture
def slots(sandbox_control: SandboxControl, sandbox: SandboxThread, request: pytest.FixtureRequest) -> Slots:
    anchor: date = sandbox.call(lambda state: state.anchor)
    return Slots(sandbox_control, anchor, day=200 + sum(ord(c) for c in request.node.name) % 30 * 2)


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():  # noqa: ASYNC110 - polls state outside this loop (database, sandbox)
            await asyncio.sleep(0.01)
    assert await check(), what


def statuses(responses: list[Any]) -> Counter[int]:
    return Counter(r.status_code for r in responses)


async def cancel_all(api: Api, token: str, responses: list[Any]) -> None:
    for response in responses:
        if response.status_code in (200, 201):
            await api.http.delete(f"/v1/events/{response.json()['event_id']}", headers=auth(token))


# --- double booking ---------------------------------------------------------------------------------


async def test_twenty_concurrent_bookings_of_one_slot_one_wins(
    api: Api, world: World, slots: Slots, sandbox_control: SandboxControl
) -> None:
    start, end = slots.next([MEGAN])
    body = event_body(MEGAN, start, end, check_availability=True)
    run = uuid.uuid4().hex[:8]
    responses = await asyncio.gather(
        *(api.http.put(f"/v1/events/race-{run}-{i}", json=body, headers=auth(world.token)) for i in range(20))
    )
    try:
        assert statuses(responses) == {201: 1, 409: 19}, [r.text for r in responses if r.status_code >= 500]
        for refused in (r.json() for r in responses if r.status_code == 409):
            assert refused["type"] == "/problems/slot-unavailable"
            assert {(c["mailbox"], c["start"], c["end"]) for c in refused["conflicts"]} == {
                (MEGAN, start.isoformat(), end.isoformat())
            }
        assert len(live(sandbox_events(sandbox_control, MEGAN, start, end))) == 1
        assert sandbox_control.count("graph:events.create") == 1
    finally:
        await cancel_all(api, world.token, responses)


async def test_twenty_concurrent_bookings_across_two_replicas_one_wins(
    api: Api, replica: Api, world: World, slots: Slots, sandbox_control: SandboxControl
) -> None:
    assert api.services.pool is not replica.services.pool
    start, end = slots.next([MEGAN])
    body = event_body(MEGAN, start, end, check_availability=True)
    run = uuid.uuid4().hex[:8]
    responses = await asyncio.gather(
        *(
            (api if i % 2 else replica).http.put(f"/v1/events/replicas-{run}-{i}", json=body, headers=auth(world.token))
            for i in range(20)
        )
    )
    try:
        assert statuses(responses) == {201: 1, 409: 19}, [r.text for r in responses if r.status_code >= 500]
        assert all(r.json()["type"] == "/problems/slot-unavailable" for r in responses if r.status_code == 409)
        assert len(live(sandbox_events(sandbox_control, MEGAN, start, end))) == 1
    finally:
        await cancel_all(api, world.token, responses)


async def test_one_room_booked_by_many_organizers_at_once_over_ews(
    api: Api, replica: Api, world: World, slots: Slots, sandbox_control: SandboxControl
) -> None:
    start, end = slots.next([SPREE, *FABRIKAM_PEOPLE])
    run = uuid.uuid4().hex[:8]
    responses = await asyncio.gather(
        *(
            (api if i % 2 else replica).http.put(
                f"/v1/events/room-{run}-{i}",
                json=event_body(
                    FABRIKAM_PEOPLE[i % 5],
                    start,
                    end,
                    attendees=[{"email": SPREE, "type": "resource"}],
                    check_availability=True,
                ),
                headers=auth(world.token),
            )
            for i in range(10)
        )
    )
    try:
        assert statuses(responses) == {201: 1, 409: 9}, [r.text for r in responses if r.status_code >= 500]
        for refused in (r.json() for r in responses if r.status_code == 409):
            assert SPREE in {c["mailbox"] for c in refused["conflicts"]}
        assert len(live(sandbox_events(sandbox_control, SPREE, start, end))) == 1
        assert sandbox_control.count("ews:CreateItem") == 1
    finally:
        await cancel_all(api, world.token, responses)


async def test_a_retry_storm_of_one_event_books_it_once(
    api: Api, replica: Api, world: World, slots: Slots, sandbox_control: SandboxControl
) -> None:
    start, end = slots.next([ADELE])
    event_id = f"storm-{uuid.uuid4().hex[:8]}"
    body = event_body(ADELE, start, end, check_availability=True, teams_meeting=True)
    responses = await asyncio.gather(
        *(
            (api if i % 2 else replica).http.put(f"/v1/events/{event_id}", json=body, headers=auth(world.token))
            for i in range(8)
        )
    )
    try:
        counted = statuses(responses)
        assert set(counted) <= {201, 409}, [r.text for r in responses]
        assert counted[201] >= 1
        assert all(r.json()["type"] == "/problems/write-in-progress" for r in responses if r.status_code == 409)
        assert all(r.headers["Retry-After"] for r in responses if r.status_code == 409)
        assert {r.json()["teams"]["join_url"] for r in responses if r.status_code == 201} == {
            live(sandbox_events(sandbox_control, ADELE, start, end))[0]["join_url"]
        }
        assert len(live(sandbox_events(sandbox_control, ADELE, start, end))) == 1
        assert sandbox_control.count("graph:events.create") == 1
        final = await api.http.put(f"/v1/events/{event_id}", json=body, headers=auth(world.token))
        assert final.status_code == 201
    finally:
        await api.http.delete(f"/v1/events/{event_id}", headers=auth(world.token))


# --- crashes between Microsoft's answer and our commit ------------------------------------------------


async def _kill_after_upstream_create(
    api: Api,
    pool: asyncpg.Pool,
    world: World,
    control: SandboxControl,
    *,
    route: str,
    event_id: str,
    body: dict[str, Any],
    mailbox: str,
) -> None:
    """PUT, and kill the request once Microsoft has created the event but before we recorded it.

    Microsoft's create is slowed down (a sandbox fault) so the test can lock our freshly reserved
    row first; the request's final UPDATE then queues behind that lock, and the request is
    cancelled there, as if the process had died. Its lease is left to lapse, as after a crash.
    """
    start, end = body["start"], body["end"]
    control.fault(route=route, action="delay", latency_ms=300, count=1)
    request = asyncio.create_task(api.http.put(f"/v1/events/{event_id}", json=body, headers=auth(world.token)))

    async def state() -> str | None:
        async with pool.acquire() as conn:
            found: str | None = await conn.fetchval(
                "SELECT state FROM events WHERE application_id = $1 AND event_id = $2", world.application_id, event_id
            )
            return found

    async def created_upstream() -> bool:
        return bool(live(sandbox_events(control, mailbox, datetime.fromisoformat(start), datetime.fromisoformat(end))))

    async def confirm_blocked() -> bool:
        async with pool.acquire() as conn:
            waiting: int = await conn.fetchval(
                """SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                   AND wait_event_type = 'Lock' AND query LIKE '%UPDATE events SET%'"""
            )
            return waiting > 0

    await until(lambda: _equals(state(), "pending"), "the row was reserved before the upstream call")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT 1 FROM events WHERE application_id = $1 AND event_id = $2 FOR UPDATE",
            world.application_id,
            event_id,
        )
        await until(created_upstream, "Microsoft created the event")
        await until(confirm_blocked, "the request is about to record it")
        request.cancel()
        with suppress(asyncio.CancelledError):
            await request
    assert request.cancelled()


async def _equals(value: Awaitable[str | None], expected: str) -> bool:
    return await value == expected


async def _lapse_lease(pool: asyncpg.Pool, world: World, event_id: str) -> None:
    """Time passing past the dead request's deadline, without waiting for it."""
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE events SET lease_until = now() WHERE application_id = $1 AND event_id = $2",
            world.application_id,
            event_id,
        )


async def _row(pool: asyncpg.Pool, world: World, event_id: str) -> asyncpg.Record:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT * FROM events WHERE application_id = $1 AND event_id = $2", world.application_id, event_id
        )
    assert row is not None
    return row


async def test_graph_create_killed_before_commit_is_healed_by_transaction_id(
    api: Api, pool: asyncpg.Pool, world: World, slots: Slots, sandbox_control: SandboxControl
) -> None:
    start, end = slots.next([ADELE])
    event_id = f"crash-graph-{uuid.uuid4().hex[:8]}"
    body = event_body(ADELE, start, end, teams_meeting=True, check_availability=True)
    await _kill_after_upstream_create(
        api, pool, world, sandbox_control, route="graph:events.create", event_id=event_id, body=body, mailbox=ADELE
    )
    [made] = live(sandbox_events(sandbox_control, ADELE, start, end))
    row = await _row(pool, world, event_id)
    assert (row["state"], row["upstream_id"]) == ("pending", None)
    try:
        busy = await api.http.put(f"/v1/events/{event_id}", json=body, headers=auth(world.token))
        assert busy.status_code == 409
        assert busy.json()["type"] == "/problems/write-in-progress"
        assert int(busy.headers["Retry-After"]) >= 1

        await _lapse_lease(pool, world, event_id)
        healed = await api.http.put(f"/v1/events/{event_id}", json=body, headers=auth(world.token))
        assert healed.status_code == 201, healed.text
        assert healed.json()["teams"]["join_url"] == made["join_url"]
        assert live(sandbox_events(sandbox_control, ADELE, start, end)) == [made]
        # The retry sent the create again and Graph answered with the first event (transactionId).
        assert sandbox_control.count("graph:events.create") == 2
        assert (await _row(pool, world, event_id))["upstream_id"] == made["id"]
    finally:
        await api.http.delete(f"/v1/events/{event_id}", headers=auth(world.token))


async def test_ews_create_killed_before_commit_is_healed_by_its_marker(
    api: Api, pool: asyncpg.Pool, world: World, slots: Slots, sandbox_control: SandboxControl
) -> None:
    start, end = slots.next([ANNA])
    event_id = f"crash-ews-{uuid.uuid4().hex[:8]}"
    body = event_body(ANNA, start, end, summary="First try")
    await _kill_after_upstream_create(
        api, pool, world, sandbox_control, route="ews:CreateItem", event_id=event_id, body=body, mailbox=ANNA
    )
    [made] = live(sandbox_events(sandbox_control, ANNA, start, end))
    try:
        await _lapse_lease(pool, world, event_id)
        # The client retries with a changed body: the marker finds the first item, which is updated.
        healed = await api.http.put(
            f"/v1/events/{event_id}", json={**body, "summary": "Second try"}, headers=auth(world.token)
        )
        assert healed.status_code == 201, healed.text
        [held] = live(sandbox_events(sandbox_control, ANNA, start, end))
        assert (held["id"], held["subject"]) == (made["id"], "Second try")
        assert sandbox_control.count("ews:CreateItem") == 1
        assert sandbox_control.count("ews:UpdateItem") == 1
    finally:
        await api.http.delete(f"/v1/events/{event_id}", headers=auth(world.token))


async def test_cancelling_a_create_that_died_mid_way_leaves_no_orphan(
    api: Api, pool: asyncpg.Pool, world: World, slots: Slots, sandbox_control: SandboxControl
) -> None:
    start, end = slots.next([ADELE])
    event_id = f"crash-cancel-{uuid.uuid4().hex[:8]}"
    body = event_body(ADELE, start, end, teams_meeting=True)
    await _kill_after_upstream_create(
        api, pool, world, sandbox_control, route="graph:events.create", event_id=event_id, body=body, mailbox=ADELE
    )
    await _lapse_lease(pool, world, event_id)
    assert (await api.http.delete(f"/v1/events/{event_id}", headers=auth(world.token))).status_code == 204
    assert not live(sandbox_events(sandbox_control, ADELE, start, end))
    assert (await _row(pool, world, event_id))["state"] == "cancelled"
