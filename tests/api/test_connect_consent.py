"""Admin consent is followed by the admin's sign-in, and only a verified ID token says which
organisation consented.

Microsoft's consent answer (`admin_consent=True&tenant=…&state=…`) comes back through the browser
unsigned. These tests play a tenant admin who holds a link and edits that answer to name another
organisation that already approved the operator app, then every way the sign-in that follows can
go wrong (another tenant, a user who is no administrator, an expired token, a replay), and the
happy path. Nothing is mocked: calbroker runs against the real database and the sandbox.
"""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from calbroker.app import create_app
from calbroker.config import Settings
from calbroker.logs import configure_logging
from calbroker.sandbox import SandboxThread
from calbroker.store.applications import IssuedKey
from tests.fixtures.connect import APP_RETURN, FormBrowser, connect_settings, hidden_fields, operator_of, query_of
from tests.fixtures.sandbox import SandboxControl

PUBLIC = "http://testserver.local"
MakeApplication = Callable[[str], Awaitable[IssuedKey]]
LOG = io.StringIO()
PAGES: list[str] = []
TYPED: set[str] = set()


@pytest.fixture(scope="module", autouse=True)
def captured_logs() -> Any:
    configure_logging("info", json=True, stream=LOG)
    yield LOG
    configure_logging("info", stream=sys.stderr)


@pytest.fixture(scope="module")
async def web(settings: Settings, sandbox: SandboxThread) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    app = create_app(connect_settings(settings, sandbox, public_url=PUBLIC))
    async with AsyncTestClient(app=app, base_url=PUBLIC) as test_client:
        yield test_client


@pytest.fixture
def browser(web: AsyncTestClient, sandbox: SandboxThread) -> Iterator[FormBrowser]:  # type: ignore[type-arg]
    web.cookies.clear()
    admin = FormBrowser(web, sandbox)
    yield admin
    PAGES.extend(admin.pages)


@pytest.fixture
async def application(make_application: MakeApplication) -> IssuedKey:
    """A fresh application per test, so "nothing was saved" is one list call."""
    return await make_application("Consent Tests")


@pytest.fixture
def operator_client_id(sandbox: SandboxThread, sandbox_control: SandboxControl) -> Iterator[str]:
    """The operator app's client id; its consent in contoso and fabrikam is withdrawn afterwards."""
    client_id = operator_of(sandbox).client_id
    yield client_id
    for tenant in ("contoso", "fabrikam"):
        sandbox_control.delete(f"/_sandbox/tenants/{tenant}/consent/{client_id}")


def account(sandbox_control: SandboxControl, tenant: str, email: str | None = None) -> dict[str, Any]:
    """A user of `tenant` with their password (the tenant's administrator unless `email` names another)."""
    wanted = email or sandbox_control.tenant(tenant)["admin"]
    found: dict[str, Any] = next(u for u in sandbox_control.tenant(tenant)["users"] if u["email"] == wanted)
    TYPED.add(found["password"])
    return found


async def start_consent(
    web: Any, browser: FormBrowser, key: IssuedKey, test_mailbox: str, **link: Any
) -> tuple[str, dict[str, str]]:
    """Open a new link's consent form and submit it: Microsoft's consent URL, and the form's hidden fields."""
    created = await web.post(
        "/v1/connect_links",
        json={"redirect_url": APP_RETURN, "methods": ["graph_consent"], **link},
        headers={"Authorization": f"Bearer {key.token}"},
    )
    assert created.status_code == 201, created.text
    hidden = await browser.open_form(created.json()["url"], "graph_consent")
    to_microsoft = await browser.submit(hidden, {"test_mailbox": test_mailbox, "access_level": "full"})
    assert to_microsoft.status_code == 303, to_microsoft.text
    return str(to_microsoft.headers["location"]), hidden


def forged_answer(consent_url: str, tenant_id: str) -> str:
    """The callback a tenant admin can type without visiting Microsoft: the link's state, any tenant."""
    state = query_of(consent_url)["state"]
    return "/connect/callback?" + urlencode({"admin_consent": "True", "tenant": tenant_id, "state": state})


def at_tenant(url: str, tenant: str) -> str:
    """Microsoft's URL with its tenant segment replaced (what an attacker edits in the address bar)."""
    parts = urlsplit(url)
    _, _, rest = parts.path.lstrip("/").partition("/")
    return urlunsplit((parts.scheme, parts.netloc, f"/{tenant}/{rest}", parts.query, ""))


def summary(page: str) -> str:
    found = re.search(r'<div class="error-summary".*?</div>', page, re.DOTALL)
    assert found, page
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", found.group(0))).replace("&#39;", "'")


async def connections_of(web: Any, key: IssuedKey) -> list[dict[str, Any]]:
    listed = await web.get("/v1/connections", headers={"Authorization": f"Bearer {key.token}"})
    assert listed.status_code == 200, listed.text
    return list(listed.json()["connections"])


async def link_row(pool: asyncpg.Pool, key: IssuedKey) -> dict[str, Any]:
    """The application's newest link, as stored."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT * FROM connect_links WHERE application_id = $1 ORDER BY created_at DESC LIMIT 1",
            key.application.id,
        )
    assert row is not None
    return dict(row)


async def audit_of(pool: asyncpg.Pool, key: IssuedKey, action: str) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT details FROM audit_log WHERE application_id = $1 AND action = $2 ORDER BY id",
            key.application.id,
            action,
        )
    return [json.loads(r["details"]) for r in rows]


async def test_consent_then_the_admins_sign_in_connects_and_free_busy_works(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    application: IssuedKey,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
    operator_client_id: str,
    pool: asyncpg.Pool,
) -> None:
    contoso = sandbox_control.tenant("contoso")
    admin = account(sandbox_control, "contoso")
    consent_url, _ = await start_consent(web, browser, application, "adele.vance@contoso.com", state="happy")
    answered = await browser.callback(await browser.consent(consent_url, contoso["id"]))

    assert answered.status_code == 303
    sign_in_url = answered.headers["location"]
    sent = query_of(sign_in_url)
    assert sign_in_url.startswith(f"{sandbox.authority_host}/{contoso['id']}/oauth2/v2.0/authorize?")
    assert (sent["client_id"], sent["scope"], sent["response_type"]) == (operator_client_id, "openid profile", "code")
    assert (sent["code_challenge_method"], sent["redirect_uri"]) == ("S256", f"{PUBLIC}/connect/callback")
    assert len(sent["nonce"]) >= 43
    assert sent["state"] != query_of(consent_url)["state"]  # a new round trip, with its own state
    pending = await link_row(pool, application)
    assert (pending["flow_tenant"], pending["consented_tenant"]) == (contoso["id"], None)

    signed_in_url = await browser.sign_in(sign_in_url, admin["email"], admin["password"])
    done = await browser.callback(signed_in_url)

    assert done.status_code == 303, done.text
    back = query_of(done.headers["location"])
    assert back["state"] == "happy"
    (connection,) = await connections_of(web, application)
    assert (connection["id"], connection["method"], connection["tenant_id"]) == (
        back["connection_id"],
        "graph_consent",
        contoso["id"],
    )
    saved = await link_row(pool, application)
    assert saved["consented_tenant"] == contoso["id"]
    admin_id = next(u["id"] for u in contoso["users"] if u["email"] == admin["email"])
    assert await audit_of(pool, application, "connect_link.consent_proven") == [
        {"tenant_id": contoso["id"], "admin_object_id": admin_id, "roles": ["Global Administrator"]}
    ]
    stored = repr(saved)
    for value in (sent["nonce"], sent["state"], query_of(consent_url)["state"]):
        assert value not in stored  # state and nonce: hashed or derived, never stored
    start = datetime(2026, 11, 24, tzinfo=UTC)
    free_busy = await web.post(
        "/v1/free_busy",
        json={
            "mailboxes": ["adele.vance@contoso.com"],
            "start": start.isoformat(),
            "end": (start + timedelta(days=1)).isoformat(),
        },
        headers={"Authorization": f"Bearer {application.token}"},
    )
    assert free_busy.status_code == 200, free_busy.text
    assert "error" not in free_busy.json()["free_busy"][0]

    replayed = await browser.callback(signed_in_url)  # the sign-in answer is accepted once
    assert replayed.status_code == 400


async def test_a_forged_tenant_in_the_consent_answer_is_refused(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    application: IssuedKey,
    sandbox_control: SandboxControl,
    operator_client_id: str,
    pool: asyncpg.Pool,
) -> None:
    # Contoso approved the operator app for some other link earlier; Fabrikam's admin holds this one.
    contoso = sandbox_control.tenant("contoso")
    sandbox_control.post(f"/_sandbox/tenants/contoso/consent/{operator_client_id}")
    attacker = account(sandbox_control, "fabrikam")
    consent_url, _ = await start_consent(web, browser, application, "adele.vance@contoso.com")

    answered = await browser.callback(forged_answer(consent_url, contoso["id"]))

    # calbroker believes nothing yet: it asks for a sign-in at Contoso, where Fabrikam's admin has no account…
    assert answered.status_code == 303
    sign_in_url = answered.headers["location"]
    assert f"/{contoso['id']}/oauth2/v2.0/authorize?" in sign_in_url
    assert (await link_row(pool, application))["consented_tenant"] is None
    with pytest.raises(AssertionError, match="AADSTS50126"):
        await browser.sign_in(sign_in_url, attacker["email"], attacker["password"])
    # …so they sign in at their own tenant instead, and bring that answer back.
    refused = await browser.callback(
        await browser.sign_in(at_tenant(sign_in_url, "fabrikam.com"), attacker["email"], attacker["password"])
    )

    assert refused.status_code == 403, refused.text
    assert "must be by an administrator of the organisation that consented" in summary(refused.text)
    assert "nothing was saved" in summary(refused.text)
    assert await connections_of(web, application) == []
    row = await link_row(pool, application)
    assert (row["used_at"], row["consented_tenant"]) == (None, None)
    assert await audit_of(pool, application, "connect_link.consent_refused") == [
        {"claimed_tenant_id": contoso["id"], "reason": "id_token:tenant"}
    ]
    assert '"event": "connect.sign_in_refused"' in LOG.getvalue()


async def test_check_again_is_not_a_way_around_the_sign_in(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    application: IssuedKey,
    sandbox_control: SandboxControl,
    operator_client_id: str,
) -> None:
    contoso = sandbox_control.tenant("contoso")
    sandbox_control.post(f"/_sandbox/tenants/contoso/consent/{operator_client_id}")
    consent_url, hidden = await start_consent(web, browser, application, "adele.vance@contoso.com")
    await browser.callback(forged_answer(consent_url, contoso["id"]))
    before = sandbox_control.count("entra:token")

    recheck = await browser.submit(hidden, {"test_mailbox": "adele.vance@contoso.com", "action": "recheck"})

    assert recheck.status_code == 303
    assert "/v2.0/adminconsent?" in recheck.headers["location"]  # back to Microsoft, not verified
    assert sandbox_control.count("entra:token") == before
    assert await connections_of(web, application) == []


async def test_a_sign_in_to_another_organisation_is_refused(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    application: IssuedKey,
    sandbox_control: SandboxControl,
    operator_client_id: str,
) -> None:
    contoso = sandbox_control.tenant("contoso")
    outsider = account(sandbox_control, "fabrikam")  # an administrator, but of Fabrikam
    consent_url, _ = await start_consent(web, browser, application, "adele.vance@contoso.com")
    answered = await browser.callback(await browser.consent(consent_url, contoso["id"]))

    refused = await browser.callback(
        await browser.sign_in(
            at_tenant(answered.headers["location"], "organizations"), outsider["email"], outsider["password"]
        )
    )

    assert refused.status_code == 403
    assert "a different organisation from the one Microsoft said approved" in summary(refused.text)
    assert await connections_of(web, application) == []


async def test_a_user_who_is_no_administrator_is_refused_then_the_administrator_connects(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    application: IssuedKey,
    sandbox_control: SandboxControl,
    operator_client_id: str,
) -> None:
    contoso = sandbox_control.tenant("contoso")
    adele = account(sandbox_control, "contoso", "adele.vance@contoso.com")
    admin = account(sandbox_control, "contoso")
    consent_url, _ = await start_consent(web, browser, application, "adele.vance@contoso.com", state="retry")

    refused = await browser.approve(consent_url, contoso["id"], adele["email"], adele["password"])

    assert refused.status_code == 403
    words = summary(refused.text)
    assert "You signed in as adele.vance@contoso.com, which is not an administrator" in words
    assert "Global Administrator or Privileged Role Administrator" in words
    assert await connections_of(web, application) == []
    assert 'value="adele.vance@contoso.com"' in refused.text  # the form is back, as typed
    again = await browser.submit(hidden_fields(refused.text), {"test_mailbox": "adele.vance@contoso.com"})
    done = await browser.approve(again.headers["location"], contoso["id"], admin["email"], admin["password"])
    assert done.status_code == 303, done.text
    assert query_of(done.headers["location"])["state"] == "retry"


async def test_an_expired_id_token_is_refused(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    application: IssuedKey,
    sandbox_control: SandboxControl,
    operator_client_id: str,
) -> None:
    contoso = sandbox_control.tenant("contoso")
    admin = account(sandbox_control, "contoso")
    consent_url, _ = await start_consent(web, browser, application, "adele.vance@contoso.com")
    answered = await browser.callback(await browser.consent(consent_url, contoso["id"]))
    signed_in_url = await browser.sign_in(answered.headers["location"], admin["email"], admin["password"])
    saved = sandbox_control.get("/_sandbox/settings")["token_lifetime_s"]
    # Entra's tokens live about an hour; these expired ten minutes before they were issued.
    sandbox_control.patch("/_sandbox/settings", {"token_lifetime_s": -600})
    try:
        refused = await browser.callback(signed_in_url)
    finally:
        sandbox_control.patch("/_sandbox/settings", {"token_lifetime_s": saved})

    assert refused.status_code == 403
    assert "could not be verified (The ID token has expired.)" in summary(refused.text)
    assert await connections_of(web, application) == []


async def test_the_signing_keys_are_fetched_once_for_many_sign_ins(
    web: AsyncTestClient,  # type: ignore[type-arg]
    browser: FormBrowser,
    make_application: MakeApplication,
    sandbox_control: SandboxControl,
    operator_client_id: str,
) -> None:
    contoso = sandbox_control.tenant("contoso")
    admin = account(sandbox_control, "contoso")
    for name in ("Keys One", "Keys Two"):
        key = await make_application(name)
        consent_url, _ = await start_consent(web, browser, key, "alex.wilber@contoso.com")
        done = await browser.approve(consent_url, contoso["id"], admin["email"], admin["password"])
        assert done.status_code == 303, done.text
    assert sandbox_control.count("entra:keys") <= 1  # zero when an earlier test already cached them


async def test_no_password_or_id_token_in_any_page_or_log(pool: asyncpg.Pool) -> None:
    """Runs last in the module: what the admins typed, and any JWT, is searched for everywhere."""
    assert len(TYPED) >= 3
    assert len(PAGES) > 20
    async with pool.acquire() as conn:
        links = "\n".join(repr(dict(r)) for r in await conn.fetch("SELECT * FROM connect_links"))
        audit = "\n".join(repr(dict(r)) for r in await conn.fetch("SELECT * FROM audit_log"))
    for where, text in {"pages": "\n".join(PAGES), "logs": LOG.getvalue(), "links": links, "audit": audit}.items():
        for secret in TYPED:
            assert secret not in text, f"a password leaked into {where}"
        assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ", text), f"a JWT leaked into {where}"
