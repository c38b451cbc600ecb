"""Rooms over EWS, run in worker threads: room lists (GetRoomLists), their rooms (GetRooms, which says
only a room's address and name) and a room's location from the directory (ResolveNames).

- GetRoomLists: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/getroomlists-operation
- GetRooms: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/getrooms-operation

Nothing in the EWS schema carries a room's capacity.
"""

from __future__ import annotations

from typing import Any

from exchangelib.properties import RoomList as EwsRoomList
from exchangelib.services import GetRoomLists, GetRooms, ResolveNames

from calbroker.domain.schedules import RoomList

__all__ = ["room_lists", "room_location", "rooms_of"]


def room_lists(timeout_s: float, *, protocol: Any) -> list[RoomList]:
    return [
        RoomList(str(room_list.email_address).lower(), str(room_list.name or room_list.email_address))
        for room_list in GetRoomLists(protocol=protocol, timeout=timeout_s).call()
        if room_list.email_address
    ]


def rooms_of(timeout_s: float, *, protocol: Any, room_list: RoomList) -> list[tuple[str, str]]:
    """(email, display name) of the rooms in `room_list`: all GetRooms says of a room."""
    rooms = GetRooms(protocol=protocol, timeout=timeout_s).call(room_list=EwsRoomList(email_address=room_list.email))
    return [
        (str(room.email_address).lower(), str(room.name or room.email_address)) for room in rooms if room.email_address
    ]


def room_location(timeout_s: float, *, protocol: Any, email: str) -> str | None:
    """The room's location from the directory: ResolveNames with ReturnFullContactData returns the room's
    directory entry as a Contact, whose OfficeLocation is the room mailbox's Office (Location) attribute
    (https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/resolvenames-operation,
    https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/officelocation).
    One name per request: "Only one ambiguous name can be specified in a single request"."""
    service = ResolveNames(protocol=protocol, chunk_size=1, timeout=timeout_s)
    for mailbox, contact in service.call(
        unresolved_entries=[email], return_full_contact_data=True, search_scope="ActiveDirectory"
    ):
        if mailbox is not None and str(mailbox.email_address or "").lower() == email and contact is not None:
            return str(contact.office) if contact.office else None
    return None
