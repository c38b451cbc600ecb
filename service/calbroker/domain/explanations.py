"""Why a candidate slot was rejected (design §6.6): which member, and which busy block or rule."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from heapq import heappop, heappush
from itertools import accumulate, chain, compress
from operator import itemgetter

from calbroker.domain.busy import BusyBlock, BusyStatus
from calbroker.domain.intervals import MICROSECOND, Span, from_us
from calbroker.domain.participants import Schedule
from calbroker.domain.slots import GroupMask, StartReplay, member_flags


class BlockReason(StrEnum):
    """What kept a member (or, for the notice rules, everyone) from a slot; values are wire strings."""

    BUSY = "busy"
    WORKING_HOURS = "working_hours"
    AVAILABLE_PERIODS = "available_periods"
    MINIMUM_NOTICE = "minimum_notice"
    MAXIMUM_ADVANCE = "maximum_advance"
    MEMBER_UNAVAILABLE = "member_unavailable"


@dataclass(frozen=True, slots=True)
class Blocker:
    """One reason a slot was refused.

    ``member`` is None for the notice rules, which refuse the slot for everyone alike. ``busy`` is the
    upstream block as the mailbox reported it (before buffers), so the caller recognises the meeting;
    ``detail`` carries an unavailable member's reason.
    """

    reason: BlockReason
    member: str | None = None
    busy: BusyBlock | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Explanation:
    """A rejected candidate slot ``[start, end)`` (UTC) and everything that blocked it.

    Blockers come in a stable order: the notice rules, then each member of a group left short, by
    email, with every reason that applies to them (busy blocks by start).
    """

    start: datetime
    end: datetime
    blockers: tuple[Blocker, ...]


_NEVER = 1 << 62
"""Later than any instant: an answer that holds for every later candidate."""

_BY_INTERVAL = itemgetter(0, 1)  # a BusyBlock's (start_us, end_us)


def _fit_edges(spans: Sequence[Span], duration_us: int) -> list[int]:
    """Where the answer to "does a slot starting here fit in one of the spans?" changes, ascending.

    A slot ``[t, t + duration)`` fits in ``[a, b)`` iff ``a <= t < b − duration + 1``; in normal form
    those ranges are separated, so the edges alternate in and out: the slot at ``t`` fits iff an odd
    number of edges are at or before ``t``. A last edge at ``_NEVER`` spares a bounds check.
    """
    reach = duration_us - 1
    edges = [edge for start, end in spans if end - start > reach for edge in (start, end - reach)]
    edges.append(_NEVER)
    return edges


class _MemberReasons:
    """Why one member cannot take the slot at a candidate start, and until which start that holds.

    Busy blocks are kept by dilated start with a running maximum of dilated ends, so a lookup walks
    back from the slot's end and stops as soon as nothing earlier can reach the slot, even when a
    week-long out-of-office sits among short meetings. Blockers for busy blocks are made on first use.
    """

    def __init__(
        self,
        schedule: Schedule,
        working: list[int] | None,
        statuses: Sequence[BusyStatus],
        *,
        before: int,
        after: int,
        duration_us: int,
    ) -> None:
        member = schedule.member
        self._email = member.email
        self._unavailable = (
            None
            if member.unavailable_reason is None
            else [Blocker(BlockReason.MEMBER_UNAVAILABLE, member.email, detail=member.unavailable_reason)]
        )
        self._available = None if schedule.available is None else _fit_edges(schedule.available, duration_us)
        self._working = working
        self._outside_available = Blocker(BlockReason.AVAILABLE_PERIODS, member.email)
        self._outside_working = Blocker(BlockReason.WORKING_HOURS, member.email)
        self._blocks = [block for block in member.busy if block.status in statuses]
        self._blocks.sort(key=_BY_INTERVAL)
        self._busy: list[Blocker | None] = [None] * len(self._blocks)
        # Block k, dilated to [s, e), blocks the slot at t iff s < t + duration and e > t: it blocks the
        # slots that start in [_enters[k], _ends[k]). ``_reach`` is the running maximum of ``_ends``.
        reach = after + duration_us - 1
        self._enters = [block[0] - reach for block in self._blocks]
        self._enters.append(_NEVER)
        self._ends = [block[1] + before for block in self._blocks]
        self._reach = list(accumulate(self._ends, max))

    def blockers(self, start: int) -> tuple[list[Blocker], int]:
        """The blockers of the slot at ``start``, and the first later start where they may differ."""
        if self._unavailable is not None:
            return self._unavailable, _NEVER
        found: list[Blocker] = []
        k = bisect_right(self._enters, start)  # the first block that does not reach this slot yet
        until = self._enters[k]
        # Hot path (thousands of calls per query): plain comparisons rather than min().
        if self._available is not None:
            edges = self._available
            index = bisect_right(edges, start)
            if not index & 1:
                found.append(self._outside_available)
            if edges[index] < until:  # noqa: PLR1730
                until = edges[index]
        if self._working is not None:
            edges = self._working
            index = bisect_right(edges, start)
            if not index & 1:
                found.append(self._outside_working)
            if edges[index] < until:  # noqa: PLR1730
                until = edges[index]
        busy: list[Blocker] = []
        k -= 1
        while k >= 0 and self._reach[k] > start:
            block_end = self._ends[k]
            if block_end > start:
                blocker = self._busy[k]
                if blocker is None:
                    blocker = self._busy[k] = Blocker(BlockReason.BUSY, self._email, busy=self._blocks[k])
                busy.append(blocker)
                if block_end < until:  # noqa: PLR1730
                    until = block_end
            k -= 1
        found.extend(reversed(busy))
        return found, until


def explain_rejections(
    candidates: Iterable[int],
    replay: StartReplay,
    schedules: Sequence[Schedule],
    groups: Sequence[GroupMask],
    *,
    duration_us: int,
    notice: tuple[int, int | None],
    statuses: Sequence[BusyStatus],
    buffer_before_us: int,
    buffer_after_us: int,
    limit: int,
) -> list[Explanation]:
    """Explanations for the first ``limit`` rejected candidate starts, in time order.

    Only members of groups left short are named: a member missing from a group that had enough
    people did not block anything. A member's blockers stay the same from one candidate to the next
    until a block, working hours or an available period begins or ends, so each is worked out again
    only then (a heap holds when each expires) and the rest are reused as they are.
    """
    earliest, latest = notice
    duration = MICROSECOND * duration_us
    minimum_notice = Blocker(BlockReason.MINIMUM_NOTICE)
    maximum_advance = Blocker(BlockReason.MAXIMUM_ADVANCE)
    working_edges: dict[int, list[int]] = {}  # by identity of the working spans, which colleagues share

    def reasons_of(schedule: Schedule) -> _MemberReasons:
        working = None
        if schedule.working is not None:
            working = working_edges.get(id(schedule.working))
            if working is None:
                working = working_edges[id(schedule.working)] = _fit_edges(schedule.working, duration_us)
        return _MemberReasons(
            schedule, working, statuses, before=buffer_before_us, after=buffer_after_us, duration_us=duration_us
        )

    reasons: list[_MemberReasons | None] = [None] * len(schedules)
    current: list[list[Blocker]] = [[] for _ in schedules]
    fresh = 0  # members whose ``current`` blockers still hold
    expiry: list[tuple[int, int]] = []  # (first start they may not hold for, member)
    blamed_before = 0  # the last members blamed, and their blockers: often reused as they are
    named: tuple[Blocker, ...] = ()
    explanations: list[Explanation] = []
    for start in candidates:
        able = replay.able_at(start)
        blamed = 0
        for mask, needed in groups:
            if (able & mask).bit_count() < needed:
                blamed |= mask & ~able
        if not blamed:
            continue
        while expiry and expiry[0][0] <= start:
            fresh &= ~(1 << heappop(expiry)[1])
        stale = blamed & ~fresh
        if stale or blamed != blamed_before:
            while stale:
                lowest = stale & -stale
                member = lowest.bit_length() - 1
                stale ^= lowest
                member_reasons = reasons[member]
                if member_reasons is None:
                    member_reasons = reasons[member] = reasons_of(schedules[member])
                current[member], until = member_reasons.blockers(start)
                fresh |= lowest
                if until != _NEVER:
                    heappush(expiry, (until, member))
            blamed_before, named = blamed, tuple(chain.from_iterable(compress(current, member_flags(blamed))))
        blockers: tuple[Blocker, ...] = named
        end = start + duration_us
        if latest is not None and end > latest:
            blockers = (maximum_advance, *blockers)
        if start < earliest:
            blockers = (minimum_notice, *blockers)
        moment = from_us(start)
        explanations.append(Explanation(moment, moment + duration, blockers))
        if len(explanations) >= limit:
            break
    return explanations
