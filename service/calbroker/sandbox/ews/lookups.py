"""Organisation-wide lookups that need no mailbox: ResolveNames, ExpandDL, GetRoomLists, GetRooms and
GetServerTimeZones. exchangelib sends these without an impersonation header.

- ResolveNames: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/resolvenames-operation
  ("returns a maximum of 100 candidates"; none → Error ErrorNameResolutionNoResults, several →
  Warning ErrorNameResolutionMultipleResults); distribution lists resolve as ``PublicDL``. With
  ReturnFullContactData each directory entry comes as a Contact
  (https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/contact),
  its children in the schema's order; a room's location is its OfficeLocation
  (https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/officelocation).
  A room's capacity is not part of the EWS schema, so nothing here carries it.
- ExpandDL: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/expanddl-operation
  (a public list by SMTP address, alias or display name; "Recursive expansion is not supported";
  "If the distribution list has no members or the requested distribution list does not exist, the
  ResponseClass attribute will contain a value equal to Success"; several matches are an error)
- GetRoomLists: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/getroomlists-operation
- GetRooms: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/getrooms-operation
- GetServerTimeZones: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/getservertimezones-operation
"""

from __future__ import annotations

from dataclasses import dataclass

from calbroker.sandbox import timezones
from calbroker.sandbox.directory import Mailbox, Tenant
from calbroker.sandbox.ews.access import Call
from calbroker.sandbox.ews.soap import Element, child, find_text, m, parse_bool, response_message, t, xml_bool
from calbroker.sandbox.ews.timezones import timezone_definition

MAX_CANDIDATES = 100
_NO_RESULTS = "No results were found."


def _tenant(call: Call) -> Tenant:
    tenant = call.directory.tenant_by_id(call.account.tenant_id)
    assert tenant is not None, call.account.tenant_id
    return tenant


def _mailbox(parent: Element, tag: str, mailbox: Mailbox, mailbox_type: str = "Mailbox") -> Element:
    node = child(parent, tag)
    child(node, t("Name"), mailbox.display_name)
    child(node, t("EmailAddress"), mailbox.email)
    child(node, t("RoutingType"), "SMTP")
    child(node, t("MailboxType"), mailbox_type)
    return node


@dataclass(frozen=True, slots=True)
class _List:
    """A distribution list as the address book shows it: a mail-enabled group or a room list."""

    email: str
    display_name: str
    members: tuple[str, ...]


def _lists(tenant: Tenant) -> list[_List]:
    groups = [_List(g.email, g.display_name, tuple(sorted(g.members))) for g in tenant.groups.values()]
    rooms = [_List(r.email, r.display_name, r.rooms) for r in tenant.room_lists.values()]
    return sorted(groups + rooms, key=lambda dl: dl.email)


def _matching_lists(tenant: Tenant, text: str, *, exact: bool) -> list[_List]:
    needle = text.strip().lower().removeprefix("smtp:")
    if exact:
        return [
            dl for dl in _lists(tenant) if needle in (dl.email, dl.email.partition("@")[0], dl.display_name.lower())
        ]
    return [dl for dl in _lists(tenant) if needle in dl.email or needle in dl.display_name.lower()]


def _list_elem(parent: Element, dl: _List) -> None:
    node = child(parent, t("Mailbox"))
    child(node, t("Name"), dl.display_name)
    child(node, t("EmailAddress"), dl.email)
    child(node, t("RoutingType"), "SMTP")
    child(node, t("MailboxType"), "PublicDL")


def resolve_names(call: Call, body: Element, parent: Element) -> None:
    entry = find_text(body, m("UnresolvedEntry")) or ""
    full = parse_bool(body.get("ReturnFullContactData"))
    tenant = _tenant(call)
    found: list[Mailbox | _List] = (
        [*call.directory.resolve(tenant, entry), *_matching_lists(tenant, entry, exact=False)] if entry else []
    )
    messages = child(child(parent, m("ResolveNamesResponse")), m("ResponseMessages"))
    tag = m("ResolveNamesResponseMessage")
    if not found:
        response_message(messages, tag, "ErrorNameResolutionNoResults", _NO_RESULTS)
        return
    if len(found) == 1:
        message = response_message(messages, tag)
    else:
        message = response_message(
            messages, tag, "ErrorNameResolutionMultipleResults", "Multiple results were found.", "Warning"
        )
    shown = found[:MAX_CANDIDATES]
    results = child(
        message,
        m("ResolutionSet"),
        TotalItemsInView=str(len(shown)),
        IncludesLastItemInRange=xml_bool(len(found) <= MAX_CANDIDATES),
    )
    for mailbox in shown:
        resolution = child(results, t("Resolution"))
        if isinstance(mailbox, _List):
            _list_elem(resolution, mailbox)
            continue
        _mailbox(resolution, t("Mailbox"), mailbox)
        if full:
            contact = child(resolution, t("Contact"))
            child(contact, t("DisplayName"), mailbox.display_name)
            if mailbox.given_name:
                child(contact, t("GivenName"), mailbox.given_name)
            child(child(contact, t("EmailAddresses")), t("Entry"), f"SMTP:{mailbox.email}", Key="EmailAddress1")
            child(contact, t("ContactSource"), "ActiveDirectory")
            if mailbox.department:
                child(contact, t("Department"), mailbox.department)
            if mailbox.job_title:
                child(contact, t("JobTitle"), mailbox.job_title)
            if mailbox.is_room and mailbox.building:
                child(contact, t("OfficeLocation"), mailbox.building)
            if mailbox.surname:
                child(contact, t("Surname"), mailbox.surname)


def expand_dl(call: Call, body: Element, parent: Element) -> None:
    address = find_text(body, f"{m('Mailbox')}/{t('EmailAddress')}") or find_text(
        body, f"{t('Mailbox')}/{t('EmailAddress')}"
    )
    messages = child(child(parent, m("ExpandDLResponse")), m("ResponseMessages"))
    tag = m("ExpandDLResponseMessage")
    lists = _matching_lists(_tenant(call), address or "", exact=True) if address else []
    if len(lists) > 1:
        response_message(
            messages, tag, "ErrorNameResolutionMultipleResults", "Multiple distribution lists match the name."
        )
        return
    members = [call.directory.mailbox(email) for email in (lists[0].members if lists else ())]
    shown = [member for member in members if member is not None]
    expansion = child(
        response_message(messages, tag),
        m("DLExpansion"),
        TotalItemsInView=str(len(shown)),
        IncludesLastItemInRange="true",
    )
    for member in shown:
        _mailbox(expansion, t("Mailbox"), member)


def get_room_lists(call: Call, body: Element, parent: Element) -> None:
    # GetRoomLists answers without a ResponseMessages wrapper: the response element is the message.
    response = response_message(parent, m("GetRoomListsResponse"))
    lists = child(response, m("RoomLists"))
    for room_list in call.directory.room_lists(_tenant(call)):
        node = child(lists, t("Address"))
        child(node, t("Name"), room_list.display_name)
        child(node, t("EmailAddress"), room_list.email)
        child(node, t("RoutingType"), "SMTP")
        child(node, t("MailboxType"), "PublicDL")


def get_rooms(call: Call, body: Element, parent: Element) -> None:
    address = (find_text(body, f"{m('RoomList')}/{t('EmailAddress')}") or "").lower()
    room_list = next((r for r in call.directory.room_lists(_tenant(call)) if r.email == address), None)
    if room_list is None:
        response_message(parent, m("GetRoomsResponse"), "ErrorNameResolutionNoResults", _NO_RESULTS)
        return
    rooms = child(response_message(parent, m("GetRoomsResponse")), m("Rooms"))
    for email in room_list.rooms:
        room = call.directory.mailbox(email)
        if room is not None:
            _mailbox(child(rooms, t("Room")), t("Id"), room)


def get_server_time_zones(call: Call, body: Element, parent: Element) -> None:
    full = parse_bool(body.get("ReturnFullTimeZoneData"), default=True)
    ids = [n.text or "" for n in body.findall(f"{m('Ids')}/{t('Id')}")] or sorted(timezones.WINDOWS_TO_IANA)
    messages = child(child(parent, m("GetServerTimeZonesResponse")), m("ResponseMessages"))
    tag = m("GetServerTimeZonesResponseMessage")
    unknown = [i for i in ids if i not in timezones.WINDOWS_TO_IANA]
    if unknown:
        response_message(messages, tag, "ErrorTimeZone", f"The time zone isn't valid: {unknown[0]}")
        return
    definitions = child(response_message(messages, tag), m("TimeZoneDefinitions"))
    year = call.now.year
    for ms_id in ids:
        timezone_definition(definitions, ms_id, year, full=full)
