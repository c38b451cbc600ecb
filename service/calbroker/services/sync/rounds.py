"""One sync round of one mailbox: read upstream's changes since the mailbox's cursor (or everything,
in a full round) and write them into the busy cache with the new cursor, atomically.

A PostgreSQL advisory lock, held on the round's own connection, makes each mailbox synced by one
replica at a time; a replica that dies mid-round loses the lock with its connection, and its job
is picked up again by another worker (pgqueuer re-queues jobs whose heartbeat stops). Nothing is
written until the round has everything, so a crash leaves the previous round intact.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from calbroker.config import Settings
from calbroker.domain.connections import Connection
from calbroker.domain.errors import CalbrokerError, SyncStateExpired, UpstreamThrottled
from calbroker.domain.intervals import Interval
from calbroker.domain.schedules import MailboxSchedule
from calbroker.domain.sync import CalendarItem, ChangeSet, SyncState
from calbroker.domain.working_hours import WorkingHours
from calbroker.logs import get_logger
from calbroker.providers import CalendarProvider, ChangeFeed, Deadline, EwsProvider, GraphProvider
from calbroker.services.sync.queue import request_round
from calbroker.services.upstream import Upstream
from calbroker.store.busy_cache import RoundChanges, apply_changes
from calbroker.store.connections import find_connection
from calbroker.store.database import Connection as DbConnection
from calbroker.store.sync_state import SyncRow, claim_round, complete_round, fail_round

__all__ = ["RoundBusy", "RoundHook", "RoundOutcome", "RoundReport", "SyncRounds", "change_feed"]

log = get_logger(__name__)

_LONGEST_RETRY = timedelta(minutes=5)


class RoundBusy(Exception):  # a control-flow signal for the worker, not an error
    """Another replica is syncing this mailbox right now; try the job again shortly."""


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    sync_id: uuid.UUID
    mailbox: str
    full: bool
    changes: RoundChanges | None
    error: CalbrokerError | None = None


@dataclass(frozen=True, slots=True)
class RoundReport:
    """What a completed round did to one mailbox's copy, handed to the round hook in its transaction."""

    connection: Connection
    mailbox: str
    previous_round_at: datetime | None
    """When the round before this one started (None: this is the mailbox's first round)."""
    items: Mapping[str, CalendarItem]
    """What the round read upstream, by item id."""
    written: RoundChanges


RoundHook = Callable[[DbConnection, RoundReport], Awaitable[None]]
"""Called inside a round's transaction once its changes are written (channels announce them), so
whatever it writes commits with the round or not at all."""


def change_feed(provider: CalendarProvider) -> ChangeFeed | None:
    """The provider's round-by-round reader; None when its protocol has none."""
    if isinstance(provider, GraphProvider | EwsProvider):
        return provider.changes
    return None


def lock_key(sync_id: uuid.UUID) -> int:
    """The advisory lock of one mailbox's rounds (63 bits of a namespaced hash)."""
    return int.from_bytes(hashlib.sha256(b"calbroker.sync:" + sync_id.bytes).digest()[:8], "big") >> 1


class SyncRounds:
    """Runs rounds over the process's pool and providers."""

    def __init__(
        self, pool: asyncpg.Pool, upstream: Upstream, settings: Settings, *, on_round: RoundHook | None = None
    ) -> None:
        self._pool = pool
        self._upstream = upstream
        self._settings = settings
        self._on_round = on_round

    async def run(self, sync_id: uuid.UUID) -> RoundOutcome | None:
        """One round (None when the mailbox is no longer synced); raises RoundBusy if another holds it."""
        async with self._pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(sync_id)):
                raise RoundBusy(str(sync_id))
            try:
                return await self._locked(conn, sync_id)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", lock_key(sync_id))

    async def _locked(self, conn: DbConnection, sync_id: uuid.UUID) -> RoundOutcome | None:
        claimed = await claim_round(conn, sync_id)
        if claimed is None:
            return None
        row, started = claimed
        if row.state is SyncState.UNSUPPORTED:
            return None  # without a change feed the copy could never answer: no upstream calls for it
        connection = await find_connection(conn, row.connection_id)
        if connection is None or not connection.status.serves:
            return None  # removed or superseded since the round was asked for: nothing to read, nothing failed
        settings = self._settings.sync
        full = self._needs_full(row, started)
        try:
            provider = await self._upstream.provider(connection)
            feed = change_feed(provider)
            if feed is None:
                return None
            try:
                changes, window = await self._read(feed, row, started, full=full)
            except SyncStateExpired as expired:
                log.info("sync.cursor_expired", sync_id=str(sync_id), mailbox=row.mailbox, code=expired.upstream_code)
                full = True
                changes, window = await self._read(feed, row, started, full=True)
            hours = await self._working_hours(provider, row.mailbox, started) if full else None
        except CalbrokerError as exc:
            await self._failed(conn, row, exc)
            return RoundOutcome(sync_id, row.mailbox, full, None, exc)
        async with conn.transaction():
            written = await apply_changes(conn, sync_id, changes)
            await complete_round(
                conn,
                sync_id,
                started=started,
                cursor=changes.cursor,
                window=window,
                full=full,
                working_hours=hours,
            )
            if self._on_round is not None:
                items = {item.upstream_id: item for item in changes.items}
                for series in changes.series.values():
                    items.update((item.upstream_id, item) for item in series)
                await self._on_round(conn, RoundReport(connection, row.mailbox, row.synced_at, items, written))
        log.info(
            "sync.round",
            sync_id=str(sync_id),
            mailbox=row.mailbox,
            full=full,
            changed=len(written.changed),
            removed=len(written.removed),
            window_days=settings.window_future.days,
        )
        return RoundOutcome(sync_id, row.mailbox, full, written)

    def _needs_full(self, row: SyncRow, started: datetime) -> bool:
        return (
            row.cursor is None
            or row.window is None
            or row.full_requested_at is not None
            or row.full_synced_at is None
            or started - row.full_synced_at >= self._settings.sync.full_every
        )

    async def _read(
        self, feed: ChangeFeed, row: SyncRow, started: datetime, *, full: bool
    ) -> tuple[ChangeSet, Interval]:
        settings = self._settings.sync
        deadline = Deadline.after(settings.round_deadline_s)
        if full or row.window is None:
            window = Interval(started - settings.window_past, started + settings.window_future)
            return await feed.read_changes(row.mailbox, window, None, deadline), window
        return await feed.read_changes(row.mailbox, row.window, row.cursor, deadline), row.window

    async def _working_hours(self, provider: CalendarProvider, mailbox: str, started: datetime) -> WorkingHours | None:
        """What free/busy says about the mailbox's working hours (kept from before when unreadable)."""
        day = Interval(started, started + timedelta(days=1))
        try:
            found = (await provider.fetch_schedules([mailbox], day, Deadline.after(30)))[mailbox]
        except CalbrokerError:
            return None
        return found.working_hours if isinstance(found, MailboxSchedule) else None

    async def _failed(self, conn: DbConnection, row: SyncRow, error: CalbrokerError) -> None:
        """Record the failure (the copy stops answering) and ask for another try after a back-off."""
        reason = f"{error.slug}: {error.detail}"
        log.warning("sync.round_failed", sync_id=str(row.id), mailbox=row.mailbox, error=reason)
        wait = timedelta(seconds=min(_LONGEST_RETRY.total_seconds(), 5 * 2 ** min(row.failures, 6)))
        if isinstance(error, UpstreamThrottled) and error.retry_after:
            wait = max(wait, timedelta(seconds=error.retry_after))
        async with conn.transaction():
            await fail_round(conn, row.id, reason, cursor_lost=False)
            await request_round(conn, row.id, delay=wait)
