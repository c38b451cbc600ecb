"""Turning what happened into notices in the outbox, inside the transaction that made it happen.

- A completed sync round (`round_completed`, the sync worker's hook): `event.changed` / `event.deleted`
  for events the application booked that Outlook moved, re-timed, freed, edited or deleted, and one
  `mailbox.changed` (coalesced per channel and mailbox) with the instant to re-read from.
- Connection health (`connection_notice`): expiring, degraded, disconnected.

A notice is written with the change or not at all, and each channel it reaches gets a delivery job
queued in the same transaction (`queue_runs`), so a delivery waits for no tick.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime

import msgspec

from calbroker.config import Settings
from calbroker.domain.busy import BusyStatus
from calbroker.domain.channels import Notice, NoticeType
from calbroker.services.sync.rounds import RoundReport
from calbroker.store.database import Connection as DbConnection
from calbroker.store.events import EventOperation, EventRecord, EventState, managed_by_upstream_id
from calbroker.store.keyring import Keyring
from calbroker.store.outbox import insert_notice, request_runs
from calbroker.store.queue import queue_on

__all__ = [
    "DELIVER_JOB",
    "ChannelJob",
    "Notices",
    "decode_channel_job",
    "mailbox_key",
    "queue_runs",
]

DELIVER_JOB = "channels.deliver"
"""The worker job that delivers a channel's due deliveries (payload ChannelJob)."""


class ChannelJob(msgspec.Struct, frozen=True):
    channel_id: uuid.UUID


_job_decoder = msgspec.json.Decoder(ChannelJob)
_job_encoder = msgspec.json.Encoder()


def decode_channel_job(payload: bytes | None) -> ChannelJob:
    return _job_decoder.decode(payload or b"{}")


async def queue_runs(conn: DbConnection, channel_ids: Sequence[uuid.UUID]) -> None:
    """Queue a delivery run of each channel in the caller's transaction (one waiting job per channel)."""
    if not channel_ids:
        return
    queue = queue_on(conn)
    for channel_id, run in await request_runs(conn, sorted(set(channel_ids))):
        await queue.enqueue(
            DELIVER_JOB,
            _job_encoder.encode(ChannelJob(channel_id)),
            dedupe_key=f"deliver:{channel_id}:{run}",
            on_conflict="skip",
        )


def mailbox_key(connection_id: uuid.UUID, mailbox: str) -> str:
    """The order (and coalesce) key of everything about one mailbox of one connection."""
    return f"mailbox:{connection_id}:{mailbox}"


class Notices:
    """Publishes notices into the outbox of an application's channels."""

    def __init__(self, keyring: Keyring, settings: Settings) -> None:
        self._keyring = keyring
        self._allowed = len(settings.channels.schedule)

    async def publish(
        self, conn: DbConnection, application_id: uuid.UUID, notice: Notice, *, channel_id: uuid.UUID | None = None
    ) -> int:
        """Fan `notice` out (in the caller's transaction) and queue the runs; returns the channels reached."""
        reached = await insert_notice(
            conn, self._keyring, application_id, notice, allowed=self._allowed, channel_id=channel_id
        )
        await queue_runs(conn, reached)
        return len(reached)

    async def round_completed(self, conn: DbConnection, report: RoundReport) -> None:
        """The sync worker's hook: announce what a round changed (nothing for a mailbox's first round,
        which only fills the copy)."""
        written = report.written
        if report.previous_round_at is None or not (written.changed or written.removed or written.freed):
            return
        connection = report.connection
        key = mailbox_key(connection.id, report.mailbox)
        touched = {*written.changed, *written.removed, *written.freed}
        records = await managed_by_upstream_id(conn, connection.application_id, report.mailbox, sorted(touched))
        managed = False
        for record in records:
            notice = _event_notice(record, report, key)
            if notice is not None:
                managed = True
                await self.publish(conn, connection.application_id, notice)
        # The round's changes are logged with this transaction's start time: re-reading from it finds them.
        since: datetime = await conn.fetchval("SELECT now()")
        await self.publish(
            conn,
            connection.application_id,
            Notice(
                NoticeType.MAILBOX_CHANGED,
                {
                    "connection_id": str(connection.id),
                    "mailbox": report.mailbox,
                    "changes_since": since.isoformat(),
                },
                order_key=key,
                connection_id=connection.id,
                mailbox=report.mailbox,
                managed=managed,
                coalesce_key=key,
            ),
        )


def _event_notice(record: EventRecord, report: RoundReport, key: str) -> Notice | None:
    """What to say about one booked event a round saw change, or None for calbroker's own write echoing back.

    A write calbroker made shows up in the next round; it is told from an Outlook edit by comparing the
    item with what calbroker last wrote. An item reported again after a round that began once that
    write was done is an edit made in Outlook even when times and status are unchanged (an attendee's
    answer, a new subject).
    """
    if record.state is EventState.CANCELLED or (
        record.state is EventState.PENDING and record.operation is EventOperation.CANCEL
    ):
        return None  # calbroker cancelled it: the removal is its own
    if record.upstream_id is None or record.applied is None:
        return None
    written = report.written
    base = {
        "connection_id": str(report.connection.id),
        "mailbox": report.mailbox,
        "event_id": record.event_id,
    }

    def notice(kind: NoticeType, data: Mapping[str, object]) -> Notice:
        return Notice(
            kind, data, order_key=key, connection_id=report.connection.id, mailbox=report.mailbox, managed=True
        )

    if record.upstream_id in written.removed:
        return notice(NoticeType.EVENT_DELETED, base)
    item = report.items.get(record.upstream_id)
    applied = record.applied
    if record.upstream_id in written.freed:
        change = "freed"
    elif item is not None and item.interval != applied.interval:
        change = "moved"
    elif item is not None and item.status is not applied.show_as:
        change = "show_as"
    elif (
        record.state is EventState.CONFIRMED
        and report.previous_round_at is not None
        and report.previous_round_at >= record.updated_at
    ):
        change = "edited"
    else:
        return None
    data: dict[str, object] = {**base, "change": change}
    if item is not None:
        data |= {
            "start": item.interval.start.isoformat(),
            "end": item.interval.end.isoformat(),
            "show_as": item.status.value,
        }
    elif change == "freed":
        data["show_as"] = BusyStatus.FREE.value
    return notice(NoticeType.EVENT_CHANGED, data)
