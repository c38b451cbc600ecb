"""Fault injection, request counters and Microsoft-style throttling, shared by every surface.

Route keys name logical operations, one namespace per surface:

- `entra:openid-configuration`, `entra:keys`, `entra:token`, `entra:authorize`, `entra:adminconsent`
- `graph:<operation>`, e.g. `graph:getSchedule`, `graph:calendarView`, `graph:events.create`,
  `graph:events.get`, `graph:events.update`, `graph:events.delete`, `graph:events.cancel`,
  `graph:events.list`, `graph:users.get`, `graph:users.list`, `graph:batch`,
  `graph:subscriptions.create` … (inner `$batch` requests count under their own keys)
- `ews:<Operation>`, e.g. `ews:GetUserAvailability`, `ews:FindItem`, `ews:CreateItem`

A `FaultRule` matches a route pattern (fnmatch: `graph:*`, `ews:Get*`, `*`), optionally a mailbox
pattern and a client id (app client id, or EWS service-account user name), and then either
answers an error (`status`, `code`, `message`, `retry_after`), adds latency, hangs (`timeout`),
drops the TCP connection (`drop`) or, for Graph event creation/reads, omits the Teams join URL
(`omit_join_url`). `count` limits it to the next N matching requests; `probability` makes it
random (seeded, so runs repeat). Surfaces render `error` in their own dialect: Graph's error
envelope with `Retry-After`, Entra's AADSTS body, EWS's SOAP fault (`ErrorServerBusy` with
`BackOffMilliseconds` = retry_after × 1000 unless another code is given).
"""

from __future__ import annotations

import fnmatch
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "DropConnection",
    "FaultAction",
    "FaultBook",
    "FaultRule",
    "RequestStats",
    "Throttle",
    "Throttled",
]


class FaultAction(StrEnum):
    ERROR = "error"
    DELAY = "delay"
    TIMEOUT = "timeout"
    DROP = "drop"
    OMIT_JOIN_URL = "omit_join_url"


class DropConnection(Exception):  # a control-flow signal, not an error
    """Raised inside a handler to make the server close the connection without answering."""


class Throttled(Exception):  # mirrors Microsoft's wording
    """Over a per-(app, mailbox) limit; `retry_after` is what the response should tell the client."""

    def __init__(self, retry_after: float, reason: str) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.reason = reason


@dataclass(slots=True)
class FaultRule:
    """One injected fault; see the module docstring for the matching rules."""

    id: str
    route: str = "*"
    mailbox: str | None = None
    client_id: str | None = None
    action: FaultAction = FaultAction.ERROR
    status: int = 503
    code: str | None = None
    message: str | None = None
    retry_after: float | None = None
    latency_ms: float = 0.0
    count: int | None = None
    probability: float = 1.0
    hits: int = 0

    def matches(self, route: str, mailbox: str | None, client_id: str | None) -> bool:
        if not fnmatch.fnmatchcase(route, self.route):
            return False
        if self.mailbox is not None and (mailbox is None or not fnmatch.fnmatch(mailbox.lower(), self.mailbox.lower())):
            return False
        return self.client_id is None or (client_id is not None and client_id.lower() == self.client_id.lower())

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.hits >= self.count

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, rule_id: str, raw: dict[str, Any]) -> FaultRule:
        """Build a rule from control-plane JSON; unknown keys are an error so typos do not pass silently."""
        allowed = {
            "route",
            "mailbox",
            "client_id",
            "action",
            "status",
            "code",
            "message",
            "retry_after",
            "latency_ms",
            "count",
            "probability",
        }
        unknown = set(raw) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        action = FaultAction(raw.get("action", "error"))
        status = int(raw.get("status", 429 if raw.get("retry_after") is not None else 503))
        return cls(
            id=rule_id,
            route=str(raw.get("route", "*")),
            mailbox=raw.get("mailbox"),
            client_id=raw.get("client_id"),
            action=action,
            status=status,
            code=raw.get("code"),
            message=raw.get("message"),
            retry_after=float(raw["retry_after"]) if raw.get("retry_after") is not None else None,
            latency_ms=float(raw.get("latency_ms", 0.0)),
            count=int(raw["count"]) if raw.get("count") is not None else None,
            probability=float(raw.get("probability", 1.0)),
        )


class FaultBook:
    """The active fault rules; the first matching, non-exhausted rule wins."""

    def __init__(self, seed: int = 0) -> None:
        self._rules: list[FaultRule] = []
        self._rng = random.Random(f"faults|{seed}")
        self._next = 0

    def add(self, raw: dict[str, Any]) -> FaultRule:
        self._next += 1
        rule = FaultRule.from_json(f"fault-{self._next}", raw)
        self._rules.append(rule)
        return rule

    def remove(self, rule_id: str) -> bool:
        before = len(self._rules)
        self._rules = [r for r in self._rules if r.id != rule_id]
        return len(self._rules) != before

    def clear(self) -> None:
        self._rules.clear()

    def rules(self) -> list[FaultRule]:
        return list(self._rules)

    def match(self, route: str, *, mailbox: str | None = None, client_id: str | None = None) -> FaultRule | None:
        """The rule to apply to this request (consuming one of its `count`), or None."""
        for rule in self._rules:
            if rule.exhausted or not rule.matches(route, mailbox, client_id):
                continue
            if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                continue
            rule.hits += 1
            return rule
        return None


@dataclass(slots=True)
class RequestStats:
    """How many requests each route (and mailbox, and client) received — tests assert upstream call counts.

    `in_flight` counts requests (other than the control plane's) being handled right now, a
    delayed one included until it answers or its client goes away; `reset` leaves it alone.
    """

    routes: Counter[str] = field(default_factory=Counter)
    mailboxes: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    clients: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    statuses: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    in_flight: int = 0
    running_now: Counter[tuple[str, str]] = field(default_factory=Counter)
    peaks: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    """Most requests of one route for one mailbox in flight at once (e.g. two syncs of one mailbox)."""

    @contextmanager
    def running(self, route: str, mailbox: str | None) -> Iterator[None]:
        """Count the request as in flight for `peaks` while the block runs."""
        if not mailbox:
            yield
            return
        key = (route, mailbox.lower())
        self.running_now[key] += 1
        self.peaks[route][key[1]] = max(self.peaks[route][key[1]], self.running_now[key])
        try:
            yield
        finally:
            self.running_now[key] -= 1

    def record(self, route: str, *, mailbox: str | None = None, client_id: str | None = None) -> None:
        self.routes[route] += 1
        if mailbox:
            self.mailboxes[route][mailbox.lower()] += 1
        if client_id:
            self.clients[route][client_id] += 1

    def record_status(self, route: str, status: int) -> None:
        self.statuses[route][str(status)] += 1

    def reset(self) -> None:
        self.routes.clear()
        self.mailboxes.clear()
        self.clients.clear()
        self.statuses.clear()
        self.peaks.clear()

    def to_json(self) -> dict[str, Any]:
        return {
            "total": sum(self.routes.values()),
            "in_flight": self.in_flight,
            "routes": dict(sorted(self.routes.items())),
            "mailboxes": {k: dict(sorted(v.items())) for k, v in sorted(self.mailboxes.items())},
            "clients": {k: dict(sorted(v.items())) for k, v in sorted(self.clients.items())},
            "statuses": {k: dict(sorted(v.items())) for k, v in sorted(self.statuses.items())},
            "peaks": {k: dict(sorted(v.items())) for k, v in sorted(self.peaks.items())},
        }


class Throttle:
    """Outlook's per-app-per-mailbox limits: N concurrent requests and M requests per window.

    "4 concurrent requests per app per mailbox", "10,000 requests per 10-minute period per app per
    mailbox" (https://learn.microsoft.com/graph/throttling-limits#outlook-service-limits).
    Limits are read from `limits` on each call so the control plane can change them live.
    """

    def __init__(self, limits: Any) -> None:
        self._limits = limits
        self._in_flight: Counter[tuple[str, str]] = Counter()
        self._recent: defaultdict[tuple[str, str], deque[float]] = defaultdict(deque)

    def reset(self) -> None:
        self._in_flight.clear()
        self._recent.clear()

    @asynccontextmanager
    async def slot(self, principal: str, mailbox: str) -> AsyncIterator[None]:
        """Hold one of the (principal, mailbox) concurrency slots for the request's duration.

        Raises `Throttled` at once when the mailbox is at its concurrency or rate limit.
        """
        key = (principal, mailbox.lower())
        now = time.monotonic()
        window = float(self._limits.mailbox_rate_window_s)
        recent = self._recent[key]
        while recent and recent[0] <= now - window:
            recent.popleft()
        if self._in_flight[key] >= int(self._limits.mailbox_concurrency):
            raise Throttled(
                float(self._limits.throttle_retry_after_s),
                "Application is over its MailboxConcurrency limit.",
            )
        if len(recent) >= int(self._limits.mailbox_rate_limit):
            retry = max(1.0, recent[0] + window - now)
            raise Throttled(round(retry), "Application is over its mailbox request limit.")
        recent.append(now)
        self._in_flight[key] += 1
        try:
            yield
        finally:
            self._in_flight[key] -= 1
            if self._in_flight[key] <= 0:
                del self._in_flight[key]
