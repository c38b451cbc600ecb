"""Cronofy's wire vocabulary: request bases, bodies read whatever the SDK sent, times, query strings.

Cronofy's SDKs send JSON bodies on GET and DELETE, Python-cased booleans (`True`) in query strings,
`calendar_ids[]` arrays, and OAuth bodies as JSON or as forms; everything here tolerates exactly
that and nothing looser. Bodies are decoded by msgspec (strict, unknown fields refused) and a
decode failure names the field, as Cronofy's 422 does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import msgspec
from litestar import Request

from calbroker.api.wire import zone
from calbroker.domain.errors import FieldError, InvalidRequest

__all__ = [
    "Body",
    "MissingField",
    "UnsupportedParameter",
    "boolean",
    "decode_body",
    "format_time",
    "parse_instant",
    "query_list",
]

T = TypeVar("T")


class Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every Cronofy request body: unknown fields are a 422, because a Cronofy option we do
    not implement (`recurrence`, `query_slots`…) silently ignored would change the answer."""


class UnsupportedParameter(InvalidRequest):
    """A Cronofy parameter calbroker does not implement: a 422 whose key says so (`errors.not_supported`)."""

    slug = "invalid-request"
    key = "errors.not_supported"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", [FieldError(field, message)])


class MissingField(InvalidRequest):
    """A required field is absent: Cronofy's `errors.required`."""

    key = "errors.required"

    def __init__(self, field: str) -> None:
        super().__init__(f"{field}: required", [FieldError(field, "required")])


_MSGSPEC_PATH = re.compile(r"\s*-\s*at\s*`\$(?P<path>[^`]*)`\s*$")
_NAMED_FIELD = re.compile(r"(?:unknown|required) field `(?P<name>[^`]+)`")


def _field_of(exc: msgspec.ValidationError) -> tuple[str, str]:
    message = str(exc)
    path = ""
    found = _MSGSPEC_PATH.search(message)
    if found:
        path = found.group("path").lstrip(".")
        message = message[: found.start()]
    named = _NAMED_FIELD.search(message)
    if named:
        path = f"{path}.{named.group('name')}" if path else named.group("name")
    return path or "base", message.rstrip(". ")


async def decode_body(request: Request[Any, Any, Any], into: type[T], *, form: bool = False) -> T:
    """The request body as `into`: JSON, or (with `form`) also `application/x-www-form-urlencoded`."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if form and content_type == "application/x-www-form-urlencoded":
            fields: Mapping[str, Any] = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
            return msgspec.convert(fields, into, strict=False)
        return msgspec.json.decode(raw or b"{}", type=into)
    except msgspec.ValidationError as exc:
        field, message = _field_of(exc)
        if message.startswith("Object missing required field"):
            raise MissingField(field) from None
        raise InvalidRequest(f"{field}: {message}", [FieldError(field, message)]) from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise InvalidRequest("base: the body is not valid JSON", [FieldError("base", "is not valid JSON")]) from None


def boolean(params: Mapping[str, str], name: str, default: bool) -> bool:
    """A query-string boolean as any Cronofy SDK spells it (`true`, `True`, `1`)."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise InvalidRequest.field(name, f"must be true or false, got {raw!r}")


def query_list(request: Request[Any, Any, Any], name: str) -> list[str]:
    """A repeated array parameter, `name[]=a&name[]=b` (also accepted without the brackets)."""
    params = request.query_params
    return [*params.getall(f"{name}[]", []), *params.getall(name, [])]


def parse_instant(value: object, field: str, *, tz: ZoneInfo | None = None) -> datetime | date:
    """A Cronofy time: a UTC (or offset) time, a `YYYY-MM-DD` date, or `{"time": …, "tzid": …}`.

    A time without an offset is refused rather than guessed (pycronofy stamps naive datetimes `Z`
    without converting them; a server cannot tell, so it must not pretend to).
    """
    if isinstance(value, dict):
        raw_time, tzid = value.get("time"), value.get("tzid")
        if not isinstance(raw_time, str):
            raise InvalidRequest.field(f"{field}.time", "is required: an RFC 3339 time or a date")
        found = parse_instant(raw_time, f"{field}.time", tz=zone(tzid, f"{field}.tzid") if tzid else tz)
        return found
    if not isinstance(value, str):
        raise InvalidRequest.field(field, "must be a time such as 2026-03-02T09:00:00Z or a date such as 2026-03-02")
    text = value.strip()
    if len(text) == 10:
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise InvalidRequest.field(field, f"{value!r} is not a date such as 2026-03-02") from None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidRequest.field(field, f"{value!r} is not a time such as 2026-03-02T09:00:00Z") from None
    if parsed.utcoffset() is None:
        if tz is None:
            raise InvalidRequest.field(field, "must include a UTC offset, e.g. 2026-03-02T09:00:00Z")
        parsed = parsed.replace(tzinfo=tz)
    return parsed


def parse_time(value: object, field: str) -> datetime:
    """A Cronofy time that must be an instant (not an all-day date)."""
    found = parse_instant(value, field)
    if not isinstance(found, datetime):
        raise InvalidRequest.field(field, "must be a time such as 2026-03-02T09:00:00Z, not a date")
    return found


def start_of(day: date, tz: ZoneInfo) -> datetime:
    """Midnight of `day` in `tz` (Cronofy's `from`/`to` dates are read in the request's `tzid`)."""
    return datetime.combine(day, time.min, tz)


def format_time(value: datetime) -> str:
    """Cronofy's time format: UTC, whole seconds, `Z`."""
    return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_local(value: datetime, tz: ZoneInfo) -> dict[str, str]:
    """`localized_times`: the time with the offset of `tz`, and the zone's name."""
    local = value.astimezone(tz).replace(microsecond=0)
    return {"time": local.isoformat(), "tzid": tz.key}


def days(value: int) -> timedelta:
    return timedelta(days=value)
