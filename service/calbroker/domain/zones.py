"""UTC-offset pieces of a time zone over a span, so wall-clock rules become exact UTC intervals.

zoneinfo publishes offsets, not transitions: we probe the offset every few hours and bisect to the
second wherever it changes (tz transitions fall on whole seconds), a calendar year of a zone at a
time, kept for the life of the process: requests ask about a few zones over the same years.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from functools import lru_cache

from calbroker.domain.intervals import MICROSECOND

OffsetSpan = tuple[int, int, int]
"""``(start_us, end_us, offset_us)``: over ``[start, end)`` local wall time is UTC + offset."""

SECOND_US = 1_000_000
MINUTE_US = 60 * SECOND_US
DAY_US = 24 * 60 * MINUTE_US

# No zone in the tz database changes its offset and changes it back within 12 hours, so probing at
# this step finds every transition; two transitions in one step are still found one by one.
_PROBE_US = 12 * 60 * MINUTE_US


def utc_offset_us(tz: tzinfo, moment_us: int) -> int:
    """Offset of wall time from UTC at an instant, in microseconds.

    Asked at the whole second: offsets change on whole seconds, so the answer is the same, and
    ``fromtimestamp`` with a zone is the cheapest way to it (it runs ninety times per zone per month).
    """
    offset = datetime.fromtimestamp(moment_us // SECOND_US, tz).utcoffset()
    assert offset is not None  # a datetime made with a tzinfo is aware
    return offset // MICROSECOND


def _first_second_with_other_offset(tz: tzinfo, offset: int, before_us: int, at_or_after_us: int) -> int:
    """The transition instant in ``(before, at_or_after]``: offset there differs from ``offset``."""
    lo = before_us // SECOND_US
    hi = at_or_after_us // SECOND_US
    # Invariant: the offset at second lo is ``offset``, at second hi it is not.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if utc_offset_us(tz, mid * SECOND_US) == offset:
            lo = mid
        else:
            hi = mid
    return hi * SECOND_US


def offset_spans(tz: tzinfo, start_us: int, end_us: int) -> list[OffsetSpan]:
    """Pieces of constant UTC offset that tile ``[start, end)`` exactly, in order."""
    pieces: list[OffsetSpan] = []
    for year in range(_year_of(start_us), _year_of(end_us - 1) + 1):
        for piece_start, piece_end, offset in _year_spans(tz, year):
            low, high = max(piece_start, start_us), min(piece_end, end_us)
            if low >= high:
                continue
            if pieces and pieces[-1][2] == offset:  # one offset across new year
                pieces[-1] = (pieces[-1][0], high, offset)
            else:
                pieces.append((low, high, offset))
    return pieces


def _year_of(moment_us: int) -> int:
    return datetime.fromtimestamp(moment_us // SECOND_US, UTC).year


@lru_cache(maxsize=4096)
def _year_spans(tz: tzinfo, year: int) -> tuple[OffsetSpan, ...]:
    """The pieces of one UTC calendar year in `tz`: probed once, then every request reads them."""
    start_us = int(datetime(year, 1, 1, tzinfo=UTC).timestamp()) * SECOND_US
    end_us = int(datetime(year + 1, 1, 1, tzinfo=UTC).timestamp()) * SECOND_US
    return tuple(_probe(tz, start_us, end_us))


def _probe(tz: tzinfo, start_us: int, end_us: int) -> list[OffsetSpan]:
    pieces: list[OffsetSpan] = []
    piece_start = start_us
    offset = utc_offset_us(tz, start_us)
    probed = start_us
    while probed < end_us - 1:
        probe = min(probed + _PROBE_US, end_us - 1)
        probe_offset = utc_offset_us(tz, probe)
        while probe_offset != offset:
            transition = _first_second_with_other_offset(tz, offset, probed, probe)
            pieces.append((piece_start, transition, offset))
            piece_start, probed = transition, transition
            offset = utc_offset_us(tz, transition)
        probed = probe
    pieces.append((piece_start, end_us, offset))
    return pieces
