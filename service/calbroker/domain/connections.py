"""Connections: how an application reaches one organisation's mailboxes, and mailbox routing.

A connection is either Microsoft Graph (Exchange Online) or EWS (Exchange on-premises), with an
access level and the domains its admin confirmed. A mailbox is routed by its domain; the
allow-list narrows which mailboxes of those domains may be used (design §5).
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


class ConnectionStatus(StrEnum):
    ACTIVE = "active"
    DEGRADED = "degraded"
    """Health checks are failing; availability reports the error instead of going silently empty."""
    REVOKED = "revoked"


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

    def __post_init__(self) -> None:
        if not self.domains:
            raise InvalidRequest.field("domains", "list at least one domain the connection serves")

    def covers_domain(self, domain: str) -> bool:
        return domain in self.domains

    def allows(self, mailbox: str) -> bool:
        return not self.allowed_mailboxes or mailbox in self.allowed_mailboxes

    def require_calendar_access(self, action: str) -> None:
        """Refuse `action` on a free/busy-only connection, saying what the tenant admin must grant.

        One rule for every door (providers, bookings, calendar views), so the message is the same
        wherever the refusal surfaces; only the remedy differs by protocol.
        """
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


def route_mailbox(connections: Iterable[Connection], mailbox: str) -> Connection:
    """The connection that serves `mailbox`, or the mailbox error that explains why none does.

    Among usable connections covering the domain, one that lists the mailbox explicitly wins,
    then one without an allow-list; ties go to the oldest connection so routing is stable.
    """
    domain = mailbox.rpartition("@")[2]
    covering: Sequence[Connection] = sorted(
        (c for c in connections if c.status is not ConnectionStatus.REVOKED and c.covers_domain(domain)),
        key=lambda c: (c.created_at is None, c.created_at or _EPOCH, str(c.id)),
    )
    if not covering:
        raise MailboxNotConnected(f"No connection of this application covers the domain {domain!r}.", mailbox=mailbox)
    explicit = [c for c in covering if mailbox in c.allowed_mailboxes]
    if explicit:
        return explicit[0]
    open_ended = [c for c in covering if not c.allowed_mailboxes]
    if open_ended:
        return open_ended[0]
    raise MailboxOutOfScope(
        f"{mailbox} is not in the mailbox allow-list of the connection for {domain!r}.", mailbox=mailbox
    )
