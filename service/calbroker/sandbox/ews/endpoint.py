"""The sandbox's EWS endpoint: ``POST /EWS/Exchange.asmx`` answering as on-premises Exchange SE/2019.

SOAP 1.1 over HTTP; Basic or NTLM credentials of a service account or a mailbox user (``auth``); the
``ExchangeImpersonation`` header with the three Cronofy access levels (``access``); Exchange's
faults and per-item response codes. Operations and the pages they follow:

- ConvertId (exchangelib's version probe): .../web-service-reference/convertid-operation
- GetServerTimeZones: .../web-service-reference/getservertimezones-operation
- GetUserAvailability: .../web-service-reference/getuseravailability-operation (``availability``)
- GetFolder, FindFolder: .../web-service-reference/getfolder-operation, findfolder-operation (``folders``)
- FindItem + CalendarView: .../web-service-reference/finditem-operation and
  .../exchange-web-services/how-to-get-appointments-and-meetings-by-using-ews-in-exchange
- GetItem: .../web-service-reference/getitem-operation-calendar-item
- CreateItem (incl. CancelCalendarItem, Accept/TentativelyAccept/DeclineItem):
  .../web-service-reference/createitem-operation-calendar-item
- UpdateItem: .../web-service-reference/updateitem-operation
- DeleteItem: .../web-service-reference/deleteitem-operation
- ResolveNames, ExpandDL: .../web-service-reference/resolvenames-operation, expanddl-operation
- GetRoomLists / GetRooms: .../web-service-reference/getroomlists-operation, getrooms-operation
- GetUserConfiguration (the calendar's WorkHours): .../web-service-reference/getuserconfiguration-operation
- Subscribe (streaming), GetStreamingEvents, Unsubscribe, SyncFolderItems (``notifications``)

(``...`` = https://learn.microsoft.com/en-us/exchange/client-developer). Fault injection, request
counting and per-(service account, mailbox) throttling use ``SandboxState.checkpoint`` and
``state.throttle`` with route keys ``ews:<Operation>``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from aiohttp import web

from calbroker.sandbox import timezones
from calbroker.sandbox.directory import EwsPrincipal, Mailbox
from calbroker.sandbox.ews.access import Call, impersonate
from calbroker.sandbox.ews.auth import EwsAuthenticator
from calbroker.sandbox.ews.availability import AvailabilityLimits, get_user_availability
from calbroker.sandbox.ews.configuration import get_user_configuration
from calbroker.sandbox.ews.folders import find_folder, get_folder
from calbroker.sandbox.ews.items import TimeContext
from calbroker.sandbox.ews.lookups import expand_dl, get_room_lists, get_rooms, get_server_time_zones, resolve_names
from calbroker.sandbox.ews.notifications import EwsStreams
from calbroker.sandbox.ews.operations import (
    convert_id,
    create_item,
    delete_item,
    find_item,
    get_item,
    update_item,
)
from calbroker.sandbox.ews.soap import (
    Element,
    MalformedRequest,
    ServerVersion,
    SoapFault,
    SoapRequest,
    envelope,
    fault,
    parse_request,
    serialize,
)
from calbroker.sandbox.faults import FaultRule, Throttled
from calbroker.sandbox.state import SandboxState

__all__ = ["EWS_PATH", "EwsEndpoint", "routes"]

EWS_PATH = "/EWS/Exchange.asmx"
_SERVER_BUSY = "The server cannot service this request right now. Try again later."


def _schema_error(exc: Exception) -> SoapFault:
    return SoapFault("ErrorSchemaValidation", f"The request failed schema validation: {exc}")


_Handler = Callable[[Call, Element, Element], None]
_HANDLERS: dict[str, _Handler] = {
    "ConvertId": convert_id,
    "GetServerTimeZones": get_server_time_zones,
    "GetFolder": get_folder,
    "FindItem": find_item,
    "GetItem": get_item,
    "CreateItem": create_item,
    "UpdateItem": update_item,
    "DeleteItem": delete_item,
    "ResolveNames": resolve_names,
    "GetRoomLists": get_room_lists,
    "GetRooms": get_rooms,
    # The folder hierarchy and directory lookups clients send around the item operations.
    "FindFolder": find_folder,
    "ExpandDL": expand_dl,
    "GetUserConfiguration": get_user_configuration,
}
# Answered without the ExchangeImpersonation header by exchangelib (protocol-level services).
_ORGANISATION_WIDE = frozenset(
    {"GetServerTimeZones", "ResolveNames", "GetRoomLists", "GetRooms", "ConvertId", "ExpandDL"}
)


class EwsEndpoint:
    """One aiohttp handler for every EWS operation; reads ``state.directory``/``calendars`` per request."""

    def __init__(
        self,
        state: SandboxState,
        *,
        server_version: ServerVersion | None = None,
        realm: str = "mail.fabrikam.com",
        streams: EwsStreams | None = None,
    ) -> None:
        self.state = state
        self.server_version = server_version or ServerVersion()
        self.realm = realm
        self.auth = EwsAuthenticator(realm)
        self.streams = streams or EwsStreams(state)
        self._handlers: dict[str, _Handler] = {
            **_HANDLERS,
            "Subscribe": self.streams.subscribe,
            "Unsubscribe": self.streams.unsubscribe,
            "SyncFolderItems": self.streams.sync_folder_items,
        }

    # --- HTTP -------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # Any method: IIS authenticates (and challenges) before Exchange sees the request (see auth).
        account = self.auth.authenticate(request, self.state.directory)
        if isinstance(account, web.Response):
            return account
        if request.method != "POST":
            # SOAP 1.1 over HTTP binds requests to POST; what Exchange serves a browser's GET is not modelled.
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        try:
            soap = parse_request(await request.read())
        except MalformedRequest as exc:
            return self._fault(_schema_error(exc))
        route = f"ews:{soap.operation}"
        target = soap.impersonation.value if soap.impersonation else None
        rule = await self.state.checkpoint(route, mailbox=target, client_id=account.username)
        if rule is not None:
            response: web.StreamResponse = self._injected(rule)
        elif soap.operation == "GetStreamingEvents":
            response = await self._stream(request, account, soap)
        else:
            response = await self._answer(account, soap)
        self.state.stats.record_status(route, response.status)
        return response

    async def _stream(self, request: web.Request, account: EwsPrincipal, soap: SoapRequest) -> web.StreamResponse:
        try:
            impersonate(account, soap.impersonation, self.state.directory)
        except SoapFault as exc:
            return self._fault(exc)
        return await self.streams.stream(request, account, soap, self.server_version)

    def _fault(self, exc: SoapFault) -> web.Response:
        body = fault(self.server_version, exc.code, exc.message, exc.values or None)
        return web.Response(status=500, body=body, content_type="text/xml", charset="utf-8")

    def _injected(self, rule: FaultRule) -> web.Response:
        """An injected error as Exchange words it: ``ErrorServerBusy`` + BackOffMilliseconds by default."""
        code = rule.code or "ErrorServerBusy"
        values = {}
        if code == "ErrorServerBusy" and rule.retry_after is not None:
            values["BackOffMilliseconds"] = str(int(rule.retry_after * 1000))
        message = rule.message or (_SERVER_BUSY if code == "ErrorServerBusy" else code)
        return self._fault(SoapFault(code, message, values))

    # --- SOAP -------------------------------------------------------------------------------------

    async def _answer(self, account: EwsPrincipal, soap: SoapRequest) -> web.Response:
        state = self.state
        try:
            acting = impersonate(account, soap.impersonation, state.directory)
            if acting is None or soap.operation in _ORGANISATION_WIDE:
                return self._dispatch(account, soap, acting)
            async with state.throttle.slot(account.username, acting.email):
                return self._dispatch(account, soap, acting)
        except Throttled as exc:
            # EWS throttling: https://learn.microsoft.com/en-us/exchange/client-developer/exchange-web-services/ews-throttling-in-exchange
            return self._fault(
                SoapFault(
                    "ErrorServerBusy",
                    _SERVER_BUSY,
                    {"BackOffMilliseconds": str(int(exc.retry_after * 1000))},
                )
            )
        except SoapFault as exc:
            return self._fault(exc)
        except MalformedRequest as exc:
            return self._fault(_schema_error(exc))

    def _dispatch(self, account: EwsPrincipal, soap: SoapRequest, acting: Mailbox | None) -> web.Response:
        state = self.state
        root, body = envelope(self.server_version)
        try:
            context_zone = timezones.zone(soap.timezone_id) if soap.timezone_id else None
        except timezones.UnknownTimeZone:
            context_zone = None
        call = Call(
            account=account,
            acting=acting,
            directory=state.directory,
            calendars=state.calendars,
            times=TimeContext(context_zone) if context_zone is not None else TimeContext(),
            owa_url=f"https://{self.realm}/owa/",
            now=state.clock(),
        )
        if soap.operation == "GetUserAvailability":
            limits = AvailabilityLimits(
                max_mailboxes=state.settings.ews_max_mailboxes,
                max_window=timedelta(days=state.settings.ews_max_window_days),
            )
            get_user_availability(
                soap.body,
                body,
                account=account,
                directory=state.directory,
                calendars=state.calendars,
                limits=limits,
            )
        else:
            handler = self._handlers.get(soap.operation)
            if handler is None:
                raise SoapFault(
                    "ErrorSchemaValidation",
                    f"The request failed schema validation: the sandbox does not implement {soap.operation}.",
                )
            handler(call, soap.body, body)
        response = web.Response(status=200, body=serialize(root), content_type="text/xml", charset="utf-8")
        if soap.operation == "Subscribe":
            response.set_cookie("X-BackEndOverrideCookie", self.streams.affinity_cookie(call), httponly=True)
        return response


def routes(
    state: SandboxState, *, realm: str = "mail.fabrikam.com", streams: EwsStreams | None = None
) -> list[web.RouteDef]:
    """The EWS route for the sandbox server: ``/EWS/Exchange.asmx`` (every method authenticates; POST answers)."""
    endpoint = EwsEndpoint(state, realm=realm, streams=streams)
    return [web.route("*", EWS_PATH, endpoint.handle)]
