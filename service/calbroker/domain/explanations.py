"""Why a candidate slot was rejected (design §6.6): which member, and which busy block or rule."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from itertools import accumulate

from calbroker.domain.busy import BusyBlock, BusyStatus
from calbroker.domain.intervals import covers, from_us
from calbroker.domain.participants import Schedule
from calbroker.domain.slots import GroupMask, StartReplay


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


class _MemberReasons:
    """Why one member cannot take a slot, with each Blocker built once and shared by explanations.

    Busy blocks are kept by dilated start with a running maximum of dilated ends, so a lookup walks
    back from the slot's end and stops as soon as nothing earlier can reach the slot, even when a
    week-long out-of-office sits among short meetings.
    """

    def __init__(self, schedule: Schedule, statuses: Sequence[BusyStatus], before: int, after: int) -> None:
        member = schedule.member
        self._schedule = schedule
        self._unavailable = (
            None
            if member.unavailable_reason is None
            else [Blocker(BlockReason.MEMBER_UNAVAILABLE, member.email, detail=member.unavailable_reason)]
        )
        self._outside_available = Blocker(BlockReason.AVAILABLE_PERIODS, member.email)
        self._outside_working = Blocker(BlockReason.WORKING_HOURS, member.email)
        ordered = sorted(
            (block for block in member.busy if block.status in statuses),
            key=lambda block: (block.interval.start_us, block.interval.end_us),
        )
        self._busy = [Blocker(BlockReason.BUSY, member.email, busy=block) for block in ordered]
        self._starts = [block.interval.start_us - after for block in ordered]
        self._ends = [block.interval.end_us + before for block in ordered]
        self._reach = list(accumulate(self._ends, max))

    def blockers(self, start: int, end: int, working_covers: dict[int, bool]) -> list[Blocker]:
        """``working_covers`` memoises the working-hours answer for this slot by the identity of the
        spans, which colleagues in one zone share: a hundred members cost a handful of lookups."""
        if self._unavailable is not None:
            return self._unavailable
        schedule = self._schedule
        found: list[Blocker] = []
        if schedule.available is not None and not covers(schedule.available, start, end):
            found.append(self._outside_available)
        working = schedule.working
        if working is not None:
            inside = working_covers.get(id(working))
            if inside is None:
                inside = working_covers[id(working)] = covers(working, start, end)
            if not inside:
                found.append(self._outside_working)
        busy: list[Blocker] = []
        k = bisect_left(self._starts, end) - 1
        while k >= 0 and self._reach[k] > start:
            if self._ends[k] > start:
                busy.append(self._busy[k])
            k -= 1
        found.extend(reversed(busy))
        return found


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
    people did not block anything.
    """
    earliest, latest = notice
    minimum_notice = Blocker(BlockReason.MINIMUM_NOTICE)
    maximum_advance = Blocker(BlockReason.MAXIMUM_ADVANCE)
    reasons: dict[int, _MemberReasons] = {}
    explanations: list[Explanation] = []
    for start in candidates:
        able = replay.able_at(start)
        blamed = 0
        for mask, needed in groups:
            if (able & mask).bit_count() < needed:
                blamed |= mask & ~able
        if not blamed:
            continue
        end = start + duration_us
        blockers: list[Blocker] = []
        if start < earliest:
            blockers.append(minimum_notice)
        if latest is not None and end > latest:
            blockers.append(maximum_advance)
        working_covers: dict[int, bool] = {}
        while blamed:
            lowest = blamed & -blamed
            member = lowest.bit_length() - 1
            blamed ^= lowest
            if member not in reasons:
                reasons[member] = _MemberReasons(schedules[member], statuses, buffer_before_us, buffer_after_us)
            blockers.extend(reasons[member].blockers(start, end, working_covers))
        explanations.append(Explanation(from_us(start), from_us(end), tuple(blockers)))
        if len(explanations) >= limit:
            break
    return explanations
