"""Cronofy's read queries (`tzid`, `from`, `to`, flags) and its pages, with absolute `next_page` URLs.

A page URL carries the whole query and the (start, id) of the last item shown, base64url-encoded
in the path, so any replica can serve the next page and the SDKs can GET it verbatim (the Node SDK
appends options as `?…`, so the URL has no query string of its own). Nothing in the token is
trusted: it is parsed and checked like the query it came from, against the caller's own account.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import msgspec
from litestar import Request

from calbroker.api.compat.cronofy.wire import (
    UnsupportedParameter,
    boolean,
    parse_instant,
    parse_time,
    query_list,
    start_of,
)
from calbroker.api.wire import zone
from calbroker.domain.errors import InvalidRequest, LimitExceeded
from calbroker.domain.intervals import Interval
from calbroker.store.cronofy import Account

__all__ = ["PAGE_SIZE", "Page", "ReadQuery", "page_of", "read_query"]

PAGE_SIZE = 100
MAX_SPAN = timedelta(days=250)
"""Cronofy's own defaults read 243 days (42 back, 201 ahead); a little more is allowed, no more."""

T = TypeVar("T")


class _Token(msgspec.Struct, array_like=True):
    kind: str
    tzid: str
    start: datetime
    end: datetime
    calendar_ids: list[str]
    include_managed: bool
    only_managed: bool
    localized_times: bool
    page: int
    after: tuple[str, str]
    last_modified: datetime | None = None
    include_deleted: bool = False
    include_moved: bool = False


_token_decoder = msgspec.json.Decoder(_Token)


@dataclass(frozen=True, slots=True)
class ReadQuery:
    """One read of an account's calendar, as asked in the query string or carried by a page URL."""

    kind: str
    tz: ZoneInfo
    window: Interval
    calendar_ids: tuple[str, ...]
    include_managed: bool
    only_managed: bool
    localized_times: bool
    last_modified: datetime | None = None
    """Events: only what changed since then (the change feed); `include_deleted`, `include_moved` widen it."""
    include_deleted: bool = False
    include_moved: bool = False


def read_query(request: Request[Any, Any, Any], kind: str, account: Account, *, default_back: timedelta) -> ReadQuery:
    """The query string as a ReadQuery (`last_modified`, `include_deleted`, `include_moved`: events only)."""
    params = request.query_params
    tzid = params.get("tzid")
    if not tzid:
        raise InvalidRequest.field("tzid", "is required: an IANA time zone such as Europe/London")
    tz = zone(tzid)
    today = datetime.now(UTC).astimezone(tz).date()
    start = _bound(params.get("from"), "from", tz, today - default_back)
    end = _bound(params.get("to"), "to", tz, today + timedelta(days=201))
    if end <= start:
        raise InvalidRequest.field("to", "must be after from")
    if end - start > MAX_SPAN:
        raise LimitExceeded(
            field="to",
            limit=f"{MAX_SPAN.days} days",
            actual=str(end - start),
            message=f"from and to may be at most {MAX_SPAN.days} days apart",
        )
    last_modified = None
    if params.get("last_modified"):
        if kind != "events":
            raise UnsupportedParameter("last_modified", "is a parameter of /v1/events only")
        last_modified = parse_time(params["last_modified"], "last_modified")
    include_deleted = boolean(params, "include_deleted", False)
    include_moved = boolean(params, "include_moved", False)
    boolean(params, "include_geo", False)  # no geo data upstream: accepted, nothing to add
    calendar_ids = tuple(dict.fromkeys(query_list(request, "calendar_ids")))
    query = ReadQuery(
        kind=kind,
        tz=tz,
        window=Interval(start, end),
        calendar_ids=calendar_ids,
        include_managed=boolean(params, "include_managed", kind == "free_busy"),
        only_managed=boolean(params, "only_managed", False),
        localized_times=boolean(params, "localized_times", False),
        last_modified=last_modified,
        include_deleted=include_deleted and kind == "events",
        include_moved=include_moved and kind == "events",
    )
    check_calendars(query, account)
    return query


def check_calendars(query: ReadQuery, account: Account) -> None:
    for i, calendar_id in enumerate(query.calendar_ids):
        if calendar_id != account.calendar_id:
            raise InvalidRequest.field(f"calendar_ids[{i}]", f"{calendar_id!r} is not a calendar of this account")


def _bound(raw: str | None, field: str, tz: ZoneInfo, default: date) -> datetime:
    if not raw:
        return start_of(default, tz)
    found = parse_instant(raw, field, tz=tz)
    return found if isinstance(found, datetime) else start_of(found, tz)


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    current: int
    total: int
    next_token: str | None

    def pages(self, base_url: str, path: str) -> dict[str, Any]:
        found: dict[str, Any] = {"current": self.current, "total": self.total}
        if self.next_token is not None:
            found["next_page"] = f"{base_url}{path}/pages/{self.next_token}"
        return found


def page_of(
    items: Sequence[T],
    query: ReadQuery,
    key: Callable[[T], tuple[str, str]],
    *,
    page: int = 1,
    after: tuple[str, str] | None = None,
) -> Page:
    """Items after `after` (by key), at most PAGE_SIZE of them, and the token of the page after."""
    ordered = sorted(items, key=key)
    if after is not None:
        ordered = [item for item in ordered if key(item) > after]
    shown = ordered[:PAGE_SIZE]
    total = page - 1 + max(1, math.ceil(len(ordered) / PAGE_SIZE))
    token = None
    if len(ordered) > PAGE_SIZE:
        token = _encode(query, page + 1, key(shown[-1]))
    return Page(list(shown), page, total, token)


def _encode(query: ReadQuery, page: int, after: tuple[str, str]) -> str:
    token = _Token(
        kind=query.kind,
        tzid=query.tz.key,
        start=query.window.start,
        end=query.window.end,
        calendar_ids=list(query.calendar_ids),
        include_managed=query.include_managed,
        only_managed=query.only_managed,
        localized_times=query.localized_times,
        page=page,
        after=after,
        last_modified=query.last_modified,
        include_deleted=query.include_deleted,
        include_moved=query.include_moved,
    )
    return base64.urlsafe_b64encode(msgspec.json.encode(token)).decode().rstrip("=")


def from_token(raw: str, kind: str, account: Account) -> tuple[ReadQuery, int, tuple[str, str]]:
    """A page URL's query, page number and position, checked like a fresh query."""
    try:
        token = _token_decoder.decode(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidRequest.field("page", "is not a page this API returned") from None
    if token.kind != kind or token.page < 2 or token.end <= token.start or token.end - token.start > MAX_SPAN:
        raise InvalidRequest.field("page", "is not a page this API returned")
    query = ReadQuery(
        kind=kind,
        tz=zone(token.tzid),
        window=Interval(token.start, token.end),
        calendar_ids=tuple(token.calendar_ids),
        include_managed=token.include_managed,
        only_managed=token.only_managed,
        localized_times=token.localized_times,
        last_modified=token.last_modified,
        include_deleted=token.include_deleted,
        include_moved=token.include_moved,
    )
    check_calendars(query, account)
    return query, token.page, token.after
