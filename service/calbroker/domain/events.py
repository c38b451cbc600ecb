"""Events an application books through calbroker: what it asks for, and what Exchange holds.

`EventSpec` is the validated request (design §5) with its documented limits; `UpstreamEvent` is
an event as Graph or EWS reports it; `event_marker` derives the idempotency key that both
protocols store on the events calbroker creates (Graph's `transactionId` and an extended property).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import timedelta
from enum import StrEnum

from calbroker.domain.busy import BusyStatus
from calbroker.domain.errors import InvalidRequest, LimitExceeded
from calbroker.domain.intervals import Interval

__all__ = [
    "MAX_ATTENDEES",
    "MAX_DESCRIPTION",
    "MAX_DURATION",
    "MAX_LOCATION",
    "MAX_NAME",
    "MAX_REMINDER_MINUTES",
    "MAX_SUMMARY",
    "MIN_DURATION",
    "Attendee",
    "AttendeeType",
    "EventSpec",
    "OnlineMeeting",
    "TeamsInfo",
    "TeamsStatus",
    "UpstreamEvent",
    "event_marker",
]

MAX_ATTENDEES = 250
"""Attendees per event. Exchange accepts more, but invitations to hundreds of people are a mailing,
not a meeting, and each one is a recipient Exchange must resolve within the request deadline."""
MAX_SUMMARY = 255
"""Graph's `subject` and EWS's `Subject` are shown in one line; Outlook truncates at 255."""
MAX_DESCRIPTION = 32_768
"""Characters of description: generous for an agenda, far below the 2 MiB request limit."""
MAX_LOCATION = 255
MAX_NAME = 255
MAX_DURATION = timedelta(days=31)
MIN_DURATION = timedelta(minutes=1)
"""Exchange keeps event times to the second at best (Graph's dateTimeTimeZone, EWS's xs:dateTime as
Exchange stores it); a shorter event could come back with its end at its start."""
MAX_REMINDER_MINUTES = 20_160
"""Two weeks: the longest reminder Outlook offers."""

# A fixed namespace so that (application, event_id, generation) always maps to the same UUID,
# on every replica and after restarts: the marker must survive the process that chose it.
_MARKER_NAMESPACE = uuid.UUID("5a0f3c2e-7d1b-5e8a-9c4f-0b6d2e1a3c57")


def event_marker(application_id: uuid.UUID, event_id: str, generation: int) -> uuid.UUID:
    """The idempotency key of one booking: Graph's `transactionId` and the EWS marker property.

    `generation` grows when a cancelled `event_id` is booked again, so the new booking is not
    mistaken for the cancelled one.
    """
    return uuid.uuid5(_MARKER_NAMESPACE, f"{application_id}/{generation}/{event_id}")


class AttendeeType(StrEnum):
    REQUIRED = "required"
    OPTIONAL = "optional"
    RESOURCE = "resource"
    """A room or equipment mailbox: Exchange books it (it accepts when free, declines when busy)."""


@dataclass(frozen=True, slots=True)
class Attendee:
    email: str
    type: AttendeeType = AttendeeType.REQUIRED
    name: str | None = None


class TeamsStatus(StrEnum):
    READY = "ready"
    PENDING = "pending"
    """Teams was asked for but Microsoft has not returned the join URL yet; a later read fills it."""


@dataclass(frozen=True, slots=True)
class TeamsInfo:
    status: TeamsStatus
    join_url: str | None = None


@dataclass(frozen=True, slots=True)
class OnlineMeeting:
    """A Teams meeting created on its own (hybrid tenants), not through a calendar event."""

    id: str
    join_url: str


def _limit(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise LimitExceeded(
            field=field, limit=limit, actual=len(value), message=f"at most {limit} characters (got {len(value)})"
        )


@dataclass(frozen=True, slots=True)
class EventSpec:
    """A booking as the application asked for it, validated against the documented limits.

    Addresses are expected normalised (lower case); `tzid` is the IANA zone the event is shown in.
    """

    organizer: str
    interval: Interval
    tzid: str
    summary: str
    description: str = ""
    location: str = ""
    attendees: tuple[Attendee, ...] = ()
    teams_meeting: bool = False
    show_as: BusyStatus = BusyStatus.BUSY
    reminder_minutes: int | None = None

    def __post_init__(self) -> None:
        _limit("summary", self.summary, MAX_SUMMARY)
        _limit("description", self.description, MAX_DESCRIPTION)
        _limit("location", self.location, MAX_LOCATION)
        if len(self.attendees) > MAX_ATTENDEES:
            raise LimitExceeded(
                field="attendees",
                limit=MAX_ATTENDEES,
                actual=len(self.attendees),
                message=f"at most {MAX_ATTENDEES} attendees per event (got {len(self.attendees)})",
            )
        if self.interval.duration < MIN_DURATION:
            raise InvalidRequest.field("end", "must be at least a minute after start")
        if self.interval.duration > MAX_DURATION:
            raise LimitExceeded(
                field="end",
                limit=f"{MAX_DURATION.days} days",
                actual=str(self.interval.duration),
                message=f"an event may last at most {MAX_DURATION.days} days",
            )
        if self.reminder_minutes is not None and not 0 <= self.reminder_minutes <= MAX_REMINDER_MINUTES:
            raise InvalidRequest.field("reminder_minutes", f"must be between 0 and {MAX_REMINDER_MINUTES}")
        seen: set[str] = set()
        for index, attendee in enumerate(self.attendees):
            if attendee.email == self.organizer:
                raise InvalidRequest.field(f"attendees[{index}].email", "the organizer is not listed as an attendee")
            if attendee.email in seen:
                raise InvalidRequest.field(f"attendees[{index}].email", f"{attendee.email} is listed twice")
            seen.add(attendee.email)
            if attendee.name is not None:
                _limit(f"attendees[{index}].name", attendee.name, MAX_NAME)

    def changed_fields(self, before: EventSpec) -> frozenset[str]:
        """Names of the fields that differ from `before`: what an update has to send upstream."""
        return frozenset(f.name for f in fields(self) if getattr(self, f.name) != getattr(before, f.name))

    def booked_mailboxes(self, internal: Iterable[str]) -> tuple[str, ...]:
        """Whose time this event takes, sorted: the organizer and the required and resource
        attendees among `internal` (optional attendees never block a booking)."""
        wanted = set(internal)
        taken = {self.organizer} | {
            a.email for a in self.attendees if a.type is not AttendeeType.OPTIONAL and a.email in wanted
        }
        return tuple(sorted(taken))


@dataclass(frozen=True, slots=True)
class UpstreamEvent:
    """One event as Exchange holds it (organizer's copy, attendee's copy or an occurrence)."""

    id: str
    interval: Interval
    summary: str
    organizer: str | None = None
    location: str = ""
    show_as: BusyStatus = BusyStatus.BUSY
    attendees: tuple[Attendee, ...] = ()
    ical_uid: str | None = None
    is_cancelled: bool = False
    is_all_day: bool = False
    is_online_meeting: bool = False
    join_url: str | None = None
    marker: str | None = None
    """The calbroker marker, when calbroker created the event (and the protocol returns it)."""
