"""Engine compute time for 100 members × 30 days (design §10: single-digit milliseconds).

Run: ``.venv/bin/python bench/engine.py`` (``--runs N``). Inputs are built once, deterministically;
only ``find_availability`` is timed, so the figures exclude decoding upstream responses. A last line
times building the members' busy blocks from plain UTC datetimes, the domain's share of the API path.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
from datetime import UTC, datetime, time, timedelta
from time import perf_counter
from zoneinfo import ZoneInfo

from calbroker.domain import (
    AvailabilityQuery,
    BusyBlock,
    BusyStatus,
    Group,
    Interval,
    Member,
    ResponseFormat,
    Weekday,
    WeeklyPeriod,
    WorkingHours,
    find_availability,
)

ZONES = ("Europe/London", "Europe/Berlin", "America/New_York", "America/Chicago")
START = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday; both the US and EU DST changes fall inside
DAYS = 30
MEMBERS = 100
STATUSES = [BusyStatus.BUSY] * 12 + [BusyStatus.TENTATIVE] * 3 + [BusyStatus.FREE, BusyStatus.WORKING_ELSEWHERE]


def _member(rng: random.Random, index: int) -> Member:
    tz = ZoneInfo(ZONES[index % len(ZONES)])
    hours = WorkingHours(tuple(WeeklyPeriod(day, time(9), time(17)) for day in list(Weekday)[:5]), tz)
    busy: list[BusyBlock] = []
    for day in range(DAYS):
        local_day = (START + timedelta(days=day)).astimezone(tz).date()
        if local_day.weekday() >= 5:
            continue
        cursor = datetime(local_day.year, local_day.month, local_day.day, 8, tzinfo=tz)
        for _ in range(rng.randint(3, 6)):
            cursor += timedelta(minutes=rng.choice((0, 15, 30, 45, 60, 90)))
            length = timedelta(minutes=rng.choice((30, 30, 45, 60, 60, 90)))
            busy.append(BusyBlock(Interval(cursor, cursor + length), rng.choice(STATUSES)))
            cursor += length
    if index % 37 == 0:  # an out-of-office week now and then
        ooo = START + timedelta(days=7 + index % 14)
        busy.append(BusyBlock(Interval(ooo, ooo + timedelta(days=5)), BusyStatus.OOF))
    return Member(f"person{index:03d}@example.com", tuple(busy), None, hours, None)


def build_query(required: int, max_results: int, response_format: ResponseFormat) -> AvailabilityQuery:
    rng = random.Random(20250303)
    members = {member.email: member for member in (_member(rng, index) for index in range(MEMBERS))}
    emails = sorted(members)
    return AvailabilityQuery(
        groups=(Group(tuple(emails[:50]), required), Group(tuple(emails[50:]), required)),
        members=members,
        duration=timedelta(minutes=30),
        query_periods=(Interval(START, START + timedelta(days=DAYS)),),
        now=START - timedelta(hours=1),
        tz=ZoneInfo("Europe/London"),
        start_interval=timedelta(minutes=15),
        buffer_before=timedelta(minutes=5),
        buffer_after=timedelta(minutes=5),
        apply_working_hours=True,
        minimum_notice=timedelta(hours=2),
        maximum_advance=timedelta(days=60),
        response_format=response_format,
        max_results=max_results,
    )


def median_ms(query: AvailabilityQuery, runs: int) -> tuple[float, int]:
    timings = []
    for _ in range(runs):
        started = perf_counter()
        result = find_availability(query)
        timings.append((perf_counter() - started) * 1000)
    return statistics.median(timings), len(result.slots) + len(result.periods) + len(result.explanations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    query = build_query(required=3, max_results=512, response_format=ResponseFormat.SLOTS)
    blocks = sum(len(member.busy) for member in query.members.values())
    print(f"{MEMBERS} members × {DAYS} days, {blocks} busy blocks, duration 30 min, start interval 15 min,")
    print(f"working hours 09–17 in {', '.join(ZONES)}; median of {args.runs} runs")
    cases = [
        ("slots,   2 groups ≥3 of 50, max_results 512", query),
        (
            "slots,   2 groups ≥12 of 50, max_results 1024 (full sweep)",
            dataclasses.replace(query, groups=_require(query, 12), max_results=1024),
        ),
        (
            "slots,   2 groups ≥12 of 50, max_results 1024, explain",
            dataclasses.replace(query, groups=_require(query, 12), max_results=1024, explain=True),
        ),
        (
            "periods, 2 groups ≥3 of 50, max_results 512",
            dataclasses.replace(query, response_format=ResponseFormat.PERIODS),
        ),
        (
            "periods, 2 groups ≥12 of 50, max_results 1024",
            dataclasses.replace(
                query, groups=_require(query, 12), response_format=ResponseFormat.PERIODS, max_results=1024
            ),
        ),
    ]
    for label, case in cases:
        ms, count = median_ms(case, args.runs)
        per_member_day = ms * 1000 / (MEMBERS * DAYS)
        print(f"{label}: median {ms:.2f} ms ({per_member_day:.1f} µs per member-day, {count} results)")
    print(f"building the {blocks} busy blocks of {MEMBERS} members: median {building_ms(query, args.runs):.2f} ms")


def building_ms(query: AvailabilityQuery, runs: int) -> float:
    """Median time to build every member's ``BusyBlock(Interval(start, end), status)`` from UTC datetimes,
    as a provider does after parsing; garbage collection stays on, as it is in the service."""
    raw = [
        (member, [(block.interval.start, block.interval.end, block.status) for block in member.busy])
        for member in query.members.values()
    ]
    timings = []
    for _ in range(runs):
        started = perf_counter()
        for member, blocks in raw:
            busy = tuple(BusyBlock(Interval(start, end), status) for start, end, status in blocks)
            Member(member.email, busy, None, member.working_hours, None)
        timings.append((perf_counter() - started) * 1000)
    return statistics.median(timings)


def _require(query: AvailabilityQuery, required: int) -> tuple[Group, ...]:
    return tuple(Group(group.members, required) for group in query.groups)


if __name__ == "__main__":
    main()
