"""The newcomer's first hour in a browser: `calbroker demo` as `make run` starts it, all four connect methods.

The demo runs as its own process from this checkout (its own data directory, embedded PostgreSQL,
sandbox and worker); Chromium opens the authorize link the demo printed (admin consent, landing on
the demo's own return page), then links the application asks for (its own app registration, an
Exchange service account typed on the page, one mailbox's delegated sign-in). Each walk ends on
the redirect with a connection id, and that connection then answers free/busy. Afterwards the demo
is stopped with SIGTERM and must leave nothing running. `make browser-fresh-clone` runs the same
walk from a fresh clone with `make run PORT=…` (tests/browser/fresh_clone.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from playwright.async_api import BrowserContext, Page, Route, expect

from calbroker.sandbox.ews import EWS_PATH
from tests.fixtures.processes import Calbroker, assert_server_stopped, free_port, postmaster_pid
from tests.fixtures.sandbox import SandboxControl

pytestmark = pytest.mark.browser

APP_RETURN = "https://crm.example.test/calendar/connected"


@dataclass(frozen=True)
class RunningDemo:
    """What a running demo wrote to demo.json, and the sandbox's control plane behind it."""

    world: dict[str, Any]
    sandbox: SandboxControl

    @property
    def url(self) -> str:
        return str(self.world["base_url"])

    @property
    def key(self) -> str:
        return str(self.world["api_key"])


def start_demo(data_dir: Path) -> tuple[Calbroker, dict[str, Any]]:
    demo = Calbroker(data_dir, "demo", "--port", str(free_port()))
    demo.wait_for("calbroker listening")
    world = json.loads((data_dir / "demo.json").read_text())
    return demo, world


def stop_demo(demo: Calbroker) -> None:
    """SIGTERM, as a terminal or a supervisor would: a graceful stop that leaves nothing running."""
    pid = postmaster_pid(demo.data_dir)
    demo.process.send_signal(signal.SIGTERM)
    assert demo.exit_code() == 0, demo.output
    if pid is not None:
        assert_server_stopped(demo.data_dir, pid)


def sandbox_control(world: dict[str, Any]) -> SandboxControl:
    return SandboxControl(world["sandbox_url"], ssl.create_default_context(cafile=world["sandbox_ca"]))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    """The demo, started here; or one already running (`make run` in a fresh clone) whose data dir
    CALBROKER_DEMO_DATA_DIR names: then whoever started it stops it."""
    running = os.environ.get("CALBROKER_DEMO_DATA_DIR")
    if running:
        world = json.loads((Path(running) / "demo.json").read_text())
        yield RunningDemo(world, sandbox_control(world))
        return
    process, world = start_demo(tmp_path_factory.mktemp("demo"))
    try:
        yield RunningDemo(world, sandbox_control(world))
    finally:
        try:
            stop_demo(process)
        finally:
            process.kill()


@pytest.fixture
async def page(chromium: BrowserContext) -> AsyncIterator[Page]:
    """A fresh tab; links the test asks for return to an application page Playwright answers."""
    await chromium.clear_cookies()

    async def the_application(route: Route) -> None:
        await route.fulfill(
            status=200, content_type="text/html", body="<!doctype html><title>CRM</title><h1>Calendar connected</h1>"
        )

    await chromium.route(f"{APP_RETURN}**", the_application)
    tab = await chromium.new_page()
    try:
        yield tab
    finally:
        await tab.close()
        await chromium.unroute(f"{APP_RETURN}**")


async def api(demo: RunningDemo, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, f"{demo.url}{path}", json=body, headers={"Authorization": f"Bearer {demo.key}"}
        ) as response,
    ):
        return response.status, await response.json()


async def new_link(demo: RunningDemo, method: str) -> str:
    status, created = await api(
        demo, "POST", "/v1/connect_links", {"redirect_url": APP_RETURN, "methods": [method], "state": method}
    )
    assert status == 201, created
    return str(created["url"])


async def connected(page: Page, state: str, *, heading: str = "Calendar connected") -> str:
    """The admin is back on the application's page with a connection id (and the link's state)."""
    refused = page.locator(".error-summary")
    if await refused.count():
        raise AssertionError(f"the connect page refused: {await refused.inner_text()}")
    await expect(page.get_by_role("heading", level=1)).to_have_text(heading)
    query = {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}
    assert query["state"] == state, page.url
    assert re.fullmatch(r"[0-9a-f-]{36}", query["connection_id"]), page.url
    return query["connection_id"]


async def connection_works(demo: RunningDemo, connection_id: str, method: str, mailboxes: list[str]) -> None:
    """The connection is the application's, active, made the way the admin chose, and answers free/busy."""
    status, connection = await api(demo, "GET", f"/v1/connections/{connection_id}")
    assert status == 200, connection
    assert (connection["method"], connection["status"]) == (method, "active"), connection
    status, verified = await api(demo, "POST", f"/v1/connections/{connection_id}/verify")
    assert status == 200, verified
    assert verified["verified"], verified
    window = demo.world["windows"]["tomorrow"]
    status, answer = await api(demo, "POST", "/v1/free_busy", {"mailboxes": mailboxes, **window, "freshness": "live"})
    assert status == 200, answer
    assert [entry["mailbox"] for entry in answer["free_busy"]] == mailboxes
    for entry in answer["free_busy"]:
        assert "error" not in entry, entry
        assert "busy" in entry, entry


def password_of(demo: RunningDemo, tenant: str, email: str) -> str:
    return str(next(u for u in demo.sandbox.tenant(tenant)["users"] if u["email"] == email)["password"])


async def sign_in(page: Page, demo: RunningDemo, tenant: str, email: str) -> None:
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password_of(demo, tenant, email))
    await page.get_by_role("button", name="Sign in").click()


async def test_admin_consent_through_the_link_the_demo_printed(page: Page, demo: RunningDemo) -> None:
    admin = str(demo.sandbox.tenant("contoso")["admin"])
    await page.goto(demo.world["connect_link"])
    for method in ("approve calbroker", "your own app registration", "service account", "Just my mailbox"):
        await expect(page.get_by_role("link", name=re.compile(method))).to_be_visible()
    await page.get_by_role("link", name=re.compile("approve calbroker")).click()
    await page.get_by_label("Test mailbox").fill("adele.vance@contoso.com")
    await page.get_by_role("button", name="Continue to Microsoft").click()
    await page.get_by_role("button", name="Accept").click()
    await sign_in(page, demo, "contoso", admin)
    connection_id = await connected(page, "demo")
    assert urlsplit(page.url).path == "/demo/connected"  # the demo's own return page
    await expect(page.locator("#connection-id")).to_have_text(connection_id)
    await connection_works(demo, connection_id, "graph_consent", ["adele.vance@contoso.com", "alex.wilber@contoso.com"])


async def test_own_app_registration(page: Page, demo: RunningDemo) -> None:
    app = demo.sandbox.app("contoso-secret")
    await page.goto(await new_link(demo, "graph_app"))
    await page.get_by_label("Directory (tenant) ID").fill(str(demo.sandbox.tenant("contoso")["id"]))
    await page.get_by_label("Application (client) ID").fill(str(app["client_id"]))
    await page.get_by_label("Client secret value").fill(str(app["secrets"][0]["value"]))
    await page.get_by_label("Client secret expires on").fill((date.today() + timedelta(days=180)).isoformat())
    await page.get_by_label("Test mailbox").fill("adele.vance@contoso.com")
    await page.get_by_role("button", name="Check and connect").click()
    connection_id = await connected(page, "graph_app")
    await connection_works(demo, connection_id, "graph_app", ["adele.vance@contoso.com", "alex.wilber@contoso.com"])


async def test_exchange_service_account_over_the_sandbox_tls(page: Page, demo: RunningDemo) -> None:
    """The EWS server's certificate is the sandbox CA's: a link-made connection must trust it."""
    account = next(a for a in demo.sandbox.tenant("fabrikam")["service_accounts"] if a["username"] == "svc-full")
    await page.goto(await new_link(demo, "ews"))
    await page.get_by_label("EWS URL, server name or email address").fill(demo.world["sandbox_url"] + EWS_PATH)
    await page.get_by_label("Service account").fill(f"FABRIKAM\\{account['username']}")
    await page.get_by_label("Password", exact=True).fill(account["password"])
    await page.get_by_label("How Exchange checks the password").select_option("basic")
    await page.get_by_label("Test mailbox").fill("anna.schmidt@fabrikam.com")
    await page.get_by_role("button", name="Check and connect").click()
    connection_id = await connected(page, "ews")
    await connection_works(demo, connection_id, "ews", ["anna.schmidt@fabrikam.com", "ben.taylor@fabrikam.com"])


async def test_one_mailbox_delegated_sign_in(page: Page, demo: RunningDemo) -> None:
    await page.goto(await new_link(demo, "graph_delegated"))
    await page.get_by_label("Your email address").fill("miriam.graham@contoso.com")
    await page.get_by_role("button", name="Sign in with Microsoft").click()
    await expect(page.get_by_label("Email")).to_have_value("miriam.graham@contoso.com")  # login_hint
    await page.get_by_label("Password").fill(password_of(demo, "contoso", "miriam.graham@contoso.com"))
    await page.get_by_role("button", name="Sign in").click()
    connection_id = await connected(page, "graph_delegated")
    await connection_works(demo, connection_id, "graph_delegated", ["miriam.graham@contoso.com"])
