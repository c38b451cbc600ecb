"""Liveness, readiness and Prometheus metrics for orchestrators and operators."""

from __future__ import annotations

import asyncio

import msgspec
from litestar import Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from calbroker.api.problems import CATALOGUE, problem_type
from calbroker.api.services import Services, provide_services
from calbroker.api.telemetry import HttpMetrics
from calbroker.store.migrations import applied_versions, available_migrations

__all__ = ["healthz", "metrics", "readyz"]


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: str
    checks: dict[str, str]


@get("/healthz", tags=["operations"], summary="Liveness: the process is up")
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


@get("/readyz", tags=["operations"], summary="Readiness: database, migrations and keyring")
async def readyz(state: State) -> Response[Readiness | dict[str, object]]:
    try:
        services = provide_services(state)
    except RuntimeError:
        checks = {"database": "not started", "migrations": "unknown", "keyring": "not loaded"}
    else:
        checks = await _database_checks(services)
        try:
            probe = services.keyring.seal(b"ready", purpose="readyz", record_id="probe")
            ok = services.keyring.open(probe, purpose="readyz", record_id="probe") == b"ready"
            checks["keyring"] = "ok" if ok else "failed"
        except Exception as exc:  # noqa: BLE001
            checks["keyring"] = f"failed: {type(exc).__name__}"
    if all(value == "ok" for value in checks.values()):
        return Response(Readiness(status="ready", checks=checks))
    problem = CATALOGUE["not-ready"]
    body: dict[str, object] = {
        "type": problem_type(problem.slug),
        "title": problem.title,
        "status": problem.status,
        "detail": "; ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok"),
        "checks": checks,
    }
    return Response(body, status_code=503, media_type="application/problem+json")


@get("/metrics", tags=["operations"], summary="Prometheus metrics", media_type="text/plain")
async def metrics(state: State) -> Response[bytes]:
    http_metrics: HttpMetrics = state["http_metrics"]
    return Response(generate_latest(http_metrics.registry), media_type=CONTENT_TYPE_LATEST)
