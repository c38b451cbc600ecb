"""A replica without the master key some secrets are sealed with (CALBROKER_MASTER_KEYS rolled out in the
wrong order): only the connections behind those secrets fail, per mailbox, and `/readyz` says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from calbroker.config import Settings
from calbroker.sandbox import SandboxThread
from calbroker.store.applications import IssuedKey
from calbroker.store.keyring import Keyring
from tests.api.events_world import (
    Api,
    auth,
    connect_contoso_and_fabrikam,
    free_busy_by_mailbox,
    sandbox_settings,
    serve,
)
from tests.fixtures.database import new_master_key

ADELE = "adele.vance@contoso.com"
ANNA = "anna.schmidt@fabrikam.com"
WINDOW = {"mailboxes": [ADELE, ANNA], "start": "2026-11-24T00:00:00Z", "end": "2026-11-25T00:00:00Z"}
MakeApplication = Callable[[str], Awaitable[IssuedKey]]


@pytest.fixture(scope="module")
def replica_settings(database_url: str, tmp_path_factory: pytest.TempPathFactory, sandbox: SandboxThread) -> Settings:
    return sandbox_settings(database_url, tmp_path_factory.mktemp("replica"), sandbox, new_master_key("k1"))


@pytest.fixture(scope="module")
async def replica(replica_settings: Settings) -> AsyncIterator[Api]:
    async with serve(replica_settings) as running:
        yield running


async def test_a_secret_this_replica_cannot_open_fails_its_connection_only(
    replica: Api,
    replica_settings: Settings,
    pool: asyncpg.Pool,
    make_application: MakeApplication,
    sandbox: SandboxThread,
) -> None:
    token, ews = await connect_contoso_and_fabrikam(replica, make_application, sandbox)
    assert replica_settings.master_keys is not None
    # Another replica, already given key 'k9' as its primary, re-keyed the EWS connection's secret.
    elsewhere = Keyring((new_master_key("k9"), *replica_settings.master_keys))
    async with pool.acquire() as conn:
        sealed = await conn.fetchval("SELECT sealed FROM sealed_secrets WHERE id = $1", ews.secret_id)
        rekeyed = elsewhere.rewrap(bytes(sealed), purpose="connection", record_id=str(ews.secret_id))
        await conn.execute("UPDATE sealed_secrets SET sealed = $2, key_id = 'k9' WHERE id = $1", ews.secret_id, rekeyed)

    answer = await replica.http.post("/v1/free_busy", json=WINDOW, headers=auth(token))
    assert answer.status_code == 200, answer.text
    found = free_busy_by_mailbox(answer.json())
    assert "busy" in found[ADELE], found
    assert found[ANNA]["error"]["type"] == "/problems/secrets-unavailable"
    assert "'k9'" in found[ANNA]["error"]["detail"]
    availability = await replica.http.post(
        "/v1/availability",
        json={
            "participants": [{"members": [{"email": ADELE}, {"email": ANNA}], "required": 1}],
            "duration": {"minutes": 30},
            "query_periods": [{"start": WINDOW["start"], "end": WINDOW["end"]}],
        },
        headers=auth(token),
    )
    assert availability.status_code == 200, availability.text
    assert [e["email"] for e in availability.json()["member_errors"]] == [ANNA]
    verified = await replica.http.post(f"/v1/connections/{ews.id}/verify", headers=auth(token))
    assert (verified.status_code, verified.json()["type"]) == (503, "/problems/secrets-unavailable")
    shown = (await replica.http.get(f"/v1/connections/{ews.id}", headers=auth(token))).json()
    assert shown["status"] == "active"  # a key missing here is not a broken connection

    ready = await replica.http.get("/readyz")
    assert ready.status_code == 503
    assert "'k9'" in ready.json()["checks"]["keyring"]
    assert ready.json()["master_keys"] == ["k1"]
    async with pool.acquire() as conn:  # back under k1, as it was
        await conn.execute("UPDATE sealed_secrets SET sealed = $2, key_id = 'k1' WHERE id = $1", ews.secret_id, sealed)
    assert (await replica.http.get("/readyz")).status_code == 200
