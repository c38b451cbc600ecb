"""SOAP 1.1 envelopes for the EWS endpoint: safe parsing, a small element builder, faults.

Wire format: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/ews-xml-elements-in-exchange
(namespaces ``m`` = messages, ``t`` = types, fault details in ``errors``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from xml.sax.saxutils import escape, quoteattr

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
M_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"
T_NS = "http://schemas.microsoft.com/exchange/services/2006/types"
E_NS = "http://schemas.microsoft.com/exchange/services/2006/errors"
XML_NS = "http://www.w3.org/XML/1998/namespace"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

_PREFIXES = {SOAP_NS: "s", M_NS: "m", T_NS: "t", E_NS: "e", XML_NS: "xml", XSI_NS: "xsi"}
_DECLARED = (SOAP_NS, M_NS, T_NS, XSI_NS)

Element = ET.Element


class MalformedRequest(Exception):
    """The request body is not a SOAP envelope we accept (bad XML, a DTD, no Body)."""


class SoapFault(Exception):
    """An error Exchange reports as a SOAP fault (HTTP 500) rather than in a ResponseMessage."""

    def __init__(self, code: str, message: str, values: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.values = dict(values or {})


def m(local: str) -> str:
    return f"{{{M_NS}}}{local}"


def t(local: str) -> str:
    return f"{{{T_NS}}}{local}"


def local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


class _NoDoctype(ET.TreeBuilder):
    # The standard library parser does not fetch external entities, but an internal DTD subset can
    # still declare entity bombs; SOAP forbids DTDs anyway (SOAP 1.1 §3), so refuse them outright.
    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise MalformedRequest("DTDs are not allowed in SOAP messages")


def parse_xml(body: bytes) -> Element:
    # _NoDoctype rejects any DTD before an entity can be declared; expat never fetches external ones.
    parser = ET.XMLParser(target=_NoDoctype())  # noqa: S314
    try:
        parser.feed(body)
        root: Element = parser.close()
    except ET.ParseError as exc:
        raise MalformedRequest(f"The request is not well-formed XML: {exc}") from exc
    return root


@dataclass(frozen=True, slots=True)
class Impersonation:
    """``ExchangeImpersonation/ConnectingSID``: one of PrimarySmtpAddress, SmtpAddress, PrincipalName, SID.

    https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/connectingsid
    """

    kind: str
    value: str


@dataclass(frozen=True, slots=True)
class SoapRequest:
    operation: str
    body: Element
    request_server_version: str | None
    impersonation: Impersonation | None
    timezone_id: str | None


def parse_request(body: bytes) -> SoapRequest:
    root = parse_xml(body)
    if root.tag != f"{{{SOAP_NS}}}Envelope":
        raise MalformedRequest("The root element must be a SOAP 1.1 Envelope")
    soap_body = root.find(f"{{{SOAP_NS}}}Body")
    if soap_body is None or len(soap_body) == 0:
        raise MalformedRequest("The SOAP Body is missing or empty")
    operation = soap_body[0]
    header = root.find(f"{{{SOAP_NS}}}Header")
    version = None
    impersonation = None
    timezone_id = None
    if header is not None:
        rsv = header.find(t("RequestServerVersion"))
        if rsv is not None:
            version = rsv.get("Version")
        sid = header.find(f"{t('ExchangeImpersonation')}/{t('ConnectingSID')}")
        if sid is not None and len(sid):
            impersonation = Impersonation(local_name(sid[0].tag), (sid[0].text or "").strip())
        tzd = header.find(f"{t('TimeZoneContext')}/{t('TimeZoneDefinition')}")
        if tzd is not None:
            timezone_id = tzd.get("Id")
    name = local_name(operation.tag)
    # GetUserAvailability is the one operation whose body element carries a "Request" suffix.
    if name == "GetUserAvailabilityRequest":
        name = "GetUserAvailability"
    return SoapRequest(name, operation, version, impersonation, timezone_id)


def child(parent: Element, tag: str, text: str | None = None, **attrs: str) -> Element:
    """Append ``tag`` (Clark notation) to ``parent``; attributes with ``None`` values are skipped."""
    elem = ET.SubElement(parent, tag, {k: v for k, v in attrs.items() if v is not None})
    if text is not None:
        elem.text = text
    return elem


def find_text(elem: Element | None, path: str) -> str | None:
    if elem is None:
        return None
    found = elem.find(path)
    if found is None or found.text is None:
        return None
    return found.text.strip()


def xml_bool(value: bool) -> str:
    # exchangelib reads only "true"/"false" (util.xml_text_to_value), although requests use 0/1.
    return "true" if value else "false"


def parse_bool(text: str | None, default: bool = False) -> bool:
    if text is None:
        return default
    return text.strip().lower() in ("true", "1")


def format_datetime(value: datetime) -> str:
    """UTC with a ``Z``, as Exchange returns item times."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_local(value: datetime) -> str:
    """A wall-clock time without offset (availability CalendarEvent, DateTime of transitions)."""
    return value.strftime("%Y-%m-%dT%H:%M:%S")


def parse_datetime(text: str) -> datetime:
    """xs:dateTime; a naive value stays naive so callers can apply the request's time zone."""
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise MalformedRequest(f"Invalid xs:dateTime value {text!r}") from exc


def format_duration(delta: timedelta) -> str:
    """xs:duration as Exchange writes period biases (``PT8H``, ``-PT5H30M``, ``PT0H``)."""
    minutes = int(delta.total_seconds()) // 60
    sign = "-" if minutes < 0 else ""
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}PT{hours}H" + (f"{mins}M" if mins else "")


def _qname(tag: str) -> str:
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return f"{_PREFIXES[ns]}:{local}"
    return tag


def _write(elem: Element, out: list[str], declare: Mapping[str, str] | None = None) -> None:
    name = _qname(elem.tag)
    out.append(f"<{name}")
    if declare:
        for ns, prefix in declare.items():
            out.append(f" xmlns:{prefix}={quoteattr(ns)}")
    for key, value in elem.attrib.items():
        out.append(f" {_qname(key)}={quoteattr(value)}")
    if len(elem) == 0 and not elem.text:
        out.append("/>")
        return
    out.append(">")
    if elem.text:
        out.append(escape(elem.text))
    for sub in elem:
        _write(sub, out)
    out.append(f"</{name}>")


def serialize(root: Element) -> bytes:
    """Serialize with fixed prefixes (s, m, t, xsi) declared once on the root; deterministic output."""
    out = ['<?xml version="1.0" encoding="utf-8"?>']
    _write(root, out, {ns: _PREFIXES[ns] for ns in _DECLARED})
    return "".join(out).encode("utf-8")


@dataclass(frozen=True, slots=True)
class ServerVersion:
    """``ServerVersionInfo`` header values; exchangelib derives the API version from the build.

    https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/serverversioninfo
    Defaults: Exchange Server SE RTM, build 15.2.2562.17 [unverified build number]; Exchange 2019/SE
    report ``Version="V2017_07_11"``.
    """

    major: int = 15
    minor: int = 2
    major_build: int = 2562
    minor_build: int = 17
    version: str = "V2017_07_11"


def envelope(server_version: ServerVersion) -> tuple[Element, Element]:
    root = ET.Element(f"{{{SOAP_NS}}}Envelope")
    header = child(root, f"{{{SOAP_NS}}}Header")
    child(
        header,
        t("ServerVersionInfo"),
        MajorVersion=str(server_version.major),
        MinorVersion=str(server_version.minor),
        MajorBuildNumber=str(server_version.major_build),
        MinorBuildNumber=str(server_version.minor_build),
        Version=server_version.version,
    )
    body = child(root, f"{{{SOAP_NS}}}Body")
    return root, body


def fault(
    server_version: ServerVersion,
    code: str,
    message: str,
    values: Mapping[str, str] | None = None,
) -> bytes:
    """A SOAP fault as Exchange sends them (HTTP 500), parsed by exchangelib from ``detail``.

    Shape: https://learn.microsoft.com/en-us/exchange/client-developer/exchange-web-services/ews-throttling-in-exchange
    (``ErrorServerBusy`` with ``MessageXml/Value Name="BackOffMilliseconds"``).
    """
    root, body = envelope(server_version)
    soap_fault = child(body, f"{{{SOAP_NS}}}Fault")
    # Exchange qualifies the fault code with the types namespace bound to "a".
    child(soap_fault, "faultcode", f"a:{code}", **{"xmlns:a": T_NS})
    child(soap_fault, "faultstring", message, **{f"{{{XML_NS}}}lang": "en-US"})
    detail = child(soap_fault, "detail")
    child(detail, f"{{{E_NS}}}ResponseCode", code, **{"xmlns:e": E_NS})
    child(detail, f"{{{E_NS}}}Message", message, **{"xmlns:e": E_NS})
    if values:
        message_xml = child(detail, t("MessageXml"))
        for name, value in values.items():
            child(message_xml, t("Value"), value, Name=name)
    return serialize(root)


def response_message(
    parent: Element,
    tag: str,
    code: str = "NoError",
    text: str | None = None,
    response_class: str | None = None,
) -> Element:
    """``<m:XResponseMessage ResponseClass=..>`` with MessageText/ResponseCode/DescriptiveLinkKey.

    https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/responsemessage
    """
    klass = response_class or ("Success" if code == "NoError" else "Error")
    msg = child(parent, tag, ResponseClass=klass)
    if code != "NoError":
        child(msg, m("MessageText"), text or code)
    child(msg, m("ResponseCode"), code)
    if code != "NoError":
        child(msg, m("DescriptiveLinkKey"), "0")
    return msg
