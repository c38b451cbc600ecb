"""Working hours across DST changes, by hand-checked examples and against a per-minute oracle."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calbroker.domain import Interval, Weekday, WeeklyPeriod, WorkingHours, expand
from calbroker.domain.errors import InvalidRequest
from calbroker.domain.intervals import to_us
from calbroker.domain.zones import offset_spans

from .reference import MINUTE, in_working_hours
from .strategies import windows_near_transitions, working_hours


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def hours(zone: str, *periods: WeeklyPeriod) -> WorkingHours:
    return WorkingHours(periods, ZoneInfo(zone))


def whole_day(day: datetime) -> Interval:
    return Interval(day - timedelta(days=1), day + timedelta(days=2))


def test_new_york_spring_forward_shortens_a_period_across_the_gap() -> None:
    # 2025-03-09: 02:00 EST jumps to 03:00 EDT, so 01:30–03:00 lasts 30 minutes.
    week = hours("America/New_York", WeeklyPeriod(Weekday.SUNDAY, time(1, 30), time(3, 0)))
    assert expand(week, whole_day(utc(2025, 3, 9))) == (Interval(utc(2025, 3, 9, 6, 30), utc(2025, 3, 9, 7)),)


def test_new_york_fall_back_counts_both_occurrences_of_the_repeated_hour() -> None:
    # 2025-11-02: 02:00 EDT falls back to 01:00 EST; 01:00–02:00 happens twice (05:00Z–07:00Z).
    window = whole_day(utc(2025, 11, 2))
    week = hours("America/New_York", WeeklyPeriod(Weekday.SUNDAY, time(1, 0), time(2, 0)))
    assert expand(week, window) == (Interval(utc(2025, 11, 2, 5), utc(2025, 11, 2, 7)),)
    half = hours("America/New_York", WeeklyPeriod(Weekday.SUNDAY, time(1, 30), time(2, 0)))
    assert expand(half, window) == (
        Interval(utc(2025, 11, 2, 5, 30), utc(2025, 11, 2, 6)),
        Interval(utc(2025, 11, 2, 6, 30), utc(2025, 11, 2, 7)),
    )


def test_london_spring_forward_skips_the_missing_hour() -> None:
    # 2025-03-30: 01:00 GMT jumps to 02:00 BST; 00:30–02:30 local is 00:30Z–01:30Z.
    week = hours("Europe/London", WeeklyPeriod(Weekday.SUNDAY, time(0, 30), time(2, 30)))
    assert expand(week, whole_day(utc(2025, 3, 30))) == (Interval(utc(2025, 3, 30, 0, 30), utc(2025, 3, 30, 1, 30)),)


def test_lord_howe_half_hour_fall_back_repeats_thirty_minutes() -> None:
    # 2025-04-06: 02:00 (+11:00) falls back to 01:30 (+10:30); 01:00–02:00 local lasts 90 minutes.
    week = hours("Australia/Lord_Howe", WeeklyPeriod(Weekday.SUNDAY, time(1, 0), time(2, 0)))
    assert expand(week, whole_day(utc(2025, 4, 5))) == (Interval(utc(2025, 4, 5, 14), utc(2025, 4, 5, 15, 30)),)


def test_kolkata_half_hour_offset_shifts_the_working_day() -> None:
    week = hours("Asia/Kolkata", WeeklyPeriod(Weekday.MONDAY, time(9), time(17)))
    assert expand(week, whole_day(utc(2025, 6, 16))) == (Interval(utc(2025, 6, 16, 3, 30), utc(2025, 6, 16, 11, 30)),)


def test_open_end_runs_to_midnight_and_joins_the_next_day() -> None:
    week = hours(
        "UTC",
        WeeklyPeriod(Weekday.FRIDAY, time(22)),
        WeeklyPeriod(Weekday.SATURDAY, time(0), time(2)),
    )
    assert expand(week, whole_day(utc(2025, 6, 20))) == (Interval(utc(2025, 6, 20, 22), utc(2025, 6, 21, 2)),)


def test_expansion_is_clipped_to_the_window() -> None:
    week = hours("UTC", *(WeeklyPeriod(day, time(9), time(17)) for day in Weekday))
    window = Interval(utc(2025, 6, 16, 12), utc(2025, 6, 17, 10))
    assert expand(week, window) == (
        Interval(utc(2025, 6, 16, 12), utc(2025, 6, 16, 17)),
        Interval(utc(2025, 6, 17, 9), utc(2025, 6, 17, 10)),
    )


def test_no_periods_means_never_working() -> None:
    assert expand(hours("UTC"), whole_day(utc(2025, 6, 16))) == ()


@pytest.mark.parametrize(
    ("start", "end"),
    [(time(10), time(9)), (time(10), time(10)), (time(9, tzinfo=UTC), time(10))],
)
def test_weekly_period_refuses_empty_backwards_or_zoned_times(start: time, end: time) -> None:
    with pytest.raises(InvalidRequest):
        WeeklyPeriod(Weekday.MONDAY, start, end)


@given(working_hours(), windows_near_transitions(max_hours=72))
def test_expand_matches_checking_every_minute(week: WorkingHours, window_spec: tuple[datetime, int, str]) -> None:
    origin, length, _ = window_spec
    window = Interval(origin, origin + length * MINUTE)
    expected: list[tuple[datetime, datetime]] = []
    for index in range(length):
        minute = origin + index * MINUTE
        if in_working_hours(week, minute):
            if expected and expected[-1][1] == minute:
                expected[-1] = (expected[-1][0], minute + MINUTE)
            else:
                expected.append((minute, minute + MINUTE))
    assert expand(week, window) == tuple(Interval(start, end) for start, end in expected)


@given(
    st.sampled_from(
        ["Europe/London", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC", "Pacific/Apia"]
    ),
    # 2011: Samoa skipped 30 December, a day before a new year (pieces are found a year at a time).
    st.sampled_from([2011, 2024]),
    st.one_of(st.integers(0, 400), st.integers(355, 366)),  # and windows across new year
    st.integers(1, 60),
    st.lists(st.integers(0, 60 * 24 * 60 - 1), min_size=1, max_size=10),
)
def test_offset_spans_tile_the_window_with_the_true_offsets(
    zone: str, year: int, start_day: int, days: int, probes: list[int]
) -> None:
    tz = ZoneInfo(zone)
    start = to_us(utc(year, 1, 1) + timedelta(days=start_day))
    end = start + days * 86_400_000_000
    pieces = offset_spans(tz, start, end)
    assert pieces[0][0] == start
    assert pieces[-1][1] == end
    for (_, earlier_end, earlier_offset), (later_start, _, later_offset) in pairwise(pieces):
        assert earlier_end == later_start
        assert earlier_offset != later_offset
    for piece_start, piece_end, offset in pieces:  # exact edges: the offset holds at both ends
        for moment in (piece_start, piece_end - 1):
            at = datetime.fromtimestamp(moment // 1_000_000, tz).utcoffset()
            assert at is not None
            assert at // timedelta(microseconds=1) == offset
    for probe in probes:
        moment = start + probe * 60_000_000 % (end - start)
        piece = next(p for p in pieces if p[0] <= moment < p[1])
        true_offset = datetime.fromtimestamp(moment // 1_000_000, tz).utcoffset()
        assert true_offset is not None
        assert piece[2] == true_offset // timedelta(microseconds=1)
