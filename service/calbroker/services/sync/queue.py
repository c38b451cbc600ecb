"""The sync jobs on the queue (pgqueuer, same PostgreSQL): their names, payloads, and how to ask for them.

A round is asked for through `request_round`: the mailbox's round counter names the job, so every
signal before a job takes its round shares that job (duplicates and the debounce window collapse
into one round), while a signal after it gets a new job — no change is ever swallowed by a round
already running.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from enum import StrEnum
from typing import TypeVar

import msgspec

from calbroker.store.database import Connection
from calbroker.store.queue import queue_on
from calbroker.store.sync_state import request_round as bump_round

__all__ = [
    "ConnectionJob",
    "JobName",
    "MailboxJob",
    "NotificationsJob",
    "decode_job",
    "enqueue",
    "request_round",
]


class JobName(StrEnum):
    ROUND = "sync.round"
    """Sync one mailbox (payload MailboxJob)."""
    FEED = "sync.feed"
    """Create, renew or recreate one mailbox's Graph subscription (payload MailboxJob)."""
    NOTIFICATIONS = "sync.notifications"
    """One POST the receiver stored (payload NotificationsJob)."""
    SCOPE = "sync.scope"
    """Bring one connection's synced mailboxes in line with its scope (payload ConnectionJob)."""


class MailboxJob(msgspec.Struct, frozen=True):
    sync_id: uuid.UUID


class ConnectionJob(msgspec.Struct, frozen=True):
    connection_id: uuid.UUID


class NotificationsJob(msgspec.Struct, frozen=True):
    connection_id: uuid.UUID
    body: bytes


T = TypeVar("T", MailboxJob, ConnectionJob, NotificationsJob)
_encoder = msgspec.json.Encoder()
_decoders: dict[
    type,
    msgspec.json.Decoder[MailboxJob] | msgspec.json.Decoder[ConnectionJob] | msgspec.json.Decoder[NotificationsJob],
] = {
    MailboxJob: msgspec.json.Decoder(MailboxJob),
    ConnectionJob: msgspec.json.Decoder(ConnectionJob),
    NotificationsJob: msgspec.json.Decoder(NotificationsJob),
}


def decode_job(payload: bytes | None, kind: type[T]) -> T:
    """A job's payload as its struct (jobs are only ever enqueued by this module)."""
    decoded = _decoders[kind].decode(payload or b"{}")
    if not isinstance(decoded, kind):
        raise TypeError(f"a {kind.__name__} payload decoded as {type(decoded).__name__}")
    return decoded


async def enqueue(
    conn: Connection,
    name: JobName,
    payload: msgspec.Struct,
    *,
    dedupe_key: str | None = None,
    delay: timedelta | None = None,
) -> None:
    """Put a job on the queue in the caller's transaction; a job with the same key waiting already wins."""
    await queue_on(conn).enqueue(
        name.value,
        _encoder.encode(payload),
        execute_after=delay,
        dedupe_key=dedupe_key,
        on_conflict="skip",
    )


async def request_round(
    conn: Connection,
    sync_id: uuid.UUID,
    *,
    notified: bool = False,
    full: bool = False,
    delay: timedelta | None = None,
) -> None:
    """Ask for a round of one mailbox (`notified`: upstream signalled a change, so the copy is stale
    until the round). Call inside a transaction: the request and its job commit together."""
    number = await bump_round(conn, sync_id, notified=notified, full=full)
    if number is None:
        return
    await enqueue(conn, JobName.ROUND, MailboxJob(sync_id), dedupe_key=f"round:{sync_id}:{number}", delay=delay)
