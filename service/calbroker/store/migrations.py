"""Numbered `.sql` migrations, applied once each under a PostgreSQL advisory lock.

Two processes starting together both take the lock in turn; the second finds nothing left to
do. Applied files are checksummed so an edited migration is reported instead of silently
diverging between environments. The job queue's tables (pgqueuer) are installed or upgraded
under the same lock.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from calbroker.store.database import Connection
from calbroker.store.queue import install_queue

__all__ = ["Migration", "MigrationError", "applied_versions", "available_migrations", "migrate"]

# pg_advisory_lock takes a bigint; this one is "calbroker" folded into 63 bits.
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"calbroker.migrations").digest()[:8], "big") >> 1
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    """The database's migration history does not match the code."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> tuple[Migration, ...]:
    """The migrations shipped in the package, in order."""
    found: list[Migration] = []
    for entry in resources.files("calbroker.store").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return tuple(found)


_HISTORY = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


async def applied_versions(conn: Connection) -> dict[int, str]:
    """Version → checksum of what this database has applied (empty if never migrated)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {row["version"]: row["checksum"] for row in rows}


async def migrate(conn: Connection) -> list[Migration]:
    """Apply what is missing; returns the migrations this call applied."""
    wanted = available_migrations()
    applied_now: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(_HISTORY)
        done = await applied_versions(conn)
        unknown = set(done) - {m.version for m in wanted}
        if unknown:
            raise MigrationError(
                f"database has migrations this code does not know ({sorted(unknown)}); "
                "it was migrated by a newer calbroker"
            )
        for migration in wanted:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was edited after it "
                        "was applied; add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            applied_now.append(migration)
        await install_queue(conn)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now
