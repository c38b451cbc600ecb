"""Graph `onlineMeetings/createOrGet`: an idempotent Teams meeting per (organizer, externalId).

https://learn.microsoft.com/graph/api/onlinemeeting-createorget — "Create an onlineMeeting object
with a custom specified external ID. If the external ID already exists, this API will return the
onlineMeeting object with that external ID." App-only calls (`POST /users/{userId}/onlineMeetings/
createOrGet`, OnlineMeetings.ReadWrite.All) need a Teams application access policy granted to the
user, like plain create (https://learn.microsoft.com/graph/api/application-post-onlinemeetings).
The meeting itself is made by `graph.calendar.create_online_meeting`, so both routes share one store.
"""

from __future__ import annotations

from calbroker.sandbox.graph import calendar
from calbroker.sandbox.graph.odata import (
    GraphContext,
    GraphError,
    GraphRequest,
    GraphResponse,
    Route,
    body_get,
    make_route,
)

__all__ = ["ROUTES"]

_TEAMS = {"OnlineMeetings.ReadWrite.All", "OnlineMeetings.ReadWrite"}


async def create_or_get(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    external_id = body_get(req.body, "externalId")
    if not isinstance(external_id, str) or not external_id.strip():
        raise GraphError(400, "BadRequest", "The externalId property is required for createOrGet.")
    principal = req.caller.principal
    if not req.caller.delegated and (principal is None or not principal.teams_policy):
        raise GraphError(403, "Forbidden", "No application access policy found for this app.")
    assert req.mailbox is not None
    organizer = req.mailbox.id
    for meeting in ctx.state.online_meetings.values():
        if meeting["organizerId"] == organizer and meeting.get("externalId") == external_id:
            body = {
                "@odata.context": f"{ctx.graph_url}/$metadata#users('{organizer}')/onlineMeetings/$entity",
                **{k: v for k, v in meeting.items() if k != "organizerId"},
            }
            return GraphResponse(200, body)
    return await calendar.create_online_meeting(ctx, req)


ROUTES: tuple[Route, ...] = (
    make_route(
        "POST",
        r"/users/{user}/onlineMeetings/createOrGet",
        "graph:onlineMeetings.createOrGet",
        create_or_get,
        _TEAMS,
        family="teams",
    ),
)
