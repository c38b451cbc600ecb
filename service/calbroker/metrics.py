"""The Prometheus metrics of one calbroker process, on a registry of its own.

`open_services` makes one `Metrics` per process and hands it down (providers, schedule reads,
sync rounds); nothing registers on prometheus_client's global registry, so two configurations in
one process (tests, the demo's API and worker) never collide. The API's `/metrics` and the
worker's metrics endpoint serve `registry`, after `services.telemetry.refresh_gauges` has read
the gauges that live in PostgreSQL (connections by status, queue depth, sync freshness).

Labels are closed sets: provider (`graph`, `ews`), the upstream operation (a Graph route
template or an EWS operation name), outcome (`ok` or the error's problem slug).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Call", "Metrics", "outcome_of"]

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def outcome_of(exc: BaseException | None) -> str:
    """`ok`, the problem slug of a calbroker error, or `error` for anything else."""
    if exc is None:
        return "ok"
    if isinstance(exc, TimeoutError):
        return "upstream-timeout"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    slug = getattr(exc, "slug", None)
    return slug if isinstance(slug, str) else "error"


class Call:
    """One upstream request being measured; set `outcome` when the answer, not an exception, says how it went."""

    __slots__ = ("outcome",)

    def __init__(self) -> None:
        self.outcome: str | None = None


class Metrics:
    """Upstream calls, throttling, tokens, coalescing, sync, queue and webhook metrics of one process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.upstream_calls = Counter(
            "calbroker_upstream_calls",
            "Requests to Microsoft (each attempt), by provider, operation and outcome.",
            ["provider", "operation", "outcome"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "calbroker_upstream_call_duration_seconds",
            "Time one request to Microsoft took, by provider, operation and outcome.",
            ["provider", "operation", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.throttle_waits = Counter(
            "calbroker_upstream_throttle_waits",
            "Waits before a retry because Microsoft asked for one (429/503 Retry-After, ErrorServerBusy).",
            ["provider"],
            registry=r,
        )
        self.throttle_wait_seconds = Counter(
            "calbroker_upstream_throttle_wait_seconds",
            "Seconds spent waiting before retries Microsoft asked for.",
            ["provider"],
            registry=r,
        )
        self.token_refreshes = Counter(
            "calbroker_token_refreshes",
            "Access tokens fetched from Microsoft Entra ID (not served from msal's cache), by outcome.",
            ["outcome"],
            registry=r,
        )
        self.coalesced_reads = Counter(
            "calbroker_coalesced_schedule_reads",
            "Live schedule reads answered by an identical read already in flight (no upstream call of their own).",
            registry=r,
        )
        self.connections = Gauge(
            "calbroker_connections",
            "Connections by status (active, degraded, revoked, superseded), read from PostgreSQL at scrape.",
            ["status"],
            registry=r,
        )
        self.sync_rounds = Counter(
            "calbroker_sync_rounds",
            "Sync rounds of one mailbox run by this worker, by kind (full, incremental) and outcome.",
            ["kind", "outcome"],
            registry=r,
        )
        self.sync_round_latency = Histogram(
            "calbroker_sync_round_duration_seconds",
            "Time one sync round took (upstream reads and the write of the copy).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.notifications = Counter(
            "calbroker_change_notifications",
            "Change signals received: Graph notifications (by the API's receiver), EWS stream events (by the worker).",
            ["source"],
            registry=r,
        )
        self.synced_mailboxes = Gauge(
            "calbroker_synced_mailboxes",
            "Synced mailboxes by state (pending, active, failed, unsupported), read from PostgreSQL at scrape.",
            ["state"],
            registry=r,
        )
        self.stale_mailboxes = Gauge(
            "calbroker_sync_stale_mailboxes",
            "Active synced mailboxes without a round within CALBROKER_SYNC_MAX_AGE_S (read live), at scrape.",
            registry=r,
        )
        self.oldest_round_age = Gauge(
            "calbroker_sync_oldest_round_age_seconds",
            "Age of the oldest last round among active synced mailboxes, read at scrape (0: none synced).",
            registry=r,
        )
        self.queue_jobs = Gauge(
            "calbroker_queue_jobs",
            "Jobs in the PostgreSQL queue by job name and status (queued, picked), read at scrape.",
            ["job", "status"],
            registry=r,
        )

        self.channel_attempts = Counter(
            "calbroker_channel_attempts",
            "Webhook delivery attempts made by this worker, by outcome (delivered, retry, failed, gone).",
            ["outcome"],
            registry=r,
        )
        self.channel_attempt_latency = Histogram(
            "calbroker_channel_attempt_duration_seconds",
            "Time from sending a webhook to its answer (or its failure), by outcome.",
            ["outcome"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
            registry=r,
        )
        self.channel_undelivered = Gauge(
            "calbroker_channel_undelivered",
            "Deliveries of active channels not delivered yet (waiting or being attempted), read at scrape.",
            registry=r,
        )
        self.channel_oldest_undelivered = Gauge(
            "calbroker_channel_oldest_undelivered_seconds",
            "How long the oldest undelivered delivery of an active channel has waited, read at scrape.",
            registry=r,
        )

    @contextmanager
    def upstream_call(self, provider: str, operation: str) -> Iterator[Call]:
        """Count and time one request to Microsoft: the outcome is what the block sets on the `Call`,
        else the error it raised (its problem slug), else `ok`."""
        call = Call()
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            yield call
        except BaseException as exc:
            failure = exc
            raise
        finally:
            outcome = call.outcome or outcome_of(failure)
            self.upstream_calls.labels(provider, operation, outcome).inc()
            self.upstream_latency.labels(provider, operation, outcome).observe(time.perf_counter() - started)

    def throttled(self, provider: str, wait_s: float) -> None:
        self.throttle_waits.labels(provider).inc()
        self.throttle_wait_seconds.labels(provider).inc(wait_s)
