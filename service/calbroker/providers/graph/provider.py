"""Microsoft Graph (Exchange Online) behind the `CalendarProvider` port.

Free/busy for N mailboxes costs ⌈N / max_schedules⌉ getSchedule calls per window chunk, all in
flight at once; tokens come from msal's cache; 429/503/504 are retried after `Retry-After` while
the request's deadline allows, and every failure lands on the mailboxes it concerns, never as "free".
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlencode

import aiohttp

from calbroker.config import Cloud, OperatorApp
from calbroker.domain.connections import AccessLevel, Connection, ConnectionPurpose, Credentials, GraphDelegated
from calbroker.domain.errors import (
    AccessLevelInsufficient,
    CalbrokerError,
    CredentialsRejected,
    MailboxNotFound,
    MailboxOutOfScope,
    TeamsUnavailable,
    UpstreamError,
)
from calbroker.domain.events import EventSpec, OnlineMeeting, UpstreamEvent
from calbroker.domain.intervals import Interval
from calbroker.domain.schedules import MailboxSchedule, Room, RoomList, ScheduleResult
from calbroker.logs import get_logger
from calbroker.metrics import Metrics
from calbroker.providers.graph import wire
from calbroker.providers.graph.auth import GraphCredentials, GraphTokens, granted_permissions
from calbroker.providers.graph.changes import GraphChanges
from calbroker.providers.graph.client import GraphClient
from calbroker.providers.graph.events import GraphEvents
from calbroker.providers.protocol import Deadline, for_mailbox, merge_schedules

__all__ = ["GraphLimits", "GraphProvider"]

_PROVEN_KEPT = 256
# https://learn.microsoft.com/graph/throttling-limits#outlook-service-limits: 4 concurrent requests
# per app per mailbox.
_OUTLOOK_MAILBOX_CONCURRENCY = 4
_log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class GraphLimits:
    """Upstream limits and retry policy. `ProviderRegistry` sets the [unverified] ones (upstream.md §2)
    from `Settings` (CALBROKER_GRAPH_MAX_SCHEDULES, CALBROKER_GRAPH_MAX_WINDOW_DAYS)."""

    max_schedules: int = 20
    """Schedules per getSchedule call [unverified, commonly reported]."""
    max_window: timedelta = timedelta(days=62)
    """Longest getSchedule window [unverified, commonly reported]; longer windows are split."""
    availability_view_interval: int = 60
    """Minutes (5–1440). We read scheduleItems, not availabilityView, so a coarse view keeps answers small."""
    max_concurrency: int = 25
    """Requests in flight per connection (≈ per tenant). Outlook's documented limit is 4 concurrent
    per app per *mailbox*; batches go through different mailboxes, so this can be higher without
    risking 429s: 500 members (the API's limit, 25 batches) still cost one round trip."""
    max_batch: int = 20
    """JSON `$batch` requests per call (documented). Free/busy does not use `$batch`."""
    max_attempts: int = 4
    """Tries per request, counting the first, for 429/5xx/connection errors."""
    retry_backoff_s: float = 0.5
    """First wait when Graph gives no Retry-After; doubles per attempt."""
    token_timeout_s: float = 10.0
    """HTTP timeout of each Entra ID call msal makes (in its worker thread)."""
    refused_ttl_s: float = 600.0
    """How long a mailbox Graph refused in the URL (out of scope, not found) is not used in URLs."""

    def __post_init__(self) -> None:
        if self.max_schedules < 1 or self.max_batch < 1 or self.max_concurrency < 1 or self.max_attempts < 1:
            raise ValueError("GraphLimits: counts must be at least 1")
        if self.max_window < timedelta(minutes=5):
            raise ValueError("GraphLimits.max_window must be at least 5 minutes")
        if not 5 <= self.availability_view_interval <= 1440:
            raise ValueError("GraphLimits.availability_view_interval must be 5–1440 minutes")


_CALENDAR_PERMISSIONS = ("Calendars.ReadBasic", "Calendars.Read", "Calendars.ReadWrite")


def _require_permissions(level: AccessLevel, granted: frozenset[str] | None) -> None:
    """AccessLevelInsufficient naming the missing Graph permission, when the token shows it missing.

    Permissions: https://learn.microsoft.com/graph/permissions-reference (Calendars.ReadWrite to
    create, update and delete events; Calendars.Read or Calendars.ReadBasic for getSchedule).
    An unreadable token, or one with no permission at all (consent missing), is left to the probe
    call that follows, which reports it as Microsoft does.
    """
    if not granted:
        return
    if level.opens_calendars:
        needed, ok, why = "Calendars.ReadWrite", "Calendars.ReadWrite" in granted, "book, move and cancel events"
    else:
        needed, ok, why = "Calendars.Read", bool(granted & set(_CALENDAR_PERMISSIONS)), "read free/busy"
    if ok:
        return
    has = sorted(granted & set(_CALENDAR_PERMISSIONS)) or ["no calendar permission"]
    raise AccessLevelInsufficient(
        f"The app registration has {', '.join(has)}, but {level.value.replace('_', '/')} access needs the "
        f"{needed} application permission (to {why}). Grant it under API permissions in Entra ID and give "
        "admin consent"
        + (", or connect with free/busy only." if level.opens_calendars and has[0].startswith("Calendars") else ".")
    )


class GraphProvider:
    """One Graph connection: tokens, throttling and batching for its tenant's mailboxes.

    Built once per connection and kept for the process lifetime (the registry owns it); the
    aiohttp session and the executor are shared and owned by the app lifespan.
    """

    def __init__(
        self,
        connection: Connection,
        credentials: Credentials,
        cloud: Cloud,
        session: aiohttp.ClientSession,
        executor: Executor,
        *,
        operator_app: OperatorApp | None = None,
        limits: GraphLimits = GraphLimits(),
        on_credentials_changed: Callable[[Credentials], Awaitable[None]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if not isinstance(credentials, GraphCredentials):
            raise TypeError(f"GraphProvider needs Graph credentials, got {type(credentials).__name__}")
        self._connection = connection
        # A delegated token reads other mailboxes' free/busy only through the user's own mailbox.
        self._own_mailbox = credentials.mailbox.lower() if isinstance(credentials, GraphDelegated) else None
        self._limits = limits
        metrics = metrics if metrics is not None else Metrics()
        self._tokens = GraphTokens(
            credentials,
            cloud,
            executor,
            operator_app=operator_app,
            on_credentials_changed=on_credentials_changed,
            timeout_s=limits.token_timeout_s,
            metrics=metrics,
        )
        self._client = GraphClient(
            cloud,
            session,
            executor,
            self._tokens,
            connection_id=connection.id,
            max_concurrency=limits.max_concurrency,
            max_attempts=limits.max_attempts,
            retry_backoff_s=limits.retry_backoff_s,
            metrics=metrics,
        )
        self._in_flight: Counter[str] = Counter()
        self._refused: dict[str, float] = {}
        self._proven: OrderedDict[str, None] = OrderedDict()
        """Mailboxes Graph has answered for lately: safe to put in a getSchedule URL (most recent last)."""
        self._events = GraphEvents(self._client)
        self._changes = GraphChanges(self._client)

    @property
    def connection(self) -> Connection:
        return self._connection

    @property
    def changes(self) -> GraphChanges:
        """Subscriptions and delta rounds for the sync worker."""
        self._client.check_open()
        return self._changes

    async def aclose(self) -> None:
        self._client.close()
        self._tokens.close()

    # --- the port ------------------------------------------------------------------------------

    async def fetch_schedules(
        self, mailboxes: Sequence[str], window: Interval, deadline: Deadline
    ) -> dict[str, ScheduleResult]:
        """Busy blocks and working hours in ⌈N / max_schedules⌉ × chunks getSchedule calls, concurrently."""
        self._client.check_open()
        wanted = list(dict.fromkeys(m.strip().lower() for m in mailboxes))
        if not wanted:
            return {}
        chunks = window.split(self._limits.max_window)
        size = self._limits.max_schedules
        batches = [wanted[i : i + size] for i in range(0, len(wanted), size)]
        async with asyncio.TaskGroup() as group:
            tasks = [
                (batch, group.create_task(self._fetch_batch(batch, chunk, rotation, deadline)))
                for batch in batches
                for rotation, chunk in enumerate(chunks)
            ]
        pieces: dict[str, list[ScheduleResult]] = {m: [] for m in wanted}
        for batch, task in tasks:
            answers = task.result()
            for mailbox in batch:
                pieces[mailbox].append(answers[mailbox])
        merged = {mailbox: merge_schedules(mailbox, found) for mailbox, found in pieces.items()}
        return {requested: merged[requested.strip().lower()] for requested in mailboxes}

    async def verify(self, test_mailbox: str, deadline: Deadline) -> None:
        """A token whose permissions cover the purpose and access level, then the cheapest real call that needs it.

        A read succeeds with Calendars.Read alone, so the token's granted permissions are what
        tells a free/busy-capable app from one that can book events.
        """
        self._client.check_open()
        mailbox = test_mailbox.strip().lower()
        now = datetime.now(UTC).replace(microsecond=0)
        window = Interval(now, now + timedelta(days=1))
        if self._connection.purpose is ConnectionPurpose.ONLINE_MEETINGS:
            await self._verify_online_meetings(mailbox, Interval(now, now + timedelta(minutes=30)), deadline)
            return
        _require_permissions(self._connection.access_level, granted_permissions(await self._tokens.token(deadline)))
        if not self._connection.access_level.opens_calendars:
            found = (await self.fetch_schedules([mailbox], window, deadline))[mailbox]
            if isinstance(found, CalbrokerError):
                raise found
            return
        query = urlencode(
            {
                "startDateTime": window.start.isoformat().replace("+00:00", "Z"),
                "endDateTime": window.end.isoformat().replace("+00:00", "Z"),
                "$top": "1",
                "$select": "subject",
            }
        )
        await self._client.request(
            "GET", f"/users/{_quote(mailbox)}/calendarView?{query}", deadline=deadline, mailbox=mailbox
        )

    async def _verify_online_meetings(self, mailbox: str, when: Interval, deadline: Deadline) -> None:
        """What a Teams-only connection does for real, and nothing more: a Teams meeting for `mailbox`
        (createOrGet by an external id of this connection, so checks never pile up meetings), deleted
        again. That needs the OnlineMeetings.ReadWrite.All role and a Teams application access policy
        covering the mailbox; no calendar is read."""
        try:
            meeting = await self._events.create_online_meeting(
                mailbox,
                subject="calbroker connection check",
                interval=when,
                external_id=f"calbroker-check-{self._connection.id}",
                deadline=deadline,
            )
        except TeamsUnavailable as exc:
            raise CredentialsRejected(exc.detail, upstream_code="OnlineMeetings", mailbox=mailbox) from None
        await self._events.delete_online_meeting(mailbox, meeting.id, deadline)

    async def list_rooms(self, deadline: Deadline) -> list[Room]:
        """Room mailboxes (`/places/microsoft.graph.room`, every page), with their room list when readable."""
        self._client.check_open()
        rooms: list[wire.Place] = []
        url: str | None = "/places/microsoft.graph.room?$top=100"
        while url is not None:
            page = (await self._client.request("GET", url, deadline=deadline)).decode(wire.places_decoder)
            rooms.extend(page.value)
            url = page.next_link
        lists = await self._room_lists(deadline)
        found = (room.to_domain(lists.get((room.email_address or "").lower())) for room in rooms)
        return sorted((room for room in found if room is not None), key=lambda room: room.email)

    # --- events (the Graph side lives in events.py) ----------------------------------------------

    async def create_event(
        self, spec: EventSpec, *, marker: str, may_exist: bool, join_url: str | None, deadline: Deadline
    ) -> UpstreamEvent:
        """`transactionId` makes the POST itself idempotent, so `may_exist` needs no lookup here."""
        self._connection.require_calendar_access("create events")
        return await self._events.create(spec, marker=marker, deadline=deadline)

    async def update_event(
        self,
        spec: EventSpec,
        upstream_id: str,
        changed: frozenset[str],
        *,
        join_url: str | None,
        deadline: Deadline,
    ) -> UpstreamEvent:
        self._connection.require_calendar_access("update events")
        return await self._events.update(spec, upstream_id, changed, deadline)

    async def cancel_event(self, organizer: str, upstream_id: str, *, notify: bool, deadline: Deadline) -> None:
        self._connection.require_calendar_access("cancel events")
        await self._events.cancel(organizer, upstream_id, notify=notify, deadline=deadline)

    async def get_event(self, organizer: str, upstream_id: str, deadline: Deadline) -> UpstreamEvent | None:
        self._connection.require_calendar_access("read events")
        return await self._events.get(organizer, upstream_id, deadline)

    async def find_event(self, organizer: str, marker: str, deadline: Deadline) -> UpstreamEvent | None:
        self._connection.require_calendar_access("read events")
        return await self._events.find(organizer, marker, deadline)

    async def list_events(self, mailbox: str, window: Interval, deadline: Deadline) -> list[UpstreamEvent]:
        self._connection.require_calendar_access("read calendars")
        return await self._events.calendar_view(mailbox, window, deadline)

    async def create_online_meeting(
        self, organizer: str, *, subject: str, interval: Interval, external_id: str, deadline: Deadline
    ) -> OnlineMeeting:
        return await self._events.create_online_meeting(
            organizer, subject=subject, interval=interval, external_id=external_id, deadline=deadline
        )

    async def delete_online_meeting(self, organizer: str, meeting_id: str, deadline: Deadline) -> None:
        await self._events.delete_online_meeting(organizer, meeting_id, deadline)

    # --- getSchedule -----------------------------------------------------------------------------

    async def _fetch_batch(
        self, batch: list[str], chunk: Interval, rotation: int, deadline: Deadline
    ) -> dict[str, ScheduleResult]:
        """One batch over one chunk; never raises a CalbrokerError, every mailbox gets its answer.

        Graph applies the access policy to the mailbox in the URL as well as to each schedule, so
        a 403 "Access to OData is disabled." (or a 404) for the whole request is about the URL
        mailbox: it gets that error and the batch goes again through another of its mailboxes.
        """
        found: dict[str, ScheduleResult] = {}
        pending = list(batch)
        while pending:
            via = self._own_mailbox or self._pick_url_mailbox(pending, rotation)
            try:
                answers = await self._get_schedule(via, pending, chunk, deadline)
            except (MailboxOutOfScope, MailboxNotFound) as exc:
                if self._own_mailbox is not None:
                    # The delegated user's own mailbox, which every call goes through, is refused.
                    broken = CredentialsRejected(
                        f"The signed-in mailbox {via} of this connection cannot be read: {exc.detail}"
                    )
                    found.update((mailbox, for_mailbox(broken, mailbox)) for mailbox in pending)
                    return found
                _log.info("graph.url_mailbox_refused", mailbox=via, error=exc.slug)
                self._refused[via] = time.monotonic() + self._limits.refused_ttl_s
                self._proven.pop(via, None)
                if via in pending:
                    found[via] = exc
                    pending.remove(via)
                continue
            except UpstreamError as exc:
                found.update((mailbox, for_mailbox(exc, mailbox)) for mailbox in pending)
                return found
            self._remember(via)
            for mailbox, answer in answers.items():
                if isinstance(answer, MailboxSchedule):
                    self._remember(mailbox)
            found.update(answers)
            return found
        return found

    def _remember(self, mailbox: str) -> None:
        self._proven[mailbox] = None
        self._proven.move_to_end(mailbox)
        while len(self._proven) > _PROVEN_KEPT:
            self._proven.popitem(last=False)

    async def _get_schedule(
        self, via: str, schedules: list[str], chunk: Interval, deadline: Deadline
    ) -> dict[str, ScheduleResult]:
        body = wire.ScheduleRequest(
            schedules=schedules,
            start_time=wire.DateTimeTimeZone.utc(chunk.start),
            end_time=wire.DateTimeTimeZone.utc(chunk.end),
            availability_view_interval=self._limits.availability_view_interval,
        )
        self._in_flight[via] += 1
        try:
            response = await self._client.request(
                "POST",
                f"/users/{_quote(via)}/calendar/getSchedule",
                json=body,
                headers={"Prefer": 'outlook.timezone="UTC"'},
                deadline=deadline,
                mailbox=via,
            )
        finally:
            self._in_flight[via] -= 1
            if self._in_flight[via] <= 0:
                del self._in_flight[via]
        return wire.read_schedules(response.body, schedules)

    def _pick_url_mailbox(self, pending: list[str], rotation: int) -> str:
        """The batch mailbox to put in the URL: not recently refused, least busy, rotating per chunk.

        Outlook limits concurrency per app per mailbox (4), so spreading URL mailboxes keeps the
        chunks of one batch and concurrent queries for the same people under it.
        """
        now = time.monotonic()
        for mailbox, until in list(self._refused.items()):
            if until <= now:
                del self._refused[mailbox]
        # A mailbox Graph answered for recently is the safest URL: an unknown address in the URL
        # costs a refused call. Any in-scope mailbox will do, it need not be in the batch.
        proven = [m for m in pending if m in self._proven and m not in self._refused]
        if not proven:
            proven = [
                m for m in self._proven if m not in self._refused and self._in_flight[m] < _OUTLOOK_MAILBOX_CONCURRENCY
            ]
        candidates = proven or [m for m in pending if m not in self._refused] or pending
        start = rotation % len(candidates)
        ordered = candidates[start:] + candidates[:start]
        return min(ordered, key=lambda m: self._in_flight[m])

    async def _room_lists(self, deadline: Deadline) -> dict[str, RoomList]:
        """Room email → its room list; empty if the tenant has none or the app may not read them."""
        try:
            page = (await self._client.request("GET", "/places/microsoft.graph.roomlist", deadline=deadline)).decode(
                wire.places_decoder
            )
        except UpstreamError as exc:
            _log.info("graph.room_lists_unreadable", error=exc.slug)
            return {}
        names: dict[str, RoomList] = {}

        async def rooms_of(room_list: wire.Place) -> None:
            assert room_list.email_address is not None
            email = room_list.email_address.strip().lower()
            found = RoomList(email, room_list.display_name or email)
            path = f"/places/{_quote(room_list.email_address)}/microsoft.graph.roomlist/rooms"
            members = (await self._client.request("GET", path, deadline=deadline)).decode(wire.places_decoder)
            for room in members.value:
                if room.email_address:
                    names[room.email_address.lower()] = found

        try:
            async with asyncio.TaskGroup() as group:
                for room_list in page.value:
                    if room_list.email_address:
                        group.create_task(rooms_of(room_list))
        except* UpstreamError as exc:
            _log.info("graph.room_lists_unreadable", error=str(exc.exceptions[0]))
        return names


# --- helpers ---------------------------------------------------------------------------------------


def _quote(mailbox: str) -> str:
    return quote(mailbox, safe="@")
