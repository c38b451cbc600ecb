"""Time-zone names as Microsoft spells them: Windows ids ↔ IANA, and Graph's dateTimeTimeZone format.

Graph and EWS speak Windows time-zone ids ("Pacific Standard Time"); Python speaks IANA. Graph also
accepts IANA names in `timeZone` and `Prefer: outlook.timezone`
(https://learn.microsoft.com/en-us/graph/api/resources/datetimetimezone). The mapping is CLDR's
windowsZones table as exchangelib ships it (`exchangelib.winzone`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from exchangelib.winzone import IANA_TO_MS_TIMEZONE_MAP, MS_TIMEZONE_TO_IANA_MAP

__all__ = [
    "WINDOWS_TO_IANA",
    "UnknownTimeZone",
    "format_graph_datetime",
    "parse_graph_datetime",
    "parse_iso_instant",
    "utc_offset_changes",
    "windows_name",
    "zone",
]

# Every Windows id with CLDR's zone for it (territory 001); exchangelib adds a non-id UTC alias.
WINDOWS_TO_IANA: Mapping[str, str] = {
    ms_id: iana for ms_id, iana in MS_TIMEZONE_TO_IANA_MAP.items() if not ms_id.startswith("tzone://")
}
# Windows ids are case-insensitive in practice.
_WINDOWS_BY_LOWER = {ms_id.lower(): iana for ms_id, iana in WINDOWS_TO_IANA.items()}
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
    iana = _WINDOWS_BY_LOWER.get(cleaned.lower(), cleaned)
    try:
        return ZoneInfo(iana)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UnknownTimeZone(name) from exc


def windows_name(iana: str) -> str:
    """The Windows id for an IANA name; unknown names are returned unchanged."""
    if iana.strip().lower() in _UTC_NAMES:
        return "UTC"
    found = IANA_TO_MS_TIMEZONE_MAP.get(iana)
    return str(found[0]) if found else iana


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
