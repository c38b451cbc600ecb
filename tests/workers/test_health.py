"""The connection health checker in burst mode: real database, real providers, the sandbox upstream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from calbroker.config import Settings
from calbroker.domain.connections import AccessLevel, Connection, ConnectionMethod, GraphAdminConsent, GraphClientSecret
from calbroker.sandbox import SandboxThread
from calbroker.services import ConnectionDraft, Services, open_services, verify_and_save
from calbroker.store.applications import IssuedKey
from calbroker.store.audit import list_audit
from calbroker.workers.health import check_due_connections, health_checker
from tests.fixtures.connect import connect_settings, operator_of
from tests.fixtures.sandbox import SandboxControl

MakeApplication = Callable[[str], Awaitable[IssuedKey]]


@pytest.fixture(scope="module")
async def services(settings: Settings, sandbox: SandboxThread) -> AsyncIterator[Services]:
    async with open_services(
        connect_settings(settings, sandbox, public_url="http://127.0.0.1:9"), pool_size=3
    ) as opened:
        yield opened


@pytest.fixture(autouse=True)
async def nothing_due(pool: asyncpg.Pool) -> None:
    """Each test decides which connections are due."""
    async with pool.acquire() as conn:
        await conn.execute("UPDATE connection_checks SET next_check_at = now() + interval '1 day'")


async def due_now(pool: asyncpg.Pool, *connections: Connection) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE connection_checks SET next_check_at = now() - interval '1 second' WHERE connection_id = ANY($1)",
            [c.id for c in connections],
        )


async def connect(services: Services, draft: ConnectionDraft) -> Connection:
    return await verify_and_save(
        services,
        draft,
        actor="test",
    )


async def contoso_secret(
    services: Services,
    sandbox: SandboxThread,
    application_id: uuid.UUID,
    expires: datetime,
    *,
    domains: tuple[str, ...] = ("contoso.com",),
) -> Connection:
    contoso = sandbox.directory.tenants["contoso"]
    app = next(a for a in sandbox.directory.apps.values() if a.key == "contoso-secret")
    return await connect(
        services,
        ConnectionDraft(
            application_id=application_id,
            method=ConnectionMethod.GRAPH_APP,
            access_level=AccessLevel.FULL,
            credentials=GraphClientSecret(contoso.id, app.client_id, app.secrets[0].value),
            domains=list(domains),
            test_mailbox="alex.wilber@contoso.com",
            cloud="sandbox",
            tenant_id=contoso.id,
            secret_expires_at=expires,
        ),
    )


async def status_of(pool: asyncpg.Pool, connection: Connection) -> tuple[str, str | None]:
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT status, last_error FROM connections WHERE id = $1", connection.id)
    assert row is not None
    return row["status"], row["last_error"]


async def test_a_failing_connection_turns_degraded_and_recovers(
    services: Services,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
    make_application: MakeApplication,
    pool: asyncpg.Pool,
) -> None:
    key = await make_application("health")
    operator = operator_of(sandbox)
    contoso = sandbox.directory.tenants["contoso"]
    sandbox_control.post(f"/_sandbox/tenants/contoso/consent/{operator.client_id}")
    try:
        connection = await connect(
            services,
            ConnectionDraft(
                application_id=key.application.id,
                method=ConnectionMethod.GRAPH_CONSENT,
                access_level=AccessLevel.FREE_BUSY,
                credentials=GraphAdminConsent(contoso.id),
                domains=["contoso.com"],
                test_mailbox="adele.vance@contoso.com",
                cloud="sandbox",
                tenant_id=contoso.id,
            ),
        )
        await due_now(pool, connection)
        first = await check_due_connections(services)
        assert (first.checked, first.healthy, first.degraded) == (1, 1, 0)
        assert await status_of(pool, connection) == ("active", None)
        assert (await check_due_connections(services)).checked == 0  # not due again until the interval passed

        sandbox_control.delete(f"/_sandbox/tenants/contoso/consent/{operator.client_id}")
        await due_now(pool, connection)
        assert (await check_due_connections(services)).degraded == 1
        status, error = await status_of(pool, connection)
        assert status == "degraded"
        assert error  # the cached token is refused for the mailbox now (a fresh one would not be issued)

        sandbox_control.post(f"/_sandbox/tenants/contoso/consent/{operator.client_id}")
        await due_now(pool, connection)
        assert (await check_due_connections(services)).healthy == 1
        assert await status_of(pool, connection) == ("active", None)
        async with pool.acquire() as conn:
            actions = [e.action for e in await list_audit(conn, key.application.id)]
        assert actions[-3:] == ["connection.create", "connection.degraded", "connection.recovered"]
    finally:
        sandbox_control.delete(f"/_sandbox/tenants/contoso/consent/{operator.client_id}")


async def test_secret_expiry_is_announced_once_per_threshold(
    services: Services,
    sandbox: SandboxThread,
    make_application: MakeApplication,
    pool: asyncpg.Pool,
) -> None:
    key = await make_application("expiring")
    connection = await contoso_secret(services, sandbox, key.application.id, datetime.now(UTC) + timedelta(days=20))
    for _ in range(2):
        await due_now(pool, connection)
        assert (await check_due_connections(services)).checked == 1
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE connections SET secret_expires_at = now() + interval '5 days' WHERE id = $1", connection.id
        )
    await due_now(pool, connection)
    assert (await check_due_connections(services)).warned == 1
    async with pool.acquire() as conn:
        expiring = [e for e in await list_audit(conn, key.application.id) if e.action == "connection.expiring"]
    assert [(e.details["code"], e.details["threshold_days"]) for e in expiring] == [
        ("secret_expiring", 30),
        ("secret_expiring_soon", 7),
    ]


async def test_replicas_never_check_the_same_connection_twice_in_a_round(
    services: Services,
    sandbox: SandboxThread,
    make_application: MakeApplication,
    pool: asyncpg.Pool,
    sandbox_control: SandboxControl,
) -> None:
    key = await make_application("replicas")
    later = datetime.now(UTC) + timedelta(days=300)
    # Each with a domain of its own, so none supersedes another.
    connections = [
        await contoso_secret(services, sandbox, key.application.id, later, domains=("contoso.com", f"d{i}.contoso.com"))
        for i in range(4)
    ]
    await due_now(pool, *connections)
    rounds = await asyncio.gather(*(check_due_connections(services) for _ in range(3)))
    assert sum(r.checked for r in rounds) == 4
    assert sum(r.healthy for r in rounds) == 4


async def test_the_periodic_checker_runs_in_the_background_and_stops(
    services: Services, sandbox: SandboxThread, make_application: MakeApplication, pool: asyncpg.Pool
) -> None:
    key = await make_application("background")
    connection = await contoso_secret(services, sandbox, key.application.id, datetime.now(UTC) + timedelta(days=300))
    await due_now(pool, connection)
    async with health_checker(replace(services, settings=replace(services.settings, health_check_interval_s=10.0))):
        for _ in range(100):
            async with pool.acquire() as conn:
                checked = await conn.fetchval(
                    "SELECT last_checked_at FROM connection_checks WHERE connection_id = $1", connection.id
                )
            if checked is not None:
                break
            await asyncio.sleep(0.05)
    assert checked is not None
