"""Working the outbox: claim due deliveries, send each once, record how it went, schedule what failed.

At least once: a delivery is leased before its attempt and finished after it, in separate
transactions, so a worker killed in between leaves a lease that lapses and another worker attempts
it again (same `webhook-id`). Never twice at once: the lease outlives the attempt's timeout, only the
oldest unfinished delivery of a mailbox is claimable, and an attempt whose lease was taken over
records itself without moving the delivery. Every decision about time takes `now` from the caller
(the worker's clock), so a day of retries runs in milliseconds in tests.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from calbroker.config import Settings
from calbroker.domain.channels import Clock, RetrySchedule, Verdict
from calbroker.logs import get_logger
from calbroker.metrics import Metrics
from calbroker.services.callbacks import AppCallbacks
from calbroker.services.channels.flavours import FLAVOURS
from calbroker.services.channels.notices import queue_runs
from calbroker.store.channels import signing_secrets
from calbroker.store.keyring import Keyring
from calbroker.store.outbox import (
    Claimed,
    MessageState,
    claim_due,
    due_channels,
    finish_attempt,
    open_sealed,
    prune_outbox,
    take_run,
)

__all__ = ["Deliveries", "RunSummary"]

log = get_logger(__name__)

_BATCH = 64
_LEASE_MARGIN = timedelta(seconds=30)
_MAX_BATCHES_PER_RUN = 1000


@dataclass(frozen=True, slots=True)
class RunSummary:
    attempts: int = 0
    delivered: int = 0


class Deliveries:
    """Sends due deliveries over the process's callback session, recording every attempt."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        keyring: Keyring,
        settings: Settings,
        callbacks: AppCallbacks,
        metrics: Metrics,
    ) -> None:
        self._pool = pool
        self._keyring = keyring
        self._settings = settings.channels
        self._callbacks = callbacks
        self._schedule = RetrySchedule(
            self._settings.schedule, jitter=self._settings.jitter, max_retry_after=self._settings.max_retry_after
        )
        self._lease = self._settings.timeout + _LEASE_MARGIN
        self._limit = asyncio.Semaphore(_BATCH)
        self._metrics = metrics

    @property
    def schedule(self) -> RetrySchedule:
        return self._schedule

    async def run(self, channel_id: uuid.UUID, clock: Clock) -> RunSummary:
        """A delivery job: everything of one channel that is due, until nothing is."""
        async with self._pool.acquire() as conn:
            await take_run(conn, channel_id)
        total = RunSummary()
        for _ in range(_MAX_BATCHES_PER_RUN):
            done = await self.send_due(now=clock(), channel_id=channel_id)
            if not done.attempts:
                break
            total = RunSummary(total.attempts + done.attempts, total.delivered + done.delivered)
        return total

    async def send_due(self, *, now: datetime, channel_id: uuid.UUID | None = None, limit: int = _BATCH) -> RunSummary:
        """One batch: claim what is due at `now` (of one channel, or of all), attempt each, record each."""
        async with self._pool.acquire() as conn:
            lease_id, claimed = await claim_due(conn, now=now, lease=self._lease, limit=limit, channel_id=channel_id)
            if not claimed:
                return RunSummary()
            secrets = await signing_secrets(conn, self._keyring, sorted({c.message.channel_id for c in claimed}), now)
            sealed: dict[uuid.UUID, dict[str, Any]] = {}
            for c in claimed:
                if c.message.sealed_id is not None and c.message.sealed_id not in sealed:
                    sealed[c.message.sealed_id] = await open_sealed(conn, self._keyring, c.message.sealed_id)

        async def attempt(item: Claimed) -> bool:
            async with self._limit:
                return await self._attempt(item, lease_id, now, secrets, sealed)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(attempt(item)) for item in claimed]
        return RunSummary(len(claimed), sum(task.result() for task in tasks))

    async def _attempt(
        self,
        item: Claimed,
        lease_id: uuid.UUID,
        now: datetime,
        secrets: Mapping[uuid.UUID, list[str]],
        sealed: Mapping[uuid.UUID, dict[str, Any]],
    ) -> bool:
        message = item.message
        flavour = FLAVOURS[item.flavour]
        # The signature's timestamp is the wall clock: receivers judge it against theirs (5 minutes'
        # tolerance in the standardwebhooks package), whatever clock schedules the attempts.
        outgoing = flavour.render(
            message,
            sealed.get(message.sealed_id, {}) if message.sealed_id else {},
            secrets.get(message.channel_id, []),
            datetime.now(UTC),
        )
        answer = await self._callbacks.deliver(
            item.callback_url, outgoing.body, outgoing.headers, within=self._settings.timeout, started_at=now
        )
        verdict = answer.verdict
        next_at = None
        if verdict is Verdict.RETRY and message.scheduled + 1 < message.allowed:
            next_at = self._schedule.next_attempt(message.scheduled + 1, now, retry_after=answer.retry_after)
        async with self._pool.acquire() as conn, conn.transaction():
            finished = await finish_attempt(
                conn,
                message,
                lease_id,
                answer,
                next_attempt_at=next_at,
                now=now,
                disable_after=self._settings.disable_after,
            )
        outcome = (
            verdict.value
            if verdict is not Verdict.RETRY
            else ("retry" if finished.state is MessageState.PENDING else "failed")
        )
        self._metrics.channel_attempts.labels(outcome).inc()
        self._metrics.channel_attempt_latency.labels(outcome).observe(answer.latency.total_seconds())
        if verdict is not Verdict.DELIVERED:
            log.info(
                "channel.attempt_failed",
                channel_id=str(message.channel_id),
                delivery=str(message.id),
                attempt=message.attempts,
                status=answer.status,
                error=answer.error,
                next_attempt_at=next_at.isoformat() if next_at else None,
            )
        if finished.disabled is not None:
            log.warning("channel.disabled", channel_id=str(message.channel_id), reason=finished.disabled)
        return verdict is Verdict.DELIVERED and finished.state is MessageState.DELIVERED

    async def queue_due(self, *, now: datetime) -> int:
        """Queue a run for every channel with a delivery due at `now` (retries fall due between notices)."""
        async with self._pool.acquire() as conn, conn.transaction():
            channels = await due_channels(conn, now=now)
            await queue_runs(conn, channels)
        return len(channels)

    async def prune(self, *, now: datetime) -> int:
        """Forget deliveries finished longer ago than the retention."""
        async with self._pool.acquire() as conn, conn.transaction():
            return await prune_outbox(conn, before=now - self._settings.retention)
