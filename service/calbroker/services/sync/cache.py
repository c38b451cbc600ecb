"""The busy cache's two sides for everyone but the worker: answering from the copy when it is
provably fresh, and keeping it honest about writes calbroker makes itself.

- `fresh` judges what the read path fetched in its one query (the bookkeeping and busy time of
  every requested mailbox) and keeps only mailboxes of healthy connections that the freshness
  rule (`domain.sync.stale_reason`) lets answer; every other mailbox is read live by the caller.
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
from calbroker.store.busy_cache import CachedMailbox, forget_items, record_item
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

    def fresh(
        self,
        copy: Mapping[tuple[uuid.UUID, str], CachedMailbox],
        batches: Mapping[Connection, Sequence[str]],
        window: Interval,
    ) -> dict[str, MailboxSchedule]:
        """The mailboxes the copy can answer for `window`, answered (source cache, as of their last round).

        `copy` is what `store.busy_cache.read_application` read; `batches` is each connection's
        share of the requested mailboxes after routing: only the routed connection's copy counts.
        """
        settings = self._settings.sync
        answers: dict[str, MailboxSchedule] = {}
        for connection, mailboxes in batches.items():
            if connection.status is not ConnectionStatus.ACTIVE:
                self.misses[StaleReason.CONNECTION_UNHEALTHY] += len(mailboxes)
                continue
            for mailbox in mailboxes:
                cached = copy.get((connection.id, mailbox))
                if cached is None:
                    self.misses[StaleReason.NOT_SYNCED] += 1
                    continue
                health = cached.health
                reason = stale_reason(
                    health, window, now=cached.now, max_age=settings.max_age, polling_age=settings.ews_poll_every * 2
                )
                if reason is not None:
                    self.misses[reason] += 1
                    continue
                answers[mailbox] = MailboxSchedule(
                    mailbox, cached.busy, cached.working_hours, Source.CACHE, health.synced_at
                )
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
