"""`/v1/connections`: list, read, verify, rooms and revoke, against the sandbox and the real database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from calbroker.app import create_app
from calbroker.config import Settings
from calbroker.domain.connections import (
    AccessLevel,
    Connection,
    ConnectionMethod,
    ConnectionPurpose,
    EwsServiceAccount,
    GraphAdminConsent,
    GraphClientSecret,
)
from calbroker.domain.errors import CredentialsRejected, InvalidRequest
from calbroker.sandbox import SandboxThread
from calbroker.services import ConnectionDraft, Services, open_services, verify_and_save
from calbroker.store.applications import IssuedKey
from tests.api.events_world import Slots, connect_teams_bridge, event_body, live, sandbox_events
from tests.fixtures.connect import connect_settings, operator_of
from tests.fixtures.sandbox import SandboxControl

PUBLIC = "http://testserver.local"
MakeApplication = Callable[[str], Awaitable[IssuedKey]]


@pytest.fixture(scope="module")
def sandbox_settings(settings: Settings, sandbox: SandboxThread) -> Settings:
    return connect_settings(settings, sandbox, public_url=PUBLIC)


@pytest.fixture(scope="module")
async def web(sandbox_settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(app=create_app(sandbox_settings), base_url=PUBLIC) as test_client:
        yield test_client


@pytest.fixture(scope="module")
async def services(sandbox_settings: Settings) -> AsyncIterator[Services]:
    """The test's own resources (the app's live on the test client's event loop) on the same database."""
    async with open_services(sandbox_settings, pool_size=2) as opened:
        yield opened


def auth(key: IssuedKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.token}"}


async def save(services: Services, draft: ConnectionDraft) -> Connection:
    return await verify_and_save(
        services,
        draft,
        actor="test",
    )


async def contoso_graph(
    services: Services,
    sandbox: SandboxThread,
    application_id: uuid.UUID,
    *,
    expires_in: timedelta = timedelta(days=365),
    domains: tuple[str, ...] = ("contoso.com",),
) -> Connection:
    contoso = sandbox.directory.tenants["contoso"]
    app = next(a for a in sandbox.directory.apps.values() if a.key == "contoso-secret")
    return await save(
        services,
        ConnectionDraft(
            application_id=application_id,
            method=ConnectionMethod.GRAPH_APP,
            access_level=AccessLevel.FULL,
            credentials=GraphClientSecret(contoso.id, app.client_id, app.secrets[0].value),
            domains=list(domains),
            test_mailbox="adele.vance@contoso.com",
            cloud="sandbox",
            tenant_id=contoso.id,
            secret_expires_at=datetime.now(UTC) + expires_in,
        ),
    )


async def fabrikam_ews(services: Services, sandbox: SandboxThread, application_id: uuid.UUID) -> Connection:
    account = sandbox.directory.tenants["fabrikam"].service_accounts["svc-full"]
    return await save(
        services,
        ConnectionDraft(
            application_id=application_id,
            method=ConnectionMethod.EWS,
            access_level=AccessLevel.FULL,
            credentials=EwsServiceAccount(sandbox.ews_url, account.username, account.password, "basic"),
            domains=["fabrikam.com"],
            test_mailbox="anna.schmidt@fabrikam.com",
            cloud="sandbox",
        ),
    )


async def test_list_and_read_connections_with_expiry_warnings(
    web: AsyncTestClient,  # type: ignore[type-arg]
    services: Services,
    sandbox: SandboxThread,
    make_application: MakeApplication,
) -> None:
    key = await make_application("lister")
    # Two connections of one tenant side by side: the second does not cover the first one's domains,
    # so it does not supersede it.
    soon = await contoso_graph(
        services, sandbox, key.application.id, expires_in=timedelta(days=20), domains=("contoso.com", "contoso.net")
    )
    very_soon = await contoso_graph(services, sandbox, key.application.id, expires_in=timedelta(days=3))
    ews = await fabrikam_ews(services, sandbox, key.application.id)

    first = await web.get("/v1/connections?limit=2", headers=auth(key))
    assert first.status_code == 200, first.text
    page = first.json()
    assert [c["id"] for c in page["connections"]] == [str(soon.id), str(very_soon.id)]
    rest = (await web.get(f"/v1/connections?limit=2&cursor={page['next_cursor']}", headers=auth(key))).json()
    assert [c["id"] for c in rest["connections"]] == [str(ews.id)]
    assert "next_cursor" not in rest

    by_id = {c["id"]: c for c in page["connections"] + rest["connections"]}
    assert [w["code"] for w in by_id[str(soon.id)]["warnings"]] == ["secret_expiring"]
    assert [w["code"] for w in by_id[str(very_soon.id)]["warnings"]] == ["secret_expiring_soon"]
    assert by_id[str(ews.id)]["warnings"] == []
    assert by_id[str(ews.id)]["endpoint"] == sandbox.ews_url
    one = (await web.get(f"/v1/connections/{soon.id}", headers=auth(key))).json()
    assert one == by_id[str(soon.id)]
    assert set(one) >= {"id", "kind", "method", "access_level", "domains", "status", "secret_expires_at", "warnings"}
    bad = await web.get("/v1/connections?cursor=nonsense", headers=auth(key))
    assert bad.status_code == 422


async def test_unknown_connection_is_404(web: AsyncTestClient, make_application: MakeApplication) -> None:  # type: ignore[type-arg]
    key = await make_application("nobody")
    response = await web.get(f"/v1/connections/{uuid.uuid4()}", headers=auth(key))
    assert response.status_code == 404
    assert response.json()["type"] == "/problems/not-found"


async def test_verify_marks_degraded_then_active_again(
    web: AsyncTestClient,  # type: ignore[type-arg]
    services: Services,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
    make_application: MakeApplication,
) -> None:
    key = await make_application("verifier")
    operator = operator_of(sandbox)
    contoso = sandbox.directory.tenants["contoso"]
    sandbox_control.post(f"/_sandbox/tenants/contoso/consent/{operator.client_id}")
    try:
        connection = await save(
            services,
            ConnectionDraft(
                application_id=key.application.id,
                method=ConnectionMethod.GRAPH_CONSENT,
                access_level=AccessLevel.FULL,
                credentials=GraphAdminConsent(contoso.id),
                domains=["contoso.com"],
                test_mailbox="adele.vance@contoso.com",
                cloud="sandbox",
                tenant_id=contoso.id,
            ),
        )
        ok = (await web.post(f"/v1/connections/{connection.id}/verify", headers=auth(key))).json()
        assert ok["verified"] is True
        assert ok["connection"]["status"] == "active"

        sandbox_control.delete(f"/_sandbox/tenants/contoso/consent/{operator.client_id}")  # consent withdrawn
        failed = await web.post(f"/v1/connections/{connection.id}/verify", headers=auth(key))
        body = failed.json()
        assert failed.status_code == 200
        assert body["verified"] is False
        assert body["error"]["type"] == "/problems/credentials-rejected"
        assert body["connection"]["status"] == "degraded"
        assert "admin consent" in body["connection"]["last_error"]

        sandbox_control.post(f"/_sandbox/tenants/contoso/consent/{operator.client_id}")
        again = (await web.post(f"/v1/connections/{connection.id}/verify", headers=auth(key))).json()
        assert (again["verified"], again["connection"]["status"]) == (True, "active")
        assert "last_error" not in again["connection"]
        other = await web.post(
            f"/v1/connections/{connection.id}/verify?test_mailbox=diego.siciliani@contoso.com", headers=auth(key)
        )
        assert other.json()["verified"] is True  # admin consent has no access policy in the sandbox
    finally:
        sandbox_control.delete(f"/_sandbox/tenants/contoso/consent/{operator.client_id}")


async def test_rooms_of_a_graph_and_an_ews_connection(
    web: AsyncTestClient,  # type: ignore[type-arg]
    services: Services,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
    make_application: MakeApplication,
) -> None:
    """One shape for both protocols: the room list by name and address, the building, and a capacity
    where the protocol has one (EWS has none: null)."""
    key = await make_application("rooms")
    graph = await contoso_graph(services, sandbox, key.application.id)
    ews = await fabrikam_ews(services, sandbox, key.application.id)
    for connection, tenant in ((graph, "contoso"), (ews, "fabrikam")):
        response = await web.get(f"/v1/connections/{connection.id}/rooms", headers=auth(key))
        assert response.status_code == 200, response.text
        seeded = sandbox_control.tenant(tenant)
        list_names = {r["email"]: r["display_name"] for r in seeded["room_lists"]}
        expected = [
            {
                "email": room["email"],
                "name": room["display_name"],
                **({"capacity": room["capacity"]} if connection is graph else {}),
                "building": room["building"],
                "room_list": list_names[room["room_list"]],
                "room_list_email": room["room_list"],
            }
            for room in sorted(seeded["rooms"], key=lambda r: r["email"])
            if room["room_list"]
        ]
        assert response.json()["rooms"] == expected


async def test_delete_revokes_and_wipes_credentials(
    web: AsyncTestClient,  # type: ignore[type-arg]
    services: Services,
    sandbox: SandboxThread,
    make_application: MakeApplication,
    pool: asyncpg.Pool,
) -> None:
    key = await make_application("revoker")
    connection = await contoso_graph(services, sandbox, key.application.id)
    for _ in range(2):
        response = await web.delete(f"/v1/connections/{connection.id}", headers=auth(key))
        assert response.status_code == 204
    listed = (await web.get("/v1/connections", headers=auth(key))).json()["connections"]
    assert listed == []
    shown = (await web.get(f"/v1/connections/{connection.id}", headers=auth(key))).json()
    assert shown["status"] == "revoked"
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sealed_secrets WHERE id = $1", connection.secret_id) == 0
    for path in (f"/v1/connections/{connection.id}/verify", f"/v1/connections/{connection.id}/rooms"):
        method = "POST" if path.endswith("verify") else "GET"
        refused: Any = await web.request(method, path, headers=auth(key))
        assert refused.status_code == 409
        assert "revoked" in refused.json()["detail"]
    free_busy = await web.post(
        "/v1/free_busy",
        json={"mailboxes": ["adele.vance@contoso.com"], "start": "2026-11-24T00:00:00Z", "end": "2026-11-25T00:00:00Z"},
        headers=auth(key),
    )
    assert free_busy.json()["free_busy"][0]["error"]["type"] == "/problems/mailbox-not-connected"


async def test_connecting_again_replaces_a_degraded_connection_and_takes_over_its_events(
    web: AsyncTestClient,  # type: ignore[type-arg]
    services: Services,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
    make_application: MakeApplication,
    pool: asyncpg.Pool,
) -> None:
    """Consent withdrawn, the connection degraded; the admin connects the organisation again (with their own
    app registration this time): the new connection serves at once, and the event booked through the old
    one is moved and cancelled through the new one."""
    key = await make_application("reconnector")
    operator = operator_of(sandbox)
    contoso = sandbox.directory.tenants["contoso"]
    adele = "adele.vance@contoso.com"
    anchor: date = sandbox.call(lambda state: state.anchor)
    start, end = Slots(sandbox_control, anchor, day=380).next([adele])
    event_url = f"/v1/events/reconnect-{uuid.uuid4().hex[:8]}"
    sandbox_control.post(f"/_sandbox/tenants/contoso/consent/{operator.client_id}")
    try:
        old = await save(
            services,
            ConnectionDraft(
                application_id=key.application.id,
                method=ConnectionMethod.GRAPH_CONSENT,
                access_level=AccessLevel.FULL,
                credentials=GraphAdminConsent(contoso.id),
                domains=["contoso.com"],
                test_mailbox=adele,
                cloud="sandbox",
                tenant_id=contoso.id,
            ),
        )
        booked = await web.put(event_url, json=event_body(adele, start, end), headers=auth(key))
        assert booked.status_code == 201, booked.text
        sandbox_control.delete(f"/_sandbox/tenants/contoso/consent/{operator.client_id}")
        failed = (await web.post(f"/v1/connections/{old.id}/verify", headers=auth(key))).json()
        assert failed["connection"]["status"] == "degraded"
        window = {"mailboxes": [adele], "start": start.isoformat(), "end": end.isoformat()}
        before = (await web.post("/v1/free_busy", json=window, headers=auth(key))).json()["free_busy"][0]
        assert before["error"]["type"] == "/problems/credentials-rejected"
        page = (await web.get(before["error"]["type"])).text
        assert "connect the organisation again" in page
        assert "<code>superseded</code>" in page

        new = await contoso_graph(services, sandbox, key.application.id)

        after = (await web.post("/v1/free_busy", json=window, headers=auth(key))).json()["free_busy"][0]
        assert "error" not in after, after
        busy = [(datetime.fromisoformat(b["start"]), datetime.fromisoformat(b["end"])) for b in after["busy"]]
        assert busy == [(start, end)]
        listed = (await web.get("/v1/connections", headers=auth(key))).json()["connections"]
        assert [c["id"] for c in listed] == [str(new.id)]
        shown = (await web.get(f"/v1/connections/{old.id}", headers=auth(key))).json()
        assert (shown["status"], shown["superseded_by"]) == ("superseded", str(new.id))
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM sealed_secrets WHERE id = $1", old.secret_id) == 0
        refused = await web.post(f"/v1/connections/{old.id}/verify", headers=auth(key))
        assert refused.status_code == 409
        assert str(new.id) in refused.json()["detail"]

        moved_start, moved_end = start + timedelta(hours=1), end + timedelta(hours=1)
        moved = await web.put(event_url, json=event_body(adele, moved_start, moved_end), headers=auth(key))
        assert moved.status_code == 200, moved.text
        held = live(sandbox_events(sandbox_control, adele, start, moved_end))
        assert [(e["start"], e["end"]) for e in held] == [(moved_start.isoformat(), moved_end.isoformat())]
        assert (await web.delete(event_url, headers=auth(key))).status_code == 204
        assert live(sandbox_events(sandbox_control, adele, start, moved_end)) == []
    finally:
        sandbox_control.delete(f"/_sandbox/tenants/contoso/consent/{operator.client_id}")
        await web.delete(event_url, headers=auth(key))


async def test_an_online_meetings_connection_never_serves_calendars(
    web: AsyncTestClient,  # type: ignore[type-arg]
    services: Services,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
    make_application: MakeApplication,
) -> None:
    key = await make_application("teams only")
    teams = await connect_teams_bridge(services, key.application.id, sandbox)
    shown = (await web.get(f"/v1/connections/{teams.id}", headers=auth(key))).json()
    assert (shown["purpose"], shown["access_level"]) == ("online_meetings", None)
    sandbox_control.clean()
    window = {
        "mailboxes": ["anna.schmidt@fabrikam.com"],
        "start": "2026-11-24T00:00:00Z",
        "end": "2026-11-25T00:00:00Z",
    }
    free_busy = (await web.post("/v1/free_busy", json=window, headers=auth(key))).json()["free_busy"][0]
    assert free_busy["error"]["type"] == "/problems/mailbox-not-connected"
    view = await web.get(
        "/v1/events",
        params={"mailbox": "anna.schmidt@fabrikam.com", "start": window["start"], "end": window["end"]},
        headers=auth(key),
    )
    assert view.json()["type"] == "/problems/mailbox-not-connected"
    rooms = await web.get(f"/v1/connections/{teams.id}/rooms", headers=auth(key))
    assert (rooms.status_code, rooms.json()["type"]) == (403, "/problems/access-level-insufficient")
    assert sandbox_control.stats()["total"] == 0  # nothing reached Microsoft
    # Checked now: a Teams meeting is made for the test mailbox and deleted again, no calendar read.
    verified = (await web.post(f"/v1/connections/{teams.id}/verify", headers=auth(key))).json()
    assert verified["verified"] is True
    routes = sandbox_control.stats()["routes"]
    assert (routes.get("graph:onlineMeetings.createOrGet"), routes.get("graph:onlineMeetings.delete")) == (1, 1)
    assert not any(route.startswith(("graph:calendar", "graph:getSchedule", "ews:")) for route in routes)


async def test_an_app_without_teams_rights_is_not_saved_as_online_meetings(
    services: Services, sandbox: SandboxThread, make_application: MakeApplication
) -> None:
    key = await make_application("no teams")
    contoso = sandbox.directory.tenants["contoso"]
    reader = next(a for a in sandbox.directory.apps.values() if a.key == "contoso-reader")
    draft = ConnectionDraft(
        application_id=key.application.id,
        method=ConnectionMethod.GRAPH_APP,
        access_level=AccessLevel.FULL,
        credentials=GraphClientSecret(contoso.id, reader.client_id, reader.secrets[0].value),
        domains=["contoso.com"],
        test_mailbox="adele.vance@contoso.com",
        cloud="sandbox",
        tenant_id=contoso.id,
        purpose=ConnectionPurpose.ONLINE_MEETINGS,
    )
    with pytest.raises(CredentialsRejected) as refused:
        await save(services, draft)
    assert "OnlineMeetings.ReadWrite.All" in refused.value.detail
    ews = replace(draft, method=ConnectionMethod.EWS, credentials=EwsServiceAccount(sandbox.ews_url, "u", "p"))
    with pytest.raises(InvalidRequest) as invalid:
        await save(services, ews)
    assert invalid.value.errors[0].field == "purpose"


ODD_MAILBOX = "\t \x0c\n\U000173c6\U00096d5e?@2Xs7Eg.0z6HIQ2.sP3W\r\r\t"  # found by make fuzz


async def test_verifying_an_odd_or_unknown_test_mailbox_is_an_answer_not_an_outage(
    web: AsyncTestClient,  # type: ignore[type-arg]
    services: Services,
    sandbox: SandboxThread,
    make_application: MakeApplication,
) -> None:
    """A wrong test mailbox is about that mailbox: the connection keeps serving requests in flight."""
    key = await make_application("odd verifier")
    for connection in (
        await contoso_graph(services, sandbox, key.application.id),
        await fabrikam_ews(services, sandbox, key.application.id),
    ):
        domain = connection.domains[0]
        mailbox = "adele.vance@contoso.com" if domain == "contoso.com" else "anna.schmidt@fabrikam.com"
        window = {"mailboxes": [mailbox], "start": "2026-11-24T00:00:00Z", "end": "2026-11-25T00:00:00Z"}

        verify_path = f"/v1/connections/{connection.id}/verify"
        for odd in (ODD_MAILBOX, f"nobody@{domain}"):
            answers = await asyncio.gather(
                web.post("/v1/free_busy", json=window, headers=auth(key)),
                web.post(verify_path, params={"test_mailbox": odd}, headers=auth(key)),
                web.post("/v1/free_busy", json=window, headers=auth(key)),
                web.post(verify_path, params={"test_mailbox": odd}, headers=auth(key)),
                web.post("/v1/free_busy", json=window, headers=auth(key)),
            )
            for answer in answers:
                assert answer.status_code == 200, answer.text
            for free_busy in answers[0::2]:
                assert "busy" in free_busy.json()["free_busy"][0], free_busy.text
            checked = answers[1].json()
            assert checked["verified"] is False
            assert checked["error"]["type"] in (
                "/problems/mailbox-not-found",
                "/problems/mailbox-out-of-scope",
                "/problems/mailbox-error",  # EWS: an address no HTTP header can carry
            )
