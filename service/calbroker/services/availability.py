"""Availability for an application's mailboxes: read everyone's busy time, then run the engine (design §6).

The one composition behind `POST /v1/availability`: a member whose calendar could not be read is
unavailable everywhere and comes back in `member_errors` with the reason, never silently free.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from calbroker.domain.availability import AvailabilityQuery, AvailabilityResult, find_availability
from calbroker.domain.errors import CalbrokerError
from calbroker.domain.participants import Member
from calbroker.domain.sync import ReadMode, Source
from calbroker.providers.protocol import Deadline
from calbroker.services.schedules import ScheduleReader

__all__ = ["AvailabilityAnswer", "answer_availability"]


@dataclass(frozen=True, slots=True)
class AvailabilityAnswer:
    result: AvailabilityResult
    member_errors: tuple[tuple[str, CalbrokerError], ...]
    """Members whose free/busy could not be read, in the query's member order, with the reason."""
    sources: tuple[tuple[str, Source, datetime], ...] = ()
    """Per member, in the query's order: where its busy time came from and as of when."""


async def answer_availability(
    schedules: ScheduleReader,
    application_id: uuid.UUID,
    query: AvailabilityQuery,
    deadline: Deadline,
    *,
    mode: ReadMode = ReadMode.AUTO,
) -> AvailabilityAnswer:
    """Fill each member's busy time (and working hours, unless the query set them) and find the slots.

    `query` has been validated against every limit before this spends an upstream call; its
    members carry their requested available periods and, when the request overrides them, working
    hours.
    """
    now = datetime.now(UTC)
    found = await schedules.read(application_id, list(query.members), query.busy_window, deadline, mode=mode)
    members: dict[str, Member] = {}
    errors: list[tuple[str, CalbrokerError]] = []
    sources: list[tuple[str, Source, datetime]] = []
    for email, member in query.members.items():
        result = found[email]
        if isinstance(result, CalbrokerError):
            errors.append((email, result))
            sources.append((email, Source.LIVE, now))
            members[email] = Member(
                email, member.busy, member.available_periods, member.working_hours, unavailable_reason=result.detail
            )
            continue
        sources.append((email, result.source, result.as_of or now))
        hours = member.working_hours if member.working_hours is not None else result.working_hours
        members[email] = Member(email, result.busy, member.available_periods, hours, member.unavailable_reason)
    return AvailabilityAnswer(find_availability(query, members), tuple(errors), tuple(sources))
