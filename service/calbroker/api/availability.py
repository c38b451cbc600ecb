"""`POST /v1/availability`: when can these people meet? (design §6, exactly)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

import msgspec
from litestar import post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body as BodyParam

from calbroker.api.auth import Caller
from calbroker.api.free_busy import FRESHNESS, Freshness, parse_mailboxes
from calbroker.api.problems import EmbeddedProblem, embedded_problem, problem_responses
from calbroker.api.wire import (
    Body,
    Days,
    Duration,
    Email,
    Minutes,
    Period,
    Response,
    StartInterval,
    ZonedInstants,
    interval,
    zone,
    zone_field,
)
from calbroker.domain import (
    DEFAULT_MAX_RESULTS,
    MAX_GROUPS,
    MAX_MEMBERS,
    MAX_QUERY_PERIODS,
    MAX_QUERY_SPAN,
    MAX_RESULTS,
    AvailabilityQuery,
    BlockReason,
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
from calbroker.domain.intervals import MICROSECOND
from calbroker.domain.sync import Source
from calbroker.domain.working_hours import Weekday, WeeklyPeriod, WorkingHours
from calbroker.services import AvailabilityAnswer, answer_availability

__all__ = ["availability"]

_DAYS = tuple(day.name.lower() for day in Weekday)


class MemberIn(Body):
    """One person or room whose time counts."""

    email: Annotated[Email, msgspec.Meta(description="The member's mailbox")]
    available_periods: (
        Annotated[
            list[Period],
            msgspec.Meta(
                max_length=MAX_QUERY_PERIODS,
                description=f"Only these periods count as free for this member (at most {MAX_QUERY_PERIODS})",
            ),
        ]
        | None
    ) = None


class Participants(Body):
    """A group of members of whom `required` must be free."""

    members: Annotated[
        list[MemberIn],
        msgspec.Meta(min_length=1, max_length=MAX_MEMBERS, description=f"1 to {MAX_MEMBERS} members"),
    ]
    required: Annotated[
        Literal["all"] | Annotated[int, msgspec.Meta(ge=1, le=MAX_MEMBERS)],
        msgspec.Meta(
            description='"all", or how many members must be free (at most the group\'s size)',
            # Litestar drops the bounds of an integer inside a union: spelled out for the contract.
            extra_json_schema={
                "extra": {
                    "one_of": [
                        {"type": "string", "enum": ["all"]},
                        {"type": "integer", "minimum": 1, "maximum": MAX_MEMBERS},
                    ]
                }
            },
        ),
    ] = "all"


class Buffer(Body):
    """Time kept free around each slot."""

    before: Annotated[Minutes | None, msgspec.Meta(description="Free time needed before the slot")] = None
    after: Annotated[Minutes | None, msgspec.Meta(description="Free time needed after the slot")] = None


Day = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


class WeeklyPeriodIn(Body):
    """Wall-clock working time on one weekday."""

    day: Annotated[Day, msgspec.Meta(description="Day of the week")]
    start_time: Annotated[
        str, msgspec.Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["09:00"], description="HH:MM, 00:00–23:59")
    ]
    end_time: Annotated[
        str,
        msgspec.Meta(
            pattern=r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$",
            examples=["17:30"],
            description="HH:MM after start_time; 24:00 is the end of the day",
        ),
    ]


class WorkingHoursIn(Body):
    """A working week that applies to every member, in the request's `tzid`."""

    weekly_periods: Annotated[
        list[WeeklyPeriodIn], msgspec.Meta(min_length=1, max_length=100, description="1 to 100 periods")
    ]

    def to_domain(self, tz: ZoneInfo, field: str) -> WorkingHours:
        periods = []
        for i, p in enumerate(self.weekly_periods):
            start, end = time.fromisoformat(p.start_time), _wall_time(p.end_time)
            if end is not None and end <= start:
                raise InvalidRequest.field(
                    f"{field}.weekly_periods[{i}].end_time", f"must be after start_time ({p.start_time})"
                )
            periods.append(WeeklyPeriod(Weekday(_DAYS.index(p.day)), start, end))
        return WorkingHours(tuple(periods), tz)


class AvailabilityRequest(Body):
    """Who must meet, for how long, within which periods (design §6)."""

    participants: Annotated[
        list[Participants],
        msgspec.Meta(
            min_length=1, max_length=MAX_GROUPS, description=f"1 to {MAX_GROUPS} groups; every one must be satisfied"
        ),
    ]
    duration: Annotated[Duration, msgspec.Meta(description="How long the meeting lasts")]
    query_periods: Annotated[
        list[Period],
        msgspec.Meta(
            min_length=1,
            max_length=MAX_QUERY_PERIODS,
            description=f"Where to look: 1 to {MAX_QUERY_PERIODS} periods spanning at most {MAX_QUERY_SPAN.days} days",
        ),
    ]
    tzid: (
        Annotated[str, zone_field("IANA zone for the answer, the start grid and working hours; default UTC")] | None
    ) = None
    start_interval: Annotated[
        StartInterval | None,
        msgspec.Meta(description="Slot starts are on this grid from local midnight; default: duration, at most 60"),
    ] = None
    buffer: Annotated[Buffer | None, msgspec.Meta(description="Free time needed around each slot")] = None
    working_hours: Annotated[
        Literal["mailbox"] | WorkingHoursIn | None,
        msgspec.Meta(description='"mailbox": each member\'s own working hours; or one working week for everyone'),
    ] = None
    minimum_notice: Annotated[Minutes | None, msgspec.Meta(description="No slot starts sooner than this from now")] = (
        None
    )
    maximum_advance: Annotated[Days | None, msgspec.Meta(description="No slot starts later than this from now")] = None
    tentative_as_busy: Annotated[bool, msgspec.Meta(description="Whether tentative time blocks a slot")] = True
    response_format: Annotated[
        Literal["slots", "periods"],
        msgspec.Meta(description="slots: fixed-length slots on the grid; periods: maximal free periods"),
    ] = "slots"
    max_results: Annotated[
        int, msgspec.Meta(ge=1, le=MAX_RESULTS, description=f"At most this many slots or periods (1 to {MAX_RESULTS})")
    ] = DEFAULT_MAX_RESULTS
    explain: Annotated[bool, msgspec.Meta(description="Say what blocked the requested periods")] = False
    freshness: Freshness = "auto"

    def to_domain(self, now: datetime) -> AvailabilityQuery:
        """The query in domain terms, checked against every documented limit before anything is read."""
        tz = zone(self.tzid)
        groups, available = self._groups()
        hours = (
            self.working_hours.to_domain(tz, "working_hours")
            if isinstance(self.working_hours, WorkingHoursIn)
            else None
        )
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


class SlotOut(Response, gc=False):
    """A time the groups can meet, and who is free over all of it.

    Untracked by the cycle collector (it holds datetimes and a list of strings, so it can be in no
    cycle): an answer makes hundreds, and tracked they were most of what set off collections.
    """

    start: Annotated[datetime, msgspec.Meta(description="Start, in the request's tzid")]
    end: Annotated[datetime, msgspec.Meta(description="End, in the request's tzid")]
    members: Annotated[list[str], msgspec.Meta(description="Members free over the whole slot or period, sorted")]


class BusyRef(Response):
    """The busy interval that blocked a time."""

    start: Annotated[datetime, msgspec.Meta(description="Start, in the request's tzid")]
    end: Annotated[datetime, msgspec.Meta(description="End, in the request's tzid")]
    status: Annotated[BusyStatus, msgspec.Meta(description="busy, tentative, oof or working_elsewhere")]


class BlockerOut(Response):
    """One reason a time was not available."""

    reason: Annotated[
        BlockReason,
        msgspec.Meta(description="What kept the member (or, for the notice rules, everyone) from the time"),
    ]
    member: Annotated[str | None, msgspec.Meta(description="The member it applies to")] = None
    busy: Annotated[BusyRef | None, msgspec.Meta(description="The busy interval, when busy time blocked it")] = None
    detail: Annotated[str | None, msgspec.Meta(description="More about the reason, for a person to read")] = None


class ExplanationOut(Response):
    """Why a stretch of a requested period has no slot."""

    start: Annotated[datetime, msgspec.Meta(description="Start of the stretch, in the request's tzid")]
    end: Annotated[datetime, msgspec.Meta(description="End of the stretch, in the request's tzid")]
    blocked_by: Annotated[list[BlockerOut], msgspec.Meta(description="Every reason, member by member")]


class MemberError(Response):
    """A member whose calendar could not be read: unavailable everywhere."""

    email: Annotated[str, msgspec.Meta(description="The member")]
    problem: Annotated[EmbeddedProblem, msgspec.Meta(description="Why the calendar could not be read")]


class MemberSource(Response):
    """Where one member's busy time came from: the synced copy (only when provably fresh) or Microsoft live."""

    email: Annotated[str, msgspec.Meta(description="The member")]
    source: Annotated[Source, msgspec.Meta(description="cache or live")]
    as_of: Annotated[datetime, msgspec.Meta(description="When Microsoft was known to say this")]


class AvailabilityResponse(Response):
    """Slots (or periods) when the groups can meet."""

    member_errors: Annotated[
        list[MemberError], msgspec.Meta(description="Members whose calendars could not be read (empty if none)")
    ]
    member_sources: Annotated[
        list[MemberSource],
        msgspec.Meta(description="Per member: whether its busy time came from the synced copy or live, and as of when"),
    ]
    slots: Annotated[
        list[SlotOut] | None, msgspec.Meta(description='With response_format "slots": available slots by start')
    ] = None
    periods: Annotated[
        list[SlotOut] | None,
        msgspec.Meta(description='With response_format "periods": maximal available periods by start'),
    ] = None
    explanations: Annotated[
        list[ExplanationOut] | None, msgspec.Meta(description="With explain: what blocked the requested periods")
    ] = None

    @classmethod
    def from_domain(cls, answer: AvailabilityAnswer, query: AvailabilityQuery) -> AvailabilityResponse:
        """Times in the request's zone; only the list the request's `response_format` asked for."""
        tz, result = query.tz, answer.result
        slots = query.response_format is ResponseFormat.SLOTS
        return cls(
            slots=_slots_out(result.slots, tz) if slots else None,
            periods=None if slots else _slots_out(result.periods, tz),
            member_errors=[MemberError(email=e, problem=embedded_problem(error)) for e, error in answer.member_errors],
            member_sources=[
                MemberSource(email=e, source=source, as_of=as_of.astimezone(tz)) for e, source, as_of in answer.sources
            ],
            explanations=[_explanation_out(e, tz) for e in result.explanations] if query.explain else None,
        )


def _wall_time(value: str) -> time | None:
    return None if value == "24:00" else time.fromisoformat(value)


def _slots_out(slots: Sequence[Slot], tz: ZoneInfo) -> list[SlotOut]:
    """Slots in the request's zone; a slot is the tuple (start_us, end_us, members), read by unpacking.

    Back-to-back slots share an instant and usually a set of members: each instant becomes one
    datetime and each run of one set one list, shared by the slots that hold it. Under one offset
    (the usual case) an end is its start plus the slot's length, one timedelta per distinct length.
    """
    if not slots:
        return []
    local = ZonedInstants(tz, slots[0].start_us, max(end for _start, end, _members in slots))
    epoch = local.epoch
    made: dict[int, datetime] = {}
    lengths: dict[int, timedelta] = {}
    out: list[SlotOut] = []
    last: tuple[str, ...] | None = None
    names: list[str] = []
    for start_us, end_us, members in slots:
        start = made.get(start_us)
        if start is None:
            start = made[start_us] = local(start_us) if epoch is None else epoch + MICROSECOND * start_us
        end = made.get(end_us)
        if end is None:
            if epoch is None:
                end = local(end_us)
            else:
                length = lengths.get(end_us - start_us)
                if length is None:
                    length = lengths[end_us - start_us] = MICROSECOND * (end_us - start_us)
                end = start + length  # a fixed offset: wall-clock and absolute arithmetic agree
            made[end_us] = end
        if members is not last:
            last, names = members, list(members)
        out.append(SlotOut(start=start, end=end, members=names))
    return out


def _explanation_out(explanation: Explanation, tz: ZoneInfo) -> ExplanationOut:
    return ExplanationOut(
        start=explanation.start.astimezone(tz),
        end=explanation.end.astimezone(tz),
        blocked_by=[
            BlockerOut(
                reason=b.reason,
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
    operation_id="getAvailability",
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
        **problem_responses(body=True),
    },
)
async def availability(
    data: Annotated[AvailabilityRequest, BodyParam(examples=[Example(summary="Two groups", value=_EXAMPLE)])],
    caller: NamedDependency[Caller],
) -> AvailabilityResponse:
    """Design §6: busy sets (buffers dilate them), free sets, then slots or maximal periods.

    A member whose calendar could not be read is unavailable everywhere and listed in
    `member_errors` with the reason; the query still answers for everyone else.
    """
    query = data.to_domain(datetime.now(UTC))
    answer = await answer_availability(
        caller.schedules, caller.application.id, query, caller.deadline, mode=FRESHNESS[data.freshness]
    )
    return AvailabilityResponse.from_domain(answer, query)
