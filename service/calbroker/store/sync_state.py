"""Sync bookkeeping: which mailboxes are synced, each one's rounds, cursor and change feed, the
receiver's heartbeat and the periodic ticks worker replicas share.

Every timestamp is the database's `now()`, so replicas with drifting clocks agree on freshness.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg

from calbroker.domain.intervals import Interval
from calbroker.domain.sync import FeedState, SyncHealth, SyncState
from calbroker.domain.working_hours import Weekday, WeeklyPeriod, WorkingHours
from calbroker.store.database import Connection

__all__ = [
    "ScopeMode",
    "SyncRow",
    "SyncScope",
    "beat_receiver",
    "claim_round",
    "claim_tick",
    "client_state_digest",
    "complete_round",
    "delete_mailboxes",
    "due_rounds",
    "extend_feeds",
    "fail_round",
    "feeds_due",
    "find_by_subscription",
    "get_scope",
    "get_sync_row",
    "hours_from_json",
    "hours_to_json",
    "list_scopes",
    "list_sync_rows",
    "mark_lifecycle",
    "mark_notified",
    "request_full_everywhere",
    "request_round",
    "scope_applied",
    "set_feed",
    "set_scope",
    "sync_ids",
    "sync_row",
    "sync_rows_for",
    "sync_summary",
    "take_outage",
    "track_mailboxes",
]


class ScopeMode(StrEnum):
    ALL = "all"
    """Every mailbox in the connection's scope (its allow-list, else the directory)."""
    LIST = "list"
    """The mailboxes the application listed."""


@dataclass(frozen=True, slots=True)
class SyncScope:
    connection_id: uuid.UUID
    mode: ScopeMode
    mailboxes: tuple[str, ...]
    updated_at: datetime
    applied_at: datetime | None = None
    problem: str | None = None


def _scope(row: asyncpg.Record) -> SyncScope:
    return SyncScope(
        row["connection_id"],
        ScopeMode(row["mode"]),
        tuple(row["mailboxes"]),
        row["updated_at"],
        row["applied_at"],
        row["problem"],
    )


@dataclass(frozen=True, slots=True)
class SyncRow:
    """One synced mailbox of a connection."""

    id: uuid.UUID
    connection_id: uuid.UUID
    mailbox: str
    state: SyncState
    window: Interval | None
    cursor: str | None
    working_hours: WorkingHours | None
    synced_at: datetime | None
    full_synced_at: datetime | None
    last_notified_at: datetime | None
    requested_round: int
    claimed_round: int
    full_requested_at: datetime | None
    last_error: str | None
    failures: int
    feed: FeedState
    subscription_id: str | None
    subscription_expires_at: datetime | None
    client_state_hash: bytes | None
    subscription_error: str | None
    lifecycle_pending_at: datetime | None

    @property
    def health(self) -> SyncHealth:
        return SyncHealth(
            state=self.state,
            feed=self.feed,
            feed_expires_at=self.subscription_expires_at,
            lifecycle_pending=self.lifecycle_pending_at is not None,
            window=self.window,
            synced_at=self.synced_at,
            last_notified_at=self.last_notified_at,
        )


def client_state_digest(client_state: str) -> bytes:
    """What is stored of a subscription's clientState: a notification proves itself by matching it."""
    return hashlib.sha256(client_state.encode()).digest()


def hours_to_json(hours: WorkingHours | None) -> str | None:
    if hours is None:
        return None
    return json.dumps(
        {
            "tz": hours.tz.key,
            "periods": [
                [int(p.day), p.start.isoformat(), p.end.isoformat() if p.end is not None else None]
                for p in hours.periods
            ],
        }
    )


def hours_from_json(raw: str | None) -> WorkingHours | None:
    """Stored working hours; None for anything unreadable (a zone this host lacks reads as unknown).
    Memoized by the stored text: every read of a cached mailbox needs them, and they rarely change."""
    if raw is None:
        return None
    return _hours_from_json(raw)


@lru_cache(maxsize=4096)
def _hours_from_json(raw: str) -> WorkingHours | None:
    data: dict[str, Any] = json.loads(raw)
    try:
        zone = ZoneInfo(str(data["tz"]))
        periods = tuple(
            WeeklyPeriod(Weekday(int(day)), time.fromisoformat(start), time.fromisoformat(end) if end else None)
            for day, start, end in data["periods"]
        )
    except (KeyError, ValueError, TypeError, ZoneInfoNotFoundError):
        return None
    return WorkingHours(periods, zone)


_STATES = {state.value: state for state in SyncState}
_FEEDS = {feed.value: feed for feed in FeedState}


def sync_row(row: asyncpg.Record) -> SyncRow:
    """A `sync_mailboxes` row (every column) as a value."""
    start, end = row["window_start"], row["window_end"]
    return SyncRow(
        id=row["id"],
        connection_id=row["connection_id"],
        mailbox=row["mailbox"],
        state=_STATES[row["state"]],
        window=Interval(start, end) if start is not None and end is not None else None,
        cursor=row["cursor"],
        working_hours=hours_from_json(row["working_hours"]),
        synced_at=row["synced_at"],
        full_synced_at=row["full_synced_at"],
        last_notified_at=row["last_notified_at"],
        requested_round=row["requested_round"],
        claimed_round=row["claimed_round"],
        full_requested_at=row["full_requested_at"],
        last_error=row["last_error"],
        failures=row["failures"],
        feed=_FEEDS[row["subscription_state"]],
        subscription_id=row["subscription_id"],
        subscription_expires_at=row["subscription_expires_at"],
        client_state_hash=bytes(row["client_state_hash"]) if row["client_state_hash"] is not None else None,
        subscription_error=row["subscription_error"],
        lifecycle_pending_at=row["lifecycle_pending_at"],
    )


# --- scopes ------------------------------------------------------------------------------------------


async def get_scope(conn: Connection, connection_id: uuid.UUID) -> SyncScope | None:
    row = await conn.fetchrow("SELECT * FROM sync_scopes WHERE connection_id = $1", connection_id)
    return _scope(row) if row is not None else None


async def list_scopes(conn: Connection) -> list[SyncScope]:
    """Every scope of a live connection."""
    rows = await conn.fetch(
        """
        SELECT s.* FROM sync_scopes s JOIN connections c ON c.id = s.connection_id
        WHERE c.status <> 'revoked' ORDER BY s.connection_id
        """
    )
    return [_scope(r) for r in rows]


async def scope_applied(conn: Connection, connection_id: uuid.UUID, problem: str | None) -> None:
    await conn.execute(
        "UPDATE sync_scopes SET applied_at = now(), problem = $2 WHERE connection_id = $1", connection_id, problem
    )


async def set_scope(
    conn: Connection, connection_id: uuid.UUID, mode: ScopeMode | None, mailboxes: Sequence[str]
) -> SyncScope | None:
    """Replace the connection's scope; `mode` None stops syncing it."""
    if mode is None:
        await conn.execute("DELETE FROM sync_scopes WHERE connection_id = $1", connection_id)
        return None
    row = await conn.fetchrow(
        """
        INSERT INTO sync_scopes (connection_id, mode, mailboxes) VALUES ($1, $2, $3)
        ON CONFLICT (connection_id) DO UPDATE SET mode = $2, mailboxes = $3, updated_at = now()
        RETURNING *
        """,
        connection_id,
        mode.value,
        list(mailboxes),
    )
    assert row is not None
    return _scope(row)


# --- synced mailboxes --------------------------------------------------------------------------------


async def track_mailboxes(conn: Connection, connection_id: uuid.UUID, mailboxes: Sequence[str]) -> list[SyncRow]:
    """Add rows for mailboxes not tracked yet (they start pending, due for a full round); returns them."""
    rows = await conn.fetch(
        """
        INSERT INTO sync_mailboxes (connection_id, mailbox)
        SELECT $1, m FROM unnest($2::text[]) AS m
        ON CONFLICT (connection_id, mailbox) DO NOTHING
        RETURNING *
        """,
        connection_id,
        list(mailboxes),
    )
    return [sync_row(r) for r in rows]


async def delete_mailboxes(conn: Connection, ids: Sequence[uuid.UUID]) -> None:
    """Forget mailboxes (their busy cache and change feed go with them)."""
    await conn.execute("DELETE FROM sync_mailboxes WHERE id = ANY($1::uuid[])", list(ids))


async def list_sync_rows(conn: Connection, connection_id: uuid.UUID) -> list[SyncRow]:
    rows = await conn.fetch("SELECT * FROM sync_mailboxes WHERE connection_id = $1 ORDER BY mailbox", connection_id)
    return [sync_row(r) for r in rows]


async def sync_rows_for(conn: Connection, connection_ids: Sequence[uuid.UUID]) -> list[SyncRow]:
    rows = await conn.fetch(
        "SELECT * FROM sync_mailboxes WHERE connection_id = ANY($1::uuid[]) ORDER BY connection_id, mailbox",
        list(connection_ids),
    )
    return [sync_row(r) for r in rows]


async def sync_ids(conn: Connection, connection_id: uuid.UUID, mailboxes: Sequence[str]) -> dict[str, uuid.UUID]:
    """Which of these mailboxes of the connection are synced, and their rows' ids."""
    rows = await conn.fetch(
        "SELECT mailbox, id FROM sync_mailboxes WHERE connection_id = $1 AND mailbox = ANY($2::text[])",
        connection_id,
        list(mailboxes),
    )
    return {r["mailbox"]: r["id"] for r in rows}


async def get_sync_row(conn: Connection, sync_id: uuid.UUID) -> SyncRow | None:
    row = await conn.fetchrow("SELECT * FROM sync_mailboxes WHERE id = $1", sync_id)
    return sync_row(row) if row is not None else None


# --- rounds ------------------------------------------------------------------------------------------


async def request_round(
    conn: Connection, sync_id: uuid.UUID, *, notified: bool = False, full: bool = False
) -> int | None:
    """Ask for a round; the round number names the job, so a request after a job claimed its round
    gets a new job while requests before that share one. None when the mailbox is not tracked."""
    value: int | None = await conn.fetchval(
        """
        UPDATE sync_mailboxes SET
            requested_round = CASE WHEN requested_round = claimed_round THEN requested_round + 1
                                   ELSE requested_round END,
            last_notified_at = CASE WHEN $2 THEN now() ELSE last_notified_at END,
            full_requested_at = CASE WHEN $3 THEN coalesce(full_requested_at, now()) ELSE full_requested_at END,
            updated_at = now()
        WHERE id = $1
        RETURNING requested_round
        """,
        sync_id,
        notified,
        full,
    )
    return value


async def claim_round(conn: Connection, sync_id: uuid.UUID) -> tuple[SyncRow, datetime] | None:
    """Take every round requested so far; returns the row and the round's start (database clock)."""
    row = await conn.fetchrow(
        """
        UPDATE sync_mailboxes SET claimed_round = requested_round, updated_at = now()
        WHERE id = $1
        RETURNING *, clock_timestamp() AS started
        """,
        sync_id,
    )
    if row is None:
        return None
    return sync_row(row), row["started"]


async def complete_round(
    conn: Connection,
    sync_id: uuid.UUID,
    *,
    started: datetime,
    cursor: str,
    window: Interval,
    full: bool,
    working_hours: WorkingHours | None,
) -> None:
    """Record a successful round (call in the transaction that wrote its changes)."""
    await conn.execute(
        """
        UPDATE sync_mailboxes SET
            state = CASE WHEN state = 'unsupported' THEN state ELSE 'active' END,
            cursor = $2, window_start = $3, window_end = $4,
            synced_at = $5,
            full_synced_at = CASE WHEN $6 THEN $5 ELSE full_synced_at END,
            full_requested_at = CASE WHEN $6 AND full_requested_at <= $5 THEN NULL ELSE full_requested_at END,
            working_hours = coalesce($7::jsonb, working_hours),
            failures = 0, last_error = NULL, updated_at = now()
        WHERE id = $1
        """,
        sync_id,
        cursor,
        window.start,
        window.end,
        started,
        full,
        hours_to_json(working_hours),
    )


async def fail_round(conn: Connection, sync_id: uuid.UUID, error: str, *, cursor_lost: bool) -> None:
    """Record a failed round: the copy is not used until a round succeeds; a lost cursor means full."""
    await conn.execute(
        """
        UPDATE sync_mailboxes SET
            state = CASE WHEN state = 'unsupported' THEN state ELSE 'failed' END,
            failures = failures + 1, last_error = $2,
            cursor = CASE WHEN $3 THEN NULL ELSE cursor END,
            full_requested_at = CASE WHEN $3 THEN coalesce(full_requested_at, now()) ELSE full_requested_at END,
            updated_at = now()
        WHERE id = $1
        """,
        sync_id,
        error,
        cursor_lost,
    )


async def due_rounds(conn: Connection, *, every: timedelta, full_every: timedelta, limit: int) -> list[SyncRow]:
    """Mailboxes whose reconciliation is due, or that asked for a round no job took (a lost enqueue)."""
    rows = await conn.fetch(
        """
        SELECT * FROM sync_mailboxes
        WHERE state <> 'unsupported' AND (
              synced_at IS NULL OR synced_at < now() - $1::interval
           OR full_synced_at IS NULL OR full_synced_at < now() - $2::interval
           OR full_requested_at IS NOT NULL
           OR (requested_round > claimed_round AND updated_at < now() - interval '1 minute'))
        ORDER BY synced_at NULLS FIRST
        LIMIT $3
        """,
        every,
        full_every,
        limit,
    )
    return [sync_row(r) for r in rows]


async def request_full_everywhere(conn: Connection) -> int:
    """Every tracked mailbox wants a full round now (after a receiver outage); returns how many."""
    result: str = await conn.execute(
        """
        UPDATE sync_mailboxes SET full_requested_at = coalesce(full_requested_at, now()),
            last_notified_at = now(), updated_at = now()
        WHERE state <> 'unsupported'
        """
    )
    return int(result.rsplit(maxsplit=1)[-1])


# --- change feeds ------------------------------------------------------------------------------------


async def set_feed(
    conn: Connection,
    sync_id: uuid.UUID,
    state: FeedState,
    *,
    subscription_id: str | None = None,
    expires_at: datetime | None = None,
    client_state_hash: bytes | None = None,
    error: str | None = None,
    keep_identity: bool = False,
) -> None:
    """Record the mailbox's change feed. `keep_identity` changes only state, expiry and error
    (a renewal); otherwise the subscription id and clientState digest are replaced too, and a
    lifecycle event waiting for the old subscription is forgotten."""
    await conn.execute(
        """
        UPDATE sync_mailboxes SET
            subscription_state = $2,
            subscription_id = CASE WHEN $7 THEN subscription_id ELSE $3 END,
            subscription_expires_at = $4,
            client_state_hash = CASE WHEN $7 THEN client_state_hash ELSE $5 END,
            subscription_error = $6,
            lifecycle_pending_at = CASE WHEN $7 THEN lifecycle_pending_at ELSE NULL END,
            state = CASE WHEN $2 = 'unsupported' THEN 'unsupported'
                         WHEN state = 'unsupported' THEN 'pending' ELSE state END,
            updated_at = now()
        WHERE id = $1
        """,
        sync_id,
        state.value,
        subscription_id,
        expires_at,
        client_state_hash,
        error,
        keep_identity,
    )


async def extend_feeds(conn: Connection, ids: Sequence[uuid.UUID], state: FeedState, until: timedelta) -> None:
    """Keep a group's feed alive (an EWS stream holder's heartbeat, or a polling round)."""
    await conn.execute(
        """
        UPDATE sync_mailboxes SET subscription_state = $2, subscription_expires_at = now() + $3::interval,
            subscription_error = NULL, updated_at = now()
        WHERE id = ANY($1::uuid[])
        """,
        list(ids),
        state.value,
        until,
    )


async def find_by_subscription(
    conn: Connection, connection_id: uuid.UUID, subscription_ids: Sequence[str]
) -> list[SyncRow]:
    rows = await conn.fetch(
        "SELECT * FROM sync_mailboxes WHERE connection_id = $1 AND subscription_id = ANY($2::text[])",
        connection_id,
        list(subscription_ids),
    )
    return [sync_row(r) for r in rows]


async def mark_notified(conn: Connection, connection_id: uuid.UUID, subscription_ids: Sequence[str]) -> int:
    """A change signal for these subscriptions: their copies stop counting as fresh until a round.

    Called with unverified input (the receiver): it can only make calbroker read live, never trust
    more, and the worker checks each notification's clientState before it syncs anything.
    """
    result: str = await conn.execute(
        """
        UPDATE sync_mailboxes SET last_notified_at = now()
        WHERE connection_id = $1 AND subscription_id = ANY($2::text[])
        """,
        connection_id,
        list(subscription_ids),
    )
    return int(result.rsplit(maxsplit=1)[-1])


async def mark_lifecycle(
    conn: Connection, connection_id: uuid.UUID, subscription_ids: Sequence[str], *, pending: bool
) -> None:
    """Set (or clear, once handled) the lifecycle-event flag of these subscriptions."""
    await conn.execute(
        f"""
        UPDATE sync_mailboxes SET lifecycle_pending_at = {"now()" if pending else "NULL"}
        WHERE connection_id = $1 AND subscription_id = ANY($2::text[])
        """,  # noqa: S608 - a fixed choice of two SQL expressions, no input
        connection_id,
        list(subscription_ids),
    )


async def feeds_due(conn: Connection, *, renew_before: timedelta, limit: int) -> list[SyncRow]:
    """Graph feeds to create or renew: none yet, failed, expiring within `renew_before`, a lifecycle
    event waiting, or refused by Microsoft more than a day ago (a quota may have freed up)."""
    rows = await conn.fetch(
        """
        SELECT s.* FROM sync_mailboxes s JOIN connections c ON c.id = s.connection_id
        WHERE c.kind = 'graph' AND c.status <> 'revoked' AND (
              s.subscription_state IN ('none', 'failed')
           OR (s.subscription_state = 'unsupported' AND s.updated_at < now() - interval '1 day')
           OR s.subscription_expires_at IS NULL OR s.subscription_expires_at < now() + $1::interval
           OR s.lifecycle_pending_at IS NOT NULL)
        ORDER BY s.subscription_expires_at NULLS FIRST
        LIMIT $2
        """,
        renew_before,
        limit,
    )
    return [sync_row(r) for r in rows]


# --- the receiver and the ticks ------------------------------------------------------------------------


async def beat_receiver(conn: Connection, *, outage_after: timedelta) -> bool:
    """The receiver is up; True when this beat ends a silence longer than `outage_after` (an outage)."""
    row = await conn.fetchrow(
        """
        INSERT INTO sync_receiver AS r (seen_at) VALUES (now())
        ON CONFLICT (singleton) DO UPDATE SET
            outage_from = CASE WHEN now() - r.seen_at > $1::interval THEN r.seen_at ELSE r.outage_from END,
            outage_to = CASE WHEN now() - r.seen_at > $1::interval THEN now() ELSE r.outage_to END,
            seen_at = now()
        RETURNING outage_to = now() AS outage
        """,
        outage_after,
    )
    return bool(row and row["outage"])


async def take_outage(conn: Connection) -> tuple[datetime, datetime] | None:
    """The receiver outage not yet answered by a resync, claimed by the caller (one replica wins)."""
    row = await conn.fetchrow(
        """
        UPDATE sync_receiver r SET outage_from = NULL, outage_to = NULL
        FROM (SELECT outage_from, outage_to FROM sync_receiver WHERE outage_to IS NOT NULL FOR UPDATE) old
        WHERE r.singleton
        RETURNING old.outage_from, old.outage_to
        """
    )
    if row is None:
        return None
    return row["outage_from"], row["outage_to"]


async def claim_tick(conn: Connection, name: str, every: timedelta) -> bool:
    """True for exactly one caller per `every` across replicas: that one runs the periodic work."""
    row = await conn.fetchrow(
        """
        INSERT INTO worker_ticks AS t (name, ran_at) VALUES ($1, now())
        ON CONFLICT (name) DO UPDATE SET ran_at = now() WHERE t.ran_at <= now() - $2::interval
        RETURNING ran_at
        """,
        name,
        every,
    )
    return row is not None


async def sync_summary(conn: Connection, max_age: timedelta) -> tuple[dict[str, int], int, float]:
    """Synced mailboxes by state; how many active ones had no round within `max_age` (their copy
    cannot answer); and the age in seconds of the oldest last round among active ones (0: none)."""
    rows = await conn.fetch("SELECT state, count(*) AS n FROM sync_mailboxes GROUP BY state")
    row = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE synced_at IS NULL OR synced_at < now() - $1::interval),
                  coalesce(extract(epoch FROM now() - min(synced_at)), 0)
           FROM sync_mailboxes WHERE state = 'active'""",
        max_age,
    )
    assert row is not None  # an aggregate always answers one row
    return {r["state"]: int(r["n"]) for r in rows}, int(row[0]), float(row[1])
