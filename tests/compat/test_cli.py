"""`calbroker apps cronofy-credentials` and `apps service-account-token`, run as the operator runs them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re

import asyncpg
import pytest

from calbroker.cli import main
from calbroker.store.applications import IssuedKey
from calbroker.store.cronofy import authenticate_client
from tests.fixtures.database import new_master_key


@pytest.fixture(scope="module")
def cli_env(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    key = new_master_key()
    return {
        "DATABASE_URL": database_url,
        "CALBROKER_MASTER_KEYS": f"{key.kid}:{base64.b64encode(key.key).decode()}",
        "CALBROKER_DATA_DIR": str(tmp_path_factory.mktemp("cli")),
        "CALBROKER_LOG_LEVEL": "warning",
    }


async def test_client_credentials_are_shown_once_and_rotate(
    cli_env: dict[str, str], api_key: IssuedKey, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    app_id = str(api_key.application.id)
    assert await asyncio.to_thread(main, ["apps", "cronofy-credentials", app_id], cli_env) == 0
    first = capsys.readouterr().out
    client_id = re.search(r"client_id:\s+(\S+)", first)
    secret = re.search(r"client_secret:\s+(\S+)", first)
    assert client_id
    assert secret
    assert "/compat/cronofy" in first
    async with pool.acquire() as conn:
        assert await authenticate_client(conn, client_id.group(1), secret.group(1)) is not None
        stored = await conn.fetchrow("SELECT secret_hash, secret_id FROM cronofy_clients")
        assert bytes(stored["secret_hash"]) == hashlib.sha256(secret.group(1).encode()).digest()
        sealed = await conn.fetchval("SELECT sealed FROM sealed_secrets WHERE id = $1", stored["secret_id"])
        assert secret.group(1).encode() not in bytes(sealed)  # sealed, not stored in clear
    assert await asyncio.to_thread(main, ["apps", "cronofy-credentials", app_id], cli_env) == 0
    second = capsys.readouterr().out
    assert re.search(r"client_id:\s+(\S+)", second).group(1) == client_id.group(1)  # type: ignore[union-attr]
    async with pool.acquire() as conn:
        assert await authenticate_client(conn, client_id.group(1), secret.group(1)) is None  # the old one stopped


async def test_a_service_account_token_needs_a_live_connection(
    cli_env: dict[str, str], api_key: IssuedKey, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await asyncio.to_thread(
        main,
        ["apps", "service-account-token", str(api_key.application.id), "6f1c2a9e-3d4b-4e8f-9a7c-2b1d0e5f4a3c"],
        cli_env,
    )
    assert code == 1
    assert "no live connection" in capsys.readouterr().err
