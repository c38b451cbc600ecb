"""On-premises Exchange over EWS: exchangelib in worker threads, one provider per connection.

Exchange Online is never reached over EWS (see `check_ews_endpoint`); on-premises Exchange
(2016/2019/SE) is, with a service account that holds ApplicationImpersonation (*full*, or
*restricted* to calendar folders) or only AvailabilityOnly rights (*free_busy*). Free/busy always
comes from GetUserAvailability, which runs with the service account's own rights and needs no
impersonation; only the levels that allow it open calendar folders as the impersonated user.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Executor
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from exchangelib import IMPERSONATION, Account, Configuration, Credentials, EWSDateTime
from exchangelib import UTC as EWS_UTC
from exchangelib.errors import ErrorItemNotFound, ResponseMessageError
from exchangelib.folders import DistinguishedFolderId
from exchangelib.properties import (
    FreeBusyViewOptions,
    Mailbox,
    MailboxData,
    TimeWindow,
    TimeZone,
    UserConfigurationNameMNS,
)
from exchangelib.protocol import Protocol as ExchangeProtocol
from exchangelib.services import (
    GetServerTimeZones,
    GetUserAvailability,
    GetUserConfiguration,
)
from exchangelib.transport import BASIC, NTLM

from calbroker.domain.connections import Connection, EwsServiceAccount
from calbroker.domain.errors import (
    CalbrokerError,
    InvalidRequest,
    TeamsUnavailable,
    UpstreamRejected,
)
from calbroker.domain.events import EventSpec, OnlineMeeting, UpstreamEvent
from calbroker.domain.intervals import Interval
from calbroker.domain.schedules import MailboxSchedule, Room, RoomList, ScheduleResult
from calbroker.domain.sync import ChangeSet
from calbroker.logs import get_logger
from calbroker.metrics import Metrics
from calbroker.providers.endpoints import AddressPolicy
from calbroker.providers.ews import events
from calbroker.providers.ews.calls import EwsCalls, request_timeout, translate_error
from calbroker.providers.ews.changes import sync_folder
from calbroker.providers.ews.rooms import room_lists, room_location, rooms_of
from calbroker.providers.ews.schedules import schedule_from_view, zone_name_of_work_hours
from calbroker.providers.ews.streams import StreamGroup
from calbroker.providers.ews.tls import trusting_adapter
from calbroker.providers.protocol import Deadline, for_mailbox, merge_schedules
from calbroker.providers.windows_zones import zone_for

__all__ = [
    "EWS_PATH",
    "EwsLimits",
    "EwsProvider",
    "check_ews_endpoint",
]

EWS_PATH = "/EWS/Exchange.asmx"
T = TypeVar("T")
_log = get_logger(__name__)

# Exchange Online's EWS hosts (worldwide, GCC High, DoD, 21Vianet) and the consumer Outlook.com ones.
_EXCHANGE_ONLINE = (
    "office365.com",
    "outlook.office.com",
    "outlook.com",
    "outlook.cn",
    "office365.us",
    "webmail.apps.mil",
)
_AUTH_TYPES = {"basic": BASIC, "ntlm": NTLM}
# FreeBusy: status plus start/end of each appointment — everything availability needs, and the
# least a free/busy-only account may be shown; Exchange answers MergedOnly when that is all it has
# (https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/requestedview).
_REQUESTED_VIEW = "FreeBusy"
_VERIFY_SPAN = timedelta(days=1)
_ZONE_NAME_TTL_S = 6 * 3600.0
"""How long a mailbox's own zone name is trusted before it is read again (people rarely move zones)."""
_ZONE_NAMES_KEPT = 4096


@dataclass(frozen=True, slots=True)
class EwsLimits:
    """Per-connection limits; the defaults are Exchange's (upstream.md §7). `ProviderRegistry` sets the
    two a server may differ in from `Settings` (CALBROKER_EWS_MAX_MAILBOXES, CALBROKER_EWS_MAX_WINDOW_DAYS)."""

    mailboxes_per_request: int = 100
    """MailboxDataArray entries per GetUserAvailability [unverified: 100]."""
    max_window: timedelta = timedelta(days=42)
    """TimeWindow span per GetUserAvailability (Exchange's default, an admin can change it)."""
    concurrency: int = 4
    """Requests in flight for this connection: worker threads and exchangelib sessions."""
    merged_interval: timedelta = timedelta(minutes=15)
    """MergedFreeBusyIntervalInMinutes: slot length when Exchange only has merged free/busy."""
    http_timeout_s: float = 30.0
    """Upper bound for one HTTP request; what is left of the call's deadline cuts it shorter."""

    def __post_init__(self) -> None:
        if self.mailboxes_per_request < 1 or self.concurrency < 1:
            raise ValueError("mailboxes_per_request and concurrency must be at least 1")
        if self.max_window < timedelta(hours=1):
            raise ValueError("max_window must be at least an hour")
        if not timedelta(minutes=5) <= self.merged_interval <= timedelta(minutes=1440):
            raise ValueError("merged_interval must be between 5 and 1440 minutes (EWS's range)")
        if self.http_timeout_s <= 0:
            raise ValueError("http_timeout_s must be positive")


def _is_exchange_online(host: str) -> bool:
    return any(host == suffix or host.endswith("." + suffix) for suffix in _EXCHANGE_ONLINE)


def check_ews_endpoint(url: str, *, allow_http: bool = False) -> str:
    """The EWS URL an admin typed, normalised to ``https://host[:port]/EWS/Exchange.asmx``.

    A bare host (``mail.contoso.com``) or origin gets the standard path; Exchange Online hosts are
    refused, because EWS for Exchange Online is retired and Graph is the way there. No DNS here:
    address policy (private, loopback, metadata) is `endpoints.AddressPolicy`'s job.
    """
    raw = url.strip()
    if not raw:
        raise InvalidRequest.field("endpoint", "enter the EWS URL, e.g. https://mail.contoso.com/EWS/Exchange.asmx")
    if "://" not in raw:
        raw = "https://" + raw
    try:
        parts = urlsplit(raw)
    except ValueError:  # unbalanced [ ] in the host
        raise InvalidRequest.field("endpoint", f"{url!r} is not an https:// URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname:
        raise InvalidRequest.field("endpoint", f"{url!r} is not an https:// URL")
    if scheme == "http" and not allow_http:
        raise InvalidRequest.field("endpoint", f"{url!r} must use https (plain http would expose the password)")
    if parts.username or parts.password:
        raise InvalidRequest.field("endpoint", "must not contain credentials; enter them in their own fields")
    if parts.query or parts.fragment:
        raise InvalidRequest.field("endpoint", f"{url!r} must not have a ?query or #fragment")
    host = parts.hostname.lower().rstrip(".")
    if _is_exchange_online(host):
        raise InvalidRequest.field(
            "endpoint",
            f"{host} is Exchange Online, which calbroker does not reach over EWS: Microsoft removed the "
            "ApplicationImpersonation role from Exchange Online in February 2025, has blocked EWS there by "
            "default since 1 October 2026 and switches it off on 1 April 2027. Connect Exchange Online "
            "mailboxes with Microsoft Graph instead (admin consent or your own app registration); EWS is "
            "for on-premises Exchange Server.",
        )
    try:
        port = parts.port
    except ValueError:
        raise InvalidRequest.field("endpoint", f"{url!r} has an invalid port") from None
    default_port = 443 if scheme == "https" else 80
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != default_port:
        netloc += f":{port}"
    path = parts.path.rstrip("/")
    if path.lower() in ("", "/ews"):
        path = EWS_PATH
    elif not path.lower().endswith(EWS_PATH.lower()):
        raise InvalidRequest.field(
            "endpoint",
            f"{url!r} is not an EWS URL: the path must end with {EWS_PATH} "
            "(e.g. https://mail.contoso.com/EWS/Exchange.asmx)",
        )
    return urlunsplit((scheme, netloc, path, "", ""))


class _Availability(GetUserAvailability):  # type: ignore[misc]  # exchangelib ships no types
    """GetUserAvailability that returns *every* per-mailbox error instead of raising the first.

    exchangelib only returns ErrorMailRecipientNotFound per mailbox and raises any other
    ResponseMessage error (ErrorNoFreeBusyAccess, …), which would fail the whole batch.
    """

    ERRORS_TO_CATCH_IN_RESPONSE = ResponseMessageError


def _fresh_protocol(config: Any, ca_bundle: Path | None, http_timeout_s: float, policy: AddressPolicy) -> Any:
    """A new Protocol for `config` that trusts `ca_bundle` for its endpoint, never a cached one.

    exchangelib caches Protocols process-wide by (endpoint, credentials) and hands the cached one
    to every `Account(config=...)` (upstream.md, Implication 15). A changed password is a new key;
    a changed CA or limit is not, so evict whatever is cached under our key before creating ours.
    Accounts get our Protocol assigned explicitly (`EwsProvider._account`), so a later
    `CachingProtocol.clear_cache()` or another provider for the same key cannot swap it out.
    exchangelib reads `TIMEOUT` for every request a service makes without its own timeout (item
    saves, folder look-ups): ours is what is left of the running call's deadline.
    """
    adapter = trusting_adapter(config.service_endpoint, ca_bundle, policy)

    class _Protocol(ExchangeProtocol):  # type: ignore[misc]  # exchangelib ships no types
        HTTP_ADAPTER_CLS = adapter  # read by the classmethods that build sessions

        @property
        def TIMEOUT(self) -> float:
            return request_timeout(http_timeout_s)

    with suppress(KeyError):
        del ExchangeProtocol[config]  # CachingProtocol.__delitem__
    return _Protocol(config=config)


def _utc(moment: datetime) -> Any:
    return EWSDateTime.from_datetime(moment.astimezone(UTC))


# --- the untyped exchangelib surface, run in worker threads ------------------------------------


def _probe_version(_timeout_s: float, *, protocol: Any) -> str:
    return str(protocol.version.api_version)


def _utc_definition(timeout_s: float, *, protocol: Any) -> Any:
    service = GetServerTimeZones(protocol=protocol, timeout=timeout_s)
    return next(iter(service.call(timezones=[EWS_UTC], return_full_timezone_data=True)))


def _availability(
    timeout_s: float,
    *,
    protocol: Any,
    timezone: Any,
    mailboxes: Sequence[str],
    window: Interval,
    interval: timedelta,
) -> list[ScheduleResult | Exception]:
    """One GetUserAvailability for `mailboxes`, converted in the thread; per-mailbox errors as exceptions."""
    # chunk_size: our batches are the only batching (exchangelib would split at its own 100).
    service = _Availability(protocol=protocol, chunk_size=max(1, len(mailboxes)), timeout=timeout_s)
    views = list(
        service.call(
            tzinfo=EWS_UTC,
            mailbox_data=[
                MailboxData(email=mailbox, attendee_type="Required", exclude_conflicts=False) for mailbox in mailboxes
            ],
            timezone=timezone,
            free_busy_view_options=FreeBusyViewOptions(
                time_window=TimeWindow(start=_utc(window.start), end=_utc(window.end)),
                merged_free_busy_interval=interval // timedelta(minutes=1),
                requested_view=_REQUESTED_VIEW,
            ),
        )
    )
    if len(views) != len(mailboxes):
        detail = f"Exchange answered {len(views)} free/busy views for {len(mailboxes)} mailboxes."
        return [UpstreamRejected(detail, upstream_code="FreeBusyResponseArray", mailbox=m) for m in mailboxes]
    return [
        view if isinstance(view, Exception) else schedule_from_view(mailbox, view, window, interval)
        for mailbox, view in zip(mailboxes, views, strict=True)
    ]


def _own_zone_name(_timeout_s: float, *, account_for: Callable[[], Any], mailbox: str) -> str | None:
    """The mailbox's Windows zone from its calendar's ``WorkHours`` configuration object (GetUserConfiguration,
    https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/getuserconfiguration-operation);
    None when the mailbox has none (ErrorItemNotFound) or it names no zone."""
    folder = DistinguishedFolderId(id="calendar", mailbox=Mailbox(email_address=mailbox))
    service = GetUserConfiguration(account=account_for())
    try:
        found = service.get(
            user_configuration_name=UserConfigurationNameMNS(name="WorkHours", folder=folder), properties="XmlData"
        )
    except ErrorItemNotFound:
        return None
    return zone_name_of_work_hours(found.xml_data)


def _calendar_probe(_timeout_s: float, *, account_for: Callable[[], Any], window: Interval) -> int:
    account = account_for()
    view = account.calendar.view(start=_utc(window.start), end=_utc(window.end))
    return len(list(view.only("start", "end")))


class EwsProvider:
    """`CalendarProvider` for one EWS connection; keep it for the process lifetime and `aclose()` it.

    One exchangelib `Configuration` and `Protocol` (its session pool, `max_connections` =
    `limits.concurrency`) per provider; impersonating `Account`s are kept per organizer
    (`events.Accounts`). Every exchangelib call runs in `executor` through `EwsCalls.run`, which
    bounds concurrency, applies the deadline and back-off, and maps errors.
    """

    def __init__(
        self,
        connection: Connection,
        credentials: EwsServiceAccount,
        cloud_ca_bundle: Path | None,
        executor: Executor,
        *,
        limits: EwsLimits = EwsLimits(),  # frozen, so one shared default is safe
        policy: AddressPolicy,
        metrics: Metrics | None = None,
    ) -> None:
        auth_type = _AUTH_TYPES.get(credentials.auth_type.strip().lower())
        if auth_type is None:
            raise InvalidRequest.field("auth_type", f"{credentials.auth_type!r} is not supported; use basic or ntlm")
        self._connection = connection
        self._credentials = credentials
        self._limits = limits
        # The scheme was checked when the endpoint was typed; every connection is checked by `policy`.
        self.endpoint = check_ews_endpoint(credentials.endpoint or connection.endpoint or "", allow_http=True)
        self._config = Configuration(
            service_endpoint=self.endpoint,
            credentials=Credentials(credentials.username, credentials.password),
            auth_type=auth_type,
            max_connections=limits.concurrency,
        )
        self._protocol = _fresh_protocol(self._config, cloud_ca_bundle, limits.http_timeout_s, policy)
        self._calls = EwsCalls(
            executor, limits.concurrency, limits.http_timeout_s, connection_id=connection.id, metrics=metrics
        )
        events.register_marker()
        self._event_accounts = events.Accounts(self._account)
        self._utc_zone_definition: Any = None
        self._zone_lock = asyncio.Lock()
        self._zone_names: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        """Mailbox → (monotonic time read, its own Windows zone name or None)."""

    @property
    def connection(self) -> Connection:
        return self._connection

    @property
    def limits(self) -> EwsLimits:
        return self._limits

    def stream_group(self, mailboxes: Sequence[str]) -> StreamGroup:
        """A streaming group for these mailboxes (≤ 200), on its own sessions; the caller closes it."""
        self._connection.require_calendar_access("stream calendar notifications")
        return StreamGroup(
            endpoint=self.endpoint,
            username=self._credentials.username,
            password=self._credentials.password,
            auth_type=self._config.auth_type,
            adapter=self._protocol.HTTP_ADAPTER_CLS,
            mailboxes=mailboxes,
            http_timeout_s=self._limits.http_timeout_s,
        )

    @property
    def changes(self) -> EwsProvider:
        """The sync worker's round-by-round reader (this provider: see `read_changes`)."""
        self._calls.check_open()
        return self

    async def read_changes(self, mailbox: str, window: Interval, cursor: str | None, deadline: Deadline) -> ChangeSet:
        """One sync round of `mailbox` (SyncFolderItems, then a calendar view when series changed)."""
        self._connection.require_calendar_access("synchronise calendars")
        call = partial(sync_folder, account_for=partial(self._event_accounts.get, mailbox), window=window, state=cursor)
        return await self._calls.run("SyncFolderItems", call, deadline, mailbox=mailbox)

    async def __aenter__(self) -> EwsProvider:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _account(self, mailbox: str) -> Any:
        """An impersonating Account on our Protocol (call in a worker thread)."""
        account = Account(
            primary_smtp_address=mailbox,
            access_type=IMPERSONATION,
            autodiscover=False,
            config=self._config,
            default_timezone=EWS_UTC,
            locale="en_US",
        )
        account.protocol = self._protocol
        return account

    async def _utc_timezone(self, year: int, deadline: Deadline) -> Any:
        """The request ``<t:TimeZone>`` for UTC, from the server's own definition, fetched once."""
        async with self._zone_lock:
            if self._utc_zone_definition is None:
                self._utc_zone_definition = await self._calls.run(
                    "GetServerTimeZones", partial(_utc_definition, protocol=self._protocol), deadline
                )
        return TimeZone.from_server_timezone(tz_definition=self._utc_zone_definition, for_year=year)

    # --- CalendarProvider --------------------------------------------------------------------------

    async def fetch_schedules(
        self, mailboxes: Sequence[str], window: Interval, deadline: Deadline
    ) -> dict[str, ScheduleResult]:
        """Busy blocks and working hours in ⌈mailboxes / 100⌉ × ⌈span / 42 days⌉ GetUserAvailability calls.

        The calls run concurrently (at most `limits.concurrency` at once). Any failure, of one
        mailbox or of a whole call, becomes that mailbox's error; a mailbox with an error in any
        window piece reports the error, never a partial calendar.
        """
        self._calls.check_open()
        wanted = list(dict.fromkeys(mailboxes))
        if not wanted:
            return {}
        pieces = window.split(self._limits.max_window)
        size = self._limits.mailboxes_per_request
        batches = [wanted[i : i + size] for i in range(0, len(wanted), size)]
        try:
            zones = {year: await self._utc_timezone(year, deadline) for year in {p.start.year for p in pieces}}
        except CalbrokerError as error:
            return {mailbox: for_mailbox(error, mailbox) for mailbox in wanted}
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._fetch_batch(batch, piece, zones[piece.start.year], deadline))
                for piece in pieces
                for batch in batches
            ]
        results: defaultdict[str, list[ScheduleResult]] = defaultdict(list)
        for task in tasks:
            for mailbox, result in task.result().items():
                results[mailbox].append(result)
        merged = {mailbox: merge_schedules(mailbox, results[mailbox]) for mailbox in wanted}
        if self._connection.access_level.opens_calendars:
            await self._name_zones(merged, deadline)
        return merged

    async def _name_zones(self, schedules: dict[str, ScheduleResult], deadline: Deadline) -> None:
        """Put working hours in the mailbox's own zone where its calendar names one (read once per
        `_ZONE_NAME_TTL_S`); where it cannot be read now, the zone matched from Exchange's rule stays."""
        with_hours = {
            mailbox: schedule
            for mailbox, schedule in schedules.items()
            if isinstance(schedule, MailboxSchedule) and schedule.working_hours is not None
        }
        now = time.monotonic()
        stale = [m for m in with_hours if m not in self._zone_names or now - self._zone_names[m][0] > _ZONE_NAME_TTL_S]
        if stale:
            async with asyncio.TaskGroup() as group:
                for mailbox in stale:
                    group.create_task(self._read_zone_name(mailbox, deadline))
        for mailbox, schedule in with_hours.items():
            assert schedule.working_hours is not None
            named = self._zone_names.get(mailbox)
            zone = zone_for(named[1]) if named is not None else None
            if zone is not None and zone != schedule.working_hours.tz:
                schedules[mailbox] = replace(schedule, working_hours=replace(schedule.working_hours, tz=zone))

    async def _read_zone_name(self, mailbox: str, deadline: Deadline) -> None:
        call = partial(_own_zone_name, account_for=partial(self._event_accounts.get, mailbox), mailbox=mailbox)
        try:
            name = await self._calls.run("GetUserConfiguration", call, deadline, mailbox=mailbox)
        except CalbrokerError as error:
            _log.info("ews.zone_name_unavailable", mailbox=mailbox, error=error.slug)
            return
        self._zone_names[mailbox] = (time.monotonic(), name)
        self._zone_names.move_to_end(mailbox)
        while len(self._zone_names) > _ZONE_NAMES_KEPT:
            self._zone_names.popitem(last=False)

    async def _fetch_batch(
        self, batch: list[str], piece: Interval, timezone: Any, deadline: Deadline
    ) -> dict[str, ScheduleResult]:
        call = partial(
            _availability,
            protocol=self._protocol,
            timezone=timezone,
            mailboxes=batch,
            window=piece,
            interval=self._limits.merged_interval,
        )
        try:
            results = await self._calls.run("GetUserAvailability", call, deadline)
        except CalbrokerError as error:
            return {mailbox: for_mailbox(error, mailbox) for mailbox in batch}
        answers: dict[str, ScheduleResult] = {}
        for mailbox, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                answers[mailbox] = for_mailbox(
                    translate_error(result, what="GetUserAvailability", mailbox=mailbox), mailbox
                )
            else:
                answers[mailbox] = result
        return answers

    async def verify(self, test_mailbox: str, deadline: Deadline) -> None:
        """Connect (version probe), then do what this access level will do for real with `test_mailbox`.

        free_busy: GetUserAvailability only. restricted/full: also open the calendar as the
        impersonated user (GetFolder + FindItem with a CalendarView), which is what events need.
        """
        await self._calls.run("connecting to Exchange", partial(_probe_version, protocol=self._protocol), deadline)
        now = datetime.now(UTC).replace(microsecond=0)
        window = Interval(now, now + _VERIFY_SPAN)
        if self._connection.access_level.opens_calendars:
            await self._calls.run(
                "reading the calendar",
                partial(_calendar_probe, account_for=partial(self._account, test_mailbox), window=window),
                deadline,
                mailbox=test_mailbox,
            )
        result = (await self.fetch_schedules([test_mailbox], window, deadline))[test_mailbox]
        if not isinstance(result, MailboxSchedule):
            raise result

    async def list_rooms(self, deadline: Deadline) -> list[Room]:
        """Rooms of every room list (GetRoomLists + GetRooms; rooms in no list are invisible to EWS), each
        with its building from the directory (`rooms.room_location`). EWS has no room capacity: it is None."""
        lists = await self._calls.run("GetRoomLists", partial(room_lists, protocol=self._protocol), deadline)
        members = await self._gather(
            [
                self._calls.run("GetRooms", partial(rooms_of, protocol=self._protocol, room_list=room_list), deadline)
                for room_list in lists
            ]
        )
        listed: dict[str, tuple[str, RoomList]] = {}
        for room_list, rooms in zip(lists, members, strict=True):
            for email, name in rooms:
                listed.setdefault(email, (name, room_list))
        emails = sorted(listed)
        locations = await self._gather(
            [
                self._calls.run("ResolveNames", partial(room_location, protocol=self._protocol, email=email), deadline)
                for email in emails
            ]
        )
        return [
            Room(email=email, name=listed[email][0], building=location, room_list=listed[email][1])
            for email, location in zip(emails, locations, strict=True)
        ]

    @staticmethod
    async def _gather(calls: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
        """All of `calls` at once (EwsCalls bounds how many run); the first failure fails the lot."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(call) for call in calls]
        except* CalbrokerError as failures:
            raise failures.exceptions[0] from None
        return [task.result() for task in tasks]

    # --- events (the exchangelib side lives in events.py) -----------------------------------------

    async def create_event(
        self, spec: EventSpec, *, marker: str, may_exist: bool, join_url: str | None, deadline: Deadline
    ) -> UpstreamEvent:
        """CreateItem with invitations; when an earlier attempt may have got through (`may_exist`),
        a FindItem on the marker comes first. Never retried on a dropped connection: that is the
        case the marker lookup of the caller's retry heals."""
        self._connection.require_calendar_access("create events")
        if spec.teams_meeting and join_url is None:
            raise self._no_teams(spec.organizer)
        call = partial(
            events.create_event,
            account_for=partial(self._event_accounts.get, spec.organizer),
            spec=spec,
            marker=marker,
            join_url=join_url,
            look_first=may_exist,
        )
        return await self._calls.run(
            "CreateItem", call, deadline, mailbox=spec.organizer, idempotent=False, settle=True
        )

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
        call = partial(
            events.update_event,
            account_for=partial(self._event_accounts.get, spec.organizer),
            spec=spec,
            upstream_id=upstream_id,
            changed=changed,
            join_url=join_url,
        )
        return await self._calls.run("UpdateItem", call, deadline, mailbox=spec.organizer, settle=True)

    async def cancel_event(self, organizer: str, upstream_id: str, *, notify: bool, deadline: Deadline) -> None:
        self._connection.require_calendar_access("cancel events")
        call = partial(
            events.cancel_event,
            account_for=partial(self._event_accounts.get, organizer),
            upstream_id=upstream_id,
            notify=notify,
        )
        await self._calls.run("DeleteItem", call, deadline, mailbox=organizer, settle=True)

    async def get_event(self, organizer: str, upstream_id: str, deadline: Deadline) -> UpstreamEvent | None:
        self._connection.require_calendar_access("read events")
        call = partial(
            events.get_event, account_for=partial(self._event_accounts.get, organizer), upstream_id=upstream_id
        )
        return await self._calls.run("GetItem", call, deadline, mailbox=organizer)

    async def find_event(self, organizer: str, marker: str, deadline: Deadline) -> UpstreamEvent | None:
        self._connection.require_calendar_access("read events")
        call = partial(events.find_event, account_for=partial(self._event_accounts.get, organizer), marker=marker)
        return await self._calls.run("FindItem", call, deadline, mailbox=organizer)

    async def list_events(self, mailbox: str, window: Interval, deadline: Deadline) -> list[UpstreamEvent]:
        self._connection.require_calendar_access("read calendars")
        call = partial(events.list_events, account_for=partial(self._event_accounts.get, mailbox), window=window)
        return await self._calls.run("FindItem", call, deadline, mailbox=mailbox)

    async def create_online_meeting(
        self, organizer: str, *, subject: str, interval: Interval, external_id: str, deadline: Deadline
    ) -> OnlineMeeting:
        raise self._no_teams(organizer)

    async def delete_online_meeting(self, organizer: str, meeting_id: str, deadline: Deadline) -> None:
        raise self._no_teams(organizer)

    def _no_teams(self, mailbox: str) -> TeamsUnavailable:
        return TeamsUnavailable(
            f"{mailbox} is reached over EWS (Exchange on-premises), which cannot create Teams meetings. "
            "Teams links need a Microsoft Graph connection for the same domain whose app has the "
            "OnlineMeetings.ReadWrite.All application permission and a Teams application access policy.",
            mailbox=mailbox,
        )

    async def aclose(self) -> None:
        """Wait briefly for running requests, close the session pool, drop our cached Protocol."""
        if self._calls.closed:
            return
        await self._calls.aclose(timeout_s=5.0)
        self._protocol.close()
        try:
            cached, _ = ExchangeProtocol[self._config]
        except KeyError:
            cached = None
        if cached is self._protocol:
            del ExchangeProtocol[self._config]
