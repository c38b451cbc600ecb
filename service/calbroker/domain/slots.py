"""Slot search (design §6.4): one sweep over every member's possible start times, then the start grid
is read only where every group holds. Members are bits of an int, so a set operation is one instruction.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from datetime import tzinfo

from calbroker.domain.intervals import Span
from calbroker.domain.zones import DAY_US, MINUTE_US, offset_spans

GroupMask = tuple[int, int]
"""A group as ``(bitmask of its members, how many of them must be free)``."""


class StartGrid:
    """Candidate starts: whole-minute instants whose local minutes since midnight are a multiple of step.

    The grid restarts at every local midnight, so a step that does not divide 1440 minutes still
    starts each day at 00:00; a skipped-over hour has no candidates and a repeated hour has two sets.
    Within a piece of constant UTC offset the next candidate is plain arithmetic, so nothing is scanned.
    """

    def __init__(self, tz: tzinfo, step_minutes: int, start_us: int, end_us: int) -> None:
        # An offset with seconds (only pre-1970 local mean time) is floored to the minute so that
        # candidates stay whole UTC minutes inside the right local minute.
        self._pieces = [
            (piece_start, piece_end, offset - offset % MINUTE_US)
            for piece_start, piece_end, offset in offset_spans(tz, start_us, end_us)
        ]
        self._piece_starts = [piece[0] for piece in self._pieces]
        self._step = step_minutes * MINUTE_US
        self._restarts_daily = DAY_US % self._step != 0

    def next_start(self, moment: int) -> int | None:
        """The first candidate at or after ``moment``; None past the end of the grid."""
        step = self._step
        for index in range(max(bisect_right(self._piece_starts, moment) - 1, 0), len(self._pieces)):
            piece_start, piece_end, shift = self._pieces[index]
            local = max(moment, piece_start) + shift
            if self._restarts_daily:
                midnight = local - local % DAY_US
                local = min(midnight + -(-(local - midnight) // step) * step, midnight + DAY_US)
            else:
                local += -local % step
            if local - shift < piece_end:
                return local - shift
        return None

    def starts(self, lo: int, hi: int) -> Iterator[int]:
        """Candidates in ``[lo, hi)``, ascending."""
        moment = self.next_start(lo)
        while moment is not None and moment < hi:
            yield moment
            moment = self.next_start(moment + 1)


def valid_starts(free: Sequence[Span], duration_us: int) -> list[Span]:
    """Where a slot of ``duration`` may start inside free time: ``[a, b − duration]`` as a half-open span.

    Spans stay separated (free spans are separated by busy time), which the sweep relies on.
    """
    return [(start, end - duration_us + 1) for start, end in free if end - start >= duration_us]


def _edge_keys(starts_by_member: Sequence[Sequence[Span]]) -> tuple[int, int, list[int]]:
    """``(origin, shift, keys)``: every span edge as ``((time − origin) << shift) | member``, sorted.

    One int per edge sorts fast and carries its member; toggling that member's bit at each edge
    replays who can start, since a member's spans never touch.
    """
    origin = min((spans[0][0] for spans in starts_by_member if spans), default=0)
    shift = len(starts_by_member).bit_length()
    keys = [
        ((edge - origin) << shift) | member
        for member, spans in enumerate(starts_by_member)
        for span in spans
        for edge in span
    ]
    keys.sort()
    return origin, shift, keys


def satisfied_segments(
    starts_by_member: Sequence[Sequence[Span]], groups: Sequence[GroupMask]
) -> Iterator[tuple[int, int, int]]:
    """``(start, end, members)`` for each stretch where every group has enough members able to start."""
    origin, shift, edges = _edge_keys(starts_by_member)
    low = (1 << shift) - 1
    bits = [1 << member for member in range(len(starts_by_member))]
    able = 0
    current = -1
    for key in edges:
        moment = key >> shift
        if moment != current:
            if able:
                for mask, needed in groups:  # a loop, not all(): this runs once per distinct edge
                    if (able & mask).bit_count() < needed:
                        break
                else:
                    yield (current + origin, moment + origin, able)
            current = moment
        able ^= bits[key & low]


class StartReplay:
    """Who can start a slot at each of a rising series of instants, replaying the edges once."""

    def __init__(self, starts_by_member: Sequence[Sequence[Span]]) -> None:
        self._origin, self._shift, self._edges = _edge_keys(starts_by_member)
        self._bits = [1 << member for member in range(len(starts_by_member))]
        self._next = 0
        self._able = 0

    def able_at(self, moment: int) -> int:
        """Bitmask of members free over a slot starting at ``moment`` (never earlier than the last ask)."""
        low = (1 << self._shift) - 1
        until = ((moment - self._origin + 1) << self._shift) - 1  # every edge at or before moment
        edges, position = self._edges, self._next
        while position < len(edges) and edges[position] <= until:
            self._able ^= self._bits[edges[position] & low]
            position += 1
        self._next = position
        return self._able
