"""Recurrence patterns (Graph's patternedRecurrence) and their expansion into wall-clock occurrences.

Dates come from `dateutil.rrule` (RFC 5545); occurrences keep their wall-clock time in the
recurrence time zone, so a weekly 09:00 meeting in New York stays at 09:00 local across the DST
switch and moves by an hour in UTC — as Outlook does.
Shape: https://learn.microsoft.com/en-us/graph/api/resources/patternedrecurrence
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from functools import lru_cache
from itertools import islice
from typing import Any

from dateutil.rrule import DAILY, MONTHLY, WEEKLY, YEARLY, rrule, weekdays

from calbroker.sandbox.timezones import windows_name, zone

__all__ = ["Recurrence", "RecurrenceError"]

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_INDEXES = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
_PATTERNS = {"daily", "weekly", "absoluteMonthly", "relativeMonthly", "absoluteYearly", "relativeYearly"}
_RANGES = {"endDate", "noEnd", "numbered"}
# Guard against runaway expansion (a daily noEnd series queried decades ahead).
_MAX_STEPS = 50_000


class RecurrenceError(ValueError):
    """A recurrence the sandbox cannot accept (Graph answers 400 ErrorInvalidRequest)."""


@dataclass(frozen=True, slots=True)
class Recurrence:
    """A recurrence pattern plus range, expanded in `time_zone` (IANA)."""

    pattern_type: str
    start_date: date
    time_zone: str
    interval: int = 1
    days_of_week: tuple[str, ...] = ()
    day_of_month: int = 0
    month: int = 0
    index: str = "first"
    first_day_of_week: str = "sunday"
    range_type: str = "noEnd"
    end_date: date | None = None
    number_of_occurrences: int = 0

    def __post_init__(self) -> None:
        if self.pattern_type not in _PATTERNS:
            raise RecurrenceError(f"unsupported recurrence pattern type {self.pattern_type!r}")
        if self.range_type not in _RANGES:
            raise RecurrenceError(f"unsupported recurrence range type {self.range_type!r}")
        if self.interval < 1:
            raise RecurrenceError("recurrence interval must be at least 1")
        if self.pattern_type in ("weekly", "relativeMonthly", "relativeYearly") and not self.days_of_week:
            raise RecurrenceError(f"{self.pattern_type} recurrence needs daysOfWeek")
        if any(d not in _WEEKDAYS for d in self.days_of_week):
            raise RecurrenceError(f"invalid daysOfWeek {self.days_of_week!r}")
        if self.range_type == "endDate" and self.end_date is None:
            raise RecurrenceError("endDate range needs an endDate")
        if self.range_type == "numbered" and self.number_of_occurrences < 1:
            raise RecurrenceError("numbered range needs numberOfOccurrences")

    # --- wire form --------------------------------------------------------------------------------

    @classmethod
    def from_graph(cls, raw: dict[str, Any], default_time_zone: str) -> Recurrence:
        """Parse Graph's patternedRecurrence JSON (keys are case-insensitive, as Graph's are)."""
        pattern = {k.lower(): v for k, v in (raw.get("pattern") or {}).items()}
        range_ = {k.lower(): v for k, v in (raw.get("range") or {}).items()}
        try:
            start_date = date.fromisoformat(str(range_["startdate"]))
            end_raw = range_.get("enddate")
            end_date = date.fromisoformat(str(end_raw)) if end_raw and str(end_raw) != "0001-01-01" else None
            tz_name = range_.get("recurrencetimezone") or default_time_zone
            return cls(
                pattern_type=str(pattern.get("type", "")),
                interval=int(pattern.get("interval") or 1),
                days_of_week=tuple(str(d).lower() for d in pattern.get("daysofweek") or ()),
                day_of_month=int(pattern.get("dayofmonth") or 0),
                month=int(pattern.get("month") or 0),
                index=str(pattern.get("index") or "first"),
                first_day_of_week=str(pattern.get("firstdayofweek") or "sunday").lower(),
                range_type=str(range_.get("type", "noEnd")),
                start_date=start_date,
                end_date=end_date,
                number_of_occurrences=int(range_.get("numberofoccurrences") or 0),
                time_zone=getattr(zone(tz_name), "key", "UTC"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecurrenceError(f"invalid recurrence: {exc}") from exc

    def to_graph(self) -> dict[str, Any]:
        """Graph's JSON, with the defaulted fields Exchange fills in (see the create-event example)."""
        return {
            "pattern": {
                "type": self.pattern_type,
                "interval": self.interval,
                "month": self.month,
                "dayOfMonth": self.day_of_month,
                "daysOfWeek": list(self.days_of_week),
                "firstDayOfWeek": self.first_day_of_week,
                "index": self.index,
            },
            "range": {
                "type": self.range_type,
                "startDate": self.start_date.isoformat(),
                "endDate": (self.end_date or date(1, 1, 1)).isoformat(),
                "recurrenceTimeZone": windows_name(self.time_zone),
                "numberOfOccurrences": self.number_of_occurrences,
            },
        }

    # --- expansion --------------------------------------------------------------------------------

    def _rule(self) -> rrule:
        """The pattern and range as an RFC 5545 rule over dates (midnight), from `start_date`;
        one per distinct recurrence, remembering the dates it has produced (free/busy reads expand
        the same series over and over).

        Graph's patterns map one to one: `firstDayOfWeek` is `wkst`, `index` is the weekday's
        ordinal in the month (`last` = -1), and a day of month a month lacks is skipped (as
        Exchange does), which is also RFC 5545's rule for invalid dates.
        """
        first_day = _WEEKDAYS.index(self.first_day_of_week) if self.first_day_of_week in _WEEKDAYS else 6
        weekday = weekdays[_WEEKDAYS.index(self.days_of_week[0])] if self.days_of_week else None
        month = self.month or self.start_date.month
        match self.pattern_type:
            case "daily":
                options: dict[str, Any] = {"freq": DAILY}
            case "weekly":
                days = [weekdays[_WEEKDAYS.index(d)] for d in self.days_of_week]
                options = {"freq": WEEKLY, "byweekday": days, "wkst": weekdays[first_day]}
            case "absoluteMonthly":
                options = {"freq": MONTHLY, "bymonthday": self.day_of_month or self.start_date.day}
            case "relativeMonthly":
                assert weekday is not None
                options = {"freq": MONTHLY, "byweekday": weekday(_INDEXES.get(self.index, 1))}
            case "absoluteYearly":
                options = {"freq": YEARLY, "bymonth": month, "bymonthday": self.day_of_month or self.start_date.day}
            case _:  # relativeYearly
                assert weekday is not None
                options = {"freq": YEARLY, "bymonth": month, "byweekday": weekday(_INDEXES.get(self.index, 1))}
        if self.range_type == "numbered":
            options["count"] = self.number_of_occurrences
        elif self.range_type == "endDate" and self.end_date is not None:
            options["until"] = datetime.combine(self.end_date, time())
        return rrule(dtstart=datetime.combine(self.start_date, time()), interval=self.interval, cache=True, **options)

    def starts(self, first_start: datetime, until: datetime) -> Iterator[datetime]:
        """Occurrence starts (aware, in the recurrence zone) from the series start until `until` (exclusive).

        The time of day comes from `first_start` (the series master's start); each date's wall
        time is resolved in the zone, so a spring-forward gap shifts forward like Exchange does.
        """
        tz = zone(self.time_zone)
        local_time = first_start.astimezone(tz).time()
        until_utc = until.astimezone(UTC)
        for day in islice(_rule_of(self), _MAX_STEPS + 1):
            moment = datetime.combine(day.date(), local_time, tz).astimezone(UTC)
            if moment >= until_utc:
                return
            yield moment.astimezone(tz)


@lru_cache(maxsize=4096)
def _rule_of(recurrence: Recurrence) -> rrule:
    return recurrence._rule()  # the memo of the method, keyed by the (frozen) value
