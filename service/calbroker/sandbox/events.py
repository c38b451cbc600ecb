"""Calendar value types: events as Exchange stores them, what clients ask for, free/busy entries, changes.

Graph names (`showAs`, `responseStatus`, `type` …) are kept as enum values so the Graph surface can
serialise them directly (https://learn.microsoft.com/graph/api/resources/event).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from calbroker.sandbox.recurrence import Recurrence

__all__ = [
    "EWS_DIGITS",
    "GRAPH_DIGITS",
    "Attendee",
    "AttendeeType",
    "BusyItem",
    "CalendarError",
    "CalendarFolder",
    "Change",
    "ChangeType",
    "Event",
    "EventDraft",
    "EventType",
    "OnlineMeeting",
    "Response",
    "Sensitivity",
    "ShowAs",
]


class ShowAs(StrEnum):
    FREE = "free"
    TENTATIVE = "tentative"
    BUSY = "busy"
    OOF = "oof"
    WORKING_ELSEWHERE = "workingElsewhere"
    UNKNOWN = "unknown"


class Sensitivity(StrEnum):
    NORMAL = "normal"
    PERSONAL = "personal"
    PRIVATE = "private"
    CONFIDENTIAL = "confidential"


class Response(StrEnum):
    NONE = "none"
    ORGANIZER = "organizer"
    TENTATIVELY_ACCEPTED = "tentativelyAccepted"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    NOT_RESPONDED = "notResponded"


class AttendeeType(StrEnum):
    REQUIRED = "required"
    OPTIONAL = "optional"
    RESOURCE = "resource"


class EventType(StrEnum):
    SINGLE = "singleInstance"
    OCCURRENCE = "occurrence"
    EXCEPTION = "exception"
    SERIES_MASTER = "seriesMaster"


class ChangeType(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


# availabilityView digits. Graph: "working elsewhere is set to 0 instead of 4 for backward
# compatibility" (https://learn.microsoft.com/en-us/graph/api/resources/scheduleinformation).
GRAPH_DIGITS: Mapping[ShowAs, str] = {
    ShowAs.FREE: "0",
    ShowAs.TENTATIVE: "1",
    ShowAs.BUSY: "2",
    ShowAs.OOF: "3",
    ShowAs.WORKING_ELSEWHERE: "0",
    ShowAs.UNKNOWN: "0",
}
EWS_DIGITS: Mapping[ShowAs, str] = {**GRAPH_DIGITS, ShowAs.WORKING_ELSEWHERE: "4"}


class CalendarError(Exception):
    """A calendar operation Exchange would refuse; `code` is the Graph/EWS-style error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class CalendarFolder:
    """One calendar of a mailbox: its default calendar ("Calendar") or a secondary one the user added.

    Graph lists both under `/users/{id}/calendars` (https://learn.microsoft.com/graph/api/user-list-calendars);
    EWS shows secondary calendars as subfolders of the Calendar folder.
    """

    id: str
    name: str
    is_default: bool
    color: str = "auto"


@dataclass(slots=True)
class Attendee:
    email: str
    name: str = ""
    type: AttendeeType = AttendeeType.REQUIRED
    response: Response = Response.NONE
    response_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class OnlineMeeting:
    """onlineMeetingInfo (https://learn.microsoft.com/graph/api/resources/onlinemeetinginfo)."""

    provider: str
    join_url: str
    conference_id: str
    toll_number: str


@dataclass(slots=True)
class EventDraft:
    """What a client asks for when it creates (or, field by field, updates) an event."""

    subject: str
    start: datetime
    end: datetime
    time_zone: str | None = None  # IANA; default: start's zone, else the mailbox's
    is_all_day: bool = False
    show_as: ShowAs = ShowAs.BUSY
    sensitivity: Sensitivity = Sensitivity.NORMAL
    importance: str = "normal"
    body: str = ""
    body_type: str = "html"
    location: str = ""
    location_email: str | None = None
    attendees: Sequence[Attendee] = ()
    recurrence: Recurrence | None = None
    is_online_meeting: bool = False
    online_meeting_provider: str | None = None
    reminder_minutes: int = 15
    is_reminder_on: bool = True
    categories: Sequence[str] = ()
    transaction_id: str | None = None
    extended_properties: Mapping[str, str] = field(default_factory=dict)
    allow_new_time_proposals: bool = True
    response_requested: bool = True
    hide_attendees: bool = False


@dataclass(slots=True)
class Event:
    """An item in one mailbox's calendar (organizer's copy or attendee's copy), or an expanded instance."""

    id: str
    mailbox: str
    ical_uid: str
    subject: str
    start: datetime
    end: datetime
    time_zone: str
    organizer_email: str
    organizer_name: str
    created: datetime
    last_modified: datetime
    is_all_day: bool = False
    show_as: ShowAs = ShowAs.BUSY
    sensitivity: Sensitivity = Sensitivity.NORMAL
    importance: str = "normal"
    body: str = ""
    body_type: str = "html"
    location: str = ""
    location_email: str | None = None
    attendees: list[Attendee] = field(default_factory=list)
    response: Response = Response.ORGANIZER
    response_time: datetime | None = None
    is_cancelled: bool = False
    is_online_meeting: bool = False
    online_meeting_provider: str = "unknown"
    online_meeting: OnlineMeeting | None = None
    reminder_minutes: int = 15
    is_reminder_on: bool = True
    categories: list[str] = field(default_factory=list)
    recurrence: Recurrence | None = None
    exceptions: dict[datetime, Event] = field(default_factory=dict)
    cancelled_occurrences: set[datetime] = field(default_factory=set)
    series_master_id: str | None = None
    original_start: datetime | None = None
    type: EventType = EventType.SINGLE
    transaction_id: str | None = None
    extended_properties: dict[str, str] = field(default_factory=dict)
    allow_new_time_proposals: bool = True
    response_requested: bool = True
    hide_attendees: bool = False
    version: int = 1
    calendar_id: str | None = None  # a secondary calendar of the mailbox; None is its default calendar

    @property
    def is_organizer(self) -> bool:
        return self.mailbox == self.organizer_email

    @property
    def is_private(self) -> bool:
        return self.sensitivity in (Sensitivity.PRIVATE, Sensitivity.CONFIDENTIAL)

    @property
    def is_meeting(self) -> bool:
        return bool(self.attendees)

    @property
    def start_utc(self) -> datetime:
        return self.start.astimezone(UTC)

    @property
    def end_utc(self) -> datetime:
        return self.end.astimezone(UTC)

    @property
    def change_key(self) -> str:
        digest = hashlib.sha256(f"{self.id}|{self.version}".encode()).digest()
        return base64.b64encode(digest[:22]).decode()


@dataclass(frozen=True, slots=True)
class BusyItem:
    """One entry of a detailed free/busy view (scheduleItem / EWS CalendarEvent), in UTC."""

    start: datetime
    end: datetime
    status: ShowAs
    subject: str
    location: str
    is_private: bool
    is_meeting: bool
    is_recurring: bool
    is_exception: bool
    is_reminder_set: bool
    event_id: str


@dataclass(frozen=True, slots=True)
class Change:
    """A change to one item of one mailbox, in the order the store made them."""

    sequence: int
    mailbox: str
    event_id: str
    change_type: ChangeType
    at: datetime
