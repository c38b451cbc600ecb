"""`/v1/connections/{id}/sync`: which of a connection's mailboxes calbroker keeps in sync, and how each fares.

A synced mailbox is answered from calbroker's copy when that copy is provably fresh, and live
otherwise; nothing is synced until an application asks for it here.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import get, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from calbroker.api.auth import Caller
from calbroker.api.problems import V1_PROBLEMS, embedded_problem, problem_response
from calbroker.api.wire import Body, Response
from calbroker.domain import errors
from calbroker.domain.sync import FeedState, SyncState
from calbroker.services import Services
from calbroker.services.sync import ScopeReport
from calbroker.store.sync_state import ScopeMode, SyncRow

__all__ = ["get_sync", "put_sync"]


class SyncScopeIn(Body):
    mode: Annotated[
        Literal["off", "all", "list"],
        msgspec.Meta(
            description="\"all\": every mailbox in the connection's scope (its allow-list, else the tenant's "
            'directory over Graph); "list": the mailboxes listed; "off": none.'
        ),
    ]
    mailboxes: Annotated[list[str], msgspec.Meta(description='With mode "list": the mailboxes to sync.')] = (
        msgspec.field(default_factory=list)
    )


class FeedOut(Response):
    state: FeedState
    expires_at: datetime | None = None


class SyncedMailboxOut(Response):
    mailbox: str
    state: SyncState
    feed: FeedOut
    synced_at: datetime | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    problem: dict[str, Any] | None = None


class SyncOut(Response):
    connection_id: uuid.UUID
    mode: Literal["off", "all", "list"]
    limit: int
    mailboxes: list[SyncedMailboxOut]
    listed: list[str] | None = None
    applied_at: datetime | None = None
    problem: str | None = None

    @classmethod
    def from_domain(cls, report: ScopeReport) -> SyncOut:
        scope = report.scope
        return cls(
            connection_id=report.connection.id,
            mode=scope.mode.value if scope is not None else "off",
            limit=report.limit,
            listed=list(scope.mailboxes) if scope is not None and scope.mode is ScopeMode.LIST else None,
            applied_at=scope.applied_at if scope is not None else None,
            problem=scope.problem if scope is not None else None,
            mailboxes=[_mailbox_out(row) for row in report.mailboxes],
        )


_PROBLEMS: dict[str, type[errors.CalbrokerError]] = {
    "subscription-limit": errors.SubscriptionLimitReached,
    "mailbox-out-of-scope": errors.MailboxOutOfScope,
    "mailbox-not-found": errors.MailboxNotFound,
    "credentials-rejected": errors.CredentialsRejected,
    "upstream-throttled": errors.UpstreamThrottled,
    "upstream-unavailable": errors.UpstreamUnavailable,
    "upstream-timeout": errors.UpstreamTimeout,
    "sync-state-expired": errors.SyncStateExpired,
}


def _problem(reason: str | None, mailbox: str) -> dict[str, Any] | None:
    """A stored `slug: detail` reason as the problem document it was."""
    if not reason:
        return None
    slug, _, detail = reason.partition(": ")
    kind = _PROBLEMS.get(slug, errors.UpstreamRejected)
    error = kind(detail or reason, mailbox=mailbox) if issubclass(kind, errors.MailboxError) else kind(detail or reason)
    return embedded_problem(error)


def _mailbox_out(row: SyncRow) -> SyncedMailboxOut:
    return SyncedMailboxOut(
        mailbox=row.mailbox,
        state=row.state,
        feed=FeedOut(state=row.feed, expires_at=row.subscription_expires_at),
        synced_at=row.synced_at,
        window_start=row.window.start if row.window else None,
        window_end=row.window.end if row.window else None,
        problem=_problem(row.subscription_error, row.mailbox) or _problem(row.last_error, row.mailbox),
    )


_RESPONSES = {
    **V1_PROBLEMS,
    404: problem_response(
        "No connection with this id belongs to your application (`/problems/not-found`)",
        "not-found",
        "no connection 6f1c2a9e-3d4b-4e8f-9a7c-2b1d0e5f4a3c",
    ),
}


@get(
    "/connections/{connection_id:uuid}/sync",
    tags=["connections"],
    summary="Synced mailboxes of a connection",
    responses=_RESPONSES,
)
async def get_sync(
    connection_id: FromPath[uuid.UUID], caller: NamedDependency[Caller], services: NamedDependency[Services]
) -> SyncOut:
    """The connection's sync scope and, per synced mailbox: state, change feed, last round, problem."""
    return SyncOut.from_domain(await services.sync.scopes.report(caller.application.id, connection_id))


@put(
    "/connections/{connection_id:uuid}/sync",
    tags=["connections"],
    summary="Choose which mailboxes of a connection are synced",
    responses=_RESPONSES,
)
async def put_sync(
    connection_id: FromPath[uuid.UUID],
    data: JSONBody[SyncScopeIn],
    caller: NamedDependency[Caller],
    services: NamedDependency[Services],
) -> SyncOut:
    """Replace the scope; the worker then adds and retires mailboxes (each new one starts `pending`).

    Every listed mailbox must belong to this connection (its domains and allow-list); at most
    `limit` mailboxes are synced per connection.
    """
    mode = None if data.mode == "off" else ScopeMode(data.mode)
    report = await services.sync.scopes.set(caller.application.id, connection_id, mode, data.mailboxes)
    return SyncOut.from_domain(report)
