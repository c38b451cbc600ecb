"""Who takes part in an availability query, and each member's free time within it (design §6.1–6.3)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from calbroker.domain.busy import BusyBlock, BusyStatus, blocking_spans, blocking_statuses
from calbroker.domain.errors import InvalidRequest
from calbroker.domain.intervals import (
    Interval,
    Span,
    intersect_spans,
    merge_spans,
    spans_of,
    subtract_spans,
)
from calbroker.domain.working_hours import WorkingHours


@dataclass(frozen=True, slots=True)
class Member:
    """Everything the engine knows about one mailbox.

    ``unavailable_reason`` is set when its free/busy could not be read: such a member is free
    nowhere, because calling an unreadable calendar free would book people into conflicts.
    ``working_hours`` is already resolved by the caller (the mailbox's own, or the request's
    override); None means the mailbox has no working-hours constraint.
    """

    email: str
    busy: tuple[BusyBlock, ...] = ()
    available_periods: tuple[Interval, ...] | None = None
    working_hours: WorkingHours | None = None
    unavailable_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Group:
    """Participants of which at least ``required`` must be free (None: all of them)."""

    members: tuple[str, ...]
    required: int | None = None

    def __post_init__(self) -> None:
        if not self.members:
            raise InvalidRequest.field("participants.members", "a group needs at least one member")
        if len(set(self.members)) != len(self.members):
            raise InvalidRequest.field("participants.members", "a member is listed twice in one group")
        if self.required is not None and not 1 <= self.required <= len(self.members):
            raise InvalidRequest.field(
                "participants.required",
                f"must be between 1 and the group's {len(self.members)} members, or 'all'",
            )

    @property
    def needed(self) -> int:
        return len(self.members) if self.required is None else self.required


@dataclass(frozen=True, slots=True)
class Schedule:
    """One member's time within a query: the rules that shape it and the free spans that result.

    The parts are kept so an explanation can say which rule, not only that the member was busy.
    """

    member: Member
    available: Sequence[Span] | None
    working: Sequence[Span] | None
    free: Sequence[Span]


def schedule_of(
    member: Member,
    within: Sequence[Span],
    working: Sequence[Span] | None,
    *,
    tentative_as_busy: bool,
    buffer_before_us: int,
    buffer_after_us: int,
) -> Schedule:
    """Free time = candidate time ∩ working hours (``within``, shared by colleagues) ∩ the member's
    available periods − dilated busy time.

    Busy ``[b0, b1)`` grows to ``[b0 − after, b1 + before)``: a meeting's after-buffer must not run
    into the next busy block, and its before-buffer must not start inside the previous one.
    """
    if member.unavailable_reason is not None:
        return Schedule(member, None, None, [])
    available = None
    if member.available_periods is not None:
        available = merge_spans(spans_of(member.available_periods))
        within = intersect_spans(within, available)
    free = _free_spans(within, member.busy, blocking_statuses(tentative_as_busy), buffer_after_us, buffer_before_us)
    if free is None:
        busy = blocking_spans(member.busy, tentative_as_busy, earlier=buffer_after_us, later=buffer_before_us)
        busy.sort()
        free = subtract_spans(within, busy)
    return Schedule(member, available, working, free)


_FAR = 1 << 62
_PAST_THE_LAST = (_FAR, _FAR)


def _free_spans(
    within: Sequence[Span], blocks: Sequence[BusyBlock], statuses: Sequence[BusyStatus], earlier: int, later: int
) -> list[Span] | None:
    """``within`` minus the blocking blocks widened to ``[start − earlier, end + later)``, if the blocks
    come sorted by start (as providers send them); None if they do not.

    The merge of ``subtract_spans``, run straight off the blocks: this is the pass over every busy
    block of every member, and skipping the list of busy spans and its sort saves a fifth of it.
    """
    free: list[Span] = []
    spans = iter(within)
    cursor, end = next(spans, _PAST_THE_LAST)
    previous = -_FAR
    for block_start, block_end, status in blocks:  # a BusyBlock is the tuple (start_us, end_us, status)
        if status not in statuses:
            continue
        cut_start = block_start - earlier
        if cut_start < previous:
            return None
        previous = cut_start
        while cut_start >= end:  # the cut lies past this span, so the rest of the span is free
            if cursor < end:
                free.append((cursor, end))
            start, end = next(spans, _PAST_THE_LAST)
            if start > cursor:  # noqa: PLR1730 - the hot loop of the engine; max() would cost a call
                cursor = start
        if cut_start > cursor:
            free.append((cursor, cut_start))
        cut_end = block_end + later
        if cut_end > cursor:  # noqa: PLR1730
            cursor = cut_end
    while end != _FAR:
        if cursor < end:
            free.append((cursor, end))
        start, end = next(spans, _PAST_THE_LAST)
        if start > cursor:  # noqa: PLR1730
            cursor = start
    return free
