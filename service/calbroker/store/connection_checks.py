"""What the health checker needs per connection: the mailbox to test, when it is due, which warnings went out.

Checks are claimed by pushing `next_check_at` forward with `FOR UPDATE SKIP LOCKED`, so API
replicas running the checker side by side never check the same connection twice in a round.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from calbroker.store.database import Connection

__all__ = [
    "AuthStreak",
    "DueCheck",
    "claim_due_checks",
    "mark_disconnected",
    "record_auth_result",
    "record_check",
    "record_expiry_warning",
    "save_test_mailbox",
    "test_mailbox_of",
]


@dataclass(frozen=True, slots=True)
class DueCheck:
    connection_id: uuid.UUID
    application_id: uuid.UUID
    test_mailbox: str
    expiry_warned_days: int | None


async def save_test_mailbox(
    conn: Connection, connection_id: uuid.UUID, mailbox: str, *, first_check_in: timedelta
) -> None:
    """Remember the mailbox a connection was verified with; its first health check is `first_check_in` away."""
    await conn.execute(
        """
        INSERT INTO connection_checks (connection_id, test_mailbox, next_check_at)
        VALUES ($1, $2, now() + $3::interval)
        ON CONFLICT (connection_id) DO UPDATE SET test_mailbox = EXCLUDED.test_mailbox
        """,
        connection_id,
        mailbox,
        first_check_in,
    )


async def test_mailbox_of(conn: Connection, connection_id: uuid.UUID) -> str | None:
    mailbox: str | None = await conn.fetchval(
        "SELECT test_mailbox FROM connection_checks WHERE connection_id = $1", connection_id
    )
    return mailbox


async def claim_due_checks(conn: Connection, *, limit: int, every: timedelta) -> list[DueCheck]:
    """Due checks of live connections, each pushed `every` into the future as it is claimed."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT k.connection_id FROM connection_checks k
            JOIN connections c ON c.id = k.connection_id
            WHERE k.next_check_at <= now() AND c.status IN ('active', 'degraded')
            ORDER BY k.next_check_at
            LIMIT $1
            FOR UPDATE OF k SKIP LOCKED
        )
        UPDATE connection_checks k SET next_check_at = now() + $2::interval
        FROM due, connections c
        WHERE k.connection_id = due.connection_id AND c.id = k.connection_id
        RETURNING k.connection_id, c.application_id, k.test_mailbox, k.expiry_warned_days
        """,
        limit,
        every,
    )
    return [DueCheck(r["connection_id"], r["application_id"], r["test_mailbox"], r["expiry_warned_days"]) for r in rows]


async def record_check(conn: Connection, connection_id: uuid.UUID) -> None:
    await conn.execute("UPDATE connection_checks SET last_checked_at = now() WHERE connection_id = $1", connection_id)


async def record_expiry_warning(conn: Connection, connection_id: uuid.UUID, days: int | None) -> None:
    """The tightest expiry threshold already announced (None after the secret was replaced)."""
    await conn.execute(
        "UPDATE connection_checks SET expiry_warned_days = $2 WHERE connection_id = $1", connection_id, days
    )


@dataclass(frozen=True, slots=True)
class AuthStreak:
    """Consecutive checks Microsoft refused the credentials, and whether that was announced."""

    failures: int
    announced: bool


async def record_auth_result(conn: Connection, connection_id: uuid.UUID, *, refused: bool) -> AuthStreak:
    """Count a check whose credentials were refused (or end the streak, and its announcement, on any other)."""
    row = await conn.fetchrow(
        """
        UPDATE connection_checks SET
            auth_failures = CASE WHEN $2 THEN auth_failures + 1 ELSE 0 END,
            disconnected_at = CASE WHEN $2 THEN disconnected_at END
        WHERE connection_id = $1
        RETURNING auth_failures, disconnected_at
        """,
        connection_id,
        refused,
    )
    if row is None:
        return AuthStreak(0, announced=False)
    return AuthStreak(row["auth_failures"], announced=row["disconnected_at"] is not None)


async def mark_disconnected(conn: Connection, connection_id: uuid.UUID) -> None:
    """The disconnection was announced: once per streak."""
    await conn.execute("UPDATE connection_checks SET disconnected_at = now() WHERE connection_id = $1", connection_id)
