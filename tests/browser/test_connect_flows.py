"""A tenant admin in Chromium connects each of the four ways, gets one thing wrong each time, fixes it,
and lands back on the application; then free/busy works for those mailboxes with no other step.
Admin consent is walked in full: cancel, approve then sign in as someone who is no administrator
(refused), approve then sign in as the administrator.

calbroker runs under uvicorn on a real port, Microsoft is the sandbox (its consent and sign-in pages),
and the application's redirect URL is answered by Playwright. Every page is screenshotted to
tests/artifacts/connect-*.png for a human to look at.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from playwright.async_api import BrowserContext, Page, Route, expect

from calbroker.sandbox import SandboxThread
from calbroker.store.applications import IssuedKey
from tests.browser.conftest import ARTIFACTS, ServedApp
from tests.fixtures.connect import APP_RETURN, operator_of
from tests.fixtures.sandbox import SandboxControl

pytestmark = pytest.mark.browser

SEEN: list[str] = []
TYPED: set[str] = set()


@pytest.fixture
async def application(make_application: Any) -> IssuedKey:
    """One application per walk, so each check sees only the connection that walk made."""
    key: IssuedKey = await make_application("Northwind Scheduling")
    return key


@pytest.fixture
async def page(
    chromium: BrowserContext, sandbox: SandboxThread, sandbox_control: SandboxControl
) -> AsyncIterator[Page]:
    """A fresh tab (no cookies); the application's own page answers its redirect URL."""
    await chromium.clear_cookies()

    async def the_application(route: Route) -> None:
        await route.fulfill(
            status=200,
            content_type="text/html",
            body="<!doctype html><title>Northwind</title><h1>Northwind: calendar connected</h1>",
        )

    await chromium.route(f"{APP_RETURN}**", the_application)
    tab = await chromium.new_page()
    try:
        yield tab
    finally:
        await tab.close()
        await chromium.unroute(f"{APP_RETURN}**")
        client_id = operator_of(sandbox).client_id
        for tenant in ("contoso", "fabrikam"):
            sandbox_control.delete(f"/_sandbox/tenants/{tenant}/consent/{client_id}")


async def new_link(served: ServedApp, key: IssuedKey, **body: Any) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{served.url}/v1/connect_links",
            json={"redirect_url": APP_RETURN, **body},
            headers={"Authorization": f"Bearer {key.token}"},
        ) as response,
    ):
        created = await response.json()
        assert response.status == 201, created
        return str(created["url"])


async def shot(page: Page, name: str) -> None:
    SEEN.append(await page.content())
    await page.screenshot(path=str(ARTIFACTS / f"connect-{name}.png"), full_page=True)


async def expect_error_summary(page: Page, text: str) -> None:
    summary = page.locator(".error-summary")
    await expect(summary).to_be_visible()
    await expect(summary).to_contain_text(text)
    await expect(summary).to_be_focused()  # screen readers announce it first (autofocus, role=alert)


async def returned(page: Page, state: str) -> dict[str, str]:
    """The admin is back on the application's page, with the connection id and the application's state."""
    await expect(page.get_by_role("heading", level=1)).to_have_text("Northwind: calendar connected")
    assert page.url.startswith(APP_RETURN + "?"), page.url
    query = {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}
    assert query["state"] == state
    assert re.fullmatch(r"[0-9a-f-]{36}", query["connection_id"])
    return query


async def free_busy_works(served: ServedApp, key: IssuedKey, mailboxes: list[str]) -> None:
    """The application's next call just works: no other step after the admin's walk."""
    start = datetime(2026, 11, 24, tzinfo=UTC)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{served.url}/v1/free_busy",
            json={"mailboxes": mailboxes, "start": start.isoformat(), "end": (start + timedelta(days=1)).isoformat()},
            headers={"Authorization": f"Bearer {key.token}"},
        ) as response,
    ):
        body = await response.json()
    assert response.status == 200, body
    assert [entry["mailbox"] for entry in body["free_busy"]] == mailboxes
    for entry in body["free_busy"]:
        assert "error" not in entry, entry
        assert "busy" in entry, entry


def password_of(sandbox_control: SandboxControl, tenant: str, email: str) -> str:
    found = str(next(u for u in sandbox_control.tenant(tenant)["users"] if u["email"] == email)["password"])
    TYPED.add(found)
    return found


async def sign_in_on_microsoft(page: Page, sandbox_control: SandboxControl, tenant: str, email: str) -> None:
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password_of(sandbox_control, tenant, email))


async def test_admin_consent_cancel_then_a_user_then_the_administrator(
    page: Page, served: ServedApp, application: IssuedKey, sandbox_control: SandboxControl
) -> None:
    await page.goto(await new_link(served, application, state="consent"))
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Northwind Scheduling")
    await shot(page, "0-choose")
    await page.set_viewport_size({"width": 390, "height": 844})
    await shot(page, "0-choose-phone")
    await page.set_viewport_size({"width": 1000, "height": 800})

    await page.get_by_role("link", name=re.compile("approve calbroker")).click()
    await page.get_by_label("Test mailbox").fill("adele.vance@contoso.com")
    await shot(page, "1-consent-form")
    await page.get_by_role("button", name="Continue to Microsoft").click()
    await expect(page.get_by_role("heading", name="Permissions requested")).to_be_visible()
    await expect(page.get_by_text("Organization: Contoso")).to_be_visible()
    await shot(page, "1-consent-microsoft")
    await page.get_by_role("button", name="Cancel").click()

    await expect_error_summary(page, "You cancelled on Microsoft")
    await expect(page.get_by_label("Test mailbox")).to_have_value("adele.vance@contoso.com")
    await shot(page, "1-consent-cancelled")
    await page.get_by_role("button", name="Continue to Microsoft").click()
    await page.get_by_role("button", name="Accept").click()
    # Microsoft's consent answer is not proof of who approved: the sign-in that follows is.
    await sign_in_on_microsoft(page, sandbox_control, "contoso", "adele.vance@contoso.com")
    await shot(page, "1-consent-sign-in")
    await page.get_by_role("button", name="Sign in").click()

    await expect_error_summary(page, "which is not an administrator of the organisation")
    await expect(page.locator(".error-summary")).to_contain_text("nothing was saved")
    await shot(page, "1-consent-not-an-admin")
    await page.set_viewport_size({"width": 390, "height": 844})
    await shot(page, "1-consent-not-an-admin-phone")
    await page.set_viewport_size({"width": 1000, "height": 800})
    await page.get_by_role("button", name="Continue to Microsoft").click()
    await page.get_by_role("button", name="Accept").click()
    await sign_in_on_microsoft(page, sandbox_control, "contoso", str(sandbox_control.tenant("contoso")["admin"]))
    await page.get_by_role("button", name="Sign in").click()
    await returned(page, "consent")
    await shot(page, "1-consent-done")
    await free_busy_works(served, application, ["adele.vance@contoso.com", "alex.wilber@contoso.com"])


async def test_own_app_registration_wrong_secret_then_right(
    page: Page, served: ServedApp, application: IssuedKey, sandbox_control: SandboxControl
) -> None:
    app = sandbox_control.app("contoso-secret")
    secret = str(app["secrets"][0]["value"])
    wrong = secret[:-4] + "abcd"
    TYPED.update({secret, wrong})
    await page.goto(await new_link(served, application, state="own-app"))
    await page.get_by_role("link", name=re.compile("your own app registration")).click()
    await expect(page.get_by_text("Calendars.ReadWrite", exact=True)).to_be_visible()
    await expect(page.locator("pre")).to_contain_text("New-ApplicationAccessPolicy -AppId")
    await page.get_by_label("Directory (tenant) ID").fill(str(sandbox_control.tenant("contoso")["id"]))
    await page.get_by_label("Application (client) ID").fill(str(app["client_id"]))
    await page.get_by_label("Client secret value").fill(wrong)
    await page.get_by_label("Client secret expires on").fill((date.today() + timedelta(days=180)).isoformat())
    await page.get_by_label("Test mailbox").fill("adele.vance@contoso.com")
    await shot(page, "2-own-app-form")
    await page.get_by_role("button", name="Check and connect").click()

    await expect_error_summary(page, "not its Secret ID")
    await expect(page.get_by_label("Application (client) ID")).to_have_value(str(app["client_id"]))
    await expect(page.get_by_label("Client secret value")).to_have_value("")
    await expect(page.locator("pre")).to_contain_text(f"-AppId {app['client_id']}")  # the command filled in
    await shot(page, "2-own-app-wrong-secret")
    await page.get_by_label("Client secret value").fill(secret)
    await page.get_by_role("button", name="Check and connect").click()
    await returned(page, "own-app")
    await free_busy_works(served, application, ["adele.vance@contoso.com", "alex.wilber@contoso.com"])


async def test_exchange_on_premises_online_host_then_server(
    page: Page,
    served: ServedApp,
    application: IssuedKey,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
) -> None:
    account = next(a for a in sandbox_control.tenant("fabrikam")["service_accounts"] if a["username"] == "svc-full")
    TYPED.add(account["password"])
    await page.goto(await new_link(served, application, state="ews"))
    await page.get_by_role("link", name=re.compile("service account")).click()
    await page.get_by_label("EWS URL, server name or email address").fill("outlook.office365.com")
    await page.get_by_label("Service account").fill(f"FABRIKAM\\{account['username']}")
    await page.get_by_label("Password", exact=True).fill(account["password"])
    await page.get_by_label("How Exchange checks the password").select_option("basic")
    await page.get_by_label("Full", exact=True).check()
    await page.get_by_label("Test mailbox").fill("anna.schmidt@fabrikam.com")
    await shot(page, "3-ews-form")
    await page.get_by_role("button", name="Check and connect").click()

    await expect_error_summary(page, "Microsoft Graph instead")
    await expect(page.get_by_label("Password", exact=True)).to_have_value("")
    await shot(page, "3-ews-exchange-online")
    await page.set_viewport_size({"width": 390, "height": 844})
    await shot(page, "3-ews-exchange-online-phone")
    await page.set_viewport_size({"width": 1000, "height": 800})
    await page.get_by_label("EWS URL, server name or email address").fill(sandbox.ews_url)
    await page.get_by_label("Password", exact=True).fill(account["password"])
    await page.get_by_role("button", name="Check and connect").click()
    await returned(page, "ews")
    await free_busy_works(served, application, ["anna.schmidt@fabrikam.com", "ben.taylor@fabrikam.com"])


async def test_delegated_sign_in_as_someone_else_then_as_me(
    page: Page, served: ServedApp, application: IssuedKey, sandbox_control: SandboxControl
) -> None:
    await page.goto(await new_link(served, application, state="me"))
    await page.get_by_role("link", name=re.compile("Just my mailbox")).click()
    await page.get_by_label("Your email address").fill("adele.vance@contoso.com")
    await shot(page, "4-delegated-form")
    await page.get_by_role("button", name="Sign in with Microsoft").click()
    await expect(page.get_by_label("Email")).to_have_value("adele.vance@contoso.com")  # login_hint
    await page.get_by_label("Email").fill("alex.wilber@contoso.com")
    await page.get_by_label("Password").fill(password_of(sandbox_control, "contoso", "alex.wilber@contoso.com"))
    await shot(page, "4-delegated-microsoft")
    await page.get_by_role("button", name="Sign in").click()

    await expect_error_summary(page, "You signed in as alex.wilber@contoso.com")
    await shot(page, "4-delegated-other-account")
    await page.get_by_role("button", name="Sign in with Microsoft").click()
    await page.get_by_label("Password").fill(password_of(sandbox_control, "contoso", "adele.vance@contoso.com"))
    await page.get_by_role("button", name="Sign in").click()
    await returned(page, "me")
    await free_busy_works(served, application, ["adele.vance@contoso.com"])


async def test_admin_consent_answer_edited_to_name_another_organisation_is_refused(
    page: Page, served: ServedApp, application: IssuedKey, sandbox: SandboxThread, sandbox_control: SandboxControl
) -> None:
    """Fabrikam's admin holds a link and types Contoso (which approved the operator app) into the answer."""
    contoso = sandbox_control.tenant("contoso")
    sandbox_control.post(f"/_sandbox/tenants/contoso/consent/{operator_of(sandbox).client_id}")
    await page.goto(await new_link(served, application, methods=["graph_consent"], state="forged"))
    await page.get_by_label("Test mailbox").fill("adele.vance@contoso.com")
    await page.get_by_role("button", name="Continue to Microsoft").click()
    await expect(page.get_by_role("heading", name="Permissions requested")).to_be_visible()
    state = parse_qs(urlsplit(page.url).query)["state"][0]

    forged = urlencode({"admin_consent": "True", "tenant": contoso["id"], "state": state})
    await page.goto(f"{served.url}/connect/callback?{forged}")
    # calbroker asks for a sign-in at Contoso; Fabrikam's admin signs in at Fabrikam instead.
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert f"/{contoso['id']}/oauth2/v2.0/authorize?" in page.url
    await page.goto(page.url.replace(f"/{contoso['id']}/", "/fabrikam.com/"))
    fabrikam_admin = str(sandbox_control.tenant("fabrikam")["admin"])
    await sign_in_on_microsoft(page, sandbox_control, "fabrikam", fabrikam_admin)
    await page.get_by_role("button", name="Sign in").click()

    await expect_error_summary(page, "must be by an administrator of the organisation that consented")
    await expect(page.locator(".error-summary h2")).to_have_text(
        "Sign in with an administrator account of the organisation that approved"
    )
    await shot(page, "1-consent-other-organisation")
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{served.url}/v1/connections", headers={"Authorization": f"Bearer {application.token}"}) as listed,
    ):
        assert (await listed.json())["connections"] == []


async def test_the_sandbox_consent_page_lets_a_browser_choose_the_organisation(
    page: Page, sandbox: SandboxThread, sandbox_control: SandboxControl
) -> None:
    """Entra's `organizations` consent page, as the sandbox plays it: the chosen tenant is what is granted."""
    operator = operator_of(sandbox).client_id
    query = urlencode(
        {
            "client_id": operator,
            "scope": "https://graph.microsoft.com/.default",
            "redirect_uri": APP_RETURN,
            "state": "pick",
        }
    )
    fabrikam = sandbox_control.tenant("fabrikam")
    await page.goto(f"{sandbox.url}/organizations/v2.0/adminconsent?{query}")
    chooser = page.get_by_label("Sign in as the administrator of")
    await chooser.select_option(label=f"{fabrikam['display_name']} ({fabrikam['domains'][0]})")
    await shot(page, "6-sandbox-consent-choose-tenant")
    await page.get_by_role("button", name="Accept").click()

    await expect(page.get_by_role("heading", level=1)).to_have_text("Northwind: calendar connected")
    answer = {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}
    assert (answer["admin_consent"], answer["tenant"], answer["state"]) == ("True", fabrikam["id"], "pick")


async def test_used_and_unknown_links_are_explained_and_no_page_showed_a_secret(
    page: Page, served: ServedApp, application: IssuedKey, sandbox: SandboxThread, sandbox_control: SandboxControl
) -> None:
    account = next(a for a in sandbox_control.tenant("fabrikam")["service_accounts"] if a["username"] == "svc-full")
    link = await new_link(served, application, methods=["ews"], access_level="free_busy", state="once")
    await page.goto(link)
    await page.get_by_label("EWS URL, server name or email address").fill(sandbox.ews_url)
    await page.get_by_label("Service account").fill(account["username"])
    await page.get_by_label("Password", exact=True).fill(account["password"])
    await page.get_by_label("How Exchange checks the password").select_option("basic")
    await page.get_by_label("Test mailbox").fill("anna.schmidt@fabrikam.com")
    await shot(page, "5-ews-free-busy-only")
    await page.get_by_role("button", name="Check and connect").click()
    await returned(page, "once")
    await page.goto(link)
    await expect(page.get_by_role("heading", level=1)).to_have_text("This link has already been used")
    await shot(page, "5-used-link")
    await page.goto(link.replace("/connect/cbl_", "/connect/cbl_x"))
    await expect(page.get_by_role("heading", level=1)).to_have_text("This link does not work")
    await shot(page, "5-unknown-link")

    assert len(SEEN) >= 12
    for content in SEEN:
        for secret in TYPED:
            assert secret not in content
