"""Gauges that live in PostgreSQL, read when a metrics endpoint is scraped.

Connections by status, synced mailboxes and how old their copies are, the job queue's depth and
the webhook outbox's (undelivered, oldest age) describe the whole deployment, not one process:
every replica reports the same values (aggregate them with `max`, not `sum`). Reading them at
scrape costs four small queries per scrape and nothing in between.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from calbroker.domain.connections import ConnectionStatus
from calbroker.services.bundle import Services
from calbroker.store.connections import count_by_status
from calbroker.store.database import DATABASE_UNAVAILABLE
from calbroker.store.outbox import queue_stats
from calbroker.store.queue import queue_over
from calbroker.store.sync_state import sync_summary

__all__ = ["refresh_gauges"]

_SYNC_STATES = ("pending", "active", "failed", "unsupported")
_TIMEOUT_S = 2.0
_UNAVAILABLE: tuple[type[Exception], ...] = (TimeoutError, *DATABASE_UNAVAILABLE)


async def refresh_gauges(services: Services) -> None:
    """Set the database-backed gauges; with PostgreSQL away they keep their last values (the
    process's own counters still answer the scrape)."""
    metrics = services.metrics
    try:
        async with asyncio.timeout(_TIMEOUT_S), services.pool.acquire() as conn:
            statuses = await count_by_status(conn)
            states, stale, oldest = await sync_summary(conn, services.settings.sync.max_age)
            outbox = await queue_stats(conn, now=datetime.now(UTC))
        queued = await asyncio.wait_for(queue_over(services.pool).queue_size(), _TIMEOUT_S)
    except _UNAVAILABLE:
        return
    for status in ConnectionStatus:
        metrics.connections.labels(status.value).set(statuses.get(status.value, 0))
    for state in _SYNC_STATES:
        metrics.synced_mailboxes.labels(state).set(states.get(state, 0))
    metrics.stale_mailboxes.set(stale)
    metrics.oldest_round_age.set(oldest)
    metrics.channel_undelivered.set(outbox.undelivered)
    metrics.channel_oldest_undelivered.set(outbox.oldest_age.total_seconds())
    metrics.queue_jobs.clear()
    for row in queued:
        metrics.queue_jobs.labels(str(row.entrypoint), str(row.status)).inc(row.count)
