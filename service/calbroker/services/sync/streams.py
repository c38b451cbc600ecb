"""EWS change feeds: each EWS connection's synced mailboxes in streaming groups of at most 200, each
group held by one worker replica at a time (a PostgreSQL advisory lock), with a round for every
mailbox after each (re)connect and polling when Exchange refuses streaming.

A held group is alive only while its holder beats: every beat pushes the group's feed expiry a
little ahead, so a holder that dies leaves its mailboxes read live within `_FEED_GRACE`, not after
the stream's 25-minute connection would have ended. Exchange's own limits
(https://learn.microsoft.com/exchange/client-developer/exchange-web-services/ews-throttling-in-exchange):
a refused stream (ErrorExceededConnectionCount, HangingConnectionLimit 10 on 2016/2019) or
streaming switched off means polling: a round every `ews_poll_every`, during which the copy
answers only if its last round is younger than twice that.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import asyncpg

from calbroker.config import Settings
from calbroker.domain.connections import Connection, ConnectionKind, ConnectionStatus
from calbroker.domain.errors import CalbrokerError, SyncStateExpired, UpstreamThrottled
from calbroker.domain.sync import FeedState
from calbroker.logs import get_logger
from calbroker.providers import EwsProvider
from calbroker.providers.ews import MAX_GROUP, StreamGroup
from calbroker.services.sync.queue import request_round
from calbroker.services.upstream import Upstream
from calbroker.store.connections import find_connection
from calbroker.store.sync_state import SyncRow, extend_feeds, set_feed, sync_row

__all__ = ["EwsStreams"]

log = get_logger(__name__)

T = TypeVar("T")

_BEAT = timedelta(seconds=20)
_FEED_GRACE = timedelta(seconds=60)
_REFRESH = timedelta(seconds=30)
_RETRY_STREAMING = timedelta(minutes=10)
_BACK_OFF = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class _Group:
    connection_id: uuid.UUID
    index: int
    members: tuple[SyncRow, ...]

    @property
    def key(self) -> tuple[uuid.UUID, int]:
        return (self.connection_id, self.index)

    @property
    def lock(self) -> int:
        raw = f"calbroker.ews-stream:{self.connection_id}:{self.index}".encode()
        return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big") >> 1


class EwsStreams:
    """The EWS groups this worker holds; `run` keeps holding whatever groups it can lock."""

    def __init__(self, pool: asyncpg.Pool, upstream: Upstream, settings: Settings) -> None:
        self._pool = pool
        self._upstream = upstream
        self._settings = settings
        self._held: dict[tuple[uuid.UUID, int], tuple[_Group, asyncio.Task[None], asyncio.Event]] = {}

    async def run(self, stop: asyncio.Event, *, refresh: timedelta = _REFRESH) -> None:
        """Hold groups until `stop` is set, re-reading which groups exist every `refresh`."""
        try:
            while not stop.is_set():
                try:
                    await self._refresh()
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("sync.streams_refresh_failed", error=f"{type(exc).__name__}: {exc}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), refresh.total_seconds())
        finally:
            for _, task, quit_ in list(self._held.values()):
                quit_.set()
                task.cancel()
            for _, task, _quit in list(self._held.values()):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._held.clear()

    async def _groups(self) -> list[_Group]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT s.* FROM sync_mailboxes s JOIN connections c ON c.id = s.connection_id
                WHERE c.kind = 'ews' AND c.status <> 'revoked' AND s.state <> 'unsupported'
                ORDER BY s.connection_id, s.mailbox
                """
            )
        by_connection: dict[uuid.UUID, list[SyncRow]] = {}
        for row in rows:
            found = sync_row(row)
            by_connection.setdefault(found.connection_id, []).append(found)
        return [
            _Group(connection_id, index, tuple(members[start : start + MAX_GROUP]))
            for connection_id, members in by_connection.items()
            for index, start in enumerate(range(0, len(members), MAX_GROUP))
        ]

    async def _refresh(self) -> None:
        wanted = {group.key: group for group in await self._groups()}
        for key, (group, task, quit_) in list(self._held.items()):
            current = wanted.get(key)
            if task.done() or current is None or {r.id for r in current.members} != {r.id for r in group.members}:
                quit_.set()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                del self._held[key]
        for key, group in wanted.items():
            if key not in self._held:
                quit_ = asyncio.Event()
                task = asyncio.create_task(self._locked(group, quit_), name=f"calbroker-ews-stream-{key[0]}-{key[1]}")
                self._held[key] = (group, task, quit_)

    async def _locked(self, group: _Group, quit_: asyncio.Event) -> None:
        """Hold the group while its advisory lock is ours (another replica may hold it instead)."""
        async with self._pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", group.lock):
                await quit_.wait()
                return
            try:
                await self._hold(group, quit_)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", group.lock)

    async def _hold(self, group: _Group, quit_: asyncio.Event) -> None:
        async with self._pool.acquire() as conn:
            connection = await find_connection(conn, group.connection_id)
        if (
            connection is None
            or connection.kind is not ConnectionKind.EWS
            or connection.status is ConnectionStatus.REVOKED
        ):
            return
        streaming_refused_until: float | None = None
        loop = asyncio.get_running_loop()
        while not quit_.is_set():
            streaming = self._settings.sync.ews_streaming and (
                streaming_refused_until is None or loop.time() >= streaming_refused_until
            )
            try:
                if streaming:
                    await self._stream(connection, group, quit_)
                else:
                    await self._poll(group, quit_, until=loop.time() + _RETRY_STREAMING.total_seconds())
            except SyncStateExpired as exc:
                # Exchange lost the subscriptions (expired, or its EWS process restarted): subscribe again now.
                log.info("sync.stream_subscriptions_lost", connection_id=str(connection.id), code=exc.upstream_code)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(quit_.wait(), 1.0)
                continue
            except UpstreamThrottled as exc:
                if exc.upstream_code == "ErrorExceededConnectionCount":
                    log.warning(
                        "sync.streaming_refused", connection_id=str(connection.id), mailboxes=len(group.members)
                    )
                    streaming_refused_until = loop.time() + _RETRY_STREAMING.total_seconds()
                    continue
                await self._failed(group, exc)
            except CalbrokerError as exc:
                await self._failed(group, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(quit_.wait(), _BACK_OFF.total_seconds())

    async def _failed(self, group: _Group, error: CalbrokerError) -> None:
        log.warning("sync.stream_failed", connection_id=str(group.connection_id), error=error.slug)
        async with self._pool.acquire() as conn:
            for row in group.members:
                await set_feed(conn, row.id, FeedState.FAILED, error=f"{error.slug}: {error.detail}")

    async def _poll(self, group: _Group, quit_: asyncio.Event, *, until: float) -> None:
        """Polling mode: a round for every member each `ews_poll_every`, the feed kept alive meanwhile."""
        every = self._settings.sync.ews_poll_every
        loop = asyncio.get_running_loop()
        ids = [row.id for row in group.members]
        while not quit_.is_set() and loop.time() < until:
            async with self._pool.acquire() as conn, conn.transaction():
                await extend_feeds(conn, ids, FeedState.POLLING, every * 2)
                for sync_id in ids:
                    await request_round(conn, sync_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(quit_.wait(), every.total_seconds())

    async def _stream(self, connection: Connection, group: _Group, quit_: asyncio.Event) -> None:
        """Subscribe the group, then listen, reconnecting whenever Exchange closes the stream."""
        provider = await self._upstream.provider(connection)
        if not isinstance(provider, EwsProvider):
            return
        stream = provider.stream_group([row.mailbox for row in group.members])
        by_mailbox = {row.mailbox: row for row in group.members}
        ids: dict[str, str] = {}
        try:
            ids, failed = await _in_own_thread(stream.subscribe)
            await self._record(ids, failed, by_mailbox)
            if not ids:
                raise next(iter(failed.values()))
            sync_ids = {subscription: by_mailbox[mailbox].id for mailbox, subscription in ids.items()}
            # Changes from before the subscriptions existed: the copy is stale until these rounds.
            await self._catch_up(sync_ids, stale=True)
            while not quit_.is_set():
                await self._listen(stream, sync_ids, quit_)
                if not quit_.is_set():
                    await self._catch_up(sync_ids, stale=False)
        finally:
            # Blocking calls, off the event loop: stopping closes sockets another thread may be reading.
            await _in_own_thread(stream.stop)
            subscribed = dict(ids)
            await _in_own_thread(lambda: stream.unsubscribe(subscribed))
            await _in_own_thread(stream.close)

    async def _catch_up(self, sync_ids: dict[str, uuid.UUID], *, stale: bool) -> None:
        """A round for every member after a (re)connect; `stale` when events may have been missed."""
        async with self._pool.acquire() as conn, conn.transaction():
            await extend_feeds(conn, list(sync_ids.values()), FeedState.ACTIVE, _FEED_GRACE)
            for sync_id in sync_ids.values():
                await request_round(conn, sync_id, notified=stale)

    async def _listen(self, stream: StreamGroup, sync_ids: dict[str, uuid.UUID], quit_: asyncio.Event) -> None:
        """One GetStreamingEvents, following notifications until Exchange closes it (or we quit)."""
        loop = asyncio.get_running_loop()
        notified: asyncio.Queue[str] = asyncio.Queue()
        debounce = self._settings.sync.debounce

        received = self._upstream.registry.metrics.notifications.labels("ews")

        async def consume() -> None:
            while True:
                subscription = await notified.get()
                received.inc()
                sync_id = sync_ids.get(subscription)
                if sync_id is not None:
                    async with self._pool.acquire() as conn, conn.transaction():
                        await request_round(conn, sync_id, notified=True, delay=debounce)
                notified.task_done()

        async def beat() -> None:
            while True:
                await asyncio.sleep(_BEAT.total_seconds())
                async with self._pool.acquire() as conn:
                    await extend_feeds(conn, list(sync_ids.values()), FeedState.ACTIVE, _FEED_GRACE)

        def deliver(subscription: str) -> None:
            loop.call_soon_threadsafe(notified.put_nowait, subscription)

        minutes = self._settings.sync.ews_stream_minutes
        helpers = [asyncio.create_task(consume()), asyncio.create_task(beat())]
        listening: asyncio.Future[None] = _in_own_thread(lambda: stream.listen(list(sync_ids), minutes, deliver))
        quitting: asyncio.Future[bool] = asyncio.ensure_future(quit_.wait())
        try:
            await asyncio.wait([listening, quitting], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
            if not listening.done():
                await _in_own_thread(stream.stop)
            await listening
            await notified.join()
        finally:
            if not listening.done():  # cancelled: the reading thread must not outlive the group
                threading.Thread(target=stream.stop, name="calbroker-ews-stop", daemon=True).start()
            quitting.cancel()
            for helper in helpers:
                helper.cancel()
            for helper in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await helper

    async def _record(self, ids: dict[str, str], failed: dict[str, CalbrokerError], rows: dict[str, SyncRow]) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            for mailbox, subscription in ids.items():
                await set_feed(conn, rows[mailbox].id, FeedState.ACTIVE, subscription_id=subscription)
            for mailbox, error in failed.items():
                # Retried whenever the group subscribes again; read live meanwhile.
                await set_feed(conn, rows[mailbox].id, FeedState.FAILED, error=f"{error.slug}: {error.detail}")


def _in_own_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run a blocking call in a daemon thread of its own (a stream may hang for half an hour)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task as is
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=run, name="calbroker-ews-stream", daemon=True).start()
    return future


def _settle(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
