"""`/v1/connections/{id}/sync`: which of a connection's mailboxes calbroker keeps in sync, and how each fares.

A synced mailbox is answered from calbroker's copy when that copy is provably fresh, and live
otherwise; nothing is synced until an application asks for it here.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar import get, put
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import Body as BodyParam
from litestar.params import FromPath

from calbroker.api.auth import Caller
from calbroker.api.problems import EmbeddedProblem, embedded_problem, problem_response, problem_responses
from calbroker.api.wire import EMAIL_ITEMS, Body, Email, Response, doc
from calbroker.domain import errors
from calbroker.domain.sync import FeedState, SyncState
from calbroker.services.sync import ScopeReport
from calbroker.store.sync_state import ScopeMode, SyncRow

__all__ = ["get_sync", "put_sync"]


class SyncScopeIn(Body):
    """Which mailboxes of the connection calbroker keeps a synced copy of."""

    mode: Annotated[
        Literal["off", "all", "list"],
        msgspec.Meta(
            description="\"all\": every mailbox in the connection's scope (its allow-list, else the tenant's "
            'directory over Graph); "list": the mailboxes listed; "off": none.'
        ),
    ]
    mailboxes: Annotated[
        list[Email], msgspec.Meta(description='With mode "list": the mailboxes to sync.', extra_json_schema=EMAIL_ITEMS)
    ] = msgspec.field(default_factory=list)


class FeedOut(Response):
    """How Microsoft tells calbroker about changes to the mailbox."""

    state: Annotated[FeedState, doc("The change feed's health (a Graph subscription or an EWS stream)")]
    expires_at: Annotated[datetime | None, doc("When the Graph subscription expires unless renewed")] = None


class SyncedMailboxOut(Response):
    """One synced mailbox and how its copy fares."""

    mailbox: Annotated[str, doc("The mailbox")]
    state: Annotated[SyncState, doc("Where the mailbox's sync stands")]
    feed: Annotated[FeedOut, doc("Its change feed")]
    synced_at: Annotated[datetime | None, doc("When its last round finished")] = None
    window_start: Annotated[datetime | None, doc("Start of the synced window")] = None
    window_end: Annotated[datetime | None, doc("End of the synced window")] = None
    problem: Annotated[EmbeddedProblem | None, doc("Why the copy cannot be used now, if so")] = None


class SyncOut(Response):
    """A connection's sync scope and its synced mailboxes."""

    connection_id: Annotated[uuid.UUID, doc("The connection")]
    mode: Annotated[Literal["off", "all", "list"], doc("What is synced: nothing, every mailbox in scope, or a list")]
    limit: Annotated[int, doc("Most mailboxes synced for one connection")]
    mailboxes: Annotated[list[SyncedMailboxOut], doc("The synced mailboxes")]
    listed: Annotated[list[str] | None, doc('With mode "list": the mailboxes asked for')] = None
    applied_at: Annotated[datetime | None, doc("When the worker last applied the scope")] = None
    problem: Annotated[str | None, doc("Why the scope could not be applied in full, if so")] = None

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


def _problem(reason: str | None, mailbox: str) -> EmbeddedProblem | None:
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


_NOT_FOUND = problem_response(
    "No connection with this id belongs to your application (`/problems/not-found`)",
    ("not-found", "no connection 6f1c2a9e-3d4b-4e8f-9a7c-2b1d0e5f4a3c"),
)


@get(
    "/connections/{connection_id:uuid}/sync",
    operation_id="getConnectionSync",
    tags=["connections"],
    summary="Synced mailboxes of a connection",
    responses=problem_responses(s404=_NOT_FOUND),
)
async def get_sync(connection_id: FromPath[uuid.UUID], caller: NamedDependency[Caller]) -> SyncOut:
    """The connection's sync scope and, per synced mailbox: state, change feed, last round, problem."""
    return SyncOut.from_domain(await caller.services.sync.scopes.report(caller.application.id, connection_id))


@put(
    "/connections/{connection_id:uuid}/sync",
    operation_id="updateConnectionSync",
    tags=["connections"],
    summary="Choose which mailboxes of a connection are synced",
    responses=problem_responses(body=True, s404=_NOT_FOUND),
)
async def put_sync(
    connection_id: FromPath[uuid.UUID],
    data: Annotated[
        SyncScopeIn,
        BodyParam(
            examples=[
                Example(
                    summary="Two mailboxes",
                    value={"mode": "list", "mailboxes": ["adele.vance@contoso.com", "alex.wilber@contoso.com"]},
                )
            ]
        ),
    ],
    caller: NamedDependency[Caller],
) -> SyncOut:
    """Replace the scope; the worker then adds and retires mailboxes (each new one starts `pending`).

    Every listed mailbox must belong to this connection (its domains and allow-list); at most
    `limit` mailboxes are synced per connection.
    """
    mode = None if data.mode == "off" else ScopeMode(data.mode)
    report = await caller.services.sync.scopes.set(caller.application.id, connection_id, mode, data.mailboxes)
    return SyncOut.from_domain(report)
