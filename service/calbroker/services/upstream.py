"""The provider behind each stored connection, and the one way to check that a connection works.

Schedules, bookings, the connections API and the health checker all reach Microsoft through
here: credentials are read and decrypted only when the registry has no provider for the
connection yet, and a verification always starts from fresh tokens.
"""

from __future__ import annotations

import asyncpg

from calbroker.config import Cloud
from calbroker.domain.connections import Connection, Credentials
from calbroker.domain.errors import CalbrokerError, CredentialsUnavailable, UpstreamThrottled
from calbroker.providers.protocol import CalendarProvider, Deadline
from calbroker.providers.registry import ProviderRegistry
from calbroker.store.connections import load_credentials
from calbroker.store.keyring import Keyring

__all__ = ["Upstream"]


class Upstream:
    """Providers for the connections in the store, built from their sealed credentials on demand."""

    def __init__(self, pool: asyncpg.Pool, keyring: Keyring, registry: ProviderRegistry) -> None:
        self._pool = pool
        self._keyring = keyring
        self.registry = registry

    async def provider(self, connection: Connection) -> CalendarProvider:
        """The connection's long-lived provider (token caches and sessions are reused across requests)."""

        async def credentials() -> Credentials:
            async with self._pool.acquire() as conn:
                return await load_credentials(conn, self._keyring, connection)

        return await self.registry.provider_for(connection, credentials)

    async def forget(self, connection: Connection) -> None:
        """Close the connection's provider: the next use starts from its stored credentials and no tokens."""
        await self.registry.forget(connection)

    def cloud(self, name: str) -> Cloud:
        return self.registry.cloud(name)

    async def verify(
        self, connection: Connection, mailbox: str, deadline: Deadline, *, fresh: bool = False
    ) -> CalbrokerError | None:
        """None when the connection works for `mailbox`, else the error that says why it does not.

        `fresh` starts from new tokens (an admin's "check it now"); a failure always drops the
        provider, since msal remembers refusals for a while and the next check or request must ask
        Microsoft again. Throttling and credentials this server cannot open are raised, not returned:
        a busy tenant, or a master key missing here, is not a broken connection.
        """
        if fresh:
            await self.forget(connection)
        try:
            provider = await self.provider(connection)
            await provider.verify(mailbox, deadline)
        except (UpstreamThrottled, CredentialsUnavailable):
            raise
        except CalbrokerError as exc:
            await self.forget(connection)
            return exc
        return None
