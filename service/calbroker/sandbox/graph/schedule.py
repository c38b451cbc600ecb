"""Graph getSchedule: free/busy of many mailboxes in one call, and workingHours as Graph shows them.

https://learn.microsoft.com/graph/api/calendar-getschedule ;
https://learn.microsoft.com/graph/api/resources/scheduleinformation
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from calbroker.sandbox.calendars import merged_view
from calbroker.sandbox.directory import WorkingHours
from calbroker.sandbox.events import GRAPH_DIGITS
from calbroker.sandbox.graph.events import READ, parse_when, resolve_zone
from calbroker.sandbox.graph.odata import (
    GraphContext,
    GraphError,
    GraphRequest,
    GraphResponse,
    Route,
    body_get,
    make_route,
    prefer,
)
from calbroker.sandbox.timezones import format_graph_datetime

__all__ = ["ROUTES", "working_hours_json"]


def working_hours_json(hours: WorkingHours) -> dict[str, Any]:
    """workingHours as mailboxSettings and getSchedule show it (Windows time-zone name)."""
    return {
        "daysOfWeek": list(hours.days),
        "startTime": hours.start.strftime("%H:%M:%S") + ".0000000",
        "endTime": hours.end.strftime("%H:%M:%S") + ".0000000",
        "timeZone": {"name": hours.windows_time_zone},
    }


def _interval(raw: Any) -> int:
    try:
        interval = int(raw) if raw is not None else 30
    except (TypeError, ValueError):
        raise GraphError(400, "ErrorInvalidParameter", "availabilityViewInterval must be an integer.") from None
    # "The default is 30 minutes, minimum is 5, maximum is 1440."
    if not 5 <= interval <= 1440:
        raise GraphError(
            400, "ErrorInvalidParameter", "The availabilityViewInterval must be between 5 and 1440 minutes."
        )
    return interval


def _schedule_error(address: str, code: str, message: str) -> dict[str, Any]:
    # Per-schedule error shape (freeBusyError: message, responseCode) — [unverified] beyond the doc's fields.
    return {"scheduleId": address, "availabilityView": "", "error": {"message": message, "responseCode": code}}


def _schedule(
    ctx: GraphContext,
    req: GraphRequest,
    address: str,
    *,
    start: datetime,
    end: datetime,
    interval: int,
    tz: str | None,
) -> dict[str, Any]:
    state = ctx.state
    caller = req.caller
    mailbox = state.directory.mailbox(str(address))
    if mailbox is None or mailbox.tenant_id != caller.tenant.id:
        return _schedule_error(
            address, "ErrorMailRecipientNotFound", "The SMTP address has no mailbox associated with it."
        )
    principal = caller.principal
    if (
        not caller.delegated
        and principal is not None
        and state.settings.schedule_scope_errors
        and not state.directory.mailbox_in_policy_scope(principal, mailbox)
    ):
        return _schedule_error(address, "ErrorAccessDenied", "Access to OData is disabled.")
    label = tz or "UTC"
    items = []
    busy = state.calendars.free_busy(mailbox.email, start, end)
    for item in busy:
        entry: dict[str, Any] = {"isPrivate": item.is_private, "status": item.status.value}
        if not item.is_private:
            entry["subject"] = item.subject
            entry["location"] = item.location
        entry["start"] = {"dateTime": format_graph_datetime(item.start, label), "timeZone": label}
        entry["end"] = {"dateTime": format_graph_datetime(item.end, label), "timeZone": label}
        items.append(entry)
    return {
        "scheduleId": address,
        "availabilityView": merged_view(busy, start, end, timedelta(minutes=interval), digits=GRAPH_DIGITS),
        "scheduleItems": items,
        "workingHours": working_hours_json(mailbox.working_hours),
    }


async def get_schedule(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/calendar-getschedule ; limits (20 schedules, 62 days)
    # are sandbox settings, [unverified] upstream.
    settings = ctx.state.settings
    schedules = body_get(req.body, "schedules")
    if not isinstance(schedules, list) or not schedules or not all(isinstance(s, str) for s in schedules):
        raise GraphError(
            400, "ErrorInvalidParameter", "The parameter 'Schedules' must contain at least one SMTP address."
        )
    if len(schedules) > settings.max_schedules:
        raise GraphError(
            400,
            "ErrorInvalidParameter",
            f"The number of schedules requested ({len(schedules)}) exceeds the limit of {settings.max_schedules}.",
        )
    start, _ = parse_when(body_get(req.body, "startTime"), "startTime")
    end, _ = parse_when(body_get(req.body, "endTime"), "endTime")
    interval = _interval(body_get(req.body, "availabilityViewInterval"))
    if end <= start:
        raise GraphError(400, "ErrorInvalidParameter", "The end time must be after the start time.")
    if end - start > timedelta(days=settings.max_schedule_window_days):
        raise GraphError(
            400,
            "ErrorInvalidParameter",
            f"The requested time window exceeds the maximum of {settings.max_schedule_window_days} days.",
        )
    tz_name, _ = prefer(req.headers)
    if tz_name:
        resolve_zone(tz_name)
    value = [_schedule(ctx, req, address, start=start, end=end, interval=interval, tz=tz_name) for address in schedules]
    body = {
        "@odata.context": f"{ctx.graph_url}/$metadata#Collection(microsoft.graph.scheduleInformation)",
        "value": value,
    }
    headers = {"Preference-Applied": f'outlook.timezone="{tz_name}"'} if tz_name else {}
    return GraphResponse(200, body, headers)


ROUTES: tuple[Route, ...] = (
    make_route(
        "POST", r"/users/{user}/calendar/getSchedule", "graph:getSchedule", get_schedule, READ, family="outlook"
    ),
)
