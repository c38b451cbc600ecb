"""A real failure inside a request: 500 problem with the request id, trace only in the server log.

This module breaks its own database on purpose, which is why it has a module of its own.
"""

from __future__ import annotations

import io
import json
import logging

import asyncpg
import structlog
from litestar.testing import AsyncTestClient

from calbroker.logs import configure_logging, get_logger
from calbroker.store.applications import IssuedKey


async def test_a_failing_store_answers_500_without_trace_and_logs_it_without_secrets(
    client: AsyncTestClient,
    api_key: IssuedKey,
    pool: asyncpg.Pool,  # type: ignore[type-arg]
) -> None:
    stream = io.StringIO()
    configure_logging("info", json=True, stream=stream)
    try:
        ok = await client.get("/v1/me", headers={"Authorization": f"Bearer {api_key.token}"})
        assert ok.status_code == 200
        async with pool.acquire() as conn:
            await conn.execute("ALTER TABLE api_keys RENAME TO api_keys_gone")
        try:
            response = await client.get(
                f"/v1/me?api_key={api_key.token}",
                headers={"Authorization": f"Bearer {api_key.token}", "X-Request-Id": "req-500-test"},
            )
        finally:
            async with pool.acquire() as conn:
                await conn.execute("ALTER TABLE api_keys_gone RENAME TO api_keys")
    finally:
        configure_logging("warning", json=True, stream=io.StringIO())
    assert response.status_code == 500
    body = response.json()
    assert body["type"] == "/problems/internal-error"
    assert body["request_id"] == "req-500-test"
    assert "Traceback" not in response.text
    assert "api_keys" not in response.text  # no internals leak to the caller

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    errors = [line for line in lines if line.get("event") == "unhandled exception"]
    assert errors, lines
    assert errors[0]["request_id"] == "req-500-test"
    assert "UndefinedTableError" in errors[0]["exception"]  # the trace is kept server-side
    access = [line for line in lines if line.get("event") == "request" and line.get("status") == 500]
    assert access[0]["route"] == "/v1/me"
    assert api_key.token not in stream.getvalue()
    assert api_key.token.split("_", 2)[2] not in stream.getvalue()


def test_redaction_catches_secrets_in_structured_and_stdlib_log_lines() -> None:
    stream = io.StringIO()
    configure_logging("debug", json=True, stream=stream)
    token = "cbk_abcdefgh_" + "S" * 43
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl"
    try:
        get_logger("test").info(
            "event with secrets",
            password="hunter2-password",
            headers={"Authorization": "Bearer abc.def.ghi", "X-Other": f"see {token}"},
            nested=[{"client_secret": "very-secret-value"}, f"token={token}"],
            note=f"upstream said Bearer {jwt}",
        )
        logging.getLogger("aiohttp.client").warning("retrying with client_secret=plain-secret-1 and %s", jwt)
        structlog.get_logger("other").error("pem", key="-----BEGIN PRIVATE KEY-----\nMIIabc\n-----END PRIVATE KEY-----")
    finally:
        configure_logging("warning", json=True, stream=io.StringIO())
    output = stream.getvalue()
    for secret in (
        token,
        "hunter2-password",
        "abc.def.ghi",
        "very-secret-value",
        jwt,
        "plain-secret-1",
        "MIIabc",
    ):
        assert secret not in output, secret
    assert "cbk_abcdefgh_[REDACTED]" in output  # the prefix stays, for support
    assert output.count("\n") == 3


async def test_readyz_reports_a_pending_migration_as_a_problem(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pool: asyncpg.Pool,
) -> None:
    row = await pool.fetchrow("SELECT * FROM schema_migrations ORDER BY version DESC LIMIT 1")
    assert row is not None
    await pool.execute("DELETE FROM schema_migrations WHERE version = $1", row["version"])
    try:
        response = await client.get("/readyz")
    finally:
        await pool.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)",
            row["version"],
            row["name"],
            row["checksum"],
            row["applied_at"],
        )
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == "/problems/not-ready"
    assert body["checks"] == {"database": "ok", "migrations": f"pending: [{row['version']}]", "keyring": "ok"}
    assert (await client.get("/readyz")).status_code == 200
