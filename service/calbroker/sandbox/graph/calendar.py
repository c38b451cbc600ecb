"""Graph mailbox-level calendar endpoints: getSchedule (free/busy), the calendar resource,
mailboxSettings, and Teams online meetings (the cloud-communications route hybrid tenants use).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from calbroker.sandbox.calendars import GRAPH_DIGITS, teams_meeting
from calbroker.sandbox.directory import Mailbox, WorkingHours, stable_id
from calbroker.sandbox.graph.events import READ, parse_when, resolve_zone
from calbroker.sandbox.graph.odata import (
    GraphContext,
    GraphError,
    GraphRequest,
    GraphResponse,
    Route,
    body_get,
    graph_instant,
    make_route,
    prefer,
)
from calbroker.sandbox.timezones import format_graph_datetime, parse_iso_instant

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
    for item in state.calendars.free_busy(mailbox.email, start, end):
        entry: dict[str, Any] = {"isPrivate": item.is_private, "status": item.status.value}
        if not item.is_private:
            entry["subject"] = item.subject
            entry["location"] = item.location
        entry["start"] = {"dateTime": format_graph_datetime(item.start, label), "timeZone": label}
        entry["end"] = {"dateTime": format_graph_datetime(item.end, label), "timeZone": label}
        items.append(entry)
    return {
        "scheduleId": address,
        "availabilityView": state.calendars.availability_view(
            mailbox.email, start, end, timedelta(minutes=interval), digits=GRAPH_DIGITS
        ),
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


def _mailbox(req: GraphRequest) -> Mailbox:
    assert req.mailbox is not None
    return req.mailbox


async def get_calendar(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/calendar-get ; providers per
    # https://learn.microsoft.com/graph/outlook-calendar-online-meetings
    mailbox = _mailbox(req)
    providers = list(mailbox.online_meeting_providers)
    body = {
        "@odata.context": f"{ctx.graph_url}/$metadata#users('{mailbox.id}')/calendar/$entity",
        "id": "AAMkAGC" + hashlib.sha256(mailbox.id.encode()).hexdigest()[:40],
        "name": "Calendar",
        "color": "auto",
        "hexColor": "",
        "isDefaultCalendar": True,
        "changeKey": hashlib.sha256(f"calendar|{mailbox.id}".encode()).hexdigest()[:28],
        "canShare": True,
        "canViewPrivateItems": True,
        "canEdit": True,
        "allowedOnlineMeetingProviders": providers,
        "defaultOnlineMeetingProvider": providers[0] if providers else "unknown",
        "isTallyingResponses": True,
        "isRemovable": False,
        "owner": {"name": mailbox.display_name, "address": mailbox.email},
    }
    return GraphResponse(200, body)


async def get_mailbox_settings(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/user-get-mailboxsettings
    mailbox = _mailbox(req)
    body = {
        "@odata.context": f"{ctx.graph_url}/$metadata#users('{mailbox.id}')/mailboxSettings",
        "timeZone": mailbox.working_hours.windows_time_zone,
        "dateFormat": "M/d/yyyy",
        "timeFormat": "h:mm tt",
        "userPurpose": "room" if mailbox.is_room else "user",
        "delegateMeetingMessageDeliveryOptions": "sendToDelegateOnly",
        "automaticRepliesSetting": {
            "status": "disabled",
            "externalAudience": "all",
            "internalReplyMessage": "",
            "externalReplyMessage": "",
        },
        "language": {"locale": mailbox.preferred_language, "displayName": "English (United States)"},
        "workingHours": working_hours_json(mailbox.working_hours),
    }
    return GraphResponse(200, body)


def _meeting_json(ctx: GraphContext, meeting: dict[str, Any]) -> dict[str, Any]:
    return {
        "@odata.context": f"{ctx.graph_url}/$metadata#users('{meeting['organizerId']}')/onlineMeetings/$entity",
        **{k: v for k, v in meeting.items() if k != "organizerId"},
    }


async def create_online_meeting(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/application-post-onlinemeetings ; app-only calls need a
    # Teams application access policy
    # (https://learn.microsoft.com/graph/cloud-communication-online-meeting-application-access-policy).
    mailbox = _mailbox(req)
    principal = req.caller.principal
    if not req.caller.delegated and (principal is None or not principal.teams_policy):
        raise GraphError(403, "Forbidden", "No application access policy found for this app.")
    now = ctx.state.clock()
    start_raw, end_raw = body_get(req.body, "startDateTime"), body_get(req.body, "endDateTime")
    try:
        start = parse_iso_instant(str(start_raw)) if start_raw else now
        end = parse_iso_instant(str(end_raw)) if end_raw else start + timedelta(hours=1)
    except ValueError:
        raise GraphError(400, "BadRequest", "Invalid startDateTime or endDateTime.") from None
    meeting_id = "MSp" + stable_id("online-meeting", mailbox.id, str(len(ctx.state.online_meetings)), str(start))
    info = teams_meeting(mailbox.tenant_id, mailbox.id, meeting_id)
    meeting = {
        "organizerId": mailbox.id,
        "id": meeting_id,
        "creationDateTime": graph_instant(now),
        "startDateTime": graph_instant(start),
        "endDateTime": graph_instant(end),
        "joinUrl": info.join_url,
        "joinWebUrl": info.join_url,
        "subject": str(body_get(req.body, "subject") or ""),
        "isBroadcast": False,
        "autoAdmittedUsers": "everyoneInCompany",
        "videoTeleconferenceId": None,
        "externalId": body_get(req.body, "externalId"),
        "joinMeetingIdSettings": {"isPasscodeRequired": False, "joinMeetingId": info.conference_id, "passcode": None},
        "audioConferencing": {
            "conferenceId": info.conference_id,
            "tollNumber": info.toll_number,
            "tollFreeNumber": None,
            "dialinUrl": f"https://dialin.teams.microsoft.com/{mailbox.tenant_id}?id={info.conference_id}",
        },
        "chatInfo": {
            "threadId": "19:meeting_" + meeting_id[3:19] + "@thread.v2",
            "messageId": "0",
            "replyChainMessageId": None,
        },
        "participants": {
            "organizer": {
                "upn": mailbox.user_principal_name,
                "role": "presenter",
                "identity": {"user": {"id": mailbox.id, "displayName": None, "tenantId": mailbox.tenant_id}},
            },
            "attendees": [],
        },
    }
    ctx.state.online_meetings[meeting_id] = meeting
    return GraphResponse(201, _meeting_json(ctx, meeting))


def _online_meeting(ctx: GraphContext, req: GraphRequest) -> dict[str, Any]:
    meeting = ctx.state.online_meetings.get(req.params["id"])
    if meeting is None or meeting["organizerId"] != _mailbox(req).id:
        raise GraphError(404, "NotFound", "Online meeting not found.")
    return meeting


async def get_online_meeting(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/onlinemeeting-get
    return GraphResponse(200, _meeting_json(ctx, _online_meeting(ctx, req)))


async def delete_online_meeting(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/onlinemeeting-delete
    meeting = _online_meeting(ctx, req)
    del ctx.state.online_meetings[meeting["id"]]
    return GraphResponse(204)


_TEAMS = {"OnlineMeetings.ReadWrite.All", "OnlineMeetings.ReadWrite"}
ROUTES: tuple[Route, ...] = (
    make_route(
        "POST", r"/users/{user}/calendar/getSchedule", "graph:getSchedule", get_schedule, READ, family="outlook"
    ),
    make_route("GET", r"/users/{user}/calendar", "graph:calendar.get", get_calendar, READ, family="outlook"),
    make_route(
        "GET",
        r"/users/{user}/mailboxSettings",
        "graph:mailboxSettings.get",
        get_mailbox_settings,
        {"MailboxSettings.Read", "MailboxSettings.ReadWrite"},
        family="outlook",
    ),
    make_route(
        "POST",
        r"/users/{user}/onlineMeetings",
        "graph:onlineMeetings.create",
        create_online_meeting,
        _TEAMS,
        family="teams",
    ),
    make_route(
        "GET",
        r"/users/{user}/onlineMeetings/{id}",
        "graph:onlineMeetings.get",
        get_online_meeting,
        _TEAMS,
        family="teams",
    ),
    make_route(
        "DELETE",
        r"/users/{user}/onlineMeetings/{id}",
        "graph:onlineMeetings.delete",
        delete_online_meeting,
        _TEAMS,
        family="teams",
    ),
)
