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
    visit those instants in order. There, S shrinks as the free members' spans end, in order of
    end: each distinct end e gives the candidate ([start, e), members still free). Left-maximality
    holds while S keeps a member who just became free; S and every later S fail together once a
    group is short, since groups only lose members. Both stop the walk early.

    Free members are kept by distinct end, since colleagues share the end of a working day.
    """
    shift = len(free_by_member).bit_length()
    low = (1 << shift) - 1
    # A span shorter than the duration holds no period, so it can neither start one nor be in S.
    end_of = {
        (start << shift) | member: end
        for member, spans in enumerate(free_by_member)
        for start, end in spans
        if end - start >= duration_us
    }
    starts = sorted(end_of)

    found: list[tuple[int, int, int]] = []
    free_now = 0
    ends: list[int] = []  # distinct ends of the free members' spans, ascending
    leaving: dict[int, int] = {}  # end → the free members whose span ends there
    k, n_starts = 0, len(starts)
    while k < n_starts:
        moment = starts[k] >> shift
        gone = bisect_right(ends, moment)
        if gone:
            for end in ends[:gone]:
                free_now ^= leaving.pop(end)
            del ends[:gone]
        # The keys sort by time first, so everyone arriving now is one contiguous run.
        arrived = bisect_left(starts, (moment + 1) << shift, k)
        newcomers = 0
        for key in starts[k:arrived]:
            bit = 1 << (key & low)
            newcomers |= bit
            end = end_of[key]
            if end in leaving:
                leaving[end] |= bit
            else:
                leaving[end] = bit
                insort(ends, end)
        k = arrived
        free_now |= newcomers

        members = free_now
        position = bisect_left(ends, moment + duration_us)
        for end in ends[:position]:  # these end too soon to give a long enough period
            members ^= leaving[end]
        n_ends = len(ends)
        while position < n_ends and members & newcomers and _satisfies(members, groups):
            end = ends[position]
            found.append((moment, end, members))
            if len(found) >= limit:
                return found
            members ^= leaving[end]
            position += 1
    return found
