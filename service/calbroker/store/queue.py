"""The job queue's tables (pgqueuer, on the same PostgreSQL), installed and upgraded with our schema.

pgqueuer owns its DDL, which changes with its version, so it is not a numbered migration: after our
migrations, under the same advisory lock, the queue is installed when absent and converged onto
the installed pgqueuer's declaration otherwise.
"""

from __future__ import annotations

import asyncpg
from pgqueuer import AsyncpgDriver, AsyncpgPoolDriver, Queries

from calbroker.store.database import Connection

__all__ = ["install_queue", "queue_on", "queue_over"]


async def install_queue(conn: Connection) -> bool:
    """Create or upgrade pgqueuer's tables; True when they were created by this call.

    Call with the migration lock held: two processes must not install at once.
    """
    queries = queue_on(conn)
    if not await queries.schema_is_installed():
        await queries.install()
        return True
    plan = await queries.plan_upgrade()
    for statement in plan.statements:
        await conn.execute(statement)
    return False


def queue_on(conn: Connection) -> Queries:
    """Queue operations on one connection, e.g. to enqueue in the caller's transaction."""
    return Queries(AsyncpgDriver(conn))  # type: ignore[arg-type]  # a pool proxy quacks like a connection


def queue_over(pool: asyncpg.Pool) -> Queries:
    """Queue operations over the process's pool (each call borrows a connection)."""
    return Queries(AsyncpgPoolDriver(pool))
