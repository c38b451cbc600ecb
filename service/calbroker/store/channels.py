"""Channels and their signing secrets.

A channel is an application's webhook endpoint with its filter; its secrets are sealed in the vault
(`sealed_secrets`) and never stored or logged in the clear. After a rotation the previous secret keeps
signing until it retires, so a receiver can switch over without dropping a delivery.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from calbroker.domain.channels import ChannelFilter, ChannelState, NoticeType
from calbroker.domain.errors import LimitExceeded, NotFound
from calbroker.store.audit import record_audit
from calbroker.store.database import Connection
from calbroker.store.keyring import Keyring
from calbroker.store.secrets import delete_secret, read_secret, store_secret

__all__ = [
    "SECRET_PURPOSE",
    "Channel",
    "NewChannel",
    "add_secret",
    "channel_from_row",
    "create_channel",
    "delete_channel",
    "get_channel",
    "list_channels",
    "set_channel_state",
    "signing_secrets",
]

SECRET_PURPOSE = "channel-signing-secret"  # noqa: S105 - the vault's purpose label, not a secret


@dataclass(frozen=True, slots=True)
class Channel:
    id: uuid.UUID
    application_id: uuid.UUID
    callback_url: str
    flavour: str
    filter: ChannelFilter
    state: ChannelState
    created_at: datetime
    updated_at: datetime
    disabled_reason: str | None = None
    disabled_at: datetime | None = None
    failing_since: datetime | None = None
    last_delivered_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class NewChannel:
    application_id: uuid.UUID
    callback_url: str
    filter: ChannelFilter
    flavour: str = "standard"


def channel_from_row(row: asyncpg.Record) -> Channel:
    return Channel(
        id=row["id"],
        application_id=row["application_id"],
        callback_url=row["callback_url"],
        flavour=row["flavour"],
        filter=ChannelFilter(
            types=frozenset(NoticeType(t) for t in row["types"]) if set(row["types"]) != _EVERY_TYPE else frozenset(),
            mailboxes=frozenset(row["mailboxes"]),
            connection_ids=frozenset(row["connection_ids"]),
            only_managed=row["only_managed"],
        ),
        state=ChannelState(row["state"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        disabled_reason=row["disabled_reason"],
        disabled_at=row["disabled_at"],
        failing_since=row["failing_since"],
        last_delivered_at=row["last_delivered_at"],
    )


_EVERY_TYPE = {t.value for t in NoticeType}


def _lock_key(application_id: uuid.UUID) -> int:
    return int.from_bytes(
        hashlib.sha256(b"calbroker.channels:" + application_id.bytes).digest()[:8], "big", signed=True
    )


async def create_channel(
    conn: Connection, keyring: Keyring, new: NewChannel, *, secret: str, limit: int, actor: str
) -> Channel:
    """Insert the channel and its first secret (call inside a transaction); refuses past `limit` per application."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(new.application_id))
    count = await conn.fetchval("SELECT count(*) FROM channels WHERE application_id = $1", new.application_id)
    if count >= limit:
        raise LimitExceeded(
            field="callback_url",
            limit=limit,
            actual=count + 1,
            message=f"an application may have at most {limit} channels; delete one first",
        )
    row = await conn.fetchrow(
        """
        INSERT INTO channels (application_id, callback_url, flavour, types, mailboxes, connection_ids, only_managed)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        RETURNING *
        """,
        new.application_id,
        new.callback_url,
        new.flavour,
        sorted(t.value for t in new.filter.effective_types),
        sorted(new.filter.mailboxes),
        sorted(new.filter.connection_ids),
        new.filter.only_managed,
    )
    assert row is not None
    channel = channel_from_row(row)
    await add_secret(conn, keyring, channel.id, secret, retire_others_in=None)
    await record_audit(
        conn,
        actor=actor,
        action="channel.create",
        application_id=new.application_id,
        target=str(channel.id),
        details={"callback_url": new.callback_url, "types": sorted(t.value for t in new.filter.effective_types)},
    )
    return channel


async def list_channels(conn: Connection, application_id: uuid.UUID) -> list[Channel]:
    rows = await conn.fetch("SELECT * FROM channels WHERE application_id = $1 ORDER BY created_at, id", application_id)
    return [channel_from_row(r) for r in rows]


async def get_channel(conn: Connection, application_id: uuid.UUID, channel_id: uuid.UUID) -> Channel:
    """The application's channel; another application's id is simply not found."""
    row = await conn.fetchrow(
        "SELECT * FROM channels WHERE id = $1 AND application_id = $2", channel_id, application_id
    )
    if row is None:
        raise NotFound(f"no channel {channel_id}")
    return channel_from_row(row)


async def delete_channel(conn: Connection, application_id: uuid.UUID, channel_id: uuid.UUID, *, actor: str) -> None:
    """Remove the channel, its outbox and every sealed secret it held (call inside a transaction)."""
    await get_channel(conn, application_id, channel_id)
    sealed = [
        r["id"]
        for r in await conn.fetch(
            """SELECT secret_id AS id FROM channel_secrets WHERE channel_id = $1
               UNION SELECT sealed_id FROM channel_messages WHERE channel_id = $1 AND sealed_id IS NOT NULL""",
            channel_id,
        )
    ]
    await conn.execute("DELETE FROM channels WHERE id = $1", channel_id)
    for secret_id in sealed:
        await delete_secret(conn, secret_id)
    await record_audit(
        conn, actor=actor, action="channel.delete", application_id=application_id, target=str(channel_id)
    )


async def add_secret(
    conn: Connection, keyring: Keyring, channel_id: uuid.UUID, secret: str, *, retire_others_in: timedelta | None
) -> None:
    """Seal `secret` as the channel's current one; the others retire after `retire_others_in` (rotation)."""
    if retire_others_in is not None:
        await conn.execute(
            """UPDATE channel_secrets SET retires_at = LEAST(COALESCE(retires_at, 'infinity'), now() + $2::interval)
               WHERE channel_id = $1""",
            channel_id,
            retire_others_in,
        )
        # Secrets retired long ago sign nothing any more: wipe them.
        gone = await conn.fetch(
            "DELETE FROM channel_secrets WHERE channel_id = $1 AND retires_at <= now() RETURNING secret_id",
            channel_id,
        )
        for row in gone:
            await delete_secret(conn, row["secret_id"])
    secret_id = await store_secret(conn, keyring, purpose=SECRET_PURPOSE, plaintext=secret.encode())
    await conn.execute("INSERT INTO channel_secrets (secret_id, channel_id) VALUES ($1, $2)", secret_id, channel_id)


async def signing_secrets(
    conn: Connection, keyring: Keyring, channel_ids: Sequence[uuid.UUID], now: datetime
) -> dict[uuid.UUID, list[str]]:
    """Each channel's secrets that sign at `now`, newest first (several while a rotation overlaps)."""
    rows = await conn.fetch(
        """SELECT channel_id, secret_id FROM channel_secrets
           WHERE channel_id = ANY($1::uuid[]) AND (retires_at IS NULL OR retires_at > $2)
           ORDER BY channel_id, created_at DESC""",
        list(channel_ids),
        now,
    )
    found: dict[uuid.UUID, list[str]] = {}
    for row in rows:
        plain = await read_secret(conn, keyring, row["secret_id"], purpose=SECRET_PURPOSE)
        found.setdefault(row["channel_id"], []).append(plain.decode())
    return found


async def set_channel_state(
    conn: Connection,
    channel_id: uuid.UUID,
    state: ChannelState,
    *,
    reason: str | None,
    actor: str,
    application_id: uuid.UUID,
) -> Channel | None:
    """Disable (with the reason) or re-enable a channel; re-enabling forgets the failure streak."""
    row = await conn.fetchrow(
        """
        UPDATE channels SET state = $2,
            disabled_reason = CASE WHEN $2 = 'disabled' THEN $3 END,
            disabled_at = CASE WHEN $2 = 'disabled' THEN now() END,
            failing_since = CASE WHEN $2 = 'disabled' THEN failing_since END,
            updated_at = now()
        WHERE id = $1 AND application_id = $4 RETURNING *
        """,
        channel_id,
        state.value,
        reason,
        application_id,
    )
    if row is None:
        return None
    await record_audit(
        conn,
        actor=actor,
        action="channel.disabled" if state is ChannelState.DISABLED else "channel.enabled",
        application_id=application_id,
        target=str(channel_id),
        details={"reason": reason} if reason else None,
    )
    return channel_from_row(row)
