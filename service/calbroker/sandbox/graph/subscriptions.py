"""Graph change-notification subscriptions on mailbox events: the validation handshake, renewal,
expiry, real change notifications and lifecycle notifications.

- Create: https://learn.microsoft.com/graph/api/subscription-post-subscriptions (201; the
  notificationUrl — and lifecycleNotificationUrl — must echo `validationToken` as `text/plain`
  with 200 within 10 s: https://learn.microsoft.com/graph/change-notifications-delivery-webhooks).
- Lifetime: at most 10,080 minutes for Outlook events, 1,440 with resource data, at least 45;
  longer requests are clamped (the documented note warns they will fail "in the future":
  setting `subscription_reject_overlong`) —
  https://learn.microsoft.com/graph/change-notifications-overview#subscription-lifetime.
- Quota: "a maximum of 1,000 active subscriptions per mailbox for all applications"
  (https://learn.microsoft.com/graph/outlook-change-notifications-overview); past it, 403
  ExtensionError "Maximum number of subscriptions has been reached"
  (https://github.com/microsoftgraph/microsoft-graph-docs-contrib/issues/112).
- Notifications: POSTed for every change to a subscribed mailbox's calendar, whichever surface
  made it (Graph, EWS, control plane), shaped like the changeNotificationCollection example;
  one change yields 1–4 notifications
  (https://github.com/microsoftgraph/microsoft-graph-docs-contrib/issues/3072, /6727).
- Slow receivers: an answer over 2,900 ms is slow; once an endpoint's slow share reaches 10 % its
  notifications are delayed, at 15 % they are dropped, until the counters are flushed
  (https://learn.microsoft.com/graph/change-notifications-delivery-webhooks#throttling); a
  dropped notification is followed by a `missed` lifecycle notification. `notifications_blocked`
  drops everything silently, like the outages nothing announced
  (https://github.com/microsoftgraph/microsoft-graph-docs/issues/6476).
- Lifecycle: `reauthorizationRequired`, `subscriptionRemoved`, `missed`
  (https://learn.microsoft.com/graph/change-notifications-lifecycle-events), triggered from `/_sandbox/`,
  also in the shape seen in the wild (`organizationId` instead of `tenantId`, `resource: ""`,
  `sequence` — https://github.com/microsoftgraph/microsoft-graph-docs/issues/21675). Revoking an
  app's consent sends `reauthorizationRequired` for its subscriptions ("an admin revoked the
  app's permission") and stops their notifications.
Expired subscriptions disappear (checked lazily on every access), as Graph deletes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import yarl

from calbroker.sandbox.directory import ExchangeLocation, stable_id
from calbroker.sandbox.events import Change
from calbroker.sandbox.graph.events import READ
from calbroker.sandbox.graph.odata import (
    GraphContext,
    GraphError,
    GraphRequest,
    GraphResponse,
    Route,
    body_get,
    graph_instant,
    make_route,
)
from calbroker.sandbox.state import SandboxState
from calbroker.sandbox.timezones import parse_graph_datetime

__all__ = ["ROUTES", "Subscription", "SubscriptionBook"]

_RESOURCE = re.compile(
    r"^/?(?:users/(?P<user>[^/?]+)|me)/(?:calendar/|calendars/[^/]+/)?events(?:\?.*)?$", re.IGNORECASE
)
_CHANGE_TYPES = {"created", "updated", "deleted"}
_LIFECYCLE = {"reauthorizationRequired", "subscriptionRemoved", "missed"}
# https://learn.microsoft.com/en-us/answers/questions/416427/subscription-validation-request-failed-notificatio.html
_VALIDATION_FAILED = (
    "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request."
)


@dataclass(slots=True)
class Subscription:
    id: str
    resource: str
    mailbox: str
    mailbox_id: str
    tenant_id: str
    application_id: str
    creator_id: str
    change_types: tuple[str, ...]
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expiration: datetime
    latest_tls: str = "v1_2"

    def to_json(self, graph_url: str) -> dict[str, Any]:
        return {
            "@odata.context": f"{graph_url}/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.application_id,
            "changeType": ",".join(self.change_types),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": None,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": graph_instant(self.expiration),
            "creatorId": self.creator_id,
            "includeResourceData": False,
            "latestSupportedTlsVersion": self.latest_tls,
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
            "notificationContentType": "application/json",
        }


class _EndpointHealth:
    """Graph's view of one notification URL: recent answer times, and the verdict they earned."""

    def __init__(self) -> None:
        self.slow: deque[bool] = deque()
        self.until = 0.0
        self.state = "ok"
        self.missed_told: set[str] = set()

    def record(self, elapsed_s: float, settings: Any) -> None:
        self.slow.append(elapsed_s * 1000 > settings.notification_slow_ms)
        if len(self.slow) < settings.notification_window:
            return
        judged = list(self.slow)[-settings.notification_window :]
        share = sum(judged) / len(judged)
        self.slow.clear()
        if share >= settings.notification_drop_ratio:
            self.state = "drop"
        elif share >= settings.notification_delay_ratio:
            self.state = "delay"
        else:
            return
        self.until = time.monotonic() + settings.notification_flush_s
        self.missed_told.clear()

    def verdict(self, settings: Any) -> str:
        if self.state != "ok" and time.monotonic() >= self.until:
            self.state = "ok"
        return self.state

    def note_missed(self, sub_id: str) -> bool:
        """True the first time a subscription loses a notification in this verdict's period."""
        if sub_id in self.missed_told:
            return False
        self.missed_told.add(sub_id)
        return True


def _extension_error(status: int, reason_status: str, reason: str) -> GraphError:
    # Outlook subscription failures surface wrapped like this (upstream.md §6).
    return GraphError(
        status, "ExtensionError", f"Operation: Create; Exception: [Status Code: {reason_status}; Reason: {reason}]"
    )


class SubscriptionBook:
    """Active subscriptions, their deliveries, and the HTTP client that calls receivers."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self._subscriptions: dict[str, Subscription] = {}
        self.deliveries: deque[dict[str, Any]] = deque(maxlen=1000)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._counter = 0
        self._rng = random.Random(f"notifications|{state.seed}")
        self._endpoints: dict[str, _EndpointHealth] = {}
        state.add_calendar_listener(self._on_change)
        state.on_reset(self.clear)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self.state.keys.client_ssl_context())
        self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def clear(self) -> None:
        self._subscriptions.clear()
        self.deliveries.clear()
        self._endpoints.clear()

    # --- bookkeeping ------------------------------------------------------------------------------

    def _purge(self) -> None:
        now = self.state.clock()
        for sub_id in [s.id for s in self._subscriptions.values() if s.expiration <= now]:
            del self._subscriptions[sub_id]

    def all(self) -> list[Subscription]:
        self._purge()
        return list(self._subscriptions.values())

    def get(self, sub_id: str) -> Subscription | None:
        self._purge()
        return self._subscriptions.get(sub_id)

    def remove(self, sub_id: str) -> bool:
        return self._subscriptions.pop(sub_id, None) is not None

    def expire(self, sub_id: str) -> bool:
        sub = self._subscriptions.get(sub_id)
        if sub is None:
            return False
        sub.expiration = self.state.clock() - timedelta(seconds=1)
        self._purge()
        return True

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _log(self, sub_id: str, kind: str, url: str, *, status: int | None, error: str | None, payload: Any) -> None:
        self.deliveries.append(
            {
                "subscriptionId": sub_id,
                "kind": kind,
                "url": url,
                "status": status,
                "error": error,
                "at": self.state.clock().isoformat(),
                "payload": payload,
            }
        )

    # --- HTTP to receivers -------------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the subscription book is not started")
        return self._session

    async def validate(self, url: str, sub_id: str) -> str | None:
        """The validationToken handshake; None on success, else why it failed."""
        token = f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
        target = url + ("&" if "?" in url else "?") + "validationToken=" + quote(token, safe="")
        timeout = aiohttp.ClientTimeout(total=self.state.settings.validation_timeout_s)
        try:
            async with self.session.post(
                yarl.URL(target, encoded=True),
                data=b"",
                headers={"Content-Type": "text/plain; charset=utf-8"},
                timeout=timeout,
            ) as response:
                text = await response.text()
                content_type = response.headers.get("Content-Type", "")
                status = response.status
        except TimeoutError:
            self._log(sub_id, "validation", url, status=None, error="timeout", payload=None)
            return "Subscription validation request timed out."
        except aiohttp.ClientError as exc:
            self._log(sub_id, "validation", url, status=None, error=repr(exc), payload=None)
            return _VALIDATION_FAILED
        self._log(sub_id, "validation", url, status=status, error=None, payload=None)
        if status != 200 or not content_type.lower().startswith("text/plain") or text != token:
            return _VALIDATION_FAILED
        return None

    async def post(self, sub_id: str, kind: str, url: str, payload: dict[str, Any]) -> int | None:
        """POST a notification with Graph's retry behaviour (bounded here); the final status or None."""
        settings = self.state.settings
        timeout = aiohttp.ClientTimeout(total=settings.notification_timeout_s)
        status: int | None = None
        health = self._endpoint(url)
        for attempt in range(settings.notification_retries + 1):
            began = time.monotonic()
            try:
                async with self.session.post(url, json=payload, timeout=timeout) as response:
                    await response.read()
                    status = response.status
                self._log(sub_id, kind, url, status=status, error=None, payload=payload)
                health.record(time.monotonic() - began, settings)
                if 200 <= status < 300:
                    return status
            except (TimeoutError, aiohttp.ClientError) as exc:
                self._log(sub_id, kind, url, status=None, error=repr(exc), payload=payload)
                health.record(time.monotonic() - began, settings)
            await asyncio.sleep(settings.notification_retry_delay_s * (2**attempt))
        return status

    def _endpoint(self, url: str) -> _EndpointHealth:
        key = url.split("?", 1)[0]
        found = self._endpoints.get(key)
        if found is None:
            found = self._endpoints[key] = _EndpointHealth()
        return found

    def _on_change(self, change: Change) -> None:
        now = self.state.clock()
        settings = self.state.settings
        for sub in list(self._subscriptions.values()):
            if (
                sub.mailbox != change.mailbox
                or change.change_type.value not in sub.change_types
                or sub.expiration <= now
                or not self.authorized(sub)
            ):
                continue
            if settings.notifications_blocked:
                self._log(sub.id, "notification", sub.notification_url, status=None, error="blocked", payload=None)
                continue
            resource = f"Users/{sub.mailbox_id}/Events/{change.event_id}"
            resource_data: dict[str, Any] = {"@odata.type": "#Microsoft.Graph.Event", "@odata.id": resource}
            event = self.state.calendars.get(change.mailbox, change.event_id)
            if event is not None:
                resource_data["@odata.etag"] = f'W/"{event.change_key}"'
            resource_data["id"] = change.event_id
            fewest = settings.notification_copies_min
            copies = self._rng.randint(fewest, max(fewest, settings.notification_copies_max))
            for _ in range(copies):
                self._counter += 1
                item = {
                    "id": stable_id("notification", sub.id, str(self._counter)),
                    "subscriptionId": sub.id,
                    "subscriptionExpirationDateTime": graph_instant(sub.expiration),
                    "changeType": change.change_type.value,
                    "resource": resource,
                    "resourceData": resource_data,
                    "clientState": sub.client_state,
                    "tenantId": sub.tenant_id,
                }
                self._spawn(self._notify(sub, {"value": [item]}))

    def authorized(self, sub: Subscription) -> bool:
        """Whether the subscribing app still holds consent in the tenant (delivery pauses otherwise)."""
        tenant = self.state.directory.tenant_by_id(sub.tenant_id)
        return tenant is not None and sub.application_id in tenant.service_principals

    async def _notify(self, sub: Subscription, payload: dict[str, Any]) -> None:
        settings = self.state.settings
        health = self._endpoint(sub.notification_url)
        verdict = health.verdict(settings)
        if verdict == "drop":
            self._log(sub.id, "notification", sub.notification_url, status=None, error="dropped", payload=payload)
            if health.note_missed(sub.id):
                self._spawn(self._missed(sub.id))
            return
        if verdict == "delay":
            await asyncio.sleep(settings.notification_delay_s)
        await self.post(sub.id, "notification", sub.notification_url, payload)

    async def _missed(self, sub_id: str) -> None:
        with contextlib.suppress(KeyError, ValueError):  # gone, or no lifecycle URL: nothing to tell
            await self.lifecycle(sub_id, "missed")

    async def lifecycle(self, sub_id: str, event: str, *, variant: str = "documented") -> dict[str, Any]:
        """Send a lifecycle notification now; `subscriptionRemoved` also deletes the subscription.

        `variant` "organizationId" sends the shape seen in the wild instead of the documented one.
        """
        if event not in _LIFECYCLE:
            raise ValueError(f"lifecycle event must be one of {sorted(_LIFECYCLE)}")
        if variant not in ("documented", "organizationId"):
            raise ValueError("variant must be documented or organizationId")
        sub = self.get(sub_id)
        if sub is None:
            raise KeyError(sub_id)
        if not sub.lifecycle_url:
            raise ValueError("the subscription has no lifecycleNotificationUrl")
        item: dict[str, Any] = {
            "subscriptionId": sub.id,
            "subscriptionExpirationDateTime": graph_instant(sub.expiration),
            "tenantId": sub.tenant_id,
            "clientState": sub.client_state,
            "lifecycleEvent": event,
        }
        if variant == "organizationId":
            item = {
                "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": graph_instant(sub.expiration),
                "organizationId": sub.tenant_id,
                "resource": "",
                "sequence": self._counter,
                "clientState": sub.client_state,
                "lifecycleEvent": event,
            }
        if event == "subscriptionRemoved":
            del self._subscriptions[sub.id]
        status = await self.post(sub.id, "lifecycle", sub.lifecycle_url, {"value": [item]})
        return {"delivered": status is not None and 200 <= status < 300, "status": status}

    # --- Graph operations --------------------------------------------------------------------------

    def consent_revoked(self, tenant_id: str, client_id: str) -> list[str]:
        """The app lost consent in the tenant: each of its subscriptions gets reauthorizationRequired."""
        doomed = [s.id for s in self.all() if s.tenant_id == tenant_id and s.application_id == client_id]
        for sub_id in doomed:
            self._spawn(self._reauthorize(sub_id))
        return doomed

    async def _reauthorize(self, sub_id: str) -> None:
        with contextlib.suppress(KeyError, ValueError):
            await self.lifecycle(sub_id, "reauthorizationRequired")

    def _expiration(self, raw: Any, *, rich: bool = False) -> datetime:
        settings = self.state.settings
        if not isinstance(raw, str):
            raise GraphError(
                400, "InvalidRequest", "expirationDateTime is a required property for subscription creation."
            )
        try:
            expiration = parse_graph_datetime(raw, "UTC").astimezone(UTC)
        except ValueError:
            raise GraphError(400, "InvalidRequest", f"Invalid expirationDateTime '{raw}'.") from None
        now = self.state.clock()
        if expiration <= now:
            raise GraphError(400, "InvalidRequest", "Subscription expiration must be in the future.")
        longest = settings.subscription_rich_max_minutes if rich else settings.subscription_max_minutes
        if expiration > now + timedelta(minutes=longest):
            if settings.subscription_reject_overlong:
                raise GraphError(
                    400, "InvalidRequest", f"Subscription expiration can only be {longest} minutes in the future."
                )
            expiration = now + timedelta(minutes=longest)
        return max(expiration, now + timedelta(minutes=settings.subscription_min_minutes))

    def _url(self, raw: Any, name: str) -> str:
        if not isinstance(raw, str) or not raw:
            raise GraphError(400, "InvalidRequest", f"{name} is a required property for subscription creation.")
        parts = urlsplit(raw)
        allowed = ("https", "http") if self.state.settings.allow_http_notification_urls else ("https",)
        if parts.scheme not in allowed or not parts.netloc:
            raise GraphError(400, "InvalidRequest", f"The {name} must be an absolute https URL.")
        return raw

    async def create(self, ctx: GraphContext, req: GraphRequest) -> GraphResponse:
        self._purge()
        body = req.body
        change_types = tuple(t.strip() for t in str(body_get(body, "changeType") or "").split(",") if t.strip())
        if not change_types or not set(change_types) <= _CHANGE_TYPES:
            raise GraphError(400, "InvalidRequest", "changeType must be a combination of created, updated and deleted.")
        notification_url = self._url(body_get(body, "notificationUrl"), "notificationUrl")
        lifecycle_raw = body_get(body, "lifecycleNotificationUrl")
        lifecycle_url = self._url(lifecycle_raw, "lifecycleNotificationUrl") if lifecycle_raw else None
        resource = str(body_get(body, "resource") or "")
        match = _RESOURCE.match(resource)
        if match is None:
            raise GraphError(400, "InvalidRequest", f"Resource '{resource}' is not supported for change notifications.")
        caller = req.caller
        if match.group("user") is None:
            if caller.user is None:
                raise GraphError(400, "BadRequest", "/me request is only valid with delegated authentication flow.")
            mailbox = caller.user
        else:
            found = ctx.state.directory.mailbox_in_tenant(caller.tenant, match.group("user"))
            if found is None:
                raise _extension_error(404, "NotFound", f"The requested user '{match.group('user')}' is invalid.")
            mailbox = found
        if not caller.has_any(frozenset(READ)):
            raise _extension_error(403, "Forbidden", "Access is denied. Check credentials and try again.")
        if ctx.state.directory.tenant_of(mailbox).exchange is not ExchangeLocation.ONLINE:
            raise _extension_error(
                404, "NotFound", "The mailbox is either inactive, soft-deleted, or is hosted on-premise."
            )
        if caller.delegated and caller.user is not None and caller.user.id != mailbox.id:
            raise _extension_error(403, "Forbidden", "Access is denied. Check credentials and try again.")
        if not caller.delegated and (
            caller.principal is None or not ctx.state.directory.mailbox_in_policy_scope(caller.principal, mailbox)
        ):
            raise _extension_error(403, "Forbidden", "Access to OData is disabled.")
        rich = bool(body_get(body, "includeResourceData"))
        expiration = self._expiration(body_get(body, "expirationDateTime"), rich=rich)
        active = sum(1 for s in self._subscriptions.values() if s.mailbox == mailbox.email)
        if active >= ctx.state.settings.subscription_max_per_mailbox:
            raise _extension_error(403, "Forbidden", "Maximum number of subscriptions has been reached")
        client_state = body_get(body, "clientState")
        if client_state is not None and len(str(client_state)) > 128:
            raise GraphError(400, "InvalidRequest", "clientState must be at most 128 characters long.")
        sub_id = str(uuid.uuid4())
        for url in filter(None, (notification_url, lifecycle_url)):
            failure = await self.validate(url, sub_id)
            if failure is not None:
                raise GraphError(400, "ValidationError", failure)
        sub = Subscription(
            id=sub_id,
            resource=resource,
            mailbox=mailbox.email,
            mailbox_id=mailbox.id,
            tenant_id=caller.tenant.id,
            application_id=caller.client_id,
            creator_id=caller.user.id
            if caller.user
            else (caller.principal.id if caller.principal else caller.client_id),
            change_types=change_types,
            notification_url=notification_url,
            lifecycle_url=lifecycle_url,
            client_state=str(client_state) if client_state is not None else None,
            expiration=expiration,
            latest_tls=str(body_get(body, "latestSupportedTlsVersion") or "v1_2"),
        )
        self._subscriptions[sub.id] = sub
        return GraphResponse(201, sub.to_json(ctx.graph_url))

    def own(self, req: GraphRequest) -> Subscription:
        """The caller's subscription named in the URL, or Graph's 404 (other apps' are invisible)."""
        sub = self.get(req.params["id"])
        if sub is None or sub.application_id != req.caller.client_id or sub.tenant_id != req.caller.tenant.id:
            raise GraphError(404, "ResourceNotFound", "The object was not found.")
        return sub

    async def update(self, ctx: GraphContext, req: GraphRequest) -> GraphResponse:
        sub = self.own(req)
        if not self.authorized(sub):
            raise _extension_error(403, "Forbidden", "Access is denied. Check credentials and try again.")
        raw_expiration = body_get(req.body, "expirationDateTime")
        if raw_expiration is not None:
            sub.expiration = self._expiration(raw_expiration)
        raw_url = body_get(req.body, "notificationUrl")
        if raw_url is not None and raw_url != sub.notification_url:
            url = self._url(raw_url, "notificationUrl")
            failure = await self.validate(url, sub.id)
            if failure is not None:
                raise GraphError(400, "ValidationError", failure)
            sub.notification_url = url
        return GraphResponse(200, sub.to_json(ctx.graph_url))


async def create_subscription(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/subscription-post-subscriptions
    return await ctx.subscriptions.create(ctx, req)


async def list_subscriptions(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/subscription-list — the calling app's subscriptions
    value = [
        s.to_json(ctx.graph_url)
        for s in ctx.subscriptions.all()
        if s.application_id == req.caller.client_id and s.tenant_id == req.caller.tenant.id
    ]
    for item in value:
        item.pop("@odata.context", None)
    return GraphResponse(200, {"@odata.context": f"{ctx.graph_url}/$metadata#subscriptions", "value": value})


async def get_subscription(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/subscription-get
    return GraphResponse(200, ctx.subscriptions.own(req).to_json(ctx.graph_url))


async def update_subscription(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/subscription-update — renewal (expirationDateTime) or new URL
    return await ctx.subscriptions.update(ctx, req)


async def delete_subscription(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/subscription-delete — 204
    ctx.subscriptions.remove(ctx.subscriptions.own(req).id)
    return GraphResponse(204)


async def reauthorize_subscription(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/subscription-reauthorize — 204
    sub = ctx.subscriptions.own(req)
    if not ctx.subscriptions.authorized(sub):
        raise _extension_error(403, "Forbidden", "Access is denied. Check credentials and try again.")
    return GraphResponse(204)


ROUTES: tuple[Route, ...] = (
    make_route(
        "POST", r"/subscriptions", "graph:subscriptions.create", create_subscription, set(), family="subscriptions"
    ),
    make_route("GET", r"/subscriptions", "graph:subscriptions.list", list_subscriptions, set(), family="subscriptions"),
    make_route(
        "GET", r"/subscriptions/{id}", "graph:subscriptions.get", get_subscription, set(), family="subscriptions"
    ),
    make_route(
        "PATCH",
        r"/subscriptions/{id}",
        "graph:subscriptions.update",
        update_subscription,
        set(),
        family="subscriptions",
    ),
    make_route(
        "DELETE",
        r"/subscriptions/{id}",
        "graph:subscriptions.delete",
        delete_subscription,
        set(),
        family="subscriptions",
    ),
    make_route(
        "POST",
        r"/subscriptions/{id}/reauthorize",
        "graph:subscriptions.reauthorize",
        reauthorize_subscription,
        set(),
        family="subscriptions",
    ),
)
