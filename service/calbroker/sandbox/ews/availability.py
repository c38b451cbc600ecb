"""GetUserAvailability: free/busy views of many mailboxes in one request.

https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/getuseravailability-operation
Limits (configurable, ``SandboxSettings.ews_max_mailboxes`` / ``ews_max_window_days``): at most 100
MailboxData entries ("ErrorMailboxDataArrayTooBig: more than 100 entries are supplied") and a
TimeWindow of at most 42 days ("ErrorTimeIntervalTooBig … By default, the allowed limit is 42"),
https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/responsecode and
https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/timewindow .
The Availability service reports request-level errors as SOAP faults (``a:ErrorInvalidTimeInterval``
as seen in https://github.com/gautamsi/ews-javascript-api/issues/235) and mailbox-level ones inside
each FreeBusyResponse.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from calbroker.sandbox import timezones
from calbroker.sandbox.calendars import CalendarStore
from calbroker.sandbox.directory import Directory, EwsPrincipal, Mailbox
from calbroker.sandbox.events import EWS_DIGITS
from calbroker.sandbox.ews.items import BUSY_TYPES
from calbroker.sandbox.ews.render import event_hex_id, weekday_names
from calbroker.sandbox.ews.soap import (
    Element,
    SoapFault,
    child,
    find_text,
    format_local,
    m,
    parse_datetime,
    response_message,
    t,
    xml_bool,
)
from calbroker.sandbox.ews.timezones import LegacyTimeZone, legacy_timezone

_INVALID_WINDOW = "The time duration specified for FreeBusyViewOptions.TimeWindow is invalid."
_VIEWS = ("MergedOnly", "FreeBusy", "FreeBusyMerged", "Detailed", "DetailedMerged")
# What a caller without detail rights gets instead (AvailabilityOnly = "free/busy time" only);
# the documented example answers FreeBusyMerged to a DetailedMerged request for that reason.
_WITHOUT_DETAILS = {"Detailed": "FreeBusy", "DetailedMerged": "FreeBusyMerged"}


@dataclass(frozen=True, slots=True)
class AvailabilityLimits:
    max_mailboxes: int = 100
    max_window: timedelta = timedelta(days=42)


@dataclass(frozen=True, slots=True)
class _Window:
    start: datetime
    end: datetime
    interval: timedelta
    view: str
    zone: LegacyTimeZone | None

    def local(self, instant: datetime) -> str:
        if self.zone is None:
            return format_local(instant.astimezone(UTC))
        return format_local(self.zone.to_local(instant))


def _parse_window(body: Element, limits: AvailabilityLimits) -> _Window:
    tz_elem = body.find(t("TimeZone"))
    zone = LegacyTimeZone.from_xml(tz_elem) if tz_elem is not None else None
    options = body.find(t("FreeBusyViewOptions"))
    if options is None:
        raise SoapFault(
            "ErrorInvalidRequest", "The sandbox answers FreeBusyViewOptions only (no SuggestionsViewOptions)."
        )
    start_text = find_text(options, f"{t('TimeWindow')}/{t('StartTime')}")
    end_text = find_text(options, f"{t('TimeWindow')}/{t('EndTime')}")
    if not start_text or not end_text:
        raise SoapFault(
            "ErrorInvalidTimeInterval",
            "The time duration specified for FreeBusyViewOptions.TimeWindow is invalid.",
        )

    def instant(text: str) -> datetime:
        value = parse_datetime(text)
        if value.tzinfo is not None:
            return value.astimezone(UTC)
        return zone.to_utc(value) if zone is not None else value.replace(tzinfo=UTC)

    start, end = instant(start_text), instant(end_text)
    if end <= start:
        raise SoapFault(
            "ErrorInvalidTimeInterval",
            "The time duration specified for FreeBusyViewOptions.TimeWindow is invalid.",
        )
    if end - start > limits.max_window:
        allowed = limits.max_window.days
        actual = (end - start).days + (1 if (end - start) % timedelta(days=1) else 0)
        # Wording as Exchange Online words the same check (microsoftgraph/microsoft-graph-docs#19703).
        raise SoapFault(
            "ErrorTimeIntervalTooBig",
            "The requested time duration specified for FreeBusyViewOptions.TimeWindow is too long. "
            f"The allowed limit = {allowed} days; the actual limit = {actual} days.",
        )
    interval = int(find_text(options, t("MergedFreeBusyIntervalInMinutes")) or "30")
    if not 5 <= interval <= 1440:
        raise SoapFault(
            "ErrorInvalidMergedFreeBusyInterval",
            "The MergedFreeBusyInterval must be between 5 minutes and 1440 minutes.",
        )
    view = find_text(options, t("RequestedView")) or "DetailedMerged"
    if view not in _VIEWS:
        raise SoapFault("ErrorInvalidFreeBusyViewType", f"The RequestedView '{view}' is not supported.")
    return _Window(start, end, timedelta(minutes=interval), view, zone)


def get_user_availability(
    body: Element,
    parent: Element,
    *,
    account: EwsPrincipal,
    directory: Directory,
    calendars: CalendarStore,
    limits: AvailabilityLimits,
) -> None:
    """Append ``<m:GetUserAvailabilityResponse>`` for the request ``body`` to ``parent``."""
    entries = body.findall(f"{m('MailboxDataArray')}/{t('MailboxData')}")
    if not entries:
        raise SoapFault("ErrorMailboxDataArrayEmpty", "MailboxDataArray should contain at least one entry.")
    if len(entries) > limits.max_mailboxes:
        raise SoapFault(
            "ErrorMailboxDataArrayTooBig",
            f"The number of mailboxes in MailboxDataArray ({len(entries)}) exceeds the allowed maximum "
            f"of {limits.max_mailboxes}.",
        )
    window = _parse_window(body, limits)
    responses = child(child(parent, m("GetUserAvailabilityResponse")), m("FreeBusyResponseArray"))
    for entry in entries:
        address = find_text(entry, f"{t('Email')}/{t('Address')}") or ""
        wrapper = child(responses, m("FreeBusyResponse"))
        mailbox = directory.mailbox(address)
        if mailbox is None or mailbox.tenant_id != account.tenant_id:
            # Text as Exchange's MailRecipientNotFoundException reports it [unverified wording].
            text = f"Unable to resolve e-mail address {address} to an Active Directory object."
            _error(wrapper, "ErrorMailRecipientNotFound", text)
        elif not account.can_read_free_busy(mailbox):
            _error(wrapper, "ErrorNoFreeBusyAccess", f"No free/busy access is granted for {mailbox.email}.")
        else:
            response_message(wrapper, m("ResponseMessage"))
            _view(wrapper, mailbox, window, calendars, detailed=account.sees_details(mailbox))


def _error(wrapper: Element, code: str, text: str) -> None:
    response_message(wrapper, m("ResponseMessage"), code, text)
    child(child(wrapper, m("FreeBusyView")), t("FreeBusyViewType"), "None")


def _view(wrapper: Element, mailbox: Mailbox, window: _Window, calendars: CalendarStore, *, detailed: bool) -> None:
    view_type = window.view if detailed else _WITHOUT_DETAILS.get(window.view, window.view)
    view = child(wrapper, m("FreeBusyView"))
    child(view, t("FreeBusyViewType"), view_type)
    if view_type.endswith("Merged") or view_type == "MergedOnly":
        merged = calendars.availability_view(
            mailbox.email, window.start, window.end, window.interval, digits=EWS_DIGITS
        )
        child(view, t("MergedFreeBusy"), merged)
    if view_type != "MergedOnly":
        items = calendars.free_busy(mailbox.email, window.start, window.end, include_free=True)
        if items:
            array = child(view, t("CalendarEventArray"))
            for item in items:
                event = child(array, t("CalendarEvent"))
                child(event, t("StartTime"), window.local(item.start))
                child(event, t("EndTime"), window.local(item.end))
                child(event, t("BusyType"), BUSY_TYPES[item.status])
                if view_type.startswith("Detailed"):
                    details = child(event, t("CalendarEventDetails"))
                    child(details, t("ID"), event_hex_id(mailbox.email, item.event_id))
                    # Private items keep their time but not what they are.
                    if not item.is_private:
                        child(details, t("Subject"), item.subject)
                        child(details, t("Location"), item.location)
                    child(details, t("IsMeeting"), xml_bool(item.is_meeting))
                    child(details, t("IsRecurring"), xml_bool(item.is_recurring))
                    child(details, t("IsException"), xml_bool(item.is_exception))
                    child(details, t("IsReminderSet"), xml_bool(item.is_reminder_set))
                    child(details, t("IsPrivate"), xml_bool(item.is_private))
    hours = mailbox.working_hours
    working = child(view, t("WorkingHours"))
    legacy_timezone(working, timezones.zone(hours.time_zone), window.start.year)
    period = child(child(working, t("WorkingPeriodArray")), t("WorkingPeriod"))
    child(period, t("DayOfWeek"), weekday_names(hours.days))
    child(period, t("StartTimeInMinutes"), str(hours.start.hour * 60 + hours.start.minute))
    child(period, t("EndTimeInMinutes"), str(hours.end.hour * 60 + hours.end.minute))
