"""`POST /v1/availability`: Cronofy's availability query, answered by the native engine (design §6).

Members are Cronofy accounts (`sub`) of the caller's application; the query becomes a native
`AvailabilityQuery` and goes through the same `answer_availability` as `POST /v1/availability`
on the native API, so both answer identically. `response_format`:

- `periods` (Cronofy's default) → the engine's maximal periods;
- `overlapping_slots` → the engine's slots, one per start on the `start_interval` grid;
- `slots` → of those, the earliest that do not overlap one another (each next slot starts at or
  after the end of the previous one), chosen among the first 1024 grid slots.

A member whose calendar cannot be read is free nowhere; `member_errors` (an addition Cronofy
clients ignore) says why.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, post
from litestar.di import NamedDependency

from calbroker.api.compat.cronofy.auth import caller_of
from calbroker.api.compat.cronofy.wire import Body, UnsupportedParameter, decode_body, format_time, parse_time
from calbroker.domain import (
    DEFAULT_MAX_RESULTS,
    MAX_RESULTS,
    AvailabilityQuery,
    Group,
    Interval,
    Member,
    ResponseFormat,
    Slot,
    intersect,
)
from calbroker.domain.errors import InvalidRequest
from calbroker.providers.protocol import Deadline
from calbroker.services import Services, answer_availability
from calbroker.store.cronofy import Account, accounts_by_ids

__all__ = ["AvailabilityIn", "availability", "non_overlapping", "to_domain"]


class _Minutes(Body):
    minutes: Annotated[int, msgspec.Meta(ge=0, le=60 * 24 * 366)]


class _BufferSide(Body):
    minutes: Annotated[int, msgspec.Meta(ge=0, le=60 * 24)] | None = None
    minimum: _Minutes | None = None
    maximum: _Minutes | None = None


class _Buffer(Body):
    before: _BufferSide | None = None
    after: _BufferSide | None = None


class _Period(Body):
    start: str
    end: str


class _Member(Body):
    sub: str
    calendar_ids: list[str] | None = None
    available_periods: list[_Period] | None = None
    managed_availability: bool | None = None
    availability_rule_ids: list[str] | None = None
    availability_constraints: list[Any] | None = None


class _Group(Body):
    members: Annotated[list[_Member], msgspec.Meta(min_length=1)]
    required: Literal["all"] | Annotated[int, msgspec.Meta(ge=1)] = "all"


class AvailabilityIn(Body):
    participants: Annotated[list[_Group], msgspec.Meta(min_length=1)]
    required_duration: _Minutes
    query_periods: list[_Period] | None = None
    available_periods: list[_Period] | None = None
    """The older name of `query_periods`, which pycronofy still sends."""
    start_interval: _Minutes | None = None
    buffer: _Buffer | None = None
    response_format: Literal["periods", "slots", "overlapping_slots"] = "periods"
    max_results: Annotated[int, msgspec.Meta(ge=1, le=MAX_RESULTS)] = DEFAULT_MAX_RESULTS
    query_slots: list[Any] | None = None
    excluded_events: list[Any] | None = None
    include_member_statuses: bool | None = None


def _periods(periods: list[_Period], field: str) -> tuple[Interval, ...]:
    found = []
    for i, period in enumerate(periods):
        start = parse_time(period.start, f"{field}[{i}].start")
        end = parse_time(period.end, f"{field}[{i}].end")
        if end <= start:
            raise InvalidRequest.field(f"{field}[{i}].end", "must be after start")
        found.append(Interval(start, end))
    return tuple(found)


def _buffer(side: _BufferSide | None, field: str) -> int:
    if side is None:
        return 0
    if side.minimum is not None or side.maximum is not None:
        raise UnsupportedParameter(field, "minimum and maximum buffers are not supported; give minutes")
    return side.minutes or 0


def _refuse_unsupported(data: AvailabilityIn) -> None:
    if data.query_slots is not None:
        raise UnsupportedParameter("query_slots", "is not supported; give query_periods")
    if data.excluded_events is not None:
        raise UnsupportedParameter("excluded_events", "is not supported")
    if data.include_member_statuses:
        raise UnsupportedParameter("include_member_statuses", "is not supported; see member_errors instead")
    for g, group in enumerate(data.participants):
        for i, member in enumerate(group.members):
            field = f"participants[{g}].members[{i}]"
            if member.managed_availability:
                raise UnsupportedParameter(f"{field}.managed_availability", "availability rules are not supported")
            if member.availability_rule_ids:
                raise UnsupportedParameter(f"{field}.availability_rule_ids", "availability rules are not supported")
            if member.availability_constraints:
                raise UnsupportedParameter(f"{field}.availability_constraints", "is not supported")


def to_domain(data: AvailabilityIn, accounts: dict[str, Account], now: datetime) -> AvailabilityQuery:
    """The Cronofy query as the native engine's query (members by mailbox), limits checked by the domain."""
    _refuse_unsupported(data)
    if data.query_periods is not None and data.available_periods is not None:
        raise InvalidRequest.field("available_periods", "give query_periods or available_periods, not both")
    raw_periods = data.query_periods if data.query_periods is not None else data.available_periods
    if not raw_periods:
        raise InvalidRequest.field("query_periods", "is required: at least one {start, end}")
    field = "query_periods" if data.query_periods is not None else "available_periods"
    groups: list[Group] = []
    available: dict[str, tuple[Interval, ...] | None] = {}
    for g, group in enumerate(data.participants):
        emails: list[str] = []
        for i, member in enumerate(group.members):
            where = f"participants[{g}].members[{i}]"
            account = accounts.get(member.sub)
            if account is None:
                raise InvalidRequest.field(f"{where}.sub", f"{member.sub!r} is not an account of this application")
            for c, calendar_id in enumerate(member.calendar_ids or ()):
                if calendar_id != account.calendar_id:
                    raise InvalidRequest.field(
                        f"{where}.calendar_ids[{c}]", f"{calendar_id!r} is not a calendar of {member.sub}"
                    )
            email = account.mailbox
            if email in emails:
                raise InvalidRequest.field(f"{where}.sub", "a member is listed twice in one group")
            emails.append(email)
            if member.available_periods is not None:
                periods = _periods(member.available_periods, f"{where}.available_periods")
                previous = available.get(email)
                available[email] = periods if previous is None else intersect(previous, periods)
            else:
                available.setdefault(email, None)
        required = None if group.required == "all" else group.required
        if required is not None and required > len(emails):
            raise InvalidRequest.field(
                f"participants[{g}].required", f'must be between 1 and the group\'s {len(emails)} members, or "all"'
            )
        groups.append(Group(tuple(emails), required))
    buffer = data.buffer or _Buffer()
    slots = data.response_format != "periods"
    return AvailabilityQuery(
        groups=tuple(groups),
        members={email: Member(email, available_periods=periods) for email, periods in available.items()},
        duration=_minutes(data.required_duration.minutes),
        query_periods=_periods(raw_periods, field),
        now=now,
        start_interval=_minutes(data.start_interval.minutes) if data.start_interval else None,
        buffer_before=_minutes(_buffer(buffer.before, "buffer.before")),
        buffer_after=_minutes(_buffer(buffer.after, "buffer.after")),
        response_format=ResponseFormat.SLOTS if slots else ResponseFormat.PERIODS,
        max_results=MAX_RESULTS if data.response_format == "slots" else data.max_results,
    )


def _minutes(value: int) -> timedelta:
    return timedelta(minutes=value)


def non_overlapping(slots: Iterable[Slot]) -> list[Slot]:
    """The earliest slots that do not overlap one another, in start order (Cronofy's `slots`)."""
    chosen: list[Slot] = []
    for slot in slots:
        if not chosen or slot.start >= chosen[-1].end:
            chosen.append(slot)
    return chosen


def _out(slot: Slot, subs: dict[str, str]) -> dict[str, Any]:
    return {
        "start": format_time(slot.start),
        "end": format_time(slot.end),
        "participants": [{"sub": subs[email]} for email in slot.members],
    }


@post("/availability", status_code=200, include_in_schema=False)
async def availability(
    request: Request[Any, Any, Any], services: NamedDependency[Services], deadline: NamedDependency[Deadline]
) -> dict[str, Any]:
    """With an account token or the client secret (Cronofy's API key); members are the application's accounts."""
    caller = caller_of(request)
    data = await decode_body(request, AvailabilityIn)
    subs = [m.sub for g in data.participants for m in g.members]
    async with services.pool.acquire() as conn:
        accounts = await accounts_by_ids(conn, caller.client.application_id, list(dict.fromkeys(subs)))
    query = to_domain(data, accounts, datetime.now(UTC))
    answer = await answer_availability(services.schedules, caller.client.application_id, query, deadline)
    by_email = {account.mailbox: account.account_id for account in accounts.values()}
    body: dict[str, Any]
    if data.response_format == "periods":
        body = {"available_periods": [_out(s, by_email) for s in answer.result.periods]}
    else:
        found = answer.result.slots
        if data.response_format == "slots":
            found = tuple(non_overlapping(found))[: data.max_results]
        body = {"available_slots": [_out(s, by_email) for s in found]}
    if answer.member_errors:
        body["member_errors"] = [
            {"sub": by_email[email], "error": error.slug.replace("-", "_"), "error_description": error.detail}
            for email, error in answer.member_errors
        ]
    return body
