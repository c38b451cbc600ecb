"""Connecting an organisation: validate, verify against Microsoft, then (and only then) save.

The CLI (`calbroker connections add-*`) and the authorize-link pages share this one path, so a
credential that would not work is never stored, whichever door it came through.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from calbroker.config import Settings
from calbroker.domain.connections import (
    AccessLevel,
    Connection,
    ConnectionKind,
    ConnectionMethod,
    ConnectionPurpose,
    Credentials,
    EwsServiceAccount,
    normalize_domain,
    normalize_email,
)
from calbroker.domain.errors import InvalidRequest
from calbroker.providers.endpoints import AddressPolicy, check_upstream_url
from calbroker.providers.ews import check_ews_endpoint, is_email_address
from calbroker.providers.protocol import Deadline
from calbroker.services.bundle import Services
from calbroker.store.connection_checks import save_test_mailbox
from calbroker.store.connections import NewConnection, save_connection
from calbroker.store.database import Connection as DbConnection

__all__ = ["ConnectionDraft", "SaveHook", "verify_and_save"]

_VERIFY_DEADLINE_S = 20.0
_FIRST_HEALTH_CHECK = timedelta(hours=1)

SaveHook = Callable[[DbConnection, Connection], Awaitable[None]]
"""Runs in the transaction that saves the connection; raising rolls the save back."""


@dataclass(frozen=True, slots=True, repr=False)
class ConnectionDraft:
    """A connection as typed by an operator or tenant admin, not yet trusted."""

    application_id: uuid.UUID
    method: ConnectionMethod
    access_level: AccessLevel
    credentials: Credentials
    domains: Sequence[str]
    test_mailbox: str
    display_name: str | None = None
    cloud: str = "global"
    tenant_id: str | None = None
    allowed_mailboxes: Sequence[str] = ()
    secret_expires_at: datetime | None = None
    purpose: ConnectionPurpose = ConnectionPurpose.CALENDARS

    def __repr__(self) -> str:
        return f"ConnectionDraft(method={self.method}, domains={list(self.domains)!r}, credentials=<redacted>)"


Discover = Callable[[str, EwsServiceAccount, str], Awaitable[str]]


async def _normalised(
    draft: ConnectionDraft, settings: Settings, policy: AddressPolicy, discover: Discover
) -> tuple[NewConnection, str]:
    domains = tuple(dict.fromkeys(normalize_domain(d) for d in draft.domains))
    if not domains:
        raise InvalidRequest.field("domains", "list at least one domain the connection serves, e.g. contoso.com")
    if len(domains) > 100:
        raise InvalidRequest.field("domains", "at most 100 domains per connection")
    test_mailbox = normalize_email(draft.test_mailbox, field_name="test_mailbox")
    if test_mailbox.rpartition("@")[2] not in domains:
        raise InvalidRequest.field("test_mailbox", f"must be in one of the connection's domains ({', '.join(domains)})")
    allowed = tuple(dict.fromkeys(normalize_email(m, field_name="allowed_mailboxes") for m in draft.allowed_mailboxes))
    outside = [m for m in allowed if m.rpartition("@")[2] not in domains]
    if outside:
        raise InvalidRequest.field("allowed_mailboxes", f"{outside[0]} is not in the connection's domains")
    if allowed and test_mailbox not in allowed:
        raise InvalidRequest.field("test_mailbox", "must be one of the allowed mailboxes")
    if draft.cloud not in settings.clouds:
        raise InvalidRequest.field("cloud", f"must be one of {', '.join(sorted(settings.clouds))}")
    credentials = draft.credentials
    endpoint: str | None = None
    kind = ConnectionKind.GRAPH
    if isinstance(credentials, EwsServiceAccount):
        kind = ConnectionKind.EWS
        if not credentials.username.strip():
            raise InvalidRequest.field("username", "is required")
        if not credentials.password:
            raise InvalidRequest.field("password", "is required")
        typed = credentials.endpoint.strip()
        if is_email_address(typed):
            # An address instead of a URL: Autodiscover, under the same URL policy as a typed URL (below).
            typed = await discover(normalize_email(typed, field_name="endpoint"), credentials, draft.cloud)
        endpoint = check_ews_endpoint(typed, allow_http=policy.allow_http or policy.allow_loopback_http)
        endpoint = await check_upstream_url(endpoint, field="endpoint", policy=policy)
        credentials = EwsServiceAccount(endpoint, credentials.username, credentials.password, credentials.auth_type)
    elif draft.tenant_id is None or not draft.tenant_id.strip():
        raise InvalidRequest.field("tenant_id", "is required: the directory (tenant) id or primary domain")
    if kind is ConnectionKind.EWS and draft.method is not ConnectionMethod.EWS:
        raise InvalidRequest.field("method", "EWS credentials need the ews method")
    teams_only = draft.purpose is ConnectionPurpose.ONLINE_MEETINGS
    if teams_only and draft.method not in (ConnectionMethod.GRAPH_APP, ConnectionMethod.GRAPH_CONSENT):
        raise InvalidRequest.field(
            "purpose",
            "online_meetings needs a Microsoft Graph app (admin consent or your own app registration); Teams "
            "meetings cannot be made over EWS or by one signed-in mailbox",
        )
    kind_label = "Teams meetings" if teams_only else "Exchange on-premises" if endpoint else "Microsoft 365"
    name = (draft.display_name or "").strip() or f"{domains[0]} ({kind_label})"
    new = NewConnection(
        application_id=draft.application_id,
        kind=kind,
        method=draft.method,
        # Calendar access levels do not apply to a Teams-only connection; it is stored as full and never
        # opens a calendar (routing and `require_calendar_access` go by purpose).
        access_level=AccessLevel.FULL if teams_only else draft.access_level,
        display_name=name[:200],
        domains=domains,
        credentials=credentials,
        cloud=draft.cloud,
        tenant_id=draft.tenant_id.strip() if draft.tenant_id else None,
        endpoint=endpoint,
        allowed_mailboxes=allowed,
        secret_expires_at=draft.secret_expires_at,
        purpose=draft.purpose,
    )
    return new, test_mailbox


async def verify_and_save(
    services: Services, draft: ConnectionDraft, *, actor: str, on_save: SaveHook | None = None
) -> Connection:
    """Verify the credentials against upstream with the test mailbox, then store them sealed.

    What is verified is what the connection's purpose needs: reading the test mailbox's calendar (or
    free/busy, at that access level) for `calendars`, making a Teams meeting for it for
    `online_meetings`. An EWS "endpoint" that is an email address is looked up with Autodiscover
    first (the cloud's Autodiscover host, else the documented candidates from its domain), and the URL
    found is checked like a typed one. Raises the specific error (CredentialsRejected with the AADSTS
    code, MailboxOutOfScope, ImpersonationDenied, UpstreamUnavailable for an unreachable endpoint or TLS
    failure, InvalidRequest on ``endpoint`` listing what Autodiscover tried…), in which case nothing
    was written. The test mailbox is kept for the health checks; `on_save`
    lets an authorize link claim itself atomically with the save (single use across replicas).
    """
    registry = services.upstream.registry
    new, test_mailbox = await _normalised(
        draft, services.settings, registry.address_policy, registry.discover_ews_endpoint
    )
    candidate = Connection(
        id=uuid.uuid4(),
        application_id=new.application_id,
        kind=new.kind,
        method=new.method,
        access_level=new.access_level,
        display_name=new.display_name,
        domains=new.domains,
        cloud=new.cloud,
        tenant_id=new.tenant_id,
        endpoint=new.endpoint,
        allowed_mailboxes=new.allowed_mailboxes,
        purpose=new.purpose,
    )
    renewed: list[Credentials] = []

    async def keep_renewed(credentials: Credentials) -> None:
        renewed.append(credentials)

    provider = services.upstream.registry.build(candidate, new.credentials, on_renewed=keep_renewed)
    try:
        await provider.verify(test_mailbox, Deadline.after(_VERIFY_DEADLINE_S))
    finally:
        await provider.aclose()
    if renewed:
        # Verifying a delegated sign-in redeems its refresh token, and Entra may rotate it on the
        # spot: the one typed in is then spent, so the rotated one is what gets saved.
        new = replace(new, credentials=renewed[-1])
    async with services.pool.acquire() as conn, conn.transaction():
        connection = await save_connection(conn, services.keyring, new, actor=actor)
        await save_test_mailbox(conn, connection.id, test_mailbox, first_check_in=_FIRST_HEALTH_CHECK)
        if on_save is not None:
            await on_save(conn, connection)
    return connection
