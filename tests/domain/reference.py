"""A deliberately naive oracle for design §6: every question is answered minute by minute.

It shares no code with the engine beyond the input types. Inputs must sit on whole minutes, which
makes a per-minute answer exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from calbroker.domain import AvailabilityQuery, BusyBlock, BusyStatus, Group, Interval, Member, WorkingHours

MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Found:
    start: datetime
    end: datetime
    members: tuple[str, ...]


def in_working_hours(hours: WorkingHours, moment: datetime) -> bool:
    """Wall-clock time of the instant in the zone falls on a listed weekday within [start, end)."""
    local = moment.astimezone(hours.tz)
    wall = local.time()
    for period in hours.periods:
        if period.day == local.weekday() and period.start <= wall and (period.end is None or wall < period.end):
            return True
    return False


def _inside(intervals: tuple[Interval, ...], minute: datetime) -> bool:
    return any(interval.start <= minute and minute + MINUTE <= interval.end for interval in intervals)


def _blocking(status: BusyStatus, tentative_as_busy: bool) -> bool:
    if status in (BusyStatus.BUSY, BusyStatus.OOF):
        return True
    return status is BusyStatus.TENTATIVE and tentative_as_busy


def member_free_at(query: AvailabilityQuery, member: Member, minute: datetime) -> bool:
    """§6.1–6.3 for the minute [minute, minute + 1 min)."""
    if member.unavailable_reason is not None:
        return False
    if not _inside(query.query_periods, minute):
        return False
    if member.available_periods is not None and not _inside(member.available_periods, minute):
        return False
    hours = member.working_hours
    if query.apply_working_hours and hours is not None and not in_working_hours(hours, minute):
        return False
    if minute < query.now + query.minimum_notice:
        return False
    if query.maximum_advance is not None and minute + MINUTE > query.now + query.maximum_advance:
        return False
    for block in member.busy:
        if not _blocking(block.status, query.tentative_as_busy):
            continue
        # Busy [b0, b1) dilated to [b0 - after, b1 + before).
        if block.interval.start - query.buffer_after <= minute < block.interval.end + query.buffer_before:
            return False
    return True


class Oracle:
    """Per-minute free table of one query over [first query start, last query end)."""

    def __init__(self, query: AvailabilityQuery) -> None:
        self.query = query
        self.emails = sorted({email for group in query.groups for email in group.members})
        self.first = min(period.start for period in query.query_periods)
        self.last = max(period.end for period in query.query_periods)
        self.minutes: list[datetime] = []
        minute = self.first
        while minute < self.last:
            self.minutes.append(minute)
            minute += MINUTE
        self.free: dict[str, set[datetime]] = {
            email: {m for m in self.minutes if member_free_at(query, query.members[email], m)} for email in self.emails
        }

    def free_over(self, email: str, start: datetime, end: datetime) -> bool:
        minute = start
        while minute < end:
            if minute not in self.free[email]:
                return False
            minute += MINUTE
        return True

    def satisfied(self, members: set[str]) -> bool:
        return all(len(members & set(group.members)) >= _needed(group) for group in self.query.groups)

    def candidate_starts(self) -> list[datetime]:
        """§6.4: instants whose local minutes since midnight are a multiple of the start interval."""
        interval = self.query.start_interval or min(self.query.duration, 60 * MINUTE)
        step = interval // MINUTE
        starts = []
        for minute in self.minutes:
            local = minute.astimezone(self.query.tz)
            if (local.hour * 60 + local.minute) % step == 0:
                starts.append(minute)
        return starts

    def slot_members(self, start: datetime) -> set[str]:
        end = start + self.query.duration
        return {email for email in self.emails if self.free_over(email, start, end)}

    def slots(self) -> list[Found]:
        found = []
        for start in self.candidate_starts():
            members = self.slot_members(start)
            if self.satisfied(members):
                found.append(Found(start, start + self.query.duration, tuple(sorted(members))))
        return found[: self.query.max_results]

    def rejected_starts(self) -> list[datetime]:
        """Candidates whose whole slot lies in the (merged) query periods but are not available."""
        merged = _merge(self.query.query_periods)
        rejected = []
        for start in self.candidate_starts():
            end = start + self.query.duration
            inside = any(lo <= start and end <= hi for lo, hi in merged)
            if inside and not self.satisfied(self.slot_members(start)):
                rejected.append(start)
        return rejected

    def blockers(self, start: datetime) -> list[tuple[str, str | None, BusyBlock | None, str | None]]:
        """§6.6 for a rejected start: rules first, then each member of a short group who is not free,
        by email, with every reason that applies (busy blocks by start)."""
        query = self.query
        end = start + query.duration
        slot_minutes = []
        minute = start
        while minute < end:
            slot_minutes.append(minute)
            minute += MINUTE
        found: list[tuple[str, str | None, BusyBlock | None, str | None]] = []
        if start < query.now + query.minimum_notice:
            found.append(("minimum_notice", None, None, None))
        if query.maximum_advance is not None and end > query.now + query.maximum_advance:
            found.append(("maximum_advance", None, None, None))
        free = self.slot_members(start)
        blamed = set()
        for group in query.groups:
            if len(free & set(group.members)) < _needed(group):
                blamed |= set(group.members) - free
        for email in sorted(blamed):
            member = query.members[email]
            if member.unavailable_reason is not None:
                found.append(("member_unavailable", email, None, member.unavailable_reason))
                continue
            available = member.available_periods
            if available is not None and not all(_inside(available, m) for m in slot_minutes):
                found.append(("available_periods", email, None, None))
            hours = member.working_hours
            if (
                query.apply_working_hours
                and hours is not None
                and not all(in_working_hours(hours, m) for m in slot_minutes)
            ):
                found.append(("working_hours", email, None, None))
            for block in sorted(member.busy, key=lambda b: (b.interval.start, b.interval.end)):
                if (
                    _blocking(block.status, query.tentative_as_busy)
                    and block.interval.start - query.buffer_after < end
                    and block.interval.end + query.buffer_before > start
                ):
                    found.append(("busy", email, block, None))
        return found

    def free_set_at(self, index: int) -> frozenset[str]:
        if index < 0 or index >= len(self.minutes):
            return frozenset()
        minute = self.minutes[index]
        return frozenset(email for email in self.emails if minute in self.free[email])

    def periods(self) -> list[Found]:
        """§6.5 by brute force over every run [i, j) of minutes.

        Two safe shortcuts keep it fast: groups only lose members as the run grows, so a run whose
        members fail a group can stop; and once the run's members were all free the minute before
        it, no longer run from i is left-maximal either.
        """
        sets = [self.free_set_at(index) for index in range(len(self.minutes))]
        duration_minutes = self.query.duration // MINUTE
        found = []
        for i in range(len(self.minutes)):
            before = self.free_set_at(i - 1)
            members = sets[i]
            for j in range(i + 1, len(self.minutes) + 1):
                members = members & sets[j - 1]
                if not members or not self.satisfied(set(members)) or members <= before:
                    break
                right_maximal = not members <= self.free_set_at(j)
                if right_maximal and j - i >= duration_minutes:
                    found.append(Found(self.minutes[i], self.minutes[i] + (j - i) * MINUTE, tuple(sorted(members))))
        found.sort(key=lambda item: (item.start, item.end, item.members))
        return found[: self.query.max_results]


def _needed(group: Group) -> int:
    return len(group.members) if group.required is None else group.required


def _merge(intervals: tuple[Interval, ...]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for interval in sorted(intervals, key=lambda i: i.start):
        if merged and interval.start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], interval.end))
        else:
            merged.append((interval.start, interval.end))
    return merged
