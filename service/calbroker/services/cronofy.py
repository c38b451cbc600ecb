"""What the Cronofy-compatible API needs of the native machinery beyond reads and bookings: push
channels on the channels' outbox (flavour `cronofy`), service-account authorization callbacks on the
same outbox (flavour `cronofy_callback`), and `last_modified` reads from the sync's change feed.

A Cronofy channel is an outbox channel answering to one account: it takes `mailbox.changed` of the
account's mailbox (Cronofy's `change`) and `connection.disconnected` of its connection (Cronofy's
`profile_disconnected`), and is signed with the application's client secret, so deliveries, retries,
the delivery log and the URL policy are the native ones. Changes are only known for synced mailboxes,
so opening a channel adds the account's mailbox to its connection's sync list.

A service-account callback is written to the outbox in the transaction that issues its code, so it
survives the process that answered the 202 and is retried like any delivery. Each callback URL of an
application gets one channel of its own, which takes no notices (only the callbacks sent to it).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from calbroker.domain.channels import ChannelFilter, Notice, NoticeType
from calbroker.services.bundle import Services
from calbroker.services.channels.flavours import CRONOFY_CHANNEL_PREFIX, CronofyCallback, CronofyPush
from calbroker.services.sync import read_changes
from calbroker.store.busy_cache import MailboxChanges
from calbroker.store.channels import NewChannel, create_channel, delete_channel
from calbroker.store.cronofy import (
    Account,
    CronofyChannel,
    CronofyClient,
    account_channel,
    client_secret,
    link_channel,
    same_channel,
)
from calbroker.store.database import Connection as DbConnection
from calbroker.store.events import managed_events
from calbroker.store.sync_state import ScopeMode, get_scope, sync_ids

__all__ = [
    "AccountChanges",
    "close_push_channel",
    "open_push_channel",
    "queue_authorization_callback",
    "read_account_changes",
]

_ACTOR = "cronofy"
_TYPES = frozenset({NoticeType.MAILBOX_CHANGED, NoticeType.CONNECTION_DISCONNECTED})
_NO_LIMIT = 2**31
"""Callback channels are made by calbroker, one per callback URL: they do not count against the limit."""


async def open_push_channel(
    services: Services,
    client: CronofyClient,
    account: Account,
    callback_url: str,
    calendar_ids: Sequence[str],
    *,
    only_managed: bool,
) -> CronofyChannel:
    """The account's channel to `callback_url` with these filters: an identical one if it exists (as
    Cronofy answers), else a new one whose `verification` notification is queued with it."""
    url = await services.callbacks.check(callback_url, field="callback_url")
    async with services.pool.acquire() as conn:
        existing = await same_channel(conn, account, url, calendar_ids, only_managed)
    if existing is not None:
        return existing
    await _sync_mailbox(services, account)
    application_id = client.application_id
    wanted = ChannelFilter(
        types=_TYPES,
        mailboxes=frozenset({account.mailbox}),
        connection_ids=frozenset({account.connection_id}),
        only_managed=only_managed,
    )
    async with services.pool.acquire() as conn, conn.transaction():
        secret = await client_secret(conn, services.keyring, application_id)
        channel = await create_channel(
            conn,
            services.keyring,
            NewChannel(application_id, url, wanted, CronofyPush.name),
            secret=secret,
            limit=services.settings.channels.max_channels,
            actor=_ACTOR,
        )
        found = await link_channel(
            conn,
            channel.id,
            CRONOFY_CHANNEL_PREFIX + channel.id.hex,
            account,
            callback_url=url,
            calendar_ids=calendar_ids,
            only_managed=only_managed,
        )
        await services.channels.notices.publish(
            conn,
            application_id,
            Notice(NoticeType.CHANNEL_VERIFICATION, {}, order_key="channel"),
            channel_id=channel.id,
        )
    return found


async def close_push_channel(services: Services, client: CronofyClient, account: Account, public_id: str) -> None:
    """Remove the account's channel with its outbox (nothing more is attempted)."""
    async with services.pool.acquire() as conn, conn.transaction():
        found = await account_channel(conn, account, public_id)
        await delete_channel(conn, client.application_id, found.channel_id, actor=_ACTOR)


async def queue_authorization_callback(
    conn: DbConnection,
    services: Services,
    client: CronofyClient,
    callback_url: str,
    authorization: Mapping[str, object],
    *,
    mailbox: str,
) -> None:
    """Put `{"authorization": …}` on the outbox for `callback_url` (in the caller's transaction); the
    authorization (a code) is sealed, and callbacks about one mailbox go out in order."""
    channel_id = await _callback_channel(conn, services, client, callback_url)
    await services.channels.notices.publish(
        conn,
        client.application_id,
        Notice(
            NoticeType.CHANNEL_VERIFICATION,
            {"callback": "service_account_authorization", "mailbox": mailbox, "granted": "code" in authorization},
            order_key=f"authorization:{mailbox}",
            sealed={"authorization": dict(authorization)},
        ),
        channel_id=channel_id,
    )


async def _callback_channel(
    conn: DbConnection, services: Services, client: CronofyClient, callback_url: str
) -> uuid.UUID:
    """The application's callback channel for `callback_url`: active again if a 410 had disabled it
    (the application asked for this callback now), created on first use."""
    found = await conn.fetchrow(
        "SELECT id, state FROM channels WHERE application_id = $1 AND flavour = $2 AND callback_url = $3",
        client.application_id,
        CronofyCallback.name,
        callback_url,
    )
    if found is not None:
        if found["state"] != "active":
            await conn.execute(
                """UPDATE channels SET state = 'active', disabled_reason = NULL, disabled_at = NULL,
                       failing_since = NULL, updated_at = now() WHERE id = $1""",
                found["id"],
            )
        channel_id: uuid.UUID = found["id"]
        return channel_id
    channel = await create_channel(
        conn,
        services.keyring,
        # Verification is never fanned out: a channel taking only that type takes no notices at all.
        NewChannel(
            client.application_id,
            callback_url,
            ChannelFilter(types=frozenset({NoticeType.CHANNEL_VERIFICATION})),
            CronofyCallback.name,
        ),
        secret=await client_secret(conn, services.keyring, client.application_id),
        limit=_NO_LIMIT,
        actor=_ACTOR,
    )
    return channel.id


async def _sync_mailbox(services: Services, account: Account) -> None:
    """Add the account's mailbox to its connection's sync list unless it is synced (or wanted) already.

    The list is read and written back under a lock of the connection's, so channels opened at once for
    two mailboxes of one connection both get theirs added.
    """
    async with services.pool.acquire() as lock:
        key = int.from_bytes(
            hashlib.sha256(b"calbroker.cronofy.sync:" + account.connection_id.bytes).digest()[:8], "big", signed=True
        )
        await lock.execute("SELECT pg_advisory_lock($1)", key)
        try:
            synced = await sync_ids(lock, account.connection_id, [account.mailbox])
            scope = await get_scope(lock, account.connection_id)
            if account.mailbox in synced or (scope is not None and scope.mode is ScopeMode.ALL):
                return
            listed = list(scope.mailboxes) if scope is not None else []
            if account.mailbox in listed:
                return
            await services.sync.scopes.set(
                account.application_id, account.connection_id, ScopeMode.LIST, [*listed, account.mailbox]
            )
        finally:
            await lock.execute("SELECT pg_advisory_unlock($1)", key)


@dataclass(frozen=True, slots=True)
class AccountChanges:
    """The change feed of an account's mailbox since an instant: what was updated, what was deleted,
    and the event_id of each item this application booked."""

    feed: MailboxChanges
    updated: tuple[str, ...]
    deleted: tuple[str, ...]
    event_ids: dict[str, str]


async def read_account_changes(services: Services, account: Account, since: datetime) -> AccountChanges:
    """Every item of the account's mailbox changed since `since` (its latest change wins), from the
    sync's change feed; a 422 on `last_modified` when the feed cannot answer for that instant."""
    feed = await read_changes(
        services.pool,
        account.application_id,
        account.mailbox,
        since,
        field="last_modified",
        unsynced_field="last_modified",
        to_sync="create a push channel for the account (which syncs it), or ask the operator to sync it",
        instead="read without last_modified",
        whole_seconds=True,  # Cronofy's times are whole seconds (a `changes_since` is floored)
    )
    latest: dict[str, bool] = {}
    for entry in feed.changes:
        for upstream_id in (*entry.changed, *entry.freed):
            latest.pop(upstream_id, None)
            latest[upstream_id] = False
        for upstream_id in entry.removed:
            latest.pop(upstream_id, None)
            latest[upstream_id] = True
    touched = list(latest)
    async with services.pool.acquire() as conn:
        copies = await managed_events(conn, account.application_id, touched, [])
    event_ids = {u: e for u in touched if (e := copies.event_id(u, None, None)) is not None}
    return AccountChanges(
        feed,
        tuple(u for u, gone in latest.items() if not gone),
        tuple(u for u, gone in latest.items() if gone),
        event_ids,
    )
