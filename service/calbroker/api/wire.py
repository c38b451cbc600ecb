"""The API's wire vocabulary: the strict request base, durations, periods and time zones.

Requests are strict (unknown fields are an error: a typo must not silently change a booking);
responses omit absent values. Conversion to domain values happens here, next to the Structs,
and raises `InvalidRequest` naming the field.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import msgspec

from calbroker.domain.errors import InvalidRequest
from calbroker.domain.intervals import Interval

__all__ = [
    "Body",
    "Days",
    "Minutes",
    "Period",
    "Response",
    "aware",
    "interval",
    "span",
    "zone",
]


class Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base of every request body.

    - kw_only: fields can be added with defaults in any order (schema evolution); msgspec does not
      inherit it, so a subclass that puts a required field after an optional one sets it again.
    - forbid_unknown_fields: `{"tentative_as_bussy": false}` is a 422, not a silent default.
    - omit_defaults: documents stay small when echoed back.
    """


class Response(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of every response body: absent values are omitted, never `null` noise."""


class Minutes(Body):
    minutes: Annotated[int, msgspec.Meta(ge=0, le=60 * 24 * 366, description="Whole minutes")]

    def delta(self) -> timedelta:
        return timedelta(minutes=self.minutes)


class Days(Body):
    days: Annotated[int, msgspec.Meta(ge=1, le=366, description="Whole days")]

    def delta(self) -> timedelta:
        return timedelta(days=self.days)


class Period(Body):
    start: Annotated[datetime, msgspec.Meta(description="RFC 3339 with offset, e.g. 2026-11-24T09:00:00+01:00")]
    end: Annotated[datetime, msgspec.Meta(description="RFC 3339 with offset; after start")]


class PeriodOut(Response):
    start: datetime
    end: datetime


def aware(value: datetime, field: str) -> datetime:
    """Reject times without an offset: a naive time is ambiguous across the tenant's zones."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequest.field(field, "must include a UTC offset, e.g. 2026-11-24T09:00:00Z")
    return value


def span(start: datetime, end: datetime, *, start_field: str = "start", end_field: str = "end") -> Interval:
    """A validated [start, end) from two wire times."""
    start = aware(start, start_field)
    end = aware(end, end_field)
    if end <= start:
        raise InvalidRequest.field(end_field, "must be after start")
    return Interval(start, end)


def interval(period: Period, field: str) -> Interval:
    return span(period.start, period.end, start_field=f"{field}.start", end_field=f"{field}.end")


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def zone(tzid: str | None, field: str = "tzid") -> ZoneInfo:
    """An IANA zone, or a 422 that says what a valid one looks like."""
    if tzid is None:
        return ZoneInfo("UTC")
    if tzid not in _known_zones():
        raise InvalidRequest.field(field, f"{tzid!r} is not an IANA time zone name such as Europe/London")
    try:
        return ZoneInfo(tzid)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest.field(field, f"{tzid!r} is not an IANA time zone name such as Europe/London") from None
