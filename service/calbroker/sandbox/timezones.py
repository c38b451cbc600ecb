"""Time-zone names as Microsoft spells them: Windows ids ↔ IANA, and Graph's dateTimeTimeZone format.

Graph and EWS speak Windows time-zone ids ("Pacific Standard Time"); Python speaks IANA. Graph also
accepts IANA names in `timeZone` and `Prefer: outlook.timezone`
(https://learn.microsoft.com/en-us/graph/api/resources/datetimetimezone). The table covers the zones
the seed uses plus the common ones; its pairs follow the CLDR windowsZones mapping.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "IANA_TO_WINDOWS",
    "WINDOWS_TO_IANA",
    "UnknownTimeZone",
    "format_graph_datetime",
    "parse_graph_datetime",
    "parse_iso_instant",
    "windows_name",
    "zone",
]

WINDOWS_TO_IANA: dict[str, str] = {
    "UTC": "Etc/UTC",
    "Dateline Standard Time": "Etc/GMT+12",
    "Hawaiian Standard Time": "Pacific/Honolulu",
    "Alaskan Standard Time": "America/Anchorage",
    "Pacific Standard Time": "America/Los_Angeles",
    "US Mountain Standard Time": "America/Phoenix",
    "Mountain Standard Time": "America/Denver",
    "Central Standard Time": "America/Chicago",
    "Canada Central Standard Time": "America/Regina",
    "Central Standard Time (Mexico)": "America/Mexico_City",
    "Eastern Standard Time": "America/New_York",
    "Atlantic Standard Time": "America/Halifax",
    "Newfoundland Standard Time": "America/St_Johns",
    "E. South America Standard Time": "America/Sao_Paulo",
    "Argentina Standard Time": "America/Argentina/Buenos_Aires",
    "Greenwich Standard Time": "Atlantic/Reykjavik",
    "GMT Standard Time": "Europe/London",
    "Morocco Standard Time": "Africa/Casablanca",
    "W. Europe Standard Time": "Europe/Berlin",
    "Romance Standard Time": "Europe/Paris",
    "Central Europe Standard Time": "Europe/Budapest",
    "Central European Standard Time": "Europe/Warsaw",
    "GTB Standard Time": "Europe/Bucharest",
    "FLE Standard Time": "Europe/Kiev",
    "Israel Standard Time": "Asia/Jerusalem",
    "Egypt Standard Time": "Africa/Cairo",
    "South Africa Standard Time": "Africa/Johannesburg",
    "Turkey Standard Time": "Europe/Istanbul",
    "Russian Standard Time": "Europe/Moscow",
    "Arabian Standard Time": "Asia/Dubai",
    "Iran Standard Time": "Asia/Tehran",
    "Pakistan Standard Time": "Asia/Karachi",
    "India Standard Time": "Asia/Kolkata",
    "Nepal Standard Time": "Asia/Kathmandu",
    "SE Asia Standard Time": "Asia/Bangkok",
    "China Standard Time": "Asia/Shanghai",
    "Singapore Standard Time": "Asia/Singapore",
    "Tokyo Standard Time": "Asia/Tokyo",
    "Korea Standard Time": "Asia/Seoul",
    "W. Australia Standard Time": "Australia/Perth",
    "Cen. Australia Standard Time": "Australia/Adelaide",
    "E. Australia Standard Time": "Australia/Brisbane",
    "AUS Eastern Standard Time": "Australia/Sydney",
    "New Zealand Standard Time": "Pacific/Auckland",
}

IANA_TO_WINDOWS: dict[str, str] = {iana: win for win, iana in WINDOWS_TO_IANA.items()}
# Aliases that clients commonly send; CLDR lists them under the same Windows ids.
IANA_TO_WINDOWS.update(
    {
        "UTC": "UTC",
        "Etc/GMT": "UTC",
        "GMT": "UTC",
        "Asia/Calcutta": "India Standard Time",
        "Europe/Kyiv": "FLE Standard Time",
        "America/Buenos_Aires": "Argentina Standard Time",
        "Europe/Dublin": "GMT Standard Time",
        "Europe/Amsterdam": "W. Europe Standard Time",
        "Europe/Zurich": "W. Europe Standard Time",
        "Europe/Vienna": "W. Europe Standard Time",
        "Europe/Rome": "W. Europe Standard Time",
        "Europe/Stockholm": "W. Europe Standard Time",
        "Europe/Madrid": "Romance Standard Time",
        "Europe/Brussels": "Romance Standard Time",
        "Europe/Prague": "Central Europe Standard Time",
        "America/Toronto": "Eastern Standard Time",
        "America/Vancouver": "Pacific Standard Time",
        "Australia/Melbourne": "AUS Eastern Standard Time",
    }
)

_UTC_NAMES = {"utc", "etc/utc", "gmt", "etc/gmt", "z", "coordinated universal time", "tzone://microsoft/utc"}


class UnknownTimeZone(ValueError):
    """A time-zone name that is neither a known Windows id nor an IANA name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown time zone {name!r}")
        self.name = name


def zone(name: str | None) -> tzinfo:
    """The tzinfo for a Windows id or IANA name (None and the UTC spellings mean UTC)."""
    if name is None or name.strip().lower() in _UTC_NAMES:
        return UTC
    cleaned = name.strip()
    iana = WINDOWS_TO_IANA.get(cleaned)
    if iana is None:
        # Windows ids are case-insensitive in practice.
        lowered = {k.lower(): v for k, v in WINDOWS_TO_IANA.items()}
        iana = lowered.get(cleaned.lower(), cleaned)
    try:
        return ZoneInfo(iana)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UnknownTimeZone(name) from exc


def windows_name(iana: str) -> str:
    """The Windows id for an IANA name; unknown names are returned unchanged."""
    if iana.strip().lower() in _UTC_NAMES:
        return "UTC"
    return IANA_TO_WINDOWS.get(iana, iana)


def format_graph_datetime(moment: datetime, tz_name: str | None) -> str:
    """`moment` as wall-clock time in `tz_name`, seven fractional digits, no offset (Graph's form)."""
    local = moment.astimezone(zone(tz_name)).replace(tzinfo=None)
    return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond:06d}0"


_FRACTION = re.compile(r"\.(\d+)")


def parse_graph_datetime(value: str, tz_name: str | None) -> datetime:
    """A dateTimeTimeZone pair as an aware datetime; an explicit offset in `value` wins."""
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    # Graph sends seven fractional digits; datetime keeps six.
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6], text, count=1)
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        local = parsed.replace(tzinfo=zone(tz_name))
        # Round-trip through UTC so a wall time in a spring-forward gap is normalised.
        return local.astimezone(UTC).astimezone(local.tzinfo)
    return parsed


def parse_iso_instant(value: str) -> datetime:
    """An ISO 8601 instant from a query string; without an offset it is UTC (calendarView rule)."""
    return parse_graph_datetime(value.replace(" ", "+") if "T" in value else value, "UTC").astimezone(UTC)


def utc_offset_changes(tz: tzinfo, start: datetime, end: datetime) -> list[datetime]:
    """Instants in [start, end) where `tz` changes its UTC offset (DST transitions), hour resolution."""
    changes: list[datetime] = []
    cursor = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    previous = cursor.astimezone(tz).utcoffset()
    while cursor < end:
        cursor += timedelta(hours=1)
        offset = cursor.astimezone(tz).utcoffset()
        if offset != previous:
            changes.append(cursor)
            previous = offset
    return changes
