"""The sandbox's mutable world: settings (limits), directory, calendars, faults, stats and throttling.

Every handler — Entra, Graph, EWS, control plane — receives the one `SandboxState`. Read
`state.directory` and `state.calendars` on each request: `reset()` replaces them.

The hooks every surface's handler uses:

- `fault = await state.checkpoint("ews:FindItem", mailbox=..., client_id=account.username)`: counts the
  call in `state.stats`, applies injected latency, hangs (`timeout`) or drops the connection
  (raises `DropConnection`, which the server turns into a closed socket). A returned `FaultRule`
  with `action == FaultAction.ERROR` must be rendered in the surface's dialect; None means "proceed".
- `async with state.throttle.slot(principal, mailbox):` enforces the per-(principal, mailbox)
  concurrency and rate limits, raising `Throttled(retry_after, reason)`.
- `state.settings` holds the limits (`ews_max_mailboxes`, `ews_max_window_days`, …); the base
  round-trip latency is applied to every request by the server's middleware.
- `state.clock()` is "now" (UTC); `state.base_url` is the sandbox's https origin once it listens.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from calbroker.sandbox.calendars import CalendarStore
from calbroker.sandbox.directory import Directory
from calbroker.sandbox.events import Change
from calbroker.sandbox.faults import DropConnection, FaultAction, FaultBook, FaultRule, RequestStats, Throttle
from calbroker.sandbox.seed import DEFAULT_ANCHOR, build_calendars, build_directory
from calbroker.sandbox.tls import KeyMaterial

__all__ = ["SandboxSettings", "SandboxState"]


@dataclass(slots=True)
class SandboxSettings:
    """Limits and knobs. Values marked [unverified] in upstream.md are defaults, not truths."""

    latency_ms: float = 0.0  # base round trip of every request, the sandbox's own work included (bench/)
    people_per_tenant: int = 50  # the directory's size (read when the world is built or reset)
    token_lifetime_s: int = 3599  # expires_in of access tokens
    token_clock_skew_s: int = 0  # leeway Graph allows past `exp`
    refresh_token_lifetime_s: int = 90 * 24 * 3600
    max_schedules: int = 20  # getSchedule schedules per request [unverified]
    max_schedule_window_days: int = 62  # getSchedule window [unverified]
    mailbox_concurrency: int = 4  # concurrent requests per app per mailbox
    mailbox_rate_limit: int = 10_000  # requests per window per app per mailbox
    mailbox_rate_window_s: float = 600.0
    throttle_retry_after_s: float = 1.0  # Retry-After sent with concurrency 429s
    calendar_view_page_size: int = 10  # Graph's default page size for calendarView/events
    calendar_view_max_page_size: int = 1000
    users_page_size: int = 100
    batch_max_requests: int = 20
    batch_concurrency: int = 4  # inner requests Graph dispatches at once
    # Subscriptions and change notifications (changes.md §1): lifetimes, quota, duplicates, and
    # what Graph does to slow receivers.
    subscription_max_minutes: int = 10_080  # Outlook events, basic notifications
    subscription_rich_max_minutes: int = 1_440  # with includeResourceData
    subscription_min_minutes: int = 45
    subscription_reject_overlong: bool = False  # today clamped; "in the future ... will fail"
    subscription_max_per_mailbox: int = 1_000  # all applications together
    validation_timeout_s: float = 10.0
    notification_timeout_s: float = 3.0
    notification_retries: int = 2
    notification_retry_delay_s: float = 0.5
    # Graph delivers change notifications to "a publicly accessible, HTTPS-secured endpoint"
    # (https://learn.microsoft.com/graph/change-notifications-delivery-webhooks), so http URLs are
    # refused unless a local receiver opts in (the test fixtures, `calbroker demo`, `--allow-http-notifications`).
    allow_http_notification_urls: bool = False
    notification_copies_min: int = 1  # one change, several notifications
    notification_copies_max: int = 4
    notification_slow_ms: float = 2_900  # an answer slower than this counts as slow
    notification_window: int = 100  # deliveries per endpoint before slowness is judged
    notification_delay_ratio: float = 0.10  # slow share that delays an endpoint's notifications
    notification_drop_ratio: float = 0.15  # slow share that drops them
    notification_delay_s: float = 600.0
    notification_flush_s: float = 600.0  # how long a verdict lasts before counters restart
    notifications_blocked: bool = False  # a silent outage: nothing delivered, no lifecycle event
    # calendarView delta (https://learn.microsoft.com/graph/api/event-delta)
    delta_token_capacity: int = 10_000
    delta_empty_first_page: bool = False
    delta_omit_occurrence_removals: bool = True
    delta_expired_status: int = 410  # 410 Gone, or 400 syncStateNotFound
    schedule_scope_errors: bool = True  # getSchedule: per-schedule ErrorAccessDenied outside the policy [unverified]
    hang_s: float = 300.0  # how long a `timeout` fault holds the request
    ews_max_mailboxes: int = 100  # GetUserAvailability MailboxDataArray [unverified]
    ews_max_window_days: int = 42  # GetUserAvailability TimeWindow
    ews_stream_minute_s: float = 60.0  # how long a ConnectionTimeout "minute" lasts (tests shorten it)
    ews_hanging_connection_limit: int = 10  # HangingConnectionLimit, per service account (2016/2019)
    ews_sync_max_changes: int = 512  # SyncFolderItems never returns more per call

    def update(self, changes: dict[str, Any]) -> None:
        """Apply control-plane changes; unknown names and wrong types are refused."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        unknown = set(changes) - set(fields)
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        for name, value in changes.items():
            current = getattr(self, name)
            if isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be a boolean")
                setattr(self, name, value)
            elif isinstance(current, int):
                setattr(self, name, int(value))
            else:
                setattr(self, name, float(value))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def utc_now() -> datetime:
    return datetime.now(UTC)


class SandboxState:
    """Owns the seeded world and rebuilds it on `reset()`."""

    def __init__(
        self,
        *,
        keys: KeyMaterial,
        seed: int = 0,
        anchor: date = DEFAULT_ANCHOR,
        settings: SandboxSettings | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.keys = keys
        self.seed = seed
        self.anchor = anchor
        self.clock = clock
        self._initial_settings = dataclasses.replace(settings) if settings else SandboxSettings()
        self.settings = dataclasses.replace(self._initial_settings)
        self.faults = FaultBook(seed)
        self.stats = RequestStats()
        self.throttle = Throttle(self.settings)
        self.base_url = ""
        self.online_meetings: dict[str, dict[str, Any]] = {}  # Graph /onlineMeetings, by id
        self._calendar_listeners: list[Callable[[Change], None]] = []
        self._reset_hooks: list[Callable[[], None]] = []
        self.directory: Directory = build_directory(seed, keys.app_certificate, people=self.settings.people_per_tenant)
        self.calendars: CalendarStore = build_calendars(self.directory, seed, anchor, clock)

    @property
    def graph_url(self) -> str:
        return self.base_url + "/v1.0"

    def add_calendar_listener(self, listener: Callable[[Change], None]) -> None:
        """Listen to calendar changes, surviving `reset()` (which builds a new store)."""
        self._calendar_listeners.append(listener)
        self.calendars.add_listener(listener)

    def on_reset(self, hook: Callable[[], None]) -> None:
        self._reset_hooks.append(hook)

    def reset(self, *, seed: int | None = None, anchor: date | None = None) -> None:
        """Back to the seed: fresh directory (consent), calendars, faults, stats, settings."""
        self.seed = self.seed if seed is None else seed
        self.anchor = self.anchor if anchor is None else anchor
        self.directory = build_directory(self.seed, self.keys.app_certificate, people=self.settings.people_per_tenant)
        self.calendars = build_calendars(self.directory, self.seed, self.anchor, self.clock)
        for listener in self._calendar_listeners:
            self.calendars.add_listener(listener)
        self.settings = dataclasses.replace(self._initial_settings)
        self.throttle = Throttle(self.settings)
        self.faults = FaultBook(self.seed)
        self.online_meetings.clear()
        self.stats.reset()
        for hook in self._reset_hooks:
            hook()

    async def checkpoint(
        self, route: str, *, mailbox: str | None = None, client_id: str | None = None
    ) -> FaultRule | None:
        """Count a request and apply injected faults; return an error/behaviour rule to render, else None."""
        self.stats.record(route, mailbox=mailbox, client_id=client_id)
        rule = self.faults.match(route, mailbox=mailbox, client_id=client_id)
        if rule is None:
            return None
        if rule.latency_ms > 0:
            await asyncio.sleep(rule.latency_ms / 1000)
        match rule.action:
            case FaultAction.DELAY:
                return None
            case FaultAction.TIMEOUT:
                await asyncio.sleep(self.settings.hang_s)
                raise DropConnection
            case FaultAction.DROP:
                raise DropConnection
            case _:
                return rule
