"""`POST /v1/availability`: when can these people meet? (design §6, exactly)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import msgspec
from litestar import post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body as BodyParam

from calbroker.api.auth import Caller
from calbroker.api.free_busy import parse_mailboxes
from calbroker.api.problems import V1_PROBLEMS, embedded_problem
from calbroker.api.wire import Body, Days, Minutes, Period, Response, interval, zone
from calbroker.domain import (
    DEFAULT_MAX_RESULTS,
    MAX_MEMBERS,
    MAX_QUERY_PERIODS,
    MAX_RESULTS,
    AvailabilityQuery,
    Explanation,
    Group,
    Interval,
    Member,
    ResponseFormat,
    Slot,
    find_availability,
    intersect,
)
from calbroker.domain.busy import BusyStatus
from calbroker.domain.errors import CalbrokerError, InvalidRequest, LimitExceeded
from calbroker.domain.working_hours import Weekday, WeeklyPeriod, WorkingHours
from calbroker.providers.protocol import Deadline
from calbroker.services import ScheduleReader

__all__ = ["availability"]

_DAYS = tuple(day.name.lower() for day in Weekday)


class MemberIn(Body):
    email: str
    available_periods: list[Period] | None = None


class Participants(Body):
    members: Annotated[list[MemberIn], msgspec.Meta(min_length=1)]
    required: Literal["all"] | Annotated[int, msgspec.Meta(ge=1)] = "all"


class Buffer(Body):
    before: Minutes | None = None
    after: Minutes | None = None


class WeeklyPeriodIn(Body):
    day: Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
    start_time: Annotated[str, msgspec.Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["09:00"])]
    end_time: Annotated[str, msgspec.Meta(pattern=r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$", examples=["17:30"])]


class WorkingHoursIn(Body):
    weekly_periods: Annotated[list[WeeklyPeriodIn], msgspec.Meta(min_length=1, max_length=100)]


class AvailabilityRequest(Body):
    participants: Annotated[list[Participants], msgspec.Meta(min_length=1)]
    duration: Minutes
    query_periods: Annotated[list[Period], msgspec.Meta(min_length=1)]
    tzid: str | None = None
    start_interval: Minutes | None = None
    buffer: Buffer | None = None
    working_hours: Literal["mailbox"] | WorkingHoursIn | None = None
    minimum_notice: Minutes | None = None
    maximum_advance: Days | None = None
    tentative_as_busy: bool = True
    response_format: Literal["slots", "periods"] = "slots"
    max_results: Annotated[int, msgspec.Meta(ge=1, le=MAX_RESULTS)] = DEFAULT_MAX_RESULTS
    explain: bool = False


class SlotOut(Response):
    start: datetime
    end: datetime
    members: list[str]


class BusyRef(Response):
    start: datetime
    end: datetime
    status: BusyStatus


class BlockerOut(Response):
    reason: str
    member: str | None = None
    busy: BusyRef | None = None
    detail: str | None = None


class ExplanationOut(Response):
    start: datetime
    end: datetime
    blocked_by: list[BlockerOut]


class MemberError(Response):
    email: str
    problem: dict[str, Any]


class AvailabilityResponse(Response):
    member_errors: list[MemberError]
    slots: list[SlotOut] | None = None
    periods: list[SlotOut] | None = None
    explanations: list[ExplanationOut] | None = None


def _wall_time(value: str) -> time | None:
    return None if value == "24:00" else time.fromisoformat(value)


def _request_working_hours(spec: WorkingHoursIn, request: AvailabilityRequest) -> WorkingHours:
    periods = tuple(
        WeeklyPeriod(Weekday(_DAYS.index(p.day)), time.fromisoformat(p.start_time), _wall_time(p.end_time))
        for p in spec.weekly_periods
    )
    return WorkingHours(periods, zone(request.tzid))


def _groups(request: AvailabilityRequest) -> tuple[tuple[Group, ...], dict[str, tuple[Interval, ...] | None]]:
    groups: list[Group] = []
    available: dict[str, tuple[Interval, ...] | None] = {}
    for g, participants in enumerate(request.participants):
        field = f"participants[{g}]"
        emails = parse_mailboxes([m.email for m in participants.members], f"{field}.members", MAX_MEMBERS)
        if len(emails) != len(participants.members):
            raise InvalidRequest.field(f"{field}.members", "a member is listed twice in one group")
        for i, member in enumerate(participants.members):
            if member.available_periods is None:
                continue
            if len(member.available_periods) > MAX_QUERY_PERIODS:
                raise LimitExceeded(
                    field=f"{field}.members[{i}].available_periods",
                    limit=MAX_QUERY_PERIODS,
                    actual=len(member.available_periods),
                    message=f"at most {MAX_QUERY_PERIODS} periods",
                )
            periods = tuple(
                interval(p, f"{field}.members[{i}].available_periods[{j}]")
                for j, p in enumerate(member.available_periods)
            )
            email = emails[i]
            # The same member in two groups with different periods: both restrictions apply.
            previous = available.get(email)
            available[email] = periods if previous is None else intersect(previous, periods)
        for email in emails:
            available.setdefault(email, None)
        required = None if participants.required == "all" else participants.required
        if required is not None and required > len(emails):
            raise InvalidRequest.field(
                f"{field}.required", f'must be between 1 and the group\'s {len(emails)} members, or "all"'
            )
        groups.append(Group(tuple(emails), required))
    return tuple(groups), available


def _slot_out(slot: Slot, tz: ZoneInfo) -> SlotOut:
    return SlotOut(start=slot.start.astimezone(tz), end=slot.end.astimezone(tz), members=list(slot.members))


def _explanation_out(explanation: Explanation, tz: ZoneInfo) -> ExplanationOut:
    return ExplanationOut(
        start=explanation.start.astimezone(tz),
        end=explanation.end.astimezone(tz),
        blocked_by=[
            BlockerOut(
                reason=b.reason.value,
                member=b.member,
                busy=BusyRef(
                    start=b.busy.interval.start.astimezone(tz),
                    end=b.busy.interval.end.astimezone(tz),
                    status=b.busy.status,
                )
                if b.busy
                else None,
                detail=b.detail,
            )
            for b in explanation.blockers
        ],
    )


_EXAMPLE = {
    "participants": [
        {"members": [{"email": "miriam.graham@contoso.com"}, {"email": "alex.wilber@contoso.com"}], "required": 1},
        {"members": [{"email": "anna.schmidt@fabrikam.com"}], "required": "all"},
    ],
    "duration": {"minutes": 30},
    "query_periods": [{"start": "2026-11-24T08:00:00Z", "end": "2026-11-27T18:00:00Z"}],
    "tzid": "Europe/London",
    "start_interval": {"minutes": 15},
    "buffer": {"before": {"minutes": 5}, "after": {"minutes": 5}},
    "working_hours": "mailbox",
    "minimum_notice": {"minutes": 120},
    "max_results": 3,
}
_RESPONSE_EXAMPLE = {
    "member_errors": [],
    "slots": [
        {
            "start": "2026-11-24T09:30:00+00:00",
            "end": "2026-11-24T10:00:00+00:00",
            "members": ["anna.schmidt@fabrikam.com", "miriam.graham@contoso.com"],
        }
    ],
}


@post(
    "/availability",
    status_code=200,
    tags=["availability"],
    summary="Slots or periods when participant groups can meet",
    responses={
        200: ResponseSpec(
            AvailabilityResponse,
            description="Slots (or periods) in the request's time zone; unreadable members in member_errors",
            generate_examples=False,
            examples=[Example(summary="Slots for two groups", value=_RESPONSE_EXAMPLE)],
        ),
        **V1_PROBLEMS,
    },
)
async def availability(
    data: Annotated[AvailabilityRequest, BodyParam(examples=[Example(summary="Two groups", value=_EXAMPLE)])],
    caller: NamedDependency[Caller],
    schedules: NamedDependency[ScheduleReader],
    deadline: NamedDependency[Deadline],
) -> AvailabilityResponse:
    """Design §6: busy sets (buffers dilate them), free sets, then slots or maximal periods.

    A member whose calendar could not be read is unavailable everywhere and listed in
    `member_errors` with the reason; the query still answers for everyone else.
    """
    tz = zone(data.tzid)
    groups, available = _groups(data)
    if len(available) > MAX_MEMBERS:
        raise LimitExceeded(
            field="participants",
            limit=MAX_MEMBERS,
            actual=len(available),
            message=f"at most {MAX_MEMBERS} members",
        )
    if len(data.query_periods) > MAX_QUERY_PERIODS:
        raise LimitExceeded(
            field="query_periods",
            limit=MAX_QUERY_PERIODS,
            actual=len(data.query_periods),
            message=f"at most {MAX_QUERY_PERIODS} query periods",
        )
    periods = tuple(interval(p, f"query_periods[{i}]") for i, p in enumerate(data.query_periods))
    before = data.buffer.before.delta() if data.buffer and data.buffer.before else timedelta(0)
    after = data.buffer.after.delta() if data.buffer and data.buffer.after else timedelta(0)
    override = (
        _request_working_hours(data.working_hours, data) if isinstance(data.working_hours, WorkingHoursIn) else None
    )
    now = datetime.now(UTC)
    # Validate everything the engine checks before spending an upstream call on it.
    probe = AvailabilityQuery(
        groups=groups,
        members={e: Member(e) for e in available},
        duration=data.duration.delta(),
        query_periods=periods,
        now=now,
        tz=tz,
        start_interval=data.start_interval.delta() if data.start_interval else None,
        buffer_before=before,
        buffer_after=after,
        apply_working_hours=data.working_hours is not None,
        minimum_notice=data.minimum_notice.delta() if data.minimum_notice else timedelta(0),
        maximum_advance=data.maximum_advance.delta() if data.maximum_advance else None,
        tentative_as_busy=data.tentative_as_busy,
        response_format=ResponseFormat(data.response_format),
        max_results=data.max_results,
        explain=data.explain,
    )
    # Busy time just outside the query periods still matters once buffers dilate it.
    window = Interval(min(p.start for p in periods) - before, max(p.end for p in periods) + after)
    found = await schedules.read(caller.application.id, list(available), window, deadline)
    members: dict[str, Member] = {}
    errors: list[MemberError] = []
    for email, periods_of_member in available.items():
        result = found[email]
        if isinstance(result, CalbrokerError):
            errors.append(MemberError(email=email, problem=embedded_problem(result)))
            members[email] = Member(email, available_periods=periods_of_member, unavailable_reason=result.detail)
            continue
        hours = override if override is not None else result.working_hours
        members[email] = Member(email, busy=result.busy, available_periods=periods_of_member, working_hours=hours)
    query = replace(probe, members=members)
    outcome = find_availability(query)
    slots = [_slot_out(s, tz) for s in outcome.slots]
    periods_out = [_slot_out(s, tz) for s in outcome.periods]
    return AvailabilityResponse(
        slots=slots if query.response_format is ResponseFormat.SLOTS else None,
        periods=periods_out if query.response_format is ResponseFormat.PERIODS else None,
        member_errors=errors,
        explanations=[_explanation_out(e, tz) for e in outcome.explanations] if data.explain else None,
    )
