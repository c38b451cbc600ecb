"""Engine compute time for 100 members × 30 days (design §10: single-digit milliseconds), and what
the API path spends before the engine runs.

Run: ``.venv/bin/python bench/engine.py`` (``--runs N``). Inputs are built once, deterministically;
``find_availability`` is timed alone. The last lines time turning the same members' busy time into
busy blocks the way the service does: from a Graph getSchedule answer (JSON decoding, then
datetimes and blocks, reported apart), and from busy-cache rows as PostgreSQL returns them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from calbroker.providers.graph import read_schedules
from calbroker.providers.graph.wire import decode, schedule_decoder

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
    answer, mailboxes = graph_answer(query)
    decode_only = _median(lambda: decode(answer, schedule_decoder), args.runs)
    whole = _median(lambda: read_schedules(answer, mailboxes), args.runs)
    print(
        f"Graph getSchedule answer ({len(answer) // 1024} KiB) → the {blocks} busy blocks: median {whole:.2f} ms "
        f"= JSON decoding {decode_only:.2f} ms + datetimes and blocks {whole - decode_only:.2f} ms"
    )
    rows = cache_rows(query)
    from_rows = _median(lambda: blocks_from_rows(rows), args.runs)
    print(f"busy-cache rows → the {blocks} busy blocks: median {from_rows:.2f} ms")


def graph_answer(query: AvailabilityQuery) -> tuple[bytes, list[str]]:
    """The members' busy time as Graph answers getSchedule (UTC, seven fractional digits, subjects)."""

    def when(moment: datetime) -> dict[str, str]:
        return {"dateTime": moment.strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": "UTC"}

    value = [
        {
            "scheduleId": member.email,
            "availabilityView": "",
            "scheduleItems": [
                {
                    "isPrivate": False,
                    "status": "workingElsewhere" if b.status is BusyStatus.WORKING_ELSEWHERE else b.status.value,
                    "subject": "Project sync",
                    "location": "Room 1",
                    "isMeeting": True,
                    "isRecurring": False,
                    "isException": False,
                    "isReminderSet": True,
                    "start": when(b.interval.start),
                    "end": when(b.interval.end),
                }
                for b in member.busy
            ],
            "workingHours": {
                "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
                "startTime": "09:00:00.0000000",
                "endTime": "17:00:00.0000000",
                "timeZone": {"name": "GMT Standard Time"},
            },
        }
        for member in query.members.values()
    ]
    return json.dumps({"value": value}).encode(), list(query.members)


def cache_rows(query: AvailabilityQuery) -> list[tuple[list[int], list[int], list[str]]]:
    """The members' busy time as the busy cache's one query returns it (epoch microseconds)."""
    return [
        ([b.start_us for b in member.busy], [b.end_us for b in member.busy], [b.status.value for b in member.busy])
        for member in query.members.values()
    ]


def blocks_from_rows(rows: list[tuple[list[int], list[int], list[str]]]) -> None:
    """What `store.busy_cache.read_application` does with those arrays."""
    statuses = {status.value: status for status in BusyStatus}
    seen: dict[tuple[int, int, str], BusyBlock] = {}
    for starts, ends, names in rows:
        busy = []
        for key in zip(starts, ends, names, strict=True):
            block = seen.get(key)
            if block is None:
                block = seen[key] = BusyBlock.at(key[0], key[1], statuses[key[2]])
            busy.append(block)
        tuple(busy)


def _median(run: object, runs: int) -> float:
    timings = []
    for _ in range(runs):
        started = perf_counter()
        run()  # type: ignore[operator]
        timings.append((perf_counter() - started) * 1000)
    return statistics.median(timings)


def _require(query: AvailabilityQuery, required: int) -> tuple[Group, ...]:
    return tuple(Group(group.members, required) for group in query.groups)


if __name__ == "__main__":
    main()
