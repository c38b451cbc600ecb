"""Exchange's Autodiscover service: where a mailbox's EWS endpoint is, from its email address.

Two doors, both authenticated like EWS (Basic or NTLM of a service account or mailbox user):

- POX, ``POST /autodiscover/autodiscover.xml`` ([MS-OXDSCLI]; request and response:
  https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/pox-autodiscover-request-for-exchange,
  https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/pox-autodiscover-response-for-exchange):
  ``Account/Action`` is ``settings`` with ``Protocol`` entries of ``Type`` EXCH and EXPR carrying
  ``EwsUrl``; an unknown address answers ``Response/Error`` with ErrorCode 500 ("The email address
  cannot be found", [MS-OXDSCLI] 2.2.4.1.1.3.2,
  https://learn.microsoft.com/en-us/openspecs/exchange_server_protocols/ms-oxdscli/713ef4f4-83b2-4375-9d64-60c97ee5b166),
  a malformed request 600, an unsupported AcceptableResponseSchema 601.
- SOAP, ``POST /autodiscover/autodiscover.svc`` ([MS-OXWSADISC] GetUserSettings,
  https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/getusersettings-operation-soap):
  one ``UserResponse`` per requested user with the requested settings that exist ("The response
  contains only the settings that are requested, if they exist"), ``InvalidUser`` for an unknown one
  (ErrorCode values: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/errorcode-soap).

The published examples write ``https://schemas.microsoft.com/...`` namespaces (a rendering bug of the
docs site); the protocols use ``http://``. Route keys for faults and counters: ``autodiscover:pox``
and ``autodiscover:GetUserSettings``.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from datetime import UTC

from aiohttp import web

from calbroker.sandbox.directory import ExchangeLocation, Mailbox
from calbroker.sandbox.ews.auth import EwsAuthenticator
from calbroker.sandbox.ews.endpoint import EWS_PATH
from calbroker.sandbox.ews.soap import SOAP_NS, XSI_NS, MalformedRequest, local_name, parse_xml
from calbroker.sandbox.faults import FaultRule
from calbroker.sandbox.state import SandboxState

__all__ = ["POX_PATH", "SOAP_PATH", "routes"]

POX_PATH = "/autodiscover/autodiscover.xml"
SOAP_PATH = "/autodiscover/autodiscover.svc"
POX_REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
POX_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
POX_OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
ADISC_NS = "http://schemas.microsoft.com/exchange/2010/Autodiscover"
WSA_NS = "http://www.w3.org/2005/08/addressing"
_ACTION = "http://schemas.microsoft.com/exchange/2010/Autodiscover/Autodiscover/GetUserSettingsResponse"
_SCHEMAS = "Exchange2007, Exchange2007_SP1, Exchange2010, Exchange2010_SP1, Exchange2010_SP2, Exchange2013, "
_SCHEMAS += "Exchange2013_SP1, Exchange2016"
_CAS_VERSION = "15.02.2562.017"  # Exchange Server SE RTM, as the EWS endpoint's ServerVersionInfo says
_DEPLOYMENT = "5a3d1b2c-8e4f-4c6a-9b7d-2f1e0c9a8b7d"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    elem = ET.SubElement(parent, tag, attrs)
    if text is not None:
        elem.text = text
    return elem


def _xml(root: ET.Element) -> bytes:
    raw: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return raw


class Autodiscover:
    """The POX and SOAP Autodiscover endpoints of the sandbox's on-premises Exchange organisation."""

    def __init__(self, state: SandboxState, *, realm: str = "mail.fabrikam.com") -> None:
        self.state = state
        self.realm = realm
        self.auth = EwsAuthenticator(realm)

    def _mailbox(self, address: str) -> Mailbox | None:
        """A mailbox this organisation's Exchange serves (on-premises tenants), by any address."""
        mailbox = self.state.directory.mailbox(address)
        if mailbox is None or self.state.directory.tenant_of(mailbox).exchange is not ExchangeLocation.ON_PREMISES:
            return None
        return mailbox

    @property
    def ews_url(self) -> str:
        return self.state.base_url + EWS_PATH

    async def _gate(self, request: web.Request, route: str) -> web.StreamResponse | None:
        """Authentication, then injected faults: the response to send instead, or None to answer."""
        principal = self.auth.authenticate(request, self.state.directory)
        if isinstance(principal, web.Response):
            return principal
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        rule = await self.state.checkpoint(route, client_id=principal.username)
        if rule is not None:
            return self._injected(rule)
        return None

    @staticmethod
    def _injected(rule: FaultRule) -> web.Response:
        headers = {"Retry-After": str(round(rule.retry_after))} if rule.retry_after is not None else {}
        return web.Response(status=rule.status or 503, text=rule.message or "Service Unavailable", headers=headers)

    # --- POX ----------------------------------------------------------------------------------

    async def pox(self, request: web.Request) -> web.StreamResponse:
        refused = await self._gate(request, "autodiscover:pox")
        if refused is not None:
            return refused
        try:
            body = parse_xml(await request.read())
            address = body.findtext(f"{{{POX_REQUEST_NS}}}Request/{{{POX_REQUEST_NS}}}EMailAddress")
            schema = body.findtext(f"{{{POX_REQUEST_NS}}}Request/{{{POX_REQUEST_NS}}}AcceptableResponseSchema")
            if body.tag != f"{{{POX_REQUEST_NS}}}Autodiscover" or not address:
                raise MalformedRequest("not an Outlook Autodiscover request")
        except MalformedRequest:
            return self._pox_error(600, "Invalid Request")
        if (schema or "").strip() != POX_OUTLOOK_NS:
            return self._pox_error(601, "The requested schema version is not supported")
        mailbox = self._mailbox(address.strip())
        if mailbox is None:
            return self._pox_error(500, "The e-mail address cannot be found.")
        root = ET.Element(f"{{{POX_RESPONSE_NS}}}Autodiscover")
        response = _sub(root, f"{{{POX_OUTLOOK_NS}}}Response")
        user = _sub(response, f"{{{POX_OUTLOOK_NS}}}User")
        _sub(user, f"{{{POX_OUTLOOK_NS}}}DisplayName", mailbox.display_name)
        _sub(user, f"{{{POX_OUTLOOK_NS}}}LegacyDN", mailbox.legacy_exchange_dn)
        _sub(user, f"{{{POX_OUTLOOK_NS}}}AutoDiscoverSMTPAddress", mailbox.email)
        _sub(user, f"{{{POX_OUTLOOK_NS}}}DeploymentId", _DEPLOYMENT)
        account = _sub(response, f"{{{POX_OUTLOOK_NS}}}Account")
        _sub(account, f"{{{POX_OUTLOOK_NS}}}AccountType", "email")
        _sub(account, f"{{{POX_OUTLOOK_NS}}}Action", "settings")
        _sub(account, f"{{{POX_OUTLOOK_NS}}}MicrosoftOnline", "False")
        for kind, server in (("EXCH", self._server_guid(mailbox)), ("EXPR", self.realm)):
            protocol = _sub(account, f"{{{POX_OUTLOOK_NS}}}Protocol")
            _sub(protocol, f"{{{POX_OUTLOOK_NS}}}Type", kind)
            _sub(protocol, f"{{{POX_OUTLOOK_NS}}}Server", server)
            _sub(protocol, f"{{{POX_OUTLOOK_NS}}}ASUrl", self.ews_url)
            _sub(protocol, f"{{{POX_OUTLOOK_NS}}}EwsUrl", self.ews_url)
            _sub(protocol, f"{{{POX_OUTLOOK_NS}}}OOFUrl", self.ews_url)
        return web.Response(body=_xml(root), content_type="text/xml", charset="utf-8")

    def _server_guid(self, mailbox: Mailbox) -> str:
        return f"{mailbox.id}@{mailbox.email.partition('@')[2]}"

    def _pox_error(self, code: int, message: str) -> web.Response:
        now = self.state.clock().astimezone(UTC)
        root = ET.Element(f"{{{POX_RESPONSE_NS}}}Autodiscover")
        response = _sub(root, f"{{{POX_RESPONSE_NS}}}Response")
        stamp = hashlib.sha256(self.realm.encode()).hexdigest()
        error = _sub(
            response, f"{{{POX_RESPONSE_NS}}}Error", Time=now.strftime("%H:%M:%S.%f"), Id=str(int(stamp[:8], 16))
        )
        _sub(error, f"{{{POX_RESPONSE_NS}}}ErrorCode", str(code))
        _sub(error, f"{{{POX_RESPONSE_NS}}}Message", message)
        _sub(error, f"{{{POX_RESPONSE_NS}}}DebugData")
        return web.Response(body=_xml(root), content_type="text/xml", charset="utf-8")

    # --- SOAP ---------------------------------------------------------------------------------

    async def soap(self, request: web.Request) -> web.StreamResponse:
        refused = await self._gate(request, "autodiscover:GetUserSettings")
        if refused is not None:
            return refused
        try:
            envelope = parse_xml(await request.read())
            operation = envelope.find(f"{{{SOAP_NS}}}Body/*")
            if operation is None or local_name(operation.tag) != "GetUserSettingsRequestMessage":
                raise MalformedRequest("only GetUserSettings is served")
        except MalformedRequest as exc:
            return self._soap_response("InvalidRequest", str(exc), [])
        users = [
            (u.text or "").strip()
            for u in operation.findall(f".//{{{ADISC_NS}}}Users/{{{ADISC_NS}}}User/{{{ADISC_NS}}}Mailbox")
        ]
        wanted = [(s.text or "").strip() for s in operation.findall(f".//{{{ADISC_NS}}}RequestedSettings/*")]
        if not users:
            return self._soap_response("InvalidRequest", "The request has no users.", [])
        return self._soap_response("NoError", "", [(address, self._mailbox(address), wanted) for address in users])

    def _settings(self, mailbox: Mailbox) -> dict[str, str]:
        return {
            "UserDisplayName": mailbox.display_name,
            "UserDN": mailbox.legacy_exchange_dn,
            "UserDeploymentId": _DEPLOYMENT,
            "AutoDiscoverSMTPAddress": mailbox.email,
            "InternalEwsUrl": self.ews_url,
            "ExternalEwsUrl": self.ews_url,
            "EwsSupportedSchemas": _SCHEMAS,
            "CasVersion": _CAS_VERSION,
            "InternalMailboxServer": self.realm,
            "ExternalMailboxServer": self.realm,
            "ActiveDirectoryServer": f"dc.{self.realm.partition('.')[2]}",
        }

    def _soap_response(
        self, code: str, message: str, users: list[tuple[str, Mailbox | None, list[str]]]
    ) -> web.Response:
        root = ET.Element(f"{{{SOAP_NS}}}Envelope")
        header = _sub(root, f"{{{SOAP_NS}}}Header")
        _sub(header, f"{{{WSA_NS}}}Action", _ACTION, **{f"{{{SOAP_NS}}}mustUnderstand": "1"})
        version = _sub(header, f"{{{ADISC_NS}}}ServerVersionInfo")
        for name, value in (
            ("MajorVersion", "15"),
            ("MinorVersion", "2"),
            ("MajorBuildNumber", "2562"),
            ("MinorBuildNumber", "17"),
            ("Version", "Exchange2016"),
        ):
            _sub(version, f"{{{ADISC_NS}}}{name}", value)
        body = _sub(root, f"{{{SOAP_NS}}}Body")
        reply = _sub(body, f"{{{ADISC_NS}}}GetUserSettingsResponseMessage")
        response = _sub(reply, f"{{{ADISC_NS}}}Response")
        _sub(response, f"{{{ADISC_NS}}}ErrorCode", code)
        _sub(response, f"{{{ADISC_NS}}}ErrorMessage", message)
        responses = _sub(response, f"{{{ADISC_NS}}}UserResponses")
        for address, mailbox, wanted in users:
            entry = _sub(responses, f"{{{ADISC_NS}}}UserResponse")
            if mailbox is None:
                _sub(entry, f"{{{ADISC_NS}}}ErrorCode", "InvalidUser")
                _sub(entry, f"{{{ADISC_NS}}}ErrorMessage", f"Invalid user: '{address}'")
                _sub(entry, f"{{{ADISC_NS}}}RedirectTarget", **{f"{{{XSI_NS}}}nil": "true"})
                _sub(entry, f"{{{ADISC_NS}}}UserSettingErrors")
                _sub(entry, f"{{{ADISC_NS}}}UserSettings")
                continue
            _sub(entry, f"{{{ADISC_NS}}}ErrorCode", "NoError")
            _sub(entry, f"{{{ADISC_NS}}}ErrorMessage", "No error.")
            _sub(entry, f"{{{ADISC_NS}}}RedirectTarget", **{f"{{{XSI_NS}}}nil": "true"})
            _sub(entry, f"{{{ADISC_NS}}}UserSettingErrors")
            settings = _sub(entry, f"{{{ADISC_NS}}}UserSettings")
            known = self._settings(mailbox)
            for name in wanted:
                if name in known:
                    setting = _sub(settings, f"{{{ADISC_NS}}}UserSetting", **{f"{{{XSI_NS}}}type": "StringSetting"})
                    _sub(setting, f"{{{ADISC_NS}}}Name", name)
                    _sub(setting, f"{{{ADISC_NS}}}Value", known[name])
        return web.Response(body=_xml(root), content_type="text/xml", charset="utf-8")


def routes(state: SandboxState, *, realm: str = "mail.fabrikam.com") -> list[web.RouteDef]:
    """Both Autodiscover doors, in the lower and the capitalised spelling clients use."""
    service = Autodiscover(state, realm=realm)
    found: list[web.RouteDef] = []
    for path, handler in ((POX_PATH, service.pox), (SOAP_PATH, service.soap)):
        found.append(web.route("*", path, handler))
        found.append(web.route("*", path.replace("/autodiscover/autodiscover", "/Autodiscover/Autodiscover"), handler))
    return found
