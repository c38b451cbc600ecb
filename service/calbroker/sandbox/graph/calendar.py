"""Graph's mailbox-level resources: the default calendar (with its online-meeting providers) and
mailboxSettings (time zone, working hours)."""

from __future__ import annotations

import hashlib
from typing import Any

from calbroker.sandbox.directory import Mailbox
from calbroker.sandbox.events import CalendarFolder
from calbroker.sandbox.graph.events import READ
from calbroker.sandbox.graph.odata import GraphContext, GraphRequest, GraphResponse, Route, make_route
from calbroker.sandbox.graph.schedule import working_hours_json

__all__ = ["ROUTES", "calendar_json"]


def calendar_json(mailbox: Mailbox, folder: CalendarFolder) -> dict[str, Any]:
    """The calendar resource (https://learn.microsoft.com/graph/api/resources/calendar); online-meeting
    providers per https://learn.microsoft.com/graph/outlook-calendar-online-meetings."""
    providers = list(mailbox.online_meeting_providers)
    return {
        "id": folder.id,
        "name": folder.name,
        "color": folder.color,
        "hexColor": "",
        "isDefaultCalendar": folder.is_default,
        "changeKey": hashlib.sha256(f"calendar|{mailbox.id}|{folder.id}".encode()).hexdigest()[:28],
        "canShare": True,
        "canViewPrivateItems": True,
        "canEdit": True,
        "allowedOnlineMeetingProviders": providers,
        "defaultOnlineMeetingProvider": providers[0] if providers else "unknown",
        "isTallyingResponses": True,
        "isRemovable": not folder.is_default,
        "owner": {"name": mailbox.display_name, "address": mailbox.email},
    }


async def get_calendar(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/calendar-get
    mailbox = req.target
    default = ctx.state.calendars.calendars(mailbox.email)[0]
    body = {
        "@odata.context": f"{ctx.graph_url}/$metadata#users('{mailbox.id}')/calendar/$entity",
        **calendar_json(mailbox, default),
    }
    return GraphResponse(200, body)


async def get_mailbox_settings(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/user-get-mailboxsettings
    mailbox = req.target
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


ROUTES: tuple[Route, ...] = (
    make_route("GET", r"/users/{user}/calendar", "graph:calendar.get", get_calendar, READ, family="outlook"),
    make_route(
        "GET",
        r"/users/{user}/mailboxSettings",
        "graph:mailboxSettings.get",
        get_mailbox_settings,
        {"MailboxSettings.Read", "MailboxSettings.ReadWrite"},
        family="outlook",
    ),
)
