"""The busy cache: synced mailboxes' busy time, written a round at a time and read a window at a time.

One query reads an application's connections together with every requested mailbox's sync
bookkeeping and busy time inside a window (`read_application`: an index-only range scan per
mailbox), so a 500-member availability query costs one round trip. A round's writes
(`apply_changes`) happen in the caller's transaction together with the round's new cursor, so a
crash leaves the previous round intact, never half of one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from calbroker.domain.busy import BusyBlock, BusyStatus
from calbroker.domain.connections import Connection
from calbroker.domain.intervals import Interval
from calbroker.domain.sync import CalendarItem, ChangeSet, FeedState, SyncHealth, SyncState
from calbroker.domain.working_hours import WorkingHours
from calbroker.store.connections import connection_from_row
from calbroker.store.database import Connection as DbConnection
from calbroker.store.sync_state import hours_from_json

__all__ = [
    "ApplicationCopy",
    "CachedMailbox",
    "Change",
    "MailboxChanges",
    "RoundChanges",
    "apply_changes",
    "changes_since",
    "forget_items",
    "mailbox_changes",
    "read_application",
    "record_item",
]

_STATUS = {status.value: status for status in BusyStatus}
_STATES = {state.value: state for state in SyncState}
_FEEDS = {feed.value: feed for feed in FeedState}


@dataclass(frozen=True, slots=True)
class CachedMailbox:
    """A synced mailbox's freshness bookkeeping and its cached busy time inside the asked window."""

    health: SyncHealth
    working_hours: WorkingHours | None
    busy: tuple[BusyBlock, ...]
    now: datetime
    """The database's clock when this was read: what freshness is judged against."""


@dataclass(frozen=True, slots=True)
class RoundChanges:
    """What a round changed in the copy: upstream ids added or changed, gone upstream, and still
    upstream but taking no time any more (shown as free, or cancelled)."""

    changed: tuple[str, ...]
    removed: tuple[str, ...]
    freed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Change:
    """One round's entry in the change feed (for webhooks: `changes_since`, managed events)."""

    id: int
    sync_id: uuid.UUID
    seen_at: datetime
    full_round: bool
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    freed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ApplicationCopy:
    """An application's connections and the copy of the requested mailboxes they sync."""

    connections: list[Connection]
    """Every connection that is not revoked, oldest first (the order routing depends on)."""
    copy: dict[tuple[uuid.UUID, str], CachedMailbox]
    """By (connection id, mailbox): every requested mailbox some connection syncs."""


async def read_application(
    conn: DbConnection, application_id: uuid.UUID, mailboxes: Sequence[str], window: Interval | None
) -> ApplicationCopy:
    """In one round trip: the application's connections and, unless `window` is None, each requested
    mailbox's sync bookkeeping and cached busy time inside `window` under every connection syncing it.

    One row per connection, its synced mailboxes' bookkeeping as parallel arrays and their busy time
    as flat arrays tagged with the mailbox's position: the connection's columns are sent and decoded
    once however many mailboxes it syncs, and the busy time is a range scan of the busy cache's
    (sync_id, starts_at) index per mailbox, so a 500-member query costs one query.
    """
    rows = await conn.fetch(
        """
        SELECT c.*, s.*, b.*
        FROM connections c
        LEFT JOIN LATERAL (
            SELECT array_agg(s.id ORDER BY s.mailbox) AS copy_sync_ids,
                   array_agg(s.mailbox ORDER BY s.mailbox) AS copy_mailboxes,
                   array_agg(s.state ORDER BY s.mailbox) AS copy_states,
                   array_agg(s.subscription_state ORDER BY s.mailbox) AS copy_feeds,
                   array_agg(s.subscription_expires_at ORDER BY s.mailbox) AS copy_feed_expires_at,
                   array_agg(s.lifecycle_pending_at IS NOT NULL ORDER BY s.mailbox) AS copy_lifecycle_pending,
                   array_agg(s.window_start ORDER BY s.mailbox) AS copy_window_starts,
                   array_agg(s.window_end ORDER BY s.mailbox) AS copy_window_ends,
                   array_agg(s.synced_at ORDER BY s.mailbox) AS copy_synced_at,
                   array_agg(s.last_notified_at ORDER BY s.mailbox) AS copy_last_notified_at,
                   array_agg(s.working_hours ORDER BY s.mailbox) AS copy_working_hours,
                   now() AS copy_now
            FROM sync_mailboxes s
            WHERE $3 AND s.connection_id = c.id AND s.mailbox = ANY($2::text[])
        ) s ON true
        LEFT JOIN LATERAL (
            -- Epoch microseconds (extract is exact numeric): blocks are built without datetimes.
            -- copy_owners: the block's mailbox, as its 1-based position in copy_sync_ids.
            SELECT array_agg(m.owner ORDER BY m.owner, k.starts_at) AS copy_owners,
                   array_agg((extract(epoch FROM k.starts_at) * 1000000)::int8 ORDER BY m.owner, k.starts_at)
                       AS copy_starts,
                   array_agg((extract(epoch FROM k.ends_at) * 1000000)::int8 ORDER BY m.owner, k.starts_at)
                       AS copy_ends,
                   array_agg(k.status ORDER BY m.owner, k.starts_at) AS copy_statuses
            FROM unnest(s.copy_sync_ids) WITH ORDINALITY AS m (sync_id, owner)
            CROSS JOIN LATERAL (
                -- Ordered, so the planner keeps it a range scan of the index per mailbox whatever
                -- it believes about the table (a subquery with ORDER BY is never flattened).
                SELECT k.starts_at, k.ends_at, k.status
                FROM busy_cache k
                WHERE k.sync_id = m.sync_id AND k.starts_at < $5 AND k.ends_at > $4
                ORDER BY k.starts_at
            ) k
        ) b ON s.copy_sync_ids IS NOT NULL
        WHERE c.application_id = $1 AND c.status <> 'revoked'
        ORDER BY c.created_at, c.id
        """,
        application_id,
        list(mailboxes),
        window is not None,
        window.start if window is not None else None,
        window.end if window is not None else None,
    )
    connections: list[Connection] = []
    copy: dict[tuple[uuid.UUID, str], CachedMailbox] = {}
    # Meetings have many attendees: one BusyBlock (immutable) serves every mailbox that holds it.
    seen: dict[tuple[int, int, str], BusyBlock] = {}
    at = BusyBlock.at
    for row in rows:
        connection = connection_from_row(row)
        connections.append(connection)
        synced = row["copy_mailboxes"]
        if not synced:
            continue
        busy: list[list[BusyBlock]] = [[] for _ in synced]
        for owner, start_us, end_us, status in zip(
            row["copy_owners"] or (),
            row["copy_starts"] or (),
            row["copy_ends"] or (),
            row["copy_statuses"] or (),
            strict=True,
        ):
            key = (start_us, end_us, status)
            block = seen.get(key)
            if block is None:
                block = seen[key] = at(start_us, end_us, _STATUS[status])
            busy[owner - 1].append(block)
        now = row["copy_now"]
        for mailbox, blocks, state, feed, expires, pending, start, end, synced_at, notified, hours in zip(
            synced,
            busy,
            row["copy_states"],
            row["copy_feeds"],
            row["copy_feed_expires_at"],
            row["copy_lifecycle_pending"],
            row["copy_window_starts"],
            row["copy_window_ends"],
            row["copy_synced_at"],
            row["copy_last_notified_at"],
            row["copy_working_hours"],
            strict=True,
        ):
            health = SyncHealth(
                state=_STATES[state],
                feed=_FEEDS[feed],
                feed_expires_at=expires,
                lifecycle_pending=pending,
                window=Interval(start, end) if start is not None and end is not None else None,
                synced_at=synced_at,
                last_notified_at=notified,
            )
            copy[(connection.id, mailbox)] = CachedMailbox(health, hours_from_json(hours), tuple(blocks), now)
    return ApplicationCopy(connections, copy)


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


async def apply_changes(conn: DbConnection, sync_id: uuid.UUID, changes: ChangeSet) -> RoundChanges:
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
        free = {i.upstream_id for i in everything if i.status is BusyStatus.FREE}
        result = RoundChanges(
            changed=tuple(sorted(k for k, v in after.items() if before.get(k) != v)),
            removed=tuple(sorted(set(before) - set(after) - free)),
            freed=tuple(sorted(set(before) & free)),
        )
    else:
        removed: set[str] = set()
        freed_ids: set[str] = set()
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
            reread = {i.upstream_id for i in fresh}
            removed.update(k for k in old if k not in reread)
            freed_ids.update(k for k in old if k in reread and k not in kept)
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
        freed_ids.update(freed)
        removed -= freed_ids
        result = RoundChanges(
            changed=tuple(sorted(changed - removed - freed_ids)),
            removed=tuple(sorted(removed)),
            freed=tuple(sorted(freed_ids)),
        )
    if result.changed or result.removed or result.freed:
        await conn.execute(
            "INSERT INTO sync_changes (sync_id, full_round, changed, removed, freed) VALUES ($1, $2, $3, $4, $5)",
            sync_id,
            changes.full,
            list(result.changed),
            list(result.removed),
            list(result.freed),
        )
    return result


def _dedupe(items: Iterable[CalendarItem]) -> list[CalendarItem]:
    """The last report of each id wins (upstream may report one item twice in a round)."""
    latest: dict[str, CalendarItem] = {}
    for item in items:
        latest[item.upstream_id] = item
    return list(latest.values())


async def record_item(conn: DbConnection, sync_ids: Sequence[uuid.UUID], item: CalendarItem) -> None:
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


async def forget_items(conn: DbConnection, sync_ids: Sequence[uuid.UUID], upstream_ids: Sequence[str]) -> None:
    """Remove items calbroker just cancelled upstream from these mailboxes' copies."""
    await conn.execute(
        "DELETE FROM busy_cache WHERE sync_id = ANY($1::uuid[]) AND upstream_id = ANY($2::text[])",
        list(sync_ids),
        list(upstream_ids),
    )


async def changes_since(
    conn: DbConnection, sync_ids: Sequence[uuid.UUID], after: int = 0, *, limit: int = 1000
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
        Change(
            r["id"],
            r["sync_id"],
            r["seen_at"],
            r["full_round"],
            tuple(r["changed"]),
            tuple(r["removed"]),
            tuple(r["freed"]),
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class MailboxChanges:
    """What a synced mailbox's change feed says since an instant, with the copy of what still takes time."""

    sync_id: uuid.UUID
    connection_id: uuid.UUID
    tracked_since: datetime
    """When calbroker started syncing the mailbox: the feed knows nothing before."""
    as_of: datetime
    """Read the feed again from here next time: no round still writing can log a change before it."""
    changes: list[Change]
    cached: dict[str, tuple[datetime, datetime, BusyStatus]]
    """Changed items that take time, as the copy holds them now."""


async def mailbox_changes(
    conn: DbConnection, application_id: uuid.UUID, mailbox: str, since: datetime, *, limit: int
) -> MailboxChanges | None:
    """The feed of `mailbox` (synced by one of the application's live connections) since `since`, at most
    `limit` rounds; None when no connection of the application syncs it."""
    row = await conn.fetchrow(
        """
        SELECT s.id, s.connection_id, s.created_at,
               least(now(), (SELECT min(a.xact_start) FROM pg_stat_activity a
                             WHERE a.backend_xid IS NOT NULL AND a.datname = current_database())) AS as_of
        FROM sync_mailboxes s JOIN connections c ON c.id = s.connection_id
        WHERE c.application_id = $1 AND s.mailbox = $2 AND c.status IN ('active', 'degraded')
        ORDER BY c.status = 'active' DESC, c.created_at DESC LIMIT 1
        """,
        application_id,
        mailbox,
    )
    if row is None:
        return None
    entries = await conn.fetch(
        "SELECT * FROM sync_changes WHERE sync_id = $1 AND seen_at >= $2 ORDER BY id LIMIT $3",
        row["id"],
        since,
        limit,
    )
    changes = [
        Change(
            r["id"],
            r["sync_id"],
            r["seen_at"],
            r["full_round"],
            tuple(r["changed"]),
            tuple(r["removed"]),
            tuple(r["freed"]),
        )
        for r in entries
    ]
    touched = sorted({upstream_id for change in changes for upstream_id in change.changed})
    cached = {
        r["upstream_id"]: (r["starts_at"], r["ends_at"], _STATUS[r["status"]])
        for r in await conn.fetch(
            """SELECT upstream_id, starts_at, ends_at, status FROM busy_cache
               WHERE sync_id = $1 AND upstream_id = ANY($2::text[])""",
            row["id"],
            touched,
        )
    }
    return MailboxChanges(row["id"], row["connection_id"], row["created_at"], row["as_of"], changes, cached)
