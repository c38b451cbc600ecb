"""Slot search (design §6.4): one sweep over the instants where someone's ability to start a slot
changes, then the start grid is read only where every group holds. Members are bits of an int, so a
set operation is one instruction.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from datetime import tzinfo

from calbroker.domain.intervals import Span
from calbroker.domain.zones import DAY_US, MINUTE_US, offset_spans

GroupMask = tuple[int, int]
"""A group as ``(bitmask of its members, how many of them must be free)``."""

_AS_FLAGS = bytes.maketrans(b"01", b"\x00\x01")


def member_flags(members: int) -> bytes:
    """One byte per member, 1 where its bit is set: the selector for ``itertools.compress``.

    Made by C-level string work: a member set can be hundreds long, and a Python loop over its bits
    would cost more than the sweep that found it.
    """
    return format(members, "b")[::-1].encode().translate(_AS_FLAGS)


def start_grid(tz: tzinfo, step_minutes: int, periods: Sequence[Span], duration_us: int) -> list[int]:
    """Every candidate start of a query, ascending: the whole-minute instants whose local minutes since
    midnight are a multiple of the step, and whose slot fits inside one of the (normal-form) periods.

    The grid restarts at every local midnight, so a step that does not divide 1440 minutes still
    starts each day at 00:00; a skipped-over hour has no candidates and a repeated hour has two sets.
    Built once per query from one ``range`` per local day, so nothing is scanned minute by minute;
    even the largest grid (62 days at a one-minute step, 89,000 instants) takes about 1.5 ms.
    """
    step = step_minutes * MINUTE_US
    starts: list[int] = []
    fits = [(lo, hi - duration_us + 1) for lo, hi in periods if hi - lo >= duration_us]
    if not fits:
        return starts
    for piece_start, piece_end, offset in offset_spans(tz, fits[0][0], fits[-1][1]):
        # An offset with seconds (only pre-1970 local mean time) is floored to the minute so that
        # candidates stay whole UTC minutes inside the right local minute.
        shift = offset - offset % MINUTE_US
        for lo, hi in fits:
            local_lo, local_hi = max(lo, piece_start) + shift, min(hi, piece_end) + shift
            midnight = local_lo - local_lo % DAY_US
            while midnight < local_hi:
                first = max(local_lo, midnight)
                first += -(first - midnight) % step
                starts.extend(range(first - shift, min(local_hi, midnight + DAY_US) - shift, step))
                midnight += DAY_US
    return starts


def start_toggles(free_by_member: Sequence[Sequence[Span]], duration_us: int) -> dict[int, int]:
    """For each instant where someone's ability to start a slot changes, the bitmask of who changes.

    A member can start at ``t`` iff ``[t, t + duration)`` lies in one free span ``[a, b)``, that is
    ``a <= t < b − duration + 1``. A member's free spans never touch, so these start spans do not
    either, and XOR-ing the toggles up to ``t`` replays who can start at ``t``. Keyed by instant so
    that colleagues who share an edge (the end of a shared working day) cost one step of the sweep.
    """
    toggles: dict[int, int] = {}
    get = toggles.get
    reach = duration_us - 1
    for member, spans in enumerate(free_by_member):
        bit = 1 << member
        for start, end in spans:
            stop = end - reach
            if start < stop:
                toggles[start] = get(start, 0) ^ bit
                toggles[stop] = get(stop, 0) ^ bit
    return toggles


def satisfied_segments(toggles: dict[int, int], groups: Sequence[GroupMask]) -> Iterator[tuple[int, int, int]]:
    """``(start, end, members)`` for each stretch where every group has enough members able to start."""
    able = 0
    since = 0
    for moment in sorted(toggles):
        if able:
            for mask, needed in groups:  # a loop, not all(): this runs once per distinct edge
                if (able & mask).bit_count() < needed:
                    break
            else:
                yield since, moment, able
        able ^= toggles[moment]
        since = moment


def slot_starts(segments: Iterable[tuple[int, int, int]], grid: Sequence[int], limit: int) -> list[tuple[int, int]]:
    """The first ``limit`` grid instants inside the segments, as ``(start, members)``."""
    found: list[tuple[int, int]] = []
    position, n_grid = 0, len(grid)
    for start, end, members in segments:
        position = bisect_left(grid, start, position)
        if position == n_grid:
            break
        if grid[position] >= end:
            continue  # most segments hold no candidate
        stop = min(bisect_left(grid, end, position), position + limit - len(found))
        found.extend([(moment, members) for moment in grid[position:stop]])
        if len(found) == limit:
            break
        position = stop
    return found


class StartReplay:
    """Who can start a slot at each of a rising series of instants, replaying the toggles once."""

    def __init__(self, toggles: dict[int, int]) -> None:
        self._toggles = toggles
        self._moments = sorted(toggles)
        self._next = 0
        self._able = 0

    def able_at(self, moment: int) -> int:
        """Bitmask of members free over a slot starting at ``moment`` (never earlier than the last ask)."""
        moments, position, able = self._moments, self._next, self._able
        while position < len(moments) and moments[position] <= moment:
            able ^= self._toggles[moments[position]]
            position += 1
        self._next, self._able = position, able
        return able
