"""Reading busy time for many mailboxes across connections: route, answer from the synced copy
where it is provably fresh, and read the rest live — batched, fanned out, coalesced.

A request for mailboxes on two tenants becomes one query for everything the copy can answer, then
one batched upstream call per connection for the rest, issued concurrently; identical concurrent
live reads (same connection, mailboxes and window) share one upstream call. Every answer says
where it came from and as of when (`MailboxSchedule.source`, `.as_of`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

import asyncpg

from calbroker.domain.connections import Connection, route_mailbox
from calbroker.domain.errors import CalbrokerError, MailboxError, UpstreamError, UpstreamUnavailable
from calbroker.domain.intervals import Interval
from calbroker.domain.schedules import MailboxSchedule, ScheduleResult
from calbroker.domain.sync import ReadMode
from calbroker.logs import get_logger
from calbroker.metrics import Metrics
from calbroker.providers.protocol import Deadline
from calbroker.services.sync.cache import BusyCache
from calbroker.services.upstream import Upstream
from calbroker.store.busy_cache import read_application

__all__ = ["Coalescer", "ScheduleReader"]

log = get_logger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """Concurrent calls with the same key share one in-flight result (success or failure)."""

    def __init__(self, on_shared: Callable[[], object] | None = None) -> None:
        self._inflight: dict[K, asyncio.Future[V]] = {}
        self._on_shared = on_shared
        self.shared = 0
        """How many calls were answered by another call's upstream work (for metrics and tests)."""

    async def run(self, key: K, make: Callable[[], Awaitable[V]]) -> V:
        existing = self._inflight.get(key)
        if existing is not None:
            self.shared += 1
            if self._on_shared is not None:
                self._on_shared()
            return await asyncio.shield(existing)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await make()
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # mark retrieved: waiters, if any, re-raise it themselves
            raise
        else:
            future.set_result(result)
            return result
        finally:
            self._inflight.pop(key, None)


@dataclass(frozen=True, slots=True)
class _Batch:
    connection: Connection
    mailboxes: tuple[str, ...]


class ScheduleReader:
    """Busy time for an application's mailboxes, whichever connection and protocol serves each."""

    def __init__(
        self, pool: asyncpg.Pool, upstream: Upstream, cache: BusyCache | None = None, *, metrics: Metrics | None = None
    ) -> None:
        self._pool = pool
        self._upstream = upstream
        self._cache = cache
        shared = metrics.coalesced_reads.inc if metrics is not None else None
        self.coalescer: Coalescer[tuple[str, tuple[str, ...], Interval], dict[str, ScheduleResult]] = Coalescer(shared)

    async def read(
        self,
        application_id: uuid.UUID,
        mailboxes: Sequence[str],
        window: Interval,
        deadline: Deadline,
        *,
        mode: ReadMode = ReadMode.AUTO,
    ) -> dict[str, ScheduleResult]:
        """Every mailbox gets a schedule or the error that makes it unavailable; none fails the others.

        `ReadMode.LIVE` skips the synced copy (a caller that must see Microsoft's answer now).
        """
        results: dict[str, ScheduleResult] = {}
        batches: dict[uuid.UUID, list[str]] = {}
        cached = mode is ReadMode.AUTO and self._cache is not None
        async with self._pool.acquire() as conn:
            # The connections and, in the same round trip, the synced copy of every requested mailbox.
            found = await read_application(conn, application_id, mailboxes, window if cached else None)
        connections = found.connections
        by_id = {c.id: c for c in connections}
        for mailbox in dict.fromkeys(mailboxes):
            try:
                connection = route_mailbox(connections, mailbox)
            except MailboxError as exc:
                results[mailbox] = exc
                continue
            batches.setdefault(connection.id, []).append(mailbox)
        if cached and self._cache is not None and batches:
            answered = self._cache.fresh(found.copy, {by_id[c]: wanted for c, wanted in batches.items()}, window)
            results.update(answered)
            batches = {c: [m for m in wanted if m not in answered] for c, wanted in batches.items()}
        jobs = [_Batch(by_id[cid], tuple(sorted(wanted))) for cid, wanted in batches.items() if wanted]
        if jobs:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._read_batch(job, window, deadline)) for job in jobs]
            for task in tasks:
                results.update(task.result())
        return {mailbox: results[mailbox] for mailbox in dict.fromkeys(mailboxes)}

    async def _read_batch(self, job: _Batch, window: Interval, deadline: Deadline) -> dict[str, ScheduleResult]:
        key = (str(job.connection.id), job.mailboxes, window)
        try:
            return await self.coalescer.run(key, lambda: self._fetch(job, window, deadline))
        except UpstreamError as exc:
            return dict.fromkeys(job.mailboxes, exc)
        except CalbrokerError as exc:
            # Credentials that cannot be loaded or a provider-level refusal: every mailbox of the
            # connection reports it, instead of silently reading as free.
            failure = UpstreamUnavailable(exc.detail)
            return dict.fromkeys(job.mailboxes, failure)

    async def _fetch(self, job: _Batch, window: Interval, deadline: Deadline) -> dict[str, ScheduleResult]:
        started = datetime.now(UTC)
        provider = await self._upstream.provider(job.connection)
        found = {
            mailbox: MailboxSchedule(result.mailbox, result.busy, result.working_hours, result.source, started)
            if isinstance(result, MailboxSchedule)
            else result
            for mailbox, result in (await provider.fetch_schedules(job.mailboxes, window, deadline)).items()
        }
        missing = [m for m in job.mailboxes if m not in found]
        if missing:
            log.error("provider omitted mailboxes", connection_id=str(job.connection.id), count=len(missing))
            for mailbox in missing:
                found[mailbox] = UpstreamUnavailable("The upstream answer did not include this mailbox.")
        return found
