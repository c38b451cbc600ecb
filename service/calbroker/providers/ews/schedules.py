"""GetUserAvailability answers as domain values: busy blocks, and working hours in an IANA zone.

Times: we send the request's ``<t:TimeZone>`` as UTC, so ``CalendarEvent`` Start/End (local times
without offset, https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/calendarevent)
come back as UTC wall-clock and exchangelib tags them with UTC; nothing here depends on the
mailbox's own zone.

Working hours (https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/workinghours)
are lossy over EWS, and we say so rather than guess silently:

- the zone comes only as the legacy ``Bias``/``StandardTime``/``DaylightTime`` rule *for one year*,
  never by name. Where the connection may open the mailbox's calendar, the mailbox's own zone name
  is read from its working hours configuration ([MS-OXOCFG] 2.2.5.2.1, the ``WorkHours`` object
  whose ``TimeZone/Name`` Exchange itself builds the availability answer from; `zone_name_of_work_hours`)
  and wins. Otherwise we pick the Windows zone of CLDR's table whose UTC offsets over that year match
  the rule exactly, the one CLDR maps the most locations to among equals (Berlin, not Paris or
  Budapest: `windows_zones.zone_from_rule`); failing that, a fixed ``Etc/GMT±h`` zone for whole-hour
  offsets without DST; failing that, no working hours (never invented ones). The chosen zone's own
  rules then apply to every year of a window, which is what Exchange does with the mailbox's zone.
- ``EndTimeInMinutes`` 1440 means midnight at the end of the day (exchangelib parses it as 00:00);
  periods Exchange cannot express the way we do (ending before they start) are dropped.
- ``DayOfWeek`` values other than the seven weekdays (``Day``, ``Weekday``, ``WeekendDay``) are not
  parsed by exchangelib and are lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

from exchangelib.util import ParseError, to_xml

from calbroker.domain.busy import BusyBlock, BusyStatus
from calbroker.domain.errors import UpstreamError
from calbroker.domain.intervals import Interval
from calbroker.domain.schedules import MailboxSchedule
from calbroker.domain.working_hours import Weekday, WeeklyPeriod, WorkingHours
from calbroker.providers.windows_zones import ZoneRule, ZoneTransition, zone_from_rule

__all__ = [
    "BUSY_TYPES",
    "busy_blocks",
    "merged_blocks",
    "rule_from_timezone",
    "schedule_from_view",
    "utc_datetime",
    "working_hours_from_view",
    "zone_name_of_work_hours",
]

BUSY_TYPES: dict[str, BusyStatus | None] = {
    "Free": None,
    "Tentative": BusyStatus.TENTATIVE,
    "Busy": BusyStatus.BUSY,
    "OOF": BusyStatus.OOF,
    "WorkingElsewhere": BusyStatus.WORKING_ELSEWHERE,
    # NoData: Exchange could not tell (e.g. outside the published free/busy range). Unknown time
    # is not bookable time, so it blocks like Busy (design §6.1: never a silent "free").
    "NoData": BusyStatus.BUSY,
}
"""EWS ``BusyType`` → our status; Free time is not a busy block, so it maps to None."""

# MergedFreeBusy digits, 0 Free … 5 NoData (FreeBusyViewOptions/MergedFreeBusy).
_MERGED_DIGITS = ("Free", "Tentative", "Busy", "OOF", "WorkingElsewhere", "NoData")
_WEEKDAYS = tuple(Weekday)  # exchangelib numbers DayOfWeek 1 = Monday … 7 = Sunday
_SAMPLE_US = 6 * 3600 * 1_000_000


def utc_datetime(value: Any) -> datetime:
    """An exchangelib EWSDateTime as a plain aware UTC datetime (EWSDateTime refuses stdlib zones)."""
    offset: timedelta | None = value.utcoffset()
    if offset is None:
        raise ValueError(f"naive time {value!r} from Exchange")
    wall = datetime(
        value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond, tzinfo=UTC
    )
    return wall - offset


def busy_blocks(events: Iterable[Any]) -> list[BusyBlock]:
    """``CalendarEvent``s → busy blocks; Free and zero-length events are dropped."""
    blocks: list[BusyBlock] = []
    for event in events:
        status = BUSY_TYPES.get(str(event.busy_type), BusyStatus.BUSY)
        if status is None or event.start is None or event.end is None:
            continue
        start, end = utc_datetime(event.start), utc_datetime(event.end)
        if start < end:
            blocks.append(BusyBlock(Interval(start, end), status))
    return blocks


def merged_blocks(digits: str, start: datetime, interval: timedelta) -> list[BusyBlock]:
    """A ``MergedFreeBusy`` string → busy blocks (used when Exchange sent no CalendarEvent array)."""
    blocks: list[BusyBlock] = []
    for index, digit in enumerate(digits):
        if not digit.isdigit() or int(digit) >= len(_MERGED_DIGITS):
            continue
        status = BUSY_TYPES[_MERGED_DIGITS[int(digit)]]
        if status is not None:
            slot_start = start + index * interval
            blocks.append(BusyBlock(Interval(slot_start, slot_start + interval), status))
    return blocks


def _change(raw: Any) -> ZoneTransition | None:
    if raw is None or raw.iso_month is None or raw.time is None:
        return None
    weekday = int(raw.weekday or 7) - 1
    return ZoneTransition(int(raw.bias or 0), int(raw.iso_month), weekday % 7, int(raw.occurrence or 1), raw.time)


def rule_from_timezone(raw: Any) -> ZoneRule | None:
    """exchangelib's ``TimeZone`` property → a hashable rule, or None when absent."""
    if raw is None or raw.bias is None:
        return None
    return ZoneRule(int(raw.bias), _change(raw.standard_time), _change(raw.daylight_time))


def _period(day_number: int, start: time, end: time) -> WeeklyPeriod | None:
    if end == time(0):  # EndTimeInMinutes 1440: the end of the day
        return WeeklyPeriod(_WEEKDAYS[(day_number - 1) % 7], start, None)
    if end <= start:
        return None
    return WeeklyPeriod(_WEEKDAYS[(day_number - 1) % 7], start, end)


def working_hours_from_view(view: Any, year: int) -> WorkingHours | None:
    """The view's working hours, or None when Exchange sent none or they cannot be placed in a zone."""
    periods_raw: Sequence[Any] = view.working_hours or ()
    rule = rule_from_timezone(view.working_hours_timezone)
    if not periods_raw or rule is None:
        return None
    zone = zone_from_rule(rule, year)
    if zone is None:
        return None
    periods: list[WeeklyPeriod] = []
    for raw in periods_raw:
        if raw.start is None or raw.end is None:
            continue
        for day_number in raw.weekdays or ():
            period = _period(int(day_number), raw.start, raw.end)
            if period is not None:
                periods.append(period)
    if not periods:
        return None
    return WorkingHours(tuple(periods), zone)


def schedule_from_view(
    mailbox: str, view: Any, window: Interval, interval: timedelta
) -> MailboxSchedule | UpstreamError:
    """One mailbox's ``FreeBusyView`` → its schedule (a view without any data is an error, not "free")."""
    view_type = str(view.view_type or "None")
    if view.calendar_events is not None:
        blocks = busy_blocks(view.calendar_events)
    elif view.merged:
        blocks = merged_blocks(str(view.merged), window.start, interval)
    elif view_type in ("None", "MergedOnly"):
        return UpstreamError(
            f"Exchange returned no free/busy data for {mailbox} (view {view_type}).",
            upstream_code="NoFreeBusyData",
            mailbox=mailbox,
        )
    else:
        blocks = []  # a FreeBusy/Detailed view without events: the calendar is free in the window
    return MailboxSchedule(mailbox, tuple(blocks), working_hours_from_view(view, window.start.year))


_WORK_HOURS_NS = "WorkingHours.xsd"


def zone_name_of_work_hours(xml: bytes | None) -> str | None:
    """``Root/WorkHoursVersion1/TimeZone/Name`` of a working hours stream ([MS-OXOCFG] 2.2.5.2.1,
    https://learn.microsoft.com/en-us/openspecs/exchange_server_protocols/ms-oxocfg/b4aa6771-145d-4492-8b87-ac2003d9a64c):
    the mailbox's Windows zone name; None when absent (Name is optional) or unreadable."""
    if not xml:
        return None
    try:
        root = to_xml(xml)
    except (ParseError, ValueError):
        return None
    path = "/".join(f"{{{_WORK_HOURS_NS}}}{tag}" for tag in ("WorkHoursVersion1", "TimeZone", "Name"))
    found = root.find(path)
    name = (found.text or "").strip() if found is not None else ""
    return name or None
