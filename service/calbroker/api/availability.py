"""`POST /v1/availability`: when can these people meet? (design §6, exactly)."""

from __future__ import annotations

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
from calbroker.api.free_busy import FRESHNESS, Freshness, parse_mailboxes
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
    intersect,
)
from calbroker.domain.busy import BusyStatus
from calbroker.domain.errors import InvalidRequest, LimitExceeded
from calbroker.domain.sync import Source
from calbroker.domain.working_hours import Weekday, WeeklyPeriod, WorkingHours
from calbroker.providers.protocol import Deadline
from calbroker.services import AvailabilityAnswer, ScheduleReader, answer_availability

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

    def to_domain(self, tz: ZoneInfo) -> WorkingHours:
        periods = tuple(
            WeeklyPeriod(Weekday(_DAYS.index(p.day)), time.fromisoformat(p.start_time), _wall_time(p.end_time))
            for p in self.weekly_periods
        )
        return WorkingHours(periods, tz)


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
    freshness: Freshness = "auto"

    def to_domain(self, now: datetime) -> AvailabilityQuery:
        """The query in domain terms, checked against every documented limit before anything is read."""
        tz = zone(self.tzid)
        groups, available = self._groups()
        hours = self.working_hours.to_domain(tz) if isinstance(self.working_hours, WorkingHoursIn) else None
        before = self.buffer.before.delta() if self.buffer and self.buffer.before else timedelta(0)
        after = self.buffer.after.delta() if self.buffer and self.buffer.after else timedelta(0)
        return AvailabilityQuery(
            groups=groups,
            members={e: Member(e, available_periods=p, working_hours=hours) for e, p in available.items()},
            duration=self.duration.delta(),
            query_periods=tuple(interval(p, f"query_periods[{i}]") for i, p in enumerate(self.query_periods)),
            now=now,
            tz=tz,
            start_interval=self.start_interval.delta() if self.start_interval else None,
            buffer_before=before,
            buffer_after=after,
            apply_working_hours=self.working_hours is not None,
            minimum_notice=self.minimum_notice.delta() if self.minimum_notice else timedelta(0),
            maximum_advance=self.maximum_advance.delta() if self.maximum_advance else None,
            tentative_as_busy=self.tentative_as_busy,
            response_format=ResponseFormat(self.response_format),
            max_results=self.max_results,
            explain=self.explain,
        )

    def _groups(self) -> tuple[tuple[Group, ...], dict[str, tuple[Interval, ...] | None]]:
        """Groups of normalised members, and each member's available periods (None: unrestricted)."""
        groups: list[Group] = []
        available: dict[str, tuple[Interval, ...] | None] = {}
        for g, participants in enumerate(self.participants):
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


class MemberSource(Response):
    email: str
    source: Annotated[Source, msgspec.Meta(description="Where this member's busy time came from.")]
    as_of: Annotated[datetime, msgspec.Meta(description="When Microsoft was known to say this.")]


class AvailabilityResponse(Response):
    member_errors: list[MemberError]
    member_sources: list[MemberSource]
    slots: list[SlotOut] | None = None
    periods: list[SlotOut] | None = None
    explanations: list[ExplanationOut] | None = None

    @classmethod
    def from_domain(cls, answer: AvailabilityAnswer, query: AvailabilityQuery) -> AvailabilityResponse:
        """Times in the request's zone; only the list the request's `response_format` asked for."""
        tz, result = query.tz, answer.result
        slots = query.response_format is ResponseFormat.SLOTS
        return cls(
            slots=[_slot_out(s, tz) for s in result.slots] if slots else None,
            periods=None if slots else [_slot_out(s, tz) for s in result.periods],
            member_errors=[MemberError(email=e, problem=embedded_problem(error)) for e, error in answer.member_errors],
            member_sources=[
                MemberSource(email=e, source=source, as_of=as_of.astimezone(tz)) for e, source, as_of in answer.sources
            ],
            explanations=[_explanation_out(e, tz) for e in result.explanations] if query.explain else None,
        )


def _wall_time(value: str) -> time | None:
    return None if value == "24:00" else time.fromisoformat(value)


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
    "member_sources": [
        {"email": "anna.schmidt@fabrikam.com", "source": "live", "as_of": "2026-11-23T09:00:00+00:00"},
        {"email": "miriam.graham@contoso.com", "source": "cache", "as_of": "2026-11-23T08:58:41+00:00"},
    ],
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
    query = data.to_domain(datetime.now(UTC))
    answer = await answer_availability(
        schedules, caller.application.id, query, deadline, mode=FRESHNESS[data.freshness]
    )
    return AvailabilityResponse.from_domain(answer, query)
