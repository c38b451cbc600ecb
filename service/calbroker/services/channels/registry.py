"""Channels as applications manage them: create (with a verification delivery), rotate the secret,
re-enable, retry one delivery, replay a time range.

Each operation composes the URL policy, the vault, the outbox and the job queue; plain reads
(list, get, the delivery log) are the store's and the API calls it directly.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from calbroker.config import Settings
from calbroker.domain.channels import ChannelFilter, ChannelState, Clock, Notice, NoticeType
from calbroker.domain.errors import Conflict, InvalidRequest, NotFound
from calbroker.services.callbacks import AppCallbacks
from calbroker.services.channels.flavours import FLAVOURS
from calbroker.services.channels.notices import Notices, queue_runs
from calbroker.store.channels import (
    Channel,
    NewChannel,
    add_secret,
    create_channel,
    get_channel,
    set_channel_state,
)
from calbroker.store.connections import list_connections
from calbroker.store.keyring import Keyring
from calbroker.store.outbox import Message, replay_since, retry_message

__all__ = ["ChannelRegistry", "CreatedChannel", "RotatedSecret"]

_ACTOR = "api"


@dataclass(frozen=True, slots=True, repr=False)
class CreatedChannel:
    """A channel as created: the only moment its signing secret is shown."""

    channel: Channel
    secret: str

    def __repr__(self) -> str:
        return f"CreatedChannel(channel={self.channel.id}, secret=<redacted>)"


@dataclass(frozen=True, slots=True, repr=False)
class RotatedSecret:
    secret: str
    previous_retires_at: datetime

    def __repr__(self) -> str:
        return f"RotatedSecret(previous_retires_at={self.previous_retires_at}, secret=<redacted>)"


class ChannelRegistry:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        keyring: Keyring,
        settings: Settings,
        callbacks: AppCallbacks,
        notices: Notices,
        clock: Clock,
    ) -> None:
        self._pool = pool
        self._keyring = keyring
        self._settings = settings.channels
        self._callbacks = callbacks
        self._notices = notices
        self._clock = clock

    async def create(
        self, application_id: uuid.UUID, callback_url: str, filter: ChannelFilter, *, flavour: str = "standard"
    ) -> CreatedChannel:
        """Check the URL against the callback policy and the connections against the application's,
        then store the channel with a fresh secret and queue its `channel.verification` delivery."""
        url = await self._callbacks.check(callback_url, field="callback_url")
        kind = FLAVOURS[flavour]
        secret = kind.secret()
        async with self._pool.acquire() as conn, conn.transaction():
            if filter.connection_ids:
                known = {c.id for c in await list_connections(conn, application_id)}
                for index, wanted in enumerate(sorted(filter.connection_ids)):
                    if wanted not in known:
                        raise InvalidRequest.field(
                            f"connection_ids[{index}]", f"{wanted} is not a connection of this application"
                        )
            channel = await create_channel(
                conn,
                self._keyring,
                NewChannel(application_id, url, filter, flavour),
                secret=secret,
                limit=self._settings.max_channels,
                actor=_ACTOR,
            )
            await self._notices.publish(
                conn,
                application_id,
                Notice(NoticeType.CHANNEL_VERIFICATION, {}, order_key="channel"),
                channel_id=channel.id,
            )
        return CreatedChannel(channel, secret)

    async def rotate_secret(self, application_id: uuid.UUID, channel_id: uuid.UUID) -> RotatedSecret:
        """A new secret signs from now on; the previous ones keep signing for the overlap window."""
        overlap = self._settings.rotation_overlap
        async with self._pool.acquire() as conn, conn.transaction():
            channel = await get_channel(conn, application_id, channel_id)
            secret = FLAVOURS[channel.flavour].secret()
            await add_secret(conn, self._keyring, channel.id, secret, retire_others_in=overlap)
            retires: datetime = await conn.fetchval("SELECT now() + $1::interval", overlap)
        return RotatedSecret(secret, retires)

    async def enable(self, application_id: uuid.UUID, channel_id: uuid.UUID) -> Channel:
        """Re-enable a disabled channel: what waited is attempted again at once."""
        async with self._pool.acquire() as conn, conn.transaction():
            channel = await set_channel_state(
                conn, channel_id, ChannelState.ACTIVE, reason=None, actor=_ACTOR, application_id=application_id
            )
            if channel is None:
                raise NotFound(f"no channel {channel_id}")
            await conn.execute(
                """UPDATE channel_messages SET next_attempt_at = LEAST(next_attempt_at, $2)
                   WHERE channel_id = $1 AND state = 'pending'""",
                channel_id,
                self._clock(),
            )
            await queue_runs(conn, [channel_id])
        return channel

    async def retry(self, application_id: uuid.UUID, channel_id: uuid.UUID, message_id: uuid.UUID) -> Message:
        """One more attempt of a delivery, now (same webhook-id)."""
        async with self._pool.acquire() as conn, conn.transaction():
            _require_active(await get_channel(conn, application_id, channel_id))
            message = await retry_message(conn, channel_id, message_id, now=self._clock())
            await queue_runs(conn, [channel_id])
        return message

    async def replay(self, application_id: uuid.UUID, channel_id: uuid.UUID, since: datetime) -> int:
        """Deliver again everything finished since `since` (within the retention), in order."""
        now = self._clock()
        oldest = now - self._settings.retention
        if since < oldest - timedelta(minutes=1):
            kept = self._settings.retention.days
            raise InvalidRequest.field(
                "since", f"deliveries are kept {kept} days: give an instant after {oldest:%Y-%m-%dT%H:%M:%SZ}"
            )
        async with self._pool.acquire() as conn, conn.transaction():
            _require_active(await get_channel(conn, application_id, channel_id))
            count = await replay_since(conn, channel_id, since, now=now, allowed=len(self._settings.schedule))
            await queue_runs(conn, [channel_id])
        return count


def _require_active(channel: Channel) -> None:
    """A disabled channel attempts nothing: a retry or replay asked of it would wait unseen."""
    if channel.state is ChannelState.DISABLED:
        raise Conflict(f"The channel is disabled ({channel.disabled_reason}); enable it first (POST .../enable).")
