"""Interval invariants and the set algebra, by example and against a set-of-minutes model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calbroker.domain import Interval, contains, dilate, intersect, normalize, overlapping, subtract, union
from calbroker.domain.errors import InvalidRequest
from calbroker.domain.intervals import subtract_spans

BASE = datetime(2025, 6, 2, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def at(minute: int) -> datetime:
    return BASE + minute * MINUTE


def iv(start: int, end: int) -> Interval:
    return Interval(at(start), at(end))


def test_interval_rejects_a_naive_start() -> None:
    with pytest.raises(InvalidRequest) as raised:
        Interval(datetime(2025, 6, 2, 9), at(600))
    assert raised.value.errors[0].field == "start"


def test_interval_rejects_a_naive_end() -> None:
    with pytest.raises(InvalidRequest) as raised:
        Interval(at(0), datetime(2025, 6, 2, 9))
    assert raised.value.errors[0].field == "end"


@pytest.mark.parametrize("end_minute", [10, 5])
def test_interval_rejects_an_end_not_after_its_start(end_minute: int) -> None:
    with pytest.raises(InvalidRequest) as raised:
        iv(10, end_minute)
    assert raised.value.errors[0].field == "end"


def test_interval_is_stored_in_utc_and_equal_across_zones() -> None:
    london = Interval(
        datetime(2025, 6, 2, 10, tzinfo=ZoneInfo("Europe/London")),
        datetime(2025, 6, 2, 11, tzinfo=ZoneInfo("Europe/London")),
    )
    fixed = Interval(
        datetime(2025, 6, 2, 14, tzinfo=timezone(timedelta(hours=5))),
        datetime(2025, 6, 2, 15, tzinfo=timezone(timedelta(hours=5))),
    )
    assert london == fixed == iv(9 * 60, 10 * 60)
    assert london.start.tzinfo is UTC
    assert hash(london) == hash(fixed)
    assert london.start_us == int(london.start.timestamp()) * 1_000_000


def test_interval_keeps_microseconds_exactly() -> None:
    late = datetime(2400, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC)
    interval = Interval(late, late + timedelta(microseconds=1))
    assert Interval.from_span(interval.span) == interval
    assert interval.end_us - interval.start_us == 1


def test_normalize_sorts_and_merges_overlapping_and_touching_intervals() -> None:
    assert normalize([iv(50, 60), iv(0, 10), iv(10, 20), iv(15, 30), iv(40, 45)]) == (
        iv(0, 30),
        iv(40, 45),
        iv(50, 60),
    )


def test_normalize_of_nothing_is_empty() -> None:
    assert normalize([]) == ()


def test_union_intersect_subtract_by_example() -> None:
    assert union([iv(0, 10)], [iv(20, 30)], [iv(5, 25)]) == (iv(0, 30),)
    assert intersect([iv(0, 10), iv(20, 30)], [iv(5, 25)]) == (iv(5, 10), iv(20, 25))
    assert intersect([iv(0, 10)], [iv(10, 20)]) == ()
    assert intersect([iv(0, 100)], [iv(10, 90)], [iv(0, 20), iv(80, 100)]) == (iv(10, 20), iv(80, 90))
    assert subtract([iv(0, 100)], [iv(10, 20), iv(15, 30), iv(90, 120)]) == (iv(0, 10), iv(30, 90))
    assert subtract([iv(0, 10)], [iv(0, 10)]) == ()


def test_subtract_spans_accepts_overlapping_cuts_sorted_by_start() -> None:
    # A week-long cut listed before short ones inside it must still remove all of them.
    assert subtract_spans([(0, 10), (20, 30), (40, 50)], [(5, 45), (6, 7), (46, 48)]) == [
        (0, 5),
        (45, 46),
        (48, 50),
    ]


def test_dilate_widens_each_side_by_its_own_amount_and_merges() -> None:
    assert dilate([iv(10, 20), iv(30, 40)], 5 * MINUTE, 2 * MINUTE) == (iv(5, 22), iv(25, 42))
    assert dilate([iv(10, 20), iv(25, 40)], 5 * MINUTE, 0 * MINUTE) == (iv(5, 40),)


def test_dilate_refuses_negative_amounts() -> None:
    with pytest.raises(InvalidRequest):
        dilate([iv(10, 20)], -MINUTE, MINUTE)


def test_contains_needs_one_covering_stretch() -> None:
    assert contains([iv(0, 10), iv(10, 20)], iv(5, 15))
    assert not contains([iv(0, 10), iv(11, 20)], iv(5, 15))
    assert not contains([], iv(5, 15))


def test_overlapping_names_the_given_intervals_that_share_time() -> None:
    busy = [iv(50, 60), iv(0, 10), iv(10, 20), iv(30, 40)]
    assert overlapping(busy, iv(10, 31)) == (iv(10, 20), iv(30, 40))
    assert overlapping(busy, iv(20, 30)) == ()


# Properties against a model: a set of intervals is the set of minutes it covers.

interval_lists = st.lists(
    st.tuples(st.integers(0, 300), st.integers(1, 60)).map(lambda pair: iv(pair[0], pair[0] + pair[1])),
    max_size=8,
)


def minutes(intervals: tuple[Interval, ...] | list[Interval]) -> set[int]:
    covered: set[int] = set()
    for interval in intervals:
        start = (interval.start - BASE) // MINUTE
        covered.update(range(start, start + interval.duration // MINUTE))
    return covered


def assert_normal_form(intervals: tuple[Interval, ...]) -> None:
    for earlier, later in pairwise(intervals):
        assert earlier.end < later.start, "sorted and neither overlapping nor touching"


@given(interval_lists, interval_lists)
def test_algebra_matches_set_operations_on_minutes(left: list[Interval], right: list[Interval]) -> None:
    for result, expected in (
        (normalize(left), minutes(left)),
        (union(left, right), minutes(left) | minutes(right)),
        (intersect(left, right), minutes(left) & minutes(right)),
        (subtract(left, right), minutes(left) - minutes(right)),
    ):
        assert_normal_form(result)
        assert minutes(result) == expected


@given(interval_lists, st.integers(0, 30), st.integers(0, 30))
def test_dilate_matches_widening_each_interval(intervals: list[Interval], before: int, after: int) -> None:
    result = dilate(intervals, before * MINUTE, after * MINUTE)
    assert_normal_form(result)
    widened = [Interval(i.start - before * MINUTE, i.end + after * MINUTE) for i in intervals]
    assert minutes(result) == minutes(widened)


@given(interval_lists, st.integers(0, 300), st.integers(1, 60))
def test_contains_matches_subset_of_minutes(intervals: list[Interval], start: int, length: int) -> None:
    candidate = iv(start, start + length)
    assert contains(intervals, candidate) == (minutes([candidate]) <= minutes(intervals))


# Splitting a window into upstream calls.


def test_split_halves_windows_a_little_over_the_limit() -> None:
    day = timedelta(days=1)
    seventy_days = Interval(BASE, BASE + 70 * day)
    assert seventy_days.split(62 * day) == [Interval(BASE, BASE + 35 * day), Interval(BASE + 35 * day, BASE + 70 * day)]
    sixty_days = Interval(BASE, BASE + 60 * day)
    assert [part.duration for part in sixty_days.split(42 * day)] == [30 * day, 30 * day]
    assert sixty_days.split(60 * day) == [sixty_days]


def test_split_rounds_to_whole_minutes_only_where_that_fits() -> None:
    window = iv(0, 100)  # 100 minutes in 3 parts: 33⅓ minutes become 34, 34 and 32
    assert [part.duration for part in window.split(40 * MINUTE)] == [34 * MINUTE, 34 * MINUTE, 32 * MINUTE]
    seconds = Interval(at(0), at(0) + timedelta(seconds=90))  # 45 s parts: a minute would not fit in 50 s
    assert [part.duration for part in seconds.split(timedelta(seconds=50))] == [timedelta(seconds=45)] * 2


def test_split_refuses_a_limit_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        iv(0, 10).split(timedelta(0))


@given(
    st.integers(0, 10**12),
    st.one_of(st.integers(1, 10**11), st.integers(1, 100_000).map(lambda m: m * 60_000_000)).flatmap(
        lambda longest: st.tuples(st.just(longest), st.integers(1, 40 * longest))
    ),
)
def test_split_covers_the_window_in_the_fewest_parts_within_the_limit(offset: int, sizes: tuple[int, int]) -> None:
    longest, length = (timedelta(microseconds=us) for us in sizes)
    window = Interval(BASE + timedelta(microseconds=offset), BASE + timedelta(microseconds=offset) + length)

    parts = window.split(longest)

    assert len(parts) == -(-length // longest)  # the fewest parts no longer than `longest`
    assert parts[0].start == window.start
    assert parts[-1].end == window.end
    assert all(earlier.end == later.start for earlier, later in pairwise(parts))  # back to back
    assert all(part.duration <= longest for part in parts)
    assert len({part.duration for part in parts[:-1]}) <= 1  # equal, but for the last
    assert parts[-1].duration <= parts[0].duration
    if len(parts) > 1 and longest % MINUTE == timedelta(0):
        assert parts[0].duration % MINUTE == timedelta(0)  # whole minutes always fit a whole-minute limit
