"""Calls to URLs an application gave us (callbacks, later webhooks): hostile input until checked.

Every URL passes the admin-typed URL policy (`providers.endpoints`) before the call, and the
session's resolver applies the same rule to every address it resolves at connect time, so a name
that re-points at a private address after the check (DNS rebinding) is still refused. Redirects
are not followed: a 3xx to an internal address would otherwise walk straight past the check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from calbroker.config import Settings
from calbroker.domain.errors import InvalidRequest
from calbroker.logs import get_logger
from calbroker.providers.endpoints import AddressPolicy, check_upstream_url
from calbroker.providers.protocol import Deadline

__all__ = ["AppCallbacks"]

log = get_logger(__name__)

_ATTEMPTS = 3
_BACKOFF_S = (0.5, 2.0)


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
        self._policy = AddressPolicy(
            allow_private=settings.allow_private_upstreams, allow_http=settings.allow_http_upstreams
        )
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AppCallbacks:
        connector = aiohttp.TCPConnector(resolver=_PolicyResolver(self._policy), limit=50)
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
