"""The availability engine (design §6) against the per-minute oracle, plus hand-checked examples."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given

from calbroker.domain import (
    AvailabilityQuery,
    BlockReason,
    BusyBlock,
    BusyStatus,
    Group,
    Interval,
    Member,
    ResponseFormat,
    Slot,
    Weekday,
    WeeklyPeriod,
    WorkingHours,
    blocking,
    find_availability,
)
from calbroker.domain.errors import InvalidRequest, LimitExceeded

from .reference import MINUTE, Found, Oracle
from .strategies import queries

DAY = datetime(2025, 6, 16, tzinfo=UTC)  # a Monday
ANN, BOB, CAT = "ann@a.test", "bob@a.test", "cat@b.test"


def at(hour: int, minute: int = 0, day: datetime = DAY) -> datetime:
    return day + timedelta(hours=hour, minutes=minute)


def busy(start: datetime, end: datetime, status: BusyStatus = BusyStatus.BUSY) -> BusyBlock:
    return BusyBlock(Interval(start, end), status)


def query(*members: Member, **options: Any) -> AvailabilityQuery:
    """A 09:00–12:00 UTC query for 30 minutes with everyone required, unless options say otherwise."""
    fields: dict[str, Any] = {
        "groups": (Group(tuple(member.email for member in members)),),
        "members": {member.email: member for member in members},
        "duration": 30 * MINUTE,
        "query_periods": (Interval(at(9), at(12)),),
        "now": at(0),
    }
    fields.update(options)
    return AvailabilityQuery(**fields)


def starts(slots: tuple[Slot, ...]) -> list[datetime]:
    return [slot.start for slot in slots]


def as_found(slots: tuple[Slot, ...]) -> list[Found]:
    return [Found(slot.start, slot.end, slot.members) for slot in slots]


# Properties: the engine agrees with the oracle on queries that use every feature at once.


@given(queries())
def test_slots_match_the_per_minute_oracle(availability: AvailabilityQuery) -> None:
    result = find_availability(availability)
    assert as_found(result.slots) == Oracle(availability).slots()
    assert result.periods == ()


@given(queries(ResponseFormat.PERIODS))
def test_periods_match_the_brute_force_oracle(availability: AvailabilityQuery) -> None:
    result = find_availability(availability)
    assert as_found(result.periods) == Oracle(availability).periods()
    assert result.slots == ()


@given(queries())
def test_explanations_name_every_blocker_of_the_first_rejected_candidates(
    availability: AvailabilityQuery,
) -> None:
    availability = dataclasses.replace(availability, explain=True)
    oracle = Oracle(availability)
    explanations = find_availability(availability).explanations
    expected = oracle.rejected_starts()[: availability.max_results]
    assert [explanation.start for explanation in explanations] == expected
    for explanation in explanations:
        assert explanation.end == explanation.start + availability.duration
        assert explanation.blockers, "a rejected slot always has a reason"
        assert [(b.reason.value, b.member, b.busy, b.detail) for b in explanation.blockers] == oracle.blockers(
            explanation.start
        )


# Busy status (§6.1).


def test_blocking_keeps_busy_oof_and_by_default_tentative() -> None:
    blocks = [
        busy(at(9), at(10), BusyStatus.BUSY),
        busy(at(11), at(12), BusyStatus.OOF),
        busy(at(13), at(14), BusyStatus.TENTATIVE),
        busy(at(15), at(16), BusyStatus.FREE),
        busy(at(17), at(18), BusyStatus.WORKING_ELSEWHERE),
    ]
    assert blocking(blocks) == (Interval(at(9), at(10)), Interval(at(11), at(12)), Interval(at(13), at(14)))
    assert blocking(blocks, tentative_as_busy=False) == (Interval(at(9), at(10)), Interval(at(11), at(12)))


def test_busy_status_wire_values() -> None:
    assert [status.value for status in BusyStatus] == ["free", "tentative", "busy", "oof", "working_elsewhere"]


# Slots (§6.4) by example.


def test_slots_list_the_members_free_over_each_slot() -> None:
    ann = Member(ANN, (busy(at(9), at(10)),))
    bob = Member(BOB, (busy(at(10, 30), at(11)),))
    result = find_availability(query(ann, bob, groups=(Group((ANN, BOB), required=1),)))
    assert [(s.start, s.members) for s in result.slots] == [
        (at(9), (BOB,)),
        (at(9, 30), (BOB,)),
        (at(10), (ANN, BOB)),
        (at(10, 30), (ANN,)),
        (at(11), (ANN, BOB)),
        (at(11, 30), (ANN, BOB)),
    ]
    assert all(slot.end - slot.start == 30 * MINUTE for slot in result.slots)


def test_every_group_must_be_satisfied() -> None:
    ann = Member(ANN, (busy(at(9), at(10)),))
    bob = Member(BOB, (busy(at(11), at(12)),))
    cat = Member(CAT)
    groups = (Group((ANN, BOB), required=1), Group((CAT, ANN)))
    assert starts(find_availability(query(ann, bob, cat, groups=groups)).slots) == [
        at(10),
        at(10, 30),
        at(11),
        at(11, 30),
    ]


def test_buffers_keep_slots_away_from_busy_time() -> None:
    ann = Member(ANN, (busy(at(10), at(10, 30)),))
    plain = find_availability(query(ann))
    assert starts(plain.slots) == [at(9), at(9, 30), at(10, 30), at(11), at(11, 30)]
    # A 15-minute before-buffer: the slot right after the meeting would start inside it.
    before = find_availability(query(ann, buffer_before=15 * MINUTE, start_interval=15 * MINUTE))
    assert at(10, 30) not in starts(before.slots)
    assert at(10, 45) in starts(before.slots)
    assert at(9, 30) in starts(before.slots)
    # A 15-minute after-buffer: the slot ending when the meeting starts would run into it.
    after = find_availability(query(ann, buffer_after=15 * MINUTE, start_interval=15 * MINUTE))
    assert at(9, 30) not in starts(after.slots)
    assert at(9, 15) in starts(after.slots)
    assert at(10, 30) in starts(after.slots)


def test_tentative_blocks_only_when_asked() -> None:
    ann = Member(ANN, (busy(at(9), at(11, 30), BusyStatus.TENTATIVE),))
    assert starts(find_availability(query(ann)).slots) == [at(11, 30)]
    assert len(find_availability(query(ann, tentative_as_busy=False)).slots) == 6


def test_an_unreadable_member_is_free_nowhere() -> None:
    ann = Member(ANN)
    bob = Member(BOB, unavailable_reason="mailbox_out_of_scope")
    assert find_availability(query(ann, bob)).slots == ()
    anyone = find_availability(query(ann, bob, groups=(Group((ANN, BOB), required=1),)))
    assert len(anyone.slots) == 6
    assert {slot.members for slot in anyone.slots} == {(ANN,)}


def test_minimum_notice_and_maximum_advance_bound_the_slots() -> None:
    ann = Member(ANN)
    result = find_availability(query(ann, now=at(8), minimum_notice=90 * MINUTE, maximum_advance=3 * 60 * MINUTE))
    assert starts(result.slots) == [at(9, 30), at(10), at(10, 30)]


def test_available_periods_limit_a_member() -> None:
    ann = Member(ANN, available_periods=(Interval(at(10), at(11)), Interval(at(11, 15), at(12))))
    assert starts(find_availability(query(ann)).slots) == [at(10), at(10, 30), at(11, 30)]
    assert find_availability(query(Member(ANN, available_periods=()))).slots == ()


def test_working_hours_apply_in_the_members_zone_only_when_asked() -> None:
    kolkata = WorkingHours(tuple(WeeklyPeriod(day, time(15), time(17)) for day in Weekday), ZoneInfo("Asia/Kolkata"))
    ann = Member(ANN, working_hours=kolkata)  # 15:00–17:00 IST is 09:30–11:30 UTC
    assert starts(find_availability(query(ann, apply_working_hours=True)).slots) == [
        at(9, 30),
        at(10),
        at(10, 30),
        at(11),
    ]
    assert len(find_availability(query(ann)).slots) == 6


def test_query_periods_that_touch_are_merged() -> None:
    ann = Member(ANN)
    result = find_availability(
        query(
            ann,
            query_periods=(Interval(at(9), at(9, 45)), Interval(at(9, 45), at(10, 30))),
            duration=60 * MINUTE,
            start_interval=30 * MINUTE,
        )
    )
    assert starts(result.slots) == [at(9), at(9, 30)]


def test_start_grid_follows_local_midnight_in_the_query_zone() -> None:
    # 50 minutes does not divide the day: 22:30 and 23:20 local (CEST), then 00:00 again, not 00:10.
    ann = Member(ANN)
    result = find_availability(
        query(
            ann,
            query_periods=(Interval(at(20), at(23, 30)),),
            tz=ZoneInfo("Europe/Paris"),
            start_interval=50 * MINUTE,
            duration=20 * MINUTE,
        )
    )
    assert starts(result.slots) == [at(20, 30), at(21, 20), at(22), at(22, 50)]


def test_start_grid_has_both_occurrences_of_a_repeated_hour() -> None:
    ann = Member(ANN)
    fall_back = datetime(2025, 10, 26, tzinfo=UTC)  # London: 02:00 BST becomes 01:00 GMT at 01:00Z
    result = find_availability(
        query(
            ann,
            query_periods=(Interval(at(-1, 0, fall_back), at(3, 0, fall_back)),),
            tz=ZoneInfo("Europe/London"),
            duration=60 * MINUTE,
            now=at(-12, 0, fall_back),
        )
    )
    local = [slot.start.astimezone(ZoneInfo("Europe/London")).strftime("%H:%M%z") for slot in result.slots]
    assert local == ["00:00+0100", "01:00+0100", "01:00+0000", "02:00+0000"]


def test_max_results_truncates_in_start_order() -> None:
    ann = Member(ANN)
    assert starts(find_availability(query(ann, max_results=2)).slots) == [at(9), at(9, 30)]


# Periods (§6.5) by example.


def test_periods_report_each_maximal_stretch_with_exactly_who_is_free() -> None:
    ann = Member(ANN, available_periods=(Interval(at(9), at(12)),))
    bob = Member(BOB, available_periods=(Interval(at(10), at(11)),))
    result = find_availability(
        query(
            ann,
            bob,
            groups=(Group((ANN, BOB), required=1),),
            query_periods=(Interval(at(8), at(13)),),
            response_format=ResponseFormat.PERIODS,
        )
    )
    assert as_found(result.periods) == [
        Found(at(9), at(12), (ANN,)),
        Found(at(10), at(11), (ANN, BOB)),
    ]


def test_periods_shorter_than_the_duration_are_left_out() -> None:
    ann = Member(ANN, (busy(at(9, 20), at(9, 40)),))
    result = find_availability(query(ann, response_format=ResponseFormat.PERIODS))
    assert as_found(result.periods) == [Found(at(9, 40), at(12), (ANN,))]


# Explanations (§6.6) by example.


def test_explanations_name_the_member_and_the_busy_block_or_rule() -> None:
    meeting = busy(at(9), at(10), BusyStatus.TENTATIVE)
    ann = Member(ANN, (meeting,))
    bob = Member(
        BOB, working_hours=WorkingHours((WeeklyPeriod(Weekday.MONDAY, time(9, 30), time(12)),), ZoneInfo("UTC"))
    )
    cat = Member(CAT, unavailable_reason="mailbox_not_found")
    result = find_availability(
        query(
            ann,
            bob,
            cat,
            groups=(Group((ANN, BOB)), Group((CAT, ANN), required=1)),
            apply_working_hours=True,
            explain=True,
            now=at(8, 45),
            minimum_notice=30 * MINUTE,
        )
    )
    assert starts(result.slots) == [at(10), at(10, 30), at(11), at(11, 30)]
    [first, second] = result.explanations
    assert first.start == at(9)
    assert [(b.reason, b.member) for b in first.blockers] == [
        (BlockReason.MINIMUM_NOTICE, None),
        (BlockReason.BUSY, ANN),
        (BlockReason.WORKING_HOURS, BOB),
        (BlockReason.MEMBER_UNAVAILABLE, CAT),
    ]
    assert first.blockers[1].busy == meeting
    assert second.start == at(9, 30)
    assert [(b.reason, b.member) for b in second.blockers] == [
        (BlockReason.BUSY, ANN),
        (BlockReason.MEMBER_UNAVAILABLE, CAT),
    ]


def test_explanations_blame_only_groups_left_short() -> None:
    # Ann is busy too, but Bob covers her group; only Cat's group was short.
    ann = Member(ANN, (busy(at(9), at(12)),))
    bob = Member(BOB)
    cat = Member(CAT, (busy(at(9), at(9, 30)),))
    result = find_availability(
        query(ann, bob, cat, groups=(Group((ANN, BOB), required=1), Group((CAT,))), explain=True)
    )
    [explanation] = result.explanations
    assert explanation.start == at(9)
    assert [(b.reason, b.member) for b in explanation.blockers] == [(BlockReason.BUSY, CAT)]


def test_explanations_find_a_long_block_behind_a_short_one() -> None:
    holiday = busy(at(-48), at(48), BusyStatus.OOF)
    early = busy(at(8), at(8, 30))  # starts after the holiday, ends before the slot
    result = find_availability(query(Member(ANN, (early, holiday)), explain=True, max_results=1))
    assert [b.busy for b in result.explanations[0].blockers] == [holiday]


def test_explanations_name_maximum_advance_for_a_slot_that_ends_too_late() -> None:
    ann = Member(ANN)
    result = find_availability(
        query(
            ann,
            now=at(8),
            maximum_advance=3 * 60 * MINUTE,
            duration=60 * MINUTE,
            start_interval=30 * MINUTE,
            explain=True,
        )
    )
    assert starts(result.slots) == [at(9), at(9, 30), at(10)]
    assert [(e.start, [b.reason for b in e.blockers]) for e in result.explanations] == [
        (at(10, 30), [BlockReason.MAXIMUM_ADVANCE]),
        (at(11), [BlockReason.MAXIMUM_ADVANCE]),
    ]


def test_explanations_name_an_unreadable_member() -> None:
    bob = Member(BOB, unavailable_reason="mailbox_not_found")
    result = find_availability(query(bob, explain=True, max_results=1))
    [explanation] = result.explanations
    assert [(b.reason, b.member, b.detail) for b in explanation.blockers] == [
        (BlockReason.MEMBER_UNAVAILABLE, BOB, "mailbox_not_found")
    ]


def test_no_explanations_unless_asked() -> None:
    ann = Member(ANN, (busy(at(9), at(12)),))
    assert find_availability(query(ann)).explanations == ()


# Validation: limits are named, and impossible queries cannot be built.


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"groups": tuple(Group((ANN,)) for _ in range(11))}, "participants"),
        ({"max_results": 1025}, "max_results"),
        ({"query_periods": (Interval(at(0), at(0) + timedelta(days=62, minutes=1)),)}, "query_periods"),
        (
            {"query_periods": tuple(Interval(at(0) + n * MINUTE, at(0) + (n + 1) * MINUTE) for n in range(51))},
            "query_periods",
        ),
    ],
)
def test_limits_are_refused_with_the_field_named(options: dict[str, object], field: str) -> None:
    with pytest.raises(LimitExceeded) as raised:
        query(Member(ANN), **options)
    assert raised.value.errors[0].field == field


def test_more_than_500_members_is_a_limit() -> None:
    members = [Member(f"p{n}@a.test") for n in range(501)]
    with pytest.raises(LimitExceeded) as raised:
        query(*members)
    assert raised.value.limit == 500
    assert raised.value.actual == 501


@pytest.mark.parametrize(
    "options",
    [
        {"duration": timedelta(minutes=30, seconds=1)},
        {"duration": timedelta(0)},
        {"start_interval": timedelta(seconds=90)},
        {"buffer_before": -MINUTE},
        {"minimum_notice": -MINUTE},
        {"maximum_advance": timedelta(0)},
        {"max_results": 0},
        {"now": datetime(2025, 6, 16, 9)},
        {"query_periods": ()},
        {"groups": ()},
        {"groups": (Group((ANN, BOB)),)},
    ],
)
def test_impossible_queries_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        query(Member(ANN), **options)


@pytest.mark.parametrize(("members", "required"), [((ANN,), 2), ((ANN,), 0), ((ANN, ANN), None), ((), None)])
def test_impossible_groups_are_refused(members: tuple[str, ...], required: int | None) -> None:
    with pytest.raises(InvalidRequest):
        Group(members, required)
