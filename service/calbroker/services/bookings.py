"""Booking events: idempotent upserts, no double bookings, Teams links that live as long as the event.

Every write follows the same three steps (design §5):

1. **Reserve**, in one short transaction: advisory locks on the event and (with
   `check_availability`) on each booked mailbox, taken in key order; with the locks held, the
   bookings calbroker holds on those mailboxes (in flight or just confirmed) and, if none is in
   the way, a fresh free/busy read from upstream; then the `events` row written as ``pending``
   with a lease. Committing releases the locks: the pending row is now the
   reservation every later check sees, so slow upstream writes never serialise other bookings.
2. **Write upstream**, holding no database connection: create (idempotent by the marker: Graph's
   `transactionId`, EWS's marker property), PATCH/UpdateItem of the changed fields, or cancel.
3. **Confirm** the row with what Exchange now holds. On an upstream error the lease is released
   and the row stays ``pending``: the client's retry (same body or a new one) heals it. A process
   that dies mid-way leaves its lease to lapse after the request deadline; then the same.

The lease outlives every upstream request of the write: providers' writes return only once their
request has ended (`WRITE_SETTLE_S` past the deadline at most), and the lease runs that much
longer than the deadline, so no retry can start a second write while the first may still land.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from enum import Enum

import asyncpg

from calbroker.config import Settings
from calbroker.domain.busy import blocking_statuses
from calbroker.domain.connections import Connection, ConnectionKind, ConnectionPurpose, route_mailbox, successor
from calbroker.domain.errors import (
    AccessDenied,
    CalbrokerError,
    Conflict,
    ConflictingInterval,
    InvalidRequest,
    MailboxError,
    NotFound,
    SlotUnavailable,
    TeamsUnavailable,
    UpstreamError,
    UpstreamUnavailable,
    WriteInProgress,
)
from calbroker.domain.events import EventSpec, UpstreamEvent, event_marker
from calbroker.domain.intervals import Interval
from calbroker.domain.schedules import ScheduleResult
from calbroker.logs import get_logger
from calbroker.providers.protocol import WRITE_SETTLE_S, CalendarProvider, Deadline
from calbroker.redaction import redact_text
from calbroker.services.sync.cache import BusyCache
from calbroker.services.upstream import Upstream
from calbroker.store.connections import list_connections
from calbroker.store.database import Connection as DbConnection
from calbroker.store.events import (
    EventOperation,
    EventRecord,
    EventState,
    Reservation,
    bookings_holding,
    confirm_event,
    find_event,
    lock_booking,
    managed_events,
    record_join_url,
    release_event,
    reserve_event,
    spec_fingerprint,
)

__all__ = ["Bookings", "CalendarEntry", "Outcome", "teams_available", "teams_partner"]

log = get_logger(__name__)

_LEASE_MARGIN = timedelta(seconds=WRITE_SETTLE_S + 1)
"""How long a lease outlives its request's deadline: longer than a write may take to settle."""
_CONFIRMED_HOLD = timedelta(minutes=5)
"""How long a confirmed booking still counts in checks by itself: Exchange delivers invitations to
attendees' (and rooms') calendars asynchronously, so their free/busy can lag behind our write."""


class _Kind(Enum):
    CREATE = "create"
    HEAL_CREATE = "heal_create"
    """A create whose earlier attempt may have reached Exchange: find (or dedupe) before creating."""
    UPDATE = "update"
    REPLAY = "replay"


@dataclass(frozen=True, slots=True)
class _Plan:
    kind: _Kind
    generation: int
    previous: EventRecord | None = None


@dataclass(frozen=True, slots=True)
class _Route:
    """Where an event lives upstream: its connection and provider, and the Graph one for hybrid Teams."""

    connection: Connection
    provider: CalendarProvider
    teams: CalendarProvider | None = None
    held_by: uuid.UUID | None = None
    """The connection the stored event names (its `connection` may have superseded it since)."""

    @property
    def expected_holder(self) -> uuid.UUID:
        """The connection id the event's row must still name for this route to be the right one."""
        return self.held_by or self.connection.id


@dataclass(frozen=True, slots=True)
class Outcome:
    record: EventRecord
    created: bool


@dataclass(frozen=True, slots=True)
class CalendarEntry:
    event: UpstreamEvent
    event_id: str | None
    """This application's `event_id` when the event is one it booked through calbroker."""


def _plan(record: EventRecord | None, spec: EventSpec, fingerprint: str) -> _Plan:
    """What a PUT has to do, given what the row says (called with the row locked)."""
    if record is None:
        return _Plan(_Kind.CREATE, 1)
    if record.lease_left_s is not None:
        raise WriteInProgress(
            f"Another request is writing event {record.event_id!r}; retry when it has finished.",
            retry_after=record.lease_left_s,
        )
    if record.state is EventState.CANCELLED:
        return _Plan(_Kind.CREATE, record.generation + 1)
    if record.operation is EventOperation.CANCEL:
        raise Conflict(
            f"The cancellation of event {record.event_id!r} did not finish; send the DELETE again, "
            "then book the event again."
        )
    if spec.organizer != record.spec.organizer:
        raise InvalidRequest.field(
            "organizer", "an event's organizer cannot change; cancel it and book a new event_id instead"
        )
    if record.spec.teams_meeting and not spec.teams_meeting:
        raise InvalidRequest.field(
            "teams_meeting", "a Teams meeting cannot be removed from an event; cancel it and book it again"
        )
    if record.upstream_id is None and record.state is EventState.PENDING:
        return _Plan(_Kind.HEAL_CREATE, record.generation, record)
    if record.state is EventState.CONFIRMED and record.fingerprint == fingerprint:
        return _Plan(_Kind.REPLAY, record.generation, record)
    return _Plan(_Kind.UPDATE, record.generation, record)


def _conflicts_upstream(
    found: Mapping[str, ScheduleResult], mailboxes: Sequence[str], interval: Interval, own: set[Interval]
) -> list[ConflictingInterval]:
    statuses = blocking_statuses(True)
    conflicts: list[ConflictingInterval] = []
    for mailbox in mailboxes:
        result = found.get(mailbox)
        if result is None:
            raise UpstreamUnavailable("The free/busy answer did not include this mailbox.", mailbox=mailbox)
        if isinstance(result, CalbrokerError):
            raise result  # not knowing someone's time is never "free"
        for block in result.busy:
            if block.status in statuses and block.interval.overlaps(interval) and block.interval not in own:
                conflicts.append(
                    ConflictingInterval(mailbox, block.interval.start, block.interval.end, block.status.value)
                )
    return conflicts


class Bookings:
    """Event writes and calendar views for applications, over the process's pool and providers."""

    def __init__(
        self, pool: asyncpg.Pool, upstream: Upstream, settings: Settings, *, written: BusyCache | None = None
    ) -> None:
        self._pool = pool
        self._upstream = upstream
        self._settings = settings
        self._written = written
        """The busy cache, told of every write so a read right after it sees it (read your writes)."""

    # --- PUT --------------------------------------------------------------------------------------

    async def upsert(
        self, application_id: uuid.UUID, event_id: str, spec: EventSpec, *, check_availability: bool, deadline: Deadline
    ) -> Outcome:
        """Create or update `event_id` so Exchange holds `spec`; a repeated identical PUT writes nothing."""
        # Everything that may need a pool connection (routing, credentials) happens before the
        # locking transaction: a transaction waiting for a second connection could starve the pool.
        async with self._pool.acquire() as conn:
            connections = await list_connections(conn, application_id, include_retired=True)
            existing = await find_event(conn, application_id, event_id)
        live = existing is not None and existing.state is not EventState.CANCELLED
        route = await self._route(connections, existing.connection_id if live and existing else None, spec)
        booked = spec.booked_mailboxes(self._internal(route.connection, spec))
        lease_id = uuid.uuid4()
        async with self._pool.acquire() as conn, conn.transaction():
            record = await lock_booking(
                conn,
                application_id,
                event_id,
                mailboxes=booked if check_availability else (),
                wait=timedelta(seconds=deadline.remaining()),
            )
            plan = _plan(record, spec, spec_fingerprint(spec))
            if plan.kind is not _Kind.REPLAY:
                if (
                    record is not None
                    and record.state is not EventState.CANCELLED
                    and record.connection_id != route.expected_holder
                ):
                    raise WriteInProgress(f"Event {event_id!r} changed while this request was being routed; retry.")
                previous = plan.previous
                moves = previous is None or (
                    spec.interval != (previous.applied or previous.spec).interval
                    or bool(set(booked) - set(previous.mailboxes))
                )
                if check_availability and moves:
                    await self._check_slot(
                        conn, route, (application_id, event_id), spec, booked=booked, plan=plan, deadline=deadline
                    )
                reserved = await reserve_event(
                    conn,
                    Reservation(
                        application_id=application_id,
                        event_id=event_id,
                        generation=plan.generation,
                        connection_id=route.connection.id,
                        spec=spec,
                        mailboxes=booked,
                        operation=EventOperation.UPDATE if plan.kind is _Kind.UPDATE else EventOperation.CREATE,
                        marker=event_marker(application_id, event_id, plan.generation),
                        lease_id=lease_id,
                        lease=timedelta(seconds=deadline.remaining()) + _LEASE_MARGIN,
                    ),
                )
        if plan.kind is _Kind.REPLAY:
            assert record is not None
            filled = await self._fill_join_url(record, route.provider, deadline)
            return Outcome(filled, created=filled.version == 1 and filled.operation is EventOperation.CREATE)
        confirmed = await self._write(reserved, plan, route, deadline)
        first = plan.kind is not _Kind.UPDATE or (plan.previous is not None and plan.previous.version == 0)
        return Outcome(confirmed, created=first)

    async def _check_slot(
        self,
        conn: DbConnection,
        route: _Route,
        event: tuple[uuid.UUID, str],
        spec: EventSpec,
        *,
        booked: Sequence[str],
        plan: _Plan,
        deadline: Deadline,
    ) -> None:
        """With the mailbox locks held: bookings through calbroker, then fresh free/busy from upstream.

        Bookings calbroker holds (in flight, or confirmed moments ago) are checked first, in the
        database: a lost race is refused without asking Microsoft, which keeps the locked section
        short when many requests want one slot. Otherwise free/busy is read fresh (no coalescing,
        no cache). The event's own current time is not a conflict: busy blocks exactly matching
        what an earlier write of this event put there (confirmed or attempted) are left out.
        """
        holdings = await bookings_holding(
            conn,
            booked,
            spec.interval,
            excluding=event,
            pending_for=timedelta(seconds=self._settings.upstream_deadline_s) + _LEASE_MARGIN * 2,
            confirmed_for=_CONFIRMED_HOLD,
        )
        conflicts = [
            ConflictingInterval(mailbox, holding.interval.start, holding.interval.end, "busy")
            for holding in holdings
            for mailbox in holding.mailboxes
        ]
        if not conflicts:
            found = await route.provider.fetch_schedules(list(booked), spec.interval, deadline)
            own: set[Interval] = set()
            if plan.previous is not None:
                own.add(plan.previous.spec.interval)
                if plan.previous.applied is not None:
                    own.add(plan.previous.applied.interval)
            conflicts = _conflicts_upstream(found, booked, spec.interval, own)
        if conflicts:
            unique = {(c.mailbox, c.start, c.end): c for c in conflicts}
            ordered = sorted(unique.values(), key=lambda c: (c.start, c.end, c.mailbox))
            names = ", ".join(sorted({c.mailbox for c in ordered}))
            raise SlotUnavailable(
                f"{spec.interval.start.isoformat()}–{spec.interval.end.isoformat()} is no longer free for {names}.",
                ordered,
            )

    async def _write(self, reserved: EventRecord, plan: _Plan, route: _Route, deadline: Deadline) -> EventRecord:
        """Step 2 and 3: the upstream write, then confirm (or release the lease and re-raise)."""
        assert reserved.lease_id is not None
        spec = reserved.spec
        marker = str(reserved.marker)
        join_url, meeting_id = reserved.teams_join_url, reserved.teams_meeting_id
        upstream_id = reserved.upstream_id
        try:
            if spec.teams_meeting and route.teams is not None and join_url is None:
                meeting = await route.teams.create_online_meeting(
                    spec.organizer, subject=spec.summary, interval=spec.interval, external_id=marker, deadline=deadline
                )
                join_url, meeting_id = meeting.join_url, meeting.id
            if plan.kind is _Kind.UPDATE:
                assert plan.previous is not None
                assert upstream_id is not None
                base = plan.previous.applied or plan.previous.spec
                event = await route.provider.update_event(
                    spec, upstream_id, spec.changed_fields(base), join_url=join_url, deadline=deadline
                )
            else:
                attempted = plan.previous.spec if plan.previous is not None else spec
                event = await route.provider.create_event(
                    attempted if plan.kind is _Kind.HEAL_CREATE else spec,
                    marker=marker,
                    may_exist=plan.kind is _Kind.HEAL_CREATE,
                    join_url=join_url,
                    deadline=deadline,
                )
                upstream_id = event.id
                changed = spec.changed_fields(attempted)
                if changed:
                    # The earlier attempt's event came back (or was just made with its body): bring it
                    # up to date with what this request asks for.
                    event = await route.provider.update_event(
                        spec, event.id, changed, join_url=join_url, deadline=deadline
                    )
        except Exception as exc:
            # The write has ended (providers settle before raising), but whether it reached Exchange
            # may be unknown: the row stays pending for a retry to heal, by the marker. (A cancelled
            # task, like a dead process, keeps its lease until it lapses.)
            async with self._pool.acquire() as conn:
                await release_event(
                    conn,
                    reserved.application_id,
                    reserved.event_id,
                    reserved.lease_id,
                    error=_reason(exc),
                    upstream_id=upstream_id,
                    teams_meeting_id=meeting_id,
                )
            raise
        async with self._pool.acquire() as conn:
            confirmed = await confirm_event(
                conn,
                reserved.application_id,
                reserved.event_id,
                reserved.lease_id,
                upstream_id=event.id,
                ical_uid=event.ical_uid,
                teams_join_url=join_url or (event.join_url if spec.teams_meeting else None),
                teams_meeting_id=meeting_id,
            )
            if confirmed is None:
                # Our lease lapsed and another request took the event over: report what it holds now.
                log.warning("events.lease_lost", event_id=reserved.event_id)
                confirmed = await find_event(conn, reserved.application_id, reserved.event_id)
                if confirmed is None:
                    raise NotFound(f"no event {reserved.event_id!r}")
        if self._written is not None:
            attendees = self._internal(route.connection, spec)
            await self._written.booked(route.connection, spec, event.id, attendees=attendees)
        return confirmed

    # --- GET and DELETE -----------------------------------------------------------------------------

    async def read(self, application_id: uuid.UUID, event_id: str, deadline: Deadline) -> EventRecord:
        """The stored event; a Teams join URL Microsoft had not returned yet is looked for again."""
        async with self._pool.acquire() as conn:
            record = await find_event(conn, application_id, event_id)
        if record is None:
            raise NotFound(f"This application has no event {event_id!r}.")
        if record.state is EventState.CONFIRMED and record.teams is not None and record.teams_join_url is None:
            async with self._pool.acquire() as conn:
                connections = await list_connections(conn, application_id, include_retired=True)
            try:
                route = await self._route(connections, record.connection_id, None, organizer=record.spec.organizer)
            except CalbrokerError:
                return record
            return await self._fill_join_url(record, route.provider, deadline)
        return record

    async def cancel(self, application_id: uuid.UUID, event_id: str, deadline: Deadline) -> EventRecord:
        """Cancel upstream (attendees are told) and end a hybrid Teams meeting; repeating it is a no-op."""
        async with self._pool.acquire() as conn:
            connections = await list_connections(conn, application_id, include_retired=True)
            existing = await find_event(conn, application_id, event_id)
        if existing is None:
            raise NotFound(f"This application has no event {event_id!r}.")
        if existing.state is EventState.CANCELLED:
            return existing
        route = await self._route(connections, existing.connection_id, None, organizer=existing.spec.organizer)
        lease_id = uuid.uuid4()
        async with self._pool.acquire() as conn, conn.transaction():
            record = await lock_booking(
                conn, application_id, event_id, mailboxes=(), wait=timedelta(seconds=deadline.remaining())
            )
            if record is None:
                raise NotFound(f"This application has no event {event_id!r}.")
            if record.state is EventState.CANCELLED:
                return record
            if record.lease_left_s is not None:
                raise WriteInProgress(
                    f"Another request is writing event {event_id!r}; retry when it has finished.",
                    retry_after=record.lease_left_s,
                )
            reserved = await reserve_event(
                conn,
                Reservation(
                    application_id=application_id,
                    event_id=event_id,
                    generation=record.generation,
                    connection_id=route.connection.id,
                    spec=record.spec,
                    mailboxes=record.mailboxes,
                    operation=EventOperation.CANCEL,
                    marker=record.marker,
                    lease_id=lease_id,
                    lease=timedelta(seconds=deadline.remaining()) + _LEASE_MARGIN,
                ),
            )
        spec = record.spec
        try:
            upstream_id = record.upstream_id
            if upstream_id is None:
                # A create that may have reached Exchange before its process died.
                found = await route.provider.find_event(spec.organizer, str(record.marker), deadline)
                upstream_id = found.id if found is not None else None
            if upstream_id is not None:
                await route.provider.cancel_event(
                    spec.organizer, upstream_id, notify=bool(spec.attendees), deadline=deadline
                )
            if route.teams is not None and spec.teams_meeting:
                meeting_id = record.teams_meeting_id
                if meeting_id is None:
                    # createOrGet by the marker finds a meeting an interrupted create made (or makes one
                    # to delete): no Teams meeting outlives its event.
                    meeting_id = (
                        await route.teams.create_online_meeting(
                            spec.organizer,
                            subject=spec.summary,
                            interval=spec.interval,
                            external_id=str(record.marker),
                            deadline=deadline,
                        )
                    ).id
                await route.teams.delete_online_meeting(spec.organizer, meeting_id, deadline)
        except Exception as exc:
            async with self._pool.acquire() as conn:
                await release_event(conn, application_id, event_id, lease_id, error=_reason(exc))
            raise
        async with self._pool.acquire() as conn:
            done = await confirm_event(conn, application_id, event_id, lease_id, cancelled=True)
        if self._written is not None and upstream_id is not None:
            attendees = self._internal(route.connection, spec)
            await self._written.cancelled(route.connection, spec, upstream_id, attendees=attendees)
        return done or reserved

    # --- calendar view ---------------------------------------------------------------------------

    async def calendar_view(
        self, application_id: uuid.UUID, mailbox: str, window: Interval, deadline: Deadline
    ) -> list[CalendarEntry]:
        """A mailbox's events in `window`, each marked with this application's event_id when it booked it:
        the organizer's item and every attendee's copy, cancelled ones and earlier generations included."""
        async with self._pool.acquire() as conn:
            connections = await list_connections(conn, application_id)
        connection = route_mailbox(connections, mailbox)
        connection.require_calendar_access(f"read the calendar of {mailbox}")
        provider = await self._upstream.provider(connection)
        events = await provider.list_events(mailbox, window, deadline)
        async with self._pool.acquire() as conn:
            copies = await managed_events(
                conn,
                application_id,
                [e.id for e in events],
                [e.ical_uid for e in events if e.ical_uid],
                [e.marker for e in events if e.marker],
            )
        return [CalendarEntry(e, copies.event_id(e.id, e.ical_uid, e.marker)) for e in events]

    # --- routing ------------------------------------------------------------------------------------

    async def _route(
        self,
        connections: Sequence[Connection],
        connection_id: uuid.UUID | None,
        spec: EventSpec | None,
        *,
        organizer: str | None = None,
    ) -> _Route:
        """The event's connection and provider and, for an EWS organizer, the Graph partner for Teams.

        A new event is routed by the organizer's domain and allow-list; an existing one stays on
        the connection that wrote it (domains may have moved since), or on the connection that
        superseded it when the organisation was connected again.
        """
        who = spec.organizer if spec is not None else organizer
        assert who is not None
        if connection_id is None:
            connection = route_mailbox(connections, who)
        else:
            found = successor(connections, connection_id)
            if found is None or not found.status.serves:
                raise AccessDenied(
                    f"The connection that holds this event for {who} was revoked; the event can no longer be "
                    "changed through calbroker."
                )
            connection = found
        connection.require_calendar_access("book events")
        provider = await self._upstream.provider(connection)
        teams: CalendarProvider | None = None
        if connection.kind is ConnectionKind.EWS:
            partner = teams_partner(connections, who)
            if partner is not None:
                teams = await self._upstream.provider(partner)
            elif spec is not None and spec.teams_meeting:
                raise TeamsUnavailable(
                    f"{who} is on Exchange on-premises (EWS), which cannot create Teams meetings. Add an "
                    "online-meetings connection (purpose online_meetings) for the same domain: a Microsoft Graph "
                    "app with the OnlineMeetings.ReadWrite.All application permission and a Teams application "
                    "access policy; calbroker then creates the Teams meeting through Graph and puts its join "
                    "link into the invitation.",
                    mailbox=who,
                )
        return _Route(connection, provider, teams, held_by=connection_id)

    @staticmethod
    def _internal(connection: Connection, spec: EventSpec) -> list[str]:
        """Attendees in the organizer's own organisation: the ones whose time we can see and lock."""
        return [a.email for a in spec.attendees if connection.covers_domain(a.email.rpartition("@")[2])]

    async def _fill_join_url(self, record: EventRecord, provider: CalendarProvider, deadline: Deadline) -> EventRecord:
        """`teams.status: pending` → ask Graph for the event again; keep pending if it still has no link."""
        if record.teams is None or record.teams_join_url is not None or record.upstream_id is None:
            return record
        try:
            event = await provider.get_event(record.spec.organizer, record.upstream_id, deadline)
        except UpstreamError as exc:
            log.info("events.join_url_unavailable", event_id=record.event_id, error=exc.slug)
            return record
        if event is None or event.join_url is None:
            return record
        async with self._pool.acquire() as conn:
            filled = await record_join_url(conn, record.application_id, record.event_id, event.join_url)
        return filled or replace(record, teams_join_url=event.join_url)


def _reason(exc: Exception) -> str:
    """What a pending row reports as its last error: the problem slug and detail when we have one."""
    if isinstance(exc, CalbrokerError):
        return f"{exc.slug}: {redact_text(exc.detail)}"
    return f"internal-error: {type(exc).__name__}"


def teams_partner(connections: Sequence[Connection], organizer: str) -> Connection | None:
    """The online-meetings connection that makes Teams meetings for an EWS organizer (a hybrid tenant):
    routed like a calendar, by the organizer's domain and allow-list, preferring a healthy one."""
    try:
        return route_mailbox(connections, organizer, purpose=ConnectionPurpose.ONLINE_MEETINGS)
    except MailboxError:
        return None


def teams_available(connections: Sequence[Connection], connection: Connection, organizer: str) -> bool:
    """Whether an event `organizer` books through `connection` can be a Teams meeting, by the rule bookings
    follow: a Graph calendar makes its own; an EWS organizer needs an online-meetings connection routed
    for its domain; a free/busy-only connection books nothing."""
    if not connection.access_level.opens_calendars:
        return False
    return connection.kind is ConnectionKind.GRAPH or teams_partner(connections, organizer) is not None
