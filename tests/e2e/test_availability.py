"""Free/busy and availability through the API, across a Graph tenant and an EWS tenant at once.

Everything real: the API, PostgreSQL, msal/aiohttp against the sandbox's Graph, exchangelib
against its EWS. Expected busy time comes from the sandbox's own control plane, never from
numbers written into the test.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from litestar.testing import AsyncTestClient

from calbroker.domain import Interval
from calbroker.providers import Deadline
from calbroker.sandbox import SandboxThread
from calbroker.services import Services
from calbroker.store.applications import IssuedKey
from tests.e2e.conftest import Tenants
from tests.fixtures.sandbox import SandboxControl

ADELE = "adele.vance@contoso.com"
ALEX = "alex.wilber@contoso.com"
DIEGO = "diego.siciliani@contoso.com"  # outside contoso's application access policy
ANNA = "anna.schmidt@fabrikam.com"
BEN = "ben.taylor@fabrikam.com"


def _auth(key: IssuedKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.token}"}


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _week(sandbox: SandboxThread) -> tuple[datetime, datetime]:
    """The seeded week: the sandbox anchors its calendars on a Monday."""
    start = datetime.combine(sandbox.state.anchor, datetime.min.time(), UTC)
    return start, start + timedelta(days=7)


def _future_days(days: int) -> tuple[datetime, datetime]:
    """Availability only offers future time, so its windows follow the wall clock."""
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return start, start + timedelta(days=days)


def _expected_busy(control: SandboxControl, mailbox: str, start: datetime, end: datetime) -> set[tuple[str, str]]:
    """(start, status) of every non-free occurrence the sandbox holds for the mailbox."""
    query = urlencode({"start": start.isoformat(), "end": end.isoformat()})
    found: set[tuple[str, str]] = set()
    for event in control.get(f"/_sandbox/mailboxes/{mailbox}/events?{query}")["events"]:
        show_as = event["show_as"]
        if show_as == "free" or event["is_cancelled"]:
            continue
        status = {"workingElsewhere": "working_elsewhere", "unknown": "busy"}.get(show_as, show_as)
        event_start = _parse(event["start"]).astimezone(UTC)
        if _parse(event["end"]).astimezone(UTC) <= start or event_start >= end:
            continue
        found.add((max(event_start, start).isoformat(), status))
    return found


async def test_free_busy_reads_graph_and_ews_mailboxes_in_one_call(
    client: AsyncTestClient,  # type: ignore[type-arg]
    api_key: IssuedKey,
    tenants: Tenants,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
) -> None:
    start, end = _week(sandbox)
    response = await client.post(
        "/v1/free_busy",
        json={"mailboxes": [ADELE, ANNA], "start": start.isoformat(), "end": end.isoformat(), "tzid": "Europe/Berlin"},
        headers=_auth(api_key),
    )
    assert response.status_code == 200, response.text
    by_mailbox = {entry["mailbox"]: entry for entry in response.json()["free_busy"]}
    for mailbox in (ADELE, ANNA):
        entry = by_mailbox[mailbox]
        assert "error" not in entry, entry
        got = {(_parse(b["start"]).astimezone(UTC).isoformat(), b["status"]) for b in entry["busy"]}
        assert got == _expected_busy(sandbox_control, mailbox, start, end), mailbox
        assert all(_parse(b["start"]).utcoffset() in (timedelta(hours=1), timedelta(hours=2)) for b in entry["busy"])
        assert entry["working_hours"]["weekly_periods"], entry
    assert sandbox_control.count("graph:getSchedule") == 1
    assert sandbox_control.count("ews:GetUserAvailability") == 1


async def test_statuses_across_a_month_include_every_kind_the_calendars_hold(
    client: AsyncTestClient,  # type: ignore[type-arg]
    api_key: IssuedKey,
    tenants: Tenants,
    sandbox: SandboxThread,
) -> None:
    start, _ = _week(sandbox)
    end = start + timedelta(days=35)
    people = [m.email for m in sandbox.directory.tenants["contoso"].mailboxes.values() if not m.is_room][:15]
    people += [m.email for m in sandbox.directory.tenants["fabrikam"].mailboxes.values() if not m.is_room][:15]
    response = await client.post(
        "/v1/free_busy",
        json={"mailboxes": people, "start": start.isoformat(), "end": end.isoformat()},
        headers=_auth(api_key),
    )
    assert response.status_code == 200, response.text
    statuses = {b["status"] for e in response.json()["free_busy"] if "busy" in e for b in e["busy"]}
    assert {"busy", "tentative", "oof", "working_elsewhere"} <= statuses
    durations = {
        _parse(b["end"]) - _parse(b["start"]) for e in response.json()["free_busy"] if "busy" in e for b in e["busy"]
    }
    assert any(d >= timedelta(days=1) for d in durations)  # all-day and multi-day events arrive whole


async def test_one_bad_mailbox_never_fails_the_others(
    client: AsyncTestClient,  # type: ignore[type-arg]
    api_key: IssuedKey,
    tenants: Tenants,
    sandbox: SandboxThread,
) -> None:
    start, end = _week(sandbox)
    response = await client.post(
        "/v1/free_busy",
        json={
            "mailboxes": [ADELE, DIEGO, "nobody@contoso.com", ANNA, "x@unconnected.example", "nobody@fabrikam.com"],
            "start": start.isoformat(),
            "end": end.isoformat(),
        },
        headers=_auth(api_key),
    )
    assert response.status_code == 200, response.text
    by_mailbox = {entry["mailbox"]: entry for entry in response.json()["free_busy"]}
    assert by_mailbox[DIEGO]["error"]["type"] == "/problems/mailbox-out-of-scope"
    assert by_mailbox["nobody@contoso.com"]["error"]["type"] == "/problems/mailbox-not-found"
    assert by_mailbox["nobody@fabrikam.com"]["error"]["type"] == "/problems/mailbox-not-found"
    assert by_mailbox["x@unconnected.example"]["error"]["type"] == "/problems/mailbox-not-connected"
    assert by_mailbox[ADELE]["busy"]
    assert by_mailbox[ANNA]["busy"]
    assert all("busy" not in e for e in by_mailbox.values() if "error" in e)  # never reported as free


async def test_a_throttled_tenant_is_reported_per_mailbox_while_the_other_answers(
    client: AsyncTestClient,  # type: ignore[type-arg]
    api_key: IssuedKey,
    tenants: Tenants,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
) -> None:
    start, end = _week(sandbox)
    sandbox_control.fault(route="graph:getSchedule", action="error", status=429, retry_after=120)
    response = await client.post(
        "/v1/free_busy",
        json={"mailboxes": [ADELE, ALEX, ANNA], "start": start.isoformat(), "end": end.isoformat()},
        headers=_auth(api_key),
    )
    assert response.status_code == 200, response.text
    by_mailbox = {entry["mailbox"]: entry for entry in response.json()["free_busy"]}
    for mailbox in (ADELE, ALEX):
        assert by_mailbox[mailbox]["error"]["type"] == "/problems/upstream-throttled"
        assert "busy" not in by_mailbox[mailbox]
    assert by_mailbox[ANNA]["busy"]
    availability = await client.post(
        "/v1/availability",
        json={
            "participants": [{"members": [{"email": ADELE}, {"email": ANNA}], "required": 1}],
            "duration": {"minutes": 30},
            "query_periods": [{"start": _future_days(1)[0].isoformat(), "end": _future_days(1)[1].isoformat()}],
        },
        headers=_auth(api_key),
    )
    assert availability.status_code == 200
    assert [e["email"] for e in availability.json()["member_errors"]] == [ADELE]
    assert all(slot["members"] == [ANNA] for slot in availability.json()["slots"])


async def test_availability_across_both_tenants_avoids_every_busy_block(
    client: AsyncTestClient,  # type: ignore[type-arg]
    api_key: IssuedKey,
    tenants: Tenants,
) -> None:
    start, end = _future_days(5)
    members = [ADELE, ALEX, ANNA, BEN]
    body: dict[str, Any] = {
        "participants": [
            {"members": [{"email": ADELE}, {"email": ALEX}], "required": 1},
            {"members": [{"email": ANNA}, {"email": BEN}], "required": "all"},
        ],
        "duration": {"minutes": 30},
        "query_periods": [{"start": start.isoformat(), "end": end.isoformat()}],
        "start_interval": {"minutes": 15},
        "tzid": "America/New_York",
        "buffer": {"before": {"minutes": 5}},
    }
    availability = await client.post("/v1/availability", json=body, headers=_auth(api_key))
    assert availability.status_code == 200, availability.text
    result = availability.json()
    assert result["member_errors"] == []
    slots = result["slots"]
    assert slots, "four calendars over five days should leave some common time"
    free_busy = await client.post(
        "/v1/free_busy",
        json={"mailboxes": members, "start": (start - timedelta(hours=1)).isoformat(), "end": end.isoformat()},
        headers=_auth(api_key),
    )
    busy = {
        e["mailbox"]: [(_parse(b["start"]), _parse(b["end"])) for b in e["busy"] if b["status"] != "working_elsewhere"]
        for e in free_busy.json()["free_busy"]
    }
    for slot in slots:
        slot_start, slot_end = _parse(slot["start"]), _parse(slot["end"])
        assert slot_end - slot_start == timedelta(minutes=30)
        assert slot_start.utcoffset() in (timedelta(hours=-5), timedelta(hours=-4))
        assert slot_start.minute % 15 == 0
        assert {ANNA, BEN} <= set(slot["members"])
        assert {ADELE, ALEX} & set(slot["members"])
        for member in slot["members"]:
            for b_start, b_end in busy[member]:
                # the 5-minute buffer before the slot must be free too
                assert not (b_start < slot_end and slot_start - timedelta(minutes=5) < b_end), (member, slot)


async def test_a_member_that_cannot_be_read_is_unavailable_not_free(
    client: AsyncTestClient,  # type: ignore[type-arg]
    api_key: IssuedKey,
    tenants: Tenants,
) -> None:
    start, end = _future_days(2)
    body = {
        "participants": [{"members": [{"email": ADELE}, {"email": DIEGO}], "required": "all"}],
        "duration": {"minutes": 30},
        "query_periods": [{"start": start.isoformat(), "end": end.isoformat()}],
        "response_format": "periods",
    }
    response = await client.post("/v1/availability", json=body, headers=_auth(api_key))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["periods"] == []
    assert [e["email"] for e in result["member_errors"]] == [DIEGO]
    assert result["member_errors"][0]["problem"]["type"] == "/problems/mailbox-out-of-scope"


async def test_working_hours_from_the_mailbox_bound_every_slot(
    client: AsyncTestClient,  # type: ignore[type-arg]
    api_key: IssuedKey,
    tenants: Tenants,
) -> None:
    # Two weeks: the seeded calendars put a multi-day OOF near the anchor (today), so a single
    # week can hold no free working hour at all, depending on the weekday the suite runs on.
    start, end = _future_days(14)
    body = {
        "participants": [{"members": [{"email": ANNA}], "required": "all"}],
        "duration": {"minutes": 60},
        "query_periods": [{"start": start.isoformat(), "end": end.isoformat()}],
        "working_hours": "mailbox",
        "explain": True,
        "max_results": 1024,
    }
    response = await client.post("/v1/availability", json=body, headers=_auth(api_key))
    assert response.status_code == 200, response.text
    hours = (
        await client.post(
            "/v1/free_busy",
            json={"mailboxes": [ANNA], "start": start.isoformat(), "end": end.isoformat()},
            headers=_auth(api_key),
        )
    ).json()["free_busy"][0]["working_hours"]
    zone = ZoneInfo(hours["tzid"])
    days = {p["day"]: (p["start_time"], p["end_time"]) for p in hours["weekly_periods"]}
    slots = response.json()["slots"]
    assert slots
    for slot in slots:
        local_start = _parse(slot["start"]).astimezone(zone)
        local_end = _parse(slot["end"]).astimezone(zone)
        day = local_start.strftime("%A").lower()
        assert day in days, slot
        assert days[day][0] <= local_start.strftime("%H:%M")
        assert local_end.strftime("%H:%M") <= days[day][1] or days[day][1] == "24:00"
    reasons = {b["reason"] for e in response.json()["explanations"] for b in e["blocked_by"]}
    assert "working_hours" in reasons


async def test_upstream_calls_for_100_members_are_one_per_batch(
    client: AsyncTestClient,  # type: ignore[type-arg]
    api_key: IssuedKey,
    tenants: Tenants,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
) -> None:
    contoso = sandbox.directory.tenants["contoso"]
    in_scope = sorted(
        address
        for m in contoso.mailboxes.values()
        if m.email != DIEGO
        for address in m.addresses
        if sandbox.directory.mailbox(address) is not None and "siciliani" not in address
    )
    scope = set(contoso.groups[contoso.scope_group].members)
    addresses = [a for a in in_scope if sandbox.directory.mailbox(a).email in scope][:100]  # type: ignore[union-attr]
    assert len(addresses) >= 60
    start, end = _future_days(7)
    body = {
        "participants": [{"members": [{"email": a} for a in addresses], "required": 1}],
        "duration": {"minutes": 30},
        "query_periods": [{"start": start.isoformat(), "end": end.isoformat()}],
    }
    response = await client.post("/v1/availability", json=body, headers=_auth(api_key))
    assert response.status_code == 200, response.text
    assert response.json()["member_errors"] == []
    assert sandbox_control.count("graph:getSchedule") <= math.ceil(len(addresses) / 20)


async def test_identical_concurrent_reads_share_one_upstream_call(
    tenant_services: Services,
    api_key: IssuedKey,
    tenants: Tenants,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
) -> None:
    start, end = _week(sandbox)
    sandbox_control.fault(route="graph:getSchedule", action="delay", latency_ms=300, count=1)
    reader = tenant_services.schedules
    shared_before = reader.coalescer.shared
    window = Interval(start, end)
    results = await asyncio.gather(
        *(reader.read(api_key.application.id, [ADELE, ALEX], window, Deadline.after(10)) for _ in range(3))
    )
    assert results[0] == results[1] == results[2]
    assert sandbox_control.count("graph:getSchedule") == 1
    assert reader.coalescer.shared - shared_before == 2
    coalesced = tenant_services.metrics.registry.get_sample_value("calbroker_coalesced_schedule_reads_total")
    assert coalesced == reader.coalescer.shared  # the metric counts every shared read
