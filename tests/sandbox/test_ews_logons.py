"""Signing in to EWS the ways clients nobody here wrote do.

- NTLM negotiated in OEM with the first message on a GET, as ews-javascript-api's @ewsjs/xhr does
  through ntlm-client: the messages are built with pyspnego's NTLM message classes (not
  requests-ntlm), over one kept-alive TCP connection, like a browser-side agent would.
- Mailbox users signing in with their own credentials (per-user integrations), through exchangelib
  with delegate access and through OEM NTLM: their own mailbox works, nobody else's does.
"""

from __future__ import annotations

import base64
import http.client
import os
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from exchangelib import (
    BASIC,
    DELEGATE,
    IMPERSONATION,
    Account,
    CalendarItem,
    Configuration,
    Credentials,
    EWSDateTime,
)
from exchangelib import UTC as EWS_UTC
from exchangelib.errors import ErrorAccessDenied, ErrorImpersonateUserDenied, UnauthorizedError
from exchangelib.protocol import CachingProtocol, FailFast
from spnego._ntlm_raw.crypto import compute_response_v2, ntowfv1, ntowfv2
from spnego._ntlm_raw.messages import Authenticate, Challenge, FileTime, Negotiate, NegotiateFlags

from calbroker.sandbox import SandboxThread

ANNA = "anna.schmidt@fabrikam.com"
BEN = "ben.taylor@fabrikam.com"
ADELE = "adele.vance@contoso.com"  # Exchange Online: not a user of the on-premises server
ROOM = "spree@fabrikam.com"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
# What ntlm-client's createType1Message offers: OEM only, no UNICODE.
NTLM_CLIENT_FLAGS = (
    NegotiateFlags.oem
    | NegotiateFlags.request_target
    | NegotiateFlags.ntlm
    | NegotiateFlags.extended_session_security
    | NegotiateFlags.always_sign
)


def _envelope(body: str, impersonate: str | None = None) -> bytes:
    header = '<t:RequestServerVersion Version="Exchange2016"/>'
    if impersonate:
        header += (
            "<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>"
            f"{impersonate}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="{M}" xmlns:t="{T}">'
        f"<s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


GET_CALENDAR = (
    "<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>"
    '<m:FolderIds><t:DistinguishedFolderId Id="calendar"/></m:FolderIds></m:GetFolder>'
)


@dataclass
class Exchange:
    """The sandbox's EWS endpoint over raw HTTPS, one TCP connection per `connect()`."""

    url: str
    context: ssl.SSLContext

    def connect(self) -> http.client.HTTPSConnection:
        parts = urlsplit(self.url)
        assert parts.hostname is not None
        return http.client.HTTPSConnection(parts.hostname, parts.port, context=self.context, timeout=30)

    @property
    def path(self) -> str:
        return urlsplit(self.url).path


@pytest.fixture
def exchange(sandbox: SandboxThread, sandbox_ssl_context: ssl.SSLContext) -> Exchange:
    return Exchange(sandbox.ews_url, sandbox_ssl_context)


def password(sandbox: SandboxThread, address: str) -> str:
    return sandbox.call(lambda s: s.directory.mailbox(address).password)  # type: ignore[union-attr]


def service_password(sandbox: SandboxThread, username: str) -> str:
    return sandbox.call(lambda s: s.directory.tenants["fabrikam"].service_accounts[username].password)


def oem_ntlm_call(
    exchange: Exchange, *, domain: str, user: str, secret: str, soap: bytes
) -> tuple[Challenge, int, bytes]:
    """NEGOTIATE on a GET, then AUTHENTICATE with the SOAP request as a POST on the same connection."""
    conn = exchange.connect()
    try:
        negotiate = Negotiate(flags=NTLM_CLIENT_FLAGS, encoding="cp437").pack()
        conn.request(
            "GET",
            exchange.path,
            headers={"Authorization": "NTLM " + base64.b64encode(negotiate).decode(), "Connection": "keep-alive"},
        )
        first = conn.getresponse()
        first.read()
        assert first.status == 401
        scheme, _, token = first.getheader("WWW-Authenticate", "").partition(" ")
        assert scheme == "NTLM"
        challenge = Challenge.unpack(base64.b64decode(token), encoding="cp437")

        key = ntowfv2(user, ntowfv1(secret), domain)
        nt_response, lm_response, _ = compute_response_v2(
            key, challenge.server_challenge, os.urandom(8), FileTime.now(), challenge.target_info
        )
        authenticate = Authenticate(
            flags=challenge.flags,  # ntlm-client echoes the CHALLENGE's flags
            lm_challenge_response=lm_response,
            nt_challenge_response=nt_response,
            domain_name=domain,
            username=user,
            workstation=".",
            encoding="cp437",
        ).pack()
        conn.request(
            "POST",
            exchange.path,
            body=soap,
            headers={
                "Authorization": "NTLM " + base64.b64encode(authenticate).decode(),
                "Content-Type": "text/xml; charset=utf-8",
            },
        )
        second = conn.getresponse()
        return challenge, second.status, second.read()
    finally:
        conn.close()


def _folder_owner(xml: bytes) -> str:
    root = ET.fromstring(xml)
    code = root.find(f".//{{{M}}}ResponseCode")
    assert code is not None
    assert code.text == "NoError", xml.decode()
    folder = root.find(f".//{{{T}}}CalendarFolder/{{{T}}}DisplayName")
    assert folder is not None
    return folder.text or ""


# --- NTLM as @ewsjs/xhr negotiates it ---------------------------------------------------------------


def test_oem_ntlm_started_on_a_get_authenticates_a_service_account(sandbox: SandboxThread, exchange: Exchange) -> None:
    challenge, status, body = oem_ntlm_call(
        exchange,
        domain="FABRIKAM",
        user="svc-full",
        secret=service_password(sandbox, "svc-full"),
        soap=_envelope(GET_CALENDAR, impersonate=ANNA),
    )

    # [MS-NLMP] 3.2.5.1.1: UNICODE only if asked for, else OEM; never both.
    assert challenge.flags & NegotiateFlags.oem
    assert not challenge.flags & NegotiateFlags.unicode
    assert challenge.target_name == "FABRIKAM"  # TargetName in the negotiated (OEM) character set
    assert status == 200
    assert _folder_owner(body) == "Calendar"


def test_oem_ntlm_with_a_wrong_password_is_refused(sandbox: SandboxThread, exchange: Exchange) -> None:
    _, status, _ = oem_ntlm_call(
        exchange,
        domain="FABRIKAM",
        user="svc-full",
        secret=service_password(sandbox, "svc-full") + "x",
        soap=_envelope(GET_CALENDAR, impersonate=ANNA),
    )
    assert status == 401


def test_unicode_negotiation_still_gets_unicode(exchange: Exchange) -> None:
    conn = exchange.connect()
    try:
        negotiate = Negotiate(flags=NTLM_CLIENT_FLAGS | NegotiateFlags.unicode).pack()
        conn.request("POST", exchange.path, headers={"Authorization": "NTLM " + base64.b64encode(negotiate).decode()})
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    challenge = Challenge.unpack(base64.b64decode(response.getheader("WWW-Authenticate", "").partition(" ")[2]))
    assert challenge.flags & NegotiateFlags.unicode
    assert not challenge.flags & NegotiateFlags.oem
    assert challenge.target_name == "FABRIKAM"


def test_any_method_is_challenged_before_it_is_refused(sandbox: SandboxThread, exchange: Exchange) -> None:
    conn = exchange.connect()
    try:
        conn.request("GET", exchange.path)
        anonymous = conn.getresponse()
        anonymous.read()
        basic = base64.b64encode(f"FABRIKAM\\svc-full:{service_password(sandbox, 'svc-full')}".encode()).decode()
        conn.request("GET", exchange.path, headers={"Authorization": f"Basic {basic}"})
        signed_in = conn.getresponse()
        signed_in.read()
    finally:
        conn.close()

    assert anonymous.status == 401
    assert {h.split(" ")[0] for h in anonymous.headers.get_all("WWW-Authenticate") or []} == {
        "Negotiate",
        "NTLM",
        "Basic",
    }
    assert signed_in.status == 405  # SOAP is POST; only an authenticated GET gets that far
    assert signed_in.getheader("Allow") == "POST"


# --- mailbox users ------------------------------------------------------------------------------------


@pytest.fixture
def fresh_protocols(sandbox_ca_env: str) -> Iterator[None]:
    CachingProtocol.clear_cache()
    yield
    CachingProtocol.clear_cache()


def week_start(sandbox: SandboxThread) -> EWSDateTime:
    anchor = sandbox.call(lambda s: s.anchor)
    return EWSDateTime(anchor.year, anchor.month, anchor.day, tzinfo=EWS_UTC)


def own_account(sandbox: SandboxThread, address: str, *, login: str | None = None, **kwargs: object) -> Account:
    config = Configuration(
        service_endpoint=sandbox.ews_url,
        credentials=Credentials(login or address, password(sandbox, address)),
        auth_type=BASIC,
        retry_policy=FailFast(),
    )
    return Account(address, autodiscover=False, config=config, default_timezone=EWS_UTC, **kwargs)


@pytest.mark.usefixtures("fresh_protocols")
def test_a_mailbox_user_reads_and_writes_their_own_calendar(sandbox: SandboxThread) -> None:
    acct = own_account(sandbox, ANNA, access_type=DELEGATE)
    begin = week_start(sandbox)

    seeded = list(acct.calendar.view(start=begin, end=begin + timedelta(days=5)).only("subject"))
    item = CalendarItem(
        account=acct,
        folder=acct.calendar,
        subject="Own credentials",
        start=begin + timedelta(days=60, hours=9),
        end=begin + timedelta(days=60, hours=10),
    )
    item.save()
    try:
        found = sandbox.call(lambda s: [e.subject for e in s.calendars.events(ANNA)])
    finally:
        item.delete()

    assert seeded
    assert "Own credentials" in found


@pytest.mark.usefixtures("fresh_protocols")
def test_a_mailbox_user_can_open_no_other_mailbox_and_impersonate_no_one(sandbox: SandboxThread) -> None:
    colleague = Account(
        BEN,
        access_type=DELEGATE,
        autodiscover=False,
        config=own_account(sandbox, ANNA, access_type=DELEGATE).protocol.config,
        default_timezone=EWS_UTC,
    )
    with pytest.raises(ErrorAccessDenied):
        colleague.calendar.refresh()

    impersonating = Account(
        BEN,
        access_type=IMPERSONATION,
        autodiscover=False,
        config=colleague.protocol.config,
        default_timezone=EWS_UTC,
    )
    with pytest.raises(ErrorImpersonateUserDenied):
        impersonating.calendar.refresh()


@pytest.mark.usefixtures("fresh_protocols")
def test_a_mailbox_user_sees_colleagues_free_busy_times_but_not_their_subjects(sandbox: SandboxThread) -> None:
    acct = own_account(sandbox, ANNA, access_type=DELEGATE)
    begin = week_start(sandbox)

    own, colleague = acct.protocol.get_free_busy_info(
        accounts=[(ANNA, "Required", False), (BEN, "Required", False)],
        start=begin,
        end=begin + timedelta(days=5),
        requested_view="Detailed",
    )

    assert own.view_type == "Detailed"
    assert any(e.details is not None for e in own.calendar_events)
    assert colleague.view_type == "FreeBusy"  # the Default user's free/busy-time permission
    assert colleague.calendar_events
    assert all(e.details is None for e in colleague.calendar_events)


@pytest.mark.parametrize("login", ["upn", "domain"])
def test_mailbox_users_sign_in_with_oem_ntlm(sandbox: SandboxThread, exchange: Exchange, login: str) -> None:
    domain, user = ("", ANNA) if login == "upn" else ("FABRIKAM", "anna.schmidt")
    _, status, body = oem_ntlm_call(
        exchange, domain=domain, user=user, secret=password(sandbox, ANNA), soap=_envelope(GET_CALENDAR)
    )
    assert status == 200
    assert _folder_owner(body) == "Calendar"


@pytest.mark.usefixtures("fresh_protocols")
@pytest.mark.parametrize(
    ("address", "why"),
    [(ADELE, "a mailbox on Exchange Online"), (ROOM, "a room"), (ANNA, "a wrong password")],
)
def test_who_cannot_sign_in_to_the_on_premises_server(sandbox: SandboxThread, address: str, why: str) -> None:
    secret = password(sandbox, address) + ("x" if why == "a wrong password" else "")
    config = Configuration(
        service_endpoint=sandbox.ews_url,
        credentials=Credentials(address, secret),
        auth_type=BASIC,
        retry_policy=FailFast(),
    )
    with pytest.raises(UnauthorizedError):
        Account(address, access_type=DELEGATE, autodiscover=False, config=config).calendar.refresh()
