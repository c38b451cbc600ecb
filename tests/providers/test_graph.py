"""GraphProvider against the sandbox through the real msal and aiohttp clients: nothing mocked.

Expected values come from the sandbox's control plane (its own calendars and directory), not from
numbers written here; upstream call counts come from the sandbox's request stats.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from datetime import time as datetime_time
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from calbroker.config import Cloud, OperatorApp, sandbox_cloud
from calbroker.domain.busy import BusyStatus
from calbroker.domain.connections import (
    AccessLevel,
    Connection,
    ConnectionKind,
    ConnectionMethod,
    Credentials,
    GraphAdminConsent,
    GraphCertificate,
    GraphClientSecret,
    GraphDelegated,
)
from calbroker.domain.errors import (
    ConnectionClosed,
    CredentialsRejected,
    MailboxNotFound,
    MailboxOutOfScope,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from calbroker.domain.intervals import Interval
from calbroker.domain.schedules import MailboxSchedule, RoomList, ScheduleResult
from calbroker.domain.working_hours import Weekday, WeeklyPeriod, WorkingHours
from calbroker.providers import WINDOWS_TO_IANA, Deadline, GraphLimits, GraphProvider, zone_for
from calbroker.providers.graph import read_schedules
from calbroker.providers.graph.wire import DateTimeTimeZone, wall_time
from calbroker.sandbox import SandboxThread
from tests.fixtures.sandbox import SandboxControl

ANCHOR = datetime(2026, 11, 23, tzinfo=UTC)  # the sandbox's default calendar anchor (a Monday)
STATUSES = {
    "busy": BusyStatus.BUSY,
    "tentative": BusyStatus.TENTATIVE,
    "oof": BusyStatus.OOF,
    "workingElsewhere": BusyStatus.WORKING_ELSEWHERE,
    "unknown": BusyStatus.BUSY,  # the provider's documented choice: never free
}

Block = tuple[datetime, datetime, BusyStatus]
MakeProvider = Callable[..., GraphProvider]


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="graph-test") as pool:
        yield pool


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def cloud(sandbox: SandboxThread) -> Cloud:
    # REQUESTS_CA_BUNDLE stays pointed at the system bundle here: the provider must pin the
    # sandbox CA itself.
    return sandbox_cloud(sandbox.url, sandbox.ca_path)


@pytest.fixture
def contoso(sandbox_control: SandboxControl) -> dict[str, object]:
    return sandbox_control.tenant("contoso")


@pytest.fixture
async def make_provider(
    sandbox_control: SandboxControl,
    cloud: Cloud,
    http: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> AsyncIterator[MakeProvider]:
    built: list[GraphProvider] = []
    tenant_id = str(sandbox_control.tenant("contoso")["id"])

    def make(
        credentials: Credentials | None = None,
        *,
        access_level: AccessLevel = AccessLevel.FULL,
        cloud_: Cloud | None = None,
        **kwargs: object,
    ) -> GraphProvider:
        if credentials is None:
            credentials = secret_credentials(sandbox_control, "contoso-secret")
        connection = Connection(
            id=uuid.uuid4(),
            application_id=uuid.uuid4(),
            kind=ConnectionKind.GRAPH,
            method=ConnectionMethod.GRAPH_APP,
            access_level=access_level,
            display_name="Contoso",
            domains=("contoso.com",),
            cloud="sandbox",
            tenant_id=tenant_id,
        )
        provider = GraphProvider(connection, credentials, cloud_ or cloud, http, executor, **kwargs)  # type: ignore[arg-type]
        built.append(provider)
        return provider

    yield make
    for provider in built:
        await provider.aclose()


@pytest.fixture
def sandbox_settings(sandbox_control: SandboxControl) -> Iterator[Callable[..., None]]:
    """Change sandbox settings for one test; the originals come back afterwards."""
    original = sandbox_control.get("/_sandbox/settings")
    changed: set[str] = set()

    def change(**settings: object) -> None:
        changed.update(settings)
        sandbox_control.patch("/_sandbox/settings", settings)

    yield change
    if changed:
        sandbox_control.patch("/_sandbox/settings", {k: original[k] for k in changed})


# --- helpers ---------------------------------------------------------------------------------------


def secret_credentials(control: SandboxControl, app_key: str, tenant: str = "contoso") -> GraphClientSecret:
    app = control.app(app_key)
    return GraphClientSecret(str(control.tenant(tenant)["id"]), app["client_id"], app["secrets"][0]["value"])


def certificate_credentials(control: SandboxControl) -> GraphCertificate:
    app = control.app("contoso-certificate")
    certificate = app["certificates"][0]
    return GraphCertificate(
        str(control.tenant("contoso")["id"]),
        app["client_id"],
        certificate["private_key_pem"],
        certificate["certificate_pem"],
    )


def in_scope_users(tenant: dict[str, object]) -> list[str]:
    users = tenant["users"]
    assert isinstance(users, list)
    return [u["email"] for u in users if u["in_scope"]]


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expected_busy(control: SandboxControl, mailbox: str, window: Interval) -> set[Block]:
    """What getSchedule must report, from the sandbox's own calendar: every occurrence in the
    window that is not cancelled and not shown as free."""
    events = control.get(
        f"/_sandbox/mailboxes/{mailbox}/events?start={utc_text(window.start)}&end={utc_text(window.end)}"
    )["events"]
    found = set()
    for event in events:
        start, end = datetime.fromisoformat(event["start"]), datetime.fromisoformat(event["end"])
        if event["is_cancelled"] or event["show_as"] == "free" or start >= end:
            continue
        found.add((start, end, STATUSES[event["show_as"]]))
    return found


def blocks_of(result: ScheduleResult) -> set[Block]:
    assert isinstance(result, MailboxSchedule), result
    blocks = [(b.interval.start, b.interval.end, b.status) for b in result.busy]
    assert len(blocks) == len(set(blocks)), "duplicate busy blocks"
    return set(blocks)


def graph_calls(control: SandboxControl, route: str = "graph:getSchedule") -> int:
    return control.count(route)


# --- free/busy mapping ---------------------------------------------------------------------------


async def test_free_busy_matches_the_sandbox_calendars(
    make_provider: MakeProvider, sandbox_control: SandboxControl
) -> None:
    """Recurring, all-day, OOF, tentative, working-elsewhere, unknown and DST-crossing items."""
    unknown = sandbox_control.post(
        "/_sandbox/mailboxes/megan.bowen@contoso.com/events",
        {
            "subject": "Status unknown",
            "start": {"dateTime": "2026-11-25T18:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-11-25T19:00:00", "timeZone": "UTC"},
            "showAs": "unknown",
        },
    )
    try:
        mailboxes = [
            "adele.vance@contoso.com",
            "alex.wilber@contoso.com",
            "megan.bowen@contoso.com",
            "lynne.robbins@contoso.com",
            "miriam.graham@contoso.com",
            "pradeep.gupta@contoso.com",
        ]
        # 61 days across the US and EU DST changes (one getSchedule chunk).
        window = Interval(datetime(2026, 10, 24, tzinfo=UTC), datetime(2026, 12, 24, tzinfo=UTC))
        results = await make_provider().fetch_schedules(mailboxes, window, Deadline.after(10))

        statuses: set[BusyStatus] = set()
        for mailbox in mailboxes:
            expected = expected_busy(sandbox_control, mailbox, window)
            assert blocks_of(results[mailbox]) == expected, mailbox
            statuses.update(status for _, _, status in expected)
        assert statuses == {
            BusyStatus.BUSY,
            BusyStatus.TENTATIVE,
            BusyStatus.OOF,
            BusyStatus.WORKING_ELSEWHERE,
        }
        assert (
            datetime(2026, 11, 25, 18, tzinfo=UTC),
            datetime(2026, 11, 25, 19, tzinfo=UTC),
            BusyStatus.BUSY,
        ) in blocks_of(results["megan.bowen@contoso.com"])

        # The data really has the hard cases in it: a series, all-day items and a DST crossing.
        events = sandbox_control.get(
            f"/_sandbox/mailboxes/adele.vance@contoso.com/events?start={utc_text(window.start)}"
            f"&end={utc_text(window.end)}"
        )["events"]
        assert any(e["series_master_id"] for e in events)
        assert any(e["is_all_day"] and e["show_as"] == "oof" for e in events)
        los_angeles = ZoneInfo("America/Los_Angeles")
        crossing = [
            e
            for e in events
            if datetime.fromisoformat(e["start"]).astimezone(los_angeles).utcoffset()
            != datetime.fromisoformat(e["end"]).astimezone(los_angeles).utcoffset()
        ]
        assert crossing, "expected an event across the DST change"
        # 22:00 PDT → 06:00 PST is nine hours, not eight.
        start, end = datetime.fromisoformat(crossing[0]["start"]), datetime.fromisoformat(crossing[0]["end"])
        assert (start, end, BusyStatus.BUSY) in blocks_of(results["adele.vance@contoso.com"])
        assert end - start == timedelta(hours=9)
    finally:
        sandbox_control.delete(f"/_sandbox/mailboxes/megan.bowen@contoso.com/events/{unknown['id']}")


async def test_working_hours_map_windows_zones_to_iana(make_provider: MakeProvider, contoso: dict[str, object]) -> None:
    users = {u["email"]: u for u in contoso["users"]}  # type: ignore[attr-defined]
    mailboxes = ["adele.vance@contoso.com", "lynne.robbins@contoso.com", "miriam.graham@contoso.com"]
    mailboxes.append("pradeep.gupta@contoso.com")
    window = Interval(ANCHOR, ANCHOR + timedelta(days=1))
    results = await make_provider().fetch_schedules(mailboxes, window, Deadline.after(10))
    for mailbox in mailboxes:
        hours = users[mailbox]["working_hours"]
        start, end = (datetime.strptime(hours[k], "%H:%M:%S").time() for k in ("start", "end"))
        expected = WorkingHours(
            tuple(WeeklyPeriod(Weekday[d.upper()], start, end) for d in hours["days"]),
            ZoneInfo(hours["time_zone"]),
        )
        result = results[mailbox]
        assert isinstance(result, MailboxSchedule)
        assert result.working_hours == expected, mailbox
    lynne = results["lynne.robbins@contoso.com"]
    assert isinstance(lynne, MailboxSchedule)
    assert lynne.working_hours is not None
    assert Weekday.FRIDAY not in {p.day for p in lynne.working_hours.periods}  # a four-day week


def test_windows_zone_table() -> None:
    assert zone_for("Pacific Standard Time") == ZoneInfo("America/Los_Angeles")
    assert zone_for("india standard time") == ZoneInfo("Asia/Kolkata")  # not the old Asia/Calcutta
    assert zone_for("W. Europe Standard Time") == ZoneInfo("Europe/Berlin")
    assert zone_for("Europe/London") == ZoneInfo("Europe/London")  # IANA names pass through
    assert zone_for("tzone://Microsoft/Utc") == ZoneInfo("UTC")
    assert zone_for("Customized Time Zone") is None
    assert zone_for("../../etc/passwd") is None
    for name in WINDOWS_TO_IANA:
        assert zone_for(name) is not None, name


def test_getschedule_payloads_are_read_tolerantly() -> None:
    """Windows zone names, Graph's seven fractional digits, capitalised or unknown statuses,
    zero-length items, night shifts and unknown zones — without the sandbox's help."""
    body = b"""{"value": [
      {"scheduleId": "a@contoso.com", "availabilityView": "2", "futureField": {"x": 1},
       "scheduleItems": [
         {"status": "Tentative",
          "start": {"dateTime": "2026-11-24T09:00:00.0000000", "timeZone": "Pacific Standard Time"},
          "end": {"dateTime": "2026-11-24T10:00:00.0000000", "timeZone": "Pacific Standard Time"}},
         {"status": "somethingNew", "start": {"dateTime": "2026-11-24T20:00:00Z", "timeZone": "UTC"},
          "end": {"dateTime": "2026-11-24T21:00:00Z", "timeZone": "UTC"}},
         {"status": "free", "start": {"dateTime": "2026-11-24T22:00:00", "timeZone": "UTC"},
          "end": {"dateTime": "2026-11-24T23:00:00", "timeZone": "UTC"}},
         {"status": "busy", "start": {"dateTime": "2026-11-24T23:00:00", "timeZone": "UTC"},
          "end": {"dateTime": "2026-11-24T23:00:00", "timeZone": "UTC"}}],
       "workingHours": {"daysOfWeek": ["friday"], "startTime": "22:00:00.0000000", "endTime": "06:00:00.0000000",
                        "timeZone": {"name": "W. Europe Standard Time"}}},
      {"scheduleId": "b@contoso.com", "scheduleItems": [],
       "workingHours": {"daysOfWeek": ["monday"], "startTime": "08:00:00", "endTime": "17:00:00",
                        "timeZone": {"name": "Customized Time Zone"}}},
      {"scheduleId": "c@contoso.com", "availabilityView": "",
       "error": {"message": "Busy.", "responseCode": "ErrorServerBusy"}}
    ]}"""
    results = read_schedules(body, ["a@contoso.com", "b@contoso.com", "c@contoso.com"])
    first = results["a@contoso.com"]
    assert isinstance(first, MailboxSchedule)
    assert [(b.interval.start, b.interval.end, b.status) for b in first.busy] == [
        (datetime(2026, 11, 24, 17, tzinfo=UTC), datetime(2026, 11, 24, 18, tzinfo=UTC), BusyStatus.TENTATIVE),
        (datetime(2026, 11, 24, 20, tzinfo=UTC), datetime(2026, 11, 24, 21, tzinfo=UTC), BusyStatus.BUSY),
    ]
    assert first.working_hours == WorkingHours(
        (
            WeeklyPeriod(Weekday.FRIDAY, datetime_time(22), None),
            WeeklyPeriod(Weekday.SATURDAY, datetime_time(0), datetime_time(6)),
        ),
        ZoneInfo("Europe/Berlin"),
    )
    second = results["b@contoso.com"]
    assert isinstance(second, MailboxSchedule)
    assert second.working_hours is None  # an unknown zone is "not known", not a guess
    third = results["c@contoso.com"]
    assert isinstance(third, UpstreamThrottled)
    assert third.mailbox == "c@contoso.com"


# --- tokens ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["secret", "certificate"])
async def test_tokens_come_from_the_cache_after_the_first_call(
    make_provider: MakeProvider, sandbox_control: SandboxControl, kind: str
) -> None:
    credentials = (
        secret_credentials(sandbox_control, "contoso-secret")
        if kind == "secret"
        else certificate_credentials(sandbox_control)  # that app has no secret at all
    )
    provider = make_provider(credentials)
    window = Interval(ANCHOR, ANCHOR + timedelta(days=1))
    for _ in range(2):
        result = await provider.fetch_schedules(["adele.vance@contoso.com"], window, Deadline.after(10))
        assert isinstance(result["adele.vance@contoso.com"], MailboxSchedule)
    stats = sandbox_control.stats()
    assert stats["routes"]["entra:openid-configuration"] == 1
    assert stats["routes"]["entra:token"] == 1
    assert stats["clients"]["entra:token"] == {credentials.client_id: 1}
    assert stats["routes"]["graph:getSchedule"] == 2


async def test_concurrent_cold_calls_share_one_token_request(
    make_provider: MakeProvider, sandbox_control: SandboxControl, contoso: dict[str, object]
) -> None:
    provider = make_provider()
    window = Interval(ANCHOR, ANCHOR + timedelta(days=1))
    users = in_scope_users(contoso)
    await asyncio.gather(*(provider.fetch_schedules([m], window, Deadline.after(10)) for m in users[:6]))
    assert sandbox_control.count("entra:token") == 1
    assert sandbox_control.count("graph:getSchedule") == 6


async def test_a_rejected_token_is_replaced_once(
    make_provider: MakeProvider, sandbox_control: SandboxControl, sandbox_settings: Callable[..., None]
) -> None:
    # Graph now treats every token as expired: one fresh token is tried, then the error stands.
    sandbox_settings(token_clock_skew_s=-4000)
    window = Interval(ANCHOR, ANCHOR + timedelta(days=1))
    results = await make_provider().fetch_schedules(["adele.vance@contoso.com"], window, Deadline.after(10))
    rejected = results["adele.vance@contoso.com"]
    assert isinstance(rejected, CredentialsRejected)
    assert rejected.upstream_code == "InvalidAuthenticationToken"
    assert sandbox_control.count("entra:token") == 2
    assert sandbox_control.count("graph:getSchedule") == 2


# --- batching ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("members", [45, 100])
async def test_members_cost_one_call_per_twenty(
    make_provider: MakeProvider, sandbox_control: SandboxControl, contoso: dict[str, object], members: int
) -> None:
    users = contoso["users"]
    rooms = contoso["rooms"]
    assert isinstance(users, list)
    assert isinstance(rooms, list)
    addresses = in_scope_users(contoso) + [r["email"] for r in rooms]
    addresses += [alias for u in users if u["in_scope"] for alias in u["aliases"]]
    # Not enough mailboxes in the tenant for 100: the rest are unknown addresses, at the end so
    # every batch goes through a real mailbox.
    addresses += [f"nobody.{i}@contoso.com" for i in range(max(0, members - len(addresses)))]
    wanted = addresses[:members]
    window = Interval(ANCHOR, ANCHOR + timedelta(days=7))

    results = await make_provider().fetch_schedules(wanted, window, Deadline.after(10))

    assert sandbox_control.count("graph:getSchedule") == math.ceil(members / 20)
    assert set(results) == set(wanted)
    for address in wanted:
        expected_type = MailboxNotFound if address.startswith("nobody.") else MailboxSchedule
        assert isinstance(results[address], expected_type), (address, results[address])


async def test_a_seventy_day_window_is_two_chunks(make_provider: MakeProvider, sandbox_control: SandboxControl) -> None:
    mailboxes = ["adele.vance@contoso.com", "alex.wilber@contoso.com", "megan.bowen@contoso.com"]
    window = Interval(ANCHOR - timedelta(days=30), ANCHOR + timedelta(days=40))
    # An item across the chunk boundary (35 days in: 2026-11-28T00:00Z) is reported once.
    across = sandbox_control.post(
        "/_sandbox/mailboxes/adele.vance@contoso.com/events",
        {
            "subject": "Across the chunk boundary",
            "start": {"dateTime": "2026-11-27T20:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-11-28T04:00:00", "timeZone": "UTC"},
            "showAs": "busy",
        },
    )
    try:
        results = await make_provider().fetch_schedules(mailboxes, window, Deadline.after(10))
        assert sandbox_control.count("graph:getSchedule") == 2
        for mailbox in mailboxes:
            assert blocks_of(results[mailbox]) == expected_busy(sandbox_control, mailbox, window), mailbox
        assert (
            datetime(2026, 11, 27, 20, tzinfo=UTC),
            datetime(2026, 11, 28, 4, tzinfo=UTC),
            BusyStatus.BUSY,
        ) in blocks_of(results["adele.vance@contoso.com"])
    finally:
        sandbox_control.delete(f"/_sandbox/mailboxes/adele.vance@contoso.com/events/{across['id']}")


async def test_duplicates_and_case_cost_nothing_extra(
    make_provider: MakeProvider, sandbox_control: SandboxControl
) -> None:
    asked = ["Adele.Vance@contoso.com", "adele.vance@contoso.com", "ALEX.WILBER@CONTOSO.COM"]
    window = Interval(ANCHOR, ANCHOR + timedelta(days=1))
    results = await make_provider().fetch_schedules(asked, window, Deadline.after(10))
    assert list(results) == asked
    assert all(isinstance(r, MailboxSchedule) for r in results.values())
    assert sandbox_control.count("graph:getSchedule") == 1


# --- per-mailbox errors ------------------------------------------------------------------------------


async def test_out_of_scope_mailboxes_fail_alone(
    make_provider: MakeProvider, sandbox_control: SandboxControl, contoso: dict[str, object]
) -> None:
    out = str(sandbox_control.tenants()["well_known"]["contoso_out_of_scope"])
    assert out not in in_scope_users(contoso)
    window = Interval(ANCHOR, ANCHOR + timedelta(days=7))
    provider = make_provider()

    # Out of scope inside the batch: a per-schedule error, one call.
    results = await provider.fetch_schedules(
        ["adele.vance@contoso.com", out, "alex.wilber@contoso.com"], window, Deadline.after(10)
    )
    assert isinstance(results[out], MailboxOutOfScope)
    assert results[out].mailbox == out
    assert sandbox_control.count("graph:getSchedule") == 1

    # Out of scope in the URL (first of the batch): 403 for the request, then once more through
    # another mailbox of the batch.
    sandbox_control.clean()
    results = await make_provider().fetch_schedules(
        [out, "adele.vance@contoso.com", "alex.wilber@contoso.com"], window, Deadline.after(10)
    )
    assert isinstance(results[out], MailboxOutOfScope)
    for mailbox in ("adele.vance@contoso.com", "alex.wilber@contoso.com"):
        assert blocks_of(results[mailbox]) == expected_busy(sandbox_control, mailbox, window)
    assert sandbox_control.count("graph:getSchedule") == 2
    assert sandbox_control.stats()["statuses"]["graph:getSchedule"] == {"200": 1, "403": 1}


async def test_unknown_mailboxes_are_not_found(make_provider: MakeProvider, sandbox_control: SandboxControl) -> None:
    window = Interval(ANCHOR, ANCHOR + timedelta(days=1))
    results = await make_provider().fetch_schedules(
        ["nobody@contoso.com", "adele.vance@contoso.com", "ghost@contoso.com"], window, Deadline.after(10)
    )
    assert isinstance(results["nobody@contoso.com"], MailboxNotFound)  # 404 in the URL
    assert isinstance(results["ghost@contoso.com"], MailboxNotFound)  # per-schedule error
    assert isinstance(results["adele.vance@contoso.com"], MailboxSchedule)


# --- throttling, timeouts ------------------------------------------------------------------------------


async def test_a_429_with_retry_after_is_retried(make_provider: MakeProvider, sandbox_control: SandboxControl) -> None:
    sandbox_control.fault(route="graph:getSchedule", status=429, retry_after=1, count=1)
    window = Interval(ANCHOR, ANCHOR + timedelta(days=1))
    started = time.monotonic()
    results = await make_provider().fetch_schedules(["adele.vance@contoso.com"], window, Deadline.after(10))
    elapsed = time.monotonic() - started
    assert isinstance(results["adele.vance@contoso.com"], MailboxSchedule)
    assert 1.0 <= elapsed < 5
    assert sandbox_control.stats()["statuses"]["graph:getSchedule"] == {"200": 1, "429": 1}


async def test_a_retry_after_past_the_deadline_fails_fast(
    make_provider: MakeProvider, sandbox_control: SandboxControl
) -> None:
    sandbox_control.fault(route="graph:getSchedule", mailbox="adele.vance@contoso.com", status=429, retry_after=30)
    window = Interval(ANCHOR, ANCHOR + timedelta(days=1))
    provider = make_provider()
    started = time.monotonic()
    results = await provider.fetch_schedules(
        ["adele.vance@contoso.com", "alex.wilber@contoso.com"], window, Deadline.after(3)
    )
    assert time.monotonic() - started < 1.5  # no sleeping through a Retry-After that cannot fit
    for mailbox in ("adele.vance@contoso.com", "alex.wilber@contoso.com"):
        throttled = results[mailbox]
        assert isinstance(throttled, UpstreamThrottled)
        assert throttled.retry_after == 30
        assert throttled.mailbox == mailbox

    # Another batch of the same query is not affected (21 mailboxes: two batches).
    sandbox_control.clean()
    sandbox_control.fault(route="graph:getSchedule", mailbox="adele.vance@contoso.com", status=429, retry_after=30)
    users = [m for m in in_scope_users(sandbox_control.tenant("contoso")) if m != "adele.vance@contoso.com"]
    wanted = ["adele.vance@contoso.com", *users[:19], users[19]]
    results = await provider.fetch_schedules(wanted, window, Deadline.after(3))
    assert all(isinstance(results[m], UpstreamThrottled) for m in wanted[:20])
    assert isinstance(results[wanted[20]], MailboxSchedule)


async def test_an_upstream_hang_ends_at_the_deadline(
    make_provider: MakeProvider, sandbox_control: SandboxControl, sandbox_settings: Callable[..., None]
) -> None:
    sandbox_settings(hang_s=3)  # so the sandbox's side of the hang ends soon too
    sandbox_control.fault(route="graph:getSchedule", action="timeout", count=1)
    window = Interval(ANCHOR, ANCHOR + timedelta(days=1))
    started = time.monotonic()
    results = await make_provider().fetch_schedules(
        ["adele.vance@contoso.com", "alex.wilber@contoso.com"], window, Deadline.after(1.5)
    )
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 2.5
    assert all(isinstance(r, UpstreamTimeout) for r in results.values())


async def test_server_errors_become_unavailable(make_provider: MakeProvider, sandbox_control: SandboxControl) -> None:
    sandbox_control.fault(route="graph:getSchedule", status=500)
    window = Interval(ANCHOR, ANCHOR + timedelta(days=1))
    results = await make_provider(limits=GraphLimits(retry_backoff_s=0.05)).fetch_schedules(
        ["adele.vance@contoso.com"], window, Deadline.after(5)
    )
    assert isinstance(results["adele.vance@contoso.com"], UpstreamUnavailable)
    assert sandbox_control.count("graph:getSchedule") == GraphLimits().max_attempts


# --- verify ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("access_level", [AccessLevel.FULL, AccessLevel.FREE_BUSY])
async def test_verify_succeeds_with_the_cheapest_real_call(
    make_provider: MakeProvider, sandbox_control: SandboxControl, access_level: AccessLevel
) -> None:
    await make_provider(access_level=access_level).verify("adele.vance@contoso.com", Deadline.after(10))
    route = "graph:getSchedule" if access_level is AccessLevel.FREE_BUSY else "graph:calendarView"
    assert sandbox_control.count(route) == 1


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("wrong secret", "AADSTS7000215"),
        ("expired secret", "AADSTS7000222"),
        ("unknown tenant", "AADSTS90002"),
        ("malformed tenant", "AADSTS900023"),
        ("unconsented app", "AADSTS700016"),
        ("foreign certificate", "AADSTS700027"),
    ],
)
async def test_verify_names_the_credential_problem(
    make_provider: MakeProvider, sandbox_control: SandboxControl, case: str, code: str
) -> None:
    tenant_id = str(sandbox_control.tenant("contoso")["id"])
    good = secret_credentials(sandbox_control, "contoso-secret")
    credentials: Credentials
    match case:
        case "wrong secret":
            credentials = GraphClientSecret(tenant_id, good.client_id, "not-the-secret")
        case "expired secret":
            credentials = secret_credentials(sandbox_control, "contoso-expired")
        case "unknown tenant":
            credentials = GraphClientSecret(str(uuid.uuid4()), good.client_id, good.client_secret)
        case "malformed tenant":
            credentials = GraphClientSecret("contoso", good.client_id, good.client_secret)
        case "unconsented app":
            app = sandbox_control.app("tailspin-unconsented")
            credentials = GraphClientSecret(tenant_id, app["client_id"], app["secrets"][0]["value"])
        case _:
            real = certificate_credentials(sandbox_control)
            other = _self_signed()
            credentials = GraphCertificate(tenant_id, real.client_id, other[0], other[1])
    with pytest.raises(CredentialsRejected) as caught:
        await make_provider(credentials).verify("adele.vance@contoso.com", Deadline.after(10))
    assert caught.value.upstream_code == code
    assert "not-the-secret" not in caught.value.detail
    assert good.client_secret not in caught.value.detail


async def test_an_entra_outage_is_not_a_credentials_problem(
    make_provider: MakeProvider, sandbox_control: SandboxControl
) -> None:
    sandbox_control.fault(route="entra:token", status=503)
    with pytest.raises(UpstreamUnavailable) as caught:
        await make_provider().verify("adele.vance@contoso.com", Deadline.after(10))
    assert not isinstance(caught.value, CredentialsRejected)


async def test_verify_reports_the_test_mailbox(make_provider: MakeProvider, sandbox_control: SandboxControl) -> None:
    out = str(sandbox_control.tenants()["well_known"]["contoso_out_of_scope"])
    for level in (AccessLevel.FULL, AccessLevel.FREE_BUSY):
        provider = make_provider(access_level=level)
        with pytest.raises(MailboxOutOfScope):
            await provider.verify(out, Deadline.after(10))
        with pytest.raises(MailboxNotFound):
            await provider.verify("nobody@contoso.com", Deadline.after(10))


async def test_verify_says_tls_when_the_ca_is_wrong(make_provider: MakeProvider, cloud: Cloud) -> None:
    untrusted = Cloud("sandbox", cloud.authority_host, cloud.graph_url, cloud.graph_resource, None, known_to_msal=False)
    with pytest.raises(UpstreamUnavailable, match="TLS"):
        await make_provider(cloud_=untrusted).verify("adele.vance@contoso.com", Deadline.after(10))


async def test_admin_consent_goes_through_the_operator_app(
    make_provider: MakeProvider, sandbox_control: SandboxControl
) -> None:
    operator = sandbox_control.app("tailspin-operator")
    app = OperatorApp(operator["client_id"], operator["secrets"][0]["value"])
    credentials = GraphAdminConsent(str(sandbox_control.tenant("contoso")["id"]))
    with pytest.raises(CredentialsRejected) as caught:
        await make_provider(credentials, operator_app=app).verify("adele.vance@contoso.com", Deadline.after(10))
    assert caught.value.upstream_code == "AADSTS700016"  # no consent in contoso yet

    sandbox_control.post(f"/_sandbox/tenants/contoso/consent/{app.client_id}")
    try:
        await make_provider(credentials, operator_app=app).verify("adele.vance@contoso.com", Deadline.after(10))
    finally:
        sandbox_control.delete(f"/_sandbox/tenants/contoso/consent/{app.client_id}")


async def test_delegated_refresh_tokens_rotate_and_are_persisted(
    make_provider: MakeProvider, sandbox_control: SandboxControl, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    operator = sandbox_control.app("tailspin-operator")
    app = OperatorApp(operator["client_id"], operator["secrets"][0]["value"])
    tenant_id = str(sandbox_control.tenant("contoso")["id"])
    user = next(u for u in sandbox_control.tenant("contoso")["users"] if u["email"] == "adele.vance@contoso.com")
    refresh_token = await _sign_in(http, sandbox, tenant_id, app, user["email"], user["password"])
    tokens_before = sandbox_control.count("entra:token")
    saved: list[Credentials] = []

    async def persist(credentials: Credentials) -> None:
        saved.append(credentials)

    try:
        provider = make_provider(
            GraphDelegated(tenant_id, user["email"], refresh_token), operator_app=app, on_credentials_changed=persist
        )
        window = Interval(ANCHOR, ANCHOR + timedelta(days=7))
        mailboxes = ["adele.vance@contoso.com", "alex.wilber@contoso.com"]
        for _ in range(2):
            results = await provider.fetch_schedules(mailboxes, window, Deadline.after(10))
            for mailbox in mailboxes:
                assert blocks_of(results[mailbox]) == expected_busy(sandbox_control, mailbox, window)
        assert len(saved) == 1  # the refresh token was redeemed (and rotated) once
        assert sandbox_control.count("entra:token") == tokens_before + 1  # then msal's cache
        rotated = saved[0]
        assert isinstance(rotated, GraphDelegated)
        assert rotated.refresh_token != refresh_token

        # The persisted token is the one that works now: the sandbox spent the old one.
        again = make_provider(rotated, operator_app=app)
        await again.verify("adele.vance@contoso.com", Deadline.after(10))
        with pytest.raises(CredentialsRejected):
            await make_provider(GraphDelegated(tenant_id, user["email"], refresh_token), operator_app=app).verify(
                "adele.vance@contoso.com", Deadline.after(10)
            )
    finally:
        sandbox_control.delete(f"/_sandbox/tenants/contoso/consent/{app.client_id}")


# --- rooms, lifecycle ---------------------------------------------------------------------------------------


async def test_list_rooms_returns_the_seeded_rooms(make_provider: MakeProvider, contoso: dict[str, object]) -> None:
    rooms = await make_provider().list_rooms(Deadline.after(10))
    seeded = contoso["rooms"]
    lists = contoso["room_lists"]
    assert isinstance(seeded, list)
    assert isinstance(lists, list)
    list_names = {r: RoomList(rl["email"], rl["display_name"]) for rl in lists for r in rl["rooms"]}
    assert [(r.email, r.capacity, r.building, r.room_list) for r in rooms] == sorted(
        (r["email"], r["capacity"], r["building"], list_names.get(r["email"])) for r in seeded
    )
    assert all(r.name.startswith("Conf Room") for r in rooms)


async def test_list_rooms_without_place_permission_says_so(
    make_provider: MakeProvider, sandbox_control: SandboxControl
) -> None:
    reader = secret_credentials(sandbox_control, "contoso-reader")  # Calendars.Read, User.Read.All only
    with pytest.raises(CredentialsRejected, match=r"Place\.Read\.All") as caught:
        await make_provider(reader).list_rooms(Deadline.after(10))
    assert caught.value.upstream_code == "Authorization_RequestDenied"


async def test_a_closed_provider_refuses_use(make_provider: MakeProvider) -> None:
    provider = make_provider()
    await provider.aclose()
    with pytest.raises(ConnectionClosed, match="revoked or its credentials replaced"):
        await provider.list_rooms(Deadline.after(1))


# --- helpers that talk to Entra like a browser would ------------------------------------------------------


async def _sign_in(
    http: aiohttp.ClientSession, sandbox: SandboxThread, tenant_id: str, app: OperatorApp, email: str, password: str
) -> str:
    """The authorization-code flow by hand (a user signing in), returning the refresh token."""
    context = ssl.create_default_context(cafile=str(sandbox.ca_path))
    redirect = "https://calbroker.test/callback"
    async with http.post(
        f"{sandbox.url}/{tenant_id}/oauth2/v2.0/authorize",
        data={
            "client_id": app.client_id,
            "response_type": "code",
            "redirect_uri": redirect,
            "scope": "https://graph.microsoft.com/Calendars.ReadWrite offline_access",
            "state": "s",
            "username": email,
            "password": password,
        },
        allow_redirects=False,
        ssl=context,
    ) as response:
        assert response.status == 302, await response.text()
        code = parse_qs(urlsplit(response.headers["Location"]).query)["code"][0]
    async with http.post(
        f"{sandbox.url}/{tenant_id}/oauth2/v2.0/token",
        data={
            "client_id": app.client_id,
            "client_secret": app.client_secret,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "scope": "https://graph.microsoft.com/Calendars.ReadWrite offline_access",
        },
        ssl=context,
    ) as response:
        body = await response.json()
        assert response.status == 200, body
    return str(body["refresh_token"])


def _self_signed() -> tuple[str, str]:
    """A key and certificate the app registration has never seen."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not registered")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM).decode()


def test_graph_wall_times_always_have_four_digit_years() -> None:
    assert wall_time(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00"
    assert DateTimeTimeZone.utc(datetime(2026, 11, 24, 9, 0, 0, 123456, tzinfo=UTC)).date_time == "2026-11-24T09:00:00"
