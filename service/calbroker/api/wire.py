"""The API's wire vocabulary: the strict request base, its one decoder, text, times and time zones.

Requests are strict (unknown fields are an error: a typo must not silently change a booking) and
typed exactly as the OpenAPI document says: `"30"` is not a number and `0` is not a boolean.
Every constraint the code enforces on a single field is declared on the field (pattern, length,
range), so the contract and the validation cannot disagree. Responses omit absent values.
Conversion to domain values happens here, next to the Structs, and raises `InvalidRequest`
naming the field by its full path (`working_hours.weekly_periods[0].end_time`).
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_right
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import msgspec
from litestar import Request
from litestar.exceptions import HTTPException
from litestar.utils.scope.state import ScopeState

from calbroker.domain.connections import EMAIL_PATTERN
from calbroker.domain.errors import FieldError, InvalidRequest, LimitExceeded
from calbroker.domain.intervals import EPOCH, FIRST_YEAR, LAST_YEAR, MICROSECOND, Interval, supported
from calbroker.domain.zones import offset_spans

__all__ = [
    "EMAIL_PATTERN",
    "EVENT_ID_PATTERN",
    "INSTANT_PATTERN",
    "MINIMUM_ZERO",
    "TEXT_PATTERN",
    "TZID_PATTERN",
    "Body",
    "Days",
    "Duration",
    "Email",
    "MalformedBody",
    "Minutes",
    "Period",
    "Response",
    "StartInterval",
    "UnsupportedMediaType",
    "ZonedInstants",
    "aware",
    "decode_body",
    "doc",
    "field_error",
    "instant_field",
    "interval",
    "span",
    "text",
    "zone",
    "zone_field",
]

TEXT_PATTERN = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]*$"
"""Free text: anything but the control characters PostgreSQL (U+0000) or XML 1.0 (EWS) refuse."""
TZID_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"
"""The shape of an IANA zone name; the value must also be a zone the server knows (Europe/London)."""
EVENT_ID_PATTERN = r"^[A-Za-z0-9._~:@+=-]{1,200}$"
"""The application's own id for an event, as it appears in the URL."""
INSTANT_PATTERN = (
    r"^(19[7-9][0-9]|20[0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
"""RFC 3339 date-times with an offset, in the years FIRST_YEAR to LAST_YEAR (`domain.intervals.supported`;
a test ties them). Times travel as strings checked against this pattern, then parsed, so the
contract (`format: date-time` plus this pattern) and the decoder accept exactly the same text."""

# msgspec quotes the pattern it failed with as repr(pattern).
_PATTERN_MESSAGES = {
    repr(TEXT_PATTERN): "must not contain control characters (tab, line feed and carriage return are fine)",
    repr(EMAIL_PATTERN): "must be an email address such as adele.vance@contoso.com",
    repr(TZID_PATTERN): "must be an IANA time zone name such as Europe/London",
    repr(INSTANT_PATTERN): f"must be an RFC 3339 date-time with a UTC offset, in the years {FIRST_YEAR}–{LAST_YEAR}, "
    "e.g. 2026-11-24T09:00:00Z",
    repr(EVENT_ID_PATTERN): "1–200 characters of letters, digits and . _ ~ : @ + = - (your own id for the event)",
}


def doc(description: str) -> msgspec.Meta:
    """A field's description in the contract, and nothing else."""
    return msgspec.Meta(description=description)


def text(max_length: int, description: str, *, min_length: int = 0) -> msgspec.Meta:
    """Constraints of a free-text field that is stored and sent to Exchange."""
    return msgspec.Meta(min_length=min_length, max_length=max_length, pattern=TEXT_PATTERN, description=description)


Email = Annotated[
    str,
    msgspec.Meta(
        max_length=320, pattern=EMAIL_PATTERN, description="A mailbox address", examples=["adele.vance@contoso.com"]
    ),
]


def instant_field(description: str, example: str = "2026-11-24T09:00:00+01:00") -> msgspec.Meta:
    """Constraints of a time field: RFC 3339 with an offset, in the supported years."""
    return msgspec.Meta(
        pattern=INSTANT_PATTERN,
        description=f"{description}; RFC 3339 with a UTC offset, in the years {FIRST_YEAR}–{LAST_YEAR}",
        examples=[example],
        extra_json_schema={"extra": {"format": "date-time"}},
    )


def zone_field(description: str) -> msgspec.Meta:
    """Constraints of an IANA zone name field (the value must also be a zone the server knows)."""
    return msgspec.Meta(max_length=64, pattern=TZID_PATTERN, description=description, examples=["Europe/London"])


EMAIL_ITEMS: dict[str, Any] = {"extra": {"items": {"type": "string", "pattern": EMAIL_PATTERN, "maxLength": 320}}}
"""`extra_json_schema` for a list of addresses: Litestar drops the constraints of list items."""

_MAX_MINUTES = 60 * 24 * 366

MINIMUM_ZERO: dict[str, Any] = {"extra": {"minimum": 0}}
"""`extra_json_schema` for `ge=0`: Litestar tests constraints for truth and so drops a minimum of 0."""


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
    """A length of time in whole minutes (buffers, notice)."""

    minutes: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            le=_MAX_MINUTES,
            description="Whole minutes, 0 to 527040 (366 days)",
            extra_json_schema=MINIMUM_ZERO,
        ),
    ]

    def delta(self) -> timedelta:
        return timedelta(minutes=self.minutes)


class Duration(Body):
    """How long a meeting lasts, in whole minutes."""

    minutes: Annotated[int, msgspec.Meta(ge=1, le=_MAX_MINUTES, description="Whole minutes, at least 1")]

    def delta(self) -> timedelta:
        return timedelta(minutes=self.minutes)


class StartInterval(Body):
    """The grid slot starts are on, in minutes since local midnight."""

    minutes: Annotated[int, msgspec.Meta(ge=1, le=1440, description="Whole minutes, 1 to 1440 (a day)")]

    def delta(self) -> timedelta:
        return timedelta(minutes=self.minutes)


class Days(Body):
    """A length of time in whole days."""

    days: Annotated[int, msgspec.Meta(ge=1, le=366, description="Whole days, 1 to 366")]

    def delta(self) -> timedelta:
        return timedelta(days=self.days)


class Period(Body):
    """A half-open span of time `[start, end)`."""

    start: Annotated[str, instant_field("Start")]
    end: Annotated[str, instant_field("End, after start", "2026-11-24T17:00:00+01:00")]


def aware(text: str, field: str) -> datetime:
    """The time a wire string names; refused without an offset (ambiguous across the tenant's zones)
    or outside the supported years."""
    try:
        value = msgspec.convert(text, datetime)
    except msgspec.ValidationError:
        raise InvalidRequest.field(field, "must be an RFC 3339 date-time such as 2026-11-24T09:00:00Z") from None
    supported(value, field)
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequest.field(field, "must include a UTC offset, e.g. 2026-11-24T09:00:00Z")
    return value


def span(start: str, end: str, *, start_field: str = "start", end_field: str = "end") -> Interval:
    """A validated [start, end) from two wire times."""
    begins = aware(start, start_field)
    ends = aware(end, end_field)
    if ends <= begins:
        raise InvalidRequest.field(end_field, "must be after start")
    return Interval(begins, ends)


def interval(period: Period, field: str) -> Interval:
    return span(period.start, period.end, start_field=f"{field}.start", end_field=f"{field}.end")


class ZonedInstants:
    """Epoch microseconds over `[first, last]` as aware datetimes in one zone, for writing an answer.

    Each stretch of constant UTC offset gets one epoch datetime in that offset, and an instant is
    that epoch plus its microseconds: two C-level operations, where a UTC datetime converted with
    `astimezone` costs three and a zone lookup. The tzinfo is the fixed offset in effect, so an
    instant is written exactly as the zone's own datetime would be.
    """

    def __init__(self, tz: ZoneInfo, first_us: int, last_us: int) -> None:
        pieces = offset_spans(tz, first_us, last_us + 1)
        self._starts = [start for start, _end, _offset in pieces]
        self._epochs = [EPOCH.astimezone(timezone(offset * MICROSECOND)) for _start, _end, offset in pieces]
        self.epoch = self._epochs[0] if len(pieces) == 1 else None
        """The one epoch when a single offset covers the whole span (the usual case): `epoch + MICROSECOND * us`."""

    def __call__(self, moment_us: int) -> datetime:
        return self._epochs[bisect_right(self._starts, moment_us) - 1] + MICROSECOND * moment_us


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


# --- decoding ---------------------------------------------------------------------------------------

_AT_PATH = re.compile(r"\s*-\s*at\s*`\$(?P<path>[^`]*)`\s*$")
_NAMED_FIELD = re.compile(r"(?:unknown|required) field `(?P<name>[^`]+)`")
_PATTERN = re.compile(r"^Expected `str` matching regex (?P<pattern>'.*')$")
_TOO_LONG = re.compile(r"^Expected `(?:str|array|object)` of length <= (?P<limit>\d+)$")


def field_error(message: str, *, prefix: str = "") -> tuple[FieldError, int | None]:
    """One msgspec validation message as the field at fault (full dotted path) and what is wrong.

    msgspec reports `... - at `$.participants[0].members[1].email``, and names a missing or unknown
    field only in the message ("Object missing required field `end`"). The second value is the
    length limit when the message is about one, so the caller can answer `limit-exceeded`.
    """
    path = ""
    found = _AT_PATH.search(message)
    if found:
        path = found.group("path")
        message = message[: found.start()]
    field = path.lstrip(".")
    named = _NAMED_FIELD.search(message)
    if named:
        field = f"{field}.{named.group('name')}" if field else named.group("name")
    if prefix:
        field = f"{prefix}.{field}" if field and not field.startswith("[") else f"{prefix}{field}"
    limit: int | None = None
    pattern = _PATTERN.match(message)
    if pattern:
        message = _PATTERN_MESSAGES.get(pattern.group("pattern"), message)
    elif too_long := _TOO_LONG.match(message):
        limit = int(too_long.group("limit"))
        message = f"at most {limit} {'characters' if 'str' in message else 'items'}"
    return FieldError(field or "body", message.rstrip(". ")), limit


def invalid(message: str, *, prefix: str = "") -> InvalidRequest:
    """The InvalidRequest (or LimitExceeded) for one msgspec validation message."""
    error, limit = field_error(message, prefix=prefix)
    if limit is not None:
        return LimitExceeded(field=error.field, limit=limit, actual="more", message=error.message)
    return InvalidRequest(f"{error.field}: {error.message}", [error])


class UnsupportedMediaType(HTTPException):
    status_code = 415


class MalformedBody(HTTPException):
    status_code = 400


@functools.cache
def _decoder(body_type: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(body_type, strict=True)


def _body_type(request: Request[Any, Any, Any]) -> Any:
    data = request.route_handler.parsed_fn_signature.parameters.get("data")
    return None if data is None else data.annotation


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


async def decode_body(request: Request[Any, Any, Any]) -> None:
    """`before_request` hook: the body, if the route takes one, is JSON of exactly the declared type.

    Litestar decodes bodies untyped and then converts them leniently (`"30"` becomes 30, and a
    body nested 1,000 levels deep overflows the stack before any type is looked at). Decoding once,
    typed and strict, fails at the first value that does not fit, however deep the rest goes. The
    value is left where Litestar keeps the request's JSON, so the body is not decoded again; its
    conversion of `data` passes an instance of the declared type through as it is.
    """
    body_type = _body_type(request)
    if body_type is None:
        return
    content_type = request.content_type[0]
    if not _is_json(content_type):
        raise UnsupportedMediaType(
            detail=f"The body must be JSON, sent with Content-Type: application/json (got {content_type or 'none'})."
        )
    raw = await request.body()
    try:
        decoded = _decoder(body_type).decode(raw)
    except msgspec.ValidationError as exc:
        if not _INTEGRAL_FLOAT.search(str(exc)):
            raise invalid(str(exc)) from None
        decoded = _decode_integral_floats(raw, body_type)
    except msgspec.DecodeError:
        raise MalformedBody(detail="The request body is missing or not valid UTF-8 JSON.") from None
    ScopeState.from_scope(request.scope).json = decoded


_INTEGRAL_FLOAT = re.compile(r"^Expected `int[^`]*`, got `float`")


def _decode_integral_floats(raw: bytes, body_type: Any) -> Any:
    """JSON has one number type: `30.0` is the integer 30 (JSON Schema says so too), `30.5` is not.

    msgspec's strict decoder refuses any number written with a fraction for an `int`, so a body
    it refused for that alone is decoded again untyped, integral floats become ints, and the
    result is converted strictly (strings such as "30" stay refused).
    """
    try:
        document = msgspec.json.decode(raw)
    except RecursionError:
        raise InvalidRequest.field("body", "nests arrays and objects too deeply") from None
    stack = [document]
    while stack:  # iterative: the document may nest as deep as the decoder allowed
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in list(items):
            if isinstance(value, float) and value.is_integer():
                node[key] = int(value)
            elif isinstance(value, dict | list):
                stack.append(value)
    try:
        return msgspec.convert(document, body_type, strict=True)
    except msgspec.ValidationError as exc:
        raise invalid(str(exc)) from None
