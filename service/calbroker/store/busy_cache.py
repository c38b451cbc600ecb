"""The busy cache: synced mailboxes' busy time, written a round at a time and read a window at a time.

One query reads every requested mailbox's sync bookkeeping and its busy time inside a window
(`read_window`: an index-only range scan per mailbox), so a 500-member availability query costs
one round trip. A round's writes (`apply_changes`) happen in the caller's transaction together
with the round's new cursor, so a crash leaves the previous round intact, never half of one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from calbroker.domain.busy import BusyBlock, BusyStatus
from calbroker.domain.intervals import Interval
from calbroker.domain.sync import CalendarItem, ChangeSet
from calbroker.store.database import Connection
from calbroker.store.sync_state import SyncRow, sync_row

__all__ = [
    "CachedMailbox",
    "Change",
    "RoundChanges",
    "apply_changes",
    "changes_since",
    "forget_items",
    "read_window",
    "record_item",
]

_STATUS = {status.value: status for status in BusyStatus}


@dataclass(frozen=True, slots=True)
class CachedMailbox:
    """A synced mailbox's bookkeeping and its cached busy time inside the asked window."""

    row: SyncRow
    busy: tuple[BusyBlock, ...]
    now: datetime
    """The database's clock when this was read: what freshness is judged against."""


@dataclass(frozen=True, slots=True)
class RoundChanges:
    """What a round changed in the copy: upstream ids added or changed, and removed."""

    changed: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Change:
    """One round's entry in the change feed (for webhooks: `changes_since`, managed events)."""

    id: int
    sync_id: uuid.UUID
    seen_at: datetime
    full_round: bool
    changed: tuple[str, ...]
    removed: tuple[str, ...]


async def read_window(
    conn: Connection, keys: Sequence[tuple[uuid.UUID, str]], window: Interval
) -> dict[tuple[uuid.UUID, str], CachedMailbox]:
    """Bookkeeping and busy blocks overlapping `window` for every tracked (connection, mailbox) key."""
    if not keys:
        return {}
    rows = await conn.fetch(
        """
        SELECT s.*, now() AS db_now, b.starts, b.ends, b.statuses
        FROM unnest($1::uuid[], $2::text[]) AS w (connection_id, mailbox)
        JOIN sync_mailboxes s ON s.connection_id = w.connection_id AND s.mailbox = w.mailbox
        LEFT JOIN LATERAL (
            -- Epoch microseconds (extract is exact numeric): blocks are built without datetimes.
            SELECT array_agg((extract(epoch FROM c.starts_at) * 1000000)::int8 ORDER BY c.starts_at) AS starts,
                   array_agg((extract(epoch FROM c.ends_at) * 1000000)::int8 ORDER BY c.starts_at) AS ends,
                   array_agg(c.status ORDER BY c.starts_at) AS statuses
            FROM busy_cache c
            WHERE c.sync_id = s.id AND c.starts_at < $4 AND c.ends_at > $3
        ) b ON true
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
        window.start,
        window.end,
    )
    found: dict[tuple[uuid.UUID, str], CachedMailbox] = {}
    # Meetings have many attendees: one BusyBlock (immutable) serves every mailbox that holds it.
    seen: dict[tuple[int, int, str], BusyBlock] = {}
    at = BusyBlock.at
    for row in rows:
        busy: list[BusyBlock] = []
        for key in zip(row["starts"] or (), row["ends"] or (), row["statuses"] or (), strict=True):
            block = seen.get(key)
            if block is None:
                block = seen[key] = at(key[0], key[1], _STATUS[key[2]])
            busy.append(block)
        found[(row["connection_id"], row["mailbox"])] = CachedMailbox(sync_row(row), tuple(busy), row["db_now"])
    return found


_Columns = tuple[list[str], list[str | None], list[datetime], list[datetime], list[str]]


def _columns(items: Sequence[CalendarItem]) -> _Columns:
    kept = [item for item in items if item.status is not BusyStatus.FREE]
    return (
        [i.upstream_id for i in kept],
        [i.series_id for i in kept],
        [i.interval.start for i in kept],
        [i.interval.end for i in kept],
        [i.status.value for i in kept],
    )


_INSERT = """
    INSERT INTO busy_cache (sync_id, upstream_id, series_id, starts_at, ends_at, status)
    SELECT $1, * FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::text[])
"""


async def apply_changes(conn: Connection, sync_id: uuid.UUID, changes: ChangeSet) -> RoundChanges:
    """Write one round into the copy (call inside the round's transaction) and log what changed.

    A full round replaces the copy and logs the difference; an incremental one removes, replaces
    re-read series, then upserts items (FREE ones remove), logging every id upstream reported.
    """
    if changes.full:
        before = {
            r["upstream_id"]: (r["starts_at"], r["ends_at"], r["status"])
            for r in await conn.fetch(
                "SELECT upstream_id, starts_at, ends_at, status FROM busy_cache WHERE sync_id = $1", sync_id
            )
        }
        await conn.execute("DELETE FROM busy_cache WHERE sync_id = $1", sync_id)
        everything = _dedupe(changes.items)
        await conn.execute(_INSERT, sync_id, *_columns(everything))
        after = {
            i.upstream_id: (i.interval.start, i.interval.end, i.status.value)
            for i in everything
            if i.status is not BusyStatus.FREE
        }
        result = RoundChanges(
            changed=tuple(sorted(k for k, v in after.items() if before.get(k) != v)),
            removed=tuple(sorted(set(before) - set(after))),
        )
    else:
        removed: set[str] = set()
        if changes.removed:
            gone = await conn.fetch(
                """
                DELETE FROM busy_cache
                WHERE sync_id = $1 AND (upstream_id = ANY($2::text[]) OR series_id = ANY($2::text[]))
                RETURNING upstream_id
                """,
                sync_id,
                list(changes.removed),
            )
            removed.update(r["upstream_id"] for r in gone)
            removed.update(changes.removed)
        changed: set[str] = set()
        if changes.series or changes.series_complete:
            scope = "series_id IS NOT NULL" if changes.series_complete else "series_id = ANY($2::text[])"
            args: list[object] = [sync_id] if changes.series_complete else [sync_id, list(changes.series)]
            old = {
                r["upstream_id"]: (r["starts_at"], r["ends_at"], r["status"])
                for r in await conn.fetch(
                    f"DELETE FROM busy_cache WHERE sync_id = $1 AND {scope} "  # noqa: S608 - one of two fixed clauses
                    "RETURNING upstream_id, starts_at, ends_at, status",
                    *args,
                )
            }
            fresh = _dedupe(item for items in changes.series.values() for item in items)
            await conn.execute(_INSERT, sync_id, *_columns(fresh))
            kept = {
                i.upstream_id: (i.interval.start, i.interval.end, i.status.value)
                for i in fresh
                if i.status is not BusyStatus.FREE
            }
            changed.update(k for k, v in kept.items() if old.get(k) != v)
            removed.update(k for k in old if k not in kept)
        singles = [i for i in _dedupe(changes.items) if i.series_id not in changes.series]
        freed = [i.upstream_id for i in singles if i.status is BusyStatus.FREE]
        if freed:
            await conn.execute(
                "DELETE FROM busy_cache WHERE sync_id = $1 AND upstream_id = ANY($2::text[])", sync_id, freed
            )
        busy = [i for i in singles if i.status is not BusyStatus.FREE]
        if busy:
            await conn.execute(
                _INSERT
                + """
                ON CONFLICT (sync_id, upstream_id) DO UPDATE SET
                    series_id = EXCLUDED.series_id, starts_at = EXCLUDED.starts_at,
                    ends_at = EXCLUDED.ends_at, status = EXCLUDED.status
                """,
                sync_id,
                *_columns(busy),
            )
        changed.update(i.upstream_id for i in singles)
        removed.update(freed)
        result = RoundChanges(changed=tuple(sorted(changed - removed)), removed=tuple(sorted(removed)))
    if result.changed or result.removed:
        await conn.execute(
            "INSERT INTO sync_changes (sync_id, full_round, changed, removed) VALUES ($1, $2, $3, $4)",
            sync_id,
            changes.full,
            list(result.changed),
            list(result.removed),
        )
    return result


def _dedupe(items: Iterable[CalendarItem]) -> list[CalendarItem]:
    """The last report of each id wins (upstream may report one item twice in a round)."""
    latest: dict[str, CalendarItem] = {}
    for item in items:
        latest[item.upstream_id] = item
    return list(latest.values())


async def record_item(conn: Connection, sync_ids: Sequence[uuid.UUID], item: CalendarItem) -> None:
    """Write one item calbroker itself just wrote upstream into these mailboxes' copies (read your writes)."""
    if item.status is BusyStatus.FREE:
        await forget_items(conn, sync_ids, [item.upstream_id])
        return
    await conn.execute(
        """
        INSERT INTO busy_cache (sync_id, upstream_id, series_id, starts_at, ends_at, status)
        SELECT s, $2, $3, $4, $5, $6 FROM unnest($1::uuid[]) AS s
        ON CONFLICT (sync_id, upstream_id) DO UPDATE SET
            starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at, status = EXCLUDED.status
        """,
        list(sync_ids),
        item.upstream_id,
        item.series_id,
        item.interval.start,
        item.interval.end,
        item.status.value,
    )


async def forget_items(conn: Connection, sync_ids: Sequence[uuid.UUID], upstream_ids: Sequence[str]) -> None:
    """Remove items calbroker just cancelled upstream from these mailboxes' copies."""
    await conn.execute(
        "DELETE FROM busy_cache WHERE sync_id = ANY($1::uuid[]) AND upstream_id = ANY($2::text[])",
        list(sync_ids),
        list(upstream_ids),
    )


async def changes_since(
    conn: Connection, sync_ids: Sequence[uuid.UUID], after: int = 0, *, limit: int = 1000
) -> list[Change]:
    """The change feed of these mailboxes after entry `after`, oldest first."""
    rows = await conn.fetch(
        """
        SELECT * FROM sync_changes WHERE sync_id = ANY($1::uuid[]) AND id > $2 ORDER BY id LIMIT $3
        """,
        list(sync_ids),
        after,
        limit,
    )
    return [
        Change(r["id"], r["sync_id"], r["seen_at"], r["full_round"], tuple(r["changed"]), tuple(r["removed"]))
        for r in rows
    ]
