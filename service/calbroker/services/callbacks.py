"""Calls to URLs an application gave us (service-account callbacks, channel webhooks): hostile input until checked.

Every URL passes the admin-typed URL policy (`providers.endpoints`) before the call, and the
session's resolver applies the same rule to every address it resolves at connect time, so a name
that re-points at a private address after the check (DNS rebinding) is still refused. Redirects
are not followed: a 3xx to an internal address would otherwise walk straight past the check.
Private hosts are refused unless the operator allows them: for every admin-typed URL, or for
callbacks only (`ChannelSettings.allow_private_hosts`: receivers inside the operator's network,
without trusting every endpoint an admin may type).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from calbroker.config import Settings
from calbroker.domain.channels import Attempt
from calbroker.domain.errors import InvalidRequest
from calbroker.logs import get_logger
from calbroker.providers.endpoints import AddressPolicy, check_upstream_url
from calbroker.providers.protocol import Deadline

__all__ = ["AppCallbacks", "callback_policy"]

log = get_logger(__name__)

_ATTEMPTS = 3
_BACKOFF_S = (0.5, 2.0)
_EXCERPT_BYTES = 1024


def callback_policy(settings: Settings) -> AddressPolicy:
    """Where application-given URLs may lead: public https, like admin-typed URLs and under the same
    settings (`CALBROKER_ALLOW_PRIVATE_UPSTREAMS` / `_HTTP_UPSTREAMS`), plus callbacks' own: private
    hosts for receivers inside the operator's network, plain http to loopback for the demo."""
    channels = settings.channels
    return AddressPolicy(
        allow_private=settings.allow_private_upstreams or channels.allow_private_hosts,
        allow_http=settings.allow_http_upstreams,
        allow_loopback=channels.allow_loopback_http,
        allow_loopback_http=channels.allow_loopback_http,
    )


def _retry_after(raw: str | None, now: datetime) -> timedelta | None:
    """A `Retry-After` header: delay-seconds or an HTTP date (RFC 9110 §10.2.3); None when unreadable."""
    if not raw:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return timedelta(seconds=int(raw))
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(timedelta(0), when - now)


class _PolicyResolver(AbstractResolver):
    """The default resolver, refusing any answer the URL policy forbids."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for item in found:
            why = self._policy.refusal(ipaddress.ip_address(item["host"]))
            if why is not None:
                raise OSError(f"{host} {why}")
        return found

    async def close(self) -> None:
        await self._inner.close()


class AppCallbacks:
    """One HTTP session for every call to an application's URL, with the URL policy on each."""

    def __init__(self, settings: Settings) -> None:
        self._policy = callback_policy(settings)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AppCallbacks:
        connector = aiohttp.TCPConnector(resolver=_PolicyResolver(self._policy), limit=200, limit_per_host=50)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=10), headers={"User-Agent": "calbroker"}
        )
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def check(self, url: str, *, field: str) -> str:
        """The URL if the policy allows it, else InvalidRequest naming `field` and why."""
        return await check_upstream_url(url, field=field, policy=self._policy)

    async def deliver(
        self, url: str, body: bytes, headers: dict[str, str], *, within: timedelta, started_at: datetime
    ) -> Attempt:
        """One POST of a webhook: what came back (status, Retry-After, the first KB) or why nothing did.

        Never raises for the receiver's faults: a refused address, a timeout, a TLS failure and a
        redirect (never followed) are attempts that failed, each with its class.
        """
        if self._session is None:
            raise RuntimeError("AppCallbacks is used outside its `async with` block")
        clock = time.perf_counter()

        def failed(error: str, excerpt: str = "") -> Attempt:
            return Attempt(started_at, timedelta(seconds=time.perf_counter() - clock), None, error, None, excerpt)

        try:
            await self.check(url, field="callback_url")
        except InvalidRequest as exc:
            return failed("address_policy", exc.detail[:_EXCERPT_BYTES])
        try:
            async with asyncio.timeout(within.total_seconds()):
                async with self._session.post(
                    url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=None),
                ) as response:
                    excerpt = (await response.content.read(_EXCERPT_BYTES)).decode("utf-8", "replace")
                    status = response.status
                    retry_after = _retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
        except TimeoutError:
            return failed("timeout")
        except (aiohttp.ClientSSLError, ssl.SSLError):
            return failed("tls")
        except OSError as exc:
            # The resolver refuses a name whose address the policy forbids (DNS rebinding) with OSError.
            return failed("address_policy" if "resolves to" in str(exc) else "connection", str(exc)[:200])
        except aiohttp.ClientError as exc:
            return failed("connection", type(exc).__name__)
        latency = timedelta(seconds=time.perf_counter() - clock)
        error = None
        if 300 <= status < 400:
            error = "redirect"
        elif not 200 <= status < 300:
            error = "http_status"
        return Attempt(started_at, latency, status, error, retry_after if status in (429, 503) else None, excerpt)

    async def post_json(
        self, url: str, body: bytes, deadline: Deadline, *, headers: dict[str, str] | None = None
    ) -> bool:
        """POST `body` (JSON) until a 2xx or the attempts run out; True when the application took it.

        Failures are logged, never raised: the caller has already answered its own client.
        """
        if self._session is None:
            raise RuntimeError("AppCallbacks is used outside its `async with` block")
        sent: dict[str, Any] = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        for attempt in range(_ATTEMPTS):
            reason: str
            try:
                await self.check(url, field="callback_url")
                timeout = aiohttp.ClientTimeout(total=max(0.1, min(10.0, deadline.remaining())))
                async with self._session.post(
                    url, data=body, headers=sent, allow_redirects=False, timeout=timeout
                ) as response:
                    await response.content.read(64 * 1024)
                    if 200 <= response.status < 300:
                        return True
                    reason = f"HTTP {response.status}"
                    if response.status < 500 and response.status != 429:
                        break
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = type(exc).__name__
            except InvalidRequest as exc:  # the URL now breaks the policy: no point in trying again
                reason = exc.detail
                break
            if attempt + 1 < _ATTEMPTS and deadline.allows(_BACKOFF_S[attempt]):
                await asyncio.sleep(_BACKOFF_S[attempt])
            else:
                break
        log.warning("callback.failed", reason=reason)
        return False
