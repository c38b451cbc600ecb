"""Keeping up with a mailbox over Graph: change-notification subscriptions, and calendarView delta
rounds turned into the busy cache's terms.

- Subscriptions: https://learn.microsoft.com/graph/api/subscription-post-subscriptions (resource
  `/users/{id}/events`, `lifecycleNotificationUrl` only at creation — it cannot be added later:
  https://learn.microsoft.com/graph/change-notifications-lifecycle-events), renewal by PATCH
  (https://learn.microsoft.com/graph/api/subscription-update), `reauthorize`
  (https://learn.microsoft.com/graph/api/subscription-reauthorize). The quota is 1,000 per mailbox
  for all applications; past it Graph answers 403 "Maximum number of subscriptions has been reached"
  (https://github.com/microsoftgraph/microsoft-graph-docs-contrib/issues/112).
- Delta: https://learn.microsoft.com/graph/api/event-delta — follow nextLinks to the deltaLink, which
  is the next round's cursor; `@removed` entries, and entries for items changed outside the range
  (filtered here); a `410 Gone` or `syncStateNotFound` means start over
  (https://learn.microsoft.com/graph/delta-query-overview). Occurrences come thin (no `showAs`:
  https://github.com/microsoftgraph/microsoft-graph-docs/issues/7632) and a deleted occurrence may
  get no `@removed` (https://github.com/microsoftgraph/microsoft-graph-docs/pull/4501), so every
  series a round touches is re-read whole through `/events/{id}/instances`, which returns full
  occurrences and exceptions and drops deleted ones (a 404 means the series is gone).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlencode

import msgspec

from calbroker.domain.busy import BusyStatus
from calbroker.domain.errors import (
    CredentialsRejected,
    SubscriptionLimitReached,
    SyncStateExpired,
    UpstreamRejected,
)
from calbroker.domain.intervals import Interval
from calbroker.domain.sync import CalendarItem, ChangeSet
from calbroker.providers.graph.client import GraphClient
from calbroker.providers.graph.wire import DateTimeTimeZone, GraphModel, decode
from calbroker.providers.protocol import Deadline

__all__ = ["GraphChanges", "GraphSubscription", "Notification", "read_notifications"]

_PAGE = 'outlook.timezone="UTC", odata.maxpagesize=500'
_EXPIRED_CODES = frozenset({"syncstatenotfound", "resyncrequired", "syncstateinvalid", "http 410"})
_GONE_CODES = frozenset({"resourcenotfound", "erroritemnotfound", "itemnotfound", "notfound", "http 404"})
_STATUSES = {
    "free": BusyStatus.FREE,
    "tentative": BusyStatus.TENTATIVE,
    "busy": BusyStatus.BUSY,
    "oof": BusyStatus.OOF,
    "workingelsewhere": BusyStatus.WORKING_ELSEWHERE,
}
_SERIES_CONCURRENCY = 4
"""Series re-read at once per mailbox: Outlook allows 4 concurrent requests per app per mailbox."""


# --- wire --------------------------------------------------------------------------------------------


class Removed(GraphModel):
    reason: str | None = None


class DeltaItem(GraphModel):
    id: str
    type: str | None = None
    series_master_id: str | None = None
    start: DateTimeTimeZone | None = None
    end: DateTimeTimeZone | None = None
    show_as: str | None = None
    is_cancelled: bool = False
    removed: Removed | None = msgspec.field(default=None, name="@removed")

    def to_item(self, window: Interval) -> CalendarItem | None:
        """The cache's view of this item; None when it lies outside `window` (reported, not ours)."""
        if self.start is None or self.end is None:
            return None
        start, end = self.start.instant(), self.end.instant()
        if end <= window.start or start >= window.end:
            return None
        status = _STATUSES.get((self.show_as or "busy").lower(), BusyStatus.BUSY)
        if self.is_cancelled or start >= end:
            status = BusyStatus.FREE  # takes no time: the cache drops it
            end = max(end, start + timedelta(microseconds=1))
        return CalendarItem(self.id, Interval(start, end), status, self.series_master_id)


class DeltaPage(GraphModel):
    value: list[DeltaItem] = msgspec.field(default_factory=list)
    next_link: str | None = msgspec.field(default=None, name="@odata.nextLink")
    delta_link: str | None = msgspec.field(default=None, name="@odata.deltaLink")


class SubscriptionRequest(GraphModel):
    change_type: str
    notification_url: str
    lifecycle_notification_url: str
    resource: str
    expiration_date_time: str
    client_state: str
    latest_supported_tls_version: str = "v1_2"


class SubscriptionPatch(GraphModel):
    expiration_date_time: str


class SubscriptionWire(GraphModel):
    id: str
    expiration_date_time: str


class NotificationItem(GraphModel):
    """One changeNotification (https://learn.microsoft.com/graph/api/resources/changenotification), read
    leniently: lifecycle items come with `tenantId` or `organizationId` and extra members."""

    subscription_id: str | None = None
    client_state: str | None = None
    change_type: str | None = None
    lifecycle_event: str | None = None
    resource: str | None = None


class NotificationBatch(GraphModel):
    value: list[NotificationItem] = msgspec.field(default_factory=list)


class UserWire(GraphModel):
    mail: str | None = None
    user_principal_name: str | None = None


class UsersPage(GraphModel):
    value: list[UserWire] = msgspec.field(default_factory=list)
    next_link: str | None = msgspec.field(default=None, name="@odata.nextLink")


_delta_decoder = msgspec.json.Decoder(DeltaPage)
_subscription_decoder = msgspec.json.Decoder(SubscriptionWire)
_notifications_decoder = msgspec.json.Decoder(NotificationBatch)
_users_decoder = msgspec.json.Decoder(UsersPage)


@dataclass(frozen=True, slots=True)
class GraphSubscription:
    id: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Notification:
    """What the worker needs of one notification: whose, the clientState to check, and what kind."""

    subscription_id: str
    client_state: str | None
    lifecycle_event: str | None
    """None for a change notification (`created`/`updated`/`deleted`)."""


def read_notifications(body: bytes) -> list[Notification]:
    """A notification POST's items; anything that is not Graph's shape yields nothing (never raises)."""
    try:
        batch = _notifications_decoder.decode(body)
    except msgspec.MsgspecError:
        return []
    return [
        Notification(item.subscription_id, item.client_state, item.lifecycle_event)
        for item in batch.value
        if item.subscription_id
    ]


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


class GraphChanges:
    """One connection's subscriptions and delta rounds, over its `GraphClient`."""

    def __init__(self, client: GraphClient) -> None:
        self._client = client

    # --- subscriptions -------------------------------------------------------------------------------

    async def subscribe(
        self, mailbox: str, *, url: str, client_state: str, lifetime: timedelta, deadline: Deadline
    ) -> GraphSubscription:
        """A subscription to every change of the mailbox's events, notifying `url` (also for lifecycle)."""
        body = SubscriptionRequest(
            change_type="created,updated,deleted",
            notification_url=url,
            lifecycle_notification_url=url,
            resource=f"/users/{quote(mailbox, safe='@')}/events",
            expiration_date_time=_instant(datetime.now(UTC) + lifetime),
            client_state=client_state,
        )
        try:
            response = await self._client.request(
                "POST", "/subscriptions", json=body, deadline=deadline, mailbox=mailbox, idempotent=False
            )
        except CredentialsRejected as exc:
            if "maximum number of subscriptions" in exc.detail.lower():
                raise SubscriptionLimitReached(
                    f"Microsoft refused a change subscription for {mailbox}: the mailbox already has the maximum "
                    "number of subscriptions (1,000 for all applications together).",
                    upstream_code=exc.upstream_code,
                    mailbox=mailbox,
                ) from None
            raise
        return _subscription(response.body)

    async def renew(self, subscription_id: str, *, lifetime: timedelta, deadline: Deadline) -> GraphSubscription | None:
        """Push the expiry out (this also reauthorizes); None when Graph no longer has the subscription."""
        body = SubscriptionPatch(expiration_date_time=_instant(datetime.now(UTC) + lifetime))
        try:
            response = await self._client.request(
                "PATCH", f"/subscriptions/{quote(subscription_id)}", json=body, deadline=deadline
            )
        except UpstreamRejected as exc:
            if (exc.upstream_code or "").lower() in _GONE_CODES:
                return None
            raise
        return _subscription(response.body)

    async def unsubscribe(self, subscription_id: str, deadline: Deadline) -> None:
        """Delete the subscription; one already gone is fine."""
        try:
            await self._client.request("DELETE", f"/subscriptions/{quote(subscription_id)}", deadline=deadline)
        except UpstreamRejected as exc:
            if (exc.upstream_code or "").lower() not in _GONE_CODES:
                raise

    # --- delta rounds ----------------------------------------------------------------------------------

    async def read_changes(self, mailbox: str, window: Interval, cursor: str | None, deadline: Deadline) -> ChangeSet:
        """One round: from scratch over `window` when `cursor` is None, else what changed since it."""
        if cursor is None:
            query = urlencode({"startDateTime": _instant(window.start), "endDateTime": _instant(window.end)})
            url = f"/users/{quote(mailbox, safe='@')}/calendarView/delta?{query}"
        else:
            url = cursor
        singles: list[CalendarItem] = []
        removed: list[str] = []
        series: set[str] = set()
        while True:
            try:
                response = await self._client.request(
                    "GET", url, headers={"Prefer": _PAGE}, deadline=deadline, mailbox=mailbox
                )
            except UpstreamRejected as exc:
                if (exc.upstream_code or "").lower() in _EXPIRED_CODES:
                    raise SyncStateExpired(
                        f"Microsoft Graph no longer knows the delta token of {mailbox}; a full round follows.",
                        upstream_code=exc.upstream_code,
                        mailbox=mailbox,
                    ) from None
                raise
            page = decode(response.body, _delta_decoder)
            for entry in page.value:
                if entry.removed is not None:
                    removed.append(entry.id)
                elif entry.series_master_id is not None:
                    series.add(entry.series_master_id)
                elif entry.type == "seriesMaster":
                    series.add(entry.id)
                else:
                    item = entry.to_item(window)
                    if item is not None:
                        singles.append(item)
            if page.delta_link is not None:
                next_cursor = page.delta_link
                break
            if page.next_link is None:
                raise UpstreamRejected(f"Microsoft Graph ended a delta round of {mailbox} without a deltaLink")
            url = page.next_link
        reread = await self._series(mailbox, sorted(series), window, deadline)
        gone = [sid for sid, found in reread.items() if found is None]
        alive = {sid: found for sid, found in reread.items() if found is not None}
        if cursor is None:
            everything = singles + [item for found in alive.values() for item in found]
            return ChangeSet(cursor=next_cursor, full=True, items=tuple(everything))
        return ChangeSet(
            cursor=next_cursor, full=False, items=tuple(singles), removed=tuple(removed + gone), series=alive
        )

    async def _series(
        self, mailbox: str, ids: list[str], window: Interval, deadline: Deadline
    ) -> dict[str, tuple[CalendarItem, ...] | None]:
        limit = asyncio.Semaphore(_SERIES_CONCURRENCY)

        async def one(series_id: str) -> tuple[CalendarItem, ...] | None:
            async with limit:
                return await self._instances(mailbox, series_id, window, deadline)

        async with asyncio.TaskGroup() as group:
            tasks = {sid: group.create_task(one(sid)) for sid in ids}
        return {sid: task.result() for sid, task in tasks.items()}

    async def _instances(
        self, mailbox: str, series_id: str, window: Interval, deadline: Deadline
    ) -> tuple[CalendarItem, ...] | None:
        """Every occurrence and exception of a series inside `window`, whole; None if the series is gone."""
        query = urlencode(
            {
                "startDateTime": _instant(window.start),
                "endDateTime": _instant(window.end),
                "$select": "id,type,seriesMasterId,start,end,showAs,isCancelled",
            }
        )
        url: str | None = f"/users/{quote(mailbox, safe='@')}/events/{quote(series_id)}/instances?{query}"
        found: list[CalendarItem] = []
        while url is not None:
            try:
                response = await self._client.request(
                    "GET", url, headers={"Prefer": _PAGE}, deadline=deadline, mailbox=mailbox
                )
            except UpstreamRejected as exc:
                if (exc.upstream_code or "").lower() in _GONE_CODES:
                    return None
                raise
            page = decode(response.body, _delta_decoder)
            for entry in page.value:
                item = entry.to_item(window)
                if item is not None:
                    found.append(CalendarItem(item.upstream_id, item.interval, item.status, series_id))
            url = page.next_link
        return tuple(found)

    # --- scope -----------------------------------------------------------------------------------------

    async def mailboxes(self, deadline: Deadline) -> list[str]:
        """Every mail-enabled user of the tenant (needs User.Read.All), lower-cased and sorted."""
        url: str | None = "/users?$select=mail,userPrincipalName&$top=999"
        found: set[str] = set()
        while url is not None:
            page = decode((await self._client.request("GET", url, deadline=deadline)).body, _users_decoder)
            found.update(user.mail.strip().lower() for user in page.value if user.mail)
            url = page.next_link
        return sorted(found)


def _subscription(body: bytes) -> GraphSubscription:
    wire = decode(body, _subscription_decoder)
    try:
        expires = datetime.fromisoformat(wire.expiration_date_time.strip())
    except ValueError:
        raise UpstreamRejected(
            f"Microsoft Graph sent an unreadable expirationDateTime {wire.expiration_date_time!r}"
        ) from None
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return GraphSubscription(wire.id, expires.astimezone(UTC))
