"""Graph places: rooms and room lists (https://learn.microsoft.com/graph/api/resources/place)."""

from __future__ import annotations

from typing import Any

from calbroker.sandbox.directory import Mailbox, RoomList, Tenant
from calbroker.sandbox.graph.odata import GraphContext, GraphError, GraphRequest, GraphResponse, Route, make_route

__all__ = ["ROUTES", "room_json", "room_list_json"]

PLACES = {"Place.Read.All"}


def room_json(room: Mailbox, tenant: Tenant) -> dict[str, Any]:
    """A room place (https://learn.microsoft.com/graph/api/resources/room)."""
    return {
        "id": room.id,
        "emailAddress": room.email,
        "displayName": room.display_name,
        "address": {
            "street": tenant.street or None,
            "city": room.city,
            "state": tenant.state or None,
            "postalCode": tenant.postal_code or None,
            "countryOrRegion": tenant.country_code or None,
        },
        "geoCoordinates": None,
        "phone": None,
        "nickname": room.display_name,
        "label": room.alias,
        "capacity": room.capacity,
        "building": room.building,
        "floorLabel": str(room.floor) if room.floor is not None else None,
        "floorNumber": room.floor,
        "isManaged": True,
        "isWheelChairAccessible": False,
        "bookingType": "standard",
        "tags": list(room.tags),
        "audioDeviceName": None,
        "videoDeviceName": None,
        "displayDeviceName": "surface hub" if room.tags else None,
    }


def room_list_json(room_list: RoomList) -> dict[str, Any]:
    """A roomList place (https://learn.microsoft.com/graph/api/resources/roomlist)."""
    return {
        "id": room_list.id,
        "displayName": room_list.display_name,
        "address": {"city": room_list.city, "countryOrRegion": room_list.country},
        "geoCoordinates": None,
        "phone": None,
        "emailAddress": room_list.email,
    }


async def list_places(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/place-list — rooms, room lists, rooms of one list
    tenant = req.caller.tenant
    directory = ctx.state.directory
    kind = req.params["kind"].lower()
    list_email = req.params.get("list")
    if list_email is not None:
        room_list = tenant.room_lists.get(list_email.lower())
        if room_list is None:
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        value = [room_json(tenant.mailboxes[e], tenant) for e in room_list.rooms]
        context = f"places('{list_email}')/microsoft.graph.roomList/rooms"
    elif kind == "microsoft.graph.room":
        value = [room_json(r, tenant) for r in directory.rooms(tenant)]
        context = "places/microsoft.graph.room"
    else:
        value = [room_list_json(r) for r in directory.room_lists(tenant)]
        context = "places/microsoft.graph.roomList"
    return GraphResponse(200, {"@odata.context": f"{ctx.graph_url}/$metadata#{context}", "value": value})


ROUTES: tuple[Route, ...] = (
    make_route(
        "GET",
        r"/places/(?P<kind>microsoft\.graph\.room|microsoft\.graph\.roomlist)",
        "graph:places.list",
        list_places,
        PLACES,
        family="directory",
    ),
    make_route(
        "GET",
        r"/places/(?P<list>[^/]+@[^/]+)/(?P<kind>microsoft\.graph\.roomlist)/rooms",
        "graph:places.list",
        list_places,
        PLACES,
        family="directory",
    ),
)
