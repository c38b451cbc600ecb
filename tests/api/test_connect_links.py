"""Authorize links end to end over HTTP: create a link, fill in its forms, go through Microsoft (the
sandbox), land on the application's redirect URL; and every way a link is refused.

Nothing is mocked: the pages run against the real database and the sandbox. Every page, JSON body,
log line and audit entry of the module is scanned for the secrets typed in at the end.
"""

from __future__ import annotations

import asyncio
import base64
import html
import io
import re
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from calbroker.app import create_app
from calbroker.cli import main
from calbroker.config import OperatorApp, Settings
from calbroker.logs import configure_logging
from calbroker.sandbox import SandboxThread
from calbroker.store.applications import IssuedKey
from tests.fixtures.connect import APP_RETURN, FormBrowser, connect_settings, hidden_fields, operator_of, query_of
from tests.fixtures.sandbox import SandboxControl

PUBLIC = "http://testserver.local"
MakeApplication = Callable[[str], Awaitable[IssuedKey]]

LOG = io.StringIO()
RESPONSES: list[str] = []
TYPED_SECRETS: set[str] = set()


@pytest.fixture(scope="module", autouse=True)
def captured_logs() -> Any:
    configure_logging("info", json=True, stream=LOG)
    yield LOG
    configure_logging("info", stream=sys.stderr)


@pytest.fixture(scope="module")
def link_settings(settings: Settings, sandbox: SandboxThread) -> Settings:
    return connect_settings(settings, sandbox, public_url=PUBLIC)


@pytest.fixture(scope="module")
async def web(link_settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(app=create_app(link_settings), base_url=PUBLIC) as test_client:
        yield test_client


@pytest.fixture
def browser(web: AsyncTestClient, sandbox: SandboxThread) -> Iterator[FormBrowser]:  # type: ignore[type-arg]
    web.cookies.clear()  # a fresh browser per test
    admin = FormBrowser(web, sandbox)
    yield admin
    RESPONSES.extend(admin.pages)


@pytest.fixture(scope="module")
async def app_a(make_application: MakeApplication) -> IssuedKey:
    return await make_application("Acme Recruiting")


@pytest.fixture(scope="module")
async def app_b(make_application: MakeApplication) -> IssuedKey:
    return await make_application("Bolt CRM")


def auth(key: IssuedKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.token}"}


async def new_link(web: AsyncTestClient, key: IssuedKey, **body: Any) -> dict[str, Any]:  # type: ignore[type-arg]
    body.setdefault("redirect_url", APP_RETURN)
    response = await web.post("/v1/connect_links", json=body, headers=auth(key))
    RESPONSES.append(response.text)
    assert response.status_code == 201, response.text
    return dict(response.json())


def secret_of(sandbox_control: SandboxControl, app_key: str) -> str:
    found = sandbox_control.app(app_key)["secrets"]
    value = str(found[0]["value"]) if found else ""
    if value:
        TYPED_SECRETS.add(value)
    return value


def user(sandbox_control: SandboxControl, tenant: str, email: str) -> dict[str, Any]:
    found: dict[str, Any] = next(u for u in sandbox_control.tenant(tenant)["users"] if u["email"] == email)
    TYPED_SECRETS.add(found["password"])
    return found


def service_account(sandbox_control: SandboxControl, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        a for a in sandbox_control.tenant("fabrikam")["service_accounts"] if a["username"] == name
    )
    TYPED_SECRETS.add(found["password"])
    return found


def graph_app_fields(
    sandbox_control: SandboxControl, app_key: str = "contoso-secret", **overrides: str
) -> dict[str, str]:
    contoso = sandbox_control.tenant("contoso")
    fields = {
        "tenant_id": str(contoso["id"]),
        "client_id": str(sandbox_control.app(app_key)["client_id"]),
        "client_secret": secret_of(sandbox_control, app_key),
        "secret_expires_on": (date.today() + timedelta(days=200)).isoformat(),
        "access_level": "full",
        "test_mailbox": "adele.vance@contoso.com",
        "domains": "contoso.com",
        "cloud": "sandbox",
    }
    return fields | overrides


def error_summary(page: str) -> str:
    found = re.search(r'<div class="error-summary".*?</div>', page, re.DOTALL)
    assert found, page
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", found.group(0))))


def landed(response: Any) -> dict[str, str]:
    """The application's redirect URL was reached: its query (connection_id, state)."""
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(APP_RETURN + "?"), location
    return query_of(location)


# --- creating links -------------------------------------------------------------------------------------


async def test_a_link_is_single_use_expiring_and_stored_only_as_a_hash(
    web: AsyncTestClient,  # type: ignore[type-arg]
    app_a: IssuedKey,
    pool: asyncpg.Pool,
) -> None:
    body = await new_link(web, app_a, state="crm-42", expires_in=3600)
    assert body["url"].startswith(f"{PUBLIC}/connect/cbl_")
    assert body["methods"] == ["graph_consent", "graph_app", "ews", "graph_delegated"]
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)
    token = body["url"].rsplit("/", 1)[1]
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM connect_links WHERE id = $1", uuid.UUID(body["id"]))
    assert row is not None
    assert token not in repr(dict(row))
    assert bytes(row["token_hash"]) != token.encode()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"redirect_url": "javascript:alert(1)"}, "redirect_url"),
        ({"redirect_url": "data:text/html,hi"}, "redirect_url"),
        ({"redirect_url": "http://app.example.test/back"}, "redirect_url"),
        ({"redirect_url": "https://user:pw@app.example.test/back"}, "redirect_url"),
        ({"redirect_url": "/relative"}, "redirect_url"),
        ({"redirect_url": APP_RETURN, "expires_in": 10}, "expires_in"),
        ({"redirect_url": APP_RETURN, "methods": []}, "methods"),
        ({"redirect_url": APP_RETURN, "methods": ["carrier_pigeon"]}, "methods"),
    ],
)
async def test_bad_link_requests_name_the_field(
    web: AsyncTestClient,  # type: ignore[type-arg]
    app_a: IssuedKey,
    body: dict[str, Any],
    field: str,
) -> None:
    response = await web.post("/v1/connect_links", json=body, headers=auth(app_a))
    RESPONSES.append(response.text)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [e["field"].split("[")[0] for e in response.json()["errors"]] == [field]


async def test_without_an_operator_app_only_own_credentials_are_offered(
    settings: Settings, sandbox: SandboxThread, app_a: IssuedKey
) -> None:
    plain = connect_settings(settings, sandbox, public_url=PUBLIC, operator=False)
    async with AsyncTestClient(app=create_app(plain), base_url=PUBLIC) as client:
        offered = await client.post("/v1/connect_links", json={"redirect_url": APP_RETURN}, headers=auth(app_a))
        assert offered.json()["methods"] == ["graph_app", "ews"]
        refused = await client.post(
            "/v1/connect_links", json={"redirect_url": APP_RETURN, "methods": ["graph_consent"]}, headers=auth(app_a)
        )
        assert refused.status_code == 422
        assert "operator" in refused.json()["errors"][0]["message"]


# --- the pages --------------------------------------------------------------------------------------------


async def test_the_link_page_offers_the_methods_and_protects_itself(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
) -> None:
    link = await new_link(web, app_a)
    page = await browser.get(link["url"].removeprefix(PUBLIC))
    assert page.status_code == 200
    assert "Connect your organisation’s calendars to Acme Recruiting" in page.text
    for title in ("approve calbroker’s app", "your own app registration", "service account", "Just my mailbox"):
        assert title in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "Path=/connect" in cookie
    assert "SameSite=lax" in cookie.replace("Lax", "lax")
    token = link["url"].rsplit("/", 1)[1]
    assert token not in page.text  # forms post the link id; the token stays in the address bar


async def test_a_link_with_one_method_opens_its_form(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
) -> None:
    link = await new_link(web, app_a, methods=["ews"], access_level="free_busy")
    page = await browser.get(link["url"].removeprefix(PUBLIC))
    assert page.status_code == 200
    assert "Exchange Server on-premises: service account" in page.text
    assert 'value="free_busy" checked' in page.text
    assert 'value="full"' not in page.text  # the application asked for free/busy only


async def test_an_unknown_link_is_a_clear_404_page(browser: FormBrowser) -> None:
    for path in ("/connect/cbl_" + "x" * 43, "/connect/not-a-token"):
        page = await browser.get(path)
        assert page.status_code == 404
        assert "This link does not work" in page.text
        assert page.headers["content-type"].startswith("text/html")


async def test_an_expired_link_is_a_clear_410_page(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
    pool: asyncpg.Pool,
    sandbox_control: SandboxControl,
) -> None:
    link = await new_link(web, app_a)
    hidden = await browser.open_form(link["url"], "graph_app")
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE connect_links SET expires_at = now() - interval '1 second' WHERE id = $1", uuid.UUID(link["id"])
        )
    page = await browser.get(link["url"].removeprefix(PUBLIC))
    assert page.status_code == 410
    assert "This link has expired" in page.text
    assert "Acme Recruiting" in page.text
    late = await browser.submit(hidden, graph_app_fields(sandbox_control))
    assert late.status_code == 410
    assert "This link has expired" in late.text


async def test_a_forged_csrf_token_is_refused_and_nothing_is_checked(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
    sandbox_control: SandboxControl,
    pool: asyncpg.Pool,
) -> None:
    link = await new_link(web, app_a)
    other = await new_link(web, app_a)
    hidden = await browser.open_form(link["url"], "graph_app")
    other_hidden = await browser.open_form(other["url"], "graph_app")
    fields = graph_app_fields(sandbox_control)
    forgeries = [
        hidden | {"csrf_token": "A" * 43},  # made up
        hidden | {"csrf_token": other_hidden["csrf_token"]},  # another link's token
        {k: v for k, v in hidden.items() if k != "csrf_token"},  # missing
    ]
    for forged in forgeries:
        page = await browser.submit(forged, fields)
        assert page.status_code == 403, page.text
        assert "This form could not be accepted" in page.text
    browser.client.cookies.clear()  # a cross-site post carries no session cookie
    page = await browser.submit(hidden, fields)
    assert page.status_code == 403
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT used_at, attempts FROM connect_links WHERE id = $1", uuid.UUID(link["id"]))
    assert row is not None
    assert (row["used_at"], row["attempts"]) == (None, 0)
    assert sandbox_control.count("entra:token") == 0


# --- own app registration -----------------------------------------------------------------------------


async def test_own_app_registration_wrong_secret_then_corrected(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
    sandbox_control: SandboxControl,
) -> None:
    link = await new_link(web, app_a, state="crm-7")
    hidden = await browser.open_form(link["url"], "graph_app")
    right = graph_app_fields(sandbox_control)
    wrong = right | {"client_secret": right["client_secret"][:-3] + "xyz"}
    TYPED_SECRETS.add(wrong["client_secret"])
    failed = await browser.submit(hidden, wrong)
    assert failed.status_code == 422
    summary = error_summary(failed.text)
    assert "Value, not its Secret ID" in summary
    assert 'href="#client_secret"' in failed.text
    assert f'value="{right["client_id"]}"' in failed.text  # what was typed comes back…
    assert 'value="adele.vance@contoso.com"' in failed.text
    assert wrong["client_secret"] not in failed.text  # …except the secret
    assert 'aria-invalid="true"' in failed.text

    done = await browser.submit(hidden_fields(failed.text), right)
    back = landed(done)
    assert back["state"] == "crm-7"
    connection = await web.get(f"/v1/connections/{back['connection_id']}", headers=auth(app_a))
    RESPONSES.append(connection.text)
    body = connection.json()
    assert (body["method"], body["kind"], body["status"], body["domains"]) == (
        "graph_app",
        "graph",
        "active",
        ["contoso.com"],
    )
    assert body["secret_expires_at"].startswith((date.today() + timedelta(days=200)).isoformat())
    assert body["warnings"] == []

    used = await browser.get(link["url"].removeprefix(PUBLIC))
    assert used.status_code == 410
    assert "already been used" in used.text
    again = await browser.submit(hidden_fields(failed.text), right)
    assert again.status_code == 410


async def test_the_cli_and_the_connect_form_store_the_same_expiry_instant(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
    sandbox_control: SandboxControl,
    link_settings: Settings,
    pool: asyncpg.Pool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One parser behind both doors: a date typed in either is the same instant in the store."""
    typed = (date.today() + timedelta(days=321)).isoformat()
    link = await new_link(web, app_a)
    done = await browser.submit(
        await browser.open_form(link["url"], "graph_app"),
        graph_app_fields(sandbox_control, secret_expires_on=typed),
    )
    from_form = uuid.UUID(landed(done)["connection_id"])
    fields = graph_app_fields(sandbox_control)
    key = link_settings.master_keys[0]
    env = {
        "DATABASE_URL": str(link_settings.database_url),
        "CALBROKER_MASTER_KEYS": f"{key.kid}:{base64.b64encode(key.key).decode()}",
        "CALBROKER_DATA_DIR": str(link_settings.data_dir),
        "CALBROKER_SANDBOX_URL": sandbox_control.url,
        "CALBROKER_SANDBOX_CA": str(link_settings.clouds["sandbox"].ca_bundle),
        "CALBROKER_ALLOW_PRIVATE_UPSTREAMS": "true",
        "CALBROKER_LOG_LEVEL": "warning",
    }
    command = [
        "connections", "add-graph", "--application", str(app_a.application.id), "--tenant-id", fields["tenant_id"],
        "--client-id", fields["client_id"], "--client-secret", fields["client_secret"], "--domains", "contoso.com",
        "--test-mailbox", "adele.vance@contoso.com", "--cloud", "sandbox", "--secret-expires", typed,
    ]  # fmt: skip
    assert await asyncio.to_thread(main, command, env) == 0
    capsys.readouterr()
    async with pool.acquire() as conn:
        stored = {
            row["id"]: row["secret_expires_at"]
            for row in await conn.fetch(
                "SELECT id, secret_expires_at FROM connections WHERE application_id = $1", app_a.application.id
            )
        }
    from_cli = [value for connection_id, value in stored.items() if connection_id != from_form and value is not None]
    assert stored[from_form] is not None
    assert stored[from_form].date().isoformat() == typed
    assert stored[from_form] in from_cli


@pytest.mark.parametrize(
    ("app_key", "overrides", "field", "words"),
    [
        ("contoso-expired", {}, "client_secret", "has expired"),
        ("contoso-secret", {"test_mailbox": "diego.siciliani@contoso.com"}, "test_mailbox", "access policy"),
        ("contoso-secret", {"secret_expires_on": "2020-01-31"}, "secret_expires_on", "has passed"),
        ("contoso-secret", {"client_secret": "3f2504e0-4f89-11d3-9a0c-0305e82c3301"}, "client_secret", "not its Value"),
        ("contoso-secret", {"tenant_id": "nowhere.example"}, "tenant_id", "does not exist"),
        ("contoso-secret", {"test_mailbox": "adele.vance@fabrikam.com"}, "test_mailbox", "domains"),
    ],
)
async def test_own_app_registration_failures_point_at_the_field(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
    sandbox_control: SandboxControl,
    app_key: str,
    overrides: dict[str, str],
    field: str,
    words: str,
) -> None:
    link = await new_link(web, app_a)
    hidden = await browser.open_form(link["url"], "graph_app")
    page = await browser.submit(hidden, graph_app_fields(sandbox_control, app_key, **overrides))
    assert page.status_code == 422, page.text
    assert f'id="{field}-error"' in page.text, error_summary(page.text)
    assert words in error_summary(page.text)


async def test_an_app_with_only_calendars_read_is_saved_as_free_busy_never_full(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
    sandbox_control: SandboxControl,
) -> None:
    """Reading a calendar succeeds with Calendars.Read, so only the token's roles tell it cannot book."""
    link = await new_link(web, app_a)
    hidden = await browser.open_form(link["url"], "graph_app")
    fields = graph_app_fields(sandbox_control, "contoso-reader")
    refused = await browser.submit(hidden, fields)
    assert refused.status_code == 422, refused.text
    assert '<fieldset id="access_level" class="field-error">' in refused.text, error_summary(refused.text)
    summary = error_summary(refused.text)
    assert "Calendars.ReadWrite" in summary
    assert "Calendars.Read," in summary or "has Calendars.Read" in summary
    assert "free/busy only" in summary
    done = await browser.submit(hidden_fields(refused.text), fields | {"access_level": "free_busy"})
    back = landed(done)
    body = (await web.get(f"/v1/connections/{back['connection_id']}", headers=auth(app_a))).json()
    assert body["access_level"] == "free_busy"


async def test_own_app_registration_with_a_certificate(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
    sandbox_control: SandboxControl,
) -> None:
    certificate = sandbox_control.app("contoso-certificate")["certificates"][0]
    TYPED_SECRETS.add(certificate["private_key_pem"].split("-----")[2].strip()[:64])
    pem = (certificate["private_key_pem"] + certificate["certificate_pem"]).encode()
    link = await new_link(web, app_a)
    hidden = await browser.open_form(link["url"], "graph_app")
    fields = graph_app_fields(sandbox_control, "contoso-certificate") | {"client_secret": "", "secret_expires_on": ""}
    done = await browser.submit(hidden, fields, files={"certificate": ("contoso.pem", pem, "application/x-pem-file")})
    back = landed(done)
    body = (await web.get(f"/v1/connections/{back['connection_id']}", headers=auth(app_a))).json()
    assert body["secret_expires_at"].startswith(certificate["expires"][:10])


# --- Exchange on-premises ----------------------------------------------------------------------------------


async def test_exchange_service_account_impersonation_denied_then_free_busy(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
) -> None:
    account = service_account(sandbox_control, "svc-freebusy")
    link = await new_link(web, app_a)
    hidden = await browser.open_form(link["url"], "ews")
    fields = {
        "endpoint": sandbox.ews_url,
        "username": f"FABRIKAM\\{account['username']}",
        "password": account["password"],
        "auth_type": "basic",
        "access_level": "full",
        "test_mailbox": "anna.schmidt@fabrikam.com",
        "domains": "",
    }
    failed = await browser.submit(hidden, fields)
    assert failed.status_code == 422
    assert "may not impersonate" in error_summary(failed.text)
    assert "Free/busy only" in error_summary(failed.text)
    assert account["password"] not in failed.text
    done = await browser.submit(hidden_fields(failed.text), fields | {"access_level": "free_busy"})
    back = landed(done)
    body = (await web.get(f"/v1/connections/{back['connection_id']}", headers=auth(app_a))).json()
    assert (body["kind"], body["access_level"], body["domains"]) == ("ews", "free_busy", ["fabrikam.com"])
    assert body["endpoint"] == sandbox.ews_url


async def test_exchange_form_takes_an_email_address_and_autodiscovers_the_endpoint(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
) -> None:
    account = service_account(sandbox_control, "svc-full")
    link = await new_link(web, app_a)
    hidden = await browser.open_form(link["url"], "ews")
    fields = {
        "endpoint": "nobody@fabrikam.com",
        "username": f"FABRIKAM\\{account['username']}",
        "password": account["password"],
        "auth_type": "ntlm",
        "access_level": "full",
        "test_mailbox": "anna.schmidt@fabrikam.com",
    }

    unknown = await browser.submit(hidden, fields)
    assert unknown.status_code == 422
    assert 'id="endpoint-error"' in unknown.text
    assert "Autodiscover found no EWS URL for nobody@fabrikam.com" in error_summary(unknown.text)
    assert f"{sandbox.url}/autodiscover/autodiscover.svc" in error_summary(unknown.text)  # what was tried
    assert account["password"] not in unknown.text

    done = await browser.submit(hidden_fields(unknown.text), fields | {"endpoint": "Anna.Schmidt@fabrikam.com"})
    back = landed(done)
    body = (await web.get(f"/v1/connections/{back['connection_id']}", headers=auth(app_a))).json()
    assert (body["kind"], body["endpoint"]) == ("ews", sandbox.ews_url)


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"endpoint": "outlook.office365.com"}, "endpoint", "Microsoft Graph instead"),
        ({"endpoint": "https://127.0.0.1:1/EWS/Exchange.asmx"}, "endpoint", "unreachable"),
        ({"endpoint": "http://mail.fabrikam.example/EWS/Exchange.asmx"}, "endpoint", "https"),
        ({"endpoint": "https://169.254.169.254/EWS/Exchange.asmx"}, "endpoint", "metadata"),
        ({"endpoint": "https://mail]fabrikam.example/EWS/Exchange.asmx"}, "endpoint", "not an https:// URL"),
        ({"password": "wrong-password"}, "password", "password rejected"),
        ({"test_mailbox": "frank.miller@fabrikam.com"}, "test_mailbox", "impersonate"),
        ({"test_mailbox": "nobody@fabrikam.com"}, "test_mailbox", "no mailbox"),
        # PostgreSQL refuses U+0000 and XML refuses the other control characters: named, never a 500.
        ({"test_mailbox": "anna.schmidt\x00@fabrikam.com"}, "test_mailbox", "control characters"),
        ({"domains": "fabrikam.com\x00"}, "domains", "control characters"),
    ],
)
async def test_exchange_failures_point_at_the_field(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
    overrides: dict[str, str],
    field: str,
    words: str,
) -> None:
    account = service_account(sandbox_control, "svc-full")
    link = await new_link(web, app_a)
    hidden = await browser.open_form(link["url"], "ews")
    fields = {
        "endpoint": sandbox.ews_url,
        "username": f"FABRIKAM\\{account['username']}",
        "password": account["password"],
        "auth_type": "basic",
        "access_level": "full",
        "test_mailbox": "anna.schmidt@fabrikam.com",
    } | overrides
    page = await browser.submit(hidden, fields)
    assert page.status_code == 422, page.text
    assert f'id="{field}-error"' in page.text, error_summary(page.text)
    assert words in error_summary(page.text)


async def test_exchange_tls_failure_is_named(
    settings: Settings,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
    app_a: IssuedKey,
) -> None:
    # Without the sandbox's CA (an operator app in the worldwide cloud), its certificate is untrusted.
    operator = operator_of(sandbox)
    untrusting = replace(
        connect_settings(settings, sandbox, public_url=PUBLIC),
        operator_app=OperatorApp(operator.client_id, operator.client_secret, "global"),
    )
    account = service_account(sandbox_control, "svc-full")
    async with AsyncTestClient(app=create_app(untrusting), base_url=PUBLIC) as client:
        link = await new_link(client, app_a, methods=["ews"])
        browser = FormBrowser(client, sandbox)
        hidden = await browser.open_form(link["url"], "ews")
        page = await browser.submit(
            hidden,
            {
                "endpoint": sandbox.ews_url,
                "username": account["username"],
                "password": account["password"],
                "auth_type": "basic",
                "access_level": "full",
                "test_mailbox": "anna.schmidt@fabrikam.com",
            },
        )
        RESPONSES.append(page.text)
    assert page.status_code == 422
    assert "TLS" in error_summary(page.text)


# --- through Microsoft's pages: admin consent and delegated sign-in --------------------------------------


@pytest.fixture
def operator_consent(sandbox_control: SandboxControl, sandbox: SandboxThread) -> Any:
    """Withdraw the operator app's consent in every tenant afterwards: the sandbox is shared."""
    client_id = operator_of(sandbox).client_id
    yield client_id
    for tenant in ("contoso", "fabrikam"):
        sandbox_control.delete(f"/_sandbox/tenants/{tenant}/consent/{client_id}")


async def test_admin_consent_cancelled_then_accepted(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
    sandbox_control: SandboxControl,
    operator_consent: str,
) -> None:
    contoso = sandbox_control.tenant("contoso")
    link = await new_link(web, app_a, state="s1")
    hidden = await browser.open_form(link["url"], "graph_consent")
    fields = {"test_mailbox": "Adele.Vance@contoso.com", "domains": "", "access_level": "full", "action": "consent"}
    to_microsoft = await browser.submit(hidden, fields)
    assert to_microsoft.status_code == 303
    consent_url = to_microsoft.headers["location"]
    assert "/contoso.com/v2.0/adminconsent?" in consent_url  # the test mailbox's organisation
    assert query_of(consent_url)["client_id"] == operator_consent
    assert query_of(consent_url)["redirect_uri"] == f"{PUBLIC}/connect/callback"

    cancelled = await browser.callback(await browser.consent(consent_url, contoso["id"], accept=False))
    assert cancelled.status_code == 422
    assert "You cancelled on Microsoft" in error_summary(cancelled.text)
    assert 'value="adele.vance@contoso.com"' in cancelled.text

    again = await browser.submit(hidden_fields(cancelled.text), fields)
    back_url = await browser.consent(again.headers["location"], contoso["id"])
    assert query_of(back_url)["admin_consent"] == "True"
    to_sign_in = await browser.callback(back_url)  # the answer is a claim: the admin proves it by signing in
    assert to_sign_in.status_code == 303
    admin = user(sandbox_control, "contoso", contoso["admin"])
    signed_in = await browser.sign_in(to_sign_in.headers["location"], admin["email"], admin["password"])
    done = await browser.callback(signed_in)
    back = landed(done)
    assert back["state"] == "s1"
    body = (await web.get(f"/v1/connections/{back['connection_id']}", headers=auth(app_a))).json()
    assert (body["method"], body["tenant_id"], body["domains"]) == ("graph_consent", contoso["id"], ["contoso.com"])

    replayed = await browser.callback(back_url)  # Microsoft's answer is accepted once
    assert replayed.status_code == 400


async def test_admin_consent_answer_in_another_browser_is_refused(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
    sandbox_control: SandboxControl,
    operator_consent: str,
) -> None:
    link = await new_link(web, app_a)
    hidden = await browser.open_form(link["url"], "graph_consent")
    to_microsoft = await browser.submit(hidden, {"test_mailbox": "adele.vance@contoso.com", "access_level": "full"})
    back_url = await browser.consent(to_microsoft.headers["location"], sandbox_control.tenant("contoso")["id"])
    browser.client.cookies.clear()
    elsewhere = await browser.callback(back_url)
    assert elsewhere.status_code == 403
    assert "finish in the browser where you started" in elsewhere.text


async def test_admin_consent_with_a_mailbox_of_another_tenant_offers_to_check_again(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
    sandbox_control: SandboxControl,
    operator_consent: str,
) -> None:
    contoso = sandbox_control.tenant("contoso")
    admin = user(sandbox_control, "contoso", contoso["admin"])
    link = await new_link(web, app_a)
    hidden = await browser.open_form(link["url"], "graph_consent")
    to_microsoft = await browser.submit(hidden, {"test_mailbox": "nobody@contoso.com", "access_level": "full"})
    failed = await browser.approve(to_microsoft.headers["location"], contoso["id"], admin["email"], admin["password"])
    assert failed.status_code == 422
    assert 'id="test_mailbox-error"' in failed.text
    assert "Check again" in failed.text
    fixed = await browser.submit(
        hidden_fields(failed.text), {"test_mailbox": "alex.wilber@contoso.com", "action": "recheck"}
    )
    landed(fixed)  # no second trip to Microsoft


async def test_delegated_sign_in_as_someone_else_then_as_the_right_user(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
    sandbox_control: SandboxControl,
    operator_consent: str,
) -> None:
    adele = user(sandbox_control, "contoso", "adele.vance@contoso.com")
    alex = user(sandbox_control, "contoso", "alex.wilber@contoso.com")
    link = await new_link(web, app_a, state="me")
    hidden = await browser.open_form(link["url"], "graph_delegated")
    to_microsoft = await browser.submit(hidden, {"mailbox": adele["email"]})
    assert to_microsoft.status_code == 303
    sign_in_url = to_microsoft.headers["location"]
    sent = query_of(sign_in_url)
    assert (sent["code_challenge_method"], sent["login_hint"]) == ("S256", adele["email"])
    assert "offline_access" in sent["scope"]

    wrong = await browser.callback(await browser.sign_in(sign_in_url, alex["email"], alex["password"]))
    assert wrong.status_code == 422
    assert "You signed in as alex.wilber@contoso.com" in error_summary(wrong.text)

    again = await browser.submit(hidden_fields(wrong.text), {"mailbox": adele["email"]})
    done = await browser.callback(await browser.sign_in(again.headers["location"], adele["email"], adele["password"]))
    back = landed(done)
    body = (await web.get(f"/v1/connections/{back['connection_id']}", headers=auth(app_a))).json()
    assert (body["method"], body["allowed_mailboxes"], body["domains"]) == (
        "graph_delegated",
        [adele["email"]],
        ["contoso.com"],
    )
    # The sealed refresh token is the one that works: verifying it again needs no new sign-in.
    verified = await web.post(f"/v1/connections/{back['connection_id']}/verify", headers=auth(app_a))
    RESPONSES.append(verified.text)
    assert verified.json()["verified"] is True, verified.text


# --- limits and isolation -----------------------------------------------------------------------------


async def test_verification_attempts_are_rate_limited_per_link(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
) -> None:
    link = await new_link(web, app_a)
    hidden = await browser.open_form(link["url"], "ews")
    for _ in range(10):
        page = await browser.submit(hidden, {"test_mailbox": "", "endpoint": ""})
        assert page.status_code == 422
    limited = await browser.submit(hidden, {"test_mailbox": "", "endpoint": ""})
    assert limited.status_code == 429
    assert "Too many attempts" in limited.text
    assert 0 < int(limited.headers["retry-after"]) <= 900
    other = await new_link(web, app_a)  # the limit is per link
    other_hidden = await browser.open_form(other["url"], "ews")
    assert (await browser.submit(other_hidden, {"test_mailbox": ""})).status_code == 422


async def test_a_link_of_application_a_never_reaches_application_b(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
    app_b: IssuedKey,
    sandbox_control: SandboxControl,
) -> None:
    link = await new_link(web, app_a)
    hidden = await browser.open_form(link["url"], "graph_app")
    connection_id = landed(await browser.submit(hidden, graph_app_fields(sandbox_control)))["connection_id"]

    assert (await web.get(f"/v1/connections/{connection_id}", headers=auth(app_a))).status_code == 200
    for method, path in [
        ("GET", f"/v1/connections/{connection_id}"),
        ("DELETE", f"/v1/connections/{connection_id}"),
        ("POST", f"/v1/connections/{connection_id}/verify"),
        ("GET", f"/v1/connections/{connection_id}/rooms"),
    ]:
        response = await web.request(method, path, headers=auth(app_b))
        RESPONSES.append(response.text)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["type"] == "/problems/not-found"
    listed = (await web.get("/v1/connections", headers=auth(app_b))).json()["connections"]
    assert connection_id not in {c["id"] for c in listed}
    # The link's own token is no API key either.
    token = link["url"].rsplit("/", 1)[1]
    assert (await web.get("/v1/connections", headers={"Authorization": f"Bearer {token}"})).status_code == 401
    # B's links cannot be driven with a form token issued for A's.
    link_b = await new_link(web, app_b)
    await browser.open_form(link_b["url"], "graph_app")
    forged = await browser.submit(hidden | {"link": link_b["id"]}, graph_app_fields(sandbox_control))
    assert forged.status_code == 403


async def test_connected_tenants_answer_free_busy_with_no_other_step(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    make_application: MakeApplication,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
) -> None:
    fresh = await make_application("Fresh App")
    link = await new_link(web, fresh)
    landed(await browser.submit(await browser.open_form(link["url"], "graph_app"), graph_app_fields(sandbox_control)))
    account = service_account(sandbox_control, "svc-full")
    link = await new_link(web, fresh)
    ews = {
        "endpoint": sandbox.ews_url,
        "username": account["username"],
        "password": account["password"],
        "auth_type": "basic",
        "access_level": "full",
        "test_mailbox": "anna.schmidt@fabrikam.com",
    }
    landed(await browser.submit(await browser.open_form(link["url"], "ews"), ews))
    start = datetime(2026, 11, 24, tzinfo=UTC)
    response = await web.post(
        "/v1/free_busy",
        json={
            "mailboxes": ["adele.vance@contoso.com", "anna.schmidt@fabrikam.com"],
            "start": start.isoformat(),
            "end": (start + timedelta(days=1)).isoformat(),
        },
        headers=auth(fresh),
    )
    RESPONSES.append(response.text)
    assert response.status_code == 200, response.text
    for entry in response.json()["free_busy"]:
        assert "error" not in entry, entry
        assert entry["busy"], entry


# --- nothing secret leaks -------------------------------------------------------------------------------


async def test_no_secret_in_any_page_response_log_or_audit_entry(
    browser: FormBrowser, pool: asyncpg.Pool, app_a: IssuedKey, app_b: IssuedKey
) -> None:
    """Runs last in the module: everything the tests above typed is searched for everywhere."""
    assert len(TYPED_SECRETS) >= 5
    assert len(RESPONSES) > 100
    async with pool.acquire() as conn:
        audit = [repr(dict(r)) for r in await conn.fetch("SELECT * FROM audit_log")]
        links = [repr(dict(r)) for r in await conn.fetch("SELECT * FROM connect_links")]
        connections = [repr(dict(r)) for r in await conn.fetch("SELECT * FROM connections")]
    logs = LOG.getvalue()
    assert '"event": "connect.refused"' in logs  # the capture works
    assert "cbl_[REDACTED]" in logs  # link tokens in request paths are redacted
    haystacks = {
        "pages": "\n".join(RESPONSES),
        "logs": logs,
        "audit": "\n".join(audit),
        "links": "\n".join(links),
        "connections": "\n".join(connections),
    }
    needles = {*TYPED_SECRETS, app_a.token, app_b.token}
    for where, text in haystacks.items():
        for needle in needles:
            assert needle not in text, f"a secret leaked into {where}"
        assert not re.search(r"0\.A[A-Za-z0-9_-]{40,}", text), f"a refresh token leaked into {where}"
        assert not re.search(r"cbl_[A-Za-z0-9_-]{20,}", text) or where == "pages", f"a link token in {where}"


async def test_a_teams_only_app_connects_with_the_online_meetings_purpose(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    app_a: IssuedKey,
    sandbox_control: SandboxControl,
) -> None:
    """The hybrid set-up: Fabrikam's mailboxes are on Exchange on-premises, its Graph app may only make
    Teams meetings. Checked as a calendar connection it fails (it reads no calendar); as a Teams-only one it
    is verified by a Teams meeting for the test mailbox, and saved."""
    link = await new_link(web, app_a, state="hybrid")
    hidden = await browser.open_form(link["url"], "graph_app")
    assert 'name="purpose" value="online_meetings"' in browser.pages[-1]
    teams = graph_app_fields(
        sandbox_control,
        "fabrikam-teams",
        tenant_id=str(sandbox_control.tenant("fabrikam")["id"]),
        test_mailbox="anna.schmidt@fabrikam.com",
        domains="fabrikam.com",
    )
    as_calendars = await browser.submit(hidden, teams | {"purpose": "calendars"})
    assert as_calendars.status_code == 422, as_calendars.text
    assert "checked" in re.search(r'<input[^>]*value="calendars"[^>]*>', as_calendars.text).group(0)  # type: ignore[union-attr]

    done = await browser.submit(hidden_fields(as_calendars.text), teams | {"purpose": "online_meetings"})
    back = landed(done)
    body = (await web.get(f"/v1/connections/{back['connection_id']}", headers=auth(app_a))).json()
    assert (body["purpose"], body["access_level"], body["status"]) == ("online_meetings", None, "active")
    assert sandbox_control.count("graph:onlineMeetings.createOrGet") == 1
    assert sandbox_control.count("graph:onlineMeetings.delete") == 1
