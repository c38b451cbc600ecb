"""A member's free time (design §6.2–6.3) against the interval algebra, whatever order busy blocks come in.

The engine takes a one-pass route when a mailbox's blocks arrive sorted by start (as providers send
them) and sorts them otherwise; both must give the same free time.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from calbroker.domain import BusyBlock, BusyStatus, Interval, Member, blocking, dilate, normalize, subtract
from calbroker.domain.intervals import intervals_of, spans_of
from calbroker.domain.participants import schedule_of

BASE = datetime(2025, 6, 2, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def iv(start: int, length: int) -> Interval:
    return Interval(BASE + start * MINUTE, BASE + (start + length) * MINUTE)


intervals = st.builds(iv, st.integers(-120, 1440), st.integers(1, 600))
blocks = st.builds(BusyBlock, intervals, st.sampled_from(BusyStatus))


@given(
    st.lists(intervals, max_size=4),
    st.lists(blocks, max_size=10),
    st.integers(0, 60),
    st.integers(0, 60),
    st.booleans(),
    st.randoms(use_true_random=False),
)
def test_free_time_is_candidate_time_minus_dilated_busy_time_in_any_block_order(
    within: list[Interval],
    busy: list[BusyBlock],
    before: int,
    after: int,
    tentative_as_busy: bool,
    shuffler: random.Random,
) -> None:
    # Busy [b0, b1) grows to [b0 − after, b1 + before) (design §6.2).
    expected = subtract(within, dilate(blocking(busy, tentative_as_busy), after * MINUTE, before * MINUTE))
    in_order = sorted(busy, key=lambda block: block.interval.start_us)
    shuffled = list(busy)
    shuffler.shuffle(shuffled)
    for listed in (in_order, shuffled):
        schedule = schedule_of(
            Member("ann@a.test", tuple(listed)),
            spans_of(normalize(within)),
            None,
            tentative_as_busy=tentative_as_busy,
            buffer_before_us=before * MINUTE // timedelta(microseconds=1),
            buffer_after_us=after * MINUTE // timedelta(microseconds=1),
        )
        assert intervals_of(schedule.free) == expected
