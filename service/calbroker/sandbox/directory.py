"""The sandbox's directory: tenants, mailboxes (users and rooms), groups, app registrations, consent,
and on-premises EWS service accounts.

It is plain data plus lookups; `seed.build_directory` fills it deterministically. Every surface of the
sandbox (Entra, Graph, EWS, control plane) reads the same `Directory`, so a rule lives here once.

API for the EWS surface (stable; additions only):

- `directory.mailbox(address)` → `Mailbox | None`: any SMTP address of a user or room, case-insensitive,
  aliases included (`"SMTP:"` prefixes tolerated). `mailbox.email` is the primary SMTP address.
- `directory.tenant_of(mailbox)` → `Tenant`; `tenant.exchange` says where the mailbox lives
  (`ExchangeLocation.ON_PREMISES` for fabrikam, reached over EWS; `ONLINE` for contoso, reached over Graph).
- `directory.authenticate_service_account(username, password)` → `ServiceAccount | None`: accepts
  `FABRIKAM\\svc-full`, `svc-full@fabrikam.com` or `svc-full` (Basic/NTLM-style user names).
- `directory.ews_principal(username)` / `authenticate_ews(username, password)` → `EwsPrincipal | None`:
  a service account, else a user of an on-premises tenant signing in as themselves (`MailboxLogon`:
  UPN, SMTP address or `FABRIKAM\\anna.schmidt`), who reaches their own mailbox only.
- `account.access` is an `EwsAccess` (`FULL`, `RESTRICTED`, `FREE_BUSY`, `NONE`), and the account answers:
  `can_impersonate(mailbox)` (ExchangeImpersonation allowed → else `ErrorImpersonateUserDenied`),
  `can_open_folder(folder)` (`"calendar"` for RESTRICTED, anything for FULL → else `ErrorAccessDenied`),
  `can_write_items(mailbox)` (CreateItem/UpdateItem/DeleteItem), and `can_read_free_busy(mailbox)`
  (GetUserAvailability; AvailabilityOnly for FREE_BUSY accounts → else a per-mailbox
  `ErrorNoFreeBusyAccess`). Mailboxes outside `account.impersonation_scope` (a group) are refused.
- `mailbox.working_hours` (`WorkingHours`: days, start/end `time`, IANA `time_zone`,
  `windows_time_zone`, `intervals(start, end)`), `mailbox.time_zone`, `mailbox.is_room`.
- `directory.rooms(tenant)`, `directory.room_lists(tenant)` (`RoomList.rooms` are room emails).
- `directory.resolve(tenant, text)` → mailboxes whose name or address contains `text` (ResolveNames).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum

from calbroker.sandbox.timezones import windows_name, zone

__all__ = [
    "AppCertificate",
    "AppRegistration",
    "ClientSecret",
    "Directory",
    "EwsAccess",
    "EwsPrincipal",
    "ExchangeLocation",
    "Group",
    "Mailbox",
    "MailboxKind",
    "MailboxLogon",
    "RoomList",
    "ServiceAccount",
    "ServicePrincipal",
    "Tenant",
    "WorkingHours",
    "password_of",
    "stable_id",
]

# Namespace for every GUID the sandbox derives from a name: same name → same id, on every machine.
SANDBOX_NAMESPACE = uuid.UUID("5a3d1b2c-8e4f-4c6a-9b7d-2f1e0c9a8b7d")

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def stable_id(*parts: str) -> str:
    """A GUID derived from `parts` (uuid5), so ids never depend on the clock or process."""
    return str(uuid.uuid5(SANDBOX_NAMESPACE, "/".join(parts)))


class ExchangeLocation(StrEnum):
    """Where a tenant's mailboxes live, which decides the protocol that reaches them."""

    ONLINE = "online"
    ON_PREMISES = "on_premises"


class MailboxKind(StrEnum):
    USER = "user"
    ROOM = "room"


class EwsAccess(StrEnum):
    """The access levels of an on-premises service account (Cronofy Enterprise Connect's three, plus none)."""

    FULL = "full"  # ApplicationImpersonation over the scope: any folder, read and write
    RESTRICTED = "restricted"  # ApplicationImpersonation, calendar folders only
    FREE_BUSY = "free_busy"  # AvailabilityOnly: GetUserAvailability only, no impersonation
    NONE = "none"  # valid credentials, no rights at all


@dataclass(frozen=True, slots=True)
class WorkingHours:
    """Mailbox working hours (mailboxSettings.workingHours), wall-clock in `time_zone` (IANA)."""

    days: tuple[str, ...]
    start: time
    end: time
    time_zone: str

    @property
    def windows_time_zone(self) -> str:
        return windows_name(self.time_zone)

    def intervals(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """Working intervals (UTC) overlapping [start, end), computed per local day so DST is right."""
        tz = zone(self.time_zone)
        first = start.astimezone(tz).date() - timedelta(days=1)
        last = end.astimezone(tz).date() + timedelta(days=1)
        result: list[tuple[datetime, datetime]] = []
        day: date = first
        while day <= last:
            if WEEKDAYS[day.weekday()] in self.days:
                lo = datetime.combine(day, self.start, tz).astimezone(UTC)
                hi = datetime.combine(day, self.end, tz).astimezone(UTC)
                if lo < end and hi > start:
                    result.append((max(lo, start.astimezone(UTC)), min(hi, end.astimezone(UTC))))
            day += timedelta(days=1)
        return result


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A user or room mailbox; `id` is its Entra object id, `email` its primary SMTP address (lower case)."""

    id: str
    tenant_id: str
    email: str
    display_name: str
    kind: MailboxKind
    time_zone: str
    working_hours: WorkingHours
    given_name: str = ""
    surname: str = ""
    aliases: tuple[str, ...] = ()
    user_principal_name: str = ""
    password: str = ""
    job_title: str | None = None
    department: str | None = None
    office_location: str | None = None
    mobile_phone: str | None = None
    business_phones: tuple[str, ...] = ()
    preferred_language: str = "en-US"
    online_meeting_providers: tuple[str, ...] = ("teamsForBusiness",)
    is_admin: bool = False
    capacity: int | None = None
    building: str | None = None
    floor: int | None = None
    tags: tuple[str, ...] = ()
    city: str | None = None

    @property
    def is_room(self) -> bool:
        return self.kind is MailboxKind.ROOM

    @property
    def addresses(self) -> tuple[str, ...]:
        return (self.email, *self.aliases)

    @property
    def alias(self) -> str:
        return self.email.split("@", 1)[0]

    @property
    def default_online_meeting_provider(self) -> str:
        return self.online_meeting_providers[0] if self.online_meeting_providers else "none"

    @property
    def legacy_exchange_dn(self) -> str:
        """The X.500 address Exchange shows for the mailbox (used by EWS ResolveNames/GetItem)."""
        group = "/o=ExchangeLabs/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)"
        return f"{group}/cn=Recipients/cn={self.id.replace('-', '')}-{self.alias}"


@dataclass(frozen=True, slots=True)
class Group:
    """A mail-enabled security group; the application access policy scope is one of these."""

    id: str
    email: str
    display_name: str
    members: frozenset[str]  # primary SMTP addresses
    description: str = ""


@dataclass(frozen=True, slots=True)
class RoomList:
    """An Exchange room list (a distribution group of rooms), surfaced as Graph `roomList` places."""

    id: str
    email: str
    display_name: str
    rooms: tuple[str, ...]  # room emails
    city: str | None = None
    street: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None


@dataclass(slots=True)
class ClientSecret:
    """A client secret of an app registration; Entra keeps only its hint and expiry visible."""

    key_id: str
    value: str
    display_name: str
    expires: datetime

    @property
    def hint(self) -> str:
        return self.value[:3]


@dataclass(frozen=True, slots=True)
class AppCertificate:
    """A certificate credential; the sandbox generates the key pair and exposes the private key to tests."""

    key_id: str
    thumbprint_sha1: str  # upper-case hex, as the Entra portal shows it
    thumbprint_sha256: str
    certificate_pem: str
    private_key_pem: str
    public_key_pem: str
    expires: datetime


@dataclass(slots=True)
class AppRegistration:
    """An Entra app registration (the `application` object) with its credentials and static permissions."""

    client_id: str
    object_id: str
    display_name: str
    home_tenant_id: str
    multi_tenant: bool
    application_permissions: frozenset[str]
    delegated_permissions: frozenset[str] = frozenset()
    secrets: list[ClientSecret] = field(default_factory=list)
    certificates: list[AppCertificate] = field(default_factory=list)
    redirect_uris: list[str] = field(default_factory=list)
    note: str = ""
    key: str = ""  # the sandbox's short name for it, e.g. "contoso-secret"

    def redirect_uri_allowed(self, uri: str) -> bool:
        """Exact match with a registered URI; an empty list accepts any http(s) URI (sandbox leniency)."""
        if not self.redirect_uris:
            return uri.startswith(("http://", "https://"))
        return uri in self.redirect_uris

    def certificate(self, *, sha1_hex: str | None = None, sha256_hex: str | None = None) -> AppCertificate | None:
        for cert in self.certificates:
            if sha1_hex and cert.thumbprint_sha1.lower() == sha1_hex.lower():
                return cert
            if sha256_hex and cert.thumbprint_sha256.lower() == sha256_hex.lower():
                return cert
        return None


@dataclass(slots=True)
class ServicePrincipal:
    """An app's presence in one tenant: what the admin consented to and the mailbox scope applied to it.

    `access_policy_group` models `New-ApplicationAccessPolicy -AccessRight RestrictAccess
    -PolicyScopeGroupId <group>` (https://learn.microsoft.com/graph/auth-limit-mailbox-access);
    None means the app reaches every mailbox of the tenant. `teams_policy` models the Teams
    application access policy that `/users/{id}/onlineMeetings` requires for app-only calls
    (https://learn.microsoft.com/graph/cloud-communication-online-meeting-application-access-policy).
    """

    id: str
    client_id: str
    tenant_id: str
    app_roles: frozenset[str]
    delegated_scopes: frozenset[str] = frozenset()
    access_policy_group: str | None = None
    teams_policy: bool = False
    consented_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """An on-premises Active Directory account used for EWS, with its Exchange rights."""

    username: str  # sAMAccountName, e.g. "svc-full"
    netbios_domain: str  # e.g. "FABRIKAM"
    user_principal_name: str
    password: str
    access: EwsAccess
    tenant_id: str
    display_name: str
    impersonation_scope: str | None = None  # group email; None = every mailbox of the tenant
    scope_members: frozenset[str] = frozenset()

    def in_scope(self, mailbox: Mailbox) -> bool:
        if mailbox.tenant_id != self.tenant_id:
            return False
        return self.impersonation_scope is None or mailbox.email in self.scope_members

    def can_impersonate(self, mailbox: Mailbox) -> bool:
        """ExchangeImpersonation of `mailbox` (FULL and RESTRICTED hold ApplicationImpersonation)."""
        return self.access in (EwsAccess.FULL, EwsAccess.RESTRICTED) and self.in_scope(mailbox)

    def can_open_folder(self, folder: str) -> bool:
        """Folder access under impersonation: RESTRICTED sees calendar folders only."""
        if self.access is EwsAccess.FULL:
            return True
        if self.access is EwsAccess.RESTRICTED:
            return folder.lower() in {"calendar", "ipf.appointment"}
        return False

    def can_write_items(self, mailbox: Mailbox) -> bool:
        return self.can_impersonate(mailbox)

    def can_read_free_busy(self, mailbox: Mailbox) -> bool:
        """GetUserAvailability: every account with rights (AvailabilityOnly included), within scope."""
        return self.access is not EwsAccess.NONE and self.in_scope(mailbox)

    def sees_details(self, mailbox: Mailbox) -> bool:
        """Whether free/busy may show subjects and locations (impersonation rights), or times only."""
        return self.access in (EwsAccess.FULL, EwsAccess.RESTRICTED)


@dataclass(frozen=True, slots=True)
class MailboxLogon:
    """A mailbox user signed in to EWS with their own credentials, as per-user integrations connect.

    The user owns their mailbox (every folder, read and write) and holds no ApplicationImpersonation
    role, so an ExchangeImpersonation header is refused
    (https://learn.microsoft.com/en-us/exchange/client-developer/exchange-web-services/impersonation-and-ews-in-exchange).
    Colleagues' calendars show free/busy times only: the Default user's permission on a calendar
    folder, which Exchange sets to FreeBusyTimeOnly ("ReadItems: TimeOnly",
    https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/readitems-calendarpermissiontype)
    [unverified: the default level].
    """

    mailbox: Mailbox

    @property
    def username(self) -> str:
        return self.mailbox.user_principal_name or self.mailbox.email

    @property
    def tenant_id(self) -> str:
        return self.mailbox.tenant_id

    def can_impersonate(self, mailbox: Mailbox) -> bool:
        return False

    def can_open_folder(self, folder: str) -> bool:
        return True  # any folder of the user's own mailbox; `ews.access.Call` keeps others closed

    def can_write_items(self, mailbox: Mailbox) -> bool:
        return mailbox.email == self.mailbox.email

    def can_read_free_busy(self, mailbox: Mailbox) -> bool:
        return mailbox.tenant_id == self.tenant_id

    def sees_details(self, mailbox: Mailbox) -> bool:
        return mailbox.email == self.mailbox.email


EwsPrincipal = ServiceAccount | MailboxLogon
"""Who an EWS request authenticated as: a service account or a mailbox user."""


def password_of(principal: EwsPrincipal) -> str:
    """The password an EWS principal proves (NTLM) or sends (Basic)."""
    return principal.password if isinstance(principal, ServiceAccount) else principal.mailbox.password


@dataclass(slots=True)
class Tenant:
    """A Microsoft 365 organisation: an Entra tenant plus its Exchange organisation."""

    key: str  # short name used in URLs and tests: "contoso"
    id: str  # tenant GUID (tid)
    display_name: str
    domains: tuple[str, ...]  # verified domains, default first
    initial_domain: str  # <name>.onmicrosoft.com
    exchange: ExchangeLocation
    scope_group: str  # the application access policy / impersonation scope group email
    admin_email: str
    mailboxes: dict[str, Mailbox] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    room_lists: dict[str, RoomList] = field(default_factory=dict)
    service_principals: dict[str, ServicePrincipal] = field(default_factory=dict)
    service_accounts: dict[str, ServiceAccount] = field(default_factory=dict)
    ews_path: str = "/EWS/Exchange.asmx"
    netbios_domain: str = ""  # the Active Directory domain of an on-premises organisation, e.g. FABRIKAM
    street: str = ""
    city: str = ""
    state: str = ""
    postal_code: str = ""
    country: str = ""
    country_code: str = ""

    @property
    def default_domain(self) -> str:
        return self.domains[0]

    @property
    def all_domains(self) -> tuple[str, ...]:
        return (*self.domains, self.initial_domain) if self.initial_domain not in self.domains else self.domains

    def users(self) -> list[Mailbox]:
        return [m for m in self.mailboxes.values() if not m.is_room]

    def rooms(self) -> list[Mailbox]:
        return [m for m in self.mailboxes.values() if m.is_room]


class Directory:
    """All tenants and app registrations, with the lookups every surface needs."""

    def __init__(self, tenants: Iterable[Tenant], apps: Iterable[AppRegistration]) -> None:
        self.tenants: dict[str, Tenant] = {t.key: t for t in tenants}
        self.apps: dict[str, AppRegistration] = {a.client_id: a for a in apps}
        self._by_address: dict[str, Mailbox] = {}
        self._by_id: dict[str, Mailbox] = {}
        for tenant in self.tenants.values():
            for mailbox in tenant.mailboxes.values():
                self._by_id[mailbox.id] = mailbox
                for address in mailbox.addresses:
                    self._by_address[address.lower()] = mailbox

    # --- tenants -------------------------------------------------------------------------------

    def tenant(self, ref: str) -> Tenant | None:
        """A tenant by GUID, key or any of its domains (case-insensitive)."""
        wanted = ref.strip().lower()
        for tenant in self.tenants.values():
            if wanted in (tenant.id, tenant.key) or wanted in tenant.all_domains:
                return tenant
        return None

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return next((t for t in self.tenants.values() if t.id == tenant_id), None)

    def tenant_of(self, mailbox: Mailbox) -> Tenant:
        tenant = self.tenant_by_id(mailbox.tenant_id)
        assert tenant is not None, mailbox.tenant_id
        return tenant

    # --- mailboxes -----------------------------------------------------------------------------

    def mailbox(self, address: str) -> Mailbox | None:
        """A mailbox by any SMTP address (aliases too), case-insensitive; tolerates an `smtp:` prefix."""
        cleaned = address.strip().lower()
        if cleaned.startswith("smtp:"):
            cleaned = cleaned[5:]
        return self._by_address.get(cleaned)

    def mailbox_by_id(self, object_id: str) -> Mailbox | None:
        return self._by_id.get(object_id.strip().lower())

    def update_mailbox(self, mailbox: Mailbox) -> None:
        """Replace a mailbox with a changed copy of itself (same id and addresses), as a settings change does."""
        self.tenant_of(mailbox).mailboxes[mailbox.email] = mailbox
        self._by_id[mailbox.id] = mailbox
        for address in mailbox.addresses:
            self._by_address[address.lower()] = mailbox

    def mailbox_in_tenant(self, tenant: Tenant, ref: str) -> Mailbox | None:
        """A mailbox of `tenant` named the way Graph URLs name users: object id, UPN or SMTP address."""
        found = self.mailbox_by_id(ref) or self.mailbox(ref)
        if found is None:
            lowered = ref.strip().lower()
            found = next((m for m in tenant.mailboxes.values() if m.user_principal_name == lowered), None)
        if found is None or found.tenant_id != tenant.id:
            return None
        return found

    def all_mailboxes(self) -> Iterator[Mailbox]:
        for tenant in self.tenants.values():
            yield from tenant.mailboxes.values()

    def authenticate_user(self, username: str, password: str) -> Mailbox | None:
        """Delegated sign-in: UPN or SMTP address plus the user's password; rooms cannot sign in."""
        mailbox = self.mailbox(username)
        if mailbox is None or mailbox.is_room or mailbox.password != password:
            return None
        return mailbox

    def resolve(self, tenant: Tenant, text: str) -> list[Mailbox]:
        """Ambiguous-name resolution: mailboxes whose display name or any address contains `text`."""
        needle = text.strip().lower().removeprefix("smtp:")
        return sorted(
            (
                m
                for m in tenant.mailboxes.values()
                if needle in m.display_name.lower() or any(needle in a for a in m.addresses)
            ),
            key=lambda m: m.email,
        )

    # --- groups, rooms -------------------------------------------------------------------------

    def group(self, email: str) -> Group | None:
        wanted = email.strip().lower()
        for tenant in self.tenants.values():
            if wanted in tenant.groups:
                return tenant.groups[wanted]
        return None

    def is_member(self, group_email: str, mailbox: Mailbox) -> bool:
        group = self.group(group_email)
        return group is not None and mailbox.email in group.members

    def rooms(self, tenant: Tenant) -> list[Mailbox]:
        return sorted(tenant.rooms(), key=lambda m: m.email)

    def room_lists(self, tenant: Tenant) -> list[RoomList]:
        return sorted(tenant.room_lists.values(), key=lambda r: r.email)

    # --- apps, consent, service accounts -------------------------------------------------------

    def app(self, client_id: str) -> AppRegistration | None:
        return self.apps.get(client_id.strip().lower())

    def service_principal(self, tenant: Tenant, client_id: str) -> ServicePrincipal | None:
        return tenant.service_principals.get(client_id.strip().lower())

    def grant_consent(self, tenant: Tenant, client_id: str, *, at: datetime) -> ServicePrincipal:
        """Admin consent: create (or refresh) the app's service principal with its static permissions."""
        app = self.apps[client_id]
        principal = tenant.service_principals.get(client_id)
        if principal is None:
            principal = ServicePrincipal(
                id=stable_id("service-principal", tenant.id, client_id),
                client_id=client_id,
                tenant_id=tenant.id,
                app_roles=app.application_permissions,
                delegated_scopes=app.delegated_permissions,
            )
            tenant.service_principals[client_id] = principal
        principal.app_roles = app.application_permissions
        principal.delegated_scopes = app.delegated_permissions
        principal.consented_at = at
        return principal

    def revoke_consent(self, tenant: Tenant, client_id: str) -> bool:
        return tenant.service_principals.pop(client_id, None) is not None

    def mailbox_in_policy_scope(self, principal: ServicePrincipal, mailbox: Mailbox) -> bool:
        """The application access policy check Exchange Online applies to app-only Graph calls."""
        if mailbox.tenant_id != principal.tenant_id:
            return False
        if principal.access_policy_group is None:
            return True
        return self.is_member(principal.access_policy_group, mailbox)

    def service_account(self, username: str) -> ServiceAccount | None:
        """A service account by `DOMAIN\\user`, `user@domain` (UPN) or bare `user`, case-insensitive."""
        name = username.strip().lower()
        domain: str | None = None
        if "\\" in name:
            domain, name = name.split("\\", 1)
        elif "@" in name:
            for tenant in self.tenants.values():
                for account in tenant.service_accounts.values():
                    if account.user_principal_name.lower() == name:
                        return account
            return None
        for tenant in self.tenants.values():
            found = tenant.service_accounts.get(name)
            if found is not None and (domain is None or found.netbios_domain.lower() == domain):
                return found
        return None

    def authenticate_service_account(self, username: str, password: str) -> ServiceAccount | None:
        """Basic/NTLM-style credential check for EWS; None for an unknown user or wrong password."""
        account = self.service_account(username)
        if account is None or account.password != password:
            return None
        return account

    def ews_principal(self, username: str) -> EwsPrincipal | None:
        """Who a Basic/NTLM user name signs in as: a service account, else a user of an on-premises
        organisation by UPN, SMTP address or `DOMAIN\\alias` (rooms cannot sign in)."""
        account = self.service_account(username)
        if account is not None:
            return account
        name = username.strip().lower()
        mailbox: Mailbox | None = None
        if "\\" in name:
            domain, alias = name.split("\\", 1)
            tenant = next((t for t in self.tenants.values() if t.netbios_domain.lower() == domain), None)
            if tenant is not None:
                mailbox = next((m for m in tenant.mailboxes.values() if m.alias == alias), None)
        else:
            mailbox = self.mailbox(name) or next(
                (m for m in self.all_mailboxes() if m.user_principal_name == name), None
            )
        if mailbox is None or mailbox.is_room:
            return None
        if self.tenant_of(mailbox).exchange is not ExchangeLocation.ON_PREMISES:
            return None
        return MailboxLogon(mailbox)

    def authenticate_ews(self, username: str, password: str) -> EwsPrincipal | None:
        """Basic credential check for EWS (and Autodiscover); None for an unknown user or wrong password."""
        principal = self.ews_principal(username)
        if principal is None or password_of(principal) != password:
            return None
        return principal
