"""`POST /v1/free_busy`: busy time and working hours for mailboxes, whatever protocol serves each."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

import msgspec
from litestar import post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body as BodyParam

from calbroker.api.auth import Caller
from calbroker.api.problems import EmbeddedProblem, embedded_problem, problem_responses
from calbroker.api.wire import EMAIL_ITEMS, Body, Email, Response, instant_field, span, zone, zone_field
from calbroker.domain import BusyStatus, Interval
from calbroker.domain.connections import normalize_email
from calbroker.domain.errors import CalbrokerError, LimitExceeded
from calbroker.domain.schedules import MailboxSchedule
from calbroker.domain.sync import ReadMode, Source
from calbroker.domain.working_hours import Weekday, WorkingHours

__all__ = ["FRESHNESS", "MAX_FREE_BUSY_MAILBOXES", "MAX_FREE_BUSY_SPAN", "Freshness", "free_busy"]

MAX_FREE_BUSY_MAILBOXES = 500
MAX_FREE_BUSY_SPAN = timedelta(days=62)


Freshness = Annotated[
    Literal["auto", "live"],
    msgspec.Meta(
        description='"auto" (default): each mailbox from calbroker\'s synced copy when that copy is provably '
        'fresh, else live from Microsoft; "live": every mailbox from Microsoft now.'
    ),
]
FRESHNESS = {"auto": ReadMode.AUTO, "live": ReadMode.LIVE}


class FreeBusyRequest(Body):
    """Whose busy time to read, over which window."""

    mailboxes: Annotated[
        list[Email],
        msgspec.Meta(
            min_length=1,
            max_length=MAX_FREE_BUSY_MAILBOXES,
            description=f"Email addresses, 1 to {MAX_FREE_BUSY_MAILBOXES}",
            extra_json_schema=EMAIL_ITEMS,
        ),
    ]
    start: Annotated[str, instant_field("Start of the window")]
    end: Annotated[str, instant_field(f"End of the window, after start, at most {MAX_FREE_BUSY_SPAN.days} days later")]
    tzid: Annotated[str, zone_field("IANA zone the answer's times are in; default UTC")] | None = None
    freshness: Freshness = "auto"


class BusyOut(Response):
    """Time the mailbox is not free."""

    start: Annotated[datetime, msgspec.Meta(description="Start, in the request's tzid (clipped to the window)")]
    end: Annotated[datetime, msgspec.Meta(description="End, in the request's tzid (clipped to the window)")]
    status: Annotated[BusyStatus, msgspec.Meta(description="busy, tentative, oof or working_elsewhere")]


class WeeklyPeriodOut(Response):
    """Wall-clock working time on one weekday."""

    day: Annotated[str, msgspec.Meta(description="Day of the week, e.g. monday")]
    start_time: Annotated[str, msgspec.Meta(description="HH:MM in the working hours' tzid")]
    end_time: Annotated[str, msgspec.Meta(description="HH:MM in the working hours' tzid; 24:00 is midnight")]


class WorkingHoursOut(Response):
    """A mailbox's working week, as Exchange holds it."""

    tzid: Annotated[str, msgspec.Meta(description="IANA zone the times are in")]
    weekly_periods: Annotated[list[WeeklyPeriodOut], msgspec.Meta(description="Working periods, by day and start")]


class MailboxFreeBusy(Response):
    """One mailbox's answer: busy time and working hours, or a problem."""

    mailbox: Annotated[str, msgspec.Meta(description="The mailbox, normalised (lower case)")]
    source: Annotated[Source, msgspec.Meta(description="Where this answer came from: the synced copy or Microsoft")]
    as_of: Annotated[datetime, msgspec.Meta(description="When Microsoft was known to say this")]
    busy: Annotated[
        list[BusyOut] | None, msgspec.Meta(description="Busy time in the window, by start; absent with `error`")
    ] = None
    working_hours: Annotated[
        WorkingHoursOut | None, msgspec.Meta(description="The mailbox's working hours, when Exchange has them")
    ] = None
    error: Annotated[
        EmbeddedProblem | None, msgspec.Meta(description="Why this mailbox could not be read (it is never free)")
    ] = None


class FreeBusyResponse(Response):
    """Free/busy per mailbox."""

    free_busy: Annotated[list[MailboxFreeBusy], msgspec.Meta(description="One entry per mailbox, in request order")]


def _time(value: time | None) -> str:
    return "24:00" if value is None else value.strftime("%H:%M")


def working_hours_out(hours: WorkingHours) -> WorkingHoursOut:
    return WorkingHoursOut(
        tzid=hours.tz.key,
        weekly_periods=[
            WeeklyPeriodOut(day=Weekday(p.day).name.lower(), start_time=_time(p.start), end_time=_time(p.end))
            for p in sorted(hours.periods, key=lambda p: (p.day, p.start))
        ],
    )


def _mailbox_out(
    mailbox: str, result: MailboxSchedule | CalbrokerError, window: Interval, tz: ZoneInfo, now: datetime
) -> MailboxFreeBusy:
    if isinstance(result, CalbrokerError):
        return MailboxFreeBusy(
            mailbox=mailbox, source=Source.LIVE, as_of=now.astimezone(tz), error=embedded_problem(result)
        )
    busy = [
        BusyOut(
            start=max(block.interval.start, window.start).astimezone(tz),
            end=min(block.interval.end, window.end).astimezone(tz),
            status=block.status,
        )
        for block in sorted(result.busy, key=lambda b: (b.interval.start, b.interval.end))
        if block.status is not BusyStatus.FREE
        and block.interval.end > window.start
        and block.interval.start < window.end
    ]
    hours = working_hours_out(result.working_hours) if result.working_hours else None
    as_of = (result.as_of or now).astimezone(tz)
    return MailboxFreeBusy(mailbox=mailbox, source=result.source, as_of=as_of, busy=busy, working_hours=hours)


def parse_mailboxes(raw: list[str], field: str, limit: int) -> list[str]:
    """Normalised, de-duplicated addresses within the limit, or a 422 naming the bad one."""
    if len(raw) > limit:
        raise LimitExceeded(field=field, limit=limit, actual=len(raw), message=f"at most {limit} mailboxes per request")
    return list(dict.fromkeys(normalize_email(value, field_name=f"{field}[{i}]") for i, value in enumerate(raw)))


_EXAMPLE = {
    "mailboxes": ["adele.vance@contoso.com", "anna.schmidt@fabrikam.com"],
    "start": "2026-11-24T00:00:00Z",
    "end": "2026-11-25T00:00:00Z",
    "tzid": "Europe/London",
}
_RESPONSE_EXAMPLE = {
    "free_busy": [
        {
            "mailbox": "adele.vance@contoso.com",
            "source": "cache",
            "as_of": "2026-11-23T17:58:02+00:00",
            "busy": [{"start": "2026-11-24T20:00:00+00:00", "end": "2026-11-24T20:30:00+00:00", "status": "busy"}],
            "working_hours": {
                "tzid": "America/Los_Angeles",
                "weekly_periods": [{"day": "monday", "start_time": "08:00", "end_time": "17:00"}],
            },
        },
        {
            "mailbox": "diego.siciliani@contoso.com",
            "source": "live",
            "as_of": "2026-11-23T18:00:00+00:00",
            "error": {
                "type": "/problems/mailbox-out-of-scope",
                "title": "The mailbox is outside the connection's scope",
                "status": 403,
                "detail": "Access to OData is disabled.",
                "mailbox": "diego.siciliani@contoso.com",
            },
        },
    ]
}


@post(
    "/free_busy",
    operation_id="getFreeBusy",
    status_code=200,
    tags=["availability"],
    summary="Busy time and working hours for mailboxes",
    responses={
        200: ResponseSpec(
            FreeBusyResponse,
            description="One entry per mailbox, in request order",
            generate_examples=False,
            examples=[Example(summary="A schedule and a per-mailbox problem", value=_RESPONSE_EXAMPLE)],
        ),
        **problem_responses(body=True),
    },
)
async def free_busy(
    data: Annotated[
        FreeBusyRequest, BodyParam(examples=[Example(summary="Two mailboxes, two protocols", value=_EXAMPLE)])
    ],
    caller: NamedDependency[Caller],
) -> FreeBusyResponse:
    """Per mailbox: busy intervals (clipped to the window) with status, or a problem object.

    One mailbox that cannot be read never fails the others; an unreadable mailbox is reported
    with its error, never as free. Each mailbox says whether it was answered from calbroker's
    synced copy (`source: cache`, only when provably fresh) or live, and `as_of` when.
    """
    tz = zone(data.tzid)
    window = span(data.start, data.end)
    if window.end - window.start > MAX_FREE_BUSY_SPAN:
        raise LimitExceeded(
            field="end",
            limit=f"{MAX_FREE_BUSY_SPAN.days} days",
            actual=str(window.end - window.start),
            message=f"the window may span at most {MAX_FREE_BUSY_SPAN.days} days",
        )
    mailboxes = parse_mailboxes(data.mailboxes, "mailboxes", MAX_FREE_BUSY_MAILBOXES)
    now = datetime.now(UTC)
    found = await caller.schedules.read(
        caller.application.id, mailboxes, window, caller.deadline, mode=FRESHNESS[data.freshness]
    )
    return FreeBusyResponse(free_busy=[_mailbox_out(m, found[m], window, tz, now) for m in mailboxes])
