"""Bookings an application made through calbroker, and the PostgreSQL locks that keep them single.

A row is reserved (state ``pending``, with a lease) before any upstream write and confirmed after
it; `lock_booking` serialises writers of one event and, for availability checks, of the mailboxes
involved, with transaction-scoped advisory locks that hold across API replicas and vanish with a
crashed process's connection.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import asyncpg

from calbroker.domain.busy import BusyStatus
from calbroker.domain.errors import WriteInProgress
from calbroker.domain.events import Attendee, AttendeeType, EventSpec, TeamsInfo, TeamsStatus
from calbroker.domain.intervals import Interval
from calbroker.store.database import Connection

__all__ = [
    "EventOperation",
    "EventRecord",
    "EventState",
    "Holding",
    "ManagedCopies",
    "Reservation",
    "bookings_holding",
    "confirm_event",
    "find_event",
    "lock_booking",
    "managed_by_upstream_id",
    "managed_events",
    "record_join_url",
    "release_event",
    "reserve_event",
    "spec_fingerprint",
]


class EventState(StrEnum):
    PENDING = "pending"
    """Reserved; an upstream write is in flight, failed, or died with its process."""
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"


class EventOperation(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One booking as calbroker stored it."""

    application_id: uuid.UUID
    event_id: str
    generation: int
    connection_id: uuid.UUID
    spec: EventSpec
    mailboxes: tuple[str, ...]
    """Whose time the event takes (organizer, required and resource attendees of its connection)."""
    state: EventState
    operation: EventOperation
    fingerprint: str
    marker: uuid.UUID
    version: int
    created_at: datetime
    updated_at: datetime
    applied: EventSpec | None = None
    upstream_id: str | None = None
    ical_uid: str | None = None
    teams_join_url: str | None = None
    teams_meeting_id: str | None = None
    lease_id: uuid.UUID | None = None
    lease_until: datetime | None = None
    last_error: str | None = None
    lease_left_s: float | None = None
    """Seconds until another request's lease lapses (set by `lock_booking`); None when unleased."""

    @property
    def teams(self) -> TeamsInfo | None:
        if not self.spec.teams_meeting:
            return None
        if self.teams_join_url:
            return TeamsInfo(TeamsStatus.READY, self.teams_join_url)
        return TeamsInfo(TeamsStatus.PENDING)


def _spec_json(spec: EventSpec) -> dict[str, Any]:
    return {
        "organizer": spec.organizer,
        "start": spec.interval.start.isoformat(),
        "end": spec.interval.end.isoformat(),
        "tzid": spec.tzid,
        "summary": spec.summary,
        "description": spec.description,
        "location": spec.location,
        "attendees": [{"email": a.email, "type": a.type.value, "name": a.name} for a in spec.attendees],
        "teams_meeting": spec.teams_meeting,
        "show_as": spec.show_as.value,
        "reminder_minutes": spec.reminder_minutes,
    }


def _spec(raw: str | dict[str, Any]) -> EventSpec:
    data: dict[str, Any] = json.loads(raw) if isinstance(raw, str) else raw
    return EventSpec(
        organizer=data["organizer"],
        interval=Interval(datetime.fromisoformat(data["start"]), datetime.fromisoformat(data["end"])),
        tzid=data["tzid"],
        summary=data["summary"],
        description=data["description"],
        location=data["location"],
        attendees=tuple(Attendee(a["email"], AttendeeType(a["type"]), a["name"]) for a in data["attendees"]),
        teams_meeting=data["teams_meeting"],
        show_as=BusyStatus(data["show_as"]),
        reminder_minutes=data["reminder_minutes"],
    )


def spec_fingerprint(spec: EventSpec) -> str:
    """Equal for equal specs however the request spelled them (case, offsets, key order)."""
    canonical = json.dumps(_spec_json(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _record(row: asyncpg.Record) -> EventRecord:
    return EventRecord(
        application_id=row["application_id"],
        event_id=row["event_id"],
        generation=row["generation"],
        connection_id=row["connection_id"],
        spec=_spec(row["spec"]),
        mailboxes=tuple(row["mailboxes"]),
        state=EventState(row["state"]),
        operation=EventOperation(row["operation"]),
        fingerprint=row["fingerprint"],
        marker=row["marker"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        applied=_spec(row["applied"]) if row["applied"] is not None else None,
        upstream_id=row["upstream_id"],
        ical_uid=row["ical_uid"],
        teams_join_url=row["teams_join_url"],
        teams_meeting_id=row["teams_meeting_id"],
        lease_id=row["lease_id"],
        lease_until=row["lease_until"],
        last_error=row["last_error"],
        lease_left_s=row.get("lease_left_s"),
    )


def _lock_key(kind: str, name: str) -> int:
    """A stable signed 64-bit key (pg_advisory_xact_lock takes a bigint), the same on every replica."""
    return int.from_bytes(hashlib.sha256(f"calbroker.{kind}:{name}".encode()).digest()[:8], "big", signed=True)


async def lock_booking(
    conn: Connection,
    application_id: uuid.UUID,
    event_id: str,
    *,
    mailboxes: Sequence[str],
    wait: timedelta,
) -> EventRecord | None:
    """Inside a transaction: lock the event, then each mailbox in key order; return the event's row.

    The event lock comes first and each transaction takes one, and mailbox keys are taken in
    ascending order, so two bookings can never wait for each other in a cycle. Locks end with the
    transaction (or the connection of a crashed process). Waiting longer than `wait` raises
    WriteInProgress instead of queueing behind a slow booking forever.
    """
    await conn.execute("SELECT set_config('lock_timeout', $1, true)", f"{max(1, int(wait.total_seconds() * 1000))}ms")
    keys = [_lock_key("event", f"{application_id}/{event_id}")]
    keys += sorted({_lock_key("mailbox", mailbox) for mailbox in mailboxes})
    try:
        for key in keys:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", key)
    except asyncpg.LockNotAvailableError:
        raise WriteInProgress(
            "Another booking for this event or these mailboxes is being checked; retry in a moment."
        ) from None
    row = await conn.fetchrow(
        """SELECT *, CASE WHEN lease_until > now() THEN extract(epoch FROM lease_until - now())::float8 END
                     AS lease_left_s
           FROM events WHERE application_id = $1 AND event_id = $2 FOR UPDATE""",
        application_id,
        event_id,
    )
    return _record(row) if row is not None else None


@dataclass(frozen=True, slots=True)
class Holding:
    """Time another booking through calbroker holds on some of the mailboxes asked about."""

    mailboxes: tuple[str, ...]
    interval: Interval


async def bookings_holding(
    conn: Connection,
    mailboxes: Sequence[str],
    interval: Interval,
    *,
    excluding: tuple[uuid.UUID, str],
    pending_for: timedelta,
    confirmed_for: timedelta,
) -> list[Holding]:
    """Bookings of any application overlapping `interval` on `mailboxes` that upstream may not show yet.

    That is: pending rows updated within `pending_for` (a write in flight; older ones died and
    their upstream result, if any, is visible upstream) and rows confirmed within `confirmed_for`
    (Exchange delivers invitations to attendees' calendars asynchronously).
    """
    rows = await conn.fetch(
        """
        SELECT mailboxes, starts_at, ends_at FROM events
        WHERE state <> 'cancelled' AND operation <> 'cancel' AND mailboxes && $1::text[]
          AND starts_at < $3 AND ends_at > $2
          AND NOT (application_id = $4 AND event_id = $5)
          AND ((state = 'pending' AND updated_at > now() - $6::interval)
               OR (state = 'confirmed' AND confirmed_at > now() - $7::interval))
        ORDER BY starts_at, ends_at
        """,
        list(mailboxes),
        interval.start,
        interval.end,
        excluding[0],
        excluding[1],
        pending_for,
        confirmed_for,
    )
    wanted = set(mailboxes)
    return [
        Holding(tuple(sorted(wanted.intersection(row["mailboxes"]))), Interval(row["starts_at"], row["ends_at"]))
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class Reservation:
    """What a request is about to write upstream, recorded before it does."""

    application_id: uuid.UUID
    event_id: str
    generation: int
    connection_id: uuid.UUID
    spec: EventSpec
    mailboxes: tuple[str, ...]
    operation: EventOperation
    marker: uuid.UUID
    lease_id: uuid.UUID
    lease: timedelta


async def reserve_event(conn: Connection, reservation: Reservation) -> EventRecord:
    """Insert or take over the row as pending under our lease (call inside `lock_booking`'s transaction).

    A new generation (a cancelled event booked again) starts without upstream ids; the earlier
    generation's iCalUId and marker are kept, so its copies stay recognisable.
    """
    r = reservation
    row = await conn.fetchrow(
        """
        INSERT INTO events (application_id, event_id, generation, connection_id, organizer, mailboxes,
                            starts_at, ends_at, state, operation, spec, fingerprint, marker,
                            lease_id, lease_until)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10, $11, $12, $13, now() + $14::interval)
        ON CONFLICT (application_id, event_id) DO UPDATE SET
            generation = EXCLUDED.generation,
            connection_id = EXCLUDED.connection_id,
            organizer = EXCLUDED.organizer,
            mailboxes = EXCLUDED.mailboxes,
            starts_at = EXCLUDED.starts_at,
            ends_at = EXCLUDED.ends_at,
            state = 'pending',
            operation = EXCLUDED.operation,
            spec = EXCLUDED.spec,
            fingerprint = EXCLUDED.fingerprint,
            marker = EXCLUDED.marker,
            lease_id = EXCLUDED.lease_id,
            lease_until = EXCLUDED.lease_until,
            applied = CASE WHEN events.generation = EXCLUDED.generation THEN events.applied END,
            upstream_id = CASE WHEN events.generation = EXCLUDED.generation THEN events.upstream_id END,
            ical_uid = CASE WHEN events.generation = EXCLUDED.generation THEN events.ical_uid END,
            teams_join_url = CASE WHEN events.generation = EXCLUDED.generation THEN events.teams_join_url END,
            teams_meeting_id = CASE WHEN events.generation = EXCLUDED.generation
                                    THEN events.teams_meeting_id END,
            version = CASE WHEN events.generation = EXCLUDED.generation THEN events.version ELSE 0 END,
            earlier_ical_uids = CASE WHEN events.generation = EXCLUDED.generation OR events.ical_uid IS NULL
                                     THEN events.earlier_ical_uids
                                     ELSE array_append(events.earlier_ical_uids, events.ical_uid) END,
            earlier_markers = CASE WHEN events.generation = EXCLUDED.generation THEN events.earlier_markers
                                   ELSE array_append(events.earlier_markers, events.marker) END,
            cancelled_at = NULL,
            updated_at = now()
        RETURNING *
        """,
        r.application_id,
        r.event_id,
        r.generation,
        r.connection_id,
        r.spec.organizer,
        list(r.mailboxes),
        r.spec.interval.start,
        r.spec.interval.end,
        r.operation.value,
        json.dumps(_spec_json(r.spec)),
        spec_fingerprint(r.spec),
        r.marker,
        r.lease_id,
        r.lease,
    )
    assert row is not None
    return _record(row)


async def confirm_event(
    conn: Connection,
    application_id: uuid.UUID,
    event_id: str,
    lease_id: uuid.UUID,
    *,
    cancelled: bool = False,
    upstream_id: str | None = None,
    ical_uid: str | None = None,
    teams_join_url: str | None = None,
    teams_meeting_id: str | None = None,
) -> EventRecord | None:
    """Record what Exchange now holds and drop the lease; None if the lease was lost meanwhile."""
    row = await conn.fetchrow(
        """
        UPDATE events SET
            state = CASE WHEN $4 THEN 'cancelled' ELSE 'confirmed' END,
            applied = CASE WHEN $4 THEN applied ELSE spec END,
            upstream_id = COALESCE($5, upstream_id),
            ical_uid = COALESCE($6, ical_uid),
            teams_join_url = COALESCE($7, teams_join_url),
            teams_meeting_id = COALESCE($8, teams_meeting_id),
            version = version + CASE WHEN $4 THEN 0 ELSE 1 END,
            confirmed_at = CASE WHEN $4 THEN confirmed_at ELSE now() END,
            cancelled_at = CASE WHEN $4 THEN now() END,
            lease_id = NULL, lease_until = NULL, last_error = NULL, updated_at = now()
        WHERE application_id = $1 AND event_id = $2 AND lease_id = $3
        RETURNING *
        """,
        application_id,
        event_id,
        lease_id,
        cancelled,
        upstream_id,
        ical_uid,
        teams_join_url,
        teams_meeting_id,
    )
    return _record(row) if row is not None else None


async def release_event(
    conn: Connection,
    application_id: uuid.UUID,
    event_id: str,
    lease_id: uuid.UUID,
    *,
    error: str,
    upstream_id: str | None = None,
    teams_meeting_id: str | None = None,
) -> None:
    """Give up the lease after a failed upstream write; the row stays pending for a retry to heal.

    Ids learnt before the failure (an EWS item created before its Teams link failed, say) are kept
    so the retry does not have to look for them.
    """
    await conn.execute(
        """
        UPDATE events SET lease_id = NULL, lease_until = NULL, last_error = $4,
                          upstream_id = COALESCE($5, upstream_id),
                          teams_meeting_id = COALESCE($6, teams_meeting_id), updated_at = now()
        WHERE application_id = $1 AND event_id = $2 AND lease_id = $3
        """,
        application_id,
        event_id,
        lease_id,
        error[:1000],
        upstream_id,
        teams_meeting_id,
    )


async def find_event(conn: Connection, application_id: uuid.UUID, event_id: str) -> EventRecord | None:
    row = await conn.fetchrow(
        "SELECT * FROM events WHERE application_id = $1 AND event_id = $2", application_id, event_id
    )
    return _record(row) if row is not None else None


async def record_join_url(
    conn: Connection, application_id: uuid.UUID, event_id: str, join_url: str
) -> EventRecord | None:
    """Fill a Teams join URL Microsoft returned late (never overwrites one already stored)."""
    row = await conn.fetchrow(
        """UPDATE events SET teams_join_url = $3, updated_at = now()
           WHERE application_id = $1 AND event_id = $2 AND teams_join_url IS NULL RETURNING *""",
        application_id,
        event_id,
        join_url,
    )
    return _record(row) if row is not None else None


@dataclass(frozen=True, slots=True)
class ManagedCopies:
    """Which of a calendar's items this application booked: its event_id by each way an item is known."""

    by_upstream_id: dict[str, str]
    by_ical_uid: dict[str, str]
    by_marker: dict[str, str]

    def event_id(self, upstream_id: str, ical_uid: str | None, marker: str | None) -> str | None:
        """The event_id of an item (the organizer's, or an attendee's copy, live or cancelled), if ours."""
        return (
            self.by_upstream_id.get(upstream_id)
            or (self.by_ical_uid.get(ical_uid) if ical_uid else None)
            or (self.by_marker.get(marker.lower()) if marker else None)
        )


async def managed_events(
    conn: Connection,
    application_id: uuid.UUID,
    upstream_ids: Sequence[str],
    ical_uids: Sequence[str],
    markers: Sequence[str] = (),
) -> ManagedCopies:
    """This application's bookings among upstream items, in any state and of any generation.

    The organizer's item is found by its id or its marker, every attendee's copy (a cancelled one
    included) by the iCalUId it shares with the organizer's, an earlier generation's copies by the
    iCalUIds and markers the row keeps.
    """
    wanted_markers: list[uuid.UUID] = []
    for marker in markers:
        try:
            wanted_markers.append(uuid.UUID(marker))
        except ValueError:
            continue  # someone else's value in our property: not ours
    rows = await conn.fetch(
        """SELECT event_id, upstream_id, ical_uid, marker, earlier_ical_uids, earlier_markers FROM events
           WHERE application_id = $1
             AND (upstream_id = ANY($2::text[]) OR ical_uid = ANY($3::text[]) OR marker = ANY($4::uuid[])
                  OR earlier_ical_uids && $3::text[] OR earlier_markers && $4::uuid[])""",
        application_id,
        list(upstream_ids),
        list(ical_uids),
        wanted_markers,
    )
    copies = ManagedCopies({}, {}, {})
    for row in rows:
        event_id = row["event_id"]
        if row["upstream_id"]:
            copies.by_upstream_id[row["upstream_id"]] = event_id
        for uid in (row["ical_uid"], *row["earlier_ical_uids"]):
            if uid:
                copies.by_ical_uid[uid] = event_id
        for marker in (row["marker"], *row["earlier_markers"]):
            copies.by_marker[str(marker)] = event_id
    return copies


async def managed_by_upstream_id(
    conn: Connection, application_id: uuid.UUID, organizer: str, upstream_ids: Sequence[str]
) -> list[EventRecord]:
    """This application's bookings organised by `organizer` whose organizer's item is one of `upstream_ids`."""
    if not upstream_ids:
        return []
    rows = await conn.fetch(
        """SELECT * FROM events
           WHERE application_id = $1 AND organizer = $2 AND upstream_id = ANY($3::text[])
           ORDER BY event_id""",
        application_id,
        organizer,
        list(upstream_ids),
    )
    return [_record(r) for r in rows]
