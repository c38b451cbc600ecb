"""Busy status as Exchange reports it, and which statuses make time unavailable (design §6.1)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from calbroker.domain.intervals import Interval, Span, intervals_of, merge_spans


class BusyStatus(StrEnum):
    """Graph's ``freeBusyStatus`` / EWS's ``LegacyFreeBusyStatus``; the values are our wire strings."""

    FREE = "free"
    TENTATIVE = "tentative"
    BUSY = "busy"
    OOF = "oof"
    WORKING_ELSEWHERE = "working_elsewhere"


_ALWAYS_BLOCKING = (BusyStatus.BUSY, BusyStatus.OOF)
_BLOCKING_WITH_TENTATIVE = (BusyStatus.BUSY, BusyStatus.OOF, BusyStatus.TENTATIVE)


@dataclass(frozen=True, slots=True)
class BusyBlock:
    """One stretch of a mailbox's schedule with the status its owner chose."""

    interval: Interval
    status: BusyStatus


def blocking_statuses(tentative_as_busy: bool) -> tuple[BusyStatus, ...]:
    """Statuses that make time unavailable; a tuple because ``in`` on it is an identity check."""
    return _BLOCKING_WITH_TENTATIVE if tentative_as_busy else _ALWAYS_BLOCKING


def blocking_spans(
    blocks: Iterable[BusyBlock], tentative_as_busy: bool, *, earlier: int = 0, later: int = 0
) -> list[Span]:
    """Unmerged spans ``[start − earlier, end + later)`` of the blocks that make time unavailable.

    Widening happens here, in the one pass over the blocks, because this is the engine's hot path.
    """
    statuses = blocking_statuses(tentative_as_busy)
    return [
        (block.interval.start_us - earlier, block.interval.end_us + later)
        for block in blocks
        if block.status in statuses
    ]


def blocking(blocks: Iterable[BusyBlock], tentative_as_busy: bool = True) -> tuple[Interval, ...]:
    """The busy set: ``free`` and ``working_elsewhere`` leave the person bookable, the rest do not.

    Tentative counts as busy by default because a tentative acceptance usually becomes a yes;
    callers who book over tentative meetings turn it off.
    """
    return intervals_of(merge_spans(blocking_spans(blocks, tentative_as_busy)))
