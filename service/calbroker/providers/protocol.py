"""The port every upstream adapter implements, the deadline that bounds a request's upstream time, and
the rules every adapter's free/busy answer follows (one answer per mailbox, never a silent "free")."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from calbroker.domain.connections import Connection
from calbroker.domain.errors import (
    CalbrokerError,
    ConnectionClosed,
    MailboxError,
    UpstreamError,
    UpstreamRejected,
    UpstreamThrottled,
    UpstreamTimeout,
)
from calbroker.domain.events import EventSpec, OnlineMeeting, UpstreamEvent
from calbroker.domain.intervals import Interval
from calbroker.domain.schedules import MailboxSchedule, Room, ScheduleResult
from calbroker.domain.sync import ChangeSet

__all__ = [
    "WRITE_SETTLE_S",
    "CalendarProvider",
    "ChangeFeed",
    "Deadline",
    "connection_closed",
    "for_mailbox",
    "merge_schedules",
]

WRITE_SETTLE_S = 2.0
"""Longest an event write may outlast its deadline while its last upstream request winds down.

A write method returns or raises only once its upstream request has ended, never while it may
still reach Microsoft; a reservation held for the write must therefore outlive the deadline by
more than this."""


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute point on the monotonic clock; retries and back-off must finish before it."""

    at: float = field(default_factory=lambda: time.monotonic() + 10.0)

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def allows(self, wait_s: float) -> bool:
        """Whether waiting `wait_s` (e.g. a Retry-After) still leaves time for another attempt."""
        return wait_s < self.remaining()

    def check(self, what: str) -> None:
        if self.expired():
            raise UpstreamTimeout(f"{what} did not complete within the request deadline")


class CalendarProvider(Protocol):
    """One connection's view of its tenant's mailboxes, whatever protocol sits behind it."""

    @property
    def connection(self) -> Connection: ...

    async def fetch_schedules(
        self, mailboxes: Sequence[str], window: Interval, deadline: Deadline
    ) -> dict[str, ScheduleResult]:
        """Busy blocks and working hours for every mailbox, in as few upstream calls as the limits allow.

        Every requested mailbox gets an entry: a schedule, or the per-mailbox error (not found,
        out of scope, impersonation denied, throttled, timeout). One bad mailbox never fails the rest.
        """
        ...

    async def verify(self, test_mailbox: str, deadline: Deadline) -> None:
        """Prove the credentials work for `test_mailbox`, or raise the specific error that says why not."""
        ...

    async def list_rooms(self, deadline: Deadline) -> list[Room]:
        """Room and resource mailboxes of the tenant."""
        ...

    # --- events (design §5) ------------------------------------------------------------------------

    async def create_event(
        self, spec: EventSpec, *, marker: str, may_exist: bool, join_url: str | None, deadline: Deadline
    ) -> UpstreamEvent:
        """Create `spec` in the organizer's calendar and send the invitations, at most once per `marker`.

        Like every write here, it returns or raises only when its upstream request has ended
        (within `WRITE_SETTLE_S` of the deadline), so a failure means nothing is still on its way.

        A repeated call with the same marker returns the event the first one created (Graph by
        `transactionId`; EWS looks for its marker property first when `may_exist`, i.e. when an
        earlier attempt may have reached Exchange). `join_url` is a Teams link made elsewhere to
        put into the invitation (hybrid tenants); Graph makes its own when `spec.teams_meeting`.
        """
        ...

    async def update_event(
        self,
        spec: EventSpec,
        upstream_id: str,
        changed: frozenset[str],
        *,
        join_url: str | None,
        deadline: Deadline,
    ) -> UpstreamEvent:
        """Write the `changed` fields (names of `EventSpec` fields) and send updates to attendees."""
        ...

    async def cancel_event(self, organizer: str, upstream_id: str, *, notify: bool, deadline: Deadline) -> None:
        """Remove the event; with `notify`, attendees get a cancellation. An event already gone is fine."""
        ...

    async def get_event(self, organizer: str, upstream_id: str, deadline: Deadline) -> UpstreamEvent | None:
        """The organizer's copy of an event, or None when it no longer exists."""
        ...

    async def find_event(self, organizer: str, marker: str, deadline: Deadline) -> UpstreamEvent | None:
        """The event calbroker created with `marker` in the organizer's calendar, if any."""
        ...

    async def list_events(self, mailbox: str, window: Interval, deadline: Deadline) -> list[UpstreamEvent]:
        """The calendar view: events and occurrences overlapping `window`, sorted by start."""
        ...

    async def create_online_meeting(
        self, organizer: str, *, subject: str, interval: Interval, external_id: str, deadline: Deadline
    ) -> OnlineMeeting:
        """A Teams meeting without a calendar event, once per `external_id` (for hybrid tenants)."""
        ...

    async def delete_online_meeting(self, organizer: str, meeting_id: str, deadline: Deadline) -> None:
        """End a Teams meeting made by `create_online_meeting`; one already gone is fine."""
        ...

    async def aclose(self) -> None:
        """Release sessions and threads; the provider refuses use afterwards."""
        ...


class ChangeFeed(Protocol):
    """How the sync worker reads a mailbox's calendar a round at a time, whatever the protocol."""

    async def read_changes(self, mailbox: str, window: Interval, cursor: str | None, deadline: Deadline) -> ChangeSet:
        """Everything in `window` when `cursor` is None (a full round), else what changed since `cursor`.

        The returned set carries the next cursor; `SyncStateExpired` means upstream forgot `cursor`
        and only a full round will do.
        """
        ...


def connection_closed(connection_id: object) -> ConnectionClosed:
    """What a closed provider answers: a request raced a revocation or a credential change, so it is
    a retryable 503, not a 500."""
    return ConnectionClosed(
        f"The connection {connection_id} was revoked or its credentials replaced while this request ran; retry it."
    )


def for_mailbox(error: CalbrokerError, mailbox: str) -> MailboxError | UpstreamError:
    """`error` as one mailbox's answer: a failure of a whole upstream call becomes each member's error."""
    if isinstance(error, MailboxError):
        return error if error.mailbox == mailbox else type(error)(error.detail, mailbox=mailbox)
    if isinstance(error, UpstreamThrottled):
        return UpstreamThrottled(
            error.detail, retry_after=error.retry_after, upstream_code=error.upstream_code, mailbox=mailbox
        )
    if isinstance(error, UpstreamError):
        return type(error)(error.detail, upstream_code=error.upstream_code, mailbox=mailbox)
    return UpstreamRejected(error.detail, mailbox=mailbox)


def merge_schedules(mailbox: str, parts: Sequence[ScheduleResult]) -> ScheduleResult:
    """One mailbox's answers for the pieces of a split window, as one answer.

    Any error makes the mailbox an error (a mailbox's own error before a failure of the call), never
    a partial calendar; a busy block both neighbouring pieces report (upstream returns whole
    items) appears once.
    """
    schedules = [part for part in parts if isinstance(part, MailboxSchedule)]
    errors = [part for part in parts if not isinstance(part, MailboxSchedule)]
    if errors:
        return next((error for error in errors if isinstance(error, MailboxError)), errors[0])
    blocks = {block for schedule in schedules for block in schedule.busy}
    ordered = sorted(blocks, key=lambda b: (b.start_us, b.end_us, b.status))
    hours = next((schedule.working_hours for schedule in schedules if schedule.working_hours is not None), None)
    return MailboxSchedule(mailbox, tuple(ordered), hours)
