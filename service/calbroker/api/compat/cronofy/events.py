"""Events: `GET /v1/events` (paged), `POST` and `DELETE /v1/calendars/{calendar_id}/events`.

Writes go through the native `Bookings` (reserve → write upstream → confirm), keyed by Cronofy's
(calendar, `event_id`): the native event id is `cronofy:{calendar_id}:{event_id}`, so a Cronofy
upsert is exactly as idempotent as a native PUT. An upsert leaves what it omits as it was (as
Cronofy does for `conferencing`), and `attendees.invite`/`reject` add to and remove from the
attendees already invited. Cronofy answers writes with 202; calbroker has written upstream by then.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from calbroker.api.compat.cronofy.auth import account_caller
from calbroker.api.compat.cronofy.paging import ReadQuery, from_token, page_of, read_query
from calbroker.api.compat.cronofy.wire import (
    Body,
    UnsupportedParameter,
    days,
    decode_body,
    format_local,
    format_time,
    parse_instant,
)
from calbroker.api.wire import zone
from calbroker.domain.busy import BusyStatus
from calbroker.domain.connections import normalize_email
from calbroker.domain.errors import InvalidRequest, NotFound
from calbroker.domain.events import Attendee, AttendeeType, EventSpec
from calbroker.domain.intervals import Interval
from calbroker.providers.protocol import Deadline
from calbroker.services import Bookings, CalendarEntry, Services
from calbroker.services.cronofy import AccountChanges, read_account_changes
from calbroker.store.cronofy import Account, Grant
from calbroker.store.events import EventState, find_event

__all__ = [
    "DeleteEvent",
    "UpsertEvent",
    "delete_managed_event",
    "events_page",
    "read_events",
    "remove_managed_event",
    "upsert_event",
    "upsert_managed_event",
]

MAX_EVENT_ID = 150
_VIEW_CHUNK = timedelta(days=62)


class _Invitee(Body):
    email: str
    display_name: str | None = None


class _Rejected(Body):
    email: str


class _Attendees(Body):
    invite: list[_Invitee] = msgspec.field(default_factory=list)
    reject: list[_Rejected] = msgspec.field(default_factory=list)


class _Location(Body):
    description: str | None = None
    lat: str | float | None = None
    long: str | float | None = None


class _Conferencing(Body):
    profile_id: str
    provider_description: str | None = None
    join_url: str | None = None


class _Reminder(Body):
    minutes: int


class UpsertEvent(Body):
    event_id: str
    summary: str
    start: str | dict[str, str]
    end: str | dict[str, str]
    description: str | None = None
    tzid: str | None = None
    location: _Location | None = None
    attendees: _Attendees | None = None
    conferencing: _Conferencing | None = None
    transparency: Literal["opaque", "transparent"] | None = None
    reminders: list[_Reminder] | None = None
    reminders_create_only: bool | None = None
    color: str | None = None
    url: str | None = None
    event_private: bool | None = None
    recurrence: dict[str, Any] | None = None
    attachments: list[Any] | None = None
    subscriptions: list[Any] | None = None


class DeleteEvent(Body):
    event_id: str | None = None
    event_uid: str | None = None


def native_id(account: Account, event_id: str) -> str:
    if not 1 <= len(event_id) <= MAX_EVENT_ID or any(ord(ch) < 0x20 for ch in event_id):
        raise InvalidRequest.field("event_id", f"must be 1 to {MAX_EVENT_ID} characters without control characters")
    return f"cronofy:{account.calendar_id}:{event_id}"


def _refuse_unsupported(data: UpsertEvent) -> None:
    if data.recurrence is not None:
        raise UnsupportedParameter("recurrence", "recurring events cannot be created through calbroker")
    if data.attachments:
        raise UnsupportedParameter("attachments", "attachments are not supported")
    if data.subscriptions:
        raise UnsupportedParameter("subscriptions", "event subscriptions are not supported; use push channels")
    if data.event_private:
        raise UnsupportedParameter("event_private", "private events are not supported")
    if data.conferencing is not None and data.conferencing.profile_id not in ("default", "none"):
        raise UnsupportedParameter(
            "conferencing.profile_id",
            'only "default" (Teams, through Microsoft Graph) and "none" are supported',
        )


def _spec(data: UpsertEvent, account: Account, previous: EventSpec | None) -> EventSpec:
    """The booking the upsert asks for: fields it omits keep their previous values."""
    _refuse_unsupported(data)
    tz = zone(data.tzid) if data.tzid else None
    start = parse_instant(data.start, "start", tz=tz)
    end = parse_instant(data.end, "end", tz=tz)
    if not isinstance(start, datetime) or not isinstance(end, datetime):
        raise UnsupportedParameter("start", "all-day events (dates) are not supported; give times")
    if end <= start:
        raise InvalidRequest.field("end", "must be after start")
    tzid = tz or (
        zone(data.start["tzid"], "start.tzid") if isinstance(data.start, dict) and "tzid" in data.start else None
    )
    display = tzid.key if tzid else (previous.tzid if previous else "UTC")
    attendees = {a.email: a for a in (previous.attendees if previous else ())}
    if data.attendees is not None:
        for i, invitee in enumerate(data.attendees.invite):
            email = normalize_email(invitee.email, field_name=f"attendees.invite[{i}].email")
            attendees[email] = Attendee(email, AttendeeType.REQUIRED, invitee.display_name)
        for i, rejected in enumerate(data.attendees.reject):
            attendees.pop(normalize_email(rejected.email, field_name=f"attendees.reject[{i}].email"), None)
    attendees.pop(account.mailbox, None)  # the calendar's owner organizes; Cronofy apps often list them too
    if data.conferencing is None:
        teams = previous.teams_meeting if previous else False
    else:
        teams = data.conferencing.profile_id == "default"
    if data.transparency is None:
        show_as = previous.show_as if previous else BusyStatus.BUSY
    else:
        show_as = BusyStatus.FREE if data.transparency == "transparent" else BusyStatus.BUSY
    if data.reminders is None:
        reminder = previous.reminder_minutes if previous else None
    else:
        reminder = data.reminders[0].minutes if data.reminders else None
    location = data.location.description if data.location is not None else None
    return EventSpec(
        organizer=account.mailbox,
        interval=Interval(start, end),
        tzid=display,
        summary=data.summary,
        description=data.description if data.description is not None else (previous.description if previous else ""),
        location=(location or "") if data.location is not None else (previous.location if previous else ""),
        attendees=tuple(attendees.values()),
        teams_meeting=teams,
        show_as=show_as,
        reminder_minutes=reminder,
    )


def _own_calendar(account: Account, calendar_id: str) -> None:
    if calendar_id != account.calendar_id:
        raise NotFound(f"No calendar {calendar_id!r} belongs to this account.")


async def upsert_managed_event(
    services: Services, grant: Grant, account: Account, *, calendar_id: str, data: UpsertEvent, deadline: Deadline
) -> None:
    """Create or update the application's event in the account's calendar (shared with `/v1/batch`)."""
    _own_calendar(account, calendar_id)
    key = native_id(account, data.event_id)
    async with services.pool.acquire() as conn:
        existing = await find_event(conn, grant.client.application_id, key)
    previous = existing.spec if existing is not None and existing.state is not EventState.CANCELLED else None
    spec = _spec(data, account, previous)
    await services.bookings.upsert(grant.client.application_id, key, spec, check_availability=False, deadline=deadline)


async def remove_managed_event(
    services: Services, grant: Grant, account: Account, *, calendar_id: str, data: DeleteEvent, deadline: Deadline
) -> None:
    """Cancel the application's event (attendees are told); an unknown or cancelled one is fine, as in Cronofy."""
    _own_calendar(account, calendar_id)
    if data.event_uid is not None:
        raise UnsupportedParameter("event_uid", "deleting events this application did not create is not supported")
    if data.event_id is None:
        raise InvalidRequest.field("event_id", "is required")
    try:
        await services.bookings.cancel(grant.client.application_id, native_id(account, data.event_id), deadline)
    except NotFound:
        return


@post("/calendars/{calendar_id:str}/events", status_code=202, include_in_schema=False)
async def upsert_event(
    calendar_id: FromPath[str],
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    deadline: NamedDependency[Deadline],
) -> Response[None]:
    grant, account = account_caller(request, "create_event")
    data = await decode_body(request, UpsertEvent)
    await upsert_managed_event(services, grant, account, calendar_id=calendar_id, data=data, deadline=deadline)
    return Response(None, status_code=202)


@delete("/calendars/{calendar_id:str}/events", status_code=202, include_in_schema=False)
async def delete_managed_event(
    calendar_id: FromPath[str],
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    deadline: NamedDependency[Deadline],
) -> Response[None]:
    grant, account = account_caller(request, "delete_event")
    data = await decode_body(request, DeleteEvent)
    await remove_managed_event(services, grant, account, calendar_id=calendar_id, data=data, deadline=deadline)
    return Response(None, status_code=202)


# --- reading ----------------------------------------------------------------------------------------------


def _event_uid(upstream_id: str) -> str:
    return "evt_external_" + hashlib.sha256(upstream_id.encode()).hexdigest()[:24]


def _cronofy_event_id(account: Account, event_id: str) -> str:
    prefix = f"cronofy:{account.calendar_id}:"
    return event_id.removeprefix(prefix)


async def _calendar_view(
    bookings: Bookings, grant: Grant, account: Account, window: Interval, deadline: Deadline
) -> list[CalendarEntry]:
    """The calendar view in ≤ 62-day parts read concurrently (Exchange does not page calendar views)."""
    parts = window.split(_VIEW_CHUNK)
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(bookings.calendar_view(grant.client.application_id, account.mailbox, part, deadline))
            for part in parts
        ]
    seen: dict[tuple[str, datetime], CalendarEntry] = {}
    for task in tasks:
        for entry in task.result():
            seen.setdefault((entry.event.id, entry.event.interval.start), entry)
    return list(seen.values())


def _time_out(value: datetime, query: ReadQuery, all_day: bool) -> Any:
    if all_day:
        return value.astimezone(UTC).date().isoformat()
    return format_local(value, query.tz) if query.localized_times else format_time(value)


def _event_out(entry: CalendarEntry, account: Account, query: ReadQuery) -> dict[str, Any]:
    event = entry.event
    managed = entry.event_id is not None
    out: dict[str, Any] = {
        "calendar_id": account.calendar_id,
        "event_uid": _event_uid(event.id),
        "summary": event.summary,
        "description": "",
        "start": _time_out(event.interval.start, query, event.is_all_day),
        "end": _time_out(event.interval.end, query, event.is_all_day),
        "deleted": False,
        "participation_status": "accepted" if event.organizer == account.mailbox else "unknown",
        "attendees": [
            {"email": a.email, "display_name": a.name or a.email, "status": "unknown"} for a in event.attendees
        ],
        "organizer": {"email": event.organizer} if event.organizer else None,
        "transparency": "transparent" if event.show_as is BusyStatus.FREE else "opaque",
        "status": "cancelled" if event.is_cancelled else "confirmed",
        "categories": [],
        "event_private": False,
        "options": {"delete": managed, "update": managed, "change_participation_status": False},
    }
    if entry.event_id is not None:
        out["event_id"] = _cronofy_event_id(account, entry.event_id)
    if event.location:
        out["location"] = {"description": event.location}
    if event.ical_uid:
        out["ical_uid"] = event.ical_uid
    if event.is_online_meeting or event.join_url:
        out["conferencing"] = (
            {"provider_name": "ms_teams", "provider_description": "Microsoft Teams", "join_url": event.join_url}
            if event.join_url
            else {"pending": True}
        )
    if out["organizer"] is None:
        del out["organizer"]
    return out


def _key(entry: CalendarEntry) -> tuple[str, str]:
    return entry.event.interval.start.astimezone(
        UTC
    ).isoformat(), f"{entry.event.id}|{entry.event.interval.end.isoformat()}"


_LAST = "9999"
"""Sorts after every start: deleted items (their times are gone with them) come last."""


def _managed_filter(query: ReadQuery, managed: bool) -> bool:
    if query.only_managed:
        return managed
    return query.include_managed or not managed


def _changed_out(
    upstream_id: str, account: Account, query: ReadQuery, changes: AccountChanges, *, deleted: bool
) -> tuple[tuple[str, str], dict[str, Any]]:
    """An item the change feed names that the window's view does not show: deleted, or moved out of the
    window (with the times the synced copy holds)."""
    out: dict[str, Any] = {"calendar_id": account.calendar_id, "event_uid": _event_uid(upstream_id), "deleted": deleted}
    event_id = changes.event_ids.get(upstream_id)
    if event_id is not None:
        out["event_id"] = _cronofy_event_id(account, event_id)
    held = None if deleted else changes.feed.cached.get(upstream_id)
    if held is None:
        return (_LAST, upstream_id), out
    start, end, status = held
    out |= {
        "start": _time_out(start, query, False),
        "end": _time_out(end, query, False),
        "transparency": "transparent" if status is BusyStatus.FREE else "opaque",
    }
    return (start.astimezone(UTC).isoformat(), f"{upstream_id}|{end.isoformat()}"), out


async def _answer(
    services: Services,
    grant: Grant,
    account: Account,
    query: ReadQuery,
    deadline: Deadline,
    *,
    page: int = 1,
    after: tuple[str, str] | None = None,
) -> dict[str, Any]:
    entries = await _calendar_view(services.bookings, grant, account, query.window, deadline)
    kept = [e for e in entries if _managed_filter(query, e.event_id is not None)]
    if query.last_modified is None:
        shown = [(_key(e), _event_out(e, account, query)) for e in kept]
    else:
        changes = await read_account_changes(services, account, query.last_modified)
        updated = set(changes.updated)
        shown = [(_key(e), _event_out(e, account, query)) for e in kept if e.event.id in updated]
        seen = {e.event.id for e in entries}
        extra = [(u, True) for u in changes.deleted if query.include_deleted]
        extra += [(u, False) for u in changes.updated if query.include_moved and u not in seen]
        shown += [
            _changed_out(u, account, query, changes, deleted=gone)
            for u, gone in extra
            if _managed_filter(query, u in changes.event_ids)
        ]
    listed = page_of(shown, query, lambda item: item[0], page=page, after=after)
    base = f"{services.settings.public_url}/compat/cronofy/v1"
    return {"pages": listed.pages(base, "/events"), "events": [out for _order, out in listed.items]}


@get("/events", include_in_schema=False)
async def read_events(
    request: Request[Any, Any, Any], services: NamedDependency[Services], deadline: NamedDependency[Deadline]
) -> dict[str, Any]:
    """Events of the account's calendar between `from` and `to` (dates read in `tzid`), occurrences expanded.

    Managed events (the ones this application booked) are left out unless `include_managed`, as in Cronofy.
    With `last_modified` (a `change` notification's `changes_since`), only events changed since then, from
    the sync's change feed; `include_deleted` adds deleted ones, `include_moved` those moved out of the window.
    """
    grant, account = account_caller(request, "read_events")
    query = read_query(request, "events", account, default_back=days(16))
    return await _answer(services, grant, account, query, deadline)


@get("/events/pages/{token:str}", include_in_schema=False)
async def events_page(
    token: FromPath[str],
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    deadline: NamedDependency[Deadline],
) -> dict[str, Any]:
    grant, account = account_caller(request, "read_events")
    query, page, after = from_token(token, "events", account)
    return await _answer(services, grant, account, query, deadline, page=page, after=after)
