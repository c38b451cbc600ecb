"""Channels: what an application is told when a calendar or a connection it cares about changes, and
the rules a delivery follows (which channel takes a notice, when an attempt is retried, when a
receiver has gone for good).

Pure and clock-free: every rule takes the instant it is judged at, so the ~27-hour retry schedule
is tested by moving a number, never by waiting.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from calbroker.domain.errors import InvalidRequest, LimitExceeded

__all__ = [
    "MAX_CONNECTION_FILTERS",
    "MAX_MAILBOX_FILTERS",
    "Attempt",
    "ChannelFilter",
    "ChannelState",
    "Clock",
    "Notice",
    "NoticeType",
    "RetrySchedule",
    "Verdict",
    "judge_answer",
    "system_clock",
    "webhook_id",
]

MAX_MAILBOX_FILTERS = 100
"""Mailboxes one channel may name: more is a mailing list of channels, not a filter."""
MAX_CONNECTION_FILTERS = 50

Clock = Callable[[], datetime]
"""Now, as an aware UTC datetime: the system clock in production, a hand-moved one in tests."""


def system_clock() -> datetime:
    return datetime.now(UTC)


class NoticeType(StrEnum):
    """What a channel can be told (the `type` of a delivered payload)."""

    MAILBOX_CHANGED = "mailbox.changed"
    """A synced mailbox's calendar changed; re-read `GET /v1/events?mailbox=&changed_since=`."""
    EVENT_CHANGED = "event.changed"
    """An event the application booked was moved, re-timed, cancelled or otherwise edited in Outlook."""
    EVENT_DELETED = "event.deleted"
    """An event the application booked was deleted in Outlook."""
    CONNECTION_EXPIRING = "connection.expiring"
    """A connection's secret or certificate expires within 30 (then 7) days."""
    CONNECTION_DEGRADED = "connection.degraded"
    """A connection stopped working (its health check failed)."""
    CONNECTION_DISCONNECTED = "connection.disconnected"
    """Microsoft refuses the connection's credentials (consent revoked, secret expired): the tenant admin
    must reconnect, through the authorize link the payload carries."""
    CHANNEL_VERIFICATION = "channel.verification"
    """Sent once when the channel is created, so the receiver can be checked end to end."""


class ChannelState(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"
    """Nothing is attempted; `disabled_reason` says why (the receiver answered 410, or failed for days)."""


@dataclass(frozen=True, slots=True)
class ChannelFilter:
    """Which notices a channel takes: types (all when empty), mailboxes and connections (any when empty),
    and `only_managed` (mailbox changes only when they touch an event the application booked)."""

    types: frozenset[NoticeType] = frozenset()
    mailboxes: frozenset[str] = frozenset()
    connection_ids: frozenset[uuid.UUID] = frozenset()
    only_managed: bool = False

    def __post_init__(self) -> None:
        if len(self.mailboxes) > MAX_MAILBOX_FILTERS:
            raise LimitExceeded(
                field="mailboxes",
                limit=MAX_MAILBOX_FILTERS,
                actual=len(self.mailboxes),
                message=f"a channel may name at most {MAX_MAILBOX_FILTERS} mailboxes (got {len(self.mailboxes)})",
            )
        if len(self.connection_ids) > MAX_CONNECTION_FILTERS:
            raise LimitExceeded(
                field="connection_ids",
                limit=MAX_CONNECTION_FILTERS,
                actual=len(self.connection_ids),
                message=f"a channel may name at most {MAX_CONNECTION_FILTERS} connections "
                f"(got {len(self.connection_ids)})",
            )
        if self.only_managed and self.types and not self.types & _MANAGED_TYPES:
            raise InvalidRequest.field(
                "only_managed",
                "narrows mailbox.changed, event.changed and event.deleted; the types asked for include none of them",
            )

    @property
    def effective_types(self) -> frozenset[NoticeType]:
        return self.types or frozenset(NoticeType)

    def takes(self, notice: Notice) -> bool:
        """Whether a channel with this filter is told of `notice` (the store applies the same rule in SQL)."""
        if notice.type is NoticeType.CHANNEL_VERIFICATION:
            return True
        if notice.type not in self.effective_types:
            return False
        if self.connection_ids and notice.connection_id not in self.connection_ids:
            return False
        if notice.mailbox is not None and self.mailboxes and notice.mailbox not in self.mailboxes:
            return False
        return not (self.only_managed and notice.type is NoticeType.MAILBOX_CHANGED and not notice.managed)


_MANAGED_TYPES = frozenset({NoticeType.MAILBOX_CHANGED, NoticeType.EVENT_CHANGED, NoticeType.EVENT_DELETED})


@dataclass(frozen=True, slots=True)
class Notice:
    """Something to tell the application's channels, before it is fanned out to each one.

    `order_key` names the sequence deliveries keep (one mailbox, one connection): a delivery is
    attempted only once every earlier one of its key is finished. `coalesce_key`, when set, merges
    a notice into an undelivered one of the same key (mailbox.changed: its `changes_since` is the
    earlier one already). `sealed` holds data that is a secret at rest (an authorize link): it is
    stored encrypted and only ever leaves in the signed body.
    """

    type: NoticeType
    data: Mapping[str, object]
    order_key: str
    connection_id: uuid.UUID | None = None
    mailbox: str | None = None
    managed: bool = False
    coalesce_key: str | None = None
    sealed: Mapping[str, object] = field(default_factory=dict)


def webhook_id(message_id: uuid.UUID) -> str:
    """The `webhook-id` of a delivery: stable across its retries, replays and manual retries (no dots)."""
    return f"msg_{message_id.hex}"


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    """Failed: try again on the schedule (or after the receiver's Retry-After)."""
    GONE = "gone"
    """410: the receiver says the endpoint is gone for good; the channel is disabled."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one HTTP attempt went, as the delivery log keeps it."""

    started_at: datetime
    latency: timedelta
    status: int | None = None
    """The HTTP status, None when no answer came (timeout, refused, TLS, address policy)."""
    error: str | None = None
    """The class of failure: timeout, connection, tls, address_policy, redirect, http_status."""
    retry_after: timedelta | None = None
    excerpt: str = ""
    """The first KB of the answer's body."""

    @property
    def verdict(self) -> Verdict:
        return judge_answer(self.status)


def judge_answer(status: int | None) -> Verdict:
    """2xx delivered, 410 gone, anything else (3xx included: redirects are never followed) a failure to
    retry — the Standard Webhooks rules (https://www.standardwebhooks.com, "Delivery behaviour")."""
    if status is not None and 200 <= status < 300:
        return Verdict.DELIVERED
    if status == 410:
        return Verdict.GONE
    return Verdict.RETRY


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """When the next attempt of a delivery falls due, or None once the schedule is spent."""

    delays: Sequence[timedelta]
    """The wait before each attempt; `delays[0]` (the first attempt) is 0."""
    jitter: float = 0.1
    max_retry_after: timedelta = timedelta(hours=10)

    @property
    def span(self) -> timedelta:
        """How long a delivery keeps being tried, without jitter."""
        return sum(self.delays, timedelta(0))

    def next_attempt(
        self,
        attempts: int,
        failed_at: datetime,
        *,
        retry_after: timedelta | None = None,
        rng: random.Random | None = None,
    ) -> datetime | None:
        """After `attempts` failed attempts (counted within this schedule), when to try again.

        The receiver's `Retry-After` (429/503) wins over a shorter scheduled wait, capped so a receiver
        cannot park a delivery for days; jitter spreads the retries of many deliveries that failed
        together (an outage) so the receiver is not hit by all of them at once when it comes back.
        """
        if attempts >= len(self.delays):
            return None
        wait = self.delays[attempts]
        spread = (rng or _RNG).uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        wait = wait * (1 + spread)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return failed_at + wait


_RNG = random.Random()  # noqa: S311 - jitter, not a secret
