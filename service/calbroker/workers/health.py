"""Connection health: re-verify every connection on a schedule so a broken one says so.

A connection whose secret expired or whose consent was withdrawn would otherwise make
availability go quietly empty; here it turns `degraded` with the reason in `last_error`
(and back to `active` once it works again), and a secret nearing its expiry date is announced
once per threshold (30 and 7 days). Each is written to the audit log and told to the
application's channels in the same transaction: `connection.degraded`, `connection.expiring`, and
`connection.disconnected` once Microsoft has refused the credentials on consecutive checks, with a
fresh authorize link the tenant admin can reconnect through.

`health_checker` runs it for as long as its block lasts (the API lifespan starts it); claims go
through PostgreSQL (`SKIP LOCKED`), so any number of replicas can run it side by side.
`check_due_connections` is the burst mode tests call: one round, then return.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from calbroker.domain.channels import Notice, NoticeType
from calbroker.domain.connections import Connection, ConnectionStatus
from calbroker.domain.errors import (
    CalbrokerError,
    CredentialsRejected,
    CredentialsUnavailable,
    ImpersonationDenied,
    NotFound,
    UpstreamThrottled,
)
from calbroker.domain.secret_expiry import secret_warning
from calbroker.logs import get_logger
from calbroker.providers.protocol import Deadline
from calbroker.services import Services
from calbroker.store.audit import record_audit
from calbroker.store.connect_links import create_link, reconnect_target
from calbroker.store.connection_checks import (
    DueCheck,
    claim_due_checks,
    mark_disconnected,
    record_auth_result,
    record_check,
    record_expiry_warning,
)
from calbroker.store.connections import get_connection, mark_connection_health
from calbroker.store.database import Connection as DbConnection

__all__ = ["HealthRound", "check_due_connections", "health_checker"]

log = get_logger(__name__)

_ACTOR = "health-check"
_BATCH = 50
_CONCURRENCY = 8
_LONGEST_NAP_S = 30.0
DISCONNECTED_AFTER = 2
"""Consecutive checks Microsoft must refuse the credentials before the connection is announced as
disconnected: one refusal may be a blip of Entra ID, two (minutes apart) is the admin's to fix."""
_LINK_LIFETIME = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class HealthRound:
    """What one round did, for the log line and for tests."""

    checked: int = 0
    healthy: int = 0
    degraded: int = 0
    warned: int = 0


@dataclass(frozen=True, slots=True)
class _Outcome:
    checked: bool
    healthy: bool
    warned: bool


async def check_due_connections(services: Services, *, every: timedelta | None = None) -> HealthRound:
    """Check every connection that is due (claimed across replicas), then return."""
    interval = every or timedelta(seconds=services.settings.health_check_interval_s or 300)
    async with services.pool.acquire() as conn:
        due = await claim_due_checks(conn, limit=_BATCH, every=interval)
    if not due:
        return HealthRound()
    limit = asyncio.Semaphore(_CONCURRENCY)

    async def bounded(check: DueCheck) -> _Outcome:
        async with limit:
            return await _check(services, check)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(bounded(check)) for check in due]
    outcomes = [task.result() for task in tasks]
    checked = [o for o in outcomes if o.checked]
    result = HealthRound(
        checked=len(checked),
        healthy=sum(o.healthy for o in checked),
        degraded=sum(not o.healthy for o in checked),
        warned=sum(o.warned for o in outcomes),
    )
    log.info(
        "health.round",
        checked=result.checked,
        healthy=result.healthy,
        degraded=result.degraded,
        warned=result.warned,
    )
    return result


async def _verify(services: Services, connection: Connection, mailbox: str) -> CalbrokerError | None:
    """None when the connection works, else the error that says why it does not."""
    return await services.upstream.verify(connection, mailbox, Deadline.after(services.settings.upstream_deadline_s))


def _notice(
    kind: NoticeType, connection: Connection, sealed: dict[str, object] | None = None, **data: object
) -> Notice:
    return Notice(
        kind,
        {"connection_id": str(connection.id), **data},
        order_key=f"connection:{connection.id}",
        connection_id=connection.id,
        sealed=sealed or {},
    )


async def _announce_disconnected(services: Services, conn: DbConnection, connection: Connection, reason: str) -> None:
    """connection.disconnected, with a fresh single-use authorize link for the same method and access level
    (sealed at rest: the link is a credential); reconnecting through it supersedes this connection."""
    target = await reconnect_target(conn, connection.application_id, connection.id)
    sealed: dict[str, object] = {}
    data: dict[str, object] = {"error": reason, "method": connection.method.value}
    if target is not None:
        issued = await create_link(
            conn,
            application_id=connection.application_id,
            redirect_url=target[0],
            state=target[1],
            methods=[connection.method],
            access_level=connection.access_level,
            expires_in=_LINK_LIFETIME,
            actor=_ACTOR,
        )
        sealed["authorize_url"] = f"{services.settings.public_url.rstrip('/')}/connect/{issued.token}"
        data["authorize_url_expires_at"] = issued.link.expires_at.isoformat()
    await services.channels.notices.publish(
        conn, connection.application_id, _notice(NoticeType.CONNECTION_DISCONNECTED, connection, sealed, **data)
    )
    await record_audit(
        conn,
        actor=_ACTOR,
        action="connection.disconnected",
        application_id=connection.application_id,
        target=str(connection.id),
        details={"error": reason, "authorize_link": target is not None},
    )
    await mark_disconnected(conn, connection.id)


async def _check(services: Services, check: DueCheck) -> _Outcome:
    async with services.pool.acquire() as conn:
        try:
            connection = await get_connection(conn, check.application_id, check.connection_id)
        except NotFound:
            return _Outcome(checked=False, healthy=True, warned=False)
    try:
        failure = await _verify(services, connection, check.test_mailbox)
    except UpstreamThrottled:
        log.info("health.throttled", connection_id=str(connection.id))  # busy, not broken: next round
        return _Outcome(checked=False, healthy=True, warned=False)
    except CredentialsUnavailable as exc:
        # This replica lacks a master key (readiness says so); other replicas may check it fine.
        log.error("health.credentials_unavailable", connection_id=str(connection.id), error=exc.detail)
        return _Outcome(checked=False, healthy=True, warned=False)
    error = failure.detail if failure is not None else None
    refused = isinstance(failure, CredentialsRejected | ImpersonationDenied)
    warning = secret_warning(connection.secret_expires_at, datetime.now(UTC))
    announce = warning is not None and (
        check.expiry_warned_days is None or warning.threshold_days < check.expiry_warned_days
    )
    async with services.pool.acquire() as conn, conn.transaction():
        await mark_connection_health(conn, connection.id, error=error)
        await record_check(conn, connection.id)
        streak = await record_auth_result(conn, connection.id, refused=refused)
        notices = services.channels.notices
        if error is not None and connection.status is ConnectionStatus.ACTIVE:
            await record_audit(
                conn,
                actor=_ACTOR,
                action="connection.degraded",
                application_id=connection.application_id,
                target=str(connection.id),
                details={"error": error},
            )
            await notices.publish(
                conn,
                connection.application_id,
                _notice(NoticeType.CONNECTION_DEGRADED, connection, error=error),
            )
        if error is not None and refused and streak.failures >= DISCONNECTED_AFTER and not streak.announced:
            await _announce_disconnected(services, conn, connection, error)
        elif error is None and connection.status is ConnectionStatus.DEGRADED:
            await record_audit(
                conn,
                actor=_ACTOR,
                action="connection.recovered",
                application_id=connection.application_id,
                target=str(connection.id),
            )
        if announce and warning is not None:
            await record_audit(
                conn,
                actor=_ACTOR,
                action="connection.expiring",
                application_id=connection.application_id,
                target=str(connection.id),
                details={
                    "code": warning.code,
                    "threshold_days": warning.threshold_days,
                    "secret_expires_at": connection.secret_expires_at.isoformat()
                    if connection.secret_expires_at
                    else None,
                },
            )
            await record_expiry_warning(conn, connection.id, warning.threshold_days)
            await notices.publish(
                conn,
                connection.application_id,
                _notice(
                    NoticeType.CONNECTION_EXPIRING,
                    connection,
                    code=warning.code,
                    threshold_days=warning.threshold_days,
                    secret_expires_at=connection.secret_expires_at.isoformat()
                    if connection.secret_expires_at
                    else None,
                    message=warning.message,
                ),
            )
    if error is not None:
        log.warning("health.degraded", connection_id=str(connection.id), error=error)
    return _Outcome(checked=True, healthy=error is None, warned=announce)


async def _run_forever(services: Services, interval_s: float) -> None:
    nap = min(interval_s, _LONGEST_NAP_S)
    while True:
        try:
            await check_due_connections(services, every=timedelta(seconds=interval_s))
        except (OSError, asyncpg.PostgresError) as exc:
            # The database or network blinked; the next round retries. Anything else is a bug
            # and ends the task loudly (its exception is logged when the lifespan closes).
            log.warning("health.round_failed", error=f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(nap)


@contextlib.asynccontextmanager
async def health_checker(services: Services) -> AsyncIterator[None]:
    """Run the periodic checker for the duration of the block (nothing if it is switched off)."""
    interval = services.settings.health_check_interval_s
    if not interval:
        yield
        return
    task = asyncio.create_task(_run_forever(services, interval), name="calbroker-health-checks")
    try:
        yield
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # shutting down: report the bug that stopped the checker
            log.error("health.stopped", exc_info=exc)
