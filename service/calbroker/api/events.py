"""`/v1/events`: book, read and cancel meetings by the application's own `event_id`, and read calendars.

Contract in design §5. A PUT is an idempotent upsert: the same body again returns the same event
and writes nothing upstream; a changed body updates only what changed. The booking logic lives in
`api/bookings.py`; this module validates, converts and shapes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

import msgspec
from litestar import Response as HttpResponse
from litestar import delete, get, put
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body as BodyParam
from litestar.params import PathParameter, QueryParameter

from calbroker.api.auth import Caller
from calbroker.api.problems import problem_response, problem_responses
from calbroker.api.wire import (
    EMAIL_PATTERN,
    EVENT_ID_PATTERN,
    INSTANT_PATTERN,
    MINIMUM_ZERO,
    TZID_PATTERN,
    Body,
    Email,
    Response,
    aware,
    doc,
    instant_field,
    span,
    text,
    zone,
    zone_field,
)
from calbroker.domain.busy import BusyStatus
from calbroker.domain.connections import normalize_email
from calbroker.domain.errors import InvalidRequest, LimitExceeded
from calbroker.domain.events import (
    MAX_ATTENDEES,
    MAX_DESCRIPTION,
    MAX_DURATION,
    MAX_LOCATION,
    MAX_NAME,
    MAX_REMINDER_MINUTES,
    MAX_SUMMARY,
    Attendee,
    AttendeeType,
    EventSpec,
    UpstreamEvent,
)
from calbroker.domain.intervals import FIRST_YEAR, LAST_YEAR, Interval
from calbroker.services import CalendarEntry
from calbroker.services.sync import CHANGES_KEPT, read_changes
from calbroker.store.busy_cache import MailboxChanges
from calbroker.store.events import EventRecord, EventState, managed_events

__all__ = ["delete_event", "get_event", "list_events", "put_event"]

MAX_VIEW_SPAN = timedelta(days=62)
MAX_PAGE = 500
_EVENT_ID = re.compile(EVENT_ID_PATTERN)
_CURSOR_PATTERN = r"^[A-Za-z0-9_-]{1,400}$"

EventId = Annotated[
    str,
    PathParameter(
        pattern=EVENT_ID_PATTERN,
        description="Your own id for the event: 1–200 letters, digits and . _ ~ : @ + = -",
        examples=[Example(value="booking-42")],
    ),
]

ShowAs = Literal["free", "tentative", "busy", "oof", "working_elsewhere"]
AttendeeKind = Literal["required", "optional", "resource"]
Status = Literal["pending", "confirmed", "cancelled"]
TeamsState = Literal["ready", "pending"]


class AttendeeIn(Body):
    """Someone (or a room) invited to the event."""

    email: Annotated[Email, msgspec.Meta(description="The attendee's address")]
    name: Annotated[str, text(MAX_NAME, f"Display name, at most {MAX_NAME} characters")] | None = None
    type: Annotated[
        AttendeeKind, msgspec.Meta(description="required or optional person, or a resource (room, equipment)")
    ] = "required"


class EventIn(Body):
    """The event as the application wants Exchange to hold it (limits in the field descriptions)."""

    organizer: Annotated[Email, msgspec.Meta(description="The organizer's mailbox; its domain picks the connection")]
    start: Annotated[str, instant_field("Start")]
    end: Annotated[str, instant_field(f"End, after start, at most {MAX_DURATION.days} days later")]
    summary: Annotated[str, text(MAX_SUMMARY, f"The subject, at most {MAX_SUMMARY} characters")]
    tzid: Annotated[str, zone_field("IANA zone the event is shown in; default UTC")] | None = None
    description: (
        Annotated[str, text(MAX_DESCRIPTION, f"Body text of the invitation, at most {MAX_DESCRIPTION} characters")]
        | None
    ) = None
    location: Annotated[str, text(MAX_LOCATION, f"Where, at most {MAX_LOCATION} characters")] | None = None
    attendees: Annotated[
        list[AttendeeIn],
        msgspec.Meta(description=f"At most {MAX_ATTENDEES}; rooms and equipment as type `resource`"),
    ] = msgspec.field(default_factory=list)
    teams_meeting: Annotated[
        bool, msgspec.Meta(description="Create a Teams meeting and put its join link in the invitation")
    ] = False
    check_availability: Annotated[
        bool,
        msgspec.Meta(description="Refuse with 409 slot-unavailable if the organizer or an internal attendee is busy"),
    ] = False
    show_as: Annotated[ShowAs, msgspec.Meta(description="How the time shows in the organizer's free/busy")] = "busy"
    reminder_minutes: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                le=MAX_REMINDER_MINUTES,
                description=f"Minutes before the start, 0–{MAX_REMINDER_MINUTES}; absent or null: no reminder",
                extra_json_schema=MINIMUM_ZERO,
            ),
        ]
        | None
    ) = None

    def to_domain(self) -> EventSpec:
        tz = zone(self.tzid)
        interval = span(self.start, self.end)
        return EventSpec(
            organizer=normalize_email(self.organizer, field_name="organizer"),
            interval=interval,
            tzid=tz.key,
            summary=self.summary,
            description=self.description or "",
            location=self.location or "",
            attendees=tuple(
                Attendee(normalize_email(a.email, field_name=f"attendees[{i}].email"), AttendeeType(a.type), a.name)
                for i, a in enumerate(self.attendees)
            ),
            teams_meeting=self.teams_meeting,
            show_as=BusyStatus(self.show_as),
            reminder_minutes=self.reminder_minutes,
        )


class AttendeeOut(Response):
    """Someone (or a room) invited to the event."""

    email: Annotated[str, doc("The attendee's address")]
    type: Annotated[AttendeeKind, doc("required, optional or resource")]
    name: Annotated[str | None, doc("Display name, when known")] = None

    @classmethod
    def from_domain(cls, attendee: Attendee) -> AttendeeOut:
        return cls(email=attendee.email, type=attendee.type.value, name=attendee.name)


class TeamsOut(Response):
    """The event's Teams meeting."""

    status: Annotated[TeamsState, doc("ready, or pending while Microsoft has not returned the link yet")]
    join_url: Annotated[str | None, doc("The link attendees join with")] = None


class EventOut(Response):
    """An event booked through calbroker, as Exchange now holds it."""

    event_id: Annotated[str, doc("Your own id for the event")]
    status: Annotated[Status, doc("confirmed, pending (the upstream write has not completed) or cancelled")]
    organizer: Annotated[str, doc("The organizer's mailbox")]
    start: Annotated[datetime, doc("Start, in the event's tzid")]
    end: Annotated[datetime, doc("End, in the event's tzid")]
    tzid: Annotated[str, doc("IANA zone the event is shown in")]
    summary: Annotated[str, doc("The subject")]
    attendees: Annotated[list[AttendeeOut], doc("Everyone invited, in the order given")]
    show_as: Annotated[ShowAs, doc("How the time shows in the organizer's free/busy")]
    version: Annotated[int, doc("Grows with every change written upstream")]
    created_at: Annotated[datetime, doc("When calbroker first booked it")]
    updated_at: Annotated[datetime, doc("When calbroker last changed it")]
    description: Annotated[str | None, doc("Body text of the invitation")] = None
    location: Annotated[str | None, doc("Where")] = None
    reminder_minutes: Annotated[int | None, doc("Minutes before the start; absent: no reminder")] = None
    teams: Annotated[TeamsOut | None, doc("The Teams meeting, when one was asked for")] = None
    ical_uid: Annotated[str | None, doc("The iCalendar UID attendees' calendars know the meeting by")] = None
    last_error: Annotated[
        str | None,
        doc("Why a pending event is not confirmed yet (the last upstream error); a retry of the PUT heals it"),
    ] = None

    @classmethod
    def from_domain(cls, record: EventRecord) -> EventOut:
        spec = record.spec
        tz = zone(spec.tzid)
        teams = record.teams
        return cls(
            event_id=record.event_id,
            status=record.state.value,
            organizer=spec.organizer,
            start=spec.interval.start.astimezone(tz),
            end=spec.interval.end.astimezone(tz),
            tzid=spec.tzid,
            summary=spec.summary,
            attendees=[AttendeeOut.from_domain(a) for a in spec.attendees],
            show_as=spec.show_as.value,
            version=record.version,
            created_at=record.created_at,
            updated_at=record.updated_at,
            description=spec.description or None,
            location=spec.location or None,
            reminder_minutes=spec.reminder_minutes,
            teams=TeamsOut(status=teams.status.value, join_url=teams.join_url) if teams else None,
            ical_uid=record.ical_uid,
            last_error=record.last_error if record.state is EventState.PENDING else None,
        )


class CalendarEventOut(Response):
    """An item of a mailbox's calendar, booked through calbroker or not."""

    id: Annotated[str, doc("Exchange's id of the item in this mailbox (opaque)")]
    managed: Annotated[bool, doc("Whether this application booked it through calbroker")]
    summary: Annotated[str, doc("The subject (empty when Exchange hides it)")]
    start: Annotated[datetime, doc("Start, in the requested tzid")]
    end: Annotated[datetime, doc("End, in the requested tzid")]
    show_as: Annotated[ShowAs, doc("How the time shows in free/busy")]
    attendees: Annotated[list[AttendeeOut], doc("Everyone invited")]
    event_id: Annotated[str | None, doc("Your event_id, when this application booked it")] = None
    organizer: Annotated[str | None, doc("The organizer's mailbox")] = None
    location: Annotated[str | None, doc("Where")] = None
    cancelled: Annotated[bool, doc("Whether the meeting was cancelled (the item stays until removed)")] = False
    all_day: Annotated[bool, doc("Whether it is an all-day event")] = False
    teams_join_url: Annotated[str | None, doc("The Teams link, when it is an online meeting")] = None
    ical_uid: Annotated[str | None, doc("The iCalendar UID of the meeting")] = None

    @classmethod
    def from_domain(cls, entry: CalendarEntry, tz: ZoneInfo) -> CalendarEventOut:
        event: UpstreamEvent = entry.event
        return cls(
            id=event.id,
            managed=entry.event_id is not None,
            event_id=entry.event_id,
            summary=event.summary,
            start=event.interval.start.astimezone(tz),
            end=event.interval.end.astimezone(tz),
            show_as=event.show_as.value,
            attendees=[AttendeeOut.from_domain(a) for a in event.attendees],
            organizer=event.organizer,
            location=event.location or None,
            cancelled=event.is_cancelled,
            all_day=event.is_all_day,
            teams_join_url=event.join_url,
            ical_uid=event.ical_uid,
        )


class CalendarView(Response):
    """A page of a mailbox's calendar, by start."""

    mailbox: Annotated[str, doc("The mailbox, normalised (lower case)")]
    events: Annotated[list[CalendarEventOut], doc("This page's items; occurrences of series are expanded")]
    next_cursor: Annotated[str | None, doc("Pass as `cursor` for the next page; absent on the last")] = None


class ChangedEventOut(Response):
    """An item of the mailbox's calendar that changed since the instant asked for, as it is now."""

    id: Annotated[str, doc("Exchange's id of the item in this mailbox (opaque; the `id` of the calendar view)")]
    change: Annotated[
        Literal["updated", "deleted"], doc("updated: created or changed (it may now take no time); deleted: gone")
    ]
    managed: Annotated[bool, doc("Whether this application booked it through calbroker")]
    event_id: Annotated[str | None, doc("Your event_id, when this application booked it")] = None
    start: Annotated[datetime | None, doc("Start, in the requested tzid (items that take time)")] = None
    end: Annotated[datetime | None, doc("End, in the requested tzid (items that take time)")] = None
    show_as: Annotated[ShowAs | None, doc("How the time shows in free/busy (free: cancelled or shown as free)")] = None


class EventChanges(Response):
    """What changed in a synced mailbox's calendar since an instant, deletions included."""

    mailbox: Annotated[str, doc("The mailbox, normalised (lower case)")]
    changed_since: Annotated[datetime, doc("The instant asked for")]
    next_changed_since: Annotated[
        datetime, doc("Pass as `changed_since` next time: nothing that changes later can be missed")
    ]
    changes: Annotated[list[ChangedEventOut], doc("Each item's latest change, oldest change first")]


def _changes_out(
    address: str, since: datetime, found: MailboxChanges, event_ids: dict[str, str], tz: ZoneInfo
) -> EventChanges:
    latest: dict[str, str] = {}
    for entry in found.changes:
        for upstream_id in (*entry.changed, *entry.freed):
            latest.pop(upstream_id, None)
            latest[upstream_id] = "updated"
        for upstream_id in entry.removed:
            latest.pop(upstream_id, None)
            latest[upstream_id] = "deleted"
    changes: list[ChangedEventOut] = []
    for upstream_id, change in latest.items():
        held = found.cached.get(upstream_id) if change == "updated" else None
        event_id = event_ids.get(upstream_id)
        changes.append(
            ChangedEventOut(
                id=upstream_id,
                change=change,  # type: ignore[arg-type]
                managed=event_id is not None,
                event_id=event_id,
                start=held[0].astimezone(tz) if held else None,
                end=held[1].astimezone(tz) if held else None,
                show_as=(held[2].value if held else "free") if change == "updated" else None,
            )
        )
    return EventChanges(
        mailbox=address, changed_since=since, next_changed_since=max(since, found.as_of), changes=changes
    )


def _event_id(raw: str) -> str:
    if not _EVENT_ID.match(raw):
        raise InvalidRequest.field(
            "event_id", "1–200 characters of letters, digits and . _ ~ : @ + = - (your own id for the event)"
        )
    return raw


def _cursor_key(event: UpstreamEvent) -> tuple[str, str]:
    return (event.interval.start.isoformat(), event.id)


def _page(entries: list[CalendarEntry], cursor: str | None, limit: int) -> tuple[list[CalendarEntry], str | None]:
    """Entries after the cursor's (start, id), at most `limit`, and the cursor of the next page."""
    ordered = sorted(entries, key=lambda e: _cursor_key(e.event))
    if cursor is not None:
        try:
            after = tuple(json.loads(base64.urlsafe_b64decode(cursor.encode() + b"==")))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise InvalidRequest.field("cursor", "is not a cursor this API returned") from None
        ordered = [e for e in ordered if _cursor_key(e.event) > after]
    page = ordered[:limit]
    if len(ordered) <= limit:
        return page, None
    token = base64.urlsafe_b64encode(json.dumps(_cursor_key(page[-1].event)).encode()).decode().rstrip("=")
    return page, token


_NOT_FOUND = problem_response(
    "No event with this event_id was booked by your application (`/problems/not-found`)",
    ("not-found", "This application has no event 'booking-42'."),
)
_FORBIDDEN = problem_response(
    "The connection's access level or the mailbox scope does not allow it (`/problems/access-level-insufficient`, "
    "`/problems/mailbox-out-of-scope`, `/problems/impersonation-denied`)",
    ("access-level-insufficient", "Cannot book events: connection 'Fabrikam' has free/busy-only access."),
    ("mailbox-out-of-scope", "Access to OData is disabled."),
)
_CONFLICT = problem_response(
    "The slot is taken (`/problems/slot-unavailable`, with `conflicts`), or another request is writing "
    "the event (`/problems/write-in-progress`, with `Retry-After`)",
    (
        "slot-unavailable",
        "2026-12-01T10:00:00+00:00–2026-12-01T10:30:00+00:00 is no longer free for adele.vance@contoso.com.",
    ),
    ("write-in-progress", "Another request is writing event 'booking-42'; retry after 2 seconds."),
)
_EVENT_INVALID = problem_response(
    "Invalid input, a limit exceeded, an unknown organizer (`/problems/mailbox-not-connected`) or Teams "
    "asked for where it cannot be made (`/problems/teams-unavailable`)",
    (
        "invalid-request",
        "end: must be after start",
        [{"field": "end", "message": "must be after start"}],
    ),
    ("limit-exceeded", "at most 250 attendees per event (got 500)"),
    ("mailbox-not-connected", "No connection of this application covers the domain 'example.com'."),
)
_VIEW_INVALID = problem_response(
    "Invalid parameters, a window over the limit, or a mailbox no connection covers "
    "(`/problems/invalid-request`, `/problems/limit-exceeded`, `/problems/mailbox-not-connected`)",
    ("limit-exceeded", "the window may span at most 62 days"),
    ("mailbox-not-connected", "No connection of this application covers the domain 'example.com'."),
)


_EVENT_EXAMPLE = {
    "organizer": "adele.vance@contoso.com",
    "start": "2026-12-01T10:00:00+01:00",
    "end": "2026-12-01T10:30:00+01:00",
    "tzid": "Europe/Berlin",
    "summary": "Interview: Alex Wilber",
    "description": "Second round, with the hiring manager.",
    "location": "Room 3.14",
    "attendees": [
        {"email": "alex.wilber@contoso.com", "name": "Alex Wilber", "type": "required"},
        {"email": "room-314@contoso.com", "type": "resource"},
    ],
    "teams_meeting": True,
    "check_availability": True,
    "reminder_minutes": 15,
}


@put(
    "/events/{event_id:str}",
    operation_id="upsertEvent",
    status_code=200,
    tags=["events"],
    summary="Create or update an event by your own event_id (idempotent)",
    responses={
        201: ResponseSpec(EventOut, description="Created by this request (or by the earlier try it repeats)"),
        **problem_responses(body=True, upstream=True, s403=_FORBIDDEN, s409=_CONFLICT, s422=_EVENT_INVALID),
    },
)
async def put_event(
    event_id: EventId,
    data: Annotated[EventIn, BodyParam(examples=[Example(summary="An interview with Teams", value=_EVENT_EXAMPLE)])],
    caller: NamedDependency[Caller],
) -> HttpResponse[EventOut]:
    """201 when this request (or the retry of the request) created the event, 200 when it updated it
    or found it already as asked. Synchronous: the answer says what Exchange now holds."""
    spec = data.to_domain()
    outcome = await caller.bookings.upsert(
        caller.application.id,
        _event_id(event_id),
        spec,
        check_availability=data.check_availability,
        deadline=caller.deadline,
    )
    return HttpResponse(EventOut.from_domain(outcome.record), status_code=201 if outcome.created else 200)


@get(
    "/events/{event_id:str}",
    operation_id="getEvent",
    tags=["events"],
    summary="Read an event booked through calbroker",
    responses=problem_responses(params=True, upstream=True, s404=_NOT_FOUND),
)
async def get_event(
    event_id: EventId,
    caller: NamedDependency[Caller],
) -> EventOut:
    """A `teams.status` of `pending` is looked up again at Microsoft on every read until the link exists."""
    record = await caller.bookings.read(caller.application.id, _event_id(event_id), caller.deadline)
    return EventOut.from_domain(record)


@delete(
    "/events/{event_id:str}",
    operation_id="cancelEvent",
    status_code=204,
    tags=["events"],
    summary="Cancel an event (attendees get a cancellation)",
    responses=problem_responses(params=True, upstream=True, s403=_FORBIDDEN, s404=_NOT_FOUND, s409=_CONFLICT),
)
async def delete_event(
    event_id: EventId,
    caller: NamedDependency[Caller],
) -> None:
    """Repeating the DELETE answers 204 again; a hybrid event's Teams meeting is ended with it."""
    await caller.bookings.cancel(caller.application.id, _event_id(event_id), caller.deadline)


@get(
    "/events",
    operation_id="listEvents",
    tags=["events"],
    summary="A mailbox's events (calendar view) with the ones you booked marked, or what changed since an instant",
    responses=problem_responses(params=True, upstream=True, s403=_FORBIDDEN, s422=_VIEW_INVALID),
)
async def list_events(
    *,
    caller: NamedDependency[Caller],
    mailbox: Annotated[
        str,
        QueryParameter(pattern=EMAIL_PATTERN, max_length=320, description="The mailbox whose calendar to read"),
    ],
    start: Annotated[
        str | None,
        QueryParameter(
            pattern=INSTANT_PATTERN,
            description=f"Start of the window; RFC 3339 with a UTC offset, in the years {FIRST_YEAR}–{LAST_YEAR}. "
            "Required unless changed_since is given",
            schema_extra={"format": "date-time"},
        ),
    ] = None,
    end: Annotated[
        str | None,
        QueryParameter(
            pattern=INSTANT_PATTERN,
            description=f"End of the window, after start, at most {MAX_VIEW_SPAN.days} days later",
            schema_extra={"format": "date-time"},
        ),
    ] = None,
    changed_since: Annotated[
        str | None,
        QueryParameter(
            pattern=INSTANT_PATTERN,
            description="Instead of a window: what changed in a synced mailbox since this instant, deletions "
            f"included (a webhook's `changes_since`, or the last answer's `next_changed_since`; up to "
            f"{CHANGES_KEPT.days} days back)",
            schema_extra={"format": "date-time"},
        ),
    ] = None,
    tzid: Annotated[
        str | None,
        QueryParameter(pattern=TZID_PATTERN, max_length=64, description="IANA zone for the times; default UTC"),
    ] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE, description="Page size")] = 100,
    cursor: Annotated[
        str | None,
        QueryParameter(pattern=_CURSOR_PATTERN, description="`next_cursor` of the previous page"),
    ] = None,
) -> CalendarView | EventChanges:
    """Occurrences of recurring series are expanded; times are shown in `tzid` (default UTC). With
    `changed_since` the answer comes from the synced copy's change feed, without asking Microsoft."""
    tz = zone(tzid)
    address = normalize_email(mailbox, field_name="mailbox")
    if changed_since is not None:
        if start is not None or end is not None:
            raise InvalidRequest.field("changed_since", "reads changes, not a window: leave out start and end")
        since = aware(changed_since, "changed_since")
        found = await read_changes(
            caller.services.pool,
            caller.application.id,
            address,
            since,
            field="changed_since",
            unsynced_field="mailbox",
            to_sync="name it in PUT /v1/connections/{id}/sync first",
            instead="read the calendar view with start and end",
        )
        touched = sorted({u for entry in found.changes for u in (*entry.changed, *entry.freed, *entry.removed)})
        async with caller.services.pool.acquire() as conn:
            copies = await managed_events(conn, caller.application.id, touched, [])
        event_ids = {u: e for u in touched if (e := copies.event_id(u, None, None)) is not None}
        return _changes_out(address, since, found, event_ids, tz)
    if start is None or end is None:
        raise InvalidRequest.field("start" if start is None else "end", "is required (or give changed_since)")
    window: Interval = span(start, end)
    if window.duration > MAX_VIEW_SPAN:
        raise LimitExceeded(
            field="end",
            limit=f"{MAX_VIEW_SPAN.days} days",
            actual=str(window.duration),
            message=f"the window may span at most {MAX_VIEW_SPAN.days} days",
        )
    entries = await caller.bookings.calendar_view(caller.application.id, address, window, caller.deadline)
    page, next_cursor = _page(entries, cursor, limit)
    return CalendarView(
        mailbox=address, events=[CalendarEventOut.from_domain(e, tz) for e in page], next_cursor=next_cursor
    )
