"""EWS change tracking for calendar folders: streaming subscriptions and SyncFolderItems.

- Subscribe with a StreamingSubscriptionRequest
  (https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/subscribe-operation)
  answers a SubscriptionId and, like a mailbox server keeping affinity, an `X-BackEndOverrideCookie`
  (https://learn.microsoft.com/en-us/exchange/client-developer/exchange-web-services/how-to-maintain-affinity-between-group-of-subscriptions-and-mailbox-server).
- GetStreamingEvents
  (https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/getstreamingevents-operation)
  hangs: one SOAP envelope per batch of notifications, then `ConnectionStatus` Closed once
  ConnectionTimeout (1–30 minutes; a sandbox "minute" lasts `ews_stream_minute_s`) has passed.
  Unknown ids — expired, or lost when the EWS process restarts (`/_sandbox/ews/restart`) — answer
  ErrorSubscriptionNotFound; more hanging connections per account than HangingConnectionLimit (10
  on Exchange 2016/2019) answer ErrorExceededConnectionCount
  (https://learn.microsoft.com/exchange/client-developer/exchange-web-services/handling-notification-related-errors-in-ews-in-exchange,
  https://learn.microsoft.com/exchange/client-developer/exchange-web-services/ews-throttling-in-exchange).
  "A single user action often results in multiple notifications… especially true of the Calendar
  folder": a change brings its item event and a FreeBusyChangedEvent.
- Unsubscribe (https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/unsubscribe-operation).
- SyncFolderItems
  (https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/syncfolderitems-operation):
  the folder's items (single items and recurring masters — occurrences are not folder items)
  created, updated or deleted since a SyncState, at most MaxChangesReturned per call, never more
  than 512 (https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/maxchangesreturned);
  a state the server no longer accepts answers ErrorInvalidSyncStateData (`/_sandbox/ews/sync/expire`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from calbroker.sandbox.directory import EwsPrincipal
from calbroker.sandbox.events import Change, ChangeType
from calbroker.sandbox.ews.access import Call, ItemError
from calbroker.sandbox.ews.folders import resolve_folder
from calbroker.sandbox.ews.items import FOLDER_CHANGE_KEY, folder_id, item_id
from calbroker.sandbox.ews.render import RenderContext, Shape, render_calendar_item
from calbroker.sandbox.ews.soap import (
    Element,
    MalformedRequest,
    ServerVersion,
    SoapRequest,
    child,
    envelope,
    find_text,
    format_datetime,
    m,
    response_message,
    serialize,
    t,
)
from calbroker.sandbox.state import SandboxState

__all__ = ["EwsStreams"]

_EVENT_TYPES = {
    ChangeType.CREATED: "CreatedEvent",
    ChangeType.UPDATED: "ModifiedEvent",
    ChangeType.DELETED: "DeletedEvent",
}
_MAX_CHANGES = 512
_NOT_FOUND = "The specified subscription was not found."
_BAD_STATE = "Synchronization state data is corrupt or otherwise invalid."


@dataclass(slots=True)
class StreamSubscription:
    id: str
    mailbox: str
    account: str
    event_types: frozenset[str]
    pending: list[tuple[str, str, datetime]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class EwsStreams:
    """Streaming subscriptions and sync states of the sandbox's Exchange, fed by calendar changes."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.subscriptions: dict[str, StreamSubscription] = {}
        self.hanging: Counter[str] = Counter()
        self._watermark = 0
        self._restarts = 0
        self._sync_generation = 0
        self._closing: asyncio.Event = asyncio.Event()
        state.add_calendar_listener(self._on_change)
        state.on_reset(self._reset)

    # --- control plane ---------------------------------------------------------------------------------

    def _reset(self) -> None:
        self.restart()

    def restart(self) -> int:
        """The EWS process restarts: every subscription is lost, every open stream closes."""
        dropped = len(self.subscriptions)
        self.subscriptions.clear()
        self._restarts += 1
        self._closing.set()
        self._closing = asyncio.Event()
        return dropped

    def expire_sync_states(self) -> None:
        self._sync_generation += 1

    # --- notifications -----------------------------------------------------------------------------------

    def _on_change(self, change: Change) -> None:
        for sub in self.subscriptions.values():
            if sub.mailbox != change.mailbox:
                continue
            for kind in (_EVENT_TYPES[change.change_type], "FreeBusyChangedEvent"):
                if kind in sub.event_types:
                    sub.pending.append((kind, change.event_id, change.at))
            if sub.pending:
                sub.wake.set()

    def subscribe(self, call: Call, body: Element, parent: Element) -> None:
        messages = child(child(parent, m("SubscribeResponse")), m("ResponseMessages"))
        tag = m("SubscribeResponseMessage")
        request = body.find(m("StreamingSubscriptionRequest"))
        if request is None:
            raise MalformedRequest("the sandbox only offers streaming subscriptions")
        try:
            if request.get("SubscribeToAllFolders") in ("true", "1"):
                mailbox = call.mailbox(None).email
            else:
                refs = list(request.find(t("FolderIds")) or ())
                if not refs:
                    raise MalformedRequest("FolderIds is required")
                mailbox, _ = resolve_folder(call, refs[0])
        except ItemError as exc:
            response_message(messages, tag, exc.code, exc.text)
            return
        kinds = frozenset((e.text or "").strip() for e in request.iterfind(f"{t('EventTypes')}/{t('EventType')}"))
        sub = StreamSubscription(str(uuid.uuid4()), mailbox, call.account.username, kinds)
        self.subscriptions[sub.id] = sub
        child(response_message(messages, tag), m("SubscriptionId"), base64.b64encode(sub.id.encode()).decode())

    def affinity_cookie(self, call: Call) -> str:
        """The backend a mailbox lives on, as Exchange names it in X-BackEndOverrideCookie."""
        anchor = call.acting.email if call.acting else call.account.username
        return hashlib.sha256(f"backend|{call.account.tenant_id}|{anchor}".encode()).hexdigest()[:32]

    def unsubscribe(self, call: Call, body: Element, parent: Element) -> None:
        messages = child(child(parent, m("UnsubscribeResponse")), m("ResponseMessages"))
        tag = m("UnsubscribeResponseMessage")
        sub = self._find(find_text(body, m("SubscriptionId")) or "", call.account)
        if sub is None:
            response_message(messages, tag, "ErrorSubscriptionNotFound", _NOT_FOUND)
            return
        del self.subscriptions[sub.id]
        response_message(messages, tag)

    def _find(self, raw: str, account: EwsPrincipal) -> StreamSubscription | None:
        try:
            sub_id = base64.b64decode(raw.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        sub = self.subscriptions.get(sub_id)
        return sub if sub is not None and sub.account == account.username else None

    async def stream(
        self, request: web.Request, account: EwsPrincipal, soap: SoapRequest, version: ServerVersion
    ) -> web.StreamResponse:
        """GetStreamingEvents: hold the connection, send notifications as they happen, close at the timeout."""
        settings = self.state.settings
        raw_ids = [(e.text or "") for e in soap.body.iterfind(f"{m('SubscriptionIds')}/{t('SubscriptionId')}")]
        try:
            minutes = int(find_text(soap.body, m("ConnectionTimeout")) or "")
        except ValueError:
            minutes = 0
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/xml; charset=utf-8"})
        response.enable_chunked_encoding()
        subs = [self._find(raw, account) for raw in raw_ids]
        missing = [raw for raw, sub in zip(raw_ids, subs, strict=True) if sub is None]
        if not 1 <= minutes <= 30:
            return await self._once(request, response, version, ("ErrorInvalidRequest", "ConnectionTimeout is 1-30."))
        if missing or not raw_ids:
            return await self._once(request, response, version, ("ErrorSubscriptionNotFound", _NOT_FOUND), missing)
        if self.hanging[account.username] >= settings.ews_hanging_connection_limit:
            return await self._once(
                request,
                response,
                version,
                (
                    "ErrorExceededConnectionCount",
                    "You have exceeded the available concurrent connections for your account.  Try again once "
                    "your other requests have completed.",
                ),
            )
        live = [sub for sub in subs if sub is not None]
        closing = self._closing
        deadline = asyncio.get_running_loop().time() + minutes * settings.ews_stream_minute_s
        self.hanging[account.username] += 1
        try:
            await response.prepare(request)
            await response.write(self._envelope(version, "OK"))
            while not closing.is_set():
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                waiters = [asyncio.ensure_future(sub.wake.wait()) for sub in live]
                waiters.append(asyncio.ensure_future(closing.wait()))
                try:
                    await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
                batch = [(sub, list(sub.pending)) for sub in live if sub.pending]
                for sub, _ in batch:
                    sub.pending.clear()
                    sub.wake.clear()
                if batch and not closing.is_set():
                    await response.write(self._envelope(version, None, batch))
            await response.write(self._envelope(version, "Closed"))
            await response.write_eof()
        finally:
            self.hanging[account.username] -= 1
        return response

    async def _once(
        self,
        request: web.Request,
        response: web.StreamResponse,
        version: ServerVersion,
        error: tuple[str, str],
        ids: list[str] | None = None,
    ) -> web.StreamResponse:
        code, text = error
        root, body = envelope(version)
        messages = child(child(body, m("GetStreamingEventsResponse")), m("ResponseMessages"))
        message = response_message(messages, m("GetStreamingEventsResponseMessage"), code, text)
        if ids:
            container = child(message, m("ErrorSubscriptionIds"))
            for raw in ids:
                child(container, m("SubscriptionId"), raw)
        await response.prepare(request)
        await response.write(serialize(root))
        await response.write_eof()
        return response

    def _envelope(
        self,
        version: ServerVersion,
        status: str | None,
        batch: list[tuple[StreamSubscription, list[tuple[str, str, datetime]]]] | None = None,
    ) -> bytes:
        root, body = envelope(version)
        messages = child(child(body, m("GetStreamingEventsResponse")), m("ResponseMessages"))
        message = response_message(messages, m("GetStreamingEventsResponseMessage"))
        if batch:
            notifications = child(message, m("Notifications"))
            for sub, events in batch:
                node = child(notifications, m("Notification"))
                child(node, t("SubscriptionId"), base64.b64encode(sub.id.encode()).decode())
                for kind, event_id, at in events:
                    self._watermark += 1
                    event = child(node, t(kind))
                    child(event, t("Watermark"), base64.b64encode(f"wm{self._watermark}".encode()).decode())
                    child(event, t("TimeStamp"), format_datetime(at.astimezone(UTC)))
                    child(event, t("ItemId"), Id=item_id(sub.mailbox, event_id), ChangeKey="AAAA")
                    folder = folder_id(sub.mailbox, "calendar")
                    child(event, t("ParentFolderId"), Id=folder, ChangeKey=FOLDER_CHANGE_KEY)
        if status is not None:
            child(message, m("ConnectionStatus"), status)
        return serialize(root)

    # --- SyncFolderItems -----------------------------------------------------------------------------

    def sync_folder_items(self, call: Call, body: Element, parent: Element) -> None:
        messages = child(child(parent, m("SyncFolderItemsResponse")), m("ResponseMessages"))
        tag = m("SyncFolderItemsResponseMessage")
        shape = Shape.from_xml(body.find(m("ItemShape")))
        ref = body.find(f"{m('SyncFolderId')}/*")
        if ref is None:
            raise MalformedRequest("SyncFolderId is required")
        try:
            wanted = int(find_text(body, m("MaxChangesReturned")) or "0")
        except ValueError:
            raise MalformedRequest("MaxChangesReturned must be a number") from None
        if wanted < 1:
            raise MalformedRequest("MaxChangesReturned must be 1-512")
        limit = min(wanted, _MAX_CHANGES, self.state.settings.ews_sync_max_changes)
        try:
            mailbox, folder = resolve_folder(call, ref)
            cursor = self._read_state(find_text(body, m("SyncState")), mailbox)
        except ItemError as exc:
            # The message keeps its schema's SyncState and IncludesLastItemInRange (empty) even on error
            # (https://learn.microsoft.com/exchange/client-developer/web-service-reference/syncfolderitemsresponsemessage).
            failed = response_message(messages, tag, exc.code, exc.text)
            child(failed, m("SyncState"))
            child(failed, m("IncludesLastItemInRange"), "true")
            return
        changes, next_state, last = self._changes(mailbox, folder, cursor, limit)
        message = response_message(messages, tag)
        child(message, m("SyncState"), next_state)
        child(message, m("IncludesLastItemInRange"), "true" if last else "false")
        container = child(message, m("Changes"))
        ctx = RenderContext(call.directory, call.owa_url)
        for kind, event_id in changes:
            node = child(container, t(kind))
            event = call.calendars.get(mailbox, event_id) if kind != "Delete" else None
            if event is None:
                child(node, t("ItemId"), Id=item_id(mailbox, event_id), ChangeKey="AAAA")
            else:
                render_calendar_item(node, event, shape, ctx)

    def _read_state(self, raw: str | None, mailbox: str) -> dict[str, Any] | None:
        if not raw:
            return None
        try:
            state = json.loads(base64.b64decode(raw, validate=True))
        except (binascii.Error, ValueError):
            raise ItemError("ErrorInvalidSyncStateData", _BAD_STATE) from None
        if not isinstance(state, dict) or state.get("m") != mailbox or state.get("g") != self._sync_generation:
            raise ItemError("ErrorInvalidSyncStateData", _BAD_STATE)
        return state

    def _state(self, mailbox: str, sequence: int, offset: int | None) -> str:
        raw = {"g": self._sync_generation, "m": mailbox, "s": sequence, "o": offset}
        return base64.b64encode(json.dumps(raw, separators=(",", ":")).encode()).decode()

    def _changes(
        self, mailbox: str, folder: str, cursor: dict[str, Any] | None, limit: int
    ) -> tuple[list[tuple[str, str]], str, bool]:
        calendars = self.state.calendars
        if folder != "calendar":
            return [], self._state(mailbox, calendars.sequence, None), True
        if cursor is None or cursor.get("o") is not None:
            # The first synchronisation: every item, a page at a time, then changes since it began.
            began = calendars.sequence if cursor is None else int(cursor["s"])
            offset = 0 if cursor is None else int(cursor["o"])
            items = sorted(e.id for e in calendars.events(mailbox))
            page = items[offset : offset + limit]
            if offset + limit < len(items):
                return [("Create", i) for i in page], self._state(mailbox, began, offset + limit), False
            return [("Create", i) for i in page], self._state(mailbox, began, None), True
        since = int(cursor["s"])
        first: dict[str, ChangeType] = {}
        latest: dict[str, int] = {}
        for change in calendars.changes_since(mailbox, since):
            first.setdefault(change.event_id, change.change_type)
            latest[change.event_id] = change.sequence
        ordered = sorted(latest, key=lambda i: latest[i])
        page = ordered[:limit]
        found: list[tuple[str, str]] = []
        for event_id in page:
            exists = calendars.get(mailbox, event_id) is not None
            if first[event_id] is ChangeType.CREATED:
                if exists:
                    found.append(("Create", event_id))
            else:
                found.append(("Update" if exists else "Delete", event_id))
        if len(ordered) > limit:
            return found, self._state(mailbox, latest[page[-1]], None), False
        return found, self._state(mailbox, calendars.sequence, None), True
