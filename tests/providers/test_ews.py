"""EwsProvider against the sandbox's EWS endpoint through the real exchangelib: nothing mocked.

Expected calendars, working hours and rooms come from the sandbox's control plane; upstream call
counts come from its request stats. exchangelib's process-wide Protocol cache is cleared around
every test.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall_time
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import certifi
import pytest
from exchangelib.protocol import CachingProtocol

from calbroker.domain.busy import BusyStatus
from calbroker.domain.connections import AccessLevel, Connection, ConnectionKind, ConnectionMethod, EwsServiceAccount
from calbroker.domain.errors import (
    AccessLevelInsufficient,
    ConnectionClosed,
    CredentialsRejected,
    ImpersonationDenied,
    InvalidRequest,
    MailboxNotFound,
    MailboxOutOfScope,
    UpstreamThrottled,
    UpstreamUnavailable,
)
from calbroker.domain.intervals import Interval
from calbroker.domain.schedules import MailboxSchedule, RoomList, ScheduleResult
from calbroker.domain.working_hours import WorkingHours
from calbroker.providers import (
    Deadline,
    EwsLimits,
    EwsProvider,
    ZoneRule,
    ZoneTransition,
    check_ews_endpoint,
    zone_for,
    zone_from_rule,
)
from calbroker.providers.endpoints import AddressPolicy
from calbroker.sandbox import SandboxThread
from tests.fixtures.sandbox import SandboxControl

LOOPBACK_SANDBOX = AddressPolicy(allow_private=True)  # the sandbox listens on loopback

ANCHOR = datetime(2026, 11, 23, tzinfo=UTC)  # the sandbox's default calendar anchor (a Monday)
SEEDED = Interval(ANCHOR - timedelta(days=30), ANCHOR + timedelta(days=60))  # its calendar window
STATUSES = {
    "busy": BusyStatus.BUSY,
    "tentative": BusyStatus.TENTATIVE,
    "oof": BusyStatus.OOF,
    "workingElsewhere": BusyStatus.WORKING_ELSEWHERE,
    "unknown": BusyStatus.BUSY,  # NoData: the provider's documented choice, never free
}
AVAILABILITY = "ews:GetUserAvailability"

Block = tuple[datetime, datetime, BusyStatus]
MakeProvider = Callable[..., EwsProvider]


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_exchangelib() -> Iterator[None]:
    """exchangelib caches Protocols per (endpoint, credentials) for the whole process."""
    CachingProtocol.clear_cache()
    yield
    CachingProtocol.clear_cache()


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=16, thread_name_prefix="ews-test") as pool:
        yield pool


@pytest.fixture
def fabrikam(sandbox_control: SandboxControl) -> dict[str, Any]:
    return sandbox_control.tenant("fabrikam")


@pytest.fixture
async def make_provider(
    sandbox: SandboxThread, executor: ThreadPoolExecutor, fabrikam: dict[str, Any]
) -> AsyncIterator[MakeProvider]:
    built: list[EwsProvider] = []
    accounts = {account["access"]: account for account in fabrikam["service_accounts"]}

    def make(
        access: str = "full",
        level: AccessLevel | None = None,
        *,
        password: str | None = None,
        ca: Path | str | None = "sandbox",
        endpoint: str | None = None,
        limits: EwsLimits | None = None,
    ) -> EwsProvider:
        account = accounts[access]
        url = endpoint or sandbox.ews_url
        connection = Connection(
            id=uuid.uuid4(),
            application_id=uuid.uuid4(),
            kind=ConnectionKind.EWS,
            method=ConnectionMethod.EWS,
            access_level=level or AccessLevel(access if access != "none" else "full"),
            display_name="Fabrikam",
            domains=("fabrikam.com",),
            endpoint=url,
        )
        credentials = EwsServiceAccount(
            url, f"{account['domain']}\\{account['username']}", password or account["password"]
        )
        provider = EwsProvider(
            connection,
            credentials,
            sandbox.ca_path if ca == "sandbox" else ca if isinstance(ca, Path) else None,
            executor,
            limits=limits or EwsLimits(),
            policy=LOOPBACK_SANDBOX,
        )
        built.append(provider)
        return provider

    yield make
    for provider in built:
        await provider.aclose()


@pytest.fixture
def certifi_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """requests' environment trust pointed at a bundle that lacks the sandbox CA."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, certifi.where())
    return certifi.where()


# --- helpers ---------------------------------------------------------------------------------------


def _z(moment: datetime) -> str:
    return quote(moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def sandbox_events(control: SandboxControl, mailbox: str, window: Interval) -> list[dict[str, Any]]:
    path = f"/_sandbox/mailboxes/{mailbox}/events?start={_z(window.start)}&end={_z(window.end)}"
    return list(control.get(path)["events"])


def expected_blocks(events: list[dict[str, Any]]) -> set[Block]:
    """What free/busy must report: every non-cancelled, non-free, non-empty item, whole."""
    blocks = set()
    for event in events:
        start, end = datetime.fromisoformat(event["start"]), datetime.fromisoformat(event["end"])
        if event["is_cancelled"] or event["show_as"] == "free" or start >= end:
            continue
        blocks.add((start, end, STATUSES[event["show_as"]]))
    return blocks


def blocks_of(result: ScheduleResult) -> set[Block]:
    assert isinstance(result, MailboxSchedule), result
    found = {(b.interval.start, b.interval.end, b.status) for b in result.busy}
    assert len(found) == len(result.busy), "duplicate busy blocks"
    return found


async def fetch_one(provider: EwsProvider, mailbox: str, *, days: int, deadline_s: float) -> ScheduleResult:
    window = Interval(ANCHOR, ANCHOR + timedelta(days=days))
    return (await provider.fetch_schedules([mailbox], window, Deadline.after(deadline_s)))[mailbox]


def in_scope_users(fabrikam: dict[str, Any]) -> list[dict[str, Any]]:
    return [u for u in fabrikam["users"] if u["in_scope"]]


def crosses_dst(event: dict[str, Any]) -> bool:
    zone = zone_for(event["time_zone"]) or ZoneInfo("UTC")
    start, end = datetime.fromisoformat(event["start"]), datetime.fromisoformat(event["end"])
    return start.astimezone(zone).utcoffset() != end.astimezone(zone).utcoffset()


# --- free/busy ---------------------------------------------------------------------------------------


async def test_free_busy_matches_the_sandbox_calendars(
    make_provider: MakeProvider, sandbox_control: SandboxControl, fabrikam: dict[str, Any]
) -> None:
    well_known = sandbox_control.tenants()["well_known"]
    mailboxes = [well_known["fabrikam_user"], well_known["fabrikam_colleague"]]
    provider = make_provider("full")

    results = await provider.fetch_schedules(mailboxes, SEEDED, Deadline.after(15))

    events: list[dict[str, Any]] = []
    for mailbox in mailboxes:
        theirs = sandbox_events(sandbox_control, mailbox, SEEDED)
        events += theirs
        assert blocks_of(results[mailbox]) == expected_blocks(theirs), mailbox
    # 90 days in 42-day windows, both mailboxes in one batch.
    assert sandbox_control.count(AVAILABILITY) == 3

    # The comparison covered what the sandbox seeds on purpose.
    shown = [e for e in events if not e["is_cancelled"] and e["show_as"] != "free"]
    assert any(e["type"] == "occurrence" for e in shown), "recurring occurrences"
    assert any(e["is_all_day"] for e in shown), "all-day events"
    assert any(e["show_as"] == "oof" for e in shown), "out of office"
    assert any(e["show_as"] == "tentative" for e in shown), "tentative"
    assert any(crosses_dst(e) for e in shown), "an event across a DST change"


async def test_recurring_times_stay_local_across_dst(
    make_provider: MakeProvider, sandbox_control: SandboxControl
) -> None:
    """A weekly series keeps its wall-clock time in its zone, so its UTC time moves at the DST change."""
    mailbox = sandbox_control.tenants()["well_known"]["fabrikam_user"]
    window = Interval(datetime(2026, 10, 12, tzinfo=UTC), datetime(2026, 11, 16, tzinfo=UTC))
    series: dict[str, list[dict[str, Any]]] = {}
    for event in sandbox_events(sandbox_control, mailbox, window):
        if event["series_master_id"] and event["type"] == "occurrence" and event["show_as"] != "free":
            series.setdefault(event["series_master_id"], []).append(event)

    def starts(occurrences: list[dict[str, Any]]) -> list[datetime]:
        return [datetime.fromisoformat(e["start"]) for e in occurrences]

    crossing = [
        occurrences
        for occurrences in series.values()
        if len({s.astimezone(zone_for(occurrences[0]["time_zone"])).utcoffset() for s in starts(occurrences)}) == 2
    ]
    assert crossing, "the seed has a weekly series across a DST change"

    result = (await make_provider("full").fetch_schedules([mailbox], window, Deadline.after(10)))[mailbox]

    ours = {start for start, _, _ in blocks_of(result)}
    for occurrences in crossing:
        zone = zone_for(occurrences[0]["time_zone"])
        assert {s.astimezone(zone).time() for s in starts(occurrences)} == {
            starts(occurrences)[0].astimezone(zone).time()
        }
        assert len({s.astimezone(UTC).time() for s in starts(occurrences)}) == 2
        assert set(starts(occurrences)) <= ours


async def test_working_hours_land_in_an_equivalent_iana_zone(
    make_provider: MakeProvider, fabrikam: dict[str, Any]
) -> None:
    users: dict[str, dict[str, Any]] = {}
    for user in in_scope_users(fabrikam):
        users.setdefault(user["working_hours"]["time_zone"], user)
    assert {"Europe/Berlin", "Europe/London", "Australia/Sydney", "America/Chicago"} <= set(users)
    window = Interval(datetime(2026, 10, 20, tzinfo=UTC), datetime(2026, 11, 10, tzinfo=UTC))

    results = await make_provider("full").fetch_schedules(
        [u["email"] for u in users.values()], window, Deadline.after(10)
    )

    for user in users.values():
        result = results[user["email"]]
        assert isinstance(result, MailboxSchedule)
        hours = result.working_hours
        assert isinstance(hours, WorkingHours)
        expected = user["working_hours"]
        assert {p.day.name.lower() for p in hours.periods} == set(expected["days"])
        assert {(p.start.isoformat(), p.end.isoformat() if p.end else "24:00") for p in hours.periods} == {
            (expected["start"], expected["end"])
        }
        # The zone may be another name for the same rules (EWS sends rules, not names): every period
        # of every day in the window, across the EU and US DST changes, must start and end at the
        # same instants as in the mailbox's own zone.
        theirs = ZoneInfo(expected["time_zone"])
        day = date(2026, 10, 20)
        while day < date(2026, 11, 10):
            for moment in (hours.periods[0].start, hours.periods[0].end or wall_time(23, 59)):
                ours_utc = datetime.combine(day, moment, hours.tz).astimezone(UTC)
                theirs_utc = datetime.combine(day, moment, theirs).astimezone(UTC)
                assert ours_utc == theirs_utc, (user["email"], day, hours.tz)
            day += timedelta(days=1)


@pytest.mark.parametrize(
    ("rule", "expected_offsets"),
    [
        # Sydney: standard +10, daylight +11 from the first Sunday of October to the first of April.
        (
            ZoneRule(-600, ZoneTransition(0, 4, 6, 1, wall_time(3)), ZoneTransition(-60, 10, 6, 1, wall_time(2))),
            {datetime(2026, 1, 15, tzinfo=UTC): 11, datetime(2026, 7, 15, tzinfo=UTC): 10},
        ),
        # Kathmandu: +05:45, no DST.
        (ZoneRule(-345, None, None), {datetime(2026, 1, 15, tzinfo=UTC): 5.75}),
        # +13 without DST (month 0 means "no transition"): Tonga's rules, or Etc/GMT-13.
        (
            ZoneRule(-60 * 13, ZoneTransition(0, 0, 6, 1, wall_time(0)), ZoneTransition(0, 0, 6, 1, wall_time(0))),
            {datetime(2026, 1, 15, tzinfo=UTC): 13, datetime(2026, 7, 15, tzinfo=UTC): 13},
        ),
    ],
)
def test_legacy_time_zone_rules_map_to_iana_zones(rule: ZoneRule, expected_offsets: dict[datetime, float]) -> None:
    zone = zone_from_rule(rule, 2026)
    assert zone is not None
    for moment, hours in expected_offsets.items():
        assert moment.astimezone(zone).utcoffset() == timedelta(hours=hours)
    assert zone_from_rule(ZoneRule(-197, None, None), 2026) is None  # +03:17: nothing honest to pick


@pytest.mark.parametrize(
    ("rule", "zone"),
    [
        # W. Europe, Romance, Central Europe and Central European Standard Time share this rule.
        (
            ZoneRule(-60, ZoneTransition(0, 10, 6, 5, wall_time(3)), ZoneTransition(-60, 3, 6, 5, wall_time(2))),
            "Europe/Berlin",
        ),
        # Eastern and US Eastern Standard Time.
        (
            ZoneRule(300, ZoneTransition(0, 11, 6, 1, wall_time(2)), ZoneTransition(-60, 3, 6, 2, wall_time(2))),
            "America/New_York",
        ),
        # AUS Eastern and Tasmania Standard Time.
        (
            ZoneRule(-600, ZoneTransition(0, 4, 6, 1, wall_time(3)), ZoneTransition(-60, 10, 6, 1, wall_time(2))),
            "Australia/Sydney",
        ),
    ],
)
def test_a_rule_shared_by_several_windows_zones_picks_the_one_cldr_maps_most_places_to(
    rule: ZoneRule, zone: str
) -> None:
    assert zone_from_rule(rule, 2026) == ZoneInfo(zone)


async def test_working_hours_are_in_the_mailbox_own_zone_where_its_calendar_names_it(
    make_provider: MakeProvider, sandbox_control: SandboxControl, fabrikam: dict[str, Any]
) -> None:
    """A mailbox working in Paris: Exchange's availability answer gives only the rule Paris shares with
    Berlin; the calendar's WorkHours object names the zone. A free/busy-only account cannot open it and
    gets the rule's likeliest zone."""
    user = next(u for u in in_scope_users(fabrikam) if u["working_hours"]["time_zone"] == "Europe/Berlin")
    mailbox = user["email"]
    window = Interval(datetime(2026, 10, 20, tzinfo=UTC), datetime(2026, 10, 27, tzinfo=UTC))
    sandbox_control.patch(f"/_sandbox/mailboxes/{mailbox}/working_hours", {"time_zone": "Europe/Paris"})
    try:
        full = make_provider("full")
        for _ in range(2):
            named = (await full.fetch_schedules([mailbox], window, Deadline.after(10)))[mailbox]
            assert isinstance(named, MailboxSchedule)
            assert named.working_hours is not None
            assert named.working_hours.tz == ZoneInfo("Europe/Paris")
        assert sandbox_control.count("ews:GetUserConfiguration") == 1  # read once, then remembered
        guessed = (await make_provider("free_busy").fetch_schedules([mailbox], window, Deadline.after(10)))[mailbox]
        assert isinstance(guessed, MailboxSchedule)
        assert guessed.working_hours is not None
        assert guessed.working_hours.tz == ZoneInfo("Europe/Berlin")
        assert sandbox_control.count("ews:GetUserConfiguration") == 1
    finally:
        sandbox_control.patch(f"/_sandbox/mailboxes/{mailbox}/working_hours", {"time_zone": "Europe/Berlin"})


async def test_unknown_and_out_of_scope_mailboxes_fail_alone(
    make_provider: MakeProvider, sandbox_control: SandboxControl
) -> None:
    well_known = sandbox_control.tenants()["well_known"]
    good, out_of_scope = well_known["fabrikam_user"], well_known["fabrikam_out_of_scope"]
    unknown, other_tenant = "nobody@fabrikam.com", well_known["contoso_user"]

    results = await make_provider("full").fetch_schedules(
        [good, unknown, out_of_scope, other_tenant], Interval(ANCHOR, ANCHOR + timedelta(days=7)), Deadline.after(10)
    )

    assert isinstance(results[good], MailboxSchedule)
    assert isinstance(results[unknown], MailboxNotFound)
    assert results[unknown].mailbox == unknown
    assert isinstance(results[out_of_scope], MailboxOutOfScope)
    assert results[out_of_scope].mailbox == out_of_scope
    assert isinstance(results[other_tenant], MailboxNotFound)
    assert sandbox_control.count(AVAILABILITY) == 1


async def test_150_mailboxes_cost_two_calls(
    make_provider: MakeProvider, sandbox_control: SandboxControl, fabrikam: dict[str, Any]
) -> None:
    real = [u["email"] for u in fabrikam["users"]] + [r["email"] for r in fabrikam["rooms"]]
    mailboxes = (real + [f"ghost{i}@fabrikam.com" for i in range(150)])[:150]

    results = await make_provider("full").fetch_schedules(
        mailboxes, Interval(ANCHOR, ANCHOR + timedelta(days=7)), Deadline.after(15)
    )

    assert sandbox_control.count(AVAILABILITY) == 2
    assert list(results) == mailboxes
    for user in in_scope_users(fabrikam):
        assert isinstance(results[user["email"]], MailboxSchedule)
    assert all(isinstance(results[m], MailboxNotFound) for m in mailboxes if m.startswith("ghost"))


async def test_a_60_day_window_costs_two_calls_and_reports_edge_events_once(
    make_provider: MakeProvider, sandbox_control: SandboxControl
) -> None:
    mailbox = sandbox_control.tenants()["well_known"]["fabrikam_colleague"]
    window = Interval(ANCHOR, ANCHOR + timedelta(days=60))
    edge = ANCHOR + timedelta(days=30)  # where the provider splits the window (in two equal parts)
    created = sandbox_control.post(
        f"/_sandbox/mailboxes/{mailbox}/events",
        {
            "subject": "Across the window edge",
            "start": {"dateTime": (edge - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {"dateTime": (edge + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "showAs": "busy",
        },
    )
    try:
        result = (await make_provider("full").fetch_schedules([mailbox], window, Deadline.after(10)))[mailbox]
        expected = expected_blocks(sandbox_events(sandbox_control, mailbox, window))
    finally:
        sandbox_control.delete(f"/_sandbox/mailboxes/{mailbox}/events/{created['id']}")

    assert sandbox_control.count(AVAILABILITY) == 2
    assert blocks_of(result) == expected
    assert (edge - timedelta(hours=1), edge + timedelta(hours=1), BusyStatus.BUSY) in expected


# --- back-off and deadlines ----------------------------------------------------------------------------


async def test_server_busy_back_off_is_honoured(make_provider: MakeProvider, sandbox_control: SandboxControl) -> None:
    mailbox = sandbox_control.tenants()["well_known"]["fabrikam_user"]
    provider = make_provider("full")
    await provider.verify(mailbox, Deadline.after(10))  # warm up: version probe and time zone
    sandbox_control.clean()
    sandbox_control.fault(route=AVAILABILITY, retry_after=0.5, count=1)

    started = time.monotonic()
    result = await fetch_one(provider, mailbox, days=7, deadline_s=5)

    assert isinstance(result, MailboxSchedule)
    assert time.monotonic() - started >= 0.5
    assert sandbox_control.count(AVAILABILITY) == 2


async def test_a_back_off_past_the_deadline_is_throttled_promptly(
    make_provider: MakeProvider, sandbox_control: SandboxControl
) -> None:
    mailbox = sandbox_control.tenants()["well_known"]["fabrikam_user"]
    sandbox_control.fault(route=AVAILABILITY, retry_after=30, count=2)
    provider = make_provider("free_busy")

    started = time.monotonic()
    result = await fetch_one(provider, mailbox, days=1, deadline_s=5)
    with pytest.raises(UpstreamThrottled) as raised:
        await provider.verify(mailbox, Deadline.after(5))

    assert time.monotonic() - started < 2.0
    assert isinstance(result, UpstreamThrottled)
    assert result.retry_after == 30.0
    assert result.mailbox == mailbox
    assert raised.value.retry_after == 30.0
    assert sandbox_control.count(AVAILABILITY) == 2  # one attempt each, no retry


# --- access levels and verify ---------------------------------------------------------------------------


async def test_free_busy_account_reads_availability_but_never_items(
    make_provider: MakeProvider, sandbox_control: SandboxControl
) -> None:
    mailbox = sandbox_control.tenants()["well_known"]["fabrikam_user"]
    provider = make_provider("free_busy", AccessLevel.FREE_BUSY)

    await provider.verify(mailbox, Deadline.after(10))
    result = await fetch_one(provider, mailbox, days=7, deadline_s=10)

    assert isinstance(result, MailboxSchedule)
    routes = sandbox_control.stats()["routes"]
    assert not {"ews:GetFolder", "ews:FindItem", "ews:GetItem"} & set(routes)
    with pytest.raises(AccessLevelInsufficient, match="free/busy-only"):
        provider.connection.require_calendar_access("create events")
    # The same account claimed as "full": verifying with item access is refused by Exchange.
    with pytest.raises(ImpersonationDenied) as denied:
        await make_provider("free_busy", AccessLevel.FULL).verify(mailbox, Deadline.after(10))
    assert denied.value.mailbox == mailbox


async def test_restricted_account_reads_calendars(make_provider: MakeProvider, sandbox_control: SandboxControl) -> None:
    mailbox = sandbox_control.tenants()["well_known"]["fabrikam_user"]
    provider = make_provider("restricted", AccessLevel.RESTRICTED)

    await provider.verify(mailbox, Deadline.after(10))

    provider.connection.require_calendar_access("create events")
    routes = sandbox_control.stats()["routes"]
    assert routes.get("ews:FindItem", 0) >= 1  # opened the calendar as the impersonated user
    assert routes.get(AVAILABILITY, 0) == 1


async def test_an_account_without_rights_cannot_impersonate(
    make_provider: MakeProvider, sandbox_control: SandboxControl
) -> None:
    mailbox = sandbox_control.tenants()["well_known"]["fabrikam_user"]
    with pytest.raises(ImpersonationDenied, match="ApplicationImpersonation"):
        await make_provider("none", AccessLevel.FULL).verify(mailbox, Deadline.after(10))


async def test_a_wrong_password_is_rejected(make_provider: MakeProvider, sandbox_control: SandboxControl) -> None:
    mailbox = sandbox_control.tenants()["well_known"]["fabrikam_user"]
    provider = make_provider("full", password="not-the-password")

    with pytest.raises(CredentialsRejected, match="username or password rejected"):
        await provider.verify(mailbox, Deadline.after(10))
    result = await fetch_one(provider, mailbox, days=1, deadline_s=10)
    assert isinstance(result, CredentialsRejected)
    assert "not-the-password" not in repr(provider.__dict__) + str(result)


async def test_a_changed_password_or_ca_gets_a_new_protocol(
    make_provider: MakeProvider, sandbox_control: SandboxControl, certifi_env: str
) -> None:
    mailbox = sandbox_control.tenants()["well_known"]["fabrikam_user"]
    good = make_provider("full")
    await good.verify(mailbox, Deadline.after(10))

    # Same endpoint and credentials, no CA: must not reuse the cached, trusting Protocol.
    with pytest.raises(UpstreamUnavailable, match="TLS"):
        await make_provider("full", ca=None).verify(mailbox, Deadline.after(10))
    with pytest.raises(CredentialsRejected):
        await make_provider("full", password="rotated-elsewhere").verify(mailbox, Deadline.after(10))
    CachingProtocol.clear_cache()
    await good.verify(mailbox, Deadline.after(10))  # still its own Protocol, still trusting its CA


# --- TLS and reachability --------------------------------------------------------------------------------


async def test_tls_failure_without_the_ca(
    make_provider: MakeProvider, sandbox_control: SandboxControl, certifi_env: str
) -> None:
    mailbox = sandbox_control.tenants()["well_known"]["fabrikam_user"]
    with pytest.raises(UpstreamUnavailable, match=r"TLS .*CERTIFICATE_VERIFY_FAILED") as failed:
        await make_provider("full", ca=None).verify(mailbox, Deadline.after(10))
    assert failed.value.upstream_code == "tls"


async def test_the_environment_cannot_override_the_endpoint_ca(
    make_provider: MakeProvider,
    sandbox_control: SandboxControl,
    monkeypatch: pytest.MonkeyPatch,
    sandbox: SandboxThread,
) -> None:
    mailbox = sandbox_control.tenants()["well_known"]["fabrikam_user"]
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, certifi.where())
    await make_provider("full").verify(mailbox, Deadline.after(10))  # the endpoint's CA wins over the env

    CachingProtocol.clear_cache()
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(name, str(sandbox.ca_path))
    with pytest.raises(UpstreamUnavailable, match="TLS"):  # and an env that would trust it changes nothing
        await make_provider("full", ca=Path(certifi.where())).verify(mailbox, Deadline.after(10))


async def test_an_unreachable_endpoint_says_so(make_provider: MakeProvider) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = make_provider("full", endpoint=f"https://127.0.0.1:{port}/EWS/Exchange.asmx")
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable, match="EWS endpoint unreachable"):
        await provider.verify("anna.schmidt@fabrikam.com", Deadline.after(10))
    assert time.monotonic() - started < 3.0


# --- endpoints, rooms, lifecycle --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "outlook.office365.com",
        "https://outlook.office365.com/EWS/Exchange.asmx",
        "https://outlook.office.com/EWS/Exchange.asmx",
        "https://eur01.outlook.com/EWS/Exchange.asmx",
        "https://partner.outlook.cn/EWS/Exchange.asmx",
        "https://outlook.office365.us/EWS/Exchange.asmx",
    ],
)
def test_exchange_online_endpoints_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_ews_endpoint(url)
    message = refused.value.errors[0].message
    assert refused.value.errors[0].field == "endpoint"
    for fact in ("Exchange Online", "ApplicationImpersonation", "February 2025", "1 October 2026", "1 April 2027"):
        assert fact in message
    assert "Microsoft Graph" in message


@pytest.mark.parametrize(
    ("typed", "normalised"),
    [
        ("https://mail.contoso.com", "https://mail.contoso.com/EWS/Exchange.asmx"),
        ("mail.contoso.com", "https://mail.contoso.com/EWS/Exchange.asmx"),
        ("https://Mail.Contoso.com:443/ews/", "https://mail.contoso.com/EWS/Exchange.asmx"),
        ("https://mail.contoso.com:8443/EWS/Exchange.asmx", "https://mail.contoso.com:8443/EWS/Exchange.asmx"),
        (" https://mail.contoso.com/EWS/Exchange.asmx ", "https://mail.contoso.com/EWS/Exchange.asmx"),
    ],
)
def test_endpoints_are_completed_and_normalised(typed: str, normalised: str) -> None:
    assert check_ews_endpoint(typed) == normalised


@pytest.mark.parametrize(
    ("typed", "why"),
    [
        ("http://mail.contoso.com/EWS/Exchange.asmx", "https"),
        ("https://mail.contoso.com/owa", "/EWS/Exchange.asmx"),
        ("https://svc:secret@mail.contoso.com/EWS/Exchange.asmx", "credentials"),
        ("https://mail.contoso.com/EWS/Exchange.asmx?x=1", "query"),
        ("", "EWS URL"),
    ],
)
def test_malformed_endpoints_are_refused(typed: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why):
        check_ews_endpoint(typed)


def test_a_provider_never_talks_ews_to_exchange_online(make_provider: MakeProvider) -> None:
    with pytest.raises(InvalidRequest, match="Exchange Online"):
        make_provider("full", endpoint="https://outlook.office365.com/EWS/Exchange.asmx")


async def test_list_rooms_returns_the_seeded_rooms(make_provider: MakeProvider, fabrikam: dict[str, Any]) -> None:
    rooms = await make_provider("full").list_rooms(Deadline.after(10))

    listed = {
        room: RoomList(room_list["email"], room_list["display_name"])
        for room_list in fabrikam["room_lists"]
        for room in room_list["rooms"]
    }
    assert {room.email: room.room_list for room in rooms} == listed
    seeded = {room["email"]: room for room in fabrikam["rooms"]}
    assert all(room.name == seeded[room.email]["display_name"] for room in rooms)
    # The building comes from the directory (ResolveNames' Contact/OfficeLocation); EWS has no capacity.
    assert [(room.building, room.capacity) for room in rooms] == [(seeded[r.email]["building"], None) for r in rooms]


async def test_a_closed_provider_refuses_use(make_provider: MakeProvider) -> None:
    provider = make_provider("full")
    await provider.aclose()
    with pytest.raises(ConnectionClosed, match="revoked or its credentials replaced"):
        await provider.list_rooms(Deadline.after(5))
