"""Graph online meetings (the cloud-communications route hybrid tenants use for Teams links):
create, get, delete and the idempotent `createOrGet` per (organizer, externalId).

App-only calls (OnlineMeetings.ReadWrite.All) need a Teams application access policy granted to
the user (https://learn.microsoft.com/graph/cloud-communication-online-meeting-application-access-policy).
`createOrGet` (https://learn.microsoft.com/graph/api/onlinemeeting-createorget): "Create an
onlineMeeting object with a custom specified external ID. If the external ID already exists, this
API will return the onlineMeeting object with that external ID."
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from calbroker.sandbox.calendars import teams_meeting
from calbroker.sandbox.directory import stable_id
from calbroker.sandbox.graph.odata import (
    GraphContext,
    GraphError,
    GraphRequest,
    GraphResponse,
    Route,
    body_get,
    graph_instant,
    make_route,
)
from calbroker.sandbox.timezones import parse_iso_instant

__all__ = ["ROUTES"]

_TEAMS = {"OnlineMeetings.ReadWrite.All", "OnlineMeetings.ReadWrite"}


def _require_teams_policy(req: GraphRequest) -> None:
    principal = req.caller.principal
    if not req.caller.delegated and (principal is None or not principal.teams_policy):
        raise GraphError(403, "Forbidden", "No application access policy found for this app.")


def _meeting_json(ctx: GraphContext, meeting: dict[str, Any]) -> dict[str, Any]:
    return {
        "@odata.context": f"{ctx.graph_url}/$metadata#users('{meeting['organizerId']}')/onlineMeetings/$entity",
        **{k: v for k, v in meeting.items() if k != "organizerId"},
    }


async def create_online_meeting(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/application-post-onlinemeetings ; app-only calls need a
    # Teams application access policy
    # (https://learn.microsoft.com/graph/cloud-communication-online-meeting-application-access-policy).
    _require_teams_policy(req)
    mailbox = req.target
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
    if meeting is None or meeting["organizerId"] != req.target.id:
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


async def create_or_get(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    external_id = body_get(req.body, "externalId")
    if not isinstance(external_id, str) or not external_id.strip():
        raise GraphError(400, "BadRequest", "The externalId property is required for createOrGet.")
    _require_teams_policy(req)
    organizer = req.target.id
    for meeting in ctx.state.online_meetings.values():
        if meeting["organizerId"] == organizer and meeting.get("externalId") == external_id:
            return GraphResponse(200, _meeting_json(ctx, meeting))
    return await create_online_meeting(ctx, req)


ROUTES: tuple[Route, ...] = (
    make_route(
        "POST",
        r"/users/{user}/onlineMeetings/createOrGet",
        "graph:onlineMeetings.createOrGet",
        create_or_get,
        _TEAMS,
        family="teams",
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
