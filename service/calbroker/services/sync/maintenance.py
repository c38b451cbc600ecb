"""The sync worker's periodic duties, each safe to run on any replica at any time.

- Reconciliation: every mailbox gets a round at least every `reconcile_every` and a full one every
  `full_every`, whatever notifications did; a receiver outage (Graph gives up on undeliverable
  notifications after 4 hours and drops them earlier for slow endpoints:
  https://learn.microsoft.com/graph/change-notifications-delivery-webhooks) means every mailbox
  resyncs at once. A round asked for but never queued (a crash between the two) is queued again.
- Feeds: subscriptions to create or renew are queued.
- Scopes: every scope is re-applied (a directory that grew, an allow-list that changed).
- The change feed is pruned after a week.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from calbroker.config import Settings
from calbroker.logs import get_logger
from calbroker.services.sync.queue import ConnectionJob, JobName, MailboxJob, enqueue, request_round
from calbroker.store.sync_state import (
    beat_receiver,
    due_rounds,
    feeds_due,
    list_scopes,
    request_full_everywhere,
    take_outage,
)

__all__ = ["CHANGES_KEPT", "Reconciled", "beat", "reapply_scopes", "reconcile"]

log = get_logger(__name__)

_BATCH = 1000
CHANGES_KEPT = timedelta(days=7)
"""How long the change feed (`GET /v1/events?changed_since=`) reaches back."""
RECEIVER_OUTAGE = timedelta(minutes=5)
"""A receiver silent this long may have missed notifications Graph has since given up on."""


@dataclass(frozen=True, slots=True)
class Reconciled:
    rounds: int = 0
    feeds: int = 0
    outage: bool = False


async def reconcile(pool: asyncpg.Pool, settings: Settings, *, lead: timedelta = timedelta(0)) -> Reconciled:
    """Queue every round and feed renewal that is due (one replica per tick runs this); a mailbox's
    round falls due `lead` before its reconciliation period is up, so it can finish inside it."""
    sync = settings.sync
    async with pool.acquire() as conn:
        outage = await take_outage(conn)
        if outage is not None:
            count = await request_full_everywhere(conn)
            log.warning(
                "sync.receiver_outage", since=outage[0].isoformat(), until=outage[1].isoformat(), mailboxes=count
            )
        every = max(sync.reconcile_every - lead, sync.reconcile_every / 2)
        due = await due_rounds(conn, every=every, full_every=sync.full_every, limit=_BATCH)
        async with conn.transaction():
            for row in due:
                await request_round(conn, row.id, full=row.full_requested_at is not None)
        feeds = await feeds_due(conn, renew_before=sync.graph_subscription_lifetime / 2, limit=_BATCH)
        async with conn.transaction():
            for row in feeds:
                await enqueue(conn, JobName.FEED, MailboxJob(row.id), dedupe_key=f"feed:{row.id}")
        await conn.execute("DELETE FROM sync_changes WHERE seen_at < now() - $1::interval", CHANGES_KEPT)
    if due or feeds:
        log.info("sync.reconcile", rounds=len(due), feeds=len(feeds))
    return Reconciled(rounds=len(due), feeds=len(feeds), outage=outage is not None)


async def reapply_scopes(pool: asyncpg.Pool) -> int:
    """Queue a re-application of every connection's scope."""
    async with pool.acquire() as conn, conn.transaction():
        scopes = await list_scopes(conn)
        for scope in scopes:
            await enqueue(
                conn, JobName.SCOPE, ConnectionJob(scope.connection_id), dedupe_key=f"scope:{scope.connection_id}"
            )
    return len(scopes)


async def beat(pool: asyncpg.Pool) -> bool:
    """The receiver (the API) is up; True when this beat ends an outage (the worker will resync all)."""
    async with pool.acquire() as conn:
        return await beat_receiver(conn, outage_after=RECEIVER_OUTAGE)
