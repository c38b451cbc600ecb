"""Connections of an application, with their credentials sealed in the vault.

Credentials are serialised to JSON with a `type` tag and sealed under purpose `connection`;
only `load_credentials` ever opens them, and nothing here logs or returns them. Saving a connection
supersedes, in the same transaction, the older ones it replaces (`Connection.supersedes`): they
keep their rows for the events that refer to them, and lose their credentials.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from calbroker.domain.connections import (
    AccessLevel,
    Connection,
    ConnectionKind,
    ConnectionMethod,
    ConnectionPurpose,
    ConnectionStatus,
    Credentials,
    EwsServiceAccount,
    GraphAdminConsent,
    GraphCertificate,
    GraphClientSecret,
    GraphDelegated,
)
from calbroker.domain.errors import CredentialsUnavailable, NotFound
from calbroker.store.audit import record_audit
from calbroker.store.database import Connection as DbConnection
from calbroker.store.keyring import Keyring, KeyringError
from calbroker.store.secrets import delete_secret, read_secret, store_secret

__all__ = [
    "NewConnection",
    "connection_from_row",
    "count_by_status",
    "delete_connection",
    "find_connection",
    "get_connection",
    "list_connections",
    "load_credentials",
    "mark_connection_health",
    "save_connection",
    "update_credentials",
]

_PURPOSE = "connection"

_CREDENTIAL_TYPES: dict[str, type[Credentials]] = {
    "graph_client_secret": GraphClientSecret,
    "graph_certificate": GraphCertificate,
    "graph_admin_consent": GraphAdminConsent,
    "graph_delegated": GraphDelegated,
    "ews_service_account": EwsServiceAccount,
}
_TYPE_NAMES = {cls: name for name, cls in _CREDENTIAL_TYPES.items()}


def _encode_credentials(credentials: Credentials) -> bytes:
    fields = {name: getattr(credentials, name) for name in credentials.__dataclass_fields__}
    return json.dumps({"type": _TYPE_NAMES[type(credentials)], **fields}).encode()


def _decode_credentials(raw: bytes) -> Credentials:
    data: dict[str, Any] = json.loads(raw)
    cls = _CREDENTIAL_TYPES[data.pop("type")]
    return cls(**data)


@dataclass(frozen=True, slots=True, repr=False)
class NewConnection:
    """What a verified connect flow hands to the store (credentials already checked upstream)."""

    application_id: uuid.UUID
    kind: ConnectionKind
    method: ConnectionMethod
    access_level: AccessLevel
    display_name: str
    domains: tuple[str, ...]
    credentials: Credentials
    cloud: str = "global"
    tenant_id: str | None = None
    endpoint: str | None = None
    allowed_mailboxes: tuple[str, ...] = ()
    secret_expires_at: datetime | None = None
    purpose: ConnectionPurpose = ConnectionPurpose.CALENDARS

    def __repr__(self) -> str:
        return f"NewConnection(kind={self.kind}, display_name={self.display_name!r}, credentials=<redacted>)"


def _connection(row: asyncpg.Record) -> Connection:
    return Connection(
        id=row["id"],
        application_id=row["application_id"],
        kind=ConnectionKind(row["kind"]),
        method=ConnectionMethod(row["method"]),
        access_level=AccessLevel(row["access_level"]),
        display_name=row["display_name"],
        domains=tuple(row["domains"]),
        cloud=row["cloud"],
        tenant_id=row["tenant_id"],
        endpoint=row["endpoint"],
        allowed_mailboxes=tuple(row["allowed_mailboxes"]),
        status=ConnectionStatus(row["status"]),
        created_at=row["created_at"],
        last_verified_at=row["last_verified_at"],
        last_error=row["last_error"],
        secret_expires_at=row["secret_expires_at"],
        secret_id=row["secret_id"],
        purpose=ConnectionPurpose(row["purpose"]),
        superseded_by=row["superseded_by"],
    )


def connection_from_row(row: asyncpg.Record) -> Connection:
    """A `connections` row (every column, under its own name) as a value, for queries that join it."""
    return _connection(row)


async def save_connection(conn: DbConnection, keyring: Keyring, new: NewConnection, *, actor: str) -> Connection:
    """Seal the credentials and insert the connection, superseding the ones it replaces, in one transaction."""
    async with conn.transaction():
        # Serialises saves of one application, so two reconnections cannot each miss the other.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"connections:{new.application_id}")
        secret_id = await store_secret(conn, keyring, purpose=_PURPOSE, plaintext=_encode_credentials(new.credentials))
        row = await conn.fetchrow(
            """
            INSERT INTO connections (application_id, kind, method, access_level, display_name, cloud,
                                     tenant_id, endpoint, domains, allowed_mailboxes, secret_id,
                                     secret_expires_at, last_verified_at, purpose)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now(), $13)
            RETURNING *
            """,
            new.application_id,
            new.kind.value,
            new.method.value,
            new.access_level.value,
            new.display_name,
            new.cloud,
            new.tenant_id,
            new.endpoint,
            list(new.domains),
            list(new.allowed_mailboxes),
            secret_id,
            new.secret_expires_at,
            new.purpose.value,
        )
        assert row is not None
        connection = _connection(row)
        for older in await list_connections(conn, new.application_id):
            if connection.supersedes(older):
                await _supersede(conn, older, connection, actor=actor)
        await record_audit(
            conn,
            actor=actor,
            action="connection.create",
            application_id=new.application_id,
            target=str(connection.id),
            details={
                "kind": new.kind.value,
                "method": new.method.value,
                "access_level": new.access_level.value,
                "domains": list(new.domains),
                "tenant_id": new.tenant_id,
                "endpoint": new.endpoint,
                "purpose": new.purpose.value,
            },
        )
    return connection


async def _supersede(conn: DbConnection, older: Connection, newer: Connection, *, actor: str) -> None:
    await conn.execute(
        """UPDATE connections SET status = 'superseded', superseded_by = $2, secret_id = NULL, updated_at = now()
           WHERE id = $1""",
        older.id,
        newer.id,
    )
    if older.secret_id is not None:
        await delete_secret(conn, older.secret_id)
    await record_audit(
        conn,
        actor=actor,
        action="connection.superseded",
        application_id=older.application_id,
        target=str(older.id),
        details={"superseded_by": str(newer.id), "status_before": older.status.value},
    )


async def list_connections(
    conn: DbConnection, application_id: uuid.UUID, *, include_retired: bool = False
) -> list[Connection]:
    """Connections in use (active or degraded), oldest first; with `include_retired`, also the superseded
    and revoked ones (events still refer to them)."""
    rows = await conn.fetch(
        """SELECT * FROM connections WHERE application_id = $1 AND ($2 OR status IN ('active', 'degraded'))
           ORDER BY created_at, id""",
        application_id,
        include_retired,
    )
    return [_connection(row) for row in rows]


async def get_connection(conn: DbConnection, application_id: uuid.UUID, connection_id: uuid.UUID) -> Connection:
    """A connection of this application; another application's connection is simply not found."""
    row = await conn.fetchrow(
        "SELECT * FROM connections WHERE id = $1 AND application_id = $2", connection_id, application_id
    )
    if row is None:
        raise NotFound(f"no connection {connection_id}")
    return _connection(row)


async def load_credentials(conn: DbConnection, keyring: Keyring, connection: Connection) -> Credentials:
    """The connection's credentials, opened; CredentialsUnavailable when this server cannot open them."""
    if connection.secret_id is None:
        raise NotFound(f"connection {connection.id} has no credentials (it was revoked)")
    try:
        raw = await read_secret(conn, keyring, connection.secret_id, purpose=_PURPOSE)
    except KeyringError as exc:
        raise CredentialsUnavailable(
            f"The stored credentials of connection {connection.display_name!r} cannot be opened on this server: {exc}."
        ) from None
    return _decode_credentials(raw)


async def update_credentials(
    conn: DbConnection, keyring: Keyring, connection: Connection, credentials: Credentials, *, actor: str
) -> None:
    """Replace the sealed credentials (e.g. a refreshed delegated token) atomically."""
    async with conn.transaction():
        secret_id = await store_secret(conn, keyring, purpose=_PURPOSE, plaintext=_encode_credentials(credentials))
        await conn.execute(
            "UPDATE connections SET secret_id = $2, updated_at = now() WHERE id = $1",
            connection.id,
            secret_id,
        )
        if connection.secret_id is not None:
            await delete_secret(conn, connection.secret_id)
        await record_audit(
            conn,
            actor=actor,
            action="connection.credentials_replaced",
            application_id=connection.application_id,
            target=str(connection.id),
        )


async def delete_connection(conn: DbConnection, connection: Connection, *, actor: str) -> None:
    """Revoke: the row stays for history, the credentials are wiped."""
    async with conn.transaction():
        await conn.execute(
            """UPDATE connections SET status = 'revoked', secret_id = NULL, updated_at = now()
               WHERE id = $1""",
            connection.id,
        )
        if connection.secret_id is not None:
            await delete_secret(conn, connection.secret_id)
        await record_audit(
            conn,
            actor=actor,
            action="connection.revoke",
            application_id=connection.application_id,
            target=str(connection.id),
        )


async def mark_connection_health(conn: DbConnection, connection_id: uuid.UUID, *, error: str | None) -> None:
    """Record a health check: healthy clears the error, a failure marks the connection degraded.

    Only connections in use change: a check that raced a supersession or a revocation is dropped.
    """
    if error is None:
        await conn.execute(
            """UPDATE connections SET status = 'active', last_error = NULL, last_verified_at = now(),
               updated_at = now() WHERE id = $1 AND status IN ('active', 'degraded')""",
            connection_id,
        )
    else:
        await conn.execute(
            """UPDATE connections SET status = 'degraded', last_error = $2, updated_at = now()
               WHERE id = $1 AND status IN ('active', 'degraded')""",
            connection_id,
            error[:1000],
        )


async def find_connection(conn: DbConnection, connection_id: uuid.UUID) -> Connection | None:
    """A connection by id alone, for workers acting on it outside any application's request."""
    row = await conn.fetchrow("SELECT * FROM connections WHERE id = $1", connection_id)
    return _connection(row) if row is not None else None


async def count_by_status(conn: DbConnection) -> dict[str, int]:
    """How many connections are in each status (for the connections gauge)."""
    rows = await conn.fetch("SELECT status, count(*) AS n FROM connections GROUP BY status")
    return {row["status"]: int(row["n"]) for row in rows}
