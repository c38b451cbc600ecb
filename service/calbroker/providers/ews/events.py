"""Calendar events over EWS with exchangelib, as the impersonated organizer (run in worker threads).

- CreateItem with meeting invitations:
  https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/createitem-operation-calendar-item
- UpdateItem (SendMeetingInvitationsOrCancellations):
  https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/updateitem-operation
- DeleteItem with SendMeetingCancellations, the organizer's way to cancel a meeting:
  https://learn.microsoft.com/en-us/exchange/client-developer/exchange-web-services/how-to-cancel-a-meeting-by-using-ews-in-exchange
- The marker is a PS_PUBLIC_STRINGS named property (ExtendedFieldURI), found again with a FindItem
  restriction: https://learn.microsoft.com/en-us/exchange/client-developer/exchange-web-services/how-to-get-custom-extended-properties-by-using-ews-in-exchange

Every function takes exchangelib's per-request timeout first (the `EwsCalls.run` contract) and an
`account_for` callable that builds the impersonating Account in the worker thread.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from exchangelib import Attendee as EwsAttendee
from exchangelib import Body, CalendarItem, EWSDateTime, ExtendedProperty, Mailbox
from exchangelib.errors import ErrorItemNotFound
from exchangelib.items import SEND_TO_ALL_AND_SAVE_COPY, SEND_TO_NONE

from calbroker.domain.busy import BusyStatus
from calbroker.domain.errors import UpstreamRejected
from calbroker.domain.events import Attendee, AttendeeType, EventSpec, UpstreamEvent
from calbroker.domain.intervals import Interval

__all__ = [
    "FREE_BUSY_IN",
    "MARKER_FIELD",
    "Accounts",
    "cancel_event",
    "create_event",
    "find_event",
    "get_event",
    "item_instant",
    "list_events",
    "register_marker",
    "update_event",
]


class CalbrokerMarker(ExtendedProperty):  # type: ignore[misc]  # exchangelib ships no types
    """The marker property; Graph names the same property `String {00020329-…} Name CalbrokerEventId`."""

    distinguished_property_set_id = "PublicStrings"
    property_name = "CalbrokerEventId"
    property_type = "String"


MARKER_FIELD = "calbroker_marker"
_register_lock = threading.Lock()

_FIELDS = (
    "subject",
    "start",
    "end",
    "location",
    "legacy_free_busy_status",
    "required_attendees",
    "optional_attendees",
    "resources",
    "organizer",
    "uid",
    "is_cancelled",
    "is_all_day",
    "_start_timezone",
    "_end_timezone",
    MARKER_FIELD,
)
_FREE_BUSY = {
    BusyStatus.FREE: "Free",
    BusyStatus.TENTATIVE: "Tentative",
    BusyStatus.BUSY: "Busy",
    BusyStatus.OOF: "OOF",
    BusyStatus.WORKING_ELSEWHERE: "WorkingElsewhere",
}
FREE_BUSY_IN = {value: status for status, value in _FREE_BUSY.items()}
"""LegacyFreeBusyStatus → BusyStatus (NoData and anything unknown are read as busy by callers)."""
_ATTENDEE_LISTS = (
    ("required_attendees", AttendeeType.REQUIRED),
    ("optional_attendees", AttendeeType.OPTIONAL),
    ("resources", AttendeeType.RESOURCE),
)
TEAMS_LOCATION = "Microsoft Teams Meeting"


class Accounts:
    """Impersonating Accounts kept per mailbox (least recently used dropped first).

    exchangelib looks up the root and calendar folders (GetFolder) once per Account and caches them
    behind locks, so keeping the Account saves those round trips on every later write for the same
    organizer; one Account serves several worker threads.
    """

    def __init__(self, make: Callable[[str], Any], size: int = 256) -> None:
        self._make = make
        self._size = size
        self._accounts: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, mailbox: str) -> Any:
        """The mailbox's Account (call in a worker thread: building one touches nothing remote)."""
        with self._lock:
            account = self._accounts.get(mailbox)
            if account is not None:
                self._accounts.move_to_end(mailbox)
                return account
        account = self._make(mailbox)
        with self._lock:
            account = self._accounts.setdefault(mailbox, account)
            while len(self._accounts) > self._size:
                self._accounts.popitem(last=False)
        return account


def register_marker() -> None:
    """Teach exchangelib's CalendarItem the marker field (process-wide, once)."""
    with _register_lock:
        if MARKER_FIELD not in {field.name for field in CalendarItem.FIELDS}:
            CalendarItem.register(MARKER_FIELD, CalbrokerMarker)


def invitation_body(description: str, join_url: str | None) -> str:
    """The meeting text; with a Teams link from Graph, the join block Outlook itself would add."""
    if join_url is None:
        return description
    block = f"Microsoft Teams meeting\nJoin on your computer, mobile app or room device:\n{join_url}"
    rule = "_" * 64
    return f"{description}\n\n{rule}\n{block}\n{rule}" if description else f"{rule}\n{block}\n{rule}"


def _when(moment: datetime, tzid: str) -> Any:
    return EWSDateTime.from_datetime(moment.astimezone(ZoneInfo(tzid)))


def _ews_attendees(attendees: Iterable[Attendee], kind: AttendeeType) -> list[Any]:
    return [
        EwsAttendee(mailbox=Mailbox(email_address=a.email, name=a.name), response_type="Unknown")
        for a in attendees
        if a.type is kind
    ]


def _apply(item: Any, spec: EventSpec, changed: frozenset[str] | None, join_url: str | None) -> list[str]:
    """Set `changed` fields of `spec` (all when None) on `item`; returns exchangelib field names set."""

    def wants(*names: str) -> bool:
        return changed is None or any(name in changed for name in names)

    touched: list[str] = []
    if wants("summary"):
        item.subject = spec.summary
        touched.append("subject")
    if wants("description", "teams_meeting"):
        item.body = Body(invitation_body(spec.description, join_url))
        touched.append("body")
    if wants("interval", "tzid"):
        item.start = _when(spec.interval.start, spec.tzid)
        item.end = _when(spec.interval.end, spec.tzid)
        touched += ["start", "end"]
    if wants("location", "teams_meeting"):
        item.location = spec.location or (TEAMS_LOCATION if join_url else None)
        touched.append("location")
    if wants("attendees"):
        for field, kind in _ATTENDEE_LISTS:
            setattr(item, field, _ews_attendees(spec.attendees, kind) or None)
            touched.append(field)
    if wants("show_as"):
        item.legacy_free_busy_status = _FREE_BUSY[spec.show_as]
        touched.append("legacy_free_busy_status")
    if wants("reminder_minutes"):
        item.reminder_is_set = spec.reminder_minutes is not None
        touched.append("reminder_is_set")
        if spec.reminder_minutes is not None:
            item.reminder_minutes_before_start = spec.reminder_minutes
            touched.append("reminder_minutes_before_start")
    return touched


def _address(mailbox: Any) -> str | None:
    address = getattr(mailbox, "email_address", None)
    return str(address).lower() if address else None


def item_instant(value: Any, zone: Any, *, end: bool) -> datetime | None:
    """exchangelib gives EWSDateTime, or for all-day items an EWSDate in the item's zone whose end is
    inclusive (it subtracts a day): midnight of the day after, then."""
    if isinstance(value, datetime):
        return datetime.fromtimestamp(value.timestamp(), UTC)
    if isinstance(value, date):
        day = value + timedelta(days=1) if end else value
        return datetime.combine(day, time(), zone or UTC).astimezone(UTC)
    return None


def _to_domain(item: Any) -> UpstreamEvent | None:
    start = item_instant(item.start, getattr(item, "_start_timezone", None), end=False)
    end = item_instant(item.end, getattr(item, "_end_timezone", None), end=True)
    if start is None or end is None or end <= start:
        return None
    attendees: list[Attendee] = []
    for field, kind in _ATTENDEE_LISTS:
        for attendee in getattr(item, field, None) or ():
            address = _address(attendee.mailbox)
            if address:
                attendees.append(Attendee(address, kind, attendee.mailbox.name or None))
    marker = getattr(item, MARKER_FIELD, None)
    return UpstreamEvent(
        id=str(item.id),
        interval=Interval(start, end),
        summary=item.subject or "",
        organizer=_address(item.organizer),
        location=item.location or "",
        show_as=FREE_BUSY_IN.get(item.legacy_free_busy_status or "Busy", BusyStatus.BUSY),
        attendees=tuple(attendees),
        ical_uid=item.uid,
        is_cancelled=bool(item.is_cancelled),
        is_all_day=bool(item.is_all_day),
        marker=str(marker) if marker else None,
    )


def _fetch(account: Any, item_id: str) -> Any | None:
    """GetItem for one id (the current ChangeKey comes with it); None when the item is gone."""
    found = next(iter(account.fetch(ids=[(item_id, None)], only_fields=list(_FIELDS))))
    if isinstance(found, ErrorItemNotFound):
        return None
    if isinstance(found, Exception):
        raise found
    return found


def _find(account: Any, marker: str) -> Any | None:
    query = account.calendar.filter(**{MARKER_FIELD: marker}).only(*_FIELDS)
    # Compare again here: the restriction is what Exchange evaluates, this is our own check.
    return next((item for item in query if getattr(item, MARKER_FIELD, None) == marker), None)


def _converted(item: Any) -> UpstreamEvent:
    event = _to_domain(item)
    if event is None:
        raise UpstreamRejected("Exchange returned a calendar item without a usable start and end.")
    return event


def create_event(
    _timeout_s: float,
    *,
    account_for: Callable[[], Any],
    spec: EventSpec,
    marker: str,
    join_url: str | None,
    look_first: bool,
) -> UpstreamEvent:
    """CreateItem (invitations to all, copy saved) unless the marker shows an earlier attempt got through."""
    account = account_for()
    if look_first:
        existing = _find(account, marker)
        if existing is not None:
            return _converted(existing)
    item = CalendarItem(account=account, folder=account.calendar)
    _apply(item, spec, None, join_url)
    setattr(item, MARKER_FIELD, marker)
    item.save(send_meeting_invitations=SEND_TO_ALL_AND_SAVE_COPY if spec.attendees else SEND_TO_NONE)
    created = _fetch(account, str(item.id))
    if created is None:
        raise ErrorItemNotFound("The calendar item just created could not be read back.")
    return _converted(created)


def update_event(
    _timeout_s: float,
    *,
    account_for: Callable[[], Any],
    spec: EventSpec,
    upstream_id: str,
    changed: frozenset[str],
    join_url: str | None,
) -> UpstreamEvent:
    """GetItem for the current ChangeKey, then UpdateItem of the changed fields; attendees are told."""
    account = account_for()
    item = _fetch(account, upstream_id)
    if item is None:
        raise ErrorItemNotFound(f"The calendar item {upstream_id} is no longer in the organizer's calendar.")
    touched = _apply(item, spec, changed, join_url)
    if touched:
        had_attendees = any(getattr(item, field, None) for field, _ in _ATTENDEE_LISTS)
        notify = SEND_TO_ALL_AND_SAVE_COPY if spec.attendees or had_attendees else SEND_TO_NONE
        item.save(update_fields=touched, send_meeting_invitations=notify)
    return _converted(item)  # what we set, on the item as read: no second GetItem


def cancel_event(_timeout_s: float, *, account_for: Callable[[], Any], upstream_id: str, notify: bool) -> None:
    """DeleteItem; with `notify` Exchange sends the cancellation to every attendee first."""
    account = account_for()
    item = _fetch(account, upstream_id)
    if item is not None:
        item.delete(send_meeting_cancellations=SEND_TO_ALL_AND_SAVE_COPY if notify else SEND_TO_NONE)


def get_event(_timeout_s: float, *, account_for: Callable[[], Any], upstream_id: str) -> UpstreamEvent | None:
    item = _fetch(account_for(), upstream_id)
    return _to_domain(item) if item is not None else None


def find_event(_timeout_s: float, *, account_for: Callable[[], Any], marker: str) -> UpstreamEvent | None:
    item = _find(account_for(), marker)
    return _to_domain(item) if item is not None else None


def list_events(_timeout_s: float, *, account_for: Callable[[], Any], window: Interval) -> list[UpstreamEvent]:
    """FindItem with a CalendarView (occurrences expanded; Exchange does not page calendar views)."""
    account = account_for()
    start = EWSDateTime.from_datetime(window.start)
    end = EWSDateTime.from_datetime(window.end)
    found = (_to_domain(item) for item in account.calendar.view(start=start, end=end).only(*_FIELDS))
    return sorted((e for e in found if e is not None), key=lambda e: (e.interval.start, e.interval.end, e.id))
