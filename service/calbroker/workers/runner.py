"""`calbroker worker`: the sync jobs and the webhook deliveries (pgqueuer on the same PostgreSQL), the
periodic ticks, the EWS streaming groups and the connection health checks, for as many replicas as
you like.

Replica safety comes from PostgreSQL: pgqueuer claims jobs with `SKIP LOCKED` and re-queues a job
whose worker stopped beating; a round holds its mailbox's advisory lock; a tick runs on the one
replica that moves its row forward. `Worker.run()` runs until `stop()` (then it stops taking
jobs, gives running ones `grace` to finish and cancels the rest); `Worker.drain()` is burst mode:
it ticks once, works until the queue is empty, and returns what it did. Deliveries judge due-ness
by the worker's `clock` (the system clock, or a simulated one in tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from pgqueuer import Job, QueueManager, RetryRequested
from pgqueuer.domain.types import QueueExecutionMode

from calbroker.domain.channels import Clock, system_clock
from calbroker.logs import get_logger
from calbroker.metrics import outcome_of
from calbroker.services import Services
from calbroker.services.channels import DELIVER_JOB, decode_channel_job
from calbroker.services.sync import (
    ConnectionJob,
    JobName,
    MailboxJob,
    NotificationsJob,
    RoundBusy,
    decode_job,
    reapply_scopes,
    reconcile,
)
from calbroker.store.queue import queue_over
from calbroker.store.sync_state import claim_tick
from calbroker.workers import jobs
from calbroker.workers.health import health_checker

__all__ = ["Worker", "WorkerSummary"]

log = get_logger(__name__)

P = TypeVar("P", MailboxJob, ConnectionJob, NotificationsJob)

_BUSY_RETRY = timedelta(seconds=2)
_TICK_EVERY = timedelta(seconds=5)
_RECONCILE_EVERY = timedelta(minutes=1)
_SCOPES_EVERY = timedelta(minutes=30)
_PRUNE_EVERY = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class WorkerSummary:
    """What a worker did (the log line at shutdown, and what burst mode returns)."""

    jobs: dict[str, int]
    rounds: int
    round_failures: int
    deliveries: int = 0
    """Webhook attempts made."""


class Worker:
    """The job loop and the ticks of one process, over its `Services`."""

    def __init__(
        self,
        services: Services,
        *,
        concurrency: int = 16,
        heartbeat_timeout: timedelta = timedelta(seconds=30),
        grace: timedelta = timedelta(seconds=20),
        streams_refresh: timedelta = timedelta(seconds=30),
        clock: Clock = system_clock,
    ) -> None:
        self._services = services
        self._clock = clock
        self._streams_refresh = streams_refresh
        self._concurrency = max(2, concurrency)
        self._heartbeat_timeout = heartbeat_timeout
        self._grace = grace
        self._queue = QueueManager(queue_over(services.pool))
        self._done: Counter[str] = Counter()
        self._rounds = 0
        self._round_failures = 0
        self._attempts = 0
        self._stopping = asyncio.Event()
        self._bind(JobName.ROUND, MailboxJob, self._round)
        self._bind(JobName.FEED, MailboxJob, lambda job: jobs.maintain_feed(services, job))
        self._bind(JobName.NOTIFICATIONS, NotificationsJob, lambda job: jobs.handle_notifications(services, job))
        self._bind(JobName.SCOPE, ConnectionJob, lambda job: jobs.apply_scope(services, job))
        self._queue.entrypoint(DELIVER_JOB, accepts_context=False)(self._deliver)

    def _bind(self, name: JobName, kind: type[P], run: Callable[[P], Awaitable[object]]) -> None:
        async def entrypoint(job: Job) -> None:
            await run(decode_job(job.payload, kind))
            self._done[name.value] += 1

        self._queue.entrypoint(name.value, accepts_context=False)(entrypoint)

    async def _deliver(self, job: Job) -> None:
        done = await jobs.deliver(self._services, decode_channel_job(job.payload), self._clock)
        self._attempts += done.attempts
        self._done[DELIVER_JOB] += 1

    async def _round(self, job: MailboxJob) -> None:
        metrics = self._services.metrics
        started = time.perf_counter()
        try:
            outcome = await jobs.sync_round(self._services, job)
        except RoundBusy:
            raise RetryRequested(delay=_BUSY_RETRY, reason="another replica is syncing this mailbox") from None
        if outcome is not None:
            self._rounds += 1
            self._round_failures += outcome.error is not None
            kind = "full" if outcome.full else "incremental"
            metrics.sync_rounds.labels(kind, outcome_of(outcome.error)).inc()
            metrics.sync_round_latency.observe(time.perf_counter() - started)

    @property
    def summary(self) -> WorkerSummary:
        return WorkerSummary(dict(self._done), self._rounds, self._round_failures, self._attempts)

    def stop(self) -> None:
        """Stop taking jobs; `run()` then finishes what is running (up to `grace`) and returns."""
        self._stopping.set()
        self._queue.shutdown.set()

    async def drain(self) -> WorkerSummary:
        """Burst mode: one tick, then every job (due now or soon) until the queue is empty (repeatable)."""
        self._queue.shutdown.clear()
        await self.tick(force=True)
        await self._queue.run(
            dequeue_timeout=timedelta(seconds=1),
            batch_size=max(1, self._concurrency // 2),
            mode=QueueExecutionMode.drain,
            max_concurrent_tasks=self._concurrency,
            heartbeat_timeout=self._heartbeat_timeout,
            log_aggregation_interval=timedelta(0),
        )
        return self.summary

    async def run(self) -> WorkerSummary:
        """Work until `stop()`: jobs, ticks every few seconds, and connection health checks."""
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(health_checker(self._services))
            ticker = asyncio.create_task(self._tick_forever(), name="calbroker-worker-ticks")
            stack.push_async_callback(_cancel, ticker)
            streams = asyncio.create_task(
                self._services.sync.streams.run(self._stopping, refresh=self._streams_refresh),
                name="calbroker-worker-ews-streams",
            )
            stack.push_async_callback(_finish, streams, self._grace)
            queue = asyncio.create_task(
                self._queue.run(
                    batch_size=max(1, self._concurrency // 2),
                    max_concurrent_tasks=self._concurrency,
                    heartbeat_timeout=self._heartbeat_timeout,
                ),
                name="calbroker-worker-queue",
            )
            await self._stopping.wait()
            try:
                await asyncio.wait_for(asyncio.shield(queue), self._grace.total_seconds())
            except TimeoutError:
                log.warning("worker.grace_exceeded", grace_s=self._grace.total_seconds())
                await _cancel(queue)
        summary = self.summary
        log.info(
            "worker.stopped",
            jobs=summary.jobs,
            rounds=summary.rounds,
            round_failures=summary.round_failures,
            deliveries=summary.deliveries,
        )
        return summary

    async def tick(self, *, force: bool = False) -> None:
        """The periodic duties that are due (all of them when `force`), each on one replica only."""
        pool, settings = self._services.pool, self._services.settings
        every = max(_TICK_EVERY, min(_RECONCILE_EVERY, settings.sync.reconcile_every / 10))
        async with pool.acquire() as conn:
            run_reconcile = force or await claim_tick(conn, "sync.reconcile", every)
            run_scopes = force or await claim_tick(conn, "sync.scopes", _SCOPES_EVERY)
            run_deliveries = force or await claim_tick(conn, "channels.due", _TICK_EVERY)
            run_prune = force or await claim_tick(conn, "channels.prune", _PRUNE_EVERY)
        deliveries = self._services.channels.deliveries
        if run_deliveries:
            # Retries fall due between notices: queue a run for every channel with one due now.
            await deliveries.queue_due(now=self._clock())
        if run_prune:
            await deliveries.prune(now=self._clock())
        if run_scopes:
            await reapply_scopes(pool)
        if run_reconcile:
            # Rounds fall due two ticks early: one for the tick that notices late, one for the queue
            # and the round itself, so an edit no notification told of still shows up within the
            # reconciliation period (10 minutes: a round every 8 to 9).
            await reconcile(pool, settings, lead=2 * every)

    async def _tick_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except (TimeoutError, OSError) as exc:
                log.warning("worker.tick_failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), _TICK_EVERY.total_seconds())


async def _finish(task: asyncio.Task[None], grace: timedelta) -> None:
    """Let a task that watches the stop flag end by itself, within `grace`."""
    try:
        await asyncio.wait_for(task, grace.total_seconds())
    except TimeoutError:
        log.warning("worker.task_grace_exceeded", task=task.get_name())


async def _cancel(task: asyncio.Task[object]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
