"""The port every upstream adapter implements, and the deadline that bounds a request's upstream time."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from calbroker.domain.connections import Connection
from calbroker.domain.errors import UpstreamTimeout
from calbroker.domain.intervals import Interval
from calbroker.domain.schedules import Room, ScheduleResult

__all__ = ["CalendarProvider", "Deadline"]


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

    async def aclose(self) -> None:
        """Release sessions and threads; the provider refuses use afterwards."""
        ...
