"""The address policy for admin-typed URLs, as a pure function of address literals (no network),
and the EWS adapter connecting only to an address the policy accepted in the same DNS answer.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from calbroker.domain.connections import AccessLevel, Connection, ConnectionKind, ConnectionMethod, EwsServiceAccount
from calbroker.domain.errors import InvalidRequest, UpstreamUnavailable
from calbroker.domain.intervals import Interval
from calbroker.providers import EwsProvider
from calbroker.providers.endpoints import AddressPolicy, check_upstream_url, checked_addresses, embedded_ipv4
from calbroker.providers.protocol import Deadline
from calbroker.sandbox import SandboxThread

STRICT = AddressPolicy()
LAB = AddressPolicy(allow_private=True)

PUBLIC = [
    "20.190.128.1",  # Entra ID
    "52.96.0.1",
    "2603:1036::1",  # Microsoft, IPv6
    "2001:4860:4860::8888",
    "::ffff:52.96.0.1",  # IPv4-mapped public
    "64:ff9b::3460:1",  # NAT64 of 52.96.0.1
    "2002:3460:1::1",  # 6to4 of 52.96.0.1
]
PRIVATE = [
    "10.0.0.5",
    "172.16.0.1",
    "192.168.1.1",
    "127.0.0.1",
    "127.8.9.10",
    "100.64.0.1",  # CGNAT: not private, not global either (the reported hole)
    "100.127.255.254",
    "198.18.0.1",  # benchmarking
    "192.0.2.1",  # documentation
    "192.0.0.8",
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "0.1.2.3",
    "::1",
    "fc00::1",
    "fd12:3456::1",  # unique local
    "2001:db8::1",  # documentation
    "::ffff:10.0.0.5",  # IPv4-mapped private
    "::ffff:127.0.0.1",
    "64:ff9b::a00:5",  # NAT64 of 10.0.0.5
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b:1::a00:5",  # local-use NAT64 prefix
    "2002:a00:5::1",  # 6to4 of 10.0.0.5
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "::10.0.0.5",  # IPv4-compatible (deprecated)
]
NEVER = [
    "169.254.169.254",  # metadata
    "169.254.170.2",
    "100.100.100.200",
    "fd00:ec2::254",
    "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata service
    "2002:a9fe:a9fe::1",  # 6to4 of the metadata service
    "2001:0:4136:e378:8000:63bf:5601:5601",  # Teredo whose client is 169.254.169.254 (obfuscated)
    "169.254.1.1",  # link-local
    "fe80::1",
    "224.0.0.1",  # multicast: `is_global` says True, which is why it is denied explicitly
    "239.255.255.250",
    "ff02::1",
    "0.0.0.0",
    "::",
]


@pytest.mark.parametrize("literal", PUBLIC)
def test_public_unicast_addresses_are_allowed(literal: str) -> None:
    assert STRICT.refusal(ipaddress.ip_address(literal)) is None
    assert LAB.refusal(ipaddress.ip_address(literal)) is None


@pytest.mark.parametrize("literal", PRIVATE)
def test_private_and_reserved_addresses_need_the_operator_setting(literal: str) -> None:
    why = STRICT.refusal(ipaddress.ip_address(literal))
    assert why is not None
    assert "private, local or reserved" in why
    assert LAB.refusal(ipaddress.ip_address(literal)) is None


@pytest.mark.parametrize("literal", NEVER)
def test_metadata_link_local_multicast_and_unspecified_are_never_allowed(literal: str) -> None:
    for policy in (STRICT, LAB, AddressPolicy(allow_private=True, allow_http=True)):
        assert policy.refusal(ipaddress.ip_address(literal)) is not None, (literal, policy)


def test_embedded_ipv4_addresses_are_found() -> None:
    def v4(literal: str) -> set[str]:
        return {str(a) for a in embedded_ipv4(ipaddress.ip_address(literal))}

    assert v4("::ffff:10.1.2.3") == {"10.1.2.3"}
    assert v4("64:ff9b::a01:203") == {"10.1.2.3"}
    assert v4("2002:a01:203::1") == {"10.1.2.3"}
    assert "169.254.169.254" in v4("2001:0:4136:e378:8000:63bf:5601:5601")
    assert v4("10.1.2.3") == set()
    assert v4("2603:1036::1") == set()


def test_plain_http_needs_the_operator_setting_or_loopback_in_a_demo() -> None:
    loopback = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    public = [ipaddress.ip_address("52.96.0.1")]
    assert STRICT.scheme_refusal("https", public) is None
    assert STRICT.scheme_refusal("http", public) is not None
    assert AddressPolicy(allow_http=True).scheme_refusal("http", public) is None
    demo = AddressPolicy(allow_private=True, allow_loopback_http=True)
    assert demo.scheme_refusal("http", loopback) is None
    assert demo.scheme_refusal("http", [*loopback, *public]) is not None


@pytest.mark.parametrize(
    ("url", "policy", "words"),
    [
        ("https://100.64.0.1/EWS/Exchange.asmx", STRICT, "private, local or reserved"),
        ("https://[64:ff9b::a9fe:a9fe]/EWS/Exchange.asmx", LAB, "metadata"),
        ("https://localhost/EWS/Exchange.asmx", STRICT, "private, local or reserved"),
        ("http://52.96.0.1/EWS/Exchange.asmx", STRICT, "https"),
        ("https://user:pw@52.96.0.1/EWS/Exchange.asmx", STRICT, "credentials"),
        ("https://mail]contoso.com/EWS/Exchange.asmx", STRICT, "not an absolute https:// URL"),
    ],
)
async def test_typed_urls_are_refused_with_the_reason(url: str, policy: AddressPolicy, words: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await check_upstream_url(url, field="endpoint", policy=policy, resolve=False)
    assert refused.value.errors[0].field == "endpoint"
    assert words in refused.value.errors[0].message


async def test_plain_http_is_accepted_when_the_operator_allows_it() -> None:
    url = "http://52.96.0.1/EWS/Exchange.asmx"
    assert await check_upstream_url(url, field="endpoint", policy=AddressPolicy(allow_http=True), resolve=False) == url


def test_a_connection_checks_the_answer_it_connects_to() -> None:
    with pytest.raises(UpstreamUnavailable, match="private, local or reserved"):
        checked_addresses("localhost", 443, STRICT)
    assert all(a.is_loopback for a in checked_addresses("localhost", 443, LAB))


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


async def test_the_ews_adapter_refuses_to_connect_where_the_policy_forbids(
    sandbox: SandboxThread, sandbox_ca_env: str, executor: ThreadPoolExecutor
) -> None:
    """The sandbox listens on loopback: with the strict policy, no TCP connection is even attempted."""
    account = sandbox.directory.tenants["fabrikam"].service_accounts["svc-full"]
    connection = Connection(
        id=uuid.uuid4(),
        application_id=uuid.uuid4(),
        kind=ConnectionKind.EWS,
        method=ConnectionMethod.EWS,
        access_level=AccessLevel.FULL,
        display_name="Fabrikam",
        domains=("fabrikam.com",),
        endpoint=sandbox.ews_url,
    )
    credentials = EwsServiceAccount(sandbox.ews_url, f"FABRIKAM\\{account.username}", account.password)
    window = Interval(datetime.now(UTC), datetime.now(UTC) + timedelta(hours=1))
    for policy, reachable in ((STRICT, False), (LAB, True)):
        provider = EwsProvider(connection, credentials, sandbox.ca_path, executor, policy=policy)
        try:
            found = await provider.fetch_schedules(["anna.schmidt@fabrikam.com"], window, Deadline.after(20))
        finally:
            await provider.aclose()
        answer = found["anna.schmidt@fabrikam.com"]
        if reachable:
            assert not isinstance(answer, Exception), answer
        else:
            assert isinstance(answer, UpstreamUnavailable), answer
            assert "private, local or reserved" in answer.detail


def test_the_demo_reaches_loopback_receivers_and_no_other_private_address() -> None:
    demo = AddressPolicy(allow_loopback=True, allow_loopback_http=True)
    for reachable in ("127.0.0.1", "127.8.9.10", "::1"):
        assert demo.refusal(ipaddress.ip_address(reachable)) is None, reachable
    for refused in ("10.0.0.5", "192.168.1.2", "172.16.0.1", "fd00::1", "169.254.169.254", "::ffff:10.0.0.5"):
        assert demo.refusal(ipaddress.ip_address(refused)) is not None, refused
    assert demo.scheme_refusal("http", [ipaddress.ip_address("127.0.0.1")]) is None
    assert demo.scheme_refusal("http", [ipaddress.ip_address("8.8.8.8")]) is not None
    assert AddressPolicy().refusal(ipaddress.ip_address("127.0.0.1")) is not None
