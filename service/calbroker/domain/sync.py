"""The synced copy of mailboxes' busy time: what one sync round brings back, and the one rule that
decides whether the copy may answer a request.

calbroker answers from its copy only when it can *prove* the copy is fresh from its own
bookkeeping (changes.md §6): a healthy change feed, no change signal newer than the last completed
round, a round within the maximum age, and the asked window inside the synced one. Anything else
is read live, and every answer says which it was (`Source`) and as of when.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from calbroker.domain.busy import BusyStatus
from calbroker.domain.intervals import Interval
from calbroker.domain.working_hours import WorkingHours

__all__ = [
    "CalendarItem",
    "ChangeSet",
    "FeedState",
    "ReadMode",
    "Source",
    "StaleReason",
    "SyncHealth",
    "SyncState",
    "stale_reason",
]


class Source(StrEnum):
    """Where one mailbox's answer came from."""

    CACHE = "cache"
    LIVE = "live"


class ReadMode(StrEnum):
    """What a request allows: the synced copy when it is provably fresh (`auto`), or only Microsoft."""

    AUTO = "auto"
    LIVE = "live"


class SyncState(StrEnum):
    PENDING = "pending"
    """Never synced yet."""
    ACTIVE = "active"
    FAILED = "failed"
    """The last round failed; `last_error` says why, and the copy is not used until a round succeeds."""
    UNSUPPORTED = "unsupported"
    """Upstream will not let this mailbox be synced (outside the access policy, subscription limit)."""


class FeedState(StrEnum):
    """How upstream tells calbroker that a mailbox changed."""

    NONE = "none"
    ACTIVE = "active"
    """A Graph subscription or an EWS streaming subscription, alive until `expires_at`."""
    POLLING = "polling"
    """No notifications (EWS streaming refused or off): a round every polling interval instead."""
    FAILED = "failed"
    UNSUPPORTED = "unsupported"


class StaleReason(StrEnum):
    """Why a mailbox was read live rather than from the copy (stable codes for logs and metrics)."""

    ASKED_LIVE = "asked_live"
    NOT_SYNCED = "not_synced"
    CONNECTION_UNHEALTHY = "connection_unhealthy"
    SYNC_FAILED = "sync_failed"
    NO_FEED = "no_feed"
    FEED_EXPIRED = "feed_expired"
    LIFECYCLE_PENDING = "lifecycle_pending"
    CHANGE_PENDING = "change_pending"
    TOO_OLD = "too_old"
    OUTSIDE_WINDOW = "outside_window"


@dataclass(frozen=True, slots=True)
class CalendarItem:
    """One item (single event, occurrence or exception) as the busy cache needs it; no subject.

    `status` FREE (also used for cancelled items) means "takes no time": a round that brings one
    removes the item from the copy.
    """

    upstream_id: str
    interval: Interval
    status: BusyStatus
    series_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChangeSet:
    """What one sync round read upstream, in the terms the cache is written in.

    A full set replaces the mailbox's whole copy; an incremental one upserts `items`, removes
    `removed` (item ids, or series ids for a series that is gone) and replaces every listed
    series by its re-read occurrences (recurring series are re-read whole, because upstream
    change feeds report occurrences thinly or not at all). `series_complete` says `series` holds
    every series of the window, so any other series in the copy is gone (EWS reports a deleted
    recurring master by its item id only).
    """

    cursor: str
    full: bool
    items: tuple[CalendarItem, ...] = ()
    removed: tuple[str, ...] = ()
    series: Mapping[str, tuple[CalendarItem, ...]] = field(default_factory=dict)
    series_complete: bool = False
    working_hours: WorkingHours | None = None

    @property
    def empty(self) -> bool:
        return not (self.full or self.items or self.removed or self.series or self.series_complete)


@dataclass(frozen=True, slots=True)
class SyncHealth:
    """A mailbox's sync bookkeeping, as the freshness rule reads it (database clock throughout)."""

    state: SyncState
    feed: FeedState
    feed_expires_at: datetime | None
    lifecycle_pending: bool
    window: Interval | None
    synced_at: datetime | None
    last_notified_at: datetime | None


def stale_reason(
    health: SyncHealth, wanted: Interval, *, now: datetime, max_age: timedelta, polling_age: timedelta
) -> StaleReason | None:
    """None when the copy provably reflects upstream for `wanted`; else the first reason it does not.

    Fresh means: the last round succeeded; a change feed is alive (a subscription not yet expired,
    or polling mode, where the age limit tightens to `polling_age`); no lifecycle event is waiting;
    no change signal arrived after the last round started; that round started within `max_age`;
    and `wanted` lies inside the synced window.
    """
    if health.state is SyncState.PENDING or health.synced_at is None or health.window is None:
        return StaleReason.NOT_SYNCED
    if health.state is not SyncState.ACTIVE:
        return StaleReason.SYNC_FAILED
    if health.feed not in (FeedState.ACTIVE, FeedState.POLLING):
        return StaleReason.NO_FEED
    if health.feed_expires_at is None or health.feed_expires_at <= now:
        return StaleReason.FEED_EXPIRED
    if health.lifecycle_pending:
        return StaleReason.LIFECYCLE_PENDING
    if health.last_notified_at is not None and health.last_notified_at > health.synced_at:
        return StaleReason.CHANGE_PENDING
    limit = min(max_age, polling_age) if health.feed is FeedState.POLLING else max_age
    if now - health.synced_at > limit:
        return StaleReason.TOO_OLD
    if wanted.start < health.window.start or wanted.end > health.window.end:
        return StaleReason.OUTSIDE_WINDOW
    return None
