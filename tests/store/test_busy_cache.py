"""The busy cache in PostgreSQL: rounds written whole or incrementally, the change feed they log, and
the one query the read path makes (an application's connections plus the copy of its mailboxes)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from calbroker.domain.busy import BusyStatus
from calbroker.domain.connections import AccessLevel, ConnectionKind, ConnectionMethod, GraphClientSecret
from calbroker.domain.intervals import Interval
from calbroker.domain.sync import CalendarItem, ChangeSet, FeedState, SyncState
from calbroker.domain.working_hours import Weekday, WeeklyPeriod, WorkingHours
from calbroker.store.applications import create_application
from calbroker.store.busy_cache import apply_changes, changes_since, forget_items, read_application, record_item
from calbroker.store.connections import NewConnection, save_connection
from calbroker.store.keyring import Keyring
from calbroker.store.sync_state import (
    claim_round,
    complete_round,
    hours_from_json,
    hours_to_json,
    set_feed,
    track_mailboxes,
)
from tests.fixtures.database import new_master_key

MONDAY = datetime(2026, 11, 23, tzinfo=UTC)
WINDOW = Interval(MONDAY - timedelta(days=1), MONDAY + timedelta(days=180))


def at(day: int, hour: int, minutes: int = 60) -> Interval:
    start = MONDAY + timedelta(days=day, hours=hour)
    return Interval(start, start + timedelta(minutes=minutes))


def item(
    upstream_id: str, when: Interval, status: BusyStatus = BusyStatus.BUSY, series: str | None = None
) -> CalendarItem:
    return CalendarItem(upstream_id, when, status, series)


async def _mailbox(conn: asyncpg.Connection, name: str = "adele@contoso.com") -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A new application with one Graph connection syncing `name`: (application, connection, sync row) ids."""
    issued = await create_application(conn, f"app-{uuid.uuid4().hex[:8]}", actor="test")
    connection = await save_connection(
        conn,
        Keyring((new_master_key(),)),
        NewConnection(
            application_id=issued.application.id,
            kind=ConnectionKind.GRAPH,
            method=ConnectionMethod.GRAPH_APP,
            access_level=AccessLevel.FULL,
            display_name="Contoso",
            domains=("contoso.com",),
            credentials=GraphClientSecret("tenant", "client", "secret"),
            tenant_id="tenant",
        ),
        actor="test",
    )
    (row,) = await track_mailboxes(conn, connection.id, [name])
    return issued.application.id, connection.id, row.id


async def _copy(conn: asyncpg.Connection, sync_id: uuid.UUID) -> dict[str, tuple[datetime, datetime, str, str | None]]:
    rows = await conn.fetch(
        "SELECT upstream_id, starts_at, ends_at, status, series_id FROM busy_cache WHERE sync_id = $1", sync_id
    )
    return {r["upstream_id"]: (r["starts_at"], r["ends_at"], r["status"], r["series_id"]) for r in rows}


async def test_a_full_round_replaces_the_copy_and_logs_only_the_difference(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        _, _, sync_id = await _mailbox(conn)
        first = await apply_changes(
            conn,
            sync_id,
            ChangeSet(
                "c1",
                full=True,
                items=(item("a", at(0, 9)), item("b", at(0, 11)), item("f", at(0, 13), BusyStatus.FREE)),
            ),
        )
        assert (first.changed, first.removed) == (("a", "b"), ())
        assert set(await _copy(conn, sync_id)) == {"a", "b"}  # free items take no time: not stored

        second = await apply_changes(
            conn,
            sync_id,
            ChangeSet("c2", full=True, items=(item("a", at(0, 9)), item("b", at(0, 12)), item("c", at(1, 9)))),
        )
        assert (second.changed, second.removed) == (("b", "c"), ())
        third = await apply_changes(conn, sync_id, ChangeSet("c3", full=True, items=(item("c", at(1, 9)),)))
        assert (third.changed, third.removed) == ((), ("a", "b"))
        assert set(await _copy(conn, sync_id)) == {"c"}
        # An unchanged full round logs nothing.
        quiet = await apply_changes(conn, sync_id, ChangeSet("c4", full=True, items=(item("c", at(1, 9)),)))
        assert (quiet.changed, quiet.removed) == ((), ())
        feed = await changes_since(conn, [sync_id])
        assert [(c.full_round, c.changed, c.removed) for c in feed] == [
            (True, ("a", "b"), ()),
            (True, ("b", "c"), ()),
            (True, (), ("a", "b")),
        ]
        assert await changes_since(conn, [sync_id], after=feed[-1].id) == []


async def test_an_incremental_round_upserts_removes_and_frees(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        _, _, sync_id = await _mailbox(conn)
        await apply_changes(
            conn, sync_id, ChangeSet("c1", full=True, items=(item("a", at(0, 9)), item("b", at(0, 11))))
        )
        result = await apply_changes(
            conn,
            sync_id,
            ChangeSet(
                "c2",
                full=False,
                # Upstream may report one item twice in a round: the last report wins.
                items=(
                    item("a", at(0, 10)),
                    item("a", at(0, 14), BusyStatus.OOF),
                    item("b", at(0, 11), BusyStatus.FREE),
                ),
                removed=("gone-already",),
            ),
        )
        assert result.changed == ("a",)
        assert result.removed == ("gone-already",)
        assert result.freed == ("b",)  # still upstream, but shown as free: not a deletion
        copy = await _copy(conn, sync_id)
        assert copy == {"a": (at(0, 14).start, at(0, 14).end, "oof", None)}


async def test_a_reread_series_replaces_its_occurrences_and_a_complete_list_drops_unlisted_series(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        _, _, sync_id = await _mailbox(conn)
        weekly = [item(f"s1-{d}", at(d * 7, 9), series="s1") for d in range(3)]
        daily = [item(f"s2-{d}", at(d, 15), series="s2") for d in range(3)]
        await apply_changes(conn, sync_id, ChangeSet("c1", full=True, items=(*weekly, *daily, item("x", at(0, 12)))))

        # s1 moved an hour later and lost its last occurrence; s2 and the single are untouched.
        moved = tuple(item(f"s1-{d}", at(d * 7, 10), series="s1") for d in range(2))
        result = await apply_changes(conn, sync_id, ChangeSet("c2", full=False, series={"s1": moved}))
        assert (result.changed, result.removed) == (("s1-0", "s1-1"), ("s1-2",))
        copy = await _copy(conn, sync_id)
        assert {k for k, v in copy.items() if v[3] == "s1"} == {"s1-0", "s1-1"}
        assert {k for k, v in copy.items() if v[3] == "s2"} == {"s2-0", "s2-1", "s2-2"}

        # EWS names a deleted master only by its id: a complete series list drops every other series.
        result = await apply_changes(
            conn, sync_id, ChangeSet("c3", full=False, series={"s1": moved}, series_complete=True)
        )
        assert result.removed == ("s2-0", "s2-1", "s2-2")
        assert set(await _copy(conn, sync_id)) == {"s1-0", "s1-1", "x"}

        # Removing a series by its id removes its occurrences.
        result = await apply_changes(conn, sync_id, ChangeSet("c4", full=False, removed=("s1",)))
        assert set(result.removed) == {"s1", "s1-0", "s1-1"}
        assert set(await _copy(conn, sync_id)) == {"x"}


async def test_read_your_writes_touch_only_the_named_copies(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        _, _, mine = await _mailbox(conn, "adele@contoso.com")
        _, _, other = await _mailbox(conn, "alex@contoso.com")
        booked = item("evt", at(2, 9))
        await record_item(conn, [mine], booked)
        assert set(await _copy(conn, mine)) == {"evt"}
        assert await _copy(conn, other) == {}
        await record_item(conn, [mine], item("evt", at(2, 10), BusyStatus.TENTATIVE))
        assert (await _copy(conn, mine))["evt"][:3] == (at(2, 10).start, at(2, 10).end, "tentative")
        await record_item(conn, [mine], item("evt", at(2, 10), BusyStatus.FREE))  # free: forgotten
        assert await _copy(conn, mine) == {}
        await record_item(conn, [mine, other], booked)
        await forget_items(conn, [mine], ["evt"])
        assert await _copy(conn, mine) == {}
        assert set(await _copy(conn, other)) == {"evt"}


async def test_one_query_reads_the_connections_and_the_copy_inside_a_window(pool: asyncpg.Pool) -> None:
    hours = WorkingHours(
        tuple(WeeklyPeriod(day, time(9), time(17)) for day in (Weekday.MONDAY, Weekday.TUESDAY, Weekday.FRIDAY)),
        ZoneInfo("Europe/London"),
    )
    async with pool.acquire() as conn:
        application_id, connection_id, sync_id = await _mailbox(conn)
        await apply_changes(
            conn,
            sync_id,
            ChangeSet("c1", full=True, items=(item("early", at(0, 8)), item("in", at(1, 9)), item("late", at(3, 9)))),
        )
        claimed = await claim_round(conn, sync_id)
        assert claimed is not None
        await complete_round(
            conn, sync_id, started=claimed[1], cursor="c1", window=WINDOW, full=True, working_hours=hours
        )
        await set_feed(conn, sync_id, FeedState.ACTIVE, subscription_id="sub", expires_at=MONDAY + timedelta(days=3))

        found = await read_application(
            conn, application_id, ["adele@contoso.com", "nobody@contoso.com"], at(1, 0, 48 * 60)
        )
        assert [c.id for c in found.connections] == [connection_id]
        assert set(found.copy) == {(connection_id, "adele@contoso.com")}
        cached = found.copy[(connection_id, "adele@contoso.com")]
        assert [(b.interval, b.status) for b in cached.busy] == [(at(1, 9), BusyStatus.BUSY)]
        assert cached.working_hours == hours
        health = cached.health
        assert (health.state, health.feed, health.window) == (SyncState.ACTIVE, FeedState.ACTIVE, WINDOW)
        assert health.synced_at == claimed[1]
        assert not health.lifecycle_pending
        assert cached.now >= claimed[1]

        # Live reads ask for the connections only.
        live = await read_application(conn, application_id, ["adele@contoso.com"], None)
        assert [c.id for c in live.connections] == [connection_id]
        assert live.copy == {}


async def test_each_mailbox_gets_its_own_busy_time_under_every_connection_syncing_it(pool: asyncpg.Pool) -> None:
    """Mailboxes of one connection come back in one row: every block must land on its own mailbox,
    in start order, whatever order the mailboxes were asked in."""
    async with pool.acquire() as conn:
        application_id, first, adele = await _mailbox(conn)
        (megan,) = await track_mailboxes(conn, first, ["megan@contoso.com"])
        (idle,) = await track_mailboxes(conn, first, ["zoe@contoso.com"])  # synced, nothing in the window
        second = await save_connection(
            conn,
            Keyring((new_master_key(),)),
            NewConnection(
                application_id=application_id,
                kind=ConnectionKind.GRAPH,
                method=ConnectionMethod.GRAPH_APP,
                access_level=AccessLevel.FULL,
                display_name="Contoso rooms",
                domains=("contoso.com",),
                allowed_mailboxes=("adele@contoso.com",),
                credentials=GraphClientSecret("tenant-2", "client", "secret"),
                tenant_id="tenant-2",
            ),
            actor="test",
        )
        (adele_again,) = await track_mailboxes(conn, second.id, ["adele@contoso.com"])
        shared = item("meeting", at(1, 11))
        await apply_changes(
            conn, adele, ChangeSet("a", full=True, items=(item("a2", at(2, 9)), shared, item("a1", at(1, 9))))
        )
        await apply_changes(
            conn, megan.id, ChangeSet("m", full=True, items=(shared, item("m1", at(1, 8), BusyStatus.TENTATIVE)))
        )
        await apply_changes(conn, adele_again.id, ChangeSet("x", full=True, items=(item("x1", at(3, 9)),)))
        await apply_changes(conn, idle.id, ChangeSet("z", full=True, items=(item("z1", at(9, 9)),)))

        asked = ["zoe@contoso.com", "megan@contoso.com", "nobody@contoso.com", "adele@contoso.com"]
        found = await read_application(conn, application_id, asked, at(0, 0, 5 * 24 * 60))

        def busy(connection_id: uuid.UUID, mailbox: str) -> list[tuple[Interval, BusyStatus]]:
            return [(b.interval, b.status) for b in found.copy[(connection_id, mailbox)].busy]

        assert [c.id for c in found.connections] == [first, second.id]
        assert set(found.copy) == {
            (first, "adele@contoso.com"),
            (first, "megan@contoso.com"),
            (first, "zoe@contoso.com"),
            (second.id, "adele@contoso.com"),
        }
        assert busy(first, "adele@contoso.com") == [
            (at(1, 9), BusyStatus.BUSY),
            (at(1, 11), BusyStatus.BUSY),
            (at(2, 9), BusyStatus.BUSY),
        ]
        assert busy(first, "megan@contoso.com") == [(at(1, 8), BusyStatus.TENTATIVE), (at(1, 11), BusyStatus.BUSY)]
        assert busy(first, "zoe@contoso.com") == []
        assert busy(second.id, "adele@contoso.com") == [(at(3, 9), BusyStatus.BUSY)]
        # The meeting both hold is one block, shared.
        assert found.copy[(first, "adele@contoso.com")].busy[1] is found.copy[(first, "megan@contoso.com")].busy[1]


@pytest.mark.parametrize(
    "raw", [None, "{}", '{"tz": "Mars/Olympus", "periods": []}', '{"tz": "UTC", "periods": [[9, "x", null]]}']
)
def test_unreadable_stored_working_hours_read_as_unknown(raw: str | None) -> None:
    assert hours_from_json(raw) is None


def test_stored_working_hours_round_trip() -> None:
    hours = WorkingHours(
        (WeeklyPeriod(Weekday.MONDAY, time(22), None), WeeklyPeriod(Weekday.TUESDAY, time(0), time(6))),
        ZoneInfo("America/New_York"),
    )
    assert hours_from_json(hours_to_json(hours)) == hours
