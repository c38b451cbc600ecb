"""Maximal periods (design §6.5): each (P, S) where P is a maximal stretch over which exactly the
members S are all free, P is at least the duration long, and S satisfies every group.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence

from calbroker.domain.intervals import Span
from calbroker.domain.slots import GroupMask


def _satisfies(members: int, groups: Sequence[GroupMask]) -> bool:
    for mask, needed in groups:  # noqa: SIM110 - all() over a generator is twice as slow here
        if (members & mask).bit_count() < needed:
            return False
    return True


def maximal_periods(
    free_by_member: Sequence[Sequence[Span]],
    groups: Sequence[GroupMask],
    duration_us: int,
    limit: int,
) -> list[tuple[int, int, int]]:
    """The first ``limit`` pairs as ``(start, end, members bitmask)``, sorted by (start, end).

    A pair can only start where some member of S becomes free (else P would extend left), so we
    visit those instants in order. There, S shrinks as the active members' free spans end, ordered
    by end: each distinct end e gives the candidate ([start, e), members still free). Left-maximality
    holds while S keeps a member who just became free; S and every later S fail together once a
    group is short, since groups only lose members. Both stop the walk early.
    """
    origin = min((spans[0][0] for spans in free_by_member if spans), default=None)
    if origin is None:
        return []
    shift = len(free_by_member).bit_length()
    low = (1 << shift) - 1
    bits = [1 << member for member in range(len(free_by_member))]
    starts: list[int] = []
    end_of: dict[int, int] = {}
    for member, spans in enumerate(free_by_member):
        for start, end in spans:
            key = ((start - origin) << shift) | member
            starts.append(key)
            end_of[key] = ((end - origin) << shift) | member
    starts.sort()

    found: list[tuple[int, int, int]] = []
    free_now = 0
    by_end: list[int] = []  # free members as (end << shift) | member, soonest end first
    k, n_starts = 0, len(starts)
    while k < n_starts:
        moment = starts[k] >> shift
        # Bisect, then loop over a slice: the keys sort by time first, so every run is contiguous.
        gone = bisect_right(by_end, (moment << shift) | low)
        for key in by_end[:gone]:
            free_now ^= bits[key & low]
        del by_end[:gone]
        arrived = bisect_left(starts, (moment + 1) << shift, k)
        newcomers = 0
        for key in starts[k:arrived]:
            newcomers |= bits[key & low]
            insort(by_end, end_of[key])
        k = arrived
        free_now |= newcomers

        members = free_now
        pos = bisect_left(by_end, (moment + duration_us) << shift)
        for key in by_end[:pos]:  # ends too soon to give a long enough period
            members ^= bits[key & low]
        n_free = len(by_end)
        while pos < n_free and members & newcomers and _satisfies(members, groups):
            end = by_end[pos] >> shift
            found.append((moment + origin, end + origin, members))
            if len(found) >= limit:
                return found
            leaving = bisect_left(by_end, (end + 1) << shift, pos)
            for key in by_end[pos:leaving]:
                members ^= bits[key & low]
            pos = leaving
    return found
