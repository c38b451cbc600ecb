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
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from calbroker.config import Settings
from calbroker.domain.channels import Clock, RetrySchedule, Verdict
from calbroker.logs import get_logger
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
    queue_stats,
    take_run,
)

__all__ = ["Deliveries", "DeliveryMetrics", "RunSummary"]

log = get_logger(__name__)

_BATCH = 64
_LEASE_MARGIN = timedelta(seconds=30)
_MAX_BATCHES_PER_RUN = 1000


class DeliveryMetrics:
    """Deliveries by outcome and attempt latency (counted by the worker that attempts them), and the
    queue's depth and the age of its oldest undelivered delivery (read from the database, so every
    replica and the API report the same), on the process's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.attempts = Counter(
            "calbroker_channel_attempts",
            "Webhook delivery attempts, by outcome (delivered, retry, failed, gone).",
            ["outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "calbroker_channel_attempt_duration_seconds",
            "Time from sending a webhook to its answer (or its failure), by outcome.",
            ["outcome"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
            registry=self.registry,
        )
        self.undelivered = Gauge(
            "calbroker_channel_undelivered",
            "Deliveries of active channels not delivered yet (waiting or being attempted).",
            registry=self.registry,
        )
        self.oldest_age = Gauge(
            "calbroker_channel_oldest_undelivered_seconds",
            "How long the oldest undelivered delivery of an active channel has waited.",
            registry=self.registry,
        )

    async def refresh(self, pool: asyncpg.Pool, now: datetime) -> None:
        """Read the queue's depth and oldest age from the database (every replica sees the same)."""
        async with pool.acquire() as conn:
            stats = await queue_stats(conn, now=now)
        self.undelivered.set(stats.undelivered)
        self.oldest_age.set(stats.oldest_age.total_seconds())


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
        registry: CollectorRegistry,
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
        self.metrics = DeliveryMetrics(registry)

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
        self.metrics.attempts.labels(outcome).inc()
        self.metrics.latency.labels(outcome).observe(answer.latency.total_seconds())
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
