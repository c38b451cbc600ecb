"""The worker's jobs: plain functions of the process's `Services` and a typed payload.

Each is what one queued job does; `Worker` decodes payloads and binds them to the queue. The
work itself lives in `services.sync`, shared with the API.
"""

from __future__ import annotations

from calbroker.domain.channels import Clock
from calbroker.services import Services
from calbroker.services.channels import ChannelJob, RunSummary
from calbroker.services.sync import (
    ConnectionJob,
    MailboxJob,
    NotificationsHandled,
    NotificationsJob,
    RoundOutcome,
)

__all__ = ["apply_scope", "deliver", "handle_notifications", "maintain_feed", "sync_round"]


async def sync_round(services: Services, job: MailboxJob) -> RoundOutcome | None:
    """One round of one mailbox (raises `RoundBusy` when another replica holds it)."""
    return await services.sync.rounds.run(job.sync_id)


async def maintain_feed(services: Services, job: MailboxJob) -> None:
    """Create, renew or recreate one mailbox's subscription."""
    await services.sync.feeds.maintain(job.sync_id)


async def handle_notifications(services: Services, job: NotificationsJob) -> NotificationsHandled:
    """One POST the receiver stored: verify it and ask for the rounds it calls for."""
    return await services.sync.feeds.handle(job.connection_id, job.body)


async def apply_scope(services: Services, job: ConnectionJob) -> None:
    """Bring a connection's synced mailboxes in line with its scope."""
    await services.sync.scopes.apply(job.connection_id)


async def deliver(services: Services, job: ChannelJob, clock: Clock) -> RunSummary:
    """Send one channel's due webhooks, in order per mailbox, until none is due."""
    return await services.channels.deliveries.run(job.channel_id, clock)
