"""Cronofy's browser authorization lands on calbroker's own connect pages and comes back with a code.

`/enterprise_connect/oauth/authorize` → an authorize link → the admin connects Fabrikam's Exchange
(EWS form) → `/oauth/connected` → the application's `redirect_uri` with a code and its state → a
service-account token at `/oauth/token`. `/oauth/authorize` does the same for one mailbox (the one
the admin verified) and yields an account token. Bad requests never redirect to an unchecked URI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from calbroker.app import create_app
from calbroker.config import Settings
from calbroker.sandbox import SandboxThread
from calbroker.store.applications import create_application
from calbroker.store.cronofy import issue_client
from calbroker.store.keyring import load_keyring
from tests.fixtures.connect import FormBrowser, connect_settings, query_of
from tests.fixtures.sandbox import SandboxControl

PUBLIC = "http://testserver.local"
APP = "https://app.example.test/cronofy/callback"


@pytest.fixture(scope="module")
def web_settings(settings: Settings, sandbox: SandboxThread) -> Settings:
    return connect_settings(settings, sandbox, public_url=PUBLIC, operator=False)


@pytest.fixture(scope="module")
async def web(web_settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(app=create_app(web_settings), base_url=PUBLIC) as test_client:
        yield test_client


@pytest.fixture(scope="module")
async def credentials(pool: asyncpg.Pool, web_settings: Settings) -> dict[str, str]:
    async with pool.acquire() as conn:
        application = await create_application(conn, "Cronofy browser app", actor="test")
        issued = await issue_client(conn, load_keyring(web_settings), application.application.id, actor="test")
    return {"client_id": issued.client.client_id, "client_secret": issued.client_secret}


async def _connect_fabrikam(browser: FormBrowser, link: str, sandbox_control: SandboxControl) -> Any:
    account = next(a for a in sandbox_control.tenant("fabrikam")["service_accounts"] if a["username"] == "svc-full")
    hidden = await browser.open_form(link, "ews")
    return await browser.submit(
        hidden,
        {
            "endpoint": browser.sandbox.ews_url,
            "username": f"FABRIKAM\\{account['username']}",
            "password": account["password"],
            "auth_type": "basic",
            "access_level": "full",
            "test_mailbox": "anna.schmidt@fabrikam.com",
            "domains": "",
            "cloud": "sandbox",
        },
    )


async def _authorize(
    web: AsyncTestClient,  # type: ignore[type-arg]
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
    path: str,
    query: dict[str, str],
) -> dict[str, str]:
    web.cookies.clear()
    started = await web.get(f"{path}?{urlencode(query)}", follow_redirects=False)
    assert started.status_code == 303, started.text
    link = started.headers["location"]
    assert link.startswith(f"{PUBLIC}/connect/cbl_")
    done = await _connect_fabrikam(FormBrowser(web, sandbox), link, sandbox_control)
    assert done.status_code == 303, done.text
    back = urlsplit(done.headers["location"])
    assert back.path == "/compat/cronofy/oauth/connected"
    landed = await web.get(f"{back.path}?{back.query}", follow_redirects=False)
    assert landed.status_code == 303, landed.text
    assert landed.headers["location"].startswith(APP + "?")
    return query_of(landed.headers["location"])


async def test_enterprise_connect_yields_a_service_account_token(
    web: AsyncTestClient,  # type: ignore[type-arg]
    credentials: dict[str, str],
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
    sandbox_ca_env: str,
) -> None:
    query = {
        "response_type": "code",
        "client_id": credentials["client_id"],
        "redirect_uri": APP,
        "scope": "service_account/accounts/manage",
        "delegated_scope": "read_write",
        "state": "enterprise-1",
    }
    answer = await _authorize(
        web, sandbox, sandbox_control, "/compat/cronofy/enterprise_connect/oauth/authorize", query
    )
    assert answer["state"] == "enterprise-1"
    token = await web.post(
        "/compat/cronofy/oauth/token",
        data={**credentials, "grant_type": "authorization_code", "code": answer["code"], "redirect_uri": APP},
    )  # form-encoded, as some Cronofy clients send it
    assert token.status_code == 200, token.text
    body = token.json()
    assert body["service_account_id"].startswith("ser_")
    assert body["scope"] == "service_account/accounts/manage"
    info = await web.get("/compat/cronofy/v1/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert info.json()["cronofy.type"] == "service_account"
    assert info.json()["cronofy.data"]["service_account"]["provider_name"] == "exchange"
    # The connected page works once.
    again = await web.get(f"/compat/cronofy/oauth/connected?state={answer['state']}", follow_redirects=False)
    assert again.status_code == 404


async def test_individual_connect_yields_an_account_token_for_the_verified_mailbox(
    web: AsyncTestClient,  # type: ignore[type-arg]
    credentials: dict[str, str],
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
    sandbox_ca_env: str,
) -> None:
    query = {
        "response_type": "code",
        "client_id": credentials["client_id"],
        "redirect_uri": APP,
        "scope": "read_account list_calendars read_events create_event delete_event",
        "state": "xyz",
        "provider_name": "",
        "avoid_linking": "False",
    }  # exactly what pycronofy's user_auth_link builds
    answer = await _authorize(web, sandbox, sandbox_control, "/compat/cronofy/oauth/authorize", query)
    token = await web.post(
        "/compat/cronofy/oauth/token",
        json={**credentials, "grant_type": "authorization_code", "code": answer["code"], "redirect_uri": APP},
    )
    assert token.status_code == 200, token.text
    body = token.json()
    assert body["sub"].startswith("acc_")
    assert body["linking_profile"]["provider_name"] == "exchange"
    calendars = await web.get(
        "/compat/cronofy/v1/calendars", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert calendars.json()["calendars"][0]["profile_id"] == body["linking_profile"]["profile_id"]
    wrong_uri = await web.post(
        "/compat/cronofy/oauth/token",
        json={**credentials, "grant_type": "authorization_code", "code": answer["code"], "redirect_uri": APP + "x"},
    )
    assert wrong_uri.status_code == 400
    assert wrong_uri.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"client_id": "cbi_unknown"}, 400, "invalid_client"),
        ({"redirect_uri": "javascript:alert(1)"}, 400, "invalid_request"),
        ({"redirect_uri": "https://app.example.test/cb#fragment"}, 400, "invalid_request"),
    ],
)
async def test_bad_authorize_requests_never_redirect(
    web: AsyncTestClient,  # type: ignore[type-arg]
    credentials: dict[str, str],
    change: dict[str, str],
    status: int,
    error: str,
) -> None:
    query = {"response_type": "code", "client_id": credentials["client_id"], "redirect_uri": APP, "scope": "read_only"}
    answer = await web.get(f"/compat/cronofy/oauth/authorize?{urlencode(query | change)}", follow_redirects=False)
    assert answer.status_code == status
    assert answer.json()["error"] == error
    assert "location" not in answer.headers


async def test_a_bad_response_type_goes_back_to_the_application_with_the_error(
    web: AsyncTestClient,  # type: ignore[type-arg]
    credentials: dict[str, str],
) -> None:
    query = {"response_type": "token", "client_id": credentials["client_id"], "redirect_uri": APP, "state": "s"}
    answer = await web.get(f"/compat/cronofy/oauth/authorize?{urlencode(query)}", follow_redirects=False)
    assert answer.status_code == 303
    assert query_of(answer.headers["location"]) == {"error": "unsupported_response_type", "state": "s"}
