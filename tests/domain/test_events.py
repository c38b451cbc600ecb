"""EventSpec's documented limits and the pure helpers the booking flow relies on."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from calbroker.domain.errors import InvalidRequest, LimitExceeded
from calbroker.domain.events import (
    MAX_ATTENDEES,
    MAX_SUMMARY,
    Attendee,
    AttendeeType,
    EventSpec,
    event_marker,
)
from calbroker.domain.intervals import Interval

START = datetime(2027, 4, 4, 9, tzinfo=UTC)
SPEC = EventSpec(
    organizer="adele.vance@contoso.com",
    interval=Interval(START, START + timedelta(minutes=30)),
    tzid="Europe/London",
    summary="Review",
    attendees=(
        Attendee("alex.wilber@contoso.com"),
        Attendee("megan.bowen@contoso.com", AttendeeType.OPTIONAL),
        Attendee("rainier@contoso.com", AttendeeType.RESOURCE),
        Attendee("guest@example.com"),
    ),
)


def test_marker_is_stable_and_distinct_per_application_event_and_generation() -> None:
    app = uuid.UUID("00000000-0000-0000-0000-000000000001")
    assert event_marker(app, "booking-1", 1) == event_marker(app, "booking-1", 1)
    others = {
        event_marker(app, "booking-2", 1),
        event_marker(app, "booking-1", 2),
        event_marker(uuid.UUID("00000000-0000-0000-0000-000000000002"), "booking-1", 1),
    }
    assert event_marker(app, "booking-1", 1) not in others
    assert len(others) == 3


def test_booked_mailboxes_are_the_organizer_and_internal_required_and_resource_attendees() -> None:
    internal = ["alex.wilber@contoso.com", "megan.bowen@contoso.com", "rainier@contoso.com"]
    assert SPEC.booked_mailboxes(internal) == (
        "adele.vance@contoso.com",
        "alex.wilber@contoso.com",
        "rainier@contoso.com",
    )


def test_changed_fields_name_what_an_update_must_send() -> None:
    moved = replace(SPEC, interval=Interval(START + timedelta(hours=1), START + timedelta(hours=2)), summary="Moved")
    assert moved.changed_fields(SPEC) == {"interval", "summary"}
    assert SPEC.changed_fields(SPEC) == frozenset()
    # The same instants in another offset are the same interval.
    shifted = replace(SPEC, interval=Interval(SPEC.interval.start.astimezone(), SPEC.interval.end.astimezone()))
    assert shifted.changed_fields(SPEC) == frozenset()


@pytest.mark.parametrize(
    ("changes", "error", "field"),
    [
        ({"summary": "x" * (MAX_SUMMARY + 1)}, LimitExceeded, "summary"),
        ({"description": "y" * 40_000}, LimitExceeded, "description"),
        ({"location": "z" * 300}, LimitExceeded, "location"),
        (
            {"attendees": tuple(Attendee(f"p{i}@example.com") for i in range(MAX_ATTENDEES + 1))},
            LimitExceeded,
            "attendees",
        ),
        ({"interval": Interval(START, START + timedelta(days=32))}, LimitExceeded, "end"),
        ({"reminder_minutes": 30_000}, InvalidRequest, "reminder_minutes"),
        ({"attendees": (Attendee("adele.vance@contoso.com"),)}, InvalidRequest, "attendees[0].email"),
        ({"attendees": (Attendee("a@example.com"), Attendee("a@example.com"))}, InvalidRequest, "attendees[1].email"),
    ],
)
def test_limits_name_the_field(changes: dict[str, object], error: type[InvalidRequest], field: str) -> None:
    with pytest.raises(error) as caught:
        replace(SPEC, **changes)  # type: ignore[arg-type]
    assert [e.field for e in caught.value.errors] == [field]
