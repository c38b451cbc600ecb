"""Rendering calendar items for GetItem and FindItem: which properties a shape asks for, and the
``<t:CalendarItem>`` element in CalendarItemType order (Types.xsd).

https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/calendaritem
https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/itemshape
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from calbroker.sandbox.directory import Directory
from calbroker.sandbox.events import Attendee, AttendeeType, Event, EventType
from calbroker.sandbox.ews.items import (
    ATTENDEE_LISTS,
    BUSY_TYPES,
    FOLDER_CHANGE_KEY,
    INDEX_NAMES,
    ITEM_TYPES,
    MONTHS,
    RECURRENCE_PATTERNS,
    RESPONSE_TYPES,
    SENSITIVITIES,
    extended_key,
    folder_id,
    item_id,
)
from calbroker.sandbox.ews.soap import (
    Element,
    child,
    find_text,
    format_datetime,
    format_duration,
    local_name,
    t,
    xml_bool,
)
from calbroker.sandbox.ews.timezones import WEEKDAYS, windows_id
from calbroker.sandbox.recurrence import Recurrence

# --- rendering --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    """What an ItemShape asks for: a base shape, extra field URIs and extended properties (echoed as sent)."""

    base: str = "IdOnly"
    fields: frozenset[str] = frozenset()
    extended: tuple[Element, ...] = ()
    body_type: str = "Best"
    in_find: bool = False

    @classmethod
    def from_xml(cls, elem: Element | None, *, in_find: bool = False) -> Shape:
        if elem is None:
            return cls(in_find=in_find)
        extra = elem.find(t("AdditionalProperties"))
        uris = [] if extra is None else [c for c in extra if local_name(c.tag) == "FieldURI"]
        extended = () if extra is None else tuple(c for c in extra if local_name(c.tag) == "ExtendedFieldURI")
        return cls(
            base=find_text(elem, t("BaseShape")) or "IdOnly",
            fields=frozenset(u.get("FieldURI") or "" for u in uris),
            extended=extended,
            body_type=find_text(elem, t("BodyType")) or "Best",
            in_find=in_find,
        )

    def wants(self, uri: str) -> bool:
        if uri in self.fields:
            return True
        if self.base == "AllProperties":
            return not (self.in_find and uri in _NOT_IN_FIND)
        return self.base == "Default" and uri in _DEFAULT_FIELDS


# FindItem cannot return these (EWS answers them only from GetItem).
_NOT_IN_FIND = frozenset(
    {
        "item:Body",
        "item:TextBody",
        "item:UniqueBody",
        "item:MimeContent",
        "item:Attachments",
        "calendar:RequiredAttendees",
        "calendar:OptionalAttendees",
        "calendar:Resources",
        "calendar:ModifiedOccurrences",
        "calendar:DeletedOccurrences",
        "calendar:Recurrence",
    }
)
_DEFAULT_FIELDS = frozenset(
    {
        "item:ParentFolderId",
        "item:ItemClass",
        "item:Subject",
        "item:Sensitivity",
        "item:DateTimeReceived",
        "item:Size",
        "item:Importance",
        "item:IsSubmitted",
        "item:IsDraft",
        "item:IsFromMe",
        "item:IsResend",
        "item:IsUnmodified",
        "item:DateTimeSent",
        "item:DateTimeCreated",
        "item:ReminderDueBy",
        "item:ReminderIsSet",
        "item:ReminderMinutesBeforeStart",
        "item:DisplayCc",
        "item:DisplayTo",
        "item:HasAttachments",
        "item:Culture",
        "calendar:UID",
        "calendar:Start",
        "calendar:End",
        "calendar:IsAllDayEvent",
        "calendar:LegacyFreeBusyStatus",
        "calendar:Location",
        "calendar:IsMeeting",
        "calendar:IsCancelled",
        "calendar:IsRecurring",
        "calendar:MeetingRequestWasSent",
        "calendar:IsResponseRequested",
        "calendar:CalendarItemType",
        "calendar:MyResponseType",
        "calendar:Organizer",
        "calendar:Duration",
        "calendar:AppointmentSequenceNumber",
        "calendar:AppointmentState",
    }
)


@dataclass(slots=True)
class RenderContext:
    """What item rendering needs besides the event: the directory (names) and this server's URL."""

    directory: Directory
    owa_url: str = "https://mail.fabrikam.com/owa/"


def _mailbox_elem(parent: Element, tag: str, email: str, name: str, ctx: RenderContext) -> None:
    found = ctx.directory.mailbox(email)
    box = child(parent, tag)
    child(box, t("Name"), name or (found.display_name if found else email))
    child(box, t("EmailAddress"), found.email if found else email)
    child(box, t("RoutingType"), "SMTP")
    child(box, t("MailboxType"), "Mailbox" if found else "OneOff")


def _display(attendees: Iterable[Attendee], kind: AttendeeType, ctx: RenderContext) -> str:
    names = []
    for a in attendees:
        if a.type is kind:
            found = ctx.directory.mailbox(a.email)
            names.append(a.name or (found.display_name if found else a.email))
    return "; ".join(names)


def _appointment_state(event: Event) -> str:
    # Bit mask: 1 meeting, 2 received (attendee copy), 4 cancelled.
    # https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/appointmentstate
    state = 1 if event.is_meeting else 0
    if event.is_meeting and not event.is_organizer:
        state |= 2
    if event.is_cancelled:
        state |= 4
    return str(state)


def _render_recurrence(parent: Element, recurrence: Recurrence) -> None:
    node = child(parent, t("Recurrence"))
    pattern = child(node, t(RECURRENCE_PATTERNS[recurrence.pattern_type]))
    days = " ".join(d.capitalize() for d in recurrence.days_of_week)
    month = MONTHS[(recurrence.month or recurrence.start_date.month) - 1]
    index = INDEX_NAMES.get(recurrence.index, "First")
    match recurrence.pattern_type:
        case "daily":
            child(pattern, t("Interval"), str(recurrence.interval))
        case "weekly":
            child(pattern, t("Interval"), str(recurrence.interval))
            child(pattern, t("DaysOfWeek"), days)
            child(pattern, t("FirstDayOfWeek"), recurrence.first_day_of_week.capitalize())
        case "absoluteMonthly":
            child(pattern, t("Interval"), str(recurrence.interval))
            child(pattern, t("DayOfMonth"), str(recurrence.day_of_month or recurrence.start_date.day))
        case "relativeMonthly":
            child(pattern, t("Interval"), str(recurrence.interval))
            child(pattern, t("DaysOfWeek"), days)
            child(pattern, t("DayOfWeekIndex"), index)
        case "absoluteYearly":
            child(pattern, t("DayOfMonth"), str(recurrence.day_of_month or recurrence.start_date.day))
            child(pattern, t("Month"), month)
        case _:
            child(pattern, t("DaysOfWeek"), days)
            child(pattern, t("DayOfWeekIndex"), index)
            child(pattern, t("Month"), month)
    if recurrence.range_type == "endDate" and recurrence.end_date is not None:
        end = child(node, t("EndDateRecurrence"))
        child(end, t("StartDate"), recurrence.start_date.isoformat())
        child(end, t("EndDate"), recurrence.end_date.isoformat())
    elif recurrence.range_type == "numbered":
        end = child(node, t("NumberedRecurrence"))
        child(end, t("StartDate"), recurrence.start_date.isoformat())
        child(end, t("NumberOfOccurrences"), str(recurrence.number_of_occurrences))
    else:
        child(child(node, t("NoEndRecurrence")), t("StartDate"), recurrence.start_date.isoformat())


def _occurrence_info(parent: Element, tag: str, owner: str, event: Event) -> None:
    node = child(parent, tag)
    child(node, t("ItemId"), Id=item_id(owner, event.id), ChangeKey=event.change_key)
    child(node, t("Start"), format_datetime(event.start))
    child(node, t("End"), format_datetime(event.end))
    if event.original_start is not None:
        child(node, t("OriginalStart"), format_datetime(event.original_start))


def _text_body(event: Event) -> str:
    if event.body_type == "text":
        return event.body
    return re.sub(r"<[^>]+>", "", event.body)


def render_calendar_item(parent: Element, event: Event, shape: Shape, ctx: RenderContext) -> Element:
    """``<t:CalendarItem>`` with the properties ``shape`` asks for, in CalendarItemType order."""
    item = child(parent, t("CalendarItem"))
    owner = event.mailbox
    want = shape.wants
    child(item, t("ItemId"), Id=item_id(owner, event.id), ChangeKey=event.change_key)
    if want("item:ParentFolderId"):
        child(item, t("ParentFolderId"), Id=folder_id(owner, "calendar"), ChangeKey=FOLDER_CHANGE_KEY)
    if want("item:ItemClass"):
        child(item, t("ItemClass"), "IPM.Appointment")
    if want("item:Subject"):
        child(item, t("Subject"), event.subject)
    if want("item:Sensitivity"):
        child(item, t("Sensitivity"), SENSITIVITIES[event.sensitivity])
    if want("item:Body"):
        as_text = shape.body_type == "Text" or (shape.body_type == "Best" and event.body_type == "text")
        body = _text_body(event) if as_text else event.body
        child(item, t("Body"), body, BodyType="Text" if as_text else "HTML")
    if want("item:DateTimeReceived"):
        child(item, t("DateTimeReceived"), format_datetime(event.created))
    if want("item:Size"):
        child(item, t("Size"), str(1024 + len(event.body.encode()) + 64 * len(event.attendees)))
    if want("item:Categories") and event.categories:
        cats = child(item, t("Categories"))
        for name in event.categories:
            child(cats, t("String"), name)
    if want("item:Importance"):
        child(item, t("Importance"), event.importance.capitalize())
    for uri, value in (
        ("item:IsSubmitted", False),
        ("item:IsDraft", False),
        ("item:IsFromMe", False),
        ("item:IsResend", False),
        ("item:IsUnmodified", event.version == 1),
    ):
        if want(uri):
            child(item, t(uri.split(":")[1]), xml_bool(value))
    if want("item:DateTimeSent"):
        child(item, t("DateTimeSent"), format_datetime(event.created))
    if want("item:DateTimeCreated"):
        child(item, t("DateTimeCreated"), format_datetime(event.created))
    if want("item:ReminderDueBy") and event.is_reminder_on:
        due = event.start - timedelta(minutes=event.reminder_minutes)
        child(item, t("ReminderDueBy"), format_datetime(due))
    if want("item:ReminderIsSet"):
        child(item, t("ReminderIsSet"), xml_bool(event.is_reminder_on))
    if want("item:ReminderMinutesBeforeStart"):
        child(item, t("ReminderMinutesBeforeStart"), str(event.reminder_minutes))
    if want("item:DisplayCc"):
        child(item, t("DisplayCc"), _display(event.attendees, AttendeeType.OPTIONAL, ctx))
    if want("item:DisplayTo"):
        child(item, t("DisplayTo"), _display(event.attendees, AttendeeType.REQUIRED, ctx))
    if want("item:HasAttachments"):
        child(item, t("HasAttachments"), "false")
    for path in shape.extended:
        stored = event.extended_properties.get(extended_key(path))
        if stored:  # a deleted property is stored as ""
            prop = child(item, t("ExtendedProperty"))
            prop.append(path)  # echoed as requested, as Exchange does
            child(prop, t("Value"), stored)
    if want("item:Culture"):
        child(item, t("Culture"), "en-US")
    if want("item:EffectiveRights"):
        rights = child(item, t("EffectiveRights"))
        for name, value in (
            ("CreateAssociated", False),
            ("CreateContents", False),
            ("CreateHierarchy", False),
            ("Delete", True),
            ("Modify", True),
            ("Read", True),
            ("ViewPrivateItems", True),
        ):
            child(rights, t(name), xml_bool(value))
    if want("item:LastModifiedName"):
        child(item, t("LastModifiedName"), event.organizer_name)
    if want("item:LastModifiedTime"):
        child(item, t("LastModifiedTime"), format_datetime(event.last_modified))
    if want("item:IsAssociated"):
        child(item, t("IsAssociated"), "false")
    if want("item:WebClientReadFormQueryString"):
        query = f"?ItemID={item_id(owner, event.id)}&exvsurl=1&viewmodel=CalendarItemDetails"
        child(item, t("WebClientReadFormQueryString"), ctx.owa_url + query)
    if want("item:TextBody"):
        child(item, t("TextBody"), _text_body(event), BodyType="Text")
    _render_calendar_fields(item, event, shape, ctx)
    return item


def _render_calendar_fields(item: Element, event: Event, shape: Shape, ctx: RenderContext) -> None:
    want = shape.wants
    owner = event.mailbox
    if want("calendar:UID"):
        child(item, t("UID"), event.ical_uid)
    if want("calendar:RecurrenceId") and event.original_start is not None:
        child(item, t("RecurrenceId"), format_datetime(event.original_start))
    if want("calendar:Start"):
        child(item, t("Start"), format_datetime(event.start))
    if want("calendar:End"):
        child(item, t("End"), format_datetime(event.end))
    if want("calendar:OriginalStart") and event.original_start is not None:
        child(item, t("OriginalStart"), format_datetime(event.original_start))
    if want("calendar:IsAllDayEvent"):
        child(item, t("IsAllDayEvent"), xml_bool(event.is_all_day))
    if want("calendar:LegacyFreeBusyStatus"):
        child(item, t("LegacyFreeBusyStatus"), BUSY_TYPES[event.show_as])
    if want("calendar:Location") and event.location:
        child(item, t("Location"), event.location)
    is_recurring = event.type is not EventType.SINGLE
    for uri, flag in (
        ("calendar:IsMeeting", event.is_meeting),
        ("calendar:IsCancelled", event.is_cancelled),
        ("calendar:IsRecurring", is_recurring),
        ("calendar:MeetingRequestWasSent", event.is_meeting and event.is_organizer),
        ("calendar:IsResponseRequested", event.response_requested),
    ):
        if want(uri):
            child(item, t(uri.split(":")[1]), xml_bool(flag))
    if want("calendar:CalendarItemType"):
        child(item, t("CalendarItemType"), ITEM_TYPES[event.type])
    if want("calendar:MyResponseType"):
        child(item, t("MyResponseType"), RESPONSE_TYPES[event.response])
    if want("calendar:Organizer"):
        organizer = child(item, t("Organizer"))
        _mailbox_elem(organizer, t("Mailbox"), event.organizer_email, event.organizer_name, ctx)
    for list_name, kind in ATTENDEE_LISTS:
        members = [a for a in event.attendees if a.type is kind]
        if not want(f"calendar:{list_name}") or not members:
            continue
        container = child(item, t(list_name))
        for attendee in members:
            node = child(container, t("Attendee"))
            _mailbox_elem(node, t("Mailbox"), attendee.email, attendee.name, ctx)
            child(node, t("ResponseType"), RESPONSE_TYPES[attendee.response])
            if attendee.response_time is not None:
                child(node, t("LastResponseTime"), format_datetime(attendee.response_time))
    if want("calendar:ConflictingMeetingCount"):
        child(item, t("ConflictingMeetingCount"), "0")
    if want("calendar:AdjacentMeetingCount"):
        child(item, t("AdjacentMeetingCount"), "0")
    if want("calendar:Duration"):
        child(item, t("Duration"), format_duration(event.end - event.start))
    if want("calendar:AppointmentReplyTime") and event.response_time is not None:
        child(item, t("AppointmentReplyTime"), format_datetime(event.response_time))
    if want("calendar:AppointmentSequenceNumber"):
        child(item, t("AppointmentSequenceNumber"), str(event.version - 1))
    if want("calendar:AppointmentState"):
        child(item, t("AppointmentState"), _appointment_state(event))
    if event.type is EventType.SERIES_MASTER and event.recurrence is not None:
        if want("calendar:Recurrence"):
            _render_recurrence(item, event.recurrence)
        if want("calendar:ModifiedOccurrences") and event.exceptions:
            modified = child(item, t("ModifiedOccurrences"))
            for original in sorted(event.exceptions):
                _occurrence_info(modified, t("Occurrence"), owner, event.exceptions[original])
        if want("calendar:DeletedOccurrences") and event.cancelled_occurrences:
            deleted = child(item, t("DeletedOccurrences"))
            for original in sorted(event.cancelled_occurrences):
                child(child(deleted, t("DeletedOccurrence")), t("Start"), format_datetime(original))
    zone_id = windows_id(event.time_zone)
    for uri, tag in (("calendar:StartTimeZone", "StartTimeZone"), ("calendar:EndTimeZone", "EndTimeZone")):
        if want(uri):
            child(item, t(tag), Id=zone_id)
    if want("calendar:AllowNewTimeProposal"):
        child(item, t("AllowNewTimeProposal"), xml_bool(event.allow_new_time_proposals))
    if want("calendar:IsOnlineMeeting"):
        child(item, t("IsOnlineMeeting"), xml_bool(event.is_online_meeting))
    if want("calendar:NetShowUrl") and event.online_meeting is not None:
        child(item, t("NetShowUrl"), event.online_meeting.join_url)


def weekday_names(days: Iterable[str]) -> str:
    """``Monday Tuesday`` from the directory's lower-case day names (WorkingPeriod/DayOfWeek)."""
    return " ".join(d.capitalize() for d in days if d.capitalize() in WEEKDAYS)


def event_hex_id(mailbox: str, event_id: str) -> str:
    """A hex entry-id-looking identifier for CalendarEventDetails/ID."""
    return hashlib.sha1(f"{mailbox}|{event_id}".encode(), usedforsecurity=False).hexdigest().upper()
