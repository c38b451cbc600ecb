"""Liveness, readiness and Prometheus metrics for orchestrators and operators."""

from __future__ import annotations

import asyncio
from typing import Annotated

import msgspec
from litestar import Response, get
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from calbroker.api.dependencies import provide_services
from calbroker.api.problems import Problem
from calbroker.api.telemetry import HttpMetrics
from calbroker.domain.errors import CalbrokerError
from calbroker.services import Services, refresh_gauges
from calbroker.store.migrations import applied_versions, available_migrations
from calbroker.store.secrets import secrets_sealed_without

__all__ = ["healthz", "metrics", "readyz"]


class NotReady(CalbrokerError):
    """A readiness check failed; the problem document lists every check."""

    slug = "not-ready"
    retry_after = 5.0

    def __init__(self, checks: dict[str, str], *, master_keys: list[str] | None = None) -> None:
        super().__init__("; ".join(f"{name}: {state}" for name, state in checks.items() if state != "ok"))
        self.checks = checks
        self.master_keys = master_keys or []

    def extensions(self) -> dict[str, object]:
        return {"checks": self.checks, "master_keys": self.master_keys}


class Health(msgspec.Struct):
    """The process is up."""

    status: Annotated[str, msgspec.Meta(description='Always "ok"')]


class Readiness(msgspec.Struct):
    """Every readiness check passed."""

    status: Annotated[str, msgspec.Meta(description='Always "ready"')]
    checks: Annotated[dict[str, str], msgspec.Meta(description='Each check (database, migrations, keyring) and "ok"')]
    master_keys: Annotated[
        list[str],
        msgspec.Meta(description="The master key ids this server has, the sealing one first (ids only: not secret)"),
    ]


@get("/healthz", operation_id="getHealth", tags=["operations"], summary="Liveness: the process is up")
async def healthz() -> Health:
    return Health(status="ok")


async def _database_checks(services: Services) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2), services.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
            checks["database"] = "ok"
            applied = await applied_versions(conn)
    except Exception as exc:  # noqa: BLE001 - readiness reports failures, it never raises
        checks["database"] = f"unreachable: {type(exc).__name__}"
        checks["migrations"] = "unknown"
        return checks
    wanted = {m.version for m in available_migrations()}
    missing = sorted(wanted - set(applied))
    checks["migrations"] = "ok" if not missing else f"pending: {missing}"
    return checks


async def _keyring_check(services: Services, *, database_ok: bool) -> str:
    """The keyring seals and opens, and has every master key a stored secret is sealed with."""
    keyring = services.keyring
    try:
        keyring.refresh()
        probe = keyring.seal(b"ready", purpose="readyz", record_id="probe")
        if keyring.open(probe, purpose="readyz", record_id="probe") != b"ready":
            return "failed"
    except Exception as exc:  # noqa: BLE001 - readiness reports failures, it never raises
        return f"failed: {type(exc).__name__}: {exc}"
    if not database_ok:
        return "ok"
    try:
        async with asyncio.timeout(2), services.pool.acquire() as conn:
            missing = await secrets_sealed_without(conn, keyring.kids)
    except Exception as exc:  # noqa: BLE001
        return f"unknown: {type(exc).__name__}"
    if not missing:
        return "ok"
    count = sum(missing.values())
    kids = ", ".join(repr(kid) for kid in missing)
    return f"cannot open {count} stored secret(s): sealed with master key(s) {kids}, which this server does not have"


@get(
    "/readyz",
    operation_id="getReadiness",
    tags=["operations"],
    summary="Readiness: database, migrations and keyring (every stored secret can be opened)",
    responses={
        503: ResponseSpec(
            Problem,
            description="A check failed (`/problems/not-ready`); `checks` says which",
            media_type="application/problem+json",
            generate_examples=False,
        )
    },
)
async def readyz(state: State) -> Readiness:
    try:
        services = provide_services(state)
    except RuntimeError:
        checks = {"database": "not started", "migrations": "unknown", "keyring": "not loaded"}
        raise NotReady(checks) from None
    checks = await _database_checks(services)
    checks["keyring"] = await _keyring_check(services, database_ok=checks["database"] == "ok")
    if any(value != "ok" for value in checks.values()):
        raise NotReady(checks, master_keys=list(services.keyring.kids))
    return Readiness(status="ready", checks=checks, master_keys=list(services.keyring.kids))


@get("/metrics", operation_id="getMetrics", tags=["operations"], summary="Prometheus metrics", media_type="text/plain")
async def metrics(state: State) -> Response[bytes]:
    """HTTP requests, upstream calls, throttling, tokens, coalesced reads, and the deployment's
    gauges (connections by status, synced mailboxes, queue depth) read from PostgreSQL now."""
    http_metrics: HttpMetrics = state["http_metrics"]
    body = generate_latest(http_metrics.registry)
    try:
        services = provide_services(state)
    except RuntimeError:  # not started (or stopping): the HTTP metrics only
        return Response(body, media_type=CONTENT_TYPE_LATEST)
    await refresh_gauges(services)
    return Response(body + generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
