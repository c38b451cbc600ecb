"""The sealed-secret vault: every credential at rest lives here, sealed by the keyring.

Rows are bound to their id and purpose (AES-GCM associated data), so copying a blob onto another
row cannot make it open there.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from calbroker.domain.errors import NotFound
from calbroker.store.database import Connection
from calbroker.store.keyring import Keyring

__all__ = ["delete_secret", "read_secret", "rewrap_all", "secrets_sealed_without", "store_secret"]


async def store_secret(conn: Connection, keyring: Keyring, *, purpose: str, plaintext: bytes) -> uuid.UUID:
    """Seal and insert; returns the id other tables reference."""
    secret_id = uuid.uuid4()
    sealed = keyring.seal(plaintext, purpose=purpose, record_id=str(secret_id))
    await conn.execute(
        "INSERT INTO sealed_secrets (id, purpose, key_id, sealed) VALUES ($1, $2, $3, $4)",
        secret_id,
        purpose,
        keyring.primary_kid,
        sealed,
    )
    return secret_id


async def read_secret(conn: Connection, keyring: Keyring, secret_id: uuid.UUID, *, purpose: str) -> bytes:
    """Open a sealed secret; a purpose mismatch is treated as not found."""
    row = await conn.fetchrow("SELECT purpose, sealed FROM sealed_secrets WHERE id = $1", secret_id)
    if row is None or row["purpose"] != purpose:
        raise NotFound(f"no {purpose} secret {secret_id}")
    return keyring.open(bytes(row["sealed"]), purpose=purpose, record_id=str(secret_id))


async def delete_secret(conn: Connection, secret_id: uuid.UUID) -> None:
    """Wipe a secret (the row goes; PostgreSQL reclaims the bytes on vacuum)."""
    await conn.execute("DELETE FROM sealed_secrets WHERE id = $1", secret_id)


async def rewrap_all(pool: asyncpg.Pool, keyring: Keyring, *, batch: int = 200) -> int:
    """Re-wrap every secret not under the primary key, in short transactions; returns the count."""
    total = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT id, purpose, sealed FROM sealed_secrets WHERE key_id <> $1
                   ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED""",
                keyring.primary_kid,
                batch,
            )
            for row in rows:
                sealed = keyring.rewrap(bytes(row["sealed"]), purpose=row["purpose"], record_id=str(row["id"]))
                await conn.execute(
                    "UPDATE sealed_secrets SET sealed = $2, key_id = $3, rewrapped_at = now() WHERE id = $1",
                    row["id"],
                    sealed,
                    keyring.primary_kid,
                )
        total += len(rows)
        if len(rows) < batch:
            return total


async def secrets_sealed_without(conn: Connection, kids: Sequence[str]) -> dict[str, int]:
    """Master key id → how many secrets it seals, for the key ids not in `kids`: what a keyring with
    `kids` cannot open."""
    rows = await conn.fetch(
        """SELECT key_id, count(*) AS secrets FROM sealed_secrets WHERE NOT (key_id = ANY($1::text[]))
           GROUP BY key_id ORDER BY key_id""",
        list(kids),
    )
    return {row["key_id"]: row["secrets"] for row in rows}
