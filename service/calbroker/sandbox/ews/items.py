"""Calendar items on the EWS wire: ids, reading CalendarItem and Updates into the store's terms, recurrence.

- CalendarItem: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/calendaritem
  (child order follows CalendarItemType in Types.xsd: item properties first, then calendar ones)
- Field URIs: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/fielduri
- ExtendedFieldURI: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/extendedfielduri
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from calbroker.sandbox import timezones
from calbroker.sandbox.events import (
    Attendee,
    AttendeeType,
    Event,
    EventDraft,
    EventType,
    Response,
    Sensitivity,
    ShowAs,
)
from calbroker.sandbox.ews.soap import (
    Element,
    MalformedRequest,
    find_text,
    local_name,
    parse_bool,
    parse_datetime,
    t,
)
from calbroker.sandbox.recurrence import Recurrence, RecurrenceError

# --- ids ----------------------------------------------------------------------------------------


class InvalidId(Exception):
    """An ItemId/FolderId the sandbox did not issue (EWS: ErrorInvalidIdMalformed)."""


def _pack(prefix: str, *parts: str) -> str:
    return prefix + base64.b64encode("\n".join(parts).encode()).decode()


def _unpack(prefix: str, value: str, count: int) -> list[str]:
    if not value.startswith(prefix):
        raise InvalidId(value)
    try:
        parts = base64.b64decode(value[len(prefix) :], validate=True).decode().split("\n")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidId(value) from exc
    if len(parts) != count:
        raise InvalidId(value)
    return parts


def item_id(mailbox: str, event_id: str) -> str:
    """EWS ItemId of a store event: opaque base64 naming the owning mailbox (like Exchange's entry ids)."""
    return _pack("AAMkAGI", mailbox, event_id)


def parse_item_id(value: str) -> tuple[str, str]:
    mailbox, event_id = _unpack("AAMkAGI", value, 2)
    return mailbox, event_id


def folder_id(mailbox: str, folder: str) -> str:
    return _pack("AQMkAGI", mailbox, folder)


def parse_folder_id(value: str) -> tuple[str, str]:
    mailbox, folder = _unpack("AQMkAGI", value, 2)
    return mailbox, folder


FOLDER_CHANGE_KEY = "AQAAABYAAAA="


# --- extended properties --------------------------------------------------------------------------

# Distinguished property sets (MS-OXPROPS); keys use Graph's singleValueExtendedProperty id form
# ("String {guid} Name X", https://learn.microsoft.com/en-us/graph/api/resources/singlevalueextendedproperty)
# so a property written over EWS is the same property Graph reads.
PROPERTY_SETS: Mapping[str, str] = {
    "PublicStrings": "00020329-0000-0000-c000-000000000046",
    "Common": "00062008-0000-0000-c000-000000000046",
    "Appointment": "00062002-0000-0000-c000-000000000046",
    "Meeting": "6ed8da90-450b-101b-98da-00aa003f1305",
    "Address": "00062004-0000-0000-c000-000000000046",
    "InternetHeaders": "00020386-0000-0000-c000-000000000046",
    "Task": "00062003-0000-0000-c000-000000000046",
    "UnifiedMessaging": "4442858e-a9e3-4e80-b900-317a210cc15b",
    "Sharing": "00062040-0000-0000-c000-000000000046",
    "CalendarAssistant": "11000e07-b51b-40d6-af21-caa85edab1d0",
}


def extended_key(uri: Element) -> str:
    """The store key of an ``<t:ExtendedFieldURI>`` (Graph's id form; property sets lower-cased)."""
    kind = uri.get("PropertyType") or "String"
    tag = uri.get("PropertyTag")
    if tag:
        return f"{kind} 0x{int(tag, 0):04x}"
    guid = PROPERTY_SETS.get(uri.get("DistinguishedPropertySetId") or "") or (uri.get("PropertySetId") or "")
    if not guid:
        raise MalformedRequest("ExtendedFieldURI needs a property set or a PropertyTag")
    name = uri.get("PropertyName")
    if name is not None:
        return f"{kind} {{{guid.lower()}}} Name {name}"
    prop_id = uri.get("PropertyId")
    if prop_id is None:
        raise MalformedRequest("ExtendedFieldURI needs PropertyName, PropertyId or PropertyTag")
    return f"{kind} {{{guid.lower()}}} Id 0x{int(prop_id, 0):x}"


# --- time --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeContext:
    """How naive request times are read: the item's StartTimeZone, else TimeZoneContext, else UTC."""

    zone: tzinfo = UTC

    def aware(self, text: str, zone: tzinfo | None = None) -> datetime:
        value = parse_datetime(text)
        if value.tzinfo is None:
            return value.replace(tzinfo=zone or self.zone)
        return value


def zone_from_element(elem: Element | None) -> tzinfo | None:
    """``<t:StartTimeZone Id=".."/>`` (Exchange 2010+) or ``<t:MeetingTimeZone TimeZoneName=".."/>``."""
    if elem is None:
        return None
    name = elem.get("Id") or elem.get("TimeZoneName") or elem.get("Name")
    if not name:
        return None
    try:
        return timezones.zone(name)
    except timezones.UnknownTimeZone as exc:
        raise MalformedRequest(f"Unknown time zone {name!r}") from exc


# --- enums on the wire ----------------------------------------------------------------------------

BUSY_TYPES: Mapping[ShowAs, str] = {
    ShowAs.FREE: "Free",
    ShowAs.TENTATIVE: "Tentative",
    ShowAs.BUSY: "Busy",
    ShowAs.OOF: "OOF",
    ShowAs.WORKING_ELSEWHERE: "WorkingElsewhere",
    ShowAs.UNKNOWN: "NoData",
}
_SHOW_AS = {v: k for k, v in BUSY_TYPES.items()}
SENSITIVITIES = {
    Sensitivity.NORMAL: "Normal",
    Sensitivity.PERSONAL: "Personal",
    Sensitivity.PRIVATE: "Private",
    Sensitivity.CONFIDENTIAL: "Confidential",
}
_SENSITIVITY = {v: k for k, v in SENSITIVITIES.items()}
RESPONSE_TYPES = {
    Response.NONE: "Unknown",
    Response.ORGANIZER: "Organizer",
    Response.TENTATIVELY_ACCEPTED: "Tentative",
    Response.ACCEPTED: "Accept",
    Response.DECLINED: "Decline",
    Response.NOT_RESPONDED: "NoResponseReceived",
}
ITEM_TYPES = {
    EventType.SINGLE: "Single",
    EventType.OCCURRENCE: "Occurrence",
    EventType.EXCEPTION: "Exception",
    EventType.SERIES_MASTER: "RecurringMaster",
}
ATTENDEE_LISTS = (
    ("RequiredAttendees", AttendeeType.REQUIRED),
    ("OptionalAttendees", AttendeeType.OPTIONAL),
    ("Resources", AttendeeType.RESOURCE),
)
# Graph's pattern and range types (the store's) and the EWS elements that carry them.
RECURRENCE_PATTERNS = {
    "daily": "DailyRecurrence",
    "weekly": "WeeklyRecurrence",
    "absoluteMonthly": "AbsoluteMonthlyRecurrence",
    "relativeMonthly": "RelativeMonthlyRecurrence",
    "absoluteYearly": "AbsoluteYearlyRecurrence",
    "relativeYearly": "RelativeYearlyRecurrence",
}
_PATTERN_TYPES = {v: k for k, v in RECURRENCE_PATTERNS.items()}
_RANGE_TYPES = {"NoEndRecurrence": "noEnd", "EndDateRecurrence": "endDate", "NumberedRecurrence": "numbered"}
INDEX_NAMES = {"first": "First", "second": "Second", "third": "Third", "fourth": "Fourth", "last": "Last"}
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def _enum(value: str | None, mapping: Mapping[str, Any], what: str) -> Any:
    if value is None or value not in mapping:
        raise MalformedRequest(f"Invalid {what} value {value!r}")
    return mapping[value]


# --- parsing: CreateItem and UpdateItem -----------------------------------------------------------


def _attendees(elem: Element, list_name: str, kind: AttendeeType) -> list[Attendee]:
    found = []
    for node in elem.findall(f"{t(list_name)}/{t('Attendee')}"):
        address = find_text(node, f"{t('Mailbox')}/{t('EmailAddress')}")
        if not address:
            raise MalformedRequest("An attendee needs Mailbox/EmailAddress")
        name = find_text(node, f"{t('Mailbox')}/{t('Name')}") or ""
        found.append(Attendee(email=address.lower(), name=name, type=kind))
    return found


def _recurrence(elem: Element, start: datetime, zone: tzinfo) -> Recurrence:
    """``<t:Recurrence>`` (pattern + range) as the store's Graph-shaped Recurrence.

    https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/recurrence-recurrencetype
    """
    if len(elem) != 2:
        raise MalformedRequest("Recurrence needs a pattern and a range")
    pattern, range_ = elem[0], elem[1]
    kind = local_name(pattern.tag)
    days = tuple(d.lower() for d in (find_text(pattern, t("DaysOfWeek")) or "").split())
    index = (find_text(pattern, t("DayOfWeekIndex")) or "First").lower()
    month_name = find_text(pattern, t("Month"))

    def day(text: str | None) -> date | None:
        return date.fromisoformat(text[:10]) if text else None

    try:
        return Recurrence(
            pattern_type=_enum(kind, _PATTERN_TYPES, "recurrence pattern"),
            interval=int(find_text(pattern, t("Interval")) or "1"),
            days_of_week=days,
            day_of_month=int(find_text(pattern, t("DayOfMonth")) or "0"),
            month=MONTHS.index(month_name) + 1 if month_name else 0,
            index=index,
            first_day_of_week=(find_text(pattern, t("FirstDayOfWeek")) or "Sunday").lower(),
            range_type=_enum(local_name(range_.tag), _RANGE_TYPES, "recurrence range"),
            start_date=day(find_text(range_, t("StartDate"))) or start.astimezone(zone).date(),
            end_date=day(find_text(range_, t("EndDate"))),
            number_of_occurrences=int(find_text(range_, t("NumberOfOccurrences")) or "0"),
            time_zone=getattr(zone, "key", "UTC"),
        )
    except (RecurrenceError, ValueError) as exc:
        raise MalformedRequest(f"Invalid recurrence: {exc}") from exc


def _body(elem: Element) -> tuple[str, str]:
    node = elem.find(t("Body"))
    if node is None:
        return "", "html"
    return node.text or "", "text" if (node.get("BodyType") or "HTML").lower() == "text" else "html"


def _all_day_bounds(start: datetime, end: datetime, zone: tzinfo) -> tuple[datetime, datetime]:
    """All-day items span whole local days: Exchange moves start back and end forward to midnight.

    https://learn.microsoft.com/en-us/exchange/client-developer/exchange-web-services/how-to-create-all-day-events-by-using-ews-in-exchange
    """
    first = datetime.combine(start.astimezone(zone).date(), time(), zone)
    local_end = end.astimezone(zone)
    last_day = local_end.date() if local_end.time() == time() else local_end.date() + timedelta(days=1)
    return first, datetime.combine(max(last_day, first.date() + timedelta(days=1)), time(), zone)


def draft_from_xml(elem: Element, times: TimeContext) -> EventDraft:
    """A ``<t:CalendarItem>`` from CreateItem as the store's EventDraft."""
    start_text, end_text = find_text(elem, t("Start")), find_text(elem, t("End"))
    if not start_text or not end_text:
        raise MalformedRequest("A calendar item needs Start and End")
    zone = zone_from_element(elem.find(t("StartTimeZone"))) or zone_from_element(elem.find(t("MeetingTimeZone")))
    item_zone = zone or times.zone
    start, end = times.aware(start_text, item_zone), times.aware(end_text, item_zone)
    is_all_day = parse_bool(find_text(elem, t("IsAllDayEvent")))
    if is_all_day:
        start, end = _all_day_bounds(start, end, item_zone)
    body, body_type = _body(elem)
    attendees = [a for name, kind in ATTENDEE_LISTS for a in _attendees(elem, name, kind)]
    recurrence_elem = elem.find(t("Recurrence"))
    extended = {}
    for node in elem.findall(t("ExtendedProperty")):
        path = node.find(t("ExtendedFieldURI"))
        if path is None:  # Elements without children are falsy: compare with None
            raise MalformedRequest("ExtendedProperty needs an ExtendedFieldURI")
        extended[extended_key(path)] = find_text(node, t("Value")) or ""
    return EventDraft(
        subject=find_text(elem, t("Subject")) or "",
        start=start,
        end=end,
        time_zone=getattr(item_zone, "key", None) if zone is not None else None,
        is_all_day=is_all_day,
        show_as=_enum(find_text(elem, t("LegacyFreeBusyStatus")) or "Busy", _SHOW_AS, "LegacyFreeBusyStatus"),
        sensitivity=_enum(
            find_text(elem, t("Sensitivity")) or "Normal",
            _SENSITIVITY,
            "Sensitivity",
        ),
        importance=(find_text(elem, t("Importance")) or "Normal").lower(),
        body=body,
        body_type=body_type,
        location=find_text(elem, t("Location")) or "",
        attendees=attendees,
        recurrence=_recurrence(recurrence_elem, start, item_zone) if recurrence_elem is not None else None,
        reminder_minutes=int(find_text(elem, t("ReminderMinutesBeforeStart")) or "15"),
        is_reminder_on=parse_bool(find_text(elem, t("ReminderIsSet")), default=True),
        categories=[n.text or "" for n in elem.findall(f"{t('Categories')}/{t('String')}")],
        extended_properties=extended,
        allow_new_time_proposals=parse_bool(find_text(elem, t("AllowNewTimeProposal")), default=True),
        response_requested=parse_bool(find_text(elem, t("IsResponseRequested")), default=True),
    )


# Fields exchangelib may send in SetItemField that the sandbox accepts without storing.
_IGNORED_UPDATES = frozenset(
    {
        "calendar:EndTimeZone",
        "calendar:MeetingTimeZone",
        "calendar:IsOnlineMeeting",
        "calendar:ConferenceType",
        "calendar:MeetingWorkspaceUrl",
        "calendar:NetShowUrl",
        "calendar:When",
        "item:Culture",
    }
)


class UnsupportedUpdate(Exception):
    """A SetItemField/DeleteItemField on a property the sandbox cannot change (ErrorInvalidPropertySet)."""


def changes_from_updates(updates: Element, event: Event, times: TimeContext) -> dict[str, Any]:
    """``<t:Updates>`` of an ItemChange as store changes (EventDraft field names), applied in order.

    https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/updates-item
    """
    changes: dict[str, Any] = {}
    zone: tzinfo = timezones.zone(event.time_zone)
    attendees = {kind: [a for a in event.attendees if a.type is kind] for _, kind in ATTENDEE_LISTS}
    extended = dict(event.extended_properties)
    for update in updates:
        action = local_name(update.tag)
        path = next((c for c in update if local_name(c.tag) != "CalendarItem"), None)
        value = update.find(t("CalendarItem"))
        if path is None:
            raise MalformedRequest(f"{action} needs a property path")
        if action == "AppendToItemField":
            raise UnsupportedUpdate("AppendToItemField")
        delete = action == "DeleteItemField"
        if not delete and value is None:
            raise MalformedRequest(f"{action} needs a CalendarItem with the new value")
        if local_name(path.tag) == "ExtendedFieldURI":
            key = extended_key(path)
            if delete:
                extended.pop(key, None)
            else:
                assert value is not None
                extended[key] = find_text(value, f"{t('ExtendedProperty')}/{t('Value')}") or ""
            changes["extended_properties"] = {k: extended.get(k, "") for k in {*extended, key}}
            continue
        uri = path.get("FieldURI") or ""
        if uri in _IGNORED_UPDATES:
            continue
        source = value if value is not None else Element("empty")
        match uri:
            case "item:Subject":
                changes["subject"] = find_text(source, t("Subject")) or ""
            case "item:Body":
                changes["body"], changes["body_type"] = _body(source)
            case "item:Sensitivity":
                changes["sensitivity"] = _enum(
                    find_text(source, t("Sensitivity")) or "Normal",
                    _SENSITIVITY,
                    "Sensitivity",
                )
            case "item:Importance":
                changes["importance"] = (find_text(source, t("Importance")) or "Normal").lower()
            case "item:Categories":
                changes["categories"] = [n.text or "" for n in source.findall(f"{t('Categories')}/{t('String')}")]
            case "item:ReminderIsSet":
                changes["is_reminder_on"] = parse_bool(find_text(source, t("ReminderIsSet")))
            case "item:ReminderMinutesBeforeStart":
                changes["reminder_minutes"] = int(find_text(source, t("ReminderMinutesBeforeStart")) or "0")
            case "calendar:Start" | "calendar:End":
                name = uri.split(":")[1]
                text = find_text(source, t(name))
                if not text:
                    raise UnsupportedUpdate(uri)  # Start and End cannot be deleted
                changes[name.lower()] = times.aware(text, zone)
            case "calendar:StartTimeZone":
                zone = zone_from_element(source.find(t("StartTimeZone"))) or zone
                changes["time_zone"] = getattr(zone, "key", "UTC")
            case "calendar:IsAllDayEvent":
                changes["is_all_day"] = parse_bool(find_text(source, t("IsAllDayEvent")))
            case "calendar:LegacyFreeBusyStatus":
                changes["show_as"] = _enum(
                    find_text(source, t("LegacyFreeBusyStatus")) or "Busy", _SHOW_AS, "LegacyFreeBusyStatus"
                )
            case "calendar:Location":
                changes["location"] = find_text(source, t("Location")) or ""
            case "calendar:RequiredAttendees" | "calendar:OptionalAttendees" | "calendar:Resources":
                list_name = uri.split(":")[1]
                kind = dict(ATTENDEE_LISTS)[list_name]
                attendees[kind] = _attendees(source, list_name, kind)
                changes["attendees"] = [a for _, k in ATTENDEE_LISTS for a in attendees[k]]
            case "calendar:IsResponseRequested":
                changes["response_requested"] = parse_bool(find_text(source, t("IsResponseRequested")))
            case "calendar:AllowNewTimeProposal":
                changes["allow_new_time_proposals"] = parse_bool(find_text(source, t("AllowNewTimeProposal")))
            case "calendar:Recurrence":
                node = source.find(t("Recurrence"))
                start = changes.get("start", event.start)
                changes["recurrence"] = _recurrence(node, start, zone) if node is not None else None
            case _:
                raise UnsupportedUpdate(uri)
    if changes.get("is_all_day", event.is_all_day) and ({"start", "end", "is_all_day"} & set(changes)):
        start, end = _all_day_bounds(changes.get("start", event.start), changes.get("end", event.end), zone)
        changes["start"], changes["end"] = start, end
    return changes
