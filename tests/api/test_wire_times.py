"""Times written in the request's zone exactly as the UTC datetime converted to it; slots as instants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from calbroker.api.availability import _slots_out
from calbroker.api.wire import ZonedInstants
from calbroker.domain import Slot
from calbroker.domain.errors import InvalidRequest
from calbroker.domain.intervals import MICROSECOND, from_us, to_us

# Zones with DST (both hemispheres), a half-hour offset, a 45-minute one, a zone that skipped a day
# (Pacific/Apia, 2011) and Monrovia's pre-1972 offset with seconds.
ZONES = ["UTC", "Europe/London", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "Asia/Kathmandu",
         "Pacific/Apia", "Africa/Monrovia"]  # fmt: skip
FIRST_US = to_us(datetime(1970, 1, 1, tzinfo=UTC))
LAST_US = to_us(datetime(2099, 12, 31, tzinfo=UTC))
# 2026's transitions in London and New York, where a wall time repeats (fold=1) or is skipped.
EDGES = [
    to_us(datetime(2026, 3, 29, 1, tzinfo=UTC)),
    to_us(datetime(2026, 10, 25, 1, tzinfo=UTC)),
    to_us(datetime(2026, 3, 8, 7, tzinfo=UTC)),
    to_us(datetime(2026, 11, 1, 6, tzinfo=UTC)),
]


@given(
    zone=st.sampled_from(ZONES),
    moment=st.one_of(
        st.integers(FIRST_US, LAST_US),
        st.builds(lambda edge, near: edge + near, st.sampled_from(EDGES), st.integers(-7_200_000_000, 7_200_000_000)),
    ),
    before=st.integers(0, 62 * 86_400_000_000),
)
def test_an_instant_in_a_zone_is_written_as_the_utc_datetime_converted(zone: str, moment: int, before: int) -> None:
    tz = ZoneInfo(zone)
    local = ZonedInstants(tz, moment - before, moment + 1)
    expected = from_us(moment).astimezone(tz)
    made = local(moment)
    assert to_us(made) == moment  # not ==: Python never calls a repeated wall time equal across tzinfos (PEP 495)
    assert (made.replace(tzinfo=None), made.utcoffset()) == (expected.replace(tzinfo=None), expected.utcoffset())
    assert msgspec.json.encode(made) == msgspec.json.encode(expected)
    if local.epoch is not None:
        assert local.epoch + MICROSECOND * moment == made


def test_the_repeated_hour_keeps_its_two_offsets() -> None:
    first = to_us(datetime(2026, 10, 25, 0, 30, tzinfo=UTC))
    second = first + 3_600_000_000
    local = ZonedInstants(ZoneInfo("Europe/London"), first, second)
    assert local.epoch is None
    assert msgspec.json.encode([local(first), local(second)]) == b'["2026-10-25T01:30:00+01:00","2026-10-25T01:30:00Z"]'


def test_a_slot_is_its_instants_and_members() -> None:
    start = datetime(2026, 11, 24, 9, tzinfo=UTC)
    slot = Slot(start, start + timedelta(minutes=30), ("a@contoso.com",))
    assert (slot.start, slot.end, slot.members) == (start, start + timedelta(minutes=30), ("a@contoso.com",))
    assert slot == Slot.at(to_us(start), to_us(start) + 1_800_000_000, ("a@contoso.com",))


def test_a_slot_must_end_after_it_starts() -> None:
    start = datetime(2026, 11, 24, 9, tzinfo=UTC)
    with pytest.raises(InvalidRequest):
        Slot(start, start, ())


@given(
    zone=st.sampled_from(ZONES),
    first=st.one_of(
        st.integers(FIRST_US, LAST_US - 63 * 86_400_000_000),
        st.builds(lambda edge, near: edge + near, st.sampled_from(EDGES), st.integers(-7_200_000_000, 7_200_000_000)),
    ),
    shape=st.lists(
        st.tuples(st.integers(0, 3).map(lambda gap: gap * 900_000_000), st.sampled_from([1, 30, 45, 60, 90])),
        min_size=1,
        max_size=40,
    ),
    sets=st.lists(st.sampled_from(["a@contoso.com", "b@contoso.com", "c@contoso.com"]), min_size=1, max_size=3),
)
def test_an_answer_writes_each_slot_as_its_instants_converted(
    zone: str, first: int, shape: list[tuple[int, int]], sets: list[str]
) -> None:
    """Back-to-back or apart, one length or several, across an offset change: sharing instants and
    member lists between slots must write exactly what converting each slot on its own writes."""
    tz = ZoneInfo(zone)
    members = tuple(sorted(set(sets)))
    slots, at = [], first
    for gap, minutes in shape:
        start = at + gap
        at = start + minutes * 60_000_000
        slots.append(Slot.at(start, at, members if gap else members[:1]))
    expected = [
        {"start": from_us(s).astimezone(tz), "end": from_us(e).astimezone(tz), "members": list(m)} for s, e, m in slots
    ]
    assert msgspec.json.encode(_slots_out(slots, tz)) == msgspec.json.encode(expected)
