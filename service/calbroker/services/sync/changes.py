"""Reading a synced mailbox's change feed since an instant, for the native and the Cronofy surfaces.

The feed can answer only for a synced mailbox, from when its syncing began and for `CHANGES_KEPT`
back, and only up to `MAX_FEED_ROUNDS` rounds at once; both surfaces refuse the same instants for
the same reasons, each naming its own field and remedy.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from calbroker.domain.errors import InvalidRequest, LimitExceeded
from calbroker.services.sync.maintenance import CHANGES_KEPT
from calbroker.store.busy_cache import MailboxChanges, mailbox_changes

__all__ = ["MAX_FEED_ROUNDS", "read_changes"]

MAX_FEED_ROUNDS = 2000
"""Rounds one read may span; more is a calendar view's job, not a change feed's."""


async def read_changes(
    pool: asyncpg.Pool,
    application_id: uuid.UUID,
    mailbox: str,
    since: datetime,
    *,
    field: str,
    unsynced_field: str,
    to_sync: str,
    instead: str,
    whole_seconds: bool = False,
) -> MailboxChanges:
    """What changed in `mailbox` since `since`, or a 422 saying why the feed cannot answer: on
    `unsynced_field` for a mailbox that is not synced (`to_sync` says how to get it synced), else on
    `field` (`instead` says what to read in place of the feed).
    `whole_seconds`: the surface writes instants without fractions, so the second syncing began counts."""
    async with pool.acquire() as conn:
        found = await mailbox_changes(conn, application_id, mailbox, since, limit=MAX_FEED_ROUNDS + 1)
    if found is None:
        message = f"{mailbox} is not synced, so its changes are not recorded: {to_sync}"
        raise InvalidRequest.field(unsynced_field, message)
    oldest = max(found.tracked_since, found.as_of - CHANGES_KEPT)
    if whole_seconds:
        oldest = oldest.replace(microsecond=0)
    if since < oldest:
        raise InvalidRequest.field(
            field,
            f"changes of {mailbox} are known from {oldest:%Y-%m-%dT%H:%M:%SZ} (when syncing began, or "
            f"{CHANGES_KEPT.days} days back): give a later instant, or {instead}",
        )
    if len(found.changes) > MAX_FEED_ROUNDS:
        raise LimitExceeded(
            field=field,
            limit=MAX_FEED_ROUNDS,
            actual=len(found.changes),
            message=f"too many changes since that instant: {instead}",
        )
    return found
