"""Graph's calendar collection and calendar groups, and the event routes under a named calendar.

- List calendars: https://learn.microsoft.com/graph/api/user-list-calendars (`/users/{id}/calendars`,
  `/users/{id}/calendarGroups/{group}/calendars`); create one:
  https://learn.microsoft.com/graph/api/user-post-calendars; get one:
  https://learn.microsoft.com/graph/api/calendar-get
- Calendar groups: https://learn.microsoft.com/graph/api/user-list-calendargroups — every mailbox has
  the default group "My Calendars" (`classId` 0006f0b7-0000-0000-c000-000000000046, as in the
  documented example), which holds all its calendars here.
- Events and calendarView of a named calendar: https://learn.microsoft.com/graph/api/calendar-list-events,
  https://learn.microsoft.com/graph/api/calendar-post-events,
  https://learn.microsoft.com/graph/api/calendar-list-calendarview — the same operations as on the
  default calendar (`events.event_routes`), after the calendar (and group) in the path is found.

`/me/...` reaches these through the dispatcher's `/me` rewrite, which refuses app-only tokens as
Graph does ("/me request is only valid with delegated authentication flow.").
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from calbroker.sandbox.directory import Mailbox
from calbroker.sandbox.events import CalendarError
from calbroker.sandbox.graph.calendar import calendar_json
from calbroker.sandbox.graph.events import READ, WRITE, event_routes
from calbroker.sandbox.graph.odata import (
    GraphContext,
    GraphError,
    GraphRequest,
    GraphResponse,
    Handler,
    Route,
    body_get,
    make_route,
    page,
)

__all__ = ["ROUTES"]

DEFAULT_GROUP_NAME = "My Calendars"
DEFAULT_GROUP_CLASS = "0006f0b7-0000-0000-c000-000000000046"
_NOT_FOUND = "The specified object was not found in the store."


def _group_id(mailbox: Mailbox) -> str:
    return "AAMkAGG" + hashlib.sha256(f"calendar-group|{mailbox.id}".encode()).hexdigest()[:40]


def _group_json(mailbox: Mailbox) -> dict[str, Any]:
    return {
        "id": _group_id(mailbox),
        "name": DEFAULT_GROUP_NAME,
        "classId": DEFAULT_GROUP_CLASS,
        "changeKey": hashlib.sha256(f"group|{mailbox.id}".encode()).hexdigest()[:28],
    }


def _check_group(req: GraphRequest) -> None:
    group = req.params.get("group")
    if group is not None and group != _group_id(req.target):
        raise GraphError(404, "ErrorItemNotFound", _NOT_FOUND)


def _check_calendar(ctx: GraphContext, req: GraphRequest) -> None:
    _check_group(req)
    calendar_id = req.params.get("calendar")
    if calendar_id is not None and ctx.state.calendars.calendar_folder(req.target.email, calendar_id) is None:
        raise GraphError(404, "ErrorItemNotFound", _NOT_FOUND)


def _in_named_calendar(handler: Handler) -> Handler:
    async def run(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
        _check_calendar(ctx, req)
        return await handler(ctx, req)

    return run


async def list_calendars(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    _check_group(req)
    mailbox = req.target
    folders = ctx.state.calendars.calendars(mailbox.email)
    chunk, next_link, _ = page(ctx, req, folders, default_size=10, max_size=1000)
    where = f"users('{mailbox.id}')" + (f"/calendarGroups('{req.params['group']}')" if "group" in req.params else "")
    body: dict[str, Any] = {
        "@odata.context": f"{ctx.graph_url}/$metadata#{where}/calendars",
        "value": [calendar_json(mailbox, folder) for folder in chunk],
    }
    if next_link:
        body["@odata.nextLink"] = next_link
    return GraphResponse(200, body)


async def get_named_calendar(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    _check_calendar(ctx, req)
    mailbox = req.target
    folder = ctx.state.calendars.calendar_folder(mailbox.email, req.params["calendar"])
    assert folder is not None
    body = {"@odata.context": f"{ctx.graph_url}/$metadata#users('{mailbox.id}')/calendars/$entity"}
    return GraphResponse(200, body | calendar_json(mailbox, folder))


async def create_calendar(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # 201 with the calendar; a second calendar of the same name is Exchange's ErrorFolderExists (409).
    _check_group(req)
    mailbox = req.target
    name = body_get(req.body, "name")
    if not isinstance(name, str) or not name.strip():
        raise GraphError(400, "ErrorInvalidParameter", "The calendar name must be a non-empty string.")
    color = body_get(req.body, "color") or "auto"
    try:
        folder = ctx.state.calendars.add_calendar(mailbox.email, name.strip(), color=str(color))
    except CalendarError as exc:
        raise GraphError(409, exc.code, exc.message) from None
    body = {"@odata.context": f"{ctx.graph_url}/$metadata#users('{mailbox.id}')/calendars/$entity"}
    return GraphResponse(201, body | calendar_json(mailbox, folder))


async def list_calendar_groups(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    mailbox = req.target
    body = {
        "@odata.context": f"{ctx.graph_url}/$metadata#users('{mailbox.id}')/calendarGroups",
        "value": [_group_json(mailbox)],
    }
    return GraphResponse(200, body)


async def get_calendar_group(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    _check_group(req)
    mailbox = req.target
    body = {"@odata.context": f"{ctx.graph_url}/$metadata#users('{mailbox.id}')/calendarGroups/$entity"}
    return GraphResponse(200, body | _group_json(mailbox))


_GROUPS = r"/users/{user}/calendarGroups"
_CALENDARS = r"/users/{user}(?:/calendarGroups/{group})?/calendars"
_NAMED = _CALENDARS + "/{calendar}"

ROUTES: tuple[Route, ...] = (
    make_route("GET", _GROUPS, "graph:calendarGroups.list", list_calendar_groups, READ, family="outlook"),
    make_route("GET", _GROUPS + "/{group}", "graph:calendarGroups.get", get_calendar_group, READ, family="outlook"),
    make_route("GET", _CALENDARS, "graph:calendars.list", list_calendars, READ, family="outlook"),
    make_route("POST", _CALENDARS, "graph:calendars.create", create_calendar, WRITE, family="outlook"),
    make_route("GET", _NAMED, "graph:calendars.get", get_named_calendar, READ, family="outlook"),
    *(dataclasses.replace(route, handler=_in_named_calendar(route.handler)) for route in event_routes(_NAMED)),
)
