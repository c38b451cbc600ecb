"""Windows time zones, as Exchange names them or describes them, to IANA zones.

- By name: Graph's `workingHours.timeZone.name` and `dateTimeTimeZone.timeZone` are usually Windows
  names ("Pacific Standard Time"), sometimes IANA names or "UTC". The table is CLDR's territory
  "001" (default) mapping, https://github.com/unicode-org/cldr/blob/main/common/supplemental/windowsZones.xml ,
  as exchangelib ships it (`exchangelib.winzone`).
- By rule: EWS availability describes a zone only as the legacy Bias/StandardTime/DaylightTime
  rule for one year (https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/timezone-availability);
  `zone_from_rule` finds the Windows zone with exactly that rule's offsets and answers the IANA zone
  CLDR maps it to. Several Windows zones share one rule (W. Europe, Romance, Central Europe and
  Central European Standard Time are all "+1, last Sunday of March to last Sunday of October"):
  the one CLDR maps the most locations to wins (W. Europe Standard Time → Europe/Berlin), then the
  name, so the choice is deterministic and the likeliest. A mailbox's own zone name, where Exchange
  gives it, beats any guess (`providers/ews/schedules.py`).
"""

from __future__ import annotations

import calendar
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from exchangelib.winzone import CLDR_TO_MS_TIMEZONE_MAP, MS_TIMEZONE_TO_IANA_MAP

from calbroker.domain.intervals import from_us, to_us

__all__ = ["WINDOWS_TO_IANA", "ZoneRule", "ZoneTransition", "zone_for", "zone_from_rule"]

# exchangelib's table is CLDR 2021a: it names these zones by IANA names renamed since, and lacks the
# Windows zones added since.
_RENAMED = {
    "America/Buenos_Aires": "America/Argentina/Buenos_Aires",
    "America/Godthab": "America/Nuuk",
    "America/Indianapolis": "America/Indiana/Indianapolis",
    "Asia/Calcutta": "Asia/Kolkata",
    "Asia/Katmandu": "Asia/Kathmandu",
    "Asia/Rangoon": "Asia/Yangon",
    "Europe/Kiev": "Europe/Kyiv",
}
_ADDED = {
    "Alberta Standard Time": "America/Edmonton",
    "British Columbia Standard Time": "America/Vancouver",
    "Manitoba Standard Time": "America/Winnipeg",
}

WINDOWS_TO_IANA: dict[str, str] = {
    **{
        windows: _RENAMED.get(iana, iana)
        for windows, iana in MS_TIMEZONE_TO_IANA_MAP.items()
        if not windows.startswith("tzone://")  # a UTC alias, not a zone of the table
    },
    **_ADDED,
}
"""Windows zone name → IANA zone name (CLDR's default territory)."""

# Names Exchange uses for UTC besides the CLDR one.
_UTC_NAMES = frozenset({"utc", "etc/utc", "gmt", "z", "tzone://microsoft/utc", "coordinated universal time"})
_BY_LOWER = {name.lower(): iana for name, iana in WINDOWS_TO_IANA.items()}
_SAMPLE_US = 6 * 3600 * 1_000_000


@lru_cache(maxsize=512)
def zone_for(name: str | None) -> ZoneInfo | None:
    """The IANA zone for a Windows or IANA zone name; None when neither table nor tzdata knows it."""
    if not name:
        return None
    cleaned = name.strip()
    lowered = cleaned.lower()
    if lowered in _UTC_NAMES:
        return ZoneInfo("UTC")
    iana = _BY_LOWER.get(lowered)
    if iana is not None:
        return ZoneInfo(iana)
    if "/" not in cleaned or cleaned.startswith(("/", ".")) or ".." in cleaned:
        return None  # not an IANA key (and never a path zoneinfo would try to open)
    try:
        return ZoneInfo(cleaned)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class ZoneTransition:
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
class ZoneRule:
    """The Availability ``<t:TimeZone>``: Bias is minutes *west* of UTC; each change adds its own bias."""

    bias: int
    standard: ZoneTransition | None
    daylight: ZoneTransition | None

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


def _candidates() -> Iterable[str]:
    """The table's IANA zones, the Windows zone CLDR maps the most locations to first, then by name."""
    locations = Counter(windows for windows, _territory in CLDR_TO_MS_TIMEZONE_MAP.values())
    seen: set[str] = set()
    for _, name in sorted(WINDOWS_TO_IANA.items(), key=lambda item: (-locations[item[0]], item[0])):
        if name not in seen:
            seen.add(name)
            yield name


def _offset_us(zone: ZoneInfo, moment_us: int) -> int:
    offset = from_us(moment_us).astimezone(zone).utcoffset()
    return 0 if offset is None else offset // timedelta(microseconds=1)


def _matches(zone: ZoneInfo, rule: ZoneRule, year: int) -> bool:
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
def zone_from_rule(rule: ZoneRule, year: int) -> ZoneInfo | None:
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
