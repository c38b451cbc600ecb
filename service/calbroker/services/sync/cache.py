"""The busy cache's two sides for everyone but the worker: answering from the copy when it is
provably fresh, and keeping it honest about writes calbroker makes itself.

- `fresh` reads, in one query, the bookkeeping and busy time of every requested mailbox of healthy
  connections, and keeps only those the freshness rule (`domain.sync.stale_reason`) lets answer;
  every other mailbox is read live by the caller.
- `booked` / `cancelled` apply an event calbroker just wrote to the organizer's copy at once (read
  your own writes), and mark the internal attendees' copies stale until a round has seen the
  invitation Exchange delivers to them.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence

import asyncpg

from calbroker.config import Settings
from calbroker.domain.connections import Connection, ConnectionStatus
from calbroker.domain.events import EventSpec
from calbroker.domain.intervals import Interval
from calbroker.domain.schedules import MailboxSchedule
from calbroker.domain.sync import CalendarItem, Source, StaleReason, stale_reason
from calbroker.logs import get_logger
from calbroker.services.sync.queue import request_round
from calbroker.store.busy_cache import forget_items, read_window, record_item
from calbroker.store.database import Connection as DbConnection
from calbroker.store.sync_state import sync_ids

__all__ = ["BusyCache"]

log = get_logger(__name__)


class BusyCache:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self.misses: Counter[StaleReason] = Counter()
        """Why mailboxes were read live instead of from the copy (for metrics and tests)."""
        self.hits = 0

    async def fresh(
        self, conn: DbConnection, batches: Mapping[Connection, Sequence[str]], window: Interval
    ) -> dict[str, MailboxSchedule]:
        """The mailboxes the copy can answer for `window`, answered (source cache, as of their last round)."""
        keys: list[tuple[uuid.UUID, str]] = []
        for connection, mailboxes in batches.items():
            if connection.status is not ConnectionStatus.ACTIVE:
                self.misses[StaleReason.CONNECTION_UNHEALTHY] += len(mailboxes)
                continue
            keys.extend((connection.id, mailbox) for mailbox in mailboxes)
        found = await read_window(conn, keys, window)
        settings = self._settings.sync
        answers: dict[str, MailboxSchedule] = {}
        for (_, mailbox), cached in found.items():
            row = cached.row
            reason = stale_reason(
                row.health, window, now=cached.now, max_age=settings.max_age, polling_age=settings.ews_poll_every * 2
            )
            if reason is not None:
                self.misses[reason] += 1
                continue
            answers[mailbox] = MailboxSchedule(mailbox, cached.busy, row.working_hours, Source.CACHE, row.synced_at)
        self.misses[StaleReason.NOT_SYNCED] += len(keys) - len(found)
        self.hits += len(answers)
        return answers

    async def booked(
        self, connection: Connection, spec: EventSpec, upstream_id: str, *, attendees: Sequence[str]
    ) -> None:
        """An event calbroker wrote: the organizer's copy holds it now; attendees' copies wait for a round."""
        item = CalendarItem(upstream_id, spec.interval, spec.show_as)
        async with self._pool.acquire() as conn, conn.transaction():
            ids = await sync_ids(conn, connection.id, [spec.organizer, *attendees])
            organizer = ids.pop(spec.organizer, None)
            if organizer is not None:
                await record_item(conn, [organizer], item)
            await self._stale(conn, list(ids.values()))

    async def cancelled(
        self, connection: Connection, spec: EventSpec, upstream_id: str, *, attendees: Sequence[str]
    ) -> None:
        """An event calbroker cancelled: gone from the organizer's copy; attendees' copies wait for a round."""
        async with self._pool.acquire() as conn, conn.transaction():
            ids = await sync_ids(conn, connection.id, [spec.organizer, *attendees])
            organizer = ids.pop(spec.organizer, None)
            if organizer is not None:
                await forget_items(conn, [organizer], [upstream_id])
            await self._stale(conn, list(ids.values()))

    async def _stale(self, conn: DbConnection, ids: list[uuid.UUID]) -> None:
        for sync_id in sorted(ids):
            await request_round(conn, sync_id, notified=True, delay=self._settings.sync.debounce)
