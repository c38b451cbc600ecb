"""Graph change feeds: one subscription per synced mailbox, kept alive, and the notifications it brings.

- A subscription is created with a lifecycle URL (it cannot be added later), renewed past half its
  life by PATCH (which also reauthorizes), and recreated when Graph says it is gone; every new one
  is followed by a round, so changes from before it existed are not lost
  (https://learn.microsoft.com/graph/change-notifications-lifecycle-events).
- Notifications only ever ask for a (debounced) round: the round reads the truth. Each item's
  clientState is checked against the stored digest in constant time; lifecycle events are acted on
  only when it matches: `reauthorizationRequired` renews, `subscriptionRemoved` recreates and
  resyncs, `missed` resyncs in full. An item that does not match gets a round and nothing else.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from calbroker.config import Settings
from calbroker.domain.connections import ConnectionStatus
from calbroker.domain.errors import (
    CalbrokerError,
    MailboxNotFound,
    MailboxOutOfScope,
    SubscriptionLimitReached,
)
from calbroker.domain.sync import FeedState
from calbroker.logs import get_logger
from calbroker.providers import Deadline, GraphProvider
from calbroker.providers.graph import Notification, read_notifications
from calbroker.services.sync.queue import JobName, MailboxJob, enqueue, request_round
from calbroker.services.upstream import Upstream
from calbroker.store.connections import find_connection
from calbroker.store.database import Connection as DbConnection
from calbroker.store.sync_state import (
    SyncRow,
    client_state_digest,
    find_by_subscription,
    get_sync_row,
    mark_lifecycle,
    set_feed,
)

__all__ = ["GraphFeeds", "NotificationsHandled", "hook_url"]

log = get_logger(__name__)

# Graph says the mailbox cannot have a subscription at all: stop trying until the scope changes.
_UNSUPPORTED = (SubscriptionLimitReached, MailboxOutOfScope, MailboxNotFound)


def hook_url(settings: Settings, connection_id: uuid.UUID) -> str:
    """Where Graph posts a connection's notifications and lifecycle events."""
    return f"{settings.receiver_url}/hooks/graph/{connection_id}"


@dataclass(frozen=True, slots=True)
class NotificationsHandled:
    """What one stored POST amounted to (for the log line and tests)."""

    rounds: int = 0
    lifecycle: int = 0
    unverified: int = 0
    unknown: int = 0


class GraphFeeds:
    """Subscriptions of Graph connections' synced mailboxes, and the notifications they deliver."""

    def __init__(self, pool: asyncpg.Pool, upstream: Upstream, settings: Settings) -> None:
        self._pool = pool
        self._upstream = upstream
        self._settings = settings

    async def maintain(self, sync_id: uuid.UUID) -> FeedState | None:
        """Create, renew or recreate one mailbox's subscription, and act on a waiting lifecycle event."""
        async with self._pool.acquire() as conn:
            row = await get_sync_row(conn, sync_id)
            connection = await find_connection(conn, row.connection_id) if row is not None else None
        if row is None or connection is None or connection.status is ConnectionStatus.REVOKED:
            return None
        deadline = Deadline.after(self._settings.upstream_deadline_s * 3)
        lifetime = self._settings.sync.graph_subscription_lifetime
        try:
            provider = await self._upstream.provider(connection)
            if not isinstance(provider, GraphProvider):
                return None
            changes = provider.changes
            if row.subscription_id is not None and row.feed in (FeedState.ACTIVE, FeedState.FAILED):
                if not self._due(row):
                    return row.feed
                renewed = await changes.renew(row.subscription_id, lifetime=lifetime, deadline=deadline)
                if renewed is not None:
                    async with self._pool.acquire() as conn, conn.transaction():
                        await set_feed(
                            conn, row.id, FeedState.ACTIVE, expires_at=renewed.expires_at, keep_identity=True
                        )
                        if row.lifecycle_pending_at is not None:
                            await mark_lifecycle(conn, row.connection_id, [row.subscription_id], pending=False)
                            await request_round(conn, row.id, notified=True)
                    return FeedState.ACTIVE
                log.info("sync.subscription_gone", sync_id=str(row.id), mailbox=row.mailbox)
            elif row.subscription_id is not None:
                await changes.unsubscribe(row.subscription_id, deadline)
            client_state = secrets.token_urlsafe(48)
            created = await changes.subscribe(
                row.mailbox,
                url=hook_url(self._settings, row.connection_id),
                client_state=client_state,
                lifetime=lifetime,
                deadline=deadline,
            )
        except _UNSUPPORTED as exc:
            await self._record(row, FeedState.UNSUPPORTED, exc)
            return FeedState.UNSUPPORTED
        except CalbrokerError as exc:
            await self._record(row, FeedState.FAILED, exc)
            return FeedState.FAILED
        async with self._pool.acquire() as conn, conn.transaction():
            await set_feed(
                conn,
                row.id,
                FeedState.ACTIVE,
                subscription_id=created.id,
                expires_at=created.expires_at,
                client_state_hash=client_state_digest(client_state),
            )
            # Changes made before the subscription existed reach the copy through this round.
            await request_round(conn, row.id, notified=True, full=row.subscription_id is not None)
        log.info("sync.subscribed", sync_id=str(row.id), mailbox=row.mailbox, expires_at=created.expires_at.isoformat())
        return FeedState.ACTIVE

    def _due(self, row: SyncRow) -> bool:
        if row.lifecycle_pending_at is not None or row.feed is FeedState.FAILED or row.subscription_expires_at is None:
            return True
        left = row.subscription_expires_at - datetime.now(UTC)
        return left < self._settings.sync.graph_subscription_lifetime / 2

    async def _record(self, row: SyncRow, state: FeedState, error: CalbrokerError) -> None:
        log.warning("sync.subscription_failed", sync_id=str(row.id), mailbox=row.mailbox, error=error.slug)
        async with self._pool.acquire() as conn:
            await set_feed(
                conn,
                row.id,
                state,
                expires_at=row.subscription_expires_at,
                error=f"{error.slug}: {error.detail}",
                keep_identity=True,
            )

    async def retire(self, row: SyncRow) -> None:
        """Delete a mailbox's subscription upstream before the mailbox stops being synced (best effort)."""
        if row.subscription_id is None:
            return
        async with self._pool.acquire() as conn:
            connection = await find_connection(conn, row.connection_id)
        if connection is None or connection.status is ConnectionStatus.REVOKED:
            return  # no credentials left: Graph lets it expire
        try:
            provider = await self._upstream.provider(connection)
            if isinstance(provider, GraphProvider):
                deadline = Deadline.after(self._settings.upstream_deadline_s)
                await provider.changes.unsubscribe(row.subscription_id, deadline)
        except CalbrokerError as exc:
            log.info("sync.unsubscribe_failed", sync_id=str(row.id), error=exc.slug)

    async def handle(self, connection_id: uuid.UUID, body: bytes) -> NotificationsHandled:
        """Act on one stored POST: rounds for change notifications, lifecycle events when verified."""
        items = read_notifications(body)
        if not items:
            return NotificationsHandled()
        async with self._pool.acquire() as conn:
            rows = await find_by_subscription(conn, connection_id, [i.subscription_id for i in items])
        by_subscription = {row.subscription_id: row for row in rows}
        counts: Counter[str] = Counter()
        changed: set[uuid.UUID] = set()
        lifecycle: list[tuple[SyncRow, str]] = []
        forged: list[SyncRow] = []
        for item in items:
            row = by_subscription.get(item.subscription_id)
            if row is None:
                counts["unknown"] += 1
                continue
            verified = _verified(item, row)
            if not verified:
                counts["unverified"] += 1
                log.warning("sync.notification_unverified", sync_id=str(row.id), mailbox=row.mailbox)
            if item.lifecycle_event is None or not verified:
                # A round only reads the truth, so it is safe whoever asked; it also settles the mark
                # the receiver put on the copy. Only a verified lifecycle event changes a subscription.
                changed.add(row.id)
                if item.lifecycle_event is not None:
                    forged.append(row)
            else:
                lifecycle.append((row, item.lifecycle_event))
        debounce = self._settings.sync.debounce
        async with self._pool.acquire() as conn, conn.transaction():
            for sync_id in sorted(changed):
                await request_round(conn, sync_id, notified=True, delay=debounce)
            for row in forged:
                assert row.subscription_id is not None
                await mark_lifecycle(conn, row.connection_id, [row.subscription_id], pending=False)
            for row, event in lifecycle:
                await self._lifecycle(conn, row, event)
        return NotificationsHandled(
            rounds=len(changed), lifecycle=len(lifecycle), unverified=counts["unverified"], unknown=counts["unknown"]
        )

    async def _lifecycle(self, conn: DbConnection, row: SyncRow, event: str) -> None:
        assert row.subscription_id is not None
        log.info("sync.lifecycle", sync_id=str(row.id), mailbox=row.mailbox, lifecycle_event=event)
        match event:
            case "reauthorizationRequired":
                await enqueue(conn, JobName.FEED, MailboxJob(row.id), dedupe_key=f"feed:{row.id}")
            case "subscriptionRemoved":
                await set_feed(conn, row.id, FeedState.NONE)
                await enqueue(conn, JobName.FEED, MailboxJob(row.id), dedupe_key=f"feed:{row.id}")
                await request_round(conn, row.id, notified=True, full=True)
            case "missed":
                await mark_lifecycle(conn, row.connection_id, [row.subscription_id], pending=False)
                await request_round(conn, row.id, notified=True, full=True)
            case _:
                log.info("sync.lifecycle_unknown", lifecycle_event=event)
                await mark_lifecycle(conn, row.connection_id, [row.subscription_id], pending=False)


def _verified(item: Notification, row: SyncRow) -> bool:
    """The item carries the clientState this subscription was created with (constant-time compare)."""
    if item.client_state is None or row.client_state_hash is None:
        return False
    return hmac.compare_digest(client_state_digest(item.client_state), row.client_state_hash)
