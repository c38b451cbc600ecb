"""Hypothesis strategies for domain values on whole minutes, aimed at DST transitions on purpose."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import strategies as st

from calbroker.domain import (
    AvailabilityQuery,
    BusyBlock,
    BusyStatus,
    Group,
    Interval,
    Member,
    ResponseFormat,
    Weekday,
    WeeklyPeriod,
    WorkingHours,
)

ZONES = ("UTC", "Europe/London", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata")

# Instants where a zone's offset changes (or, for Kolkata, an ordinary day at +05:30).
TRANSITIONS = (
    (datetime(2025, 3, 9, 7, tzinfo=UTC), "America/New_York"),  # 02:00 → 03:00
    (datetime(2025, 11, 2, 6, tzinfo=UTC), "America/New_York"),  # 02:00 → 01:00
    (datetime(2025, 3, 30, 1, tzinfo=UTC), "Europe/London"),  # 01:00 → 02:00
    (datetime(2025, 10, 26, 1, tzinfo=UTC), "Europe/London"),  # 02:00 → 01:00
    (datetime(2025, 4, 5, 15, tzinfo=UTC), "Australia/Lord_Howe"),  # 02:00 → 01:30
    (datetime(2025, 10, 4, 15, 30, tzinfo=UTC), "Australia/Lord_Howe"),  # 02:00 → 02:30
    (datetime(2025, 6, 16, 3, tzinfo=UTC), "Asia/Kolkata"),
)

EMAILS = ("ann@a.test", "bob@a.test", "cat@b.test", "dan@b.test")

MINUTE = timedelta(minutes=1)

# Wall-clock times that fall in or next to DST gaps and overlaps, plus any minute of the day.
times_of_day = st.one_of(
    st.sampled_from([time(0, 0), time(1, 0), time(1, 30), time(2, 0), time(2, 30), time(3, 0), time(9, 0)]),
    st.builds(time, st.integers(0, 23), st.integers(0, 59)),
)


@st.composite
def weekly_periods(draw: st.DrawFn) -> WeeklyPeriod:
    start = draw(times_of_day)
    end = draw(st.one_of(st.none(), times_of_day.filter(lambda end: end > start)))
    return WeeklyPeriod(draw(st.sampled_from(Weekday)), start, end)


@st.composite
def every_day(draw: st.DrawFn) -> tuple[WeeklyPeriod, ...]:
    """The same hours each day, so that a short window is likely to meet them."""
    period = draw(weekly_periods())
    return tuple(WeeklyPeriod(day, period.start, period.end) for day in Weekday)


def working_hours(zone: str | None = None) -> st.SearchStrategy[WorkingHours]:
    zones = st.sampled_from(ZONES) if zone is None else st.one_of(st.just(zone), st.sampled_from(ZONES))
    return st.builds(
        WorkingHours,
        st.one_of(st.lists(weekly_periods(), min_size=0, max_size=8).map(tuple), every_day()),
        zones.map(ZoneInfo),
    )


@st.composite
def windows_near_transitions(draw: st.DrawFn, max_hours: int = 30) -> tuple[datetime, int, str]:
    """(origin, length in minutes, zone of the transition near it)."""
    anchor, zone = draw(st.sampled_from(TRANSITIONS))
    origin = anchor - draw(st.integers(0, 20 * 60)) * MINUTE
    return origin, draw(st.integers(60, max_hours * 60)), zone


def _interval(origin: datetime, start_minute: int, length: int) -> Interval:
    return Interval(origin + start_minute * MINUTE, origin + (start_minute + length) * MINUTE)


@st.composite
def queries(draw: st.DrawFn, response_format: ResponseFormat = ResponseFormat.SLOTS) -> AvailabilityQuery:
    """Small queries (a day or so, four members at most) with every §6 feature in play."""
    origin, horizon, zone = draw(windows_near_transitions())

    def interval_around(max_length: int, min_length: int = 1) -> Interval:
        return _interval(origin, draw(st.integers(-180, horizon)), draw(st.integers(min_length, max_length)))

    def busy_interval() -> Interval:
        """Mostly meetings, sometimes a multi-day out-of-office that others sit inside."""
        if draw(st.integers(0, 9)) == 0:
            return _interval(origin, draw(st.integers(-3000, horizon)), draw(st.integers(600, 3000)))
        return interval_around(180)

    periods: list[Interval] = []
    for _ in range(draw(st.integers(1, 3))):
        touch_previous = draw(st.booleans())
        if periods and touch_previous:
            # Touching the previous period on purpose: they must merge.
            previous = periods[-1]
            periods.append(Interval(previous.end, previous.end + draw(st.integers(15, 600)) * MINUTE))
        else:
            start = draw(st.integers(0, horizon - 30))
            periods.append(_interval(origin, start, draw(st.integers(30, horizon - start + 30))))

    groups = []
    for _ in range(draw(st.integers(1, 3))):
        chosen = draw(st.lists(st.sampled_from(EMAILS), min_size=1, max_size=3, unique=True))
        required = draw(st.one_of(st.none(), st.integers(1, len(chosen))))
        groups.append(Group(tuple(chosen), required))

    emails = sorted({email for group in groups for email in group.members})
    members: dict[str, Member] = {}
    for email in emails:
        busy = tuple(
            BusyBlock(busy_interval(), draw(st.sampled_from(BusyStatus))) for _ in range(draw(st.integers(0, 5)))
        )
        available = draw(st.sampled_from([None, None, None, 0, 1, 2, 3]))
        members[email] = Member(
            email,
            busy,
            None if available is None else tuple(interval_around(horizon + 180, 60) for _ in range(available)),
            draw(st.one_of(st.none(), working_hours(zone))),
            draw(st.sampled_from([None] * 7 + ["mailbox_out_of_scope"])),
        )

    minimum_notice = draw(st.one_of(st.just(0), st.integers(0, 300)))
    maximum_advance = draw(st.one_of(st.none(), st.none(), st.integers(minimum_notice + 1, minimum_notice + 48 * 60)))
    return AvailabilityQuery(
        groups=tuple(groups),
        members=members,
        duration=draw(st.one_of(st.sampled_from([15, 30, 45, 60]), st.integers(1, 150))) * MINUTE,
        query_periods=tuple(periods),
        now=origin + draw(st.integers(-12 * 60, horizon // 3)) * MINUTE,
        tz=ZoneInfo(draw(st.one_of(st.just(zone), st.sampled_from(ZONES)))),
        start_interval=draw(
            st.one_of(
                st.none(),
                st.sampled_from([5, 7, 15, 25, 30, 45, 50, 60, 90]).map(lambda minutes: minutes * MINUTE),
            )
        ),
        buffer_before=draw(st.one_of(st.just(0), st.integers(0, 60))) * MINUTE,
        buffer_after=draw(st.one_of(st.just(0), st.integers(0, 60))) * MINUTE,
        apply_working_hours=draw(st.booleans()),
        minimum_notice=minimum_notice * MINUTE,
        maximum_advance=None if maximum_advance is None else maximum_advance * MINUTE,
        tentative_as_busy=draw(st.booleans()),
        response_format=response_format,
        max_results=draw(st.one_of(st.integers(1, 12), st.just(1024))),
    )
