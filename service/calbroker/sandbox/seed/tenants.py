"""Deterministic tenants: the same seed gives the same directory (calendars: `seed.calendars`).

The directory's credentials (tenant ids, client ids, secrets, passwords) depend on nothing but their
names, so they are stable across seeds and runs; users beyond the well-known ones and every calendar
come from `random.Random` seeded with `f"{seed}|..."` strings (stable across processes, unlike
`hash()`).

The calendar window is −30…+60 days around `anchor`, a Monday. It defaults to `DEFAULT_ANCHOR`
(Monday 2026-11-23) for every seed: the clock never enters the data, so two runs on different days
produce the same bytes. Pass another Monday (the CLI's `--anchor this-week`) to centre a demo on
today; recurring series without an end keep every calendar populated after the window anyway.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from calbroker.sandbox.directory import (
    AppCertificate,
    AppRegistration,
    ClientSecret,
    Directory,
    EwsAccess,
    ExchangeLocation,
    Group,
    Mailbox,
    MailboxKind,
    RoomList,
    ServiceAccount,
    ServicePrincipal,
    Tenant,
    WorkingHours,
    stable_id,
)

__all__ = ["DEFAULT_ANCHOR", "WELL_KNOWN", "build_directory", "secret_for"]

DEFAULT_ANCHOR = date(2026, 11, 23)
NEVER = datetime(2099, 12, 31, tzinfo=UTC)

GRAPH_ROLES = frozenset(
    {
        "Calendars.ReadWrite",
        "OnlineMeetings.ReadWrite.All",
        "User.Read.All",
        "Place.Read.All",
        "MailboxSettings.Read",
    }
)
DELEGATED = frozenset({"Calendars.ReadWrite", "User.Read", "offline_access", "openid", "profile", "email"})

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday")


@dataclass(frozen=True, slots=True)
class _Person:
    given: str
    surname: str
    time_zone: str
    title: str
    department: str
    in_scope: bool = True
    providers: tuple[str, ...] = ("teamsForBusiness", "skypeForBusiness")


# Well-known mailboxes tests rely on (their addresses never change).
WELL_KNOWN = {
    "contoso_user": "adele.vance@contoso.com",
    "contoso_colleague": "alex.wilber@contoso.com",
    "contoso_out_of_scope": "diego.siciliani@contoso.com",
    "contoso_skype_only": "nestor.wilke@contoso.com",
    "contoso_no_online_meetings": "lee.gu@contoso.com",
    "contoso_room": "rainier@contoso.com",
    "fabrikam_user": "anna.schmidt@fabrikam.com",
    "fabrikam_colleague": "ben.taylor@fabrikam.com",
    "fabrikam_out_of_scope": "frank.miller@fabrikam.com",
    "fabrikam_room": "spree@fabrikam.com",
}

_CONTOSO_PEOPLE = (
    _Person("Adele", "Vance", "America/Los_Angeles", "Retail Manager", "Retail"),
    _Person("Alex", "Wilber", "America/Los_Angeles", "Marketing Assistant", "Marketing"),
    _Person("Megan", "Bowen", "America/Los_Angeles", "Marketing Manager", "Marketing"),
    _Person("Lynne", "Robbins", "America/New_York", "Planner", "Retail"),
    _Person("Miriam", "Graham", "Europe/London", "Director", "Sales & Marketing"),
    _Person("Pradeep", "Gupta", "Asia/Kolkata", "Accountant", "Finance"),
    _Person("Nestor", "Wilke", "America/New_York", "Director", "Operations", providers=("skypeForBusiness",)),
    _Person("Lee", "Gu", "America/Los_Angeles", "Director", "Manufacturing", providers=()),
    _Person("Diego", "Siciliani", "America/Los_Angeles", "HR Manager", "HR", in_scope=False),
    _Person("Isaiah", "Langer", "America/New_York", "Sales Rep", "Sales", in_scope=False),
    _Person("Patti", "Fernandez", "America/Los_Angeles", "President", "Executive", in_scope=False),
)
_FABRIKAM_PEOPLE = (
    _Person("Anna", "Schmidt", "Europe/Berlin", "Project Manager", "Engineering"),
    _Person("Ben", "Taylor", "Europe/London", "Account Manager", "Sales"),
    _Person("Chloe", "Martin", "Europe/Berlin", "Engineer", "Engineering"),
    _Person("Dan", "Jones", "Australia/Sydney", "Support Lead", "Support"),
    _Person("Erin", "Baker", "America/Chicago", "Analyst", "Finance"),
    _Person("Frank", "Miller", "Europe/Berlin", "Works Council", "Legal", in_scope=False),
    _Person("Grace", "Lee", "Europe/London", "Counsel", "Legal", in_scope=False),
)
_GIVEN_NAMES = (
    "Aaron Abigail Adam Aisha Alan Alice Amir Ana Andre Ángel Arjun Ava Beatriz Bruno Carla Carlos "
    "Chen Clara Daniel Daria David Elena Elif Emma Eric Fatima Felix Gabriel Hana Hugo Ines Ivan "
    "Jana Jonas Julia Kai Kenji Lara Leo Lina Luca Maya Mateo Mia Nadia Noah Nora Omar Oscar Priya "
    "Rafael Rosa Sami Sara Sofia Tariq Theo Uma Victor Yara Yusuf Zoe "
)
_GIVEN = tuple(_GIVEN_NAMES.split())
_SURNAME_NAMES = (
    "Abbott Adams Ahmed Alvarez Becker Bianchi Brooks Castro Chen Costa Cruz Dubois Ellis Fischer "
    "Flores Garcia Hansen Hoffmann Ito Jansen Kaur Keller Kim Kowalski Larsen Lopez Meyer Moreau "
    "Nakamura Nguyen Novak Okafor Olsen Park Patel Perez Petrov Quinn Reyes Rossi Sato Silva Singh "
    "Sousa Tanaka Torres Vogel Wagner Weber Wong Yilmaz Young Zimmermann "
)
_SURNAMES = tuple(_SURNAME_NAMES.split())
_ZONES = {
    "contoso": ("America/Los_Angeles",) * 5 + ("America/New_York",) * 3 + ("Europe/London", "Asia/Kolkata"),
    "fabrikam": ("Europe/Berlin",) * 4 + ("Europe/London",) * 2 + ("Australia/Sydney", "America/Chicago"),
}
_HOURS = {
    "America/Los_Angeles": (time(8), time(17)),
    "America/New_York": (time(9), time(17, 30)),
    "America/Chicago": (time(8), time(16, 30)),
    "Europe/London": (time(9), time(17, 30)),
    "Europe/Berlin": (time(8), time(16, 30)),
    "Asia/Kolkata": (time(9, 30), time(18, 30)),
    "Australia/Sydney": (time(8, 30), time(17)),
}


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def secret_for(name: str) -> str:
    """A client secret shaped like Entra's (`xxx8Q~` + 34 characters), derived from `name`."""
    raw = hashlib.sha256(f"secret/{name}".encode()).digest()
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.~"
    body = "".join(alphabet[b % len(alphabet)] for b in raw)
    return f"{body[:3]}8Q~{body[3:37]}"


def _password(email: str) -> str:
    return f"Passw0rd!{_digest('password', email)[:4]}"


def _mailbox(
    tenant: Tenant, person: _Person, email: str, aliases: tuple[str, ...], *, is_admin: bool = False
) -> Mailbox:
    start, end = _HOURS[person.time_zone]
    days = WEEKDAYS[:4] if person.given in ("Lynne", "Chloe") else WEEKDAYS  # part-timers
    return Mailbox(
        id=stable_id("user", tenant.key, email),
        tenant_id=tenant.id,
        email=email,
        display_name=f"{person.given} {person.surname}".strip(),
        kind=MailboxKind.USER,
        time_zone=person.time_zone,
        working_hours=WorkingHours(days, start, end, person.time_zone),
        given_name=person.given,
        surname=person.surname,
        aliases=aliases,
        user_principal_name=email,
        password=_password(email),
        job_title=person.title,
        department=person.department,
        office_location=tenant.city,
        business_phones=(f"+1 425 555 {int(_digest(email)[:4], 16) % 10000:04d}",),
        online_meeting_providers=person.providers,
        is_admin=is_admin,
        city=tenant.city,
    )


def _ascii(text: str) -> str:
    return text.replace("Á", "A").replace("á", "a")


def _people(tenant: Tenant, fixed: Sequence[_Person], seed: int, count: int) -> list[tuple[_Person, str]]:
    rng = random.Random(f"{seed}|people|{tenant.key}")
    chosen: list[tuple[_Person, str]] = []
    used: set[str] = set()
    for person in fixed:
        email = f"{person.given}.{person.surname}@{tenant.default_domain}".lower()
        used.add(email)
        chosen.append((person, email))
    while len(chosen) < count:
        given, surname = rng.choice(_GIVEN), rng.choice(_SURNAMES)
        email = _ascii(f"{given}.{surname}@{tenant.default_domain}".lower())
        if email in used:
            continue
        used.add(email)
        tz = rng.choice(_ZONES[tenant.key])
        title = rng.choice(("Engineer", "Analyst", "Consultant", "Designer", "Sales Rep", "Coordinator"))
        department = rng.choice(("Engineering", "Sales", "Finance", "Operations", "Marketing", "Support"))
        chosen.append((_Person(given, surname, tz, title, department, in_scope=rng.random() > 0.06), email))
    return chosen


def _rooms(tenant: Tenant, spec: Sequence[tuple[str, str, str, int, int]]) -> list[Mailbox]:
    rooms = []
    for name, list_key, tz, capacity, floor in spec:
        email = f"{name}@{tenant.default_domain}"
        start, end = _HOURS.get(tz, (time(8), time(18)))
        rooms.append(
            Mailbox(
                id=stable_id("room", tenant.key, email),
                tenant_id=tenant.id,
                email=email,
                display_name=f"Conf Room {name.title()}",
                kind=MailboxKind.ROOM,
                time_zone=tz,
                working_hours=WorkingHours(WEEKDAYS, start, end, tz),
                user_principal_name=email,
                capacity=capacity,
                building=list_key,
                floor=floor,
                tags=("surface hub",) if capacity >= 10 else (),
                online_meeting_providers=(),
                city=tenant.city,
            )
        )
    return rooms


def _tenant_people(tenant: Tenant, fixed: Sequence[_Person], seed: int, admin: Mailbox, people: int) -> None:
    in_scope: set[str] = set()
    for person, email in _people(tenant, fixed, seed, people):
        short = f"{person.given}{person.surname[0]}@{tenant.initial_domain}".lower()
        aliases = (
            (_ascii(short),) if person in fixed else (email.replace(tenant.default_domain, tenant.initial_domain),)
        )
        mailbox = _mailbox(tenant, person, email, aliases)
        tenant.mailboxes[email] = mailbox
        if person.in_scope:
            in_scope.add(email)
    tenant.mailboxes[admin.email] = admin
    in_scope.add(admin.email)
    in_scope.update(r.email for r in tenant.rooms())
    tenant.groups[tenant.scope_group] = Group(
        id=stable_id("group", tenant.key, tenant.scope_group),
        email=tenant.scope_group,
        display_name="Calbroker scheduling scope",
        members=frozenset(in_scope),
        description="Mail-enabled security group used as the application access policy scope.",
    )


def _room_lists(tenant: Tenant, lists: Sequence[tuple[str, str, str]]) -> None:
    for key, display, city in lists:
        email = f"{key}@{tenant.default_domain}"
        rooms = tuple(sorted(m.email for m in tenant.rooms() if m.building == key))
        tenant.room_lists[email] = RoomList(
            id=stable_id("roomlist", tenant.key, email),
            email=email,
            display_name=display,
            rooms=rooms,
            city=city,
            country=tenant.country_code,
        )


def _app(
    name: str,
    display: str,
    home: Tenant,
    roles: frozenset[str],
    *,
    multi_tenant: bool = False,
    secret_expires: datetime | None = NEVER,
    certificates: Sequence[AppCertificate] = (),
    delegated: frozenset[str] = frozenset(),
    note: str = "",
) -> AppRegistration:
    secrets = []
    if secret_expires is not None:
        secrets.append(ClientSecret(stable_id("secret", name), secret_for(name), "sandbox secret", secret_expires))
    return AppRegistration(
        client_id=stable_id("app", name),
        object_id=stable_id("app-object", name),
        display_name=display,
        home_tenant_id=home.id,
        multi_tenant=multi_tenant,
        application_permissions=roles,
        delegated_permissions=delegated,
        secrets=secrets,
        certificates=list(certificates),
        note=note,
        key=name,
    )


def _principal(tenant: Tenant, app: AppRegistration, *, scoped: bool, teams: bool = False) -> None:
    tenant.service_principals[app.client_id] = ServicePrincipal(
        id=stable_id("service-principal", tenant.id, app.client_id),
        client_id=app.client_id,
        tenant_id=tenant.id,
        app_roles=app.application_permissions,
        delegated_scopes=app.delegated_permissions,
        access_policy_group=tenant.scope_group if scoped else None,
        teams_policy=teams,
        consented_at=datetime(2026, 1, 5, 9, tzinfo=UTC),
    )


def build_directory(seed: int, certificate: AppCertificate, *, people: int = 50) -> Directory:
    """contoso (Exchange Online), fabrikam (on-premises Exchange, hybrid) and tailspin (the operator),
    each with `people` users (bench/ asks for more than the default)."""
    contoso = Tenant(
        key="contoso",
        id=stable_id("tenant", "contoso"),
        display_name="Contoso",
        domains=("contoso.com",),
        initial_domain="contoso.onmicrosoft.com",
        exchange=ExchangeLocation.ONLINE,
        scope_group="calbroker-scope@contoso.com",
        admin_email="admin@contoso.onmicrosoft.com",
        street="1 Microsoft Way",
        city="Redmond",
        state="WA",
        postal_code="98052",
        country="United States",
        country_code="US",
    )
    fabrikam = Tenant(
        key="fabrikam",
        id=stable_id("tenant", "fabrikam"),
        display_name="Fabrikam",
        domains=("fabrikam.com",),
        initial_domain="fabrikam.onmicrosoft.com",
        exchange=ExchangeLocation.ON_PREMISES,
        scope_group="calbroker-scope@fabrikam.com",
        admin_email="administrator@fabrikam.com",
        netbios_domain="FABRIKAM",
        street="Friedrichstraße 100",
        city="Berlin",
        postal_code="10117",
        country="Germany",
        country_code="DE",
    )
    tailspin = Tenant(
        key="tailspin",
        id=stable_id("tenant", "tailspin"),
        display_name="Tailspin Toys (calbroker operator)",
        domains=("tailspintoys.com",),
        initial_domain="tailspintoys.onmicrosoft.com",
        exchange=ExchangeLocation.ONLINE,
        scope_group="all@tailspintoys.com",
        admin_email="ops@tailspintoys.com",
        city="Seattle",
        country="United States",
        country_code="US",
    )
    for room in _rooms(
        contoso,
        (
            ("rainier", "redmond-rooms", "America/Los_Angeles", 12, 1),
            ("baker", "redmond-rooms", "America/Los_Angeles", 8, 1),
            ("adams", "redmond-rooms", "America/Los_Angeles", 4, 2),
            ("stevens", "redmond-rooms", "America/Los_Angeles", 6, 2),
            ("hood", "redmond-rooms", "America/Los_Angeles", 20, 3),
            ("hudson", "newyork-rooms", "America/New_York", 10, 12),
            ("liberty", "newyork-rooms", "America/New_York", 6, 12),
        ),
    ):
        contoso.mailboxes[room.email] = room
    for room in _rooms(
        fabrikam,
        (
            ("spree", "berlin-rooms", "Europe/Berlin", 10, 2),
            ("havel", "berlin-rooms", "Europe/Berlin", 4, 2),
            ("thames", "london-rooms", "Europe/London", 8, 5),
            ("severn", "london-rooms", "Europe/London", 6, 5),
            ("harbour", "sydney-rooms", "Australia/Sydney", 12, 30),
        ),
    ):
        fabrikam.mailboxes[room.email] = room
    admin_person = _Person("MOD", "Administrator", "America/Los_Angeles", "IT Admin", "IT")
    _tenant_people(
        contoso,
        _CONTOSO_PEOPLE,
        seed,
        _mailbox(contoso, admin_person, contoso.admin_email, (), is_admin=True),
        people,
    )
    fab_admin = _Person("Fabrikam", "Administrator", "Europe/Berlin", "IT Admin", "IT")
    _tenant_people(
        fabrikam,
        _FABRIKAM_PEOPLE,
        seed,
        _mailbox(fabrikam, fab_admin, fabrikam.admin_email, (), is_admin=True),
        people,
    )
    # A distribution list clients expand (EWS ExpandDL) before asking for its members' free/busy.
    engineering = "engineering@fabrikam.com"
    fabrikam.groups[engineering] = Group(
        stable_id("group", "fabrikam", engineering),
        engineering,
        "Engineering",
        frozenset(m.email for m in fabrikam.users() if m.department == "Engineering"),
        description="Distribution list of the engineering department.",
    )
    ops_person = _Person("Operations", "Team", "America/Los_Angeles", "Ops", "IT")
    ops = _mailbox(tailspin, ops_person, tailspin.admin_email, (), is_admin=True)
    tailspin.mailboxes[ops.email] = ops
    tailspin.groups[tailspin.scope_group] = Group(
        stable_id("group", "tailspin", "all"), tailspin.scope_group, "All staff", frozenset({ops.email})
    )
    _room_lists(
        contoso,
        (
            ("redmond-rooms", "Redmond Building 40", "Redmond"),
            ("newyork-rooms", "New York Office", "New York"),
        ),
    )
    _room_lists(
        fabrikam,
        (
            ("berlin-rooms", "Berlin HQ", "Berlin"),
            ("london-rooms", "London Office", "London"),
            ("sydney-rooms", "Sydney Office", "Sydney"),
        ),
    )

    secret_app = _app("contoso-secret", "Contoso Scheduling (client secret)", contoso, GRAPH_ROLES)
    cert_app = _app(
        "contoso-certificate",
        "Contoso Scheduling (certificate)",
        contoso,
        GRAPH_ROLES,
        secret_expires=None,
        certificates=(certificate,),
    )
    reader_app = _app(
        "contoso-reader", "Contoso Calendar Reader", contoso, frozenset({"Calendars.Read", "User.Read.All"})
    )
    expired_app = _app(
        "contoso-expired",
        "Contoso Scheduling (expired secret)",
        contoso,
        GRAPH_ROLES,
        secret_expires=datetime(2026, 6, 30, tzinfo=UTC),
    )
    unconsented = _app(
        "tailspin-unconsented",
        "Tailspin Planner (never consented)",
        tailspin,
        frozenset({"Calendars.Read"}),
        multi_tenant=True,
    )
    operator = _app(
        "tailspin-operator",
        "Calbroker (operator multi-tenant app)",
        tailspin,
        GRAPH_ROLES,
        multi_tenant=True,
        delegated=DELEGATED,
        note="Admin consent per tenant through /{tenant}/adminconsent; delegated sign-in through /authorize.",
    )
    fabrikam_teams = _app(
        "fabrikam-teams",
        "Fabrikam Teams bridge (hybrid)",
        fabrikam,
        frozenset({"OnlineMeetings.ReadWrite.All", "User.Read.All"}),
    )
    _principal(contoso, secret_app, scoped=True, teams=True)
    _principal(contoso, cert_app, scoped=True, teams=True)
    _principal(contoso, reader_app, scoped=False)
    _principal(contoso, expired_app, scoped=True)
    _principal(tailspin, unconsented, scoped=False)
    _principal(tailspin, operator, scoped=False)
    _principal(fabrikam, fabrikam_teams, scoped=False, teams=True)

    scope_members = fabrikam.groups[fabrikam.scope_group].members
    for username, access, display in (
        ("svc-full", EwsAccess.FULL, "Calbroker service (full impersonation)"),
        ("svc-restricted", EwsAccess.RESTRICTED, "Calbroker service (calendar folders only)"),
        ("svc-freebusy", EwsAccess.FREE_BUSY, "Calbroker service (free/busy only)"),
        ("svc-norights", EwsAccess.NONE, "Calbroker service (no rights)"),
    ):
        fabrikam.service_accounts[username] = ServiceAccount(
            username=username,
            netbios_domain="FABRIKAM",
            user_principal_name=f"{username}@fabrikam.com",
            password=f"Svc!{_digest('service-account', username)[:8]}",
            access=access,
            tenant_id=fabrikam.id,
            display_name=display,
            impersonation_scope=fabrikam.scope_group,
            scope_members=scope_members,
        )
    apps = (secret_app, cert_app, reader_app, expired_app, unconsented, operator, fabrikam_teams)
    return Directory((contoso, fabrikam, tailspin), apps)
