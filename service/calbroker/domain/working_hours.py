"""Weekly working hours in a time zone, expanded into exact UTC intervals across DST changes.

An instant is inside working hours iff its wall-clock time in the zone falls on a listed weekday
within a period ``[start, end)``. So a spring-forward gap shortens a period in UTC, and in a
fall-back overlap both occurrences of a wall-clock time count.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time
from enum import IntEnum
from zoneinfo import ZoneInfo

from calbroker.domain.errors import InvalidRequest
from calbroker.domain.intervals import Interval, Span, intervals_of, merge_spans
from calbroker.domain.zones import DAY_US, SECOND_US, offset_spans

# 1970-01-01, day 0 of the epoch, was a Thursday.
_EPOCH_WEEKDAY = 3


class Weekday(IntEnum):
    """Numbered like ``date.weekday()``; the wire name is ``Weekday[name.upper()]``."""

    MONDAY = 0
    TUESDAY = 1
    WEDNESDAY = 2
    THURSDAY = 3
    FRIDAY = 4
    SATURDAY = 5
    SUNDAY = 6


def _time_of_day_us(moment: time) -> int:
    return (moment.hour * 3600 + moment.minute * 60 + moment.second) * SECOND_US + moment.microsecond


@dataclass(frozen=True, slots=True)
class WeeklyPeriod:
    """Wall-clock ``[start, end)`` on one weekday; ``end`` None is midnight at the end (24:00 on the wire)."""

    day: Weekday
    start: time
    end: time | None = None

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or (self.end is not None and self.end.tzinfo is not None):
            raise InvalidRequest.field("weekly_periods", "times are wall-clock; the zone is the tzid")
        if self.end is not None and self.end <= self.start:
            raise InvalidRequest.field(
                "weekly_periods", f"end_time {self.end.isoformat()} must be after {self.start.isoformat()}"
            )

    @property
    def bounds_us(self) -> Span:
        """Offsets from local midnight, microseconds."""
        end = DAY_US if self.end is None else _time_of_day_us(self.end)
        return (_time_of_day_us(self.start), end)


@dataclass(frozen=True, slots=True)
class WorkingHours:
    """A mailbox's (or a request's) working week; hashable so members who share it share one expansion."""

    periods: tuple[WeeklyPeriod, ...]
    tz: ZoneInfo


def working_spans(working_hours: WorkingHours, start_us: int, end_us: int) -> list[Span]:
    """Working time within ``[start, end)`` as normal-form spans.

    Walks each piece of constant UTC offset day by local day: within a piece, local wall time is
    UTC + offset, so a wall-clock period maps back to UTC by one subtraction, clipped to the piece.
    """
    by_weekday: list[list[Span]] = [[] for _ in Weekday]
    for period in working_hours.periods:
        by_weekday[period.day].append(period.bounds_us)
    by_weekday = [merge_spans(day) for day in by_weekday]

    found: list[Span] = []
    for piece_start, piece_end, offset in offset_spans(working_hours.tz, start_us, end_us):
        local_start = piece_start + offset
        local_end = piece_end + offset
        day = local_start // DAY_US
        while day * DAY_US < local_end:
            midnight = day * DAY_US
            for period_start, period_end in by_weekday[(day + _EPOCH_WEEKDAY) % 7]:
                lo = max(midnight + period_start, local_start)
                hi = min(midnight + period_end, local_end)
                if lo < hi:
                    found.append((lo - offset, hi - offset))
            day += 1
    return merge_spans(found)


def expand(working_hours: WorkingHours, window: Interval) -> tuple[Interval, ...]:
    """Working hours inside ``window`` as UTC intervals, DST-correct, without sampling minutes."""
    return intervals_of(working_spans(working_hours, window.start_us, window.end_us))
