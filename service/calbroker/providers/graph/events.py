"""Calendar events and Teams meetings over Microsoft Graph, for `GraphProvider`'s event methods.

- Event resource: https://learn.microsoft.com/graph/api/resources/event ; create
  https://learn.microsoft.com/graph/api/user-post-events (``transactionId``: "a custom identifier
  specified by a client app for the server to avoid redundant POST operations in case of client
  retries to create the same event"), update https://learn.microsoft.com/graph/api/event-update,
  cancel https://learn.microsoft.com/graph/api/event-cancel, delete
  https://learn.microsoft.com/graph/api/event-delete, calendarView
  https://learn.microsoft.com/graph/api/user-list-calendarview.
- Teams through the event: https://learn.microsoft.com/graph/outlook-calendar-online-meetings.
- Teams without an event (hybrid): https://learn.microsoft.com/graph/api/onlinemeeting-createorget.
- The marker: https://learn.microsoft.com/graph/api/resources/singlevalueextendedproperty (same
  MAPI named property EWS writes, so one marker serves both protocols).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import msgspec

from calbroker.domain.busy import BusyStatus
from calbroker.domain.errors import CredentialsRejected, TeamsUnavailable, UpstreamRejected
from calbroker.domain.events import Attendee, AttendeeType, EventSpec, OnlineMeeting, UpstreamEvent
from calbroker.domain.intervals import Interval
from calbroker.logs import get_logger
from calbroker.providers.graph.client import GraphClient, GraphResponse
from calbroker.providers.graph.wire import DateTimeTimeZone, GraphModel, wall_time
from calbroker.providers.protocol import Deadline
from calbroker.providers.windows_zones import WINDOWS_TO_IANA

__all__ = ["MARKER_PROPERTY", "GraphEvents"]

_log = get_logger(__name__)

MARKER_PROPERTY = "String {00020329-0000-0000-C000-000000000046} Name CalbrokerEventId"
"""PS_PUBLIC_STRINGS named property in Graph's id form; EWS writes the same one (`ews/events.py`)."""

_PREFER_UTC = {"Prefer": 'outlook.timezone="UTC"'}
_NOT_FOUND = frozenset({"erroritemnotfound", "itemnotfound", "notfound", "request_resourcenotfound"})
_SHOW_AS = {
    BusyStatus.FREE: "free",
    BusyStatus.TENTATIVE: "tentative",
    BusyStatus.BUSY: "busy",
    BusyStatus.OOF: "oof",
    BusyStatus.WORKING_ELSEWHERE: "workingElsewhere",
}
_SHOW_AS_IN = {value.lower(): status for status, value in _SHOW_AS.items()}
# IANA → Windows (CLDR's default territory); Graph also accepts IANA names, used when none maps.
_WINDOWS_NAMES = {iana: windows for windows, iana in reversed(WINDOWS_TO_IANA.items())}
_JOIN_URL_RESERVE_S = 0.5
"""Deadline kept back from re-reading a missing join URL, for recording the event."""


# --- wire ------------------------------------------------------------------------------------------


class EmailAddress(GraphModel):
    address: str | None = None
    name: str | None = None


class Recipient(GraphModel):
    email_address: EmailAddress | None = None


class AttendeeWire(GraphModel):
    email_address: EmailAddress | None = None
    type: str | None = None


class ItemBody(GraphModel):
    content_type: str = "text"
    content: str = ""


class LocationWire(GraphModel):
    display_name: str | None = None


class OnlineMeetingInfo(GraphModel):
    join_url: str | None = None


class ExtendedProperty(GraphModel):
    id: str
    value: str | None = None


class EventWrite(GraphModel):
    """A create or PATCH body: only the fields set are sent (omit_defaults)."""

    subject: str | None = None
    body: ItemBody | None = None
    start: DateTimeTimeZone | None = None
    end: DateTimeTimeZone | None = None
    location: LocationWire | None = None
    attendees: list[AttendeeWire] | None = None
    show_as: str | None = None
    is_reminder_on: bool | None = None
    reminder_minutes_before_start: int | None = None
    is_online_meeting: bool | None = None
    online_meeting_provider: str | None = None
    transaction_id: str | None = None
    single_value_extended_properties: list[ExtendedProperty] | None = None


class GraphEvent(GraphModel):
    id: str
    i_cal_u_id: str | None = msgspec.field(default=None, name="iCalUId")
    subject: str | None = None
    start: DateTimeTimeZone | None = None
    end: DateTimeTimeZone | None = None
    location: LocationWire | None = None
    attendees: list[AttendeeWire] = msgspec.field(default_factory=list)
    organizer: Recipient | None = None
    show_as: str | None = None
    is_cancelled: bool | None = None
    is_all_day: bool | None = None
    is_online_meeting: bool | None = None
    online_meeting: OnlineMeetingInfo | None = None
    single_value_extended_properties: list[ExtendedProperty] = msgspec.field(default_factory=list)

    def to_domain(self) -> UpstreamEvent | None:
        """None for an item without a usable time span (Exchange can hold zero-length items)."""
        if self.start is None or self.end is None:
            return None
        start, end = self.start.instant(), self.end.instant()
        if end <= start:
            return None
        marker = next((p.value for p in self.single_value_extended_properties if _same_property(p.id)), None)
        address = self.organizer.email_address.address if self.organizer and self.organizer.email_address else None
        return UpstreamEvent(
            id=self.id,
            interval=Interval(start, end),
            summary=self.subject or "",
            organizer=address.lower() if address else None,
            location=(self.location.display_name or "") if self.location else "",
            show_as=_SHOW_AS_IN.get((self.show_as or "busy").lower(), BusyStatus.BUSY),
            attendees=tuple(a for a in (_attendee(w) for w in self.attendees) if a is not None),
            ical_uid=self.i_cal_u_id,
            is_cancelled=bool(self.is_cancelled),
            is_all_day=bool(self.is_all_day),
            is_online_meeting=bool(self.is_online_meeting),
            join_url=self.online_meeting.join_url if self.online_meeting else None,
            marker=marker,
        )


class EventsPage(GraphModel):
    value: list[GraphEvent] = msgspec.field(default_factory=list)
    next_link: str | None = msgspec.field(default=None, name="@odata.nextLink")


class UserId(GraphModel):
    id: str


class OnlineMeetingWire(GraphModel):
    id: str
    join_web_url: str | None = None
    join_url: str | None = None


class CreateOrGet(GraphModel):
    external_id: str
    start_date_time: str
    end_date_time: str
    subject: str


_event_decoder = msgspec.json.Decoder(GraphEvent)
_page_decoder = msgspec.json.Decoder(EventsPage)
_user_decoder = msgspec.json.Decoder(UserId)
_meeting_decoder = msgspec.json.Decoder(OnlineMeetingWire)


def _same_property(prop_id: str) -> bool:
    # Graph may return the property set GUID in another case than we sent it.
    return prop_id.lower() == MARKER_PROPERTY.lower()


def _attendee(wire: AttendeeWire) -> Attendee | None:
    address = wire.email_address.address if wire.email_address else None
    if not address:
        return None
    kind = {"optional": AttendeeType.OPTIONAL, "resource": AttendeeType.RESOURCE}.get(
        (wire.type or "").lower(), AttendeeType.REQUIRED
    )
    name = wire.email_address.name if wire.email_address else None
    return Attendee(address.lower(), kind, name or None)


def _when(moment: datetime, tzid: str) -> DateTimeTimeZone:
    """Wall time in the event's zone, named the Windows way when there is one (Graph's own form)."""
    local = moment.astimezone(ZoneInfo(tzid))
    return DateTimeTimeZone(date_time=wall_time(local), time_zone=_WINDOWS_NAMES.get(tzid, tzid))


def _utc(moment: datetime) -> str:
    return wall_time(moment.astimezone(UTC)) + "Z"


def _write(spec: EventSpec, changed: frozenset[str] | None) -> EventWrite:
    """The Graph properties for `changed` fields of `spec` (all of them when `changed` is None)."""

    def wants(name: str) -> bool:
        return changed is None or name in changed

    body = EventWrite()
    if wants("summary"):
        body.subject = spec.summary
    if wants("description"):
        body.body = ItemBody(content_type="text", content=spec.description)
    if wants("interval") or wants("tzid"):
        body.start = _when(spec.interval.start, spec.tzid)
        body.end = _when(spec.interval.end, spec.tzid)
    if wants("location"):
        body.location = LocationWire(display_name=spec.location)
    if wants("attendees"):
        body.attendees = [
            AttendeeWire(email_address=EmailAddress(address=a.email, name=a.name), type=a.type.value)
            for a in spec.attendees
        ]
    if wants("show_as"):
        body.show_as = _SHOW_AS[spec.show_as]
    if wants("reminder_minutes"):
        body.is_reminder_on = spec.reminder_minutes is not None
        if spec.reminder_minutes is not None:
            body.reminder_minutes_before_start = spec.reminder_minutes
    if spec.teams_meeting and wants("teams_meeting"):
        body.is_online_meeting = True
        body.online_meeting_provider = "teamsForBusiness"
    return body


def _is_not_found(exc: UpstreamRejected) -> bool:
    return (exc.upstream_code or "").lower() in _NOT_FOUND


class GraphEvents:
    """Event and online-meeting calls of one Graph connection, through its provider's `GraphClient`."""

    def __init__(self, client: GraphClient) -> None:
        self._client = client
        self._object_ids: dict[str, str] = {}

    def _path(self, organizer: str, suffix: str = "") -> str:
        return f"/users/{quote(organizer, safe='@')}/events{suffix}"

    async def create(self, spec: EventSpec, *, marker: str, deadline: Deadline) -> UpstreamEvent:
        """POST with `transactionId` = marker: a retry after a lost answer returns the first event."""
        body = _write(spec, None)
        body.transaction_id = marker
        body.single_value_extended_properties = [ExtendedProperty(id=MARKER_PROPERTY, value=marker)]
        response = await self._client.request(
            "POST",
            self._path(spec.organizer),
            json=body,
            headers=_PREFER_UTC,
            deadline=deadline,
            mailbox=spec.organizer,
        )
        event = self._decode(response)
        if spec.teams_meeting and event.join_url is None:
            event = await self._await_join_url(spec.organizer, event, deadline)
        return event

    async def update(
        self, spec: EventSpec, upstream_id: str, changed: frozenset[str], deadline: Deadline
    ) -> UpstreamEvent:
        """PATCH only the changed properties; Teams stays as it is (the join URL never changes)."""
        path = self._path(spec.organizer, f"/{quote(upstream_id, safe='')}")
        if changed:
            response = await self._client.request(
                "PATCH",
                path,
                json=_write(spec, changed),
                headers=_PREFER_UTC,
                deadline=deadline,
                mailbox=spec.organizer,
            )
            event = self._decode(response)
        else:
            found = await self.get(spec.organizer, upstream_id, deadline)
            if found is None:
                raise UpstreamRejected(
                    f"The event {upstream_id} is no longer in {spec.organizer}'s calendar.",
                    upstream_code="ErrorItemNotFound",
                    mailbox=spec.organizer,
                )
            event = found
        if spec.teams_meeting and event.join_url is None:
            event = await self._await_join_url(spec.organizer, event, deadline)
        return event

    async def cancel(self, organizer: str, upstream_id: str, *, notify: bool, deadline: Deadline) -> None:
        """The cancel action when attendees must hear of it (organizer only), else DELETE."""
        path = self._path(organizer, f"/{quote(upstream_id, safe='')}")
        try:
            if notify:
                await self._client.request(
                    "POST", path + "/cancel", json={"comment": ""}, deadline=deadline, mailbox=organizer
                )
            else:
                await self._client.request("DELETE", path, deadline=deadline, mailbox=organizer)
        except UpstreamRejected as exc:
            if not _is_not_found(exc):
                raise
            _log.info("graph.event_already_gone", mailbox=organizer)

    async def get(self, organizer: str, upstream_id: str, deadline: Deadline) -> UpstreamEvent | None:
        query = urlencode({"$expand": f"singleValueExtendedProperties($filter=id eq '{MARKER_PROPERTY}')"})
        path = self._path(organizer, f"/{quote(upstream_id, safe='')}?{query}")
        try:
            response = await self._client.request(
                "GET", path, headers=_PREFER_UTC, deadline=deadline, mailbox=organizer
            )
        except UpstreamRejected as exc:
            if _is_not_found(exc):
                return None
            raise
        return self._decode(response)

    async def find(self, organizer: str, marker: str, deadline: Deadline) -> UpstreamEvent | None:
        """Filter on the marker property (documented for singleValueExtendedProperties)."""
        query = urlencode(
            {
                "$filter": (
                    f"singleValueExtendedProperties/any(ep: ep/id eq '{MARKER_PROPERTY}' and ep/value eq '{marker}')"
                ),
                "$expand": f"singleValueExtendedProperties($filter=id eq '{MARKER_PROPERTY}')",
                "$top": "2",
            }
        )
        response = await self._client.request(
            "GET", self._path(organizer, f"?{query}"), headers=_PREFER_UTC, deadline=deadline, mailbox=organizer
        )
        for wire in response.decode(_page_decoder).value:
            event = wire.to_domain()
            if event is not None and event.marker == marker:
                return event
        return None

    async def calendar_view(self, mailbox: str, window: Interval, deadline: Deadline) -> list[UpstreamEvent]:
        """Every page of the calendar view (occurrences expanded), in UTC, each item with its marker if it
        has one (https://learn.microsoft.com/graph/api/singlevaluelegacyextendedproperty-get)."""
        query = urlencode(
            {
                "startDateTime": _utc(window.start),
                "endDateTime": _utc(window.end),
                "$select": "id,iCalUId,subject,start,end,location,attendees,organizer,showAs,isCancelled,"
                "isAllDay,isOnlineMeeting,onlineMeeting",
                "$expand": f"singleValueExtendedProperties($filter=id eq '{MARKER_PROPERTY}')",
            }
        )
        url: str | None = f"/users/{quote(mailbox, safe='@')}/calendarView?{query}"
        headers = {"Prefer": 'outlook.timezone="UTC", odata.maxpagesize=200'}
        found: list[UpstreamEvent] = []
        while url is not None:
            page = (await self._client.request("GET", url, headers=headers, deadline=deadline, mailbox=mailbox)).decode(
                _page_decoder
            )
            found.extend(e for e in (w.to_domain() for w in page.value) if e is not None)
            url = page.next_link
        return sorted(found, key=lambda e: (e.interval.start, e.interval.end, e.id))

    async def create_online_meeting(
        self, organizer: str, *, subject: str, interval: Interval, external_id: str, deadline: Deadline
    ) -> OnlineMeeting:
        """createOrGet by `external_id`, so a retried booking reuses its meeting instead of orphaning one.

        App-only calls address the organizer by object id and need a Teams application access
        policy (https://learn.microsoft.com/graph/cloud-communication-online-meeting-application-access-policy).
        """
        user = await self._object_id(organizer, deadline)
        body = CreateOrGet(
            external_id=external_id,
            start_date_time=_utc(interval.start),
            end_date_time=_utc(interval.end),
            subject=subject,
        )
        try:
            response = await self._client.request(
                "POST", f"/users/{user}/onlineMeetings/createOrGet", json=body, deadline=deadline, mailbox=organizer
            )
        except CredentialsRejected as exc:
            if exc.upstream_code is None or exc.upstream_code.upper().startswith("AADSTS"):
                raise
            raise TeamsUnavailable(
                f"Microsoft Graph refused to create a Teams meeting for {organizer} ({exc.upstream_code}). The "
                "app needs the OnlineMeetings.ReadWrite.All application permission and a Teams application "
                "access policy granted to this user (Grant-CsApplicationAccessPolicy).",
                mailbox=organizer,
            ) from None
        meeting = response.decode(_meeting_decoder)
        join_url = meeting.join_web_url or meeting.join_url
        if not join_url:
            raise UpstreamRejected(
                f"Microsoft Graph created a Teams meeting for {organizer} without a join URL.", mailbox=organizer
            )
        return OnlineMeeting(meeting.id, join_url)

    async def delete_online_meeting(self, organizer: str, meeting_id: str, deadline: Deadline) -> None:
        user = await self._object_id(organizer, deadline)
        try:
            await self._client.request(
                "DELETE",
                f"/users/{user}/onlineMeetings/{quote(meeting_id, safe='')}",
                deadline=deadline,
                mailbox=organizer,
            )
        except UpstreamRejected as exc:
            if not _is_not_found(exc):
                raise

    async def _object_id(self, mailbox: str, deadline: Deadline) -> str:
        cached = self._object_ids.get(mailbox)
        if cached is None:
            response = await self._client.request(
                "GET", f"/users/{quote(mailbox, safe='@')}?$select=id", deadline=deadline, mailbox=mailbox
            )
            cached = self._object_ids[mailbox] = response.decode(_user_decoder).id
        return cached

    async def _await_join_url(self, organizer: str, event: UpstreamEvent, deadline: Deadline) -> UpstreamEvent:
        """Microsoft sometimes returns the event before the Teams meeting exists: re-read it until the
        join URL appears or the deadline is near; the caller reports `teams.status: pending` otherwise."""
        wait = 0.2
        while deadline.remaining() > wait + _JOIN_URL_RESERVE_S:
            await asyncio.sleep(wait)
            found = await self.get(organizer, event.id, deadline)
            if found is None:
                return event
            if found.join_url:
                return found
            wait = min(wait * 2, 2.0)
        _log.info("graph.join_url_pending", mailbox=organizer)
        return event

    def _decode(self, response: GraphResponse) -> UpstreamEvent:
        event = response.decode(_event_decoder).to_domain()
        if event is None:
            raise UpstreamRejected("Microsoft Graph returned an event without a usable start and end.")
        return event
