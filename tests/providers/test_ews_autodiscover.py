"""Autodiscover: the documented candidate order and SRV choice as pure functions, and the whole
discovery against the sandbox's Autodiscover service through the real exchangelib client."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
from exchangelib.protocol import CachingProtocol

from calbroker.domain.connections import EwsServiceAccount
from calbroker.domain.errors import InvalidRequest
from calbroker.providers.endpoints import AddressPolicy, check_upstream_url
from calbroker.providers.ews import discover_ews_endpoint, is_email_address
from calbroker.providers.ews.autodiscover import SrvRecord, autodiscover_candidates, pick_srv_target
from calbroker.sandbox import SandboxThread
from tests.fixtures.sandbox import SandboxControl

ANNA = "anna.schmidt@fabrikam.com"


def test_candidates_follow_the_documented_order() -> None:
    # "https://" + domain + "/autodiscover/autodiscover" + ext, then "https://autodiscover." + domain + …
    assert autodiscover_candidates("contoso.com") == [
        "https://contoso.com/autodiscover/autodiscover.svc",
        "https://autodiscover.contoso.com/autodiscover/autodiscover.svc",
    ]
    assert autodiscover_candidates("contoso.com", "127.0.0.1:8443") == [
        "https://127.0.0.1:8443/autodiscover/autodiscover.svc"
    ]


def test_srv_records_pick_an_ssl_endpoint_with_the_best_priority_then_weight() -> None:
    records = [
        SrvRecord(0, 0, 80, "plain.contoso.com."),
        SrvRecord(10, 5, 443, "backup.contoso.com."),
        SrvRecord(0, 10, 443, "light.contoso.com."),
        SrvRecord(0, 50, 443, "heavy.contoso.com."),
    ]
    assert pick_srv_target(records) == "https://heavy.contoso.com/autodiscover/autodiscover.svc"
    assert pick_srv_target([SrvRecord(0, 0, 80, "plain.contoso.com.")]) is None
    assert pick_srv_target([]) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("anna.schmidt@fabrikam.com", True),
        (" Admin@Fabrikam.com ", True),
        ("https://mail.fabrikam.com/EWS/Exchange.asmx", False),
        ("mail.fabrikam.com", False),
        ("user:pass@mail.fabrikam.com", False),
        ("anna@localhost", False),
    ],
)
def test_what_counts_as_an_email_address(text: str, expected: bool) -> None:
    assert is_email_address(text) is expected


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    CachingProtocol.clear_cache()
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


def service_account(sandbox: SandboxThread, name: str = "svc-full", *, wrong: bool = False) -> EwsServiceAccount:
    account = sandbox.call(lambda s: s.directory.tenants["fabrikam"].service_accounts[name])
    return EwsServiceAccount("", f"FABRIKAM\\{account.username}", account.password + ("x" if wrong else ""), "ntlm")


async def discover(
    sandbox: SandboxThread, executor: ThreadPoolExecutor, email: str, credentials: EwsServiceAccount, **policy: bool
) -> str:
    private = policy.get("allow_private", True)
    strict = AddressPolicy(allow_private=private)
    return await discover_ews_endpoint(
        email,
        credentials,
        executor=executor,
        check_url=partial(check_upstream_url, field="endpoint", policy=strict),
        check_http_url=partial(
            check_upstream_url, field="endpoint", policy=AddressPolicy(allow_private=private, allow_http=True)
        ),
        policy=strict,
        start_host=sandbox.autodiscover_host,
        ca_bundle=sandbox.ca_path,
    )


async def test_the_sandbox_cloud_finds_the_ews_url(sandbox: SandboxThread, executor: ThreadPoolExecutor) -> None:
    assert await discover(sandbox, executor, ANNA, service_account(sandbox)) == sandbox.ews_url


async def test_failures_name_every_url_tried_and_its_answer(
    sandbox: SandboxThread, executor: ThreadPoolExecutor, sandbox_control: SandboxControl
) -> None:
    tried = f"{sandbox.url}/autodiscover/autodiscover.svc"

    with pytest.raises(InvalidRequest) as unknown:
        await discover(sandbox, executor, "nobody@fabrikam.com", service_account(sandbox))
    with pytest.raises(InvalidRequest) as refused:
        await discover(sandbox, executor, ANNA, service_account(sandbox, wrong=True))
    with pytest.raises(InvalidRequest) as private:
        await discover(sandbox, executor, ANNA, service_account(sandbox), allow_private=False)
    sandbox_control.fault(route="autodiscover:GetUserSettings", status=503, count=1)
    with pytest.raises(InvalidRequest) as down:
        await discover(sandbox, executor, ANNA, service_account(sandbox))

    for caught in (unknown, refused, private, down):
        assert caught.value.errors[0].field == "endpoint"
        assert f"Tried: {tried} (" in caught.value.detail
        assert "enter the EWS URL itself" in caught.value.detail
    assert "InvalidUser" in unknown.value.detail
    assert "credentials were refused (401)" in refused.value.detail
    assert "private, local or reserved address" in private.value.detail
    assert "no Autodiscover answer" in down.value.detail
    # Only the unknown address and the injected fault reached the service: a refused login stops at
    # authentication, and the URL the policy refused was never called.
    assert sandbox_control.count("autodiscover:GetUserSettings") == 2
