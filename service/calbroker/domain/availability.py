"""The availability engine (design §6): a query with its limits, and the slots or periods it yields.

Pure and synchronous: the caller fetches busy time and resolves working hours, passes ``now``, and
formats the UTC result into the request's time zone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import chain, compress
from zoneinfo import ZoneInfo

from calbroker.domain.busy import blocking_statuses
from calbroker.domain.errors import InvalidRequest, LimitExceeded
from calbroker.domain.explanations import Explanation, explain_rejections
from calbroker.domain.intervals import (
    Interval,
    Span,
    duration_us,
    from_us,
    intersect_spans,
    merge_spans,
    spans_of,
    to_us,
)
from calbroker.domain.participants import Group, Member, schedule_of
from calbroker.domain.periods import maximal_periods
from calbroker.domain.slots import (
    GroupMask,
    StartReplay,
    member_flags,
    satisfied_segments,
    slot_starts,
    start_grid,
    start_toggles,
)
from calbroker.domain.working_hours import WorkingHours, working_spans

MAX_GROUPS = 10
MAX_MEMBERS = 500
MAX_QUERY_PERIODS = 50
MAX_QUERY_SPAN = timedelta(days=62)
MAX_RESULTS = 1024
DEFAULT_MAX_RESULTS = 512
DEFAULT_START_INTERVAL_CAP = timedelta(minutes=60)

_UTC_ZONE = ZoneInfo("UTC")
_MINUTE = timedelta(minutes=1)
_DAY_MINUTES = 24 * 60


class ResponseFormat(StrEnum):
    """Fixed-length slots on the start grid, or maximal periods (§6.4 and §6.5)."""

    SLOTS = "slots"
    PERIODS = "periods"


class Slot(tuple[int, int, tuple[str, ...]]):
    """A bookable ``[start, end)`` and the members (sorted) free over all of it; immutable.

    Kept as epoch microseconds in a tuple, like a busy block: an answer holds hundreds of slots and
    the API writes them in the request's zone, so a UTC datetime per slot would be made only to be
    converted again. ``start`` and ``end`` make the datetimes when asked for.
    """

    __slots__ = ()

    def __new__(cls, start: datetime, end: datetime, members: tuple[str, ...]) -> Slot:
        if not start < end:
            raise InvalidRequest.field("end", "a slot must end after it starts")
        return tuple.__new__(cls, (to_us(start), to_us(end), members))

    @classmethod
    def at(cls, start_us: int, end_us: int, members: tuple[str, ...]) -> Slot:
        """A slot straight from epoch microseconds (``start_us < end_us``), as the engine finds it."""
        return tuple.__new__(cls, (start_us, end_us, members))

    @property
    def start_us(self) -> int:
        """Start, epoch microseconds."""
        return self[0]

    @property
    def end_us(self) -> int:
        """End (exclusive), epoch microseconds."""
        return self[1]

    @property
    def members(self) -> tuple[str, ...]:
        """Who is free over the whole slot, sorted."""
        return self[2]

    @property
    def start(self) -> datetime:
        """Start, UTC."""
        return from_us(self[0])

    @property
    def end(self) -> datetime:
        """End (exclusive), UTC."""
        return from_us(self[1])

    def __repr__(self) -> str:
        return f"Slot(start={self.start!r}, end={self.end!r}, members={self[2]!r})"


def _whole_minutes(value: timedelta, field: str, *, at_least: int = 1) -> int:
    if value % _MINUTE or value < at_least * _MINUTE:
        raise InvalidRequest.field(field, f"must be a whole number of minutes, at least {at_least}")
    return value // _MINUTE


@dataclass(frozen=True, slots=True, kw_only=True)
class AvailabilityQuery:
    """One availability request in domain terms, validated against the documented limits (§6).

    ``now`` is an input so that results are reproducible; ``explain`` adds explanations for the
    first ``max_results`` rejected candidate starts, in time order.
    """

    groups: tuple[Group, ...]
    members: Mapping[str, Member]
    duration: timedelta
    query_periods: tuple[Interval, ...]
    now: datetime
    tz: ZoneInfo = _UTC_ZONE
    start_interval: timedelta | None = None
    buffer_before: timedelta = timedelta(0)
    buffer_after: timedelta = timedelta(0)
    apply_working_hours: bool = False
    minimum_notice: timedelta = timedelta(0)
    maximum_advance: timedelta | None = None
    tentative_as_busy: bool = True
    response_format: ResponseFormat = ResponseFormat.SLOTS
    max_results: int = DEFAULT_MAX_RESULTS
    explain: bool = False

    def __post_init__(self) -> None:
        if not self.groups:
            raise InvalidRequest.field("participants", "at least one group is needed")
        if len(self.groups) > MAX_GROUPS:
            raise LimitExceeded(
                field="participants",
                limit=MAX_GROUPS,
                actual=len(self.groups),
                message=f"at most {MAX_GROUPS} participant groups",
            )
        emails = self.emails
        if len(emails) > MAX_MEMBERS:
            raise LimitExceeded(
                field="participants",
                limit=MAX_MEMBERS,
                actual=len(emails),
                message=f"at most {MAX_MEMBERS} distinct members",
            )
        for email in emails:
            member = self.members.get(email)
            if member is None or member.email != email:
                raise InvalidRequest.field("participants.members", f"no schedule was supplied for {email}")
        _whole_minutes(self.duration, "duration")
        if self.start_interval is not None and _whole_minutes(self.start_interval, "start_interval") > (_DAY_MINUTES):
            raise InvalidRequest.field("start_interval", "must be at most a day")
        if not self.query_periods:
            raise InvalidRequest.field("query_periods", "at least one query period is needed")
        if len(self.query_periods) > MAX_QUERY_PERIODS:
            raise LimitExceeded(
                field="query_periods",
                limit=MAX_QUERY_PERIODS,
                actual=len(self.query_periods),
                message=f"at most {MAX_QUERY_PERIODS} query periods",
            )
        span = max(period.end for period in self.query_periods) - min(p.start for p in self.query_periods)
        if span > MAX_QUERY_SPAN:
            raise LimitExceeded(
                field="query_periods",
                limit=f"{MAX_QUERY_SPAN.days} days",
                actual=str(span),
                message=f"query periods may span at most {MAX_QUERY_SPAN.days} days",
            )
        if self.now.utcoffset() is None:
            raise InvalidRequest.field("now", "needs a UTC offset")
        for value, field in (
            (self.buffer_before, "buffer.before"),
            (self.buffer_after, "buffer.after"),
            (self.minimum_notice, "minimum_notice"),
        ):
            if value < timedelta(0):
                raise InvalidRequest.field(field, "must not be negative")
        if self.maximum_advance is not None and self.maximum_advance <= self.minimum_notice:
            raise InvalidRequest.field("maximum_advance", "must be later than minimum_notice")
        if self.max_results < 1:
            raise InvalidRequest.field("max_results", "must be at least 1")
        if self.max_results > MAX_RESULTS:
            raise LimitExceeded(
                field="max_results",
                limit=MAX_RESULTS,
                actual=self.max_results,
                message=f"at most {MAX_RESULTS} results",
            )

    @property
    def emails(self) -> tuple[str, ...]:
        """Every member of every group once, sorted: the order slots list them in."""
        return tuple(sorted(set(chain.from_iterable(group.members for group in self.groups))))

    @property
    def busy_window(self) -> Interval:
        """Where busy time matters: the query periods widened by the buffers that dilate busy blocks."""
        return Interval(
            min(p.start for p in self.query_periods) - self.buffer_before,
            max(p.end for p in self.query_periods) + self.buffer_after,
        )

    @property
    def step(self) -> timedelta:
        """The start interval in effect: as asked, else the duration capped at an hour."""
        if self.start_interval is not None:
            return self.start_interval
        return min(self.duration, DEFAULT_START_INTERVAL_CAP)


@dataclass(frozen=True, slots=True)
class AvailabilityResult:
    """Only the list the query's ``response_format`` asked for is filled."""

    slots: tuple[Slot, ...] = ()
    periods: tuple[Slot, ...] = ()
    explanations: tuple[Explanation, ...] = ()


def find_availability(query: AvailabilityQuery, members: Mapping[str, Member] | None = None) -> AvailabilityResult:
    """Slots or periods where every group has enough free members, per design §6.

    `members`, when given, stands in for the query's own (same emails): the read path fills in the
    busy time a request cannot carry without building and validating the whole query again.

    Cost is linear in the busy blocks plus one sort of the instants where someone's free time
    changes; the start grid is only read inside stretches where every group already holds.
    Everything runs on integer microseconds; datetimes are made only for what is returned.
    """
    if members is None:
        members = query.members
    emails = query.emails
    position = {email: index for index, email in enumerate(emails)}
    groups: list[GroupMask] = [
        (sum(1 << position[email] for email in group.members), group.needed) for group in query.groups
    ]
    duration = duration_us(query.duration)
    requested = merge_spans(spans_of(query.query_periods))
    window_lo, window_hi = requested[0][0], requested[-1][1]
    now = to_us(query.now)
    earliest = now + duration_us(query.minimum_notice)
    latest = None if query.maximum_advance is None else now + duration_us(query.maximum_advance)
    upper = window_hi if latest is None else latest
    candidate = intersect_spans(requested, [(earliest, upper)]) if earliest < upper else []

    # Colleagues usually share working hours: expand and intersect them once per distinct value.
    # Members often share one object, and an identity lookup is much cheaper than hashing the value.
    working_by_hours: dict[WorkingHours, tuple[list[Span], list[Span]]] = {}
    working_by_id: dict[int, tuple[list[Span], list[Span]]] = {}

    def working_of(member: Member) -> tuple[list[Span] | None, list[Span]]:
        hours = member.working_hours
        if not query.apply_working_hours or hours is None:
            return None, candidate
        shared = working_by_id.get(id(hours))
        if shared is None:
            shared = working_by_hours.get(hours)
            if shared is None:
                working = working_spans(hours, window_lo, window_hi)
                shared = working_by_hours[hours] = (working, intersect_spans(candidate, working))
            working_by_id[id(hours)] = shared
        return shared

    buffer_before, buffer_after = duration_us(query.buffer_before), duration_us(query.buffer_after)
    schedules = []
    for email in emails:
        member = members[email]
        working, within = working_of(member)
        schedules.append(
            schedule_of(
                member,
                within,
                working,
                tentative_as_busy=query.tentative_as_busy,
                buffer_before_us=buffer_before,
                buffer_after_us=buffer_after,
            )
        )
    names = _MemberNames(emails)

    slots: tuple[Slot, ...] = ()
    periods: tuple[Slot, ...] = ()
    explanations: tuple[Explanation, ...] = ()
    if query.response_format is ResponseFormat.PERIODS:
        found = maximal_periods([s.free for s in schedules], groups, duration, query.max_results)
        periods = _periods(found, names)
    if query.response_format is ResponseFormat.SLOTS or query.explain:
        grid = start_grid(query.tz, query.step // _MINUTE, requested, duration)
        toggles = start_toggles([schedule.free for schedule in schedules], duration)
        if query.response_format is ResponseFormat.SLOTS:
            found_starts = slot_starts(satisfied_segments(toggles, groups), grid, query.max_results)
            slots = _slots(found_starts, query.duration, names)
        if query.explain:
            explanations = tuple(
                explain_rejections(
                    grid,
                    StartReplay(toggles),
                    schedules,
                    groups,
                    duration_us=duration,
                    notice=(earliest, latest),
                    statuses=blocking_statuses(query.tentative_as_busy),
                    buffer_before_us=buffer_before,
                    buffer_after_us=buffer_after,
                    limit=query.max_results,
                )
            )
    return AvailabilityResult(slots, periods, explanations)


class _MemberNames:
    """Bitmask → sorted emails, decoded once per distinct set (consecutive slots often share one)."""

    def __init__(self, emails: tuple[str, ...]) -> None:
        self._emails = emails
        self.decoded: dict[int, tuple[str, ...]] = {}
        """Every set decoded so far: the per-slot loops read it first, sparing a call."""

    def __call__(self, members: int) -> tuple[str, ...]:
        decoded = self.decoded.get(members)
        if decoded is None:
            decoded = self.decoded[members] = tuple(compress(self._emails, member_flags(members)))
        return decoded


# An answer holds up to 1,024 slots: each is made by tuple.__new__ in the loop (what Slot.at does),
# and its member set read from the decoded ones, since a call per slot would cost as much again.


def _slots(found: Iterable[tuple[int, int]], duration: timedelta, names: _MemberNames) -> tuple[Slot, ...]:
    length = duration_us(duration)
    new, decoded = tuple.__new__, names.decoded
    return tuple(
        [new(Slot, (moment, moment + length, decoded.get(members) or names(members))) for moment, members in found]
    )


def _periods(found: Iterable[tuple[int, int, int]], names: _MemberNames) -> tuple[Slot, ...]:
    new, decoded = tuple.__new__, names.decoded
    return tuple([new(Slot, (start, end, decoded.get(members) or names(members))) for start, end, members in found])
