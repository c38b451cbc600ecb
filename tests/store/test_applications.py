"""Applications and API keys: issued once, stored as hashes, revocable, rotatable."""

from __future__ import annotations

import hashlib

import asyncpg
import pytest

from calbroker.domain.errors import InvalidRequest, NotFound
from calbroker.store.applications import (
    authenticate,
    create_application,
    list_applications,
    revoke_application,
    rotate_key,
)
from calbroker.store.audit import list_audit


async def test_created_key_authenticates_and_only_its_hash_is_stored(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        issued = await create_application(conn, "CRM", actor="test")
        assert issued.token.startswith(f"cbk_{issued.prefix}_")
        found = await authenticate(conn, issued.token)
        assert found is not None
        assert found[0].id == issued.application.id
        row = await conn.fetchrow("SELECT * FROM api_keys WHERE prefix = $1", issued.prefix)
    assert row is not None
    secret = issued.token.split("_", 2)[2]
    assert bytes(row["secret_hash"]) == hashlib.sha256(secret.encode()).digest()
    assert issued.token not in str(dict(row))
    assert issued.token not in repr(issued)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # wrong secret, right prefix
        lambda t: "cbk_aaaaaaaa_" + t.split("_", 2)[2],  # unknown prefix
        lambda t: t.replace("cbk_", "xyz_"),  # malformed
        lambda t: "",
        lambda t: t + "x",
    ],
)
async def test_wrong_keys_are_refused(pool: asyncpg.Pool, mangle) -> None:  # type: ignore[no-untyped-def]
    async with pool.acquire() as conn:
        issued = await create_application(conn, "CRM", actor="test")
        assert await authenticate(conn, mangle(issued.token)) is None


async def test_revoked_application_keys_stop_working(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        issued = await create_application(conn, "to revoke", actor="test")
        await revoke_application(conn, issued.application.id, actor="test")
        assert await authenticate(conn, issued.token) is None
        await revoke_application(conn, issued.application.id, actor="test")  # idempotent
        with pytest.raises(InvalidRequest):
            await rotate_key(conn, issued.application.id, actor="test")


async def test_rotate_issues_a_new_key_and_revokes_the_old(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        issued = await create_application(conn, "rotating", actor="test")
        rotated = await rotate_key(conn, issued.application.id, actor="test")
        assert rotated.token != issued.token
        assert await authenticate(conn, issued.token) is None
        assert await authenticate(conn, rotated.token) is not None
        audit = await list_audit(conn, issued.application.id)
    assert [entry.action for entry in audit] == ["application.create", "application.rotate_key"]
    assert all(issued.token not in str(entry.details) for entry in audit)


async def test_last_used_is_touched_at_most_once_a_minute(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        issued = await create_application(conn, "usage", actor="test")
        await authenticate(conn, issued.token)
        first = await conn.fetchval("SELECT last_used_at FROM api_keys WHERE prefix = $1", issued.prefix)
        await authenticate(conn, issued.token)
        second = await conn.fetchval("SELECT last_used_at FROM api_keys WHERE prefix = $1", issued.prefix)
        assert first is not None
        assert first == second
        await conn.execute(
            "UPDATE api_keys SET last_used_at = now() - interval '2 minutes' WHERE prefix = $1", issued.prefix
        )
        await authenticate(conn, issued.token)
        third = await conn.fetchval("SELECT last_used_at FROM api_keys WHERE prefix = $1", issued.prefix)
    assert third > first


async def test_names_are_validated_and_unknown_ids_not_found(pool: asyncpg.Pool) -> None:
    import uuid

    async with pool.acquire() as conn:
        with pytest.raises(InvalidRequest):
            await create_application(conn, "   ", actor="test")
        with pytest.raises(NotFound):
            await revoke_application(conn, uuid.uuid4(), actor="test")
        names = [app.name for app, _ in await list_applications(conn)]
    assert len(names) >= 1
