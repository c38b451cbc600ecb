"""Migrations: applied once each, safe when two processes start together, edits detected."""

from __future__ import annotations

import asyncio
import base64
import os
import sys

import asyncpg
import pytest

from calbroker.store.migrations import MigrationError, available_migrations, migrate
from tests.fixtures.database import new_master_key


async def _migrate_process(url: str, tmp: str) -> tuple[int, str]:
    key = new_master_key()

    env = {
        **os.environ,
        "DATABASE_URL": url,
        "CALBROKER_MASTER_KEYS": f"{key.kid}:{base64.b64encode(key.key).decode()}",
        "CALBROKER_DATA_DIR": tmp,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "calbroker.cli",
        "migrate",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_two_processes_migrating_at_once_both_succeed_and_apply_each_migration_once(
    empty_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = str(tmp_path_factory.mktemp("mig"))
    results = await asyncio.gather(*(_migrate_process(empty_database_url, tmp) for _ in range(2)))
    assert [code for code, _ in results] == [0, 0], results
    # Exactly one of them applied the migrations; the other waited for the lock and found nothing to do.
    applied = [out for _, out in results if "applied" in out]
    assert len(applied) == 1, results
    assert all(f"applied {m.version:04d}_{m.name}" in applied[0] for m in available_migrations())
    assert sum("database is up to date" in out for _, out in results) == 1
    conn = await asyncpg.connect(empty_database_url)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert [r["version"] for r in rows] == [m.version for m in available_migrations()]


async def test_migrate_again_is_a_no_op(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await migrate(conn) == []
    finally:
        await conn.close()


async def test_an_edited_migration_is_reported(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
        with pytest.raises(MigrationError, match="was edited"):
            await migrate(conn)
        await conn.execute("INSERT INTO schema_migrations VALUES (9999, 'future', 'x')")
        with pytest.raises(MigrationError, match="newer calbroker"):
            await migrate(conn)
    finally:
        await conn.close()
