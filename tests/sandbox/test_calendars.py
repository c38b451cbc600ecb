"""The calendar model on its own: recurrence across DST, exceptions, meeting propagation, rooms,
cancellation, free/busy digits and change listeners — the semantics every surface relies on."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calbroker.sandbox.calendars import CalendarStore, merged_view
from calbroker.sandbox.directory import Directory
from calbroker.sandbox.events import (
    EWS_DIGITS,
    GRAPH_DIGITS,
    Attendee,
    AttendeeType,
    BusyItem,
    CalendarError,
    Change,
    ChangeType,
    EventDraft,
    EventType,
    Response,
    ShowAs,
)
from calbroker.sandbox.recurrence import Recurrence
from calbroker.sandbox.seed import build_directory
from calbroker.sandbox.tls import load_key_material

NY = ZoneInfo("America/New_York")
ADELE, ALEX, LYNNE, ROOM = (
    "adele.vance@contoso.com",
    "alex.wilber@contoso.com",
    "lynne.robbins@contoso.com",
    "rainier@contoso.com",
)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Directory:
    keys = load_key_material(Path(tmp_path_factory.mktemp("keys")), "127.0.0.1")
    return build_directory(0, keys.app_certificate)


@pytest.fixture
def store(directory: Directory) -> CalendarStore:
    # An empty store over the seeded directory: every item below is made by the test.
    return CalendarStore(directory, clock=lambda: datetime(2026, 11, 1, tzinfo=UTC))


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_weekly_series_keeps_wall_clock_across_dst(store: CalendarStore) -> None:
    start = datetime(2026, 10, 19, 9, tzinfo=NY)
    recurrence = Recurrence("weekly", date(2026, 10, 19), "America/New_York", days_of_week=("monday",))
    store.create(LYNNE, EventDraft("Standup", start, start + timedelta(minutes=30), recurrence=recurrence))

    found = store.occurrences(LYNNE, utc(2026, 10, 25), utc(2026, 11, 10))

    assert [e.start_utc for e in found] == [utc(2026, 10, 26, 13), utc(2026, 11, 2, 14), utc(2026, 11, 9, 14)]
    assert {e.type for e in found} == {EventType.OCCURRENCE}


def test_exception_and_cancelled_occurrence(store: CalendarStore) -> None:
    start = datetime(2026, 11, 2, 9, tzinfo=NY)
    recurrence = Recurrence(
        "weekly",
        date(2026, 11, 2),
        "America/New_York",
        days_of_week=("monday",),
        range_type="numbered",
        number_of_occurrences=4,
    )
    master = store.create(LYNNE, EventDraft("Sync", start, start + timedelta(hours=1), recurrence=recurrence))
    second = store.occurrence_id(master.id, utc(2026, 11, 9, 14))
    third = store.occurrence_id(master.id, utc(2026, 11, 16, 14))

    store.update(
        LYNNE, second, {"start": start + timedelta(days=7, hours=2), "end": start + timedelta(days=7, hours=3)}
    )
    store.delete(LYNNE, third)
    found = store.occurrences(LYNNE, utc(2026, 11, 1), utc(2026, 12, 31))

    assert [(e.type, e.start_utc.hour) for e in found] == [
        (EventType.OCCURRENCE, 14),
        (EventType.EXCEPTION, 16),
        (EventType.OCCURRENCE, 14),
    ]
    exception = store.get(LYNNE, second)
    assert exception is not None
    assert exception.type is EventType.EXCEPTION
    assert store.get(LYNNE, third) is None


@pytest.mark.parametrize(
    ("recurrence", "expected"),
    [
        (
            Recurrence("relativeMonthly", date(2026, 1, 1), "UTC", days_of_week=("friday",), index="last"),
            [date(2026, 1, 30), date(2026, 2, 27), date(2026, 3, 27)],
        ),
        (
            Recurrence("absoluteMonthly", date(2026, 1, 31), "UTC", day_of_month=31),
            [date(2026, 1, 31), date(2026, 3, 31), date(2026, 5, 31)],
        ),
        (
            Recurrence("daily", date(2026, 1, 1), "UTC", interval=2, range_type="numbered", number_of_occurrences=3),
            [date(2026, 1, 1), date(2026, 1, 3), date(2026, 1, 5)],
        ),
    ],
)
def test_recurrence_patterns(recurrence: Recurrence, expected: list[date]) -> None:
    first = datetime.combine(expected[0], datetime.min.time(), UTC).replace(hour=10)
    starts = [s.date() for s in recurrence.starts(first, first + timedelta(days=400))][: len(expected)]
    assert starts == expected
    assert Recurrence.from_graph(recurrence.to_graph(), "UTC") == recurrence


@pytest.mark.parametrize(
    ("recurrence", "expected"),
    [
        # firstDayOfWeek decides which weeks an every-other-week series skips.
        (
            Recurrence("weekly", date(2026, 11, 1), "UTC", interval=2, days_of_week=("sunday", "monday")),
            [date(2026, 11, 1), date(2026, 11, 2), date(2026, 11, 15), date(2026, 11, 16)],
        ),
        (
            Recurrence(
                "weekly",
                date(2026, 11, 1),
                "UTC",
                interval=2,
                days_of_week=("sunday", "monday"),
                first_day_of_week="monday",
            ),
            [date(2026, 11, 1), date(2026, 11, 9), date(2026, 11, 15), date(2026, 11, 23)],
        ),
        (
            Recurrence("relativeYearly", date(2026, 1, 1), "UTC", days_of_week=("thursday",), month=11, index="last"),
            [date(2026, 11, 26), date(2027, 11, 25), date(2028, 11, 30)],
        ),
        (
            Recurrence("absoluteYearly", date(2026, 1, 1), "UTC", day_of_month=29, month=2),
            [date(2028, 2, 29), date(2032, 2, 29)],
        ),
        (
            Recurrence("daily", date(2026, 1, 1), "UTC", range_type="endDate", end_date=date(2026, 1, 3)),
            [date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3)],
        ),
    ],
)
def test_recurrence_expansion_follows_graph(recurrence: Recurrence, expected: list[date]) -> None:
    first = datetime.combine(recurrence.start_date, datetime.min.time(), UTC).replace(hour=9)
    until = datetime.combine(expected[-1], datetime.min.time(), UTC) + timedelta(days=1)
    assert [s.date() for s in recurrence.starts(first, until)] == expected


def test_meeting_reaches_attendees_and_rooms_decide(store: CalendarStore) -> None:
    start = utc(2026, 11, 24, 17)
    attendees = [Attendee(ALEX, "Alex"), Attendee(ROOM, "Rainier", AttendeeType.RESOURCE)]
    first = store.create(ADELE, EventDraft("Review", start, start + timedelta(hours=1), attendees=attendees))
    clash = store.create(ADELE, EventDraft("Clash", start, start + timedelta(hours=1), attendees=attendees))

    copy = store.find(ALEX, ical_uid=first.ical_uid)
    assert copy is not None
    assert copy.response is Response.NOT_RESPONDED
    assert copy.show_as is ShowAs.TENTATIVE
    assert {a.email: a.response for a in first.attendees}[ROOM] is Response.ACCEPTED
    assert {a.email: a.response for a in clash.attendees}[ROOM] is Response.DECLINED
    assert store.find(ROOM, ical_uid=clash.ical_uid) is None

    store.respond(ALEX, copy.id, Response.ACCEPTED)
    assert {a.email: a.response for a in first.attendees}[ALEX] is Response.ACCEPTED
    assert copy.show_as is ShowAs.BUSY


def test_organizer_delete_cancels_for_attendees(store: CalendarStore) -> None:
    start = utc(2026, 11, 25, 17)
    attendees = [Attendee(ALEX, "Alex"), Attendee(ROOM, "Rainier", AttendeeType.RESOURCE)]
    meeting = store.create(ADELE, EventDraft("Doomed", start, start + timedelta(hours=1), attendees=attendees))
    copy = store.find(ALEX, ical_uid=meeting.ical_uid)
    assert copy is not None

    with pytest.raises(CalendarError, match="organizer"):
        store.cancel(ALEX, copy.id)
    store.cancel(ADELE, meeting.id, "no longer needed")

    assert store.get(ADELE, meeting.id) is None
    assert copy.is_cancelled
    assert copy.subject == "Canceled: Doomed"
    assert store.find(ROOM, ical_uid=meeting.ical_uid) is None
    assert store.free_busy(ALEX, start, start + timedelta(hours=1)) == []


def test_availability_view_digits_differ_only_for_working_elsewhere(store: CalendarStore) -> None:
    day = utc(2026, 11, 26)
    for hour, show_as in (
        (1, ShowAs.WORKING_ELSEWHERE),
        (2, ShowAs.TENTATIVE),
        (3, ShowAs.BUSY),
        (4, ShowAs.OOF),
        (5, ShowAs.FREE),
    ):
        store.create(
            ALEX,
            EventDraft(show_as.value, day + timedelta(hours=hour), day + timedelta(hours=hour + 1), show_as=show_as),
        )
    store.create(
        ALEX, EventDraft("overlap", day + timedelta(hours=2, minutes=30), day + timedelta(hours=3), show_as=ShowAs.OOF)
    )

    graph = store.availability_view(ALEX, day, day + timedelta(hours=7), timedelta(hours=1), digits=GRAPH_DIGITS)
    ews = store.availability_view(ALEX, day, day + timedelta(hours=7), timedelta(hours=1), digits=EWS_DIGITS)

    assert graph == "0032300"
    assert ews == "0432300"
    assert [i.status for i in store.free_busy(ALEX, day, day + timedelta(hours=7))] == [
        ShowAs.WORKING_ELSEWHERE,
        ShowAs.TENTATIVE,
        ShowAs.OOF,
        ShowAs.BUSY,
        ShowAs.OOF,
    ]


def test_transaction_id_and_change_log(store: CalendarStore) -> None:
    seen: list[Change] = []
    store.add_listener(seen.append)
    start = utc(2026, 11, 27, 15)
    first = store.create(
        ADELE, EventDraft("Once", start, start + timedelta(hours=1), transaction_id="t-1", attendees=[Attendee(ALEX)])
    )
    again = store.create(ADELE, EventDraft("Once", start, start + timedelta(hours=1), transaction_id="t-1"))
    store.update(ADELE, first.id, {"subject": "Once more"})

    assert again is first
    assert [(c.mailbox, c.change_type) for c in seen] == [
        (ADELE, ChangeType.CREATED),
        (ALEX, ChangeType.CREATED),
        (ADELE, ChangeType.UPDATED),
        (ALEX, ChangeType.UPDATED),
    ]
    assert [c.change_type for c in store.changes_since(ALEX, seen[1].sequence)] == [ChangeType.UPDATED]
    with pytest.raises(CalendarError):
        store.update(ADELE, first.id, {"color": "red"})


def test_attendee_sees_the_organizers_exception_under_its_own_ids(store: CalendarStore) -> None:
    start = datetime(2026, 11, 2, 9, tzinfo=NY)
    recurrence = Recurrence("weekly", date(2026, 11, 2), "America/New_York", days_of_week=("monday",))
    master = store.create(
        LYNNE, EventDraft("Sync", start, start + timedelta(hours=1), recurrence=recurrence, attendees=[Attendee(ALEX)])
    )
    store.update(LYNNE, store.occurrence_id(master.id, utc(2026, 11, 9, 14)), {"subject": "Special sync"})

    copy = store.find(ALEX, ical_uid=master.ical_uid)
    assert copy is not None
    found = store.occurrences(ALEX, utc(2026, 11, 9), utc(2026, 11, 10))
    assert [(e.subject, e.series_master_id) for e in found] == [("Special sync", copy.id)]
    assert store.get(ALEX, found[0].id) is not None


_BASE = datetime(2026, 1, 5, tzinfo=UTC)
_OFFSETS = st.integers(min_value=-300, max_value=4000).map(lambda m: _BASE + timedelta(minutes=m))


def _slot_by_slot(items: list[BusyItem], start: datetime, end: datetime, interval: timedelta) -> str:
    """The definition: every slot from `start` (the last one whole, past `end`) shows its strongest status."""
    rank = {
        ShowAs.OOF: 5,
        ShowAs.BUSY: 4,
        ShowAs.TENTATIVE: 3,
        ShowAs.WORKING_ELSEWHERE: 2,
        ShowAs.FREE: 1,
        ShowAs.UNKNOWN: 0,
    }
    view, slot = [], start
    while slot < end:
        best = max((i.status for i in items if i.start < slot + interval and i.end > slot), key=rank.get, default=None)
        view.append(GRAPH_DIGITS[best if best is not None and rank[best] > 1 else ShowAs.FREE])
        slot += interval
    return "".join(view)


@given(
    items=st.lists(st.tuples(_OFFSETS, st.integers(min_value=0, max_value=600), st.sampled_from(ShowAs)), max_size=12),
    start=_OFFSETS,
    length=st.integers(min_value=-30, max_value=3000),
    interval=st.sampled_from([5, 15, 30, 45, 60, 1440]),
)
def test_the_merged_view_touches_only_overlapped_slots_and_matches_the_definition(
    items: list[tuple[datetime, int, ShowAs]], start: datetime, length: int, interval: int
) -> None:
    busy = [
        BusyItem(
            start=s,
            end=s + timedelta(minutes=minutes),
            status=status,
            subject="",
            location="",
            is_private=False,
            is_meeting=False,
            is_recurring=False,
            is_exception=False,
            is_reminder_set=False,
            event_id=str(n),
        )
        for n, (s, minutes, status) in enumerate(items)
    ]
    end, step = start + timedelta(minutes=length), timedelta(minutes=interval)
    assert merged_view(busy, start, end, step) == _slot_by_slot(busy, start, end, step)
