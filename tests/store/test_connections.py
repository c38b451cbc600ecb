"""Connections in PostgreSQL: credentials sealed (never in clear), scoped to their application."""

from __future__ import annotations

import asyncpg
import pytest

from calbroker.domain.connections import (
    AccessLevel,
    ConnectionKind,
    ConnectionMethod,
    ConnectionStatus,
    EwsServiceAccount,
    GraphClientSecret,
)
from calbroker.domain.errors import NotFound
from calbroker.store.applications import create_application
from calbroker.store.audit import list_audit
from calbroker.store.connections import (
    NewConnection,
    delete_connection,
    get_connection,
    list_connections,
    load_credentials,
    mark_connection_health,
    save_connection,
    update_credentials,
)
from calbroker.store.keyring import Keyring
from tests.fixtures.database import new_master_key

SECRET = "Zq8Q~super-secret-value-0123456789abcdef"


async def test_saved_credentials_are_sealed_and_scoped(pool: asyncpg.Pool) -> None:
    keyring = Keyring((new_master_key(),))
    async with pool.acquire() as conn:
        mine = await create_application(conn, "mine", actor="test")
        theirs = await create_application(conn, "theirs", actor="test")
        connection = await save_connection(
            conn,
            keyring,
            NewConnection(
                application_id=mine.application.id,
                kind=ConnectionKind.GRAPH,
                method=ConnectionMethod.GRAPH_APP,
                access_level=AccessLevel.FULL,
                display_name="Contoso",
                domains=("contoso.com",),
                credentials=GraphClientSecret("tenant", "client", SECRET),
                tenant_id="tenant",
            ),
            actor="test",
        )
        assert await load_credentials(conn, keyring, connection) == GraphClientSecret("tenant", "client", SECRET)
        dump = await conn.fetchval("SELECT string_agg(c::text, '|') FROM connections c")
        vault = await conn.fetch("SELECT sealed FROM sealed_secrets")
        assert SECRET not in (dump or "")
        assert all(SECRET.encode() not in bytes(row["sealed"]) for row in vault)
        assert SECRET not in str(await list_audit(conn, mine.application.id))
        assert [c.id for c in await list_connections(conn, mine.application.id)] == [connection.id]
        assert await list_connections(conn, theirs.application.id) == []
        with pytest.raises(NotFound):
            await get_connection(conn, theirs.application.id, connection.id)


async def test_replacing_and_revoking_wipe_the_old_secret(pool: asyncpg.Pool) -> None:
    keyring = Keyring((new_master_key(),))
    async with pool.acquire() as conn:
        app = await create_application(conn, "ews", actor="test")
        connection = await save_connection(
            conn,
            keyring,
            NewConnection(
                application_id=app.application.id,
                kind=ConnectionKind.EWS,
                method=ConnectionMethod.EWS,
                access_level=AccessLevel.RESTRICTED,
                display_name="Fabrikam",
                domains=("fabrikam.com",),
                credentials=EwsServiceAccount("https://mail.fabrikam.com/EWS/Exchange.asmx", "svc", "pw-1"),
                endpoint="https://mail.fabrikam.com/EWS/Exchange.asmx",
            ),
            actor="test",
        )
        old_secret = connection.secret_id
        await update_credentials(
            conn,
            keyring,
            connection,
            EwsServiceAccount("https://mail.fabrikam.com/EWS/Exchange.asmx", "svc", "pw-2"),
            actor="test",
        )
        assert await conn.fetchval("SELECT count(*) FROM sealed_secrets WHERE id = $1", old_secret) == 0
        refreshed = await get_connection(conn, app.application.id, connection.id)
        assert (await load_credentials(conn, keyring, refreshed)).password == "pw-2"  # type: ignore[union-attr]
        await mark_connection_health(conn, connection.id, error="401 from EWS")
        degraded = await get_connection(conn, app.application.id, connection.id)
        assert (degraded.status, degraded.last_error) == (ConnectionStatus.DEGRADED, "401 from EWS")
        await mark_connection_health(conn, connection.id, error=None)
        assert (await get_connection(conn, app.application.id, connection.id)).status is ConnectionStatus.ACTIVE
        await delete_connection(conn, refreshed, actor="test")
        revoked = await get_connection(conn, app.application.id, connection.id)
        assert revoked.status is ConnectionStatus.REVOKED
        assert revoked.secret_id is None
        assert await conn.fetchval("SELECT count(*) FROM sealed_secrets WHERE id = $1", refreshed.secret_id) == 0
        assert await list_connections(conn, app.application.id) == []
        with pytest.raises(NotFound):
            await load_credentials(conn, keyring, revoked)
