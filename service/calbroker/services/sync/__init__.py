"""Keeping connected calendars in sync, and answering from the synced copy only when it is fresh.

    queue.py     the sync jobs on the queue, and how a round is asked for (debounced, never swallowed)
    rounds.py    one round of one mailbox: provider changes → busy cache, under a per-mailbox lock
    feeds.py     Graph subscriptions (create, renew, recreate) and the notifications they bring
    streams.py   EWS streaming groups (≤ 200 mailboxes, one holder each), polling when refused
    inbox.py     what the receiver does with a POST: mark, store, answer
    scopes.py    which mailboxes are synced (per connection: all in scope, or a list), capped
    maintenance.py  reconciliation, feed renewals, scope re-application, the receiver's heartbeat
    changes.py   reading a mailbox's change feed since an instant (native and Cronofy surfaces)
    cache.py     the copy's two other sides: fresh answers for schedules, calbroker's own writes

The worker runs rounds, feeds and scopes; the API reads through `cache` and stores through `inbox`.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from calbroker.config import Settings
from calbroker.services.sync.cache import BusyCache
from calbroker.services.sync.changes import MAX_FEED_ROUNDS, read_changes
from calbroker.services.sync.feeds import GraphFeeds, NotificationsHandled, hook_url
from calbroker.services.sync.inbox import store_graph_notifications
from calbroker.services.sync.maintenance import CHANGES_KEPT, Reconciled, beat, reapply_scopes, reconcile
from calbroker.services.sync.queue import (
    ConnectionJob,
    JobName,
    MailboxJob,
    NotificationsJob,
    decode_job,
    enqueue,
    request_round,
)
from calbroker.services.sync.rounds import RoundBusy, RoundHook, RoundOutcome, SyncRounds, change_feed
from calbroker.services.sync.scopes import ScopeReport, SyncScopes
from calbroker.services.sync.streams import EwsStreams
from calbroker.services.upstream import Upstream

__all__ = [
    "CHANGES_KEPT",
    "MAX_FEED_ROUNDS",
    "BusyCache",
    "ConnectionJob",
    "EwsStreams",
    "GraphFeeds",
    "JobName",
    "MailboxJob",
    "NotificationsHandled",
    "NotificationsJob",
    "Reconciled",
    "RoundBusy",
    "RoundHook",
    "RoundOutcome",
    "ScopeReport",
    "Sync",
    "SyncRounds",
    "SyncScopes",
    "beat",
    "change_feed",
    "decode_job",
    "enqueue",
    "hook_url",
    "read_changes",
    "reapply_scopes",
    "reconcile",
    "request_round",
    "store_graph_notifications",
]


@dataclass(frozen=True, slots=True)
class Sync:
    """The sync services of one process, built together over its pool and providers."""

    cache: BusyCache
    rounds: SyncRounds
    feeds: GraphFeeds
    scopes: SyncScopes
    streams: EwsStreams

    @classmethod
    def build(
        cls, pool: asyncpg.Pool, upstream: Upstream, settings: Settings, *, on_round: RoundHook | None = None
    ) -> Sync:
        feeds = GraphFeeds(pool, upstream, settings)
        return cls(
            cache=BusyCache(pool, settings),
            rounds=SyncRounds(pool, upstream, settings, on_round=on_round),
            feeds=feeds,
            scopes=SyncScopes(pool, upstream, feeds, settings),
            streams=EwsStreams(pool, upstream, settings),
        )
