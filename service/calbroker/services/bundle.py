"""The Services bundle: every long-lived resource of a process, opened once and closed in reverse.

The API lifespan, the CLI and the worker all open it with `open_services(settings)`; nothing else
creates a pool, an HTTP session or a provider registry, so every entry point gets the same tools
wired the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from importlib import metadata

import aiohttp
import asyncpg

from calbroker.config import Settings
from calbroker.domain.connections import Connection, Credentials
from calbroker.logs import get_logger
from calbroker.metrics import Metrics
from calbroker.providers.registry import ProviderRegistry
from calbroker.services.bookings import Bookings
from calbroker.services.callbacks import AppCallbacks
from calbroker.services.channels import Channels
from calbroker.services.schedules import ScheduleReader
from calbroker.services.sync import Sync
from calbroker.services.upstream import Upstream
from calbroker.store.connections import update_credentials
from calbroker.store.database import connect_pool, resolve_database_url
from calbroker.store.keyring import Keyring, load_keyring
from calbroker.store.migrations import migrate

__all__ = ["Services", "open_services"]

log = get_logger(__name__)


def _version() -> str:
    try:
        return metadata.version("calbroker")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@dataclass(frozen=True, slots=True)
class Services:
    """What handlers, commands and jobs work with; built only by `open_services`."""

    settings: Settings
    pool: asyncpg.Pool
    keyring: Keyring
    upstream: Upstream
    schedules: ScheduleReader
    bookings: Bookings
    callbacks: AppCallbacks
    """Calls to URLs applications gave us (service-account callbacks, webhooks), under the URL policy."""
    sync: Sync
    channels: Channels
    metrics: Metrics
    """This process's metrics registry: the API's /metrics and the worker's metrics endpoint serve it."""


@asynccontextmanager
async def open_services(
    settings: Settings, *, pool_size: int | None = None, metrics: Metrics | None = None
) -> AsyncIterator[Services]:
    """Open the database (migrated), keyring, HTTP session, thread pool and providers; close them in reverse.

    `metrics` lets two bundles of one process (the demo's API and worker) count into one registry.
    """
    metrics = metrics if metrics is not None else Metrics()
    async with AsyncExitStack() as stack:
        url = await resolve_database_url(settings)
        pool = await stack.enter_async_context(connect_pool(url, max_size=pool_size or settings.database_pool_size))
        async with pool.acquire() as conn:
            applied = await migrate(conn)
        if applied:
            log.info("migrations applied", versions=[m.version for m in applied])
        keyring = load_keyring(settings)
        session = await stack.enter_async_context(
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=settings.upstream_deadline_s),
                connector=aiohttp.TCPConnector(limit=200, limit_per_host=50, ttl_dns_cache=300),
                headers={"User-Agent": f"calbroker/{_version()}"},
            )
        )
        # msal and exchangelib are synchronous: they run here, never on the event loop.
        executor = stack.enter_context(ThreadPoolExecutor(max_workers=32, thread_name_prefix="upstream"))

        async def persist_renewed(connection: Connection, credentials: Credentials) -> None:
            async with pool.acquire() as conn:
                await update_credentials(conn, keyring, connection, credentials, actor="provider")

        registry = ProviderRegistry(settings, session, executor, credentials_sink=persist_renewed, metrics=metrics)
        stack.push_async_callback(registry.aclose)
        upstream = Upstream(pool, keyring, registry)
        callbacks = await stack.enter_async_context(AppCallbacks(settings))
        channels = Channels.build(pool, keyring, settings, callbacks, metrics)
        sync = Sync.build(pool, upstream, settings, on_round=channels.notices.round_completed)
        yield Services(
            settings=settings,
            pool=pool,
            keyring=keyring,
            upstream=upstream,
            schedules=ScheduleReader(pool, upstream, sync.cache, metrics=metrics),
            bookings=Bookings(pool, upstream, settings, written=sync.cache),
            callbacks=callbacks,
            sync=sync,
            channels=channels,
            metrics=metrics,
        )
