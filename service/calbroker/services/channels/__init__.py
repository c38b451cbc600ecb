"""Channels: signed webhooks telling applications what changed, delivered at least once.

    notices.py     what happened → notices in the outbox, in the producer's transaction (sync rounds,
                   connection health), and the delivery jobs they queue
    deliveries.py  the worker's side: claim due deliveries, attempt, record, schedule retries; metrics
    flavours.py    a delivery's body and signature per channel flavour (Standard Webhooks)
    registry.py    create (with a verification delivery), rotate, enable, retry, replay

The API manages channels through `registry`; producers publish through `notices`; the worker runs
`deliveries`.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from calbroker.config import Settings
from calbroker.domain.channels import Clock, system_clock
from calbroker.metrics import Metrics
from calbroker.services.callbacks import AppCallbacks
from calbroker.services.channels.deliveries import Deliveries, RunSummary
from calbroker.services.channels.flavours import FLAVOURS, Flavour, Outgoing, StandardWebhooks, new_secret
from calbroker.services.channels.notices import (
    DELIVER_JOB,
    ChannelJob,
    Notices,
    decode_channel_job,
    mailbox_key,
    queue_runs,
)
from calbroker.services.channels.registry import ChannelRegistry, CreatedChannel, RotatedSecret
from calbroker.store.keyring import Keyring

__all__ = [
    "DELIVER_JOB",
    "FLAVOURS",
    "ChannelJob",
    "ChannelRegistry",
    "Channels",
    "CreatedChannel",
    "Deliveries",
    "Flavour",
    "Notices",
    "Outgoing",
    "RotatedSecret",
    "RunSummary",
    "StandardWebhooks",
    "decode_channel_job",
    "mailbox_key",
    "new_secret",
    "queue_runs",
]


@dataclass(frozen=True, slots=True)
class Channels:
    """The channel services of one process, built together over its pool, keyring and callback session."""

    notices: Notices
    deliveries: Deliveries
    registry: ChannelRegistry

    @classmethod
    def build(
        cls,
        pool: asyncpg.Pool,
        keyring: Keyring,
        settings: Settings,
        callbacks: AppCallbacks,
        metrics: Metrics,
        *,
        clock: Clock = system_clock,
    ) -> Channels:
        notices = Notices(keyring, settings)
        return cls(
            notices=notices,
            deliveries=Deliveries(pool, keyring, settings, callbacks, metrics),
            registry=ChannelRegistry(
                pool=pool, keyring=keyring, settings=settings, callbacks=callbacks, notices=notices, clock=clock
            ),
        )
