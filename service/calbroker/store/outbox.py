"""The channels' outbox: one row per logical delivery, one row per attempt.

Producers fan a notice out to the application's matching channels inside the transaction that made
the change (`insert_notice`), so a delivery exists exactly when its change does. Workers claim due
deliveries with `FOR UPDATE SKIP LOCKED` under a lease (`claim_due`): only the oldest unfinished
delivery of each (channel, order key) is ever claimable, so deliveries of one mailbox go out in
order and never two at once, on any number of replicas. A worker that dies mid-attempt leaves its
lease to lapse and the delivery is claimed again: at least once, never lost. Every instant that
decides due-ness is passed in, so the retry schedule runs on a simulated clock in tests.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import asyncpg

from calbroker.domain.channels import Attempt, Notice, NoticeType, Verdict
from calbroker.domain.errors import Conflict, NotFound
from calbroker.store.audit import record_audit
from calbroker.store.database import Connection
from calbroker.store.keyring import Keyring
from calbroker.store.secrets import read_secret, store_secret

__all__ = [
    "AttemptRecord",
    "Claimed",
    "Finished",
    "Message",
    "MessageState",
    "QueueStats",
    "attempts_of",
    "claim_due",
    "due_channels",
    "finish_attempt",
    "get_message",
    "insert_notice",
    "list_messages",
    "next_due",
    "open_sealed",
    "prune_outbox",
    "queue_stats",
    "replay_since",
    "request_runs",
    "retry_message",
    "take_run",
]

SEALED_PURPOSE = "channel-message-data"


class MessageState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Message:
    """One logical delivery to one channel (its id makes the stable `webhook-id`)."""

    id: uuid.UUID
    seq: int
    channel_id: uuid.UUID
    type: NoticeType
    data: dict[str, Any]
    occurred_at: datetime
    order_key: str
    state: MessageState
    attempts: int
    scheduled: int
    allowed: int
    next_attempt_at: datetime
    created_at: datetime
    sealed_id: uuid.UUID | None = None
    coalesce_key: str | None = None
    lease_id: uuid.UUID | None = None
    lease_until: datetime | None = None
    finished_at: datetime | None = None


def _message(row: asyncpg.Record) -> Message:
    data = row["data"]
    return Message(
        id=row["id"],
        seq=row["seq"],
        channel_id=row["channel_id"],
        type=NoticeType(row["type"]),
        data=json.loads(data) if isinstance(data, str) else dict(data),
        occurred_at=row["occurred_at"],
        order_key=row["order_key"],
        state=MessageState(row["state"]),
        attempts=row["attempts"],
        scheduled=row["scheduled"],
        allowed=row["allowed"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        sealed_id=row["sealed_id"],
        coalesce_key=row["coalesce_key"],
        lease_id=row["lease_id"],
        lease_until=row["lease_until"],
        finished_at=row["finished_at"],
    )


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery a worker holds the lease of, with where and how to send it."""

    message: Message
    callback_url: str
    flavour: str


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    number: int
    started_at: datetime
    latency_ms: int
    outcome: str
    status_code: int | None = None
    error_class: str | None = None
    response_excerpt: str = ""


@dataclass(frozen=True, slots=True)
class Finished:
    """What recording an attempt did: the delivery's new state, and whether the channel was disabled."""

    state: MessageState | None
    """None when the lease had lapsed and another worker owns the delivery now (only the attempt is logged)."""
    disabled: str | None = None
    """Why the channel was disabled by this attempt, if it was."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    undelivered: int
    oldest_age: timedelta


# --- producing -----------------------------------------------------------------------------------------

_TARGETS = """
    SELECT c.id FROM channels c
    WHERE c.application_id = $1 AND c.state = 'active'
      AND $2 = ANY(c.types)
      AND (cardinality(c.connection_ids) = 0 OR $3::uuid = ANY(c.connection_ids))
      AND ($4::text IS NULL OR cardinality(c.mailboxes) = 0 OR $4 = ANY(c.mailboxes))
      AND (NOT c.only_managed OR $5 OR $2 <> 'mailbox.changed')
"""


async def insert_notice(
    conn: Connection,
    keyring: Keyring,
    application_id: uuid.UUID,
    notice: Notice,
    *,
    allowed: int,
    channel_id: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    """Fan `notice` out to the application's active channels that take it (or to `channel_id` alone),
    in the caller's transaction; returns the channels that got a delivery (new, or merged into a waiting
    one of the same coalesce key)."""
    if channel_id is not None:
        targets = [channel_id]
    else:
        rows = await conn.fetch(
            _TARGETS,
            application_id,
            notice.type.value,
            notice.connection_id,
            notice.mailbox,
            notice.managed,
        )
        targets = [r["id"] for r in rows]
    if not targets:
        return []
    sealed_id = None
    if notice.sealed:
        sealed_id = await store_secret(
            conn, keyring, purpose=SEALED_PURPOSE, plaintext=json.dumps(dict(notice.sealed)).encode()
        )
    await conn.execute(
        """
        INSERT INTO channel_messages (channel_id, type, data, sealed_id, order_key, coalesce_key, allowed)
        SELECT t, $2, jsonb_build_object('channel_id', t) || $3::jsonb, $4, $5, $6, $7 FROM unnest($1::uuid[]) AS t
        ON CONFLICT (channel_id, coalesce_key) WHERE state = 'pending' AND coalesce_key IS NOT NULL DO NOTHING
        """,
        targets,
        notice.type.value,
        json.dumps(dict(notice.data)),
        sealed_id,
        notice.order_key,
        notice.coalesce_key,
        allowed,
    )
    return targets


async def request_runs(conn: Connection, channel_ids: Sequence[uuid.UUID]) -> list[tuple[uuid.UUID, int]]:
    """Ask for a delivery run of each channel: the run number names the job, so notices before a job
    takes its run share that job and a notice after it gets a new one."""
    rows = await conn.fetch(
        """
        UPDATE channels SET requested_run = CASE WHEN requested_run = claimed_run THEN requested_run + 1
                                                 ELSE requested_run END
        WHERE id = ANY($1::uuid[]) AND state = 'active'
        RETURNING id, requested_run
        """,
        list(channel_ids),
    )
    return [(r["id"], r["requested_run"]) for r in rows]


async def take_run(conn: Connection, channel_id: uuid.UUID) -> None:
    """A job starts its run: later notices ask for a new one."""
    await conn.execute("UPDATE channels SET claimed_run = requested_run WHERE id = $1", channel_id)


# --- delivering ----------------------------------------------------------------------------------------

# A delivery of `m` is claimable only as the oldest unfinished one of its (channel, order key): the rest of
# a mailbox's deliveries wait behind it, however overdue their own time is. (Constant SQL fragments.)
_HEAD = """NOT EXISTS (
    SELECT 1 FROM channel_messages e
    WHERE e.channel_id = m.channel_id AND e.order_key = m.order_key
      AND e.state IN ('pending', 'sending') AND e.seq < m.seq)"""
_DUE = "((m.state = 'pending' AND m.next_attempt_at <= $1) OR (m.state = 'sending' AND m.lease_until <= $1))"


async def claim_due(
    conn: Connection,
    *,
    now: datetime,
    lease: timedelta,
    limit: int,
    channel_id: uuid.UUID | None = None,
) -> tuple[uuid.UUID, list[Claimed]]:
    """Lease up to `limit` due deliveries (pending and due, or sending with a lapsed lease) of active
    channels, each the oldest unfinished one of its (channel, order key); returns the lease id."""
    lease_id = uuid.uuid4()
    rows = await conn.fetch(
        f"""
        WITH due AS (
            SELECT m.id FROM channel_messages m
            JOIN channels c ON c.id = m.channel_id AND c.state = 'active'
            WHERE ($4::uuid IS NULL OR m.channel_id = $4)
              AND {_DUE} AND {_HEAD}
            ORDER BY m.next_attempt_at, m.seq
            LIMIT $2
            FOR UPDATE OF m SKIP LOCKED
        )
        UPDATE channel_messages m SET state = 'sending', lease_id = $3, lease_until = $1 + $5::interval,
                                      attempts = m.attempts + 1
        FROM due, channels c
        WHERE m.id = due.id AND c.id = m.channel_id
        RETURNING m.*, c.callback_url, c.flavour
        """,  # noqa: S608
        now,
        limit,
        lease_id,
        channel_id,
        lease,
    )
    claimed = [Claimed(_message(r), r["callback_url"], r["flavour"]) for r in rows]
    claimed.sort(key=lambda c: c.message.seq)
    return lease_id, claimed


async def finish_attempt(
    conn: Connection,
    message: Message,
    lease_id: uuid.UUID,
    attempt: Attempt,
    *,
    next_attempt_at: datetime | None,
    now: datetime,
    disable_after: timedelta,
) -> Finished:
    """Log the attempt and move the delivery on (inside a transaction): delivered, back to pending for
    `next_attempt_at`, or failed (schedule spent, or 410). The channel learns of it: a delivery clears
    its failure streak, a streak longer than `disable_after` (or a 410) disables it."""
    verdict = attempt.verdict
    if verdict is Verdict.DELIVERED:
        state = MessageState.DELIVERED
    elif verdict is Verdict.RETRY and next_attempt_at is not None:
        state = MessageState.PENDING
    else:
        state = MessageState.FAILED
    outcome = {Verdict.DELIVERED: "delivered", Verdict.GONE: "gone"}.get(
        verdict, "retry" if state is MessageState.PENDING else "failed"
    )
    await conn.execute(
        """
        INSERT INTO channel_attempts (message_id, number, started_at, latency_ms, status_code, error_class,
                                      response_excerpt, outcome)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        """,
        message.id,
        message.attempts,
        attempt.started_at,
        round(attempt.latency.total_seconds() * 1000),
        attempt.status,
        attempt.error,
        attempt.excerpt,
        outcome,
    )
    if state is MessageState.PENDING and message.coalesce_key is not None:
        # A newer notice of the same key waits already: this older delivery covers it (mailbox.changed's
        # changes_since is the earlier one), and keeps its webhook-id.
        await conn.execute(
            """DELETE FROM channel_messages
               WHERE channel_id = $1 AND coalesce_key = $2 AND state = 'pending' AND id <> $3""",
            message.channel_id,
            message.coalesce_key,
            message.id,
        )
    moved = await conn.fetchval(
        """
        UPDATE channel_messages SET state = $3, scheduled = scheduled + 1,
            next_attempt_at = COALESCE($4, next_attempt_at), lease_id = NULL, lease_until = NULL,
            finished_at = CASE WHEN $3 IN ('delivered', 'failed') THEN $5::timestamptz END
        WHERE id = $1 AND lease_id = $2
        RETURNING id
        """,
        message.id,
        lease_id,
        state.value,
        next_attempt_at if state is MessageState.PENDING else None,
        now,
    )
    if moved is None:
        return Finished(None)
    if verdict is Verdict.DELIVERED:
        await conn.execute(
            "UPDATE channels SET last_delivered_at = $2, failing_since = NULL WHERE id = $1", message.channel_id, now
        )
        return Finished(state)
    if verdict is Verdict.GONE:
        reason = "the receiver answered 410 Gone: it asked for no more deliveries"
    else:
        since = await conn.fetchval(
            """UPDATE channels SET failing_since = COALESCE(failing_since, $2) WHERE id = $1
               RETURNING failing_since""",
            message.channel_id,
            now,
        )
        if since is None or now - since < disable_after:
            return Finished(state)
        reason = f"every delivery failed since {since:%Y-%m-%dT%H:%M:%SZ} ({disable_after.days} days or more)"
    disabled = await conn.fetchrow(
        """UPDATE channels SET state = 'disabled', disabled_reason = $2, disabled_at = $3, updated_at = now()
           WHERE id = $1 AND state = 'active' RETURNING application_id""",
        message.channel_id,
        reason,
        now,
    )
    if disabled is None:
        return Finished(state)
    await record_audit(
        conn,
        actor="channel-delivery",
        action="channel.disabled",
        application_id=disabled["application_id"],
        target=str(message.channel_id),
        details={"reason": reason},
    )
    return Finished(state, disabled=reason)


async def due_channels(conn: Connection, *, now: datetime, limit: int = 1000) -> list[uuid.UUID]:
    """Active channels with a delivery claimable at `now` (the worker's tick queues a run for each); a
    channel whose mailbox queue waits behind a delivery not due yet is not among them."""
    rows = await conn.fetch(
        f"""
        SELECT DISTINCT m.channel_id FROM channel_messages m
        JOIN channels c ON c.id = m.channel_id AND c.state = 'active'
        WHERE {_DUE} AND {_HEAD}
        LIMIT $2
        """,  # noqa: S608
        now,
        limit,
    )
    return [r["channel_id"] for r in rows]


async def next_due(conn: Connection, channel_id: uuid.UUID) -> datetime | None:
    """When the channel's next delivery becomes claimable (a pending one's next attempt, or an attempt's
    lease running out); None when nothing waits. Tests move a simulated clock to it."""
    found: datetime | None = await conn.fetchval(
        f"""
        SELECT min(CASE WHEN m.state = 'pending' THEN m.next_attempt_at ELSE m.lease_until END)
        FROM channel_messages m
        WHERE m.channel_id = $1 AND m.state IN ('pending', 'sending') AND {_HEAD}
        """,  # noqa: S608
        channel_id,
    )
    return found


async def open_sealed(conn: Connection, keyring: Keyring, sealed_id: uuid.UUID) -> dict[str, Any]:
    plain = await read_secret(conn, keyring, sealed_id, purpose=SEALED_PURPOSE)
    found: dict[str, Any] = json.loads(plain)
    return found


# --- the delivery log ----------------------------------------------------------------------------------


async def list_messages(
    conn: Connection,
    channel_id: uuid.UUID,
    *,
    states: Sequence[MessageState] = (),
    before_seq: int | None = None,
    limit: int = 50,
) -> list[Message]:
    """The channel's deliveries, newest first."""
    rows = await conn.fetch(
        """
        SELECT * FROM channel_messages
        WHERE channel_id = $1 AND (cardinality($2::text[]) = 0 OR state = ANY($2::text[]))
          AND ($3::bigint IS NULL OR seq < $3)
        ORDER BY seq DESC LIMIT $4
        """,
        channel_id,
        [s.value for s in states],
        before_seq,
        limit,
    )
    return [_message(r) for r in rows]


async def get_message(conn: Connection, channel_id: uuid.UUID, message_id: uuid.UUID) -> Message:
    row = await conn.fetchrow(
        "SELECT * FROM channel_messages WHERE id = $1 AND channel_id = $2", message_id, channel_id
    )
    if row is None:
        raise NotFound(f"no delivery {message_id} on this channel")
    return _message(row)


async def attempts_of(conn: Connection, message_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[AttemptRecord]]:
    rows = await conn.fetch(
        "SELECT * FROM channel_attempts WHERE message_id = ANY($1::uuid[]) ORDER BY message_id, id",
        list(message_ids),
    )
    found: dict[uuid.UUID, list[AttemptRecord]] = {}
    for r in rows:
        found.setdefault(r["message_id"], []).append(
            AttemptRecord(
                number=r["number"],
                started_at=r["started_at"],
                latency_ms=r["latency_ms"],
                outcome=r["outcome"],
                status_code=r["status_code"],
                error_class=r["error_class"],
                response_excerpt=r["response_excerpt"],
            )
        )
    return found


async def retry_message(conn: Connection, channel_id: uuid.UUID, message_id: uuid.UUID, *, now: datetime) -> Message:
    """Attempt a delivery once more, now: a finished one gets one more attempt (same webhook-id), a
    waiting one is brought forward. One being attempted right now is a conflict."""
    message = await get_message(conn, channel_id, message_id)
    if message.state is MessageState.SENDING and message.lease_until is not None and message.lease_until > now:
        raise Conflict("An attempt of this delivery is in flight; look again in a few seconds.")
    row = await conn.fetchrow(
        """
        UPDATE channel_messages SET
            state = 'pending', next_attempt_at = $3, lease_id = NULL, lease_until = NULL, finished_at = NULL,
            scheduled = CASE WHEN state IN ('delivered', 'failed') THEN 0 ELSE scheduled END,
            allowed = CASE WHEN state IN ('delivered', 'failed') THEN 1 ELSE allowed END,
            coalesce_key = CASE WHEN state IN ('delivered', 'failed') THEN NULL ELSE coalesce_key END
        WHERE id = $1 AND channel_id = $2
        RETURNING *
        """,
        message_id,
        channel_id,
        now,
    )
    assert row is not None
    return _message(row)


async def replay_since(conn: Connection, channel_id: uuid.UUID, since: datetime, *, now: datetime, allowed: int) -> int:
    """Queue every finished delivery created since `since` again, on a fresh schedule and in their
    original order (same webhook-ids: receivers that deduplicate see them as repeats)."""
    replayed: int = await conn.fetchval(
        """
        WITH again AS (
            UPDATE channel_messages SET state = 'pending', next_attempt_at = $3, scheduled = 0, allowed = $4,
                   coalesce_key = NULL, finished_at = NULL
            WHERE channel_id = $1 AND created_at >= $2 AND state IN ('delivered', 'failed')
            RETURNING 1
        )
        SELECT count(*) FROM again
        """,
        channel_id,
        since,
        now,
        allowed,
    )
    return replayed


async def queue_stats(conn: Connection, *, now: datetime) -> QueueStats:
    """Undelivered deliveries of active channels, and how long the oldest has waited."""
    row = await conn.fetchrow(
        """
        SELECT count(*) AS undelivered, min(m.created_at) AS oldest FROM channel_messages m
        JOIN channels c ON c.id = m.channel_id AND c.state = 'active'
        WHERE m.state IN ('pending', 'sending')
        """
    )
    assert row is not None
    oldest = row["oldest"]
    return QueueStats(row["undelivered"], max(timedelta(0), now - oldest) if oldest is not None else timedelta(0))


async def prune_outbox(conn: Connection, *, before: datetime) -> int:
    """Forget deliveries finished before `before` (their attempts go with them), and sealed data no
    delivery refers to any more."""
    pruned: int = await conn.fetchval(
        """
        WITH gone AS (DELETE FROM channel_messages WHERE finished_at < $1 RETURNING 1)
        SELECT count(*) FROM gone
        """,
        before,
    )
    await conn.execute(
        """
        DELETE FROM sealed_secrets s WHERE s.purpose = $1
          AND NOT EXISTS (SELECT 1 FROM channel_messages m WHERE m.sealed_id = s.id)
        """,
        SEALED_PURPOSE,
    )
    return pruned
