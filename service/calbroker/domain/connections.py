"""Connections: how an application reaches one organisation's mailboxes, and mailbox routing.

A connection is either Microsoft Graph (Exchange Online) or EWS (Exchange on-premises), with an
access level and the domains its admin confirmed. A mailbox is routed by its domain; the
allow-list narrows which mailboxes of those domains may be used (design §5).

Connecting an organisation again replaces its connection: the newer one *supersedes* every older
connection of the same application, protocol, tenant (or EWS endpoint) and purpose whose domains
it covers (`Connection.supersedes`); events booked through the older one follow
`superseded_by` to the connection that serves them now (`successor`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from calbroker.domain.errors import AccessLevelInsufficient, InvalidRequest, MailboxNotConnected, MailboxOutOfScope

__all__ = [
    "EMAIL_PATTERN",
    "AccessLevel",
    "Connection",
    "ConnectionKind",
    "ConnectionMethod",
    "ConnectionPurpose",
    "ConnectionStatus",
    "Credentials",
    "EwsServiceAccount",
    "GraphAdminConsent",
    "GraphCertificate",
    "GraphClientSecret",
    "GraphDelegated",
    "normalize_domain",
    "normalize_email",
    "route_mailbox",
    "successor",
]

# Deliberately simple: one @, a dotted domain, no spaces or control characters. Exchange decides the
# rest. Written without `\s` and `$`-before-newline subtleties, so Python's `re` and the ECMA-262
# dialect of JSON Schema (the API declares it as the `pattern` of every address) read it the same.
_BLANK = r"\t\n\u000b\f\r "
EMAIL_PATTERN = (
    rf"^[{_BLANK}]*[^@{_BLANK}<>()\[\],;:\"\u0000-\u001f\u007f-\u009f\u00a0\u1680\u2000-\u200a\u2028\u2029"
    rf"\u202f\u205f\u3000\ufeff]{{1,64}}@([A-Za-z0-9-]{{1,63}}\.)+[A-Za-z0-9-]{{2,63}}[{_BLANK}]*$"
)
"""An address as typed: surrounding ASCII blanks are trimmed, no other space or control character anywhere."""
_EMAIL = re.compile(EMAIL_PATTERN)
_BLANK_CHARS = "\t\n\v\f\r "
_DOMAIN = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ConnectionKind(StrEnum):
    GRAPH = "graph"
    EWS = "ews"


class ConnectionMethod(StrEnum):
    """How the tenant admin connected; decides which credential type is stored."""

    GRAPH_CONSENT = "graph_consent"
    GRAPH_APP = "graph_app"
    GRAPH_DELEGATED = "graph_delegated"
    EWS = "ews"


class AccessLevel(StrEnum):
    """What the connection may do (the three levels of the Cronofy service-account article)."""

    FULL = "full"
    RESTRICTED = "restricted"
    """Calendar folders only."""
    FREE_BUSY = "free_busy"
    """Free/busy (availability) only: no event reads or writes."""

    @property
    def opens_calendars(self) -> bool:
        """Whether items in calendar folders may be read or written (not only free/busy)."""
        return self is not AccessLevel.FREE_BUSY


class ConnectionPurpose(StrEnum):
    """What a connection is for; it decides what verification checks and what routing uses it for."""

    CALENDARS = "calendars"
    """Free/busy, availability and (access level permitting) events of its domains' mailboxes."""
    ONLINE_MEETINGS = "online_meetings"
    """Teams meetings only, for organizers whose calendars another connection serves (a hybrid
    tenant: Exchange on-premises over EWS, Teams through a Graph app with OnlineMeetings.ReadWrite.All).
    Never used for free/busy or calendars."""


class ConnectionStatus(StrEnum):
    ACTIVE = "active"
    DEGRADED = "degraded"
    """Health checks are failing; availability reports the error instead of going silently empty."""
    SUPERSEDED = "superseded"
    """Replaced by a newer connection of the same tenant and domains (`superseded_by`); no credentials."""
    REVOKED = "revoked"

    @property
    def serves(self) -> bool:
        """Whether the connection is used for requests at all (working or not)."""
        return self in (ConnectionStatus.ACTIVE, ConnectionStatus.DEGRADED)


def normalize_email(value: str, *, field_name: str = "email") -> str:
    """Lower-case, trimmed address, or InvalidRequest naming the field."""
    if not _EMAIL.match(value):
        raise InvalidRequest.field(field_name, f"{value!r} is not an email address")
    return value.strip(_BLANK_CHARS).lower()


def normalize_domain(value: str, *, field_name: str = "domains") -> str:
    domain = value.strip().lower().rstrip(".")
    if not _DOMAIN.match(domain):
        raise InvalidRequest.field(field_name, f"{value!r} is not a domain name like contoso.com")
    return domain


@dataclass(frozen=True, slots=True, repr=False)
class GraphClientSecret:
    """The tenant's own app registration, authenticated by a client secret."""

    tenant_id: str
    client_id: str
    client_secret: str

    def __repr__(self) -> str:
        return f"GraphClientSecret(tenant={self.tenant_id!r}, client_id={self.client_id!r}, secret=<redacted>)"


@dataclass(frozen=True, slots=True, repr=False)
class GraphCertificate:
    """The tenant's own app registration, authenticated by a certificate (private key kept sealed)."""

    tenant_id: str
    client_id: str
    private_key_pem: str
    certificate_pem: str

    def __repr__(self) -> str:
        return f"GraphCertificate(tenant_id={self.tenant_id!r}, client_id={self.client_id!r}, key=<redacted>)"


@dataclass(frozen=True, slots=True)
class GraphAdminConsent:
    """Admin consent to the operator's multi-tenant app: nothing secret is stored per tenant."""

    tenant_id: str


@dataclass(frozen=True, slots=True, repr=False)
class GraphDelegated:
    """One mailbox signed in with the authorization-code flow; the refresh token is sealed."""

    tenant_id: str
    mailbox: str
    refresh_token: str

    def __repr__(self) -> str:
        return f"GraphDelegated(tenant={self.tenant_id!r}, mailbox={self.mailbox!r}, refresh_token=<redacted>)"


@dataclass(frozen=True, slots=True, repr=False)
class EwsServiceAccount:
    """An on-premises Exchange service account (impersonation or AvailabilityOnly rights)."""

    endpoint: str
    username: str
    password: str
    auth_type: str = "basic"

    def __repr__(self) -> str:
        return f"EwsServiceAccount(endpoint={self.endpoint!r}, username={self.username!r}, password=<redacted>)"


Credentials = GraphClientSecret | GraphCertificate | GraphAdminConsent | GraphDelegated | EwsServiceAccount


@dataclass(frozen=True, slots=True)
class Connection:
    id: uuid.UUID
    application_id: uuid.UUID
    kind: ConnectionKind
    method: ConnectionMethod
    access_level: AccessLevel
    display_name: str
    domains: tuple[str, ...]
    cloud: str = "global"
    tenant_id: str | None = None
    endpoint: str | None = None
    allowed_mailboxes: tuple[str, ...] = ()
    """Empty: every mailbox of the domains (as far as the tenant's own policy allows)."""
    status: ConnectionStatus = ConnectionStatus.ACTIVE
    created_at: datetime | None = None
    last_verified_at: datetime | None = None
    last_error: str | None = None
    secret_expires_at: datetime | None = None
    secret_id: uuid.UUID | None = field(default=None, compare=False)
    purpose: ConnectionPurpose = ConnectionPurpose.CALENDARS
    superseded_by: uuid.UUID | None = None

    def __post_init__(self) -> None:
        if not self.domains:
            raise InvalidRequest.field("domains", "list at least one domain the connection serves")
        if self.purpose is ConnectionPurpose.ONLINE_MEETINGS and (
            self.kind is not ConnectionKind.GRAPH or self.method is ConnectionMethod.GRAPH_DELEGATED
        ):
            raise InvalidRequest.field(
                "purpose",
                "online_meetings needs a Microsoft Graph app (admin consent or your own app registration); "
                "Teams meetings cannot be made over EWS or by one signed-in mailbox",
            )

    @property
    def serves_calendars(self) -> bool:
        """Whether free/busy, availability and calendar requests may be routed here."""
        return self.status.serves and self.purpose is ConnectionPurpose.CALENDARS

    def supersedes(self, older: Connection) -> bool:
        """Whether this connection, made later, replaces `older`: the same application, protocol, cloud,
        tenant (or EWS endpoint) and purpose, every domain `older` served, and, for a delegated sign-in,
        the same mailbox. The tenant admin connected the organisation again: the newer one serves."""
        return (
            older.id != self.id
            and older.status.serves
            and older.application_id == self.application_id
            and older.kind is self.kind
            and older.cloud == self.cloud
            and older.purpose is self.purpose
            and _target(older) == _target(self)
            and (older.method is ConnectionMethod.GRAPH_DELEGATED) == (self.method is ConnectionMethod.GRAPH_DELEGATED)
            and (
                self.method is not ConnectionMethod.GRAPH_DELEGATED or older.allowed_mailboxes == self.allowed_mailboxes
            )
            and set(older.domains) <= set(self.domains)
        )

    def covers_domain(self, domain: str) -> bool:
        return domain in self.domains

    def allows(self, mailbox: str) -> bool:
        return not self.allowed_mailboxes or mailbox in self.allowed_mailboxes

    def require_calendars_purpose(self, action: str) -> None:
        """Refuse `action` on a Teams-only connection: it reaches no mailbox, room or calendar."""
        if self.purpose is ConnectionPurpose.ONLINE_MEETINGS:
            raise AccessLevelInsufficient(
                f"Cannot {action}: connection {self.display_name!r} only makes Teams meetings; calendars of its "
                "domains are served by another connection."
            )

    def require_calendar_access(self, action: str) -> None:
        """Refuse `action` on a free/busy-only connection, saying what the tenant admin must grant.

        One rule for every door (providers, bookings, calendar views), so the message is the same
        wherever the refusal surfaces; only the remedy differs by protocol.
        """
        self.require_calendars_purpose(action)
        if self.access_level.opens_calendars:
            return
        if self.kind is ConnectionKind.EWS:
            remedy = (
                "Ask the Exchange admin to grant the service account ApplicationImpersonation (full, or restricted "
                "to calendar folders) instead of AvailabilityOnly, and reconnect with that access level."
            )
        else:
            remedy = (
                "Ask the tenant admin to reconnect with full or restricted access (application permission "
                "Calendars.ReadWrite)."
            )
        raise AccessLevelInsufficient(
            f"Cannot {action}: connection {self.display_name!r} has free/busy-only access. {remedy}"
        )


def _target(connection: Connection) -> str:
    """The organisation a connection reaches: its Graph tenant or its EWS endpoint."""
    target = connection.endpoint if connection.kind is ConnectionKind.EWS else connection.tenant_id
    return (target or "").lower()


def route_mailbox(
    connections: Iterable[Connection],
    mailbox: str,
    *,
    purpose: ConnectionPurpose = ConnectionPurpose.CALENDARS,
) -> Connection:
    """The connection that serves `mailbox` for `purpose`, or the mailbox error that explains why none does.

    Among the connections in use covering the domain and allowing the mailbox, a healthy one wins
    over a degraded one, then one that lists the mailbox explicitly over one without an
    allow-list; ties go to the oldest connection so routing is stable.
    """
    domain = mailbox.rpartition("@")[2]
    covering: Sequence[Connection] = [
        c for c in connections if c.status.serves and c.purpose is purpose and c.covers_domain(domain)
    ]
    if not covering:
        raise MailboxNotConnected(f"No connection of this application covers the domain {domain!r}.", mailbox=mailbox)
    allowing = [c for c in covering if c.allows(mailbox)]
    if not allowing:
        raise MailboxOutOfScope(
            f"{mailbox} is not in the mailbox allow-list of the connection for {domain!r}.", mailbox=mailbox
        )
    return min(
        allowing,
        key=lambda c: (
            c.status is not ConnectionStatus.ACTIVE,
            mailbox not in c.allowed_mailboxes,
            c.created_at is None,
            c.created_at or _EPOCH,
            str(c.id),
        ),
    )


def successor(connections: Iterable[Connection], connection_id: uuid.UUID) -> Connection | None:
    """The connection that now stands for `connection_id`: itself, or the end of its `superseded_by`
    chain; None if it is unknown. The caller decides what a revoked one means."""
    by_id = {c.id: c for c in connections}
    found = by_id.get(connection_id)
    seen: set[uuid.UUID] = set()
    while found is not None and found.superseded_by is not None and found.id not in seen:
        seen.add(found.id)
        found = by_id.get(found.superseded_by)
    return found
