"""Calendar-item operations: FindItem, GetItem, CreateItem, UpdateItem, DeleteItem and ConvertId.
Each answers one ResponseMessage per requested folder or item (folders themselves: ``folders``).

- FindItem / CalendarView: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/finditem-operation,
  https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/calendarview
- GetItem: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/getitem-operation-calendar-item
- CreateItem: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/createitem-operation-calendar-item
- UpdateItem: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/updateitem-operation
- DeleteItem: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/deleteitem-operation
- ConvertId: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/convertid-operation
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta

from calbroker.sandbox.events import CalendarError, Event, Response
from calbroker.sandbox.ews.access import Call, ItemError
from calbroker.sandbox.ews.folders import folder_refs, is_calendar_folder, resolve_folder, store_calendar
from calbroker.sandbox.ews.items import (
    InvalidId,
    UnsupportedUpdate,
    changes_from_updates,
    draft_from_xml,
    item_id,
    parse_item_id,
)
from calbroker.sandbox.ews.render import RenderContext, Shape, render_calendar_item
from calbroker.sandbox.ews.restrictions import compile_restriction
from calbroker.sandbox.ews.soap import (
    XSI_NS,
    Element,
    MalformedRequest,
    child,
    find_text,
    local_name,
    m,
    response_message,
    t,
    xml_bool,
)

_NOT_FOUND = "The specified object was not found in the store."
_MALFORMED_ID = "Id is malformed."


def _render_ctx(call: Call) -> RenderContext:
    return RenderContext(call.directory, call.owa_url)


def _error(parent: Element, tag: str, exc: ItemError) -> None:
    response_message(parent, tag, exc.code, exc.text)


def _store_error(exc: CalendarError) -> ItemError:
    codes = {
        "ErrorInvalidUser": "ErrorNonExistentMailbox",
        "ErrorInvalidProperty": "ErrorInvalidPropertySet",
        "ErrorInvalidRequest": "ErrorCalendarEndDateIsEarlierThanStartDate",
    }
    return ItemError(codes.get(exc.code, exc.code), exc.message)


# --- FindItem -----------------------------------------------------------------------------------


def find_item(call: Call, body: Element, parent: Element) -> None:
    shape = Shape.from_xml(body.find(m("ItemShape")), in_find=True)
    view = body.find(m("CalendarView"))
    paged = body.find(m("IndexedPageItemView"))
    restriction = compile_restriction(body.find(m("Restriction")))
    messages = child(child(parent, m("FindItemResponse")), m("ResponseMessages"))
    for ref in folder_refs(body.find(m("ParentFolderIds"))):
        tag = m("FindItemResponseMessage")
        try:
            mailbox, key = resolve_folder(call, ref)
            if view is not None and not is_calendar_folder(call, mailbox, key):
                raise ItemError(
                    "ErrorCalendarFolderIsInvalidForCalendarView",
                    "CalendarView can only be used on calendar folders.",
                )
            items = _find(call, mailbox, key, view)
            if restriction is not None:
                items = [event for event in items if restriction(event)]
        except ItemError as exc:
            _error(messages, tag, exc)
            continue
        offset, limit = 0, len(items)
        if view is not None and view.get("MaxEntriesReturned"):
            limit = int(view.get("MaxEntriesReturned") or "0")
        elif paged is not None:
            offset = int(paged.get("Offset") or "0")
            limit = int(paged.get("MaxEntriesReturned") or str(len(items)))
        page = items[offset : offset + limit]
        last = offset + len(page) >= len(items)
        root = child(response_message(messages, tag), m("RootFolder"))
        if paged is not None:
            root.set("IndexedPagingOffset", str(offset + len(page)))
        root.set("TotalItemsInView", str(len(items)))
        root.set("IncludesLastItemInRange", xml_bool(last))
        container = child(root, t("Items"))
        ctx = _render_ctx(call)
        for event in page:
            render_calendar_item(container, event, shape, ctx)


def _find(call: Call, mailbox: str, folder: str, view: Element | None) -> list[Event]:
    if not is_calendar_folder(call, mailbox, folder):
        return []  # the sandbox models calendars only; other folders are empty
    calendar_id = store_calendar(folder)
    if view is None:
        # A plain FindItem lists every stored item (masters, singles); `find_item` then applies the
        # restrictions ews_restrictions models.
        return call.calendars.events(mailbox, calendar_id=calendar_id)
    start = call.times.aware(view.get("StartDate") or "")
    end = call.times.aware(view.get("EndDate") or "")
    if end < start:
        raise ItemError("ErrorCalendarEndDateIsEarlierThanStartDate", "EndDate is earlier than StartDate")
    return call.calendars.occurrences(mailbox, start, end, calendar_id=calendar_id)


# --- item references ------------------------------------------------------------------------------


def _event(call: Call, ref: Element) -> Event:
    """The store event an ItemId / OccurrenceItemId / RecurringMasterItemId names, access checked."""
    kind = local_name(ref.tag)
    try:
        if kind == "OccurrenceItemId":
            mailbox, event_id = parse_item_id(ref.get("RecurringMasterId") or "")
        elif kind == "RecurringMasterItemId":
            mailbox, event_id = parse_item_id(ref.get("OccurrenceId") or "")
        else:
            mailbox, event_id = parse_item_id(ref.get("Id") or "")
    except InvalidId:
        raise ItemError("ErrorInvalidIdMalformed", _MALFORMED_ID) from None
    owner = call.mailbox(mailbox)
    call.open_folder("calendar")
    event = call.calendars.get(owner.email, event_id)
    if event is None:
        raise ItemError("ErrorItemNotFound", _NOT_FOUND)
    if kind == "RecurringMasterItemId":
        master = call.calendars.get(owner.email, event.series_master_id or event.id)
        if master is None:
            raise ItemError("ErrorItemNotFound", _NOT_FOUND)
        return master
    if kind == "OccurrenceItemId":
        index = int(ref.get("InstanceIndex") or "1")
        horizon = event.start + timedelta(days=5 * 366)
        instances = [
            e for e in call.calendars.occurrences(owner.email, event.start, horizon) if e.series_master_id == event.id
        ]
        if not 1 <= index <= len(instances):
            raise ItemError("ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange", "Occurrence index is out of range.")
        return instances[index - 1]
    return event


def _item_refs(container: Element | None) -> Iterator[Element]:
    if container is None or len(container) == 0:
        raise MalformedRequest("At least one item id is required")
    yield from container


def _item_id_only(parent: Element, event: Event) -> None:
    node = child(child(parent, m("Items")), t("CalendarItem"))
    child(node, t("ItemId"), Id=item_id(event.mailbox, event.id), ChangeKey=event.change_key)


# --- GetItem ------------------------------------------------------------------------------------


def get_item(call: Call, body: Element, parent: Element) -> None:
    shape = Shape.from_xml(body.find(m("ItemShape")))
    messages = child(child(parent, m("GetItemResponse")), m("ResponseMessages"))
    ctx = _render_ctx(call)
    for ref in _item_refs(body.find(m("ItemIds"))):
        tag = m("GetItemResponseMessage")
        try:
            event = _event(call, ref)
        except ItemError as exc:
            _error(messages, tag, exc)
            continue
        render_calendar_item(child(response_message(messages, tag), m("Items")), event, shape, ctx)


# --- CreateItem ---------------------------------------------------------------------------------

_RESPONSES = {
    "AcceptItem": Response.ACCEPTED,
    "TentativelyAcceptItem": Response.TENTATIVELY_ACCEPTED,
    "DeclineItem": Response.DECLINED,
}


def create_item(call: Call, body: Element, parent: Element) -> None:
    """Calendar items (meetings are sent to attendees by the store) and meeting response objects.

    The store always sends invitations and cancellations, whatever SendMeetingInvitations says.
    """
    messages = child(child(parent, m("CreateItemResponse")), m("ResponseMessages"))
    saved_in = body.find(f"{m('SavedItemFolderId')}/*")
    items = body.find(m("Items"))
    for item in _item_refs(items):
        tag = m("CreateItemResponseMessage")
        kind = local_name(item.tag)
        try:
            if kind == "CalendarItem":
                event = _create_calendar_item(call, item, saved_in)
                _item_id_only(response_message(messages, tag), event)
            elif kind in ("CancelCalendarItem", *_RESPONSES):
                _item_id_only(response_message(messages, tag), _respond(call, item, kind, saved_in))
            else:
                raise ItemError("ErrorInvalidItemForOperationCreateItem", f"{kind} cannot be created here.")
        except ItemError as exc:
            _error(messages, tag, exc)


def _create_calendar_item(call: Call, item: Element, saved_in: Element | None) -> Event:
    folder = "calendar"
    if saved_in is not None:
        mailbox, folder = resolve_folder(call, saved_in)
        if not is_calendar_folder(call, mailbox, folder):
            # ResponseCode: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/responsecode
            raise ItemError(
                "ErrorCannotCreateCalendarItemInNonCalendarFolder",
                "Calendar items can only be created in calendar folders.",
            )
    else:
        mailbox = call.mailbox(None).email
        call.open_folder("calendar")
    owner = call.mailbox(mailbox)
    call.may_write(owner)
    draft = draft_from_xml(item, call.times)
    if draft.end < draft.start:
        raise ItemError("ErrorCalendarEndDateIsEarlierThanStartDate", "EndDate is earlier than StartDate")
    try:
        return call.calendars.create(owner.email, draft, calendar_id=store_calendar(folder))
    except CalendarError as exc:
        raise _store_error(exc) from exc


def _respond(call: Call, item: Element, kind: str, saved_in: Element | None) -> Event:
    """Send a meeting cancellation or response; the calendar item it acted on, as Exchange names it.

    Exchange answers the CreateItem with that calendar item's id: "The following example shows the
    XML that is returned in response to a CreateItem operation request used to delete a meeting"
    (``<m:Items><t:CalendarItem><t:ItemId/></t:CalendarItem></m:Items>``,
    https://learn.microsoft.com/en-us/exchange/client-developer/exchange-web-services/how-to-delete-appointments-and-cancel-meetings-by-using-ews-in-exchange),
    and the same for a meeting response (how-to-propose-a-new-meeting-time-by-using-ews-in-exchange).
    A cancelled or declined item moves to Deleted Items, which gives it a new change key.
    """
    if saved_in is not None:
        resolve_folder(call, saved_in)
    else:
        call.open_folder("sentitems")
    ref = item.find(t("ReferenceItemId"))
    if ref is None:
        raise MalformedRequest(f"{kind} needs a ReferenceItemId")
    event = _event(call, ref)
    owner = call.mailbox(event.mailbox)
    call.may_write(owner)
    try:
        if kind == "CancelCalendarItem":
            call.calendars.cancel(owner.email, event.id, find_text(item, t("Body")) or "")
            return dataclasses.replace(event, version=event.version + 1)
        answered = call.calendars.respond(owner.email, event.id, _RESPONSES[kind])
    except CalendarError as exc:
        raise _store_error(exc) from exc
    if answered.response is Response.DECLINED:
        return dataclasses.replace(answered, version=answered.version + 1)
    return answered


# --- UpdateItem ---------------------------------------------------------------------------------


def update_item(call: Call, body: Element, parent: Element) -> None:
    """SetItemField/DeleteItemField per ItemChange; a stale ChangeKey fails only under NeverOverwrite
    (AutoResolve and AlwaysOverwrite apply the change). The organizer's changes always reach the
    attendees' copies, whatever SendMeetingInvitationsOrCancellations says."""
    conflict = body.get("ConflictResolution") or "AutoResolve"
    messages = child(child(parent, m("UpdateItemResponse")), m("ResponseMessages"))
    for change in _item_refs(body.find(m("ItemChanges"))):
        tag = m("UpdateItemResponseMessage")
        ref = next((c for c in change if local_name(c.tag).endswith("Id")), None)
        updates = change.find(t("Updates"))
        try:
            if ref is None or updates is None:
                raise MalformedRequest("ItemChange needs an item id and Updates")
            event = _event(call, ref)
            owner = call.mailbox(event.mailbox)
            call.may_write(owner)
            stale = ref.get("ChangeKey") not in (None, event.change_key)
            if stale and conflict == "NeverOverwrite":
                raise ItemError(
                    "ErrorIrresolvableConflict",
                    "The send or update operation could not be performed because the change key passed in "
                    "the request does not match the current change key for the item.",
                )
            try:
                changes = changes_from_updates(updates, event, call.times)
            except UnsupportedUpdate as exc:
                raise ItemError("ErrorInvalidPropertySet", f"The property {exc} cannot be updated.") from exc
            try:
                updated = call.calendars.update(owner.email, event.id, changes) if changes else event
            except CalendarError as exc:
                raise _store_error(exc) from exc
        except ItemError as exc:
            _error(messages, tag, exc)
            continue
        message = response_message(messages, tag)
        _item_id_only(message, updated)
        child(child(message, m("ConflictResults")), t("Count"), "0")


# --- DeleteItem ---------------------------------------------------------------------------------


def delete_item(call: Call, body: Element, parent: Element) -> None:
    """HardDelete, SoftDelete and MoveToDeletedItems all remove the item from the calendar; an
    organizer's delete cancels the meeting for its attendees (the store always sends cancellations)."""
    messages = child(child(parent, m("DeleteItemResponse")), m("ResponseMessages"))
    for ref in _item_refs(body.find(m("ItemIds"))):
        tag = m("DeleteItemResponseMessage")
        try:
            event = _event(call, ref)
            owner = call.mailbox(event.mailbox)
            call.may_write(owner)
            try:
                call.calendars.delete(owner.email, event.id)
            except CalendarError as exc:
                raise _store_error(exc) from exc
        except ItemError as exc:
            _error(messages, tag, exc)
            continue
        response_message(messages, tag)


# --- ConvertId ----------------------------------------------------------------------------------


def convert_id(call: Call, body: Element, parent: Element) -> None:
    """Ids are converted between the EWS (base64) and entry-id (hex) forms; exchangelib's version
    probe sends ``Id="DUMMY"`` and only reads the ServerVersionInfo header of the error it gets."""
    destination = body.get("DestinationFormat") or "EwsId"
    messages = child(child(parent, m("ConvertIdResponse")), m("ResponseMessages"))
    for source in body.findall(f"{m('SourceIds')}/{t('AlternateId')}"):
        tag = m("ConvertIdResponseMessage")
        raw = source.get("Id") or ""
        try:
            ews_id = bytes.fromhex(raw).decode() if source.get("Format") in ("HexEntryId", "EntryId") else raw
            mailbox, _ = parse_item_id(ews_id)
        except (InvalidId, ValueError, UnicodeDecodeError):
            response_message(messages, tag, "ErrorInvalidIdMalformed", _MALFORMED_ID)
            continue
        converted = ews_id.encode().hex().upper() if destination in ("HexEntryId", "EntryId") else ews_id
        message = response_message(messages, tag)
        child(
            message,
            m("AlternateId"),
            Format=destination,
            Id=converted,
            Mailbox=mailbox,
            **{f"{{{XSI_NS}}}type": "t:AlternateIdType"},
        )
