"""Applications and API keys: issued once, stored as hashes, revocable, rotatable."""

from __future__ import annotations

import hashlib
from datetime import timedelta

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
from tests.fixtures.waiting import eventually


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


async def test_rotate_with_an_overlap_lets_the_old_key_work_until_it_expires_by_itself(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        issued = await create_application(conn, "overlapping", actor="test")
        rotated = await rotate_key(conn, issued.application.id, actor="test", keep_old_for=timedelta(seconds=1))
        assert rotated.previous_keys_expire_at is not None
        both = [await authenticate(conn, token) for token in (issued.token, rotated.token)]
        assert all(found is not None for found in both)
        old_key = both[0][1]  # type: ignore[index]
        assert old_key.expires_at == rotated.previous_keys_expire_at
        assert both[1][1].expires_at is None  # type: ignore[index]

        async def old_key_refused() -> bool:
            return await authenticate(conn, issued.token) is None

        await eventually(old_key_refused, what="the previous key to expire")
        assert await authenticate(conn, rotated.token) is not None
        [(_, keys)] = [entry for entry in await list_applications(conn) if entry[0].id == issued.application.id]
        now = await conn.fetchval("SELECT now()")
        assert [(k.prefix, k.usable(now)) for k in keys] == [(issued.prefix, False), (rotated.prefix, True)]


async def test_a_second_overlapping_rotation_never_extends_an_earlier_expiry(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        first = await create_application(conn, "twice", actor="test")
        second = await rotate_key(conn, first.application.id, actor="test", keep_old_for=timedelta(hours=1))
        third = await rotate_key(conn, first.application.id, actor="test", keep_old_for=timedelta(days=2))
        expiries = dict(
            await conn.fetch("SELECT prefix, expires_at FROM api_keys WHERE application_id = $1", first.application.id)
        )
        assert expiries[first.prefix] == second.previous_keys_expire_at
        assert expiries[second.prefix] == third.previous_keys_expire_at
        assert expiries[second.prefix] - expiries[first.prefix] > timedelta(days=1)
        assert expiries[third.prefix] is None
        # Without an overlap every previous key, expiring or not, stops at once.
        fourth = await rotate_key(conn, first.application.id, actor="test")
        for token in (first.token, second.token, third.token):
            assert await authenticate(conn, token) is None
        assert await authenticate(conn, fourth.token) is not None


@pytest.mark.parametrize("overlap", [timedelta(0), timedelta(seconds=-1), timedelta(days=31)])
async def test_an_overlap_must_be_positive_and_at_most_thirty_days(pool: asyncpg.Pool, overlap: timedelta) -> None:
    async with pool.acquire() as conn:
        issued = await create_application(conn, "bad overlap", actor="test")
        with pytest.raises(InvalidRequest) as raised:
            await rotate_key(conn, issued.application.id, actor="test", keep_old_for=overlap)
        assert raised.value.errors[0].field == "keep_old_for"
        assert await authenticate(conn, issued.token) is not None  # nothing changed


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
