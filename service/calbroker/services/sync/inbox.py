"""What the notification receiver does with a POST: store it for the worker, and mark what it names.

The receiver must answer Graph within 3 seconds (slower endpoints get their notifications delayed,
then dropped: https://learn.microsoft.com/graph/change-notifications-delivery-webhooks), so it
makes no upstream call and verifies nothing: one transaction marks the named subscriptions'
copies stale (a change or lifecycle event is waiting) and queues the body for the worker, which
checks each clientState before acting. Marking from unverified input can only make calbroker read
live, never trust more.
"""

from __future__ import annotations

import uuid

import asyncpg

from calbroker.providers.graph import read_notifications
from calbroker.services.sync.queue import JobName, NotificationsJob, enqueue
from calbroker.store.sync_state import mark_lifecycle, mark_notified

__all__ = ["store_graph_notifications"]


async def store_graph_notifications(pool: asyncpg.Pool, connection_id: uuid.UUID, body: bytes) -> int:
    """Queue one notification POST for the worker; returns how many items it named (0: nothing kept)."""
    items = read_notifications(body)
    if not items:
        return 0
    changed = [item.subscription_id for item in items if item.lifecycle_event is None]
    lifecycle = [item.subscription_id for item in items if item.lifecycle_event is not None]
    async with pool.acquire() as conn, conn.transaction():
        if changed:
            await mark_notified(conn, connection_id, changed)
        if lifecycle:
            await mark_lifecycle(conn, connection_id, lifecycle, pending=True)
        await enqueue(conn, JobName.NOTIFICATIONS, NotificationsJob(connection_id, body))
    return len(items)
