"""Graph calendar events: calendarView, list, create (Teams, transactionId), get, update, delete,
cancel, responses and instances — and the event JSON both directions.

Event shape: https://learn.microsoft.com/graph/api/resources/event ; examples compared in
tests/sandbox/fixtures/graph/.
"""

from __future__ import annotations

import html
import re
from datetime import datetime
from typing import Any
from urllib.parse import quote

from calbroker.sandbox.events import (
    Attendee,
    AttendeeType,
    CalendarError,
    Event,
    EventDraft,
    Response,
    Sensitivity,
    ShowAs,
)
from calbroker.sandbox.faults import FaultAction
from calbroker.sandbox.graph.odata import (
    Filters,
    GraphContext,
    GraphError,
    GraphRequest,
    GraphResponse,
    Route,
    apply_filter,
    body_get,
    graph_instant,
    make_route,
    page,
    prefer,
)
from calbroker.sandbox.recurrence import Recurrence, RecurrenceError
from calbroker.sandbox.timezones import (
    UnknownTimeZone,
    format_graph_datetime,
    parse_graph_datetime,
    parse_iso_instant,
    windows_name,
    zone,
)

__all__ = [
    "READ",
    "ROUTES",
    "WRITE",
    "event_json",
    "event_routes",
    "parse_draft",
    "parse_event",
    "parse_when",
    "requested_window",
    "requested_zone",
    "resolve_zone",
]

READ = {"Calendars.ReadBasic", "Calendars.Read", "Calendars.ReadWrite"}
WRITE = {"Calendars.ReadWrite"}
_ZERO = "0001-01-01T00:00:00Z"
_TAGS = re.compile(r"<[^>]+>")


def resolve_zone(name: str) -> str:
    """The IANA name for a Windows/IANA zone, or Graph's 400 for an unsupported one."""
    try:
        return getattr(zone(name), "key", "UTC")
    except UnknownTimeZone:
        raise GraphError(
            400,
            "TimeZoneNotSupportedException",
            f"A valid TimeZone value must be specified. The following TimeZone value is not supported: '{name}'.",
        ) from None


def parse_when(raw: Any, field_name: str) -> tuple[datetime, str]:
    """A dateTimeTimeZone JSON value as (aware datetime, IANA zone), or Graph's 400."""
    date_time = body_get(raw, "dateTime")
    tz_name = body_get(raw, "timeZone") or "UTC"
    if not isinstance(date_time, str):
        raise GraphError(400, "ErrorInvalidRequest", f"The property '{field_name}' must have a dateTime value.")
    iana = resolve_zone(str(tz_name))
    try:
        return parse_graph_datetime(date_time, iana), iana
    except ValueError:
        raise GraphError(400, "ErrorInvalidRequest", f"Cannot convert '{date_time}' to a dateTime.") from None


def _enum(value: Any, members: type[ShowAs] | type[Sensitivity] | type[AttendeeType], name: str) -> Any:
    wanted = str(value).lower()
    for member in members:
        if member.value.lower() == wanted:
            return member
    raise GraphError(400, "BadRequest", f"Requested value '{value}' was not found for property '{name}'.")


def parse_event(body: Any, default_tz: str) -> dict[str, Any]:
    """Graph event JSON → `EventDraft` field values, for the properties present in `body`."""
    if not isinstance(body, dict):
        raise GraphError(400, "BadRequest", "Empty Payload. JSON content expected.")
    fields: dict[str, Any] = {}
    present = {k.lower(): v for k, v in body.items()}
    if "subject" in present:
        fields["subject"] = str(present["subject"] or "")
    if "body" in present and present["body"] is not None:
        fields["body"] = str(body_get(present["body"], "content") or "")
        fields["body_type"] = str(body_get(present["body"], "contentType") or "html").lower()
    for key in ("start", "end"):
        if key in present:
            moment, iana = parse_when(present[key], key)
            fields[key] = moment
            if key == "start":
                fields["time_zone"] = iana
    simple = {
        "isallday": ("is_all_day", bool),
        "reminderminutesbeforestart": ("reminder_minutes", int),
        "isreminderon": ("is_reminder_on", bool),
        "transactionid": ("transaction_id", str),
        "allownewtimeproposals": ("allow_new_time_proposals", bool),
        "responserequested": ("response_requested", bool),
        "hideattendees": ("hide_attendees", bool),
        "isonlinemeeting": ("is_online_meeting", bool),
        "importance": ("importance", str),
    }
    for key, (name, kind) in simple.items():
        if key in present and present[key] is not None:
            fields[name] = kind(present[key])
    if "showas" in present:
        fields["show_as"] = _enum(present["showas"], ShowAs, "showAs")
    if "sensitivity" in present:
        fields["sensitivity"] = _enum(present["sensitivity"], Sensitivity, "sensitivity")
    if present.get("onlinemeetingprovider"):
        fields["online_meeting_provider"] = str(present["onlinemeetingprovider"])
    if "categories" in present:
        fields["categories"] = [str(c) for c in present["categories"] or []]
    if "location" in present:
        location = present["location"] or {}
        fields["location"] = str(body_get(location, "displayName") or "")
        email = body_get(location, "locationEmailAddress") or body_get(location, "locationUri")
        fields["location_email"] = str(email).lower() if email and "@" in str(email) else None
    if "attendees" in present:
        attendees = []
        for raw in present["attendees"] or []:
            address = body_get(body_get(raw, "emailAddress", {}), "address")
            if not address:
                raise GraphError(400, "ErrorInvalidRecipients", "At least one recipient isn't valid.")
            name = body_get(body_get(raw, "emailAddress", {}), "name") or address
            kind = _enum(body_get(raw, "type") or "required", AttendeeType, "type")
            attendees.append(Attendee(str(address).lower(), str(name), kind))
        fields["attendees"] = attendees
    if "recurrence" in present:
        raw_recurrence = present["recurrence"]
        try:
            tz_name = fields.get("time_zone", default_tz)
            fields["recurrence"] = Recurrence.from_graph(raw_recurrence, tz_name) if raw_recurrence else None
        except (RecurrenceError, UnknownTimeZone) as exc:
            raise GraphError(400, "ErrorInvalidRequest", f"Invalid recurrence: {exc}") from None
    if "singlevalueextendedproperties" in present:
        props = {}
        for prop in present["singlevalueextendedproperties"] or []:
            prop_id, value = body_get(prop, "id"), body_get(prop, "value")
            if not prop_id:
                raise GraphError(400, "BadRequest", "Extended property id is required.")
            props[str(prop_id)] = str(value)
        fields["extended_properties"] = props
    return fields


def parse_draft(body: Any, default_tz: str) -> EventDraft:
    """A new event's Graph JSON as an `EventDraft`, or Graph's 400 when it lacks a start or an end."""
    fields = parse_event(body, default_tz)
    if "start" not in fields or "end" not in fields:
        raise GraphError(
            400, "ErrorInvalidRequest", "Your request can't be completed. The event must have a start and an end."
        )
    draft = EventDraft(subject=fields.pop("subject", ""), start=fields.pop("start"), end=fields.pop("end"))
    for name, value in fields.items():
        setattr(draft, name, value)
    return draft


def _address(email: str, name: str) -> dict[str, Any]:
    return {"emailAddress": {"name": name, "address": email}}


def _location(event: Event) -> dict[str, Any]:
    if not event.location and not event.location_email:
        return {
            "displayName": "",
            "locationType": "default",
            "uniqueIdType": "unknown",
            "address": {},
            "coordinates": {},
        }
    if event.location_email:
        return {
            "displayName": event.location,
            "locationType": "conferenceRoom",
            "locationUri": event.location_email,
            "uniqueId": event.location_email,
            "uniqueIdType": "directory",
        }
    return {
        "displayName": event.location,
        "locationType": "default",
        "uniqueId": event.location,
        "uniqueIdType": "private",
    }


def event_json(
    ctx: GraphContext,
    event: Event,
    *,
    tz_name: str | None,
    select: set[str] | None = None,
    expand_properties: str | None = None,
    omit_join_url: bool = False,
) -> dict[str, Any]:
    """The Graph representation of `event` (times in `tz_name`, UTC by default)."""
    zone_label = tz_name or "UTC"
    preview = html.unescape(_TAGS.sub("", event.body)).strip()[:255]
    content = (
        event.body
        if event.body_type != "html" or event.body.lstrip().startswith("<html")
        else (f"<html><head></head><body>{event.body}</body></html>")
    )
    meeting = event.online_meeting
    item: dict[str, Any] = {
        "@odata.etag": f'W/"{event.change_key}"',
        "id": event.id,
        "createdDateTime": graph_instant(event.created),
        "lastModifiedDateTime": graph_instant(event.last_modified),
        "changeKey": event.change_key,
        "categories": list(event.categories),
        "transactionId": event.transaction_id,
        "originalStartTimeZone": windows_name(event.time_zone),
        "originalEndTimeZone": windows_name(event.time_zone),
        "iCalUId": event.ical_uid,
        "uid": event.ical_uid,
        "reminderMinutesBeforeStart": event.reminder_minutes,
        "isReminderOn": event.is_reminder_on,
        "hasAttachments": False,
        "subject": event.subject,
        "bodyPreview": preview,
        "importance": event.importance,
        "sensitivity": event.sensitivity.value,
        "isAllDay": event.is_all_day,
        "isCancelled": event.is_cancelled,
        "isOrganizer": event.is_organizer,
        "responseRequested": event.response_requested,
        "seriesMasterId": event.series_master_id,
        "showAs": event.show_as.value,
        "type": event.type.value,
        "webLink": (
            f"https://outlook.office365.com/owa/?itemid={quote(event.id, safe='')}&exvsurl=1&path=/calendar/item"
        ),
        "onlineMeetingUrl": None,
        "isOnlineMeeting": event.is_online_meeting,
        "onlineMeetingProvider": event.online_meeting_provider,
        "allowNewTimeProposals": event.allow_new_time_proposals,
        "occurrenceId": (
            f"OID.{event.series_master_id}.{event.original_start.date().isoformat()}"
            if event.series_master_id and event.original_start
            else None
        ),
        "isDraft": False,
        "hideAttendees": event.hide_attendees,
        "responseStatus": {
            "response": event.response.value,
            "time": graph_instant(event.response_time) if event.response_time else _ZERO,
        },
        "body": {"contentType": event.body_type, "content": content},
        "start": {"dateTime": format_graph_datetime(event.start, zone_label), "timeZone": zone_label},
        "end": {"dateTime": format_graph_datetime(event.end, zone_label), "timeZone": zone_label},
        "location": _location(event),
        "locations": [] if not event.location else [_location(event)],
        "recurrence": event.recurrence.to_graph() if event.recurrence else None,
        "attendees": [
            {
                "type": a.type.value,
                "status": {
                    "response": a.response.value,
                    "time": graph_instant(a.response_time) if a.response_time else _ZERO,
                },
                **_address(a.email, a.name),
            }
            for a in event.attendees
        ],
        "organizer": _address(event.organizer_email, event.organizer_name),
        "onlineMeeting": (
            {"joinUrl": meeting.join_url, "conferenceId": meeting.conference_id, "tollNumber": meeting.toll_number}
            if meeting and not omit_join_url
            else None
        ),
    }
    if expand_properties is not None:
        wanted = re.findall(r"id\s+eq\s+'([^']+)'", expand_properties, re.IGNORECASE)
        item["singleValueExtendedProperties"] = [
            {"id": key, "value": value}
            for key, value in sorted(event.extended_properties.items())
            if not wanted or key.lower() in {w.lower() for w in wanted}
        ]
    if select:
        keep = {"@odata.etag", "id", "singlevalueextendedproperties"} | {s.lower() for s in select}
        item = {k: v for k, v in item.items() if k.lower() in keep}
    return item


def _expand(req: GraphRequest) -> str | None:
    raw = req.option("$expand")
    if raw and raw.lower().startswith("singlevalueextendedproperties"):
        return raw
    return None


def _headers(req: GraphRequest) -> dict[str, str]:
    tz_name, size = prefer(req.headers)
    applied = []
    if tz_name:
        applied.append(f'outlook.timezone="{tz_name}"')
    if size:
        applied.append(f"odata.maxpagesize={size}")
    return {"Preference-Applied": ", ".join(applied)} if applied else {}


def requested_zone(req: GraphRequest) -> str | None:
    """The zone asked for in `Prefer: outlook.timezone` (checked), or None for UTC."""
    tz_name, _ = prefer(req.headers)
    if tz_name:
        resolve_zone(tz_name)
    return tz_name


def requested_window(req: GraphRequest, *, allow_empty: bool = True) -> tuple[datetime, datetime]:
    """The StartDateTime/EndDateTime window of a calendar view (`allow_empty=False`: delta wants one of
    positive length), or the 400 Graph answers for a missing, malformed or reversed one."""
    start_raw, end_raw = req.option("startdatetime"), req.option("enddatetime")
    if not start_raw or not end_raw:
        raise GraphError(
            400,
            "ErrorInvalidParameter",
            "This request requires a time window specified by the query string parameters StartDateTime and "
            "EndDateTime.",
        )
    try:
        start, end = parse_iso_instant(start_raw), parse_iso_instant(end_raw)
    except ValueError:
        raise GraphError(
            400, "ErrorInvalidParameter", "The value of the StartDateTime or EndDateTime parameter is invalid."
        ) from None
    if end < start or (end == start and not allow_empty):
        raise GraphError(400, "ErrorInvalidParameter", "The parameter 'EndDateTime' must be after 'StartDateTime'.")
    return start, end


def _listing(ctx: GraphContext, req: GraphRequest, events: list[Event], context: str) -> GraphResponse:
    tz_name = requested_zone(req)
    settings = ctx.state.settings
    chunk_events, next_link, _ = page(
        ctx,
        req,
        events,
        default_size=settings.calendar_view_page_size,
        max_size=settings.calendar_view_max_page_size,
    )
    omit = req.fault is not None and req.fault.action is FaultAction.OMIT_JOIN_URL
    value = [
        event_json(ctx, e, tz_name=tz_name, select=req.select(), expand_properties=_expand(req), omit_join_url=omit)
        for e in chunk_events
    ]
    body: dict[str, Any] = {"@odata.context": f"{ctx.graph_url}/$metadata#{context}", "value": value}
    if next_link:
        body["@odata.nextLink"] = next_link
    return GraphResponse(200, body, _headers(req))


def _calendar_id(req: GraphRequest) -> str | None:
    """The calendar a `/calendars/{calendar}/…` route names; None for the default calendar, which
    `/users/{id}/events`, `/calendar/events` and `/calendarView` address (user-list-events lists them
    together: https://learn.microsoft.com/graph/api/user-list-events)."""
    return req.params.get("calendar")


def _scope(req: GraphRequest) -> str:
    """The OData path of the calendar a request reads, for `@odata.context`."""
    calendar_id = _calendar_id(req)
    base = f"users('{req.target.id}')"
    return base if calendar_id is None else f"{base}/calendars('{calendar_id}')"


async def calendar_view(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/user-list-calendarview (the default calendar) and
    # https://learn.microsoft.com/graph/api/calendar-list-calendarview (a named one)
    start, end = requested_window(req)
    events = ctx.state.calendars.occurrences(req.target.email, start, end, calendar_id=_calendar_id(req))
    return _listing(ctx, req, events, f"{_scope(req)}/calendarView")


_FILTERS: Filters[Event] = (
    (re.compile(r"^\s*iCalUId\s+eq\s+'([^']*)'\s*$", re.I), lambda e, m: e.ical_uid == m.group(1)),
    (re.compile(r"^\s*transactionId\s+eq\s+'([^']*)'\s*$", re.I), lambda e, m: e.transaction_id == m.group(1)),
    (re.compile(r"^\s*subject\s+eq\s+'([^']*)'\s*$", re.I), lambda e, m: e.subject == m.group(1)),
    (
        re.compile(
            r"^\s*singleValueExtendedProperties/any\(\s*(\w+)\s*:\s*\1/id\s+eq\s+'([^']*)'\s+and\s+\1/value\s+eq\s+'([^']*)'\s*\)\s*$",
            re.I,
        ),
        lambda e, m: any(k.lower() == m.group(2).lower() and v == m.group(3) for k, v in e.extended_properties.items()),
    ),
)


async def list_events(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/user-list-events — singles and series masters, not expanded
    events = ctx.state.calendars.events(req.target.email, calendar_id=_calendar_id(req))
    invalid = GraphError(400, "ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes.")
    events = apply_filter(events, req.option("$filter"), _FILTERS, invalid)
    return _listing(ctx, req, events, f"{_scope(req)}/events")


def _created_response(ctx: GraphContext, req: GraphRequest, event: Event, status: int) -> GraphResponse:
    mailbox = req.target
    omit = req.fault is not None and req.fault.action is FaultAction.OMIT_JOIN_URL
    body = event_json(
        ctx, event, tz_name=requested_zone(req), select=req.select(), expand_properties=_expand(req), omit_join_url=omit
    )
    body = {"@odata.context": f"{ctx.graph_url}/$metadata#{_scope(req)}/events/$entity", **body}
    headers = _headers(req)
    if status == 201:
        headers["Location"] = f"{ctx.graph_url}/users('{mailbox.id}')/events('{quote(event.id, safe='')}')"
    return GraphResponse(status, body, headers)


def _calendar_error(exc: CalendarError) -> GraphError:
    status = {"ErrorItemNotFound": 404, "ErrorInvalidUser": 404, "ErrorAccessDenied": 400}.get(exc.code, 400)
    return GraphError(status, exc.code, exc.message)


async def create_event(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/user-post-events — 201 with the event; a repeated
    # transactionId returns the event created first (event resource: transactionId). In a named
    # calendar: https://learn.microsoft.com/graph/api/calendar-post-events
    mailbox = req.target
    draft = parse_draft(req.body, mailbox.time_zone)
    try:
        event = ctx.state.calendars.create(mailbox.email, draft, calendar_id=_calendar_id(req))
    except CalendarError as exc:
        raise _calendar_error(exc) from None
    return _created_response(ctx, req, event, 201)


def _event(ctx: GraphContext, req: GraphRequest) -> Event:
    event = ctx.state.calendars.get(req.target.email, req.params["id"])
    if event is None:
        raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
    return event


async def get_event(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/event-get
    return _created_response(ctx, req, _event(ctx, req), 200)


async def update_event(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/event-update — 200 with the updated event
    event = _event(ctx, req)
    changes = parse_event(req.body, event.time_zone)
    changes.pop("transaction_id", None)
    try:
        updated = ctx.state.calendars.update(req.target.email, event.id, changes)
    except CalendarError as exc:
        raise _calendar_error(exc) from None
    return _created_response(ctx, req, updated, 200)


async def delete_event(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/event-delete — 204; the organizer's delete cancels the meeting
    event = _event(ctx, req)
    try:
        ctx.state.calendars.delete(req.target.email, event.id)
    except CalendarError as exc:
        raise _calendar_error(exc) from None
    return GraphResponse(204)


async def cancel_event(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/event-cancel — 202; attendees get 400
    event = _event(ctx, req)
    try:
        ctx.state.calendars.cancel(req.target.email, event.id, str(body_get(req.body, "comment") or ""))
    except CalendarError as exc:
        raise _calendar_error(exc) from None
    return GraphResponse(202)


async def respond_event(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/event-accept (decline, tentativelyAccept alike) — 202
    event = _event(ctx, req)
    response = {
        "accept": Response.ACCEPTED,
        "decline": Response.DECLINED,
        "tentativelyaccept": Response.TENTATIVELY_ACCEPTED,
    }[req.params["action"].lower()]
    try:
        ctx.state.calendars.respond(req.target.email, event.id, response)
    except CalendarError as exc:
        raise _calendar_error(exc) from None
    return GraphResponse(202)


async def event_instances(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/event-list-instances
    master = _event(ctx, req)
    start, end = requested_window(req)
    instances = [
        e
        for e in ctx.state.calendars.occurrences(req.target.email, start, end)
        if e.series_master_id == master.id or (master.recurrence is None and e.id == master.id)
    ]
    return _listing(ctx, req, instances, f"users('{req.target.id}')/events('{master.id}')/instances")


def event_routes(calendar: str) -> tuple[Route, ...]:
    """The event and calendar-view operations under one calendar path (`/users/{user}/calendar`, …).

    Route keys name the operation, not the path, so faults and counters apply wherever it is called.
    """
    events = calendar + "/events"
    return (
        make_route("GET", calendar + "/calendarView", "graph:calendarView", calendar_view, READ, family="outlook"),
        make_route("GET", events, "graph:events.list", list_events, READ, family="outlook"),
        make_route("POST", events, "graph:events.create", create_event, WRITE, family="outlook"),
        make_route("GET", events + "/{id}", "graph:events.get", get_event, READ, family="outlook"),
        make_route("PATCH", events + "/{id}", "graph:events.update", update_event, WRITE, family="outlook"),
        make_route("DELETE", events + "/{id}", "graph:events.delete", delete_event, WRITE, family="outlook"),
        make_route("POST", events + "/{id}/cancel", "graph:events.cancel", cancel_event, WRITE, family="outlook"),
        make_route(
            "POST",
            events + r"/{id}/(?P<action>accept|decline|tentativelyAccept)",
            "graph:events.respond",
            respond_event,
            WRITE,
            family="outlook",
        ),
        make_route(
            "GET", events + "/{id}/instances", "graph:events.instances", event_instances, READ, family="outlook"
        ),
    )


# The default calendar: /users/{id}/events, /users/{id}/calendar/events and their calendarView.
ROUTES: tuple[Route, ...] = event_routes(r"/users/{user}(?:/calendar)?")
