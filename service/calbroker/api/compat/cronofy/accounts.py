"""`/v1/userinfo`, `/v1/account`, `/v1/profiles`, `/v1/calendars`: who the token is, and its calendar.

A Cronofy account is one mailbox; its profile is the connection that serves it; its only calendar
is the mailbox's default calendar (the one calbroker reads and books into).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Request, get
from litestar.di import NamedDependency

from calbroker.api.compat.cronofy.auth import account_caller, caller_of
from calbroker.api.compat.cronofy.oauth import provider_name
from calbroker.domain.connections import Connection, ConnectionKind, ConnectionStatus
from calbroker.domain.errors import CalbrokerError, Unauthenticated
from calbroker.domain.intervals import Interval
from calbroker.providers.protocol import Deadline
from calbroker.services import Services, teams_available
from calbroker.store.connections import get_connection, list_connections
from calbroker.store.cronofy import Account, CronofyIds

__all__ = ["account", "calendar_out", "calendars", "profiles", "userinfo"]

_PROTOCOLS = {ConnectionKind.GRAPH: "graph_api", ConnectionKind.EWS: "exchange_web_services"}


def profile_out(connection: Connection, ids: CronofyIds) -> dict[str, Any]:
    return {
        "provider_name": provider_name(connection),
        "provider_protocol": _PROTOCOLS[connection.kind],
        "profile_id": ids.profile(connection.id),
        "profile_name": connection.display_name,
        "profile_connected": connection.status is not ConnectionStatus.REVOKED,
        "profile_initial_sync_required": False,
    }


def calendar_out(account: Account, connection: Connection, ids: CronofyIds, *, conferencing: bool) -> dict[str, Any]:
    """The account's one calendar; read-only when the connection may only read free/busy; `conferencing`
    when `conferencing: {profile_id: "default"}` makes a Teams meeting there (`teams_available`)."""
    return {
        "provider_name": provider_name(connection),
        "profile_id": ids.profile(connection.id),
        "profile_name": connection.display_name,
        "calendar_id": account.calendar_id,
        "calendar_name": "Calendar",
        "calendar_readonly": not connection.access_level.opens_calendars,
        "calendar_deleted": False,
        "calendar_primary": True,
        "calendar_integrated_conferencing_available": conferencing,
        "calendar_attachments_available": False,
        "permission_level": "unrestricted" if connection.access_level.opens_calendars else "free_busy",
    }


async def _connection(services: Services, account: Account) -> Connection:
    async with services.pool.acquire() as conn:
        return await get_connection(conn, account.application_id, account.connection_id)


@get("/userinfo", include_in_schema=False)
async def userinfo(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> dict[str, Any]:
    """OpenID-style userinfo for an account or a service-account token (Cronofy's `cronofy.data`)."""
    caller = caller_of(request)
    grant = caller.grant
    if grant is None:
        raise Unauthenticated("userinfo needs an access token, not the client secret.")
    ids = caller.client.ids
    async with services.pool.acquire() as conn:
        connection = await get_connection(conn, caller.client.application_id, grant.connection_id)
        connections = await list_connections(conn, caller.client.application_id)
    authorization = {"scope": grant.scope, "status": "active"}
    if grant.account is None:
        return {
            "sub": ids.service_account(connection.id),
            "cronofy.type": "service_account",
            "cronofy.data": {
                "authorization": authorization,
                "service_account": {"domains": list(connection.domains), **profile_out(connection, ids)},
            },
        }
    account = grant.account
    return {
        "sub": account.account_id,
        "email": account.mailbox,
        "name": account.mailbox,
        "cronofy.type": "account",
        "cronofy.data": {
            "authorization": authorization,
            "profiles": [
                {
                    **profile_out(connection, ids),
                    "calendars": [
                        calendar_out(
                            account,
                            connection,
                            ids,
                            conferencing=teams_available(connections, connection, account.mailbox),
                        )
                    ],
                }
            ],
        },
    }


@get("/account", include_in_schema=False)
async def account(
    request: Request[Any, Any, Any], services: NamedDependency[Services], deadline: NamedDependency[Deadline]
) -> dict[str, Any]:
    """The mailbox; `default_tzid` is the time zone of its working hours (one free/busy read upstream)."""
    grant, found = account_caller(request, "read_account")
    now = datetime.now(UTC)
    result = (
        await services.schedules.read(
            grant.client.application_id, [found.mailbox], Interval(now, now + timedelta(days=1)), deadline
        )
    )[found.mailbox]
    if isinstance(result, CalbrokerError):
        raise result
    tzid = result.working_hours.tz.key if result.working_hours is not None else "Etc/UTC"
    return {
        "account": {
            "account_id": found.account_id,
            "email": found.mailbox,
            "name": found.mailbox,
            "default_tzid": tzid,
        }
    }


@get("/profiles", include_in_schema=False)
async def profiles(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> dict[str, Any]:
    grant, found = account_caller(request, "read_account")
    connection = await _connection(services, found)
    return {"profiles": [profile_out(connection, grant.client.ids)]}


@get("/calendars", include_in_schema=False)
async def calendars(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> dict[str, Any]:
    grant, found = account_caller(request, "list_calendars")
    async with services.pool.acquire() as conn:
        connection = await get_connection(conn, found.application_id, found.connection_id)
        connections = await list_connections(conn, found.application_id)
    conferencing = teams_available(connections, connection, found.mailbox)
    return {"calendars": [calendar_out(found, connection, grant.client.ids, conferencing=conferencing)]}
