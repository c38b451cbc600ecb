"""The sandbox's Autodiscover service through real clients: the documented POX request over aiohttp,
SOAP GetUserSettings through exchangelib's Autodiscover protocol (NTLM, as it guesses), faults."""

from __future__ import annotations

import base64
import ssl
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from exchangelib import Configuration, Credentials, FailFast
from exchangelib.autodiscover.protocol import AutodiscoverProtocol
from exchangelib.errors import TransportError

from calbroker.sandbox import SandboxThread
from tests.fixtures.sandbox import SandboxControl

ANNA = "anna.schmidt@fabrikam.com"
RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"


def pox_request(address: str, schema: str = OUTLOOK) -> str:
    # The request body of "POX Autodiscover request for Exchange", with the protocol's http:// namespaces.
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">'
        f"<Request><EMailAddress>{address}</EMailAddress>"
        f"<AcceptableResponseSchema>{schema}</AcceptableResponseSchema></Request></Autodiscover>"
    )


@pytest.fixture
async def http(sandbox: SandboxThread, sandbox_ssl_context: ssl.SSLContext) -> AsyncIterator[aiohttp.ClientSession]:
    account = sandbox.call(lambda s: s.directory.tenants["fabrikam"].service_accounts["svc-full"])
    token = base64.b64encode(f"FABRIKAM\\{account.username}:{account.password}".encode()).decode()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=sandbox_ssl_context), headers={"Authorization": f"Basic {token}"}
    ) as session:
        yield session


async def pox(http: aiohttp.ClientSession, sandbox: SandboxThread, body: str) -> tuple[int, ET.Element]:
    async with http.post(
        f"{sandbox.url}/autodiscover/autodiscover.xml", data=body, headers={"Content-Type": "text/xml"}
    ) as response:
        return response.status, ET.fromstring(await response.read())


async def test_pox_answers_the_ews_url_of_a_mailbox(http: aiohttp.ClientSession, sandbox: SandboxThread) -> None:
    status, root = await pox(http, sandbox, pox_request(ANNA))

    assert status == 200
    assert root.tag == f"{{{RESPONSE}}}Autodiscover"
    account = root.find(f"{{{OUTLOOK}}}Response/{{{OUTLOOK}}}Account")
    assert account is not None
    assert account.findtext(f"{{{OUTLOOK}}}Action") == "settings"
    protocols = {p.findtext(f"{{{OUTLOOK}}}Type"): p for p in account.findall(f"{{{OUTLOOK}}}Protocol")}
    assert set(protocols) == {"EXCH", "EXPR"}
    assert protocols["EXCH"].findtext(f"{{{OUTLOOK}}}EwsUrl") == sandbox.ews_url
    assert protocols["EXPR"].findtext(f"{{{OUTLOOK}}}ASUrl") == sandbox.ews_url
    user = root.find(f"{{{OUTLOOK}}}Response/{{{OUTLOOK}}}User")
    assert user is not None
    assert user.findtext(f"{{{OUTLOOK}}}AutoDiscoverSMTPAddress") == ANNA


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (pox_request("adele.vance@contoso.com"), "500"),  # Exchange Online: not this organisation's
        (pox_request("nobody@fabrikam.com"), "500"),
        ("<Autodiscover/>", "600"),
        (pox_request(ANNA, schema="http://example.com/other"), "601"),
    ],
)
async def test_pox_errors_carry_the_documented_codes(
    http: aiohttp.ClientSession, sandbox: SandboxThread, body: str, code: str
) -> None:
    status, root = await pox(http, sandbox, body)

    assert status == 200
    error = root.find(f"{{{RESPONSE}}}Response/{{{RESPONSE}}}Error")
    assert error is not None
    assert error.findtext(f"{{{RESPONSE}}}ErrorCode") == code
    assert {"Time", "Id"} <= set(error.attrib)


async def test_autodiscover_asks_for_credentials_like_ews(
    sandbox: SandboxThread, sandbox_ssl_context: ssl.SSLContext
) -> None:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=sandbox_ssl_context)) as anonymous,
        anonymous.post(f"{sandbox.url}/Autodiscover/Autodiscover.xml", data=pox_request(ANNA)) as response,
    ):
        assert response.status == 401
        assert {h.split(" ")[0] for h in response.headers.getall("WWW-Authenticate")} == {"Negotiate", "NTLM", "Basic"}


@pytest.fixture
def soap(sandbox: SandboxThread, sandbox_ca_env: str) -> Iterator[AutodiscoverProtocol]:
    account = sandbox.call(lambda s: s.directory.tenants["fabrikam"].service_accounts["svc-restricted"])
    protocol = AutodiscoverProtocol(
        config=Configuration(
            service_endpoint=f"{sandbox.url}/autodiscover/autodiscover.svc",
            credentials=Credentials(f"FABRIKAM\\{account.username}", account.password),
            retry_policy=FailFast(),
        )
    )
    yield protocol
    protocol.close()


def test_soap_get_user_settings_through_exchangelib(sandbox: SandboxThread, soap: AutodiscoverProtocol) -> None:
    found = soap.get_user_settings(user=ANNA)
    unknown = soap.get_user_settings(user="adele.vance@contoso.com")

    assert soap.auth_type == "NTLM"  # guessed from the 401's challenges, then a real NTLM handshake
    assert found.ews_url == sandbox.ews_url
    assert found.autodiscover_smtp_address == ANNA
    assert found.version is not None
    assert found.version.api_version == "Exchange2016"
    assert unknown.error_code == "InvalidUser"


def test_soap_faults_are_injectable(soap: AutodiscoverProtocol, sandbox_control: SandboxControl) -> None:
    sandbox_control.fault(route="autodiscover:GetUserSettings", status=503, count=1)
    with pytest.raises(TransportError):
        soap.get_user_settings(user=ANNA)
    assert sandbox_control.count("autodiscover:GetUserSettings") == 1
