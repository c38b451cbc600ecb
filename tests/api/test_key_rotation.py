"""Master keys changing under a running server: `calbroker keys rotate --generate` (its two steps: a new
key first in the embedded default's key file, then every secret re-wrapped under it) while the API
serves. The API follows the file. (A replica missing a key: `test_master_keys_missing.py`.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from calbroker.config import Settings
from calbroker.sandbox import SandboxThread
from calbroker.store.applications import IssuedKey
from calbroker.store.keyring import add_key_to_file, load_keyring
from calbroker.store.secrets import rewrap_all
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
def key_file_settings(database_url: str, tmp_path_factory: pytest.TempPathFactory, sandbox: SandboxThread) -> Settings:
    """The embedded default's keys: a 0600 file in the data directory, no CALBROKER_MASTER_KEYS."""
    base = sandbox_settings(database_url, tmp_path_factory.mktemp("data"), sandbox, new_master_key())
    return replace(base, master_keys=None)


@pytest.fixture(scope="module")
async def file_api(key_file_settings: Settings) -> AsyncIterator[Api]:
    async with serve(key_file_settings) as running:
        yield running


async def test_rotating_the_key_file_next_to_a_running_server_keeps_it_serving(
    file_api: Api,
    key_file_settings: Settings,
    pool: asyncpg.Pool,
    make_application: MakeApplication,
    sandbox: SandboxThread,
) -> None:
    token, ews = await connect_contoso_and_fabrikam(file_api, make_application, sandbox)
    assert (await file_api.http.get("/readyz")).json()["master_keys"] == ["k1"]

    # `calbroker keys rotate --generate`, from another process sharing the data directory.
    kid = add_key_to_file(key_file_settings)
    rewrapped = await rewrap_all(pool, load_keyring(key_file_settings))
    assert (kid, rewrapped) == ("k2", await pool.fetchval("SELECT count(*) FROM sealed_secrets"))

    answer = await file_api.http.post("/v1/free_busy", json=WINDOW, headers=auth(token))
    assert answer.status_code == 200, answer.text
    assert all("busy" in entry for entry in free_busy_by_mailbox(answer.json()).values()), answer.text
    verified = await file_api.http.post(f"/v1/connections/{ews.id}/verify", headers=auth(token))
    assert (verified.status_code, verified.json()["verified"]) == (200, True), verified.text
    ready = (await file_api.http.get("/readyz")).json()
    assert (ready["checks"]["keyring"], ready["master_keys"]) == ("ok", ["k2", "k1"])
    # What the running server seals now, the new key seals.
    async with pool.acquire() as conn:
        sealed_with = await conn.fetchval(
            "SELECT s.key_id FROM connections c JOIN sealed_secrets s ON s.id = c.secret_id WHERE c.id = $1",
            (await connect_contoso_and_fabrikam(file_api, make_application, sandbox))[1].id,
        )
    assert sealed_with == "k2"


def test_the_key_file_is_followed_when_it_changes(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    keyring = load_keyring(settings)
    blob = keyring.seal(b"secret", purpose="p", record_id="r")
    add_key_to_file(settings)
    rotated = load_keyring(settings).rewrap(blob, purpose="p", record_id="r")
    assert keyring.open(rotated, purpose="p", record_id="r") == b"secret"  # re-read on the unknown kid
    assert keyring.kids == ("k2", "k1")
    assert keyring.key_id(keyring.seal(b"new", purpose="p", record_id="r")) == "k2"
