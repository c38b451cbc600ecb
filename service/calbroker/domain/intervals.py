"""Half-open UTC intervals and the set algebra over them (normalise, union, intersect, subtract, dilate).

Sets of intervals are kept in normal form: sorted, with overlapping or touching intervals merged.
The engine works on the same algebra over ``Span`` pairs of epoch microseconds, which are exact and fast.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain, pairwise

from calbroker.domain.errors import InvalidRequest

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
_MINUTE = timedelta(minutes=1)

Span = tuple[int, int]
"""``[start, end)`` in microseconds since the Unix epoch; always ``start < end``."""

_FAR_FUTURE = 1 << 62
_set_field = object.__setattr__  # how a frozen dataclass sets its own fields


FIRST_YEAR = 1970
LAST_YEAR = 2099
"""Times calbroker accepts are written with a year in FIRST_YEAR..LAST_YEAR (in their own offset).

Far enough from `datetime`'s limits (years 1 and 9999) that no offset, buffer or advance limit can
overflow, and wider than any calendar Exchange is asked about."""


def supported(moment: datetime, field: str) -> datetime:
    """The time, or InvalidRequest when its year lies outside the supported range.

    Checked on the year as written, before any conversion: `0001-01-01T00:00:00+14:00` would
    overflow on its way to UTC.
    """
    if not FIRST_YEAR <= moment.year <= LAST_YEAR:
        raise InvalidRequest.field(field, f"must be in the years {FIRST_YEAR}–{LAST_YEAR} (got {moment.year})")
    return moment


def to_us(moment: datetime) -> int:
    """Exact epoch microseconds of an aware datetime (floats would lose microseconds after 2255)."""
    return (moment - EPOCH) // MICROSECOND


def from_us(us: int) -> datetime:
    """The UTC datetime of epoch microseconds ``us`` (``timedelta * int`` is exact and half the cost of
    ``timedelta(microseconds=us)``, which parses keywords)."""
    return EPOCH + MICROSECOND * us


def duration_us(delta: timedelta) -> int:
    """A timedelta in whole microseconds, the unit every span uses."""
    return delta // MICROSECOND


@dataclass(frozen=True, slots=True, init=False)
class Interval:
    """The instants ``start <= t < end``; half-open so back-to-back meetings do not overlap.

    Any time zone goes in and UTC is stored, so equal instants compare equal. ``start_us`` and
    ``end_us`` are computed once here so that sweeps compare integers, not datetimes.
    """

    start: datetime
    end: datetime
    start_us: int = field(init=False, repr=False, compare=False)
    end_us: int = field(init=False, repr=False, compare=False)

    def __init__(self, start: datetime, end: datetime) -> None:
        # Written out rather than generated plus __post_init__: providers build one Interval per busy
        # block (ten thousand for a large query), already in UTC, and this path does each step once.
        if start.tzinfo is not UTC:
            if start.utcoffset() is None:
                raise InvalidRequest.field("start", "needs a UTC offset (a naive time is ambiguous)")
            start = start.astimezone(UTC)
        if end.tzinfo is not UTC:
            if end.utcoffset() is None:
                raise InvalidRequest.field("end", "needs a UTC offset (a naive time is ambiguous)")
            end = end.astimezone(UTC)
        start_us = (start - EPOCH) // MICROSECOND
        end_us = (end - EPOCH) // MICROSECOND
        if start_us >= end_us:
            raise InvalidRequest.field("end", f"must be after start ({start.isoformat()})")
        _set_field(self, "start", start)
        _set_field(self, "end", end)
        _set_field(self, "start_us", start_us)
        _set_field(self, "end_us", end_us)

    @classmethod
    def from_span(cls, span: Span) -> Interval:
        """Back from the engine's integer form."""
        return cls(from_us(span[0]), from_us(span[1]))

    @property
    def span(self) -> Span:
        return (self.start_us, self.end_us)

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def overlaps(self, other: Interval) -> bool:
        """Share at least one instant (touching intervals do not)."""
        return self.start_us < other.end_us and other.start_us < self.end_us

    def split(self, longest: timedelta) -> list[Interval]:
        """This interval as the fewest back-to-back parts no longer than `longest`.

        Upstream calls take a bounded window, and each part is one call: the parts are equal, so
        no call is a sliver, and their length is rounded up to whole minutes where that still fits
        in `longest` (upstream formats write times to the second at best); only the last part may
        then come out shorter.
        """
        if longest <= timedelta(0):
            raise ValueError(f"longest must be positive, got {longest}")
        count = -(-self.duration // longest)
        if count <= 1:
            return [self]
        step = -(-self.duration // count)
        whole_minutes = -(-step // _MINUTE) * _MINUTE
        if whole_minutes <= longest:
            step = whole_minutes
        bounds = [self.start + step * i for i in range(count)] + [self.end]
        return [Interval(lo, hi) for lo, hi in pairwise(bounds)]


# Integer span algebra. Every function takes and returns normal form unless it says otherwise.


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Normal form of spans in any order: sorted, overlapping or touching ones fused."""
    ordered = sorted(spans)
    if not ordered:
        return ordered
    merged: list[Span] = []
    lo, hi = ordered[0]
    for start, end in ordered:
        if start > hi:
            merged.append((lo, hi))
            lo, hi = start, end
        elif end > hi:
            hi = end
    merged.append((lo, hi))
    return merged


def intersect_spans(left: Sequence[Span], right: Sequence[Span]) -> list[Span]:
    """The instants in both; one linear merge."""
    out: list[Span] = []
    i = j = 0
    n_left, n_right = len(left), len(right)
    while i < n_left and j < n_right:
        a0, a1 = left[i]
        b0, b1 = right[j]
        lo = a0 if a0 > b0 else b0
        hi = a1 if a1 < b1 else b1
        if lo < hi:
            out.append((lo, hi))
        if a1 < b1:
            i += 1
        else:
            j += 1
    return out


def subtract_spans(minuend: Sequence[Span], cuts: Sequence[Span]) -> list[Span]:
    """The instants of ``minuend`` in none of ``cuts``, in one pass over each.

    ``cuts`` need only be sorted by start, overlaps allowed, so busy time needs no merge first. The
    cursor is the furthest any cut has reached, which carries a long cut over into later spans.
    """
    out: list[Span] = []
    j, n_cuts = 0, len(cuts)
    reach = minuend[0][0] if minuend else 0
    for start, end in minuend:
        cursor = start if start > reach else reach
        while j < n_cuts:
            cut_start, cut_end = cuts[j]
            if cut_start >= end:
                break
            if cut_start > cursor:
                out.append((cursor, cut_start))
            if cut_end > cursor:  # noqa: PLR1730 - the hot loop of the engine; max() would cost a call
                cursor = cut_end
            j += 1
        if cursor < end:
            out.append((cursor, end))
        reach = cursor
    return out


def dilate_spans(spans: Iterable[Span], before: int, after: int) -> list[Span]:
    """Each span widened to ``[start - before, end + after)``; spans may come unsorted."""
    return merge_spans((start - before, end + after) for start, end in spans)


def covers(spans: Sequence[Span], start: int, end: int) -> bool:
    """Whether one span holds all of ``[start, end)`` (enough, since normal form never splits time)."""
    k = bisect_right(spans, (start, _FAR_FUTURE)) - 1
    return k >= 0 and spans[k][1] >= end


def spans_of(intervals: Iterable[Interval]) -> list[Span]:
    return [(interval.start_us, interval.end_us) for interval in intervals]


def intervals_of(spans: Iterable[Span]) -> tuple[Interval, ...]:
    return tuple(Interval.from_span(span) for span in spans)


# The same algebra over Interval values, for callers outside the engine.


def normalize(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    """Normal form, so that equal sets of instants compare equal and sweeps can run linearly."""
    return intervals_of(merge_spans(spans_of(intervals)))


def union(*collections: Iterable[Interval]) -> tuple[Interval, ...]:
    """Instants in any collection."""
    return intervals_of(merge_spans(spans_of(chain.from_iterable(collections))))


def intersect(first: Iterable[Interval], *others: Iterable[Interval]) -> tuple[Interval, ...]:
    """Instants in every collection (query periods ∩ available periods ∩ working hours …)."""
    result = merge_spans(spans_of(first))
    for other in others:
        result = intersect_spans(result, merge_spans(spans_of(other)))
    return intervals_of(result)


def subtract(minuend: Iterable[Interval], subtrahend: Iterable[Interval]) -> tuple[Interval, ...]:
    """Instants of ``minuend`` outside ``subtrahend``: free time is candidate time minus busy time."""
    return intervals_of(subtract_spans(merge_spans(spans_of(minuend)), merge_spans(spans_of(subtrahend))))


def dilate(intervals: Iterable[Interval], before: timedelta, after: timedelta) -> tuple[Interval, ...]:
    """Each ``[a, b)`` widened to ``[a - before, b + after)``: how meeting buffers grow busy time.

    Negative amounts are refused because shrinking could turn an interval inside out.
    """
    if before < timedelta(0):
        raise InvalidRequest.field("before", "must not be negative")
    if after < timedelta(0):
        raise InvalidRequest.field("after", "must not be negative")
    return intervals_of(dilate_spans(spans_of(intervals), duration_us(before), duration_us(after)))


def contains(intervals: Iterable[Interval], candidate: Interval) -> bool:
    """Whether every instant of ``candidate`` lies in the union of ``intervals``."""
    return covers(merge_spans(spans_of(intervals)), candidate.start_us, candidate.end_us)


def overlapping(intervals: Iterable[Interval], window: Interval) -> tuple[Interval, ...]:
    """The given intervals (not merged) that share time with ``window``, by start: the conflicts to name."""
    return tuple(
        sorted(
            (interval for interval in intervals if interval.overlaps(window)),
            key=lambda interval: (interval.start_us, interval.end_us),
        )
    )
