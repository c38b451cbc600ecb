"""GetUserAvailability answers as domain values: busy blocks, and working hours in an IANA zone.

Times: we send the request's ``<t:TimeZone>`` as UTC, so ``CalendarEvent`` Start/End (local times
without offset, https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/calendarevent)
come back as UTC wall-clock and exchangelib tags them with UTC; nothing here depends on the
mailbox's own zone.

Working hours (https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/workinghours)
are lossy over EWS, and we say so rather than guess silently:

- the zone comes only as the legacy ``Bias``/``StandardTime``/``DaylightTime`` rule *for one year*,
  never by name. We pick the first zone of CLDR's Windows table whose UTC offsets over that year
  match the rule exactly (so Berlin, Paris and Budapest are interchangeable and one of them is
  chosen deterministically); failing that, a fixed ``Etc/GMT±h`` zone for whole-hour offsets without
  DST; failing that, no working hours (never invented ones). The chosen zone's own rules then apply
  to every year of a window, which is what Exchange does with the mailbox's real zone.
- ``EndTimeInMinutes`` 1440 means midnight at the end of the day (exchangelib parses it as 00:00);
  periods Exchange cannot express the way we do (ending before they start) are dropped.
- ``DayOfWeek`` values other than the seven weekdays (``Day``, ``Weekday``, ``WeekendDay``) are not
  parsed by exchangelib and are lost.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from calbroker.domain.busy import BusyBlock, BusyStatus
from calbroker.domain.errors import UpstreamError
from calbroker.domain.intervals import Interval, from_us, to_us
from calbroker.domain.schedules import MailboxSchedule
from calbroker.domain.working_hours import Weekday, WeeklyPeriod, WorkingHours
from calbroker.providers.windows_zones import WINDOWS_TO_IANA

__all__ = [
    "BUSY_TYPES",
    "Rule",
    "busy_blocks",
    "merged_blocks",
    "rule_from_timezone",
    "schedule_from_view",
    "utc_datetime",
    "working_hours_from_view",
    "zone_from_rule",
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


@dataclass(frozen=True, slots=True)
class Change:
    """One yearly transition of a legacy time zone: the `occurrence`-th `weekday` of `month` (5 = last)."""

    bias: int
    month: int
    weekday: int  # 0 = Monday
    occurrence: int
    at: time

    def local(self, year: int) -> datetime:
        first_weekday, days = calendar.monthrange(year, self.month)
        day = 1 + (self.weekday - first_weekday) % 7 + 7 * (max(self.occurrence, 1) - 1)
        while day > days:
            day -= 7
        return datetime.combine(date(year, self.month, day), self.at)


@dataclass(frozen=True, slots=True)
class Rule:
    """The Availability ``<t:TimeZone>``: Bias is minutes *west* of UTC; each change adds its own bias."""

    bias: int
    standard: Change | None
    daylight: Change | None

    @property
    def standard_offset(self) -> timedelta:
        return -timedelta(minutes=self.bias + (self.standard.bias if self.standard else 0))

    @property
    def daylight_offset(self) -> timedelta | None:
        if self.standard is None or self.daylight is None or 0 in (self.standard.month, self.daylight.month):
            return None
        offset = -timedelta(minutes=self.bias + self.daylight.bias)
        return None if offset == self.standard_offset else offset

    def offset_us(self, moment_us: int, year: int) -> int:
        """The rule's UTC offset at an instant of `year`, microseconds."""
        standard = self.standard_offset // timedelta(microseconds=1)
        daylight_offset = self.daylight_offset
        if daylight_offset is None or self.standard is None or self.daylight is None:
            return standard
        daylight = daylight_offset // timedelta(microseconds=1)
        # Each change happens at a local time measured in the offset in force before it.
        to_daylight = to_us(self.daylight.local(year).replace(tzinfo=UTC)) - standard
        to_standard = to_us(self.standard.local(year).replace(tzinfo=UTC)) - daylight
        if to_daylight < to_standard:  # northern hemisphere: summer inside the calendar year
            in_daylight = to_daylight <= moment_us < to_standard
        else:
            in_daylight = moment_us >= to_daylight or moment_us < to_standard
        return daylight if in_daylight else standard

    def breakpoints_us(self, year: int) -> list[int]:
        if self.daylight_offset is None or self.standard is None or self.daylight is None:
            return []
        standard = self.standard_offset // timedelta(microseconds=1)
        daylight = self.daylight_offset // timedelta(microseconds=1)
        return [
            to_us(self.daylight.local(year).replace(tzinfo=UTC)) - standard,
            to_us(self.standard.local(year).replace(tzinfo=UTC)) - daylight,
        ]


def _change(raw: Any) -> Change | None:
    if raw is None or raw.iso_month is None or raw.time is None:
        return None
    weekday = int(raw.weekday or 7) - 1
    return Change(int(raw.bias or 0), int(raw.iso_month), weekday % 7, int(raw.occurrence or 1), raw.time)


def rule_from_timezone(raw: Any) -> Rule | None:
    """exchangelib's ``TimeZone`` property → a hashable rule, or None when absent."""
    if raw is None or raw.bias is None:
        return None
    return Rule(int(raw.bias), _change(raw.standard_time), _change(raw.daylight_time))


def _candidates() -> Iterable[str]:
    seen: set[str] = set()
    for name in WINDOWS_TO_IANA.values():
        if name not in seen:
            seen.add(name)
            yield name


def _offset_us(zone: ZoneInfo, moment_us: int) -> int:
    offset = from_us(moment_us).astimezone(zone).utcoffset()
    return 0 if offset is None else offset // timedelta(microseconds=1)


def _matches(zone: ZoneInfo, rule: Rule, year: int) -> bool:
    """Whether `zone` has exactly the rule's UTC offsets throughout `year`.

    Checked where the rule changes (just before and at each change, so a zone changing at another
    instant fails) and every six hours (so a zone with changes the rule lacks fails; no zone
    changes and changes back within six hours).
    """
    start = to_us(datetime(year, 1, 1, tzinfo=UTC))
    end = to_us(datetime(year + 1, 1, 1, tzinfo=UTC))
    probes = [to_us(datetime(year, month, 15, tzinfo=UTC)) for month in (1, 7)]  # cheap filter first
    for change in rule.breakpoints_us(year):
        probes += [change - 1, change]
    probes += range(start, end, _SAMPLE_US)
    return all(_offset_us(zone, p) == rule.offset_us(p, year) for p in probes)


@lru_cache(maxsize=256)
def zone_from_rule(rule: Rule, year: int) -> ZoneInfo | None:
    """A deterministic IANA zone whose offsets over `year` are exactly the rule's, or None."""
    for name in _candidates():
        zone = ZoneInfo(name)
        if _matches(zone, rule, year):
            return zone
    if rule.daylight_offset is None:
        minutes = rule.standard_offset // timedelta(minutes=1)
        if minutes == 0:
            return ZoneInfo("UTC")
        if minutes % 60 == 0 and -12 * 60 <= minutes <= 14 * 60:
            # POSIX-style names invert the sign: Etc/GMT-5 is UTC+5.
            return ZoneInfo(f"Etc/GMT{-minutes // 60:+d}")
    return None


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
