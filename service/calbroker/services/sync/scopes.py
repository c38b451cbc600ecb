"""Which mailboxes are synced: each connection's scope, set by its application, applied by the worker.

A scope is explicit — every mailbox in the connection's scope (`all`: its allow-list, else the
tenant's directory over Graph), or a list — and capped (`CALBROKER_SYNC_MAX_MAILBOXES`). The API
records the scope and queues its application; the worker adds mailboxes (each gets a change feed
and a full round) and retires the ones no longer wanted (their Graph subscription is deleted).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from calbroker.config import Settings
from calbroker.domain.connections import Connection, ConnectionKind, ConnectionStatus, normalize_email, route_mailbox
from calbroker.domain.errors import CalbrokerError, InvalidRequest, LimitExceeded, MailboxError
from calbroker.logs import get_logger
from calbroker.providers import Deadline, GraphProvider
from calbroker.services.sync.feeds import GraphFeeds
from calbroker.services.sync.queue import ConnectionJob, JobName, MailboxJob, enqueue, request_round
from calbroker.services.upstream import Upstream
from calbroker.store.connections import find_connection, get_connection, list_connections
from calbroker.store.sync_state import (
    ScopeMode,
    SyncRow,
    SyncScope,
    delete_mailboxes,
    get_scope,
    list_sync_rows,
    scope_applied,
    set_scope,
    track_mailboxes,
)

__all__ = ["ScopeReport", "SyncScopes"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ScopeReport:
    """A connection's scope and the state of each mailbox synced under it."""

    connection: Connection
    scope: SyncScope | None
    mailboxes: tuple[SyncRow, ...]
    limit: int


class SyncScopes:
    def __init__(self, pool: asyncpg.Pool, upstream: Upstream, feeds: GraphFeeds, settings: Settings) -> None:
        self._pool = pool
        self._upstream = upstream
        self._feeds = feeds
        self._settings = settings

    async def set(
        self, application_id: uuid.UUID, connection_id: uuid.UUID, mode: ScopeMode | None, mailboxes: Sequence[str]
    ) -> ScopeReport:
        """Record an application's choice (validated: every listed mailbox must be this connection's)
        and queue its application; None stops syncing the connection."""
        limit = self._settings.sync.max_mailboxes
        async with self._pool.acquire() as conn:
            connection = await get_connection(conn, application_id, connection_id)
            connections = await list_connections(conn, application_id)
        if connection.status is ConnectionStatus.REVOKED:
            raise InvalidRequest.field("connection_id", "the connection is revoked")
        if mode is not None:
            connection.require_calendar_access("sync its mailboxes (reading calendar items)")
        wanted: list[str] = []
        if mode is ScopeMode.LIST:
            if len(mailboxes) > limit:
                raise LimitExceeded(
                    field="mailboxes",
                    limit=limit,
                    actual=len(mailboxes),
                    message=f"at most {limit} mailboxes are synced per connection (CALBROKER_SYNC_MAX_MAILBOXES)",
                )
            for index, raw in enumerate(mailboxes):
                mailbox = normalize_email(raw, field_name=f"mailboxes[{index}]")
                try:
                    routed = route_mailbox(connections, mailbox)
                except MailboxError as exc:
                    raise InvalidRequest.field(f"mailboxes[{index}]", exc.detail) from None
                if routed.id != connection.id:
                    raise InvalidRequest.field(
                        f"mailboxes[{index}]", f"{mailbox} is served by connection {routed.id}, not this one"
                    )
                wanted.append(mailbox)
        elif mailboxes:
            raise InvalidRequest.field("mailboxes", 'list mailboxes only with mode "list"')
        if mode is ScopeMode.ALL and connection.kind is ConnectionKind.EWS and not connection.allowed_mailboxes:
            raise InvalidRequest.field(
                "mode",
                'Exchange on-premises cannot list its mailboxes to calbroker: use mode "list", or give the '
                "connection an allow-list",
            )
        async with self._pool.acquire() as conn, conn.transaction():
            await set_scope(conn, connection.id, mode, sorted(set(wanted)))
            await enqueue(conn, JobName.SCOPE, ConnectionJob(connection.id), dedupe_key=f"scope:{connection.id}")
        return await self.report(application_id, connection_id)

    async def report(self, application_id: uuid.UUID, connection_id: uuid.UUID) -> ScopeReport:
        async with self._pool.acquire() as conn:
            connection = await get_connection(conn, application_id, connection_id)
            scope = await get_scope(conn, connection_id)
            rows = await list_sync_rows(conn, connection_id)
        return ScopeReport(connection, scope, tuple(rows), self._settings.sync.max_mailboxes)

    async def apply(self, connection_id: uuid.UUID) -> None:
        """Bring the synced mailboxes in line with the scope (worker side: may call Microsoft)."""
        async with self._pool.acquire() as conn:
            connection = await find_connection(conn, connection_id)
            scope = await get_scope(conn, connection_id)
            current = await list_sync_rows(conn, connection_id)
        if connection is None:
            return
        problem: str | None = None
        wanted: list[str] = []
        if scope is not None and connection.status is not ConnectionStatus.REVOKED:
            try:
                wanted = await self._wanted(connection, scope)
            except CalbrokerError as exc:
                # Keep what is synced; say why the scope could not be read.
                await self._applied(connection_id, f"{exc.slug}: {exc.detail}")
                return
            limit = self._settings.sync.max_mailboxes
            if len(wanted) > limit:
                problem = (
                    f"The scope holds {len(wanted)} mailboxes; only the first {limit} (by address) are synced "
                    "(CALBROKER_SYNC_MAX_MAILBOXES)."
                )
                wanted = wanted[:limit]
        have = {row.mailbox: row for row in current}
        retired = [row for mailbox, row in have.items() if mailbox not in set(wanted)]
        for row in retired:
            await self._feeds.retire(row)
        async with self._pool.acquire() as conn, conn.transaction():
            if retired:
                await delete_mailboxes(conn, [row.id for row in retired])
            added = await track_mailboxes(conn, connection_id, [m for m in wanted if m not in have])
            for row in added:
                await request_round(conn, row.id, full=True)
                if connection.kind is ConnectionKind.GRAPH:
                    await enqueue(conn, JobName.FEED, MailboxJob(row.id), dedupe_key=f"feed:{row.id}")
            await scope_applied(conn, connection_id, problem)
        log.info("sync.scope_applied", connection_id=str(connection_id), added=len(added), retired=len(retired))

    async def _applied(self, connection_id: uuid.UUID, problem: str) -> None:
        async with self._pool.acquire() as conn:
            await scope_applied(conn, connection_id, problem)

    async def _wanted(self, connection: Connection, scope: SyncScope) -> list[str]:
        if scope.mode is ScopeMode.LIST:
            return sorted(m for m in scope.mailboxes if connection.allows(m))
        if connection.allowed_mailboxes:
            return sorted(connection.allowed_mailboxes)
        provider = await self._upstream.provider(connection)
        if not isinstance(provider, GraphProvider):
            return []
        listed = await provider.changes.mailboxes(Deadline.after(self._settings.upstream_deadline_s * 3))
        return [m for m in listed if connection.covers_domain(m.rpartition("@")[2])]
