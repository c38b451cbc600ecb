"""The provider behind each stored connection, and the one way to check that a connection works.

Schedules, bookings, the connections API and the health checker all reach Microsoft through
here: credentials are read and decrypted only when the registry has no provider for the
connection yet, and a verification always starts from fresh tokens.
"""

from __future__ import annotations

import asyncpg

from calbroker.config import Cloud
from calbroker.domain.connections import Connection, Credentials
from calbroker.domain.errors import CalbrokerError, CredentialsUnavailable, MailboxError, UpstreamThrottled
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

        `fresh` checks with new tokens (an admin's "check it now") through a provider of its own,
        so requests running on the shared one are not cut off. A failure of the connection itself
        drops the shared provider, since msal remembers refusals for a while and the next request
        must ask Microsoft again; a failure about the test mailbox (unknown, out of scope) says
        nothing about the connection and drops nothing. Throttling and credentials this server
        cannot open are raised, not returned: a busy tenant, or a master key missing here, is not a
        broken connection.
        """
        try:
            if fresh:
                provider = await self._fresh_provider(connection)
                try:
                    await provider.verify(mailbox, deadline)
                finally:
                    await provider.aclose()
            else:
                await (await self.provider(connection)).verify(mailbox, deadline)
        except (UpstreamThrottled, CredentialsUnavailable):
            raise
        except MailboxError as exc:
            return exc
        except CalbrokerError as exc:
            await self.forget(connection)
            return exc
        return None

    async def _fresh_provider(self, connection: Connection) -> CalendarProvider:
        async with self._pool.acquire() as conn:
            credentials = await load_credentials(conn, self._keyring, connection)
        return self.registry.build(connection, credentials)
