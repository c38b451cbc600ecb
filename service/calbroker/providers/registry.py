"""One provider per connection for the life of the process, so token caches and sessions are reused.

A provider is keyed by connection id *and* sealed-secret id: replacing a connection's credentials
(a rotated secret, a refreshed delegated token) gives it a fresh provider instead of a stale one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from functools import partial

import aiohttp

from calbroker.config import Cloud, Settings
from calbroker.domain.connections import (
    Connection,
    ConnectionKind,
    Credentials,
    EwsServiceAccount,
)
from calbroker.domain.errors import InvalidRequest
from calbroker.metrics import Metrics
from calbroker.providers.endpoints import AddressPolicy, check_upstream_url
from calbroker.providers.ews import EwsLimits, EwsProvider, discover_ews_endpoint
from calbroker.providers.graph import GraphLimits, GraphProvider
from calbroker.providers.protocol import CalendarProvider

__all__ = ["CredentialsSink", "ProviderRegistry"]

CredentialsSink = Callable[[Connection, Credentials], Awaitable[None]]
"""Persists credentials a provider renewed itself (a rotated delegated refresh token)."""


class ProviderRegistry:
    """Builds providers from connections and keeps them until the app shuts down.

    The upstream limits Microsoft does not document (mailboxes and window per free/busy call) come
    from `settings`, so an operator can follow what their tenants' Exchange really allows.
    """

    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        executor: Executor,
        *,
        credentials_sink: CredentialsSink | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self.metrics = metrics if metrics is not None else Metrics()
        """Where every provider it builds counts its upstream calls."""
        self._graph_limits = GraphLimits(
            max_schedules=settings.graph_max_schedules, max_window=settings.graph_max_window
        )
        self._ews_limits = EwsLimits(
            mailboxes_per_request=settings.ews_max_mailboxes, max_window=settings.ews_max_window
        )
        self.address_policy = AddressPolicy(
            allow_private=settings.allow_private_upstreams, allow_http=settings.allow_http_upstreams
        )
        """What admin-typed endpoints may point at: checked when typed and on every connection."""
        self._session = session
        self._executor = executor
        self._sink = credentials_sink
        self._providers: dict[tuple[str, str], CalendarProvider] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._closed = False

    def cloud(self, name: str) -> Cloud:
        cloud = self._settings.clouds.get(name)
        if cloud is None:
            raise InvalidRequest.field(
                "cloud", f"unknown cloud {name!r}; known: {', '.join(sorted(self._settings.clouds))}"
            )
        return cloud

    async def discover_ews_endpoint(self, email: str, credentials: EwsServiceAccount, cloud: str) -> str:
        """The EWS URL Autodiscover gives for `email` (asked with the connection's own credentials), in
        this cloud: its own Autodiscover host and CA, every URL tried under the admin-typed URL policy."""
        found = self.cloud(cloud)
        settings = self._settings

        async def check(url: str, *, allow_http: bool = settings.allow_http_upstreams) -> str:
            policy = AddressPolicy(allow_private=settings.allow_private_upstreams, allow_http=allow_http)
            return await check_upstream_url(url, field="endpoint", policy=policy)

        return await discover_ews_endpoint(
            email,
            credentials,
            executor=self._executor,
            check_url=check,
            check_http_url=partial(check, allow_http=True),  # the unauthenticated redirect probe sends nothing
            policy=self.address_policy,
            start_host=found.autodiscover_host,
            ca_bundle=found.ca_bundle,
        )

    def build(
        self,
        connection: Connection,
        credentials: Credentials,
        *,
        on_renewed: Callable[[Credentials], Awaitable[None]] | None = None,
    ) -> CalendarProvider:
        """A new provider (not cached): used to verify credentials before anything is saved.

        `on_renewed` replaces the registry's sink for credentials the provider renews itself: a
        connection being verified is not saved yet, so its rotated refresh token must go to the
        caller, not to the store.
        """
        if self._closed:
            raise RuntimeError("the provider registry is closed (the app is shutting down)")
        cloud = self.cloud(connection.cloud)
        if connection.kind is ConnectionKind.EWS:
            if not isinstance(credentials, EwsServiceAccount):
                raise TypeError("an EWS connection needs EwsServiceAccount credentials")
            return EwsProvider(
                connection,
                credentials,
                cloud.ca_bundle,
                self._executor,
                limits=self._ews_limits,
                policy=self.address_policy,
                metrics=self.metrics,
            )
        sink = self._sink

        async def renewed(updated: Credentials) -> None:
            if on_renewed is not None:
                await on_renewed(updated)
            elif sink is not None:
                await sink(connection, updated)

        return GraphProvider(
            connection,
            credentials,
            cloud,
            self._session,
            self._executor,
            operator_app=self._settings.operator_app,
            limits=self._graph_limits,
            on_credentials_changed=renewed,
            metrics=self.metrics,
        )

    async def provider_for(
        self, connection: Connection, load_credentials: Callable[[], Awaitable[Credentials]]
    ) -> CalendarProvider:
        """The cached provider, or one built from credentials loaded (and decrypted) only on a miss."""
        key = (str(connection.id), str(connection.secret_id))
        provider = self._providers.get(key)
        if provider is not None:
            return provider
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            provider = self._providers.get(key)
            if provider is None:
                provider = self.build(connection, await load_credentials())
                stale = [k for k in self._providers if k[0] == key[0]]
                self._providers[key] = provider
                for old in stale:
                    await self._providers.pop(old).aclose()
        return provider

    async def forget(self, connection: Connection) -> None:
        """Drop (and close) every provider of a connection, e.g. after it was revoked."""
        for key in [k for k in self._providers if k[0] == str(connection.id)]:
            await self._providers.pop(key).aclose()

    async def aclose(self) -> None:
        self._closed = True
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            await provider.aclose()
