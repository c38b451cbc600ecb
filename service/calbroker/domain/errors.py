"""The errors calbroker speaks, independent of HTTP, SQL or Microsoft's wire formats.

    CalbrokerError
    ├── InvalidRequest                 bad input: names the field and what would be valid
    │   └── LimitExceeded              a documented limit (members, span, periods…) was passed
    ├── Unauthenticated                no API key, or a malformed, unknown or revoked one
    ├── NotFound                       a resource of ours does not exist (or is not yours)
    ├── Conflict
    │   ├── SlotUnavailable            a booking would overlap busy time (carries the conflicts)
    │   └── WriteInProgress            another request is writing the same event or mailboxes
    ├── TeamsUnavailable               Teams asked for where no Graph connection can create it
    ├── AccessDenied                   the caller may not do this
    │   └── AccessLevelInsufficient    the connection's access level forbids the operation
    ├── MailboxError                   one mailbox cannot be used (never fails the others)
    │   ├── MailboxNotConnected        no connection of this application covers its domain
    │   ├── MailboxOutOfScope          outside the allow-list or the tenant's access policy
    │   ├── MailboxNotFound            upstream says the mailbox does not exist
    │   └── ImpersonationDenied        the EWS service account may not act for it
    └── UpstreamError                  Microsoft answered badly or not at all
        ├── UpstreamThrottled          429 / ErrorServerBusy past our deadline (carries retry_after)
        ├── UpstreamUnavailable        5xx, connection refused, TLS failure
        │   ├── ConnectionClosed       the connection was revoked or re-keyed mid-request
        │   └── CredentialsUnavailable its sealed credentials cannot be opened here (a master key is missing)
        ├── UpstreamTimeout            no answer within the request deadline
        ├── UpstreamRejected           4xx we did not expect: a bug or an API change upstream
        ├── CredentialsRejected        secret wrong/expired, consent missing, tenant unknown
        ├── SyncStateExpired           upstream forgot a sync cursor (410 / SyncStateNotFound): resync
        └── SubscriptionLimitReached   the mailbox has as many change subscriptions as Microsoft allows

Errors carry data as attributes (``field``, ``mailbox``, ``retry_after``) so the API layer can
build a problem document without parsing messages. Subclasses set ``slug``: the stable last
segment of the problem ``type`` URI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class FieldError:
    """One input field at fault and what would have been valid."""

    field: str
    message: str


class CalbrokerError(Exception):
    """Base of every error calbroker raises on purpose."""

    slug = "internal-error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def extensions(self) -> dict[str, object]:
        """Extra members for the problem document (RFC 9457 extensions); none by default."""
        return {}


class InvalidRequest(CalbrokerError):
    slug = "invalid-request"

    def __init__(self, detail: str, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(detail)
        self.errors = tuple(errors)

    @classmethod
    def field(cls, field: str, message: str) -> InvalidRequest:
        """The common case: one field is wrong."""
        return cls(f"{field}: {message}", [FieldError(field, message)])


class LimitExceeded(InvalidRequest):
    slug = "limit-exceeded"

    def __init__(self, *, field: str, limit: int | str, actual: int | str, message: str) -> None:
        super().__init__(message, [FieldError(field, message)])
        self.limit = limit
        self.actual = actual


class Unauthenticated(CalbrokerError):
    slug = "unauthorized"

    def __init__(self, detail: str, *, reason: str = "invalid_token") -> None:
        super().__init__(detail)
        self.reason = reason
        """RFC 6750 error code for WWW-Authenticate: invalid_request or invalid_token."""


class NotFound(CalbrokerError):
    slug = "not-found"


class Conflict(CalbrokerError):
    slug = "conflict"


@dataclass(frozen=True, slots=True)
class ConflictingInterval:
    mailbox: str
    start: datetime
    end: datetime
    status: str


class SlotUnavailable(Conflict):
    slug = "slot-unavailable"

    def __init__(self, detail: str, conflicts: Sequence[ConflictingInterval]) -> None:
        super().__init__(detail)
        self.conflicts = tuple(conflicts)


class WriteInProgress(Conflict):
    """Another request holds the event (or the mailboxes' booking lock); retrying shortly works."""

    slug = "write-in-progress"

    def __init__(self, detail: str, *, retry_after: float = 1.0) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class TeamsUnavailable(CalbrokerError):
    """A Teams meeting was requested for a mailbox whose tenant gives calbroker no way to create one."""

    slug = "teams-unavailable"

    def __init__(self, detail: str, *, mailbox: str) -> None:
        super().__init__(detail)
        self.mailbox = mailbox


class AccessDenied(CalbrokerError):
    slug = "access-denied"


class AccessLevelInsufficient(AccessDenied):
    slug = "access-level-insufficient"


class MailboxError(CalbrokerError):
    slug = "mailbox-error"

    def __init__(self, detail: str, *, mailbox: str) -> None:
        super().__init__(detail)
        self.mailbox = mailbox


class MailboxNotConnected(MailboxError):
    slug = "mailbox-not-connected"


class MailboxOutOfScope(MailboxError):
    slug = "mailbox-out-of-scope"


class MailboxNotFound(MailboxError):
    slug = "mailbox-not-found"


class ImpersonationDenied(MailboxError):
    slug = "impersonation-denied"


class UpstreamError(CalbrokerError):
    slug = "upstream-error"

    def __init__(self, detail: str, *, upstream_code: str | None = None, mailbox: str | None = None) -> None:
        super().__init__(detail)
        self.upstream_code = upstream_code
        self.mailbox = mailbox


class UpstreamThrottled(UpstreamError):
    slug = "upstream-throttled"

    def __init__(
        self,
        detail: str,
        *,
        retry_after: float | None = None,
        upstream_code: str | None = None,
        mailbox: str | None = None,
    ) -> None:
        super().__init__(detail, upstream_code=upstream_code, mailbox=mailbox)
        self.retry_after = retry_after


class UpstreamUnavailable(UpstreamError):
    slug = "upstream-unavailable"


class ConnectionClosed(UpstreamUnavailable):
    """The provider was closed under a running request (connection revoked or credentials replaced)."""


class CredentialsUnavailable(UpstreamUnavailable):
    """This server cannot open one connection's sealed credentials (a master key it does not have):
    that connection's mailboxes are unavailable here, nothing else is."""

    slug = "secrets-unavailable"


class UpstreamTimeout(UpstreamError):
    slug = "upstream-timeout"


class UpstreamRejected(UpstreamError):
    slug = "upstream-rejected"


class CredentialsRejected(UpstreamError):
    slug = "credentials-rejected"


class SyncStateExpired(UpstreamError):
    """Upstream no longer knows the sync cursor (Graph 410 Gone / SyncStateNotFound, EWS
    ErrorInvalidSyncStateData): only a full resynchronisation brings the mailbox back."""

    slug = "sync-state-expired"


class SubscriptionLimitReached(UpstreamError):
    """Microsoft refused a change subscription because the mailbox already has its maximum (Outlook
    allows 1,000 per mailbox for all applications together); the mailbox is read live instead."""

    slug = "subscription-limit"
