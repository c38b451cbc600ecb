"""EwsProvider's event methods against the sandbox's EWS endpoint through the real exchangelib.

What Exchange holds is read back from the sandbox's control plane (and its store, for the body);
which operations were sent, from its request stats.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
from exchangelib.protocol import CachingProtocol

from calbroker.domain.connections import AccessLevel, Connection, ConnectionKind, ConnectionMethod, EwsServiceAccount
from calbroker.domain.errors import AccessLevelInsufficient, ImpersonationDenied, TeamsUnavailable
from calbroker.domain.events import Attendee, AttendeeType, EventSpec
from calbroker.domain.intervals import Interval
from calbroker.providers import Deadline, EwsProvider
from calbroker.providers.endpoints import AddressPolicy
from calbroker.sandbox import SandboxThread
from calbroker.sandbox.ews import parse_item_id
from tests.fixtures.sandbox import SandboxControl

ANNA = "anna.schmidt@fabrikam.com"
BEN = "ben.taylor@fabrikam.com"
FRANK = "frank.miller@fabrikam.com"  # outside the service account's impersonation scope
SPREE = "spree@fabrikam.com"
JOIN_URL = "https://teams.microsoft.com/l/meetup-join/19%3ameeting_test%40thread.v2/0"

MakeProvider = Callable[..., EwsProvider]


@pytest.fixture(autouse=True)
def fresh_exchangelib() -> Iterator[None]:
    """exchangelib caches Protocols per (endpoint, credentials) for the whole process."""
    CachingProtocol.clear_cache()
    yield
    CachingProtocol.clear_cache()


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="ews-events-test") as pool:
        yield pool


@pytest.fixture
async def make_provider(
    sandbox: SandboxThread, sandbox_control: SandboxControl, executor: ThreadPoolExecutor
) -> AsyncIterator[MakeProvider]:
    built: list[EwsProvider] = []
    accounts = {a["access"]: a for a in sandbox_control.tenant("fabrikam")["service_accounts"]}

    def make(access: str = "full", level: AccessLevel = AccessLevel.FULL) -> EwsProvider:
        account = accounts[access]
        connection = Connection(
            id=uuid.uuid4(),
            application_id=uuid.uuid4(),
            kind=ConnectionKind.EWS,
            method=ConnectionMethod.EWS,
            access_level=level,
            display_name="Fabrikam",
            domains=("fabrikam.com",),
            endpoint=sandbox.ews_url,
        )
        credentials = EwsServiceAccount(sandbox.ews_url, f"FABRIKAM\\{account['username']}", account["password"])
        provider = EwsProvider(
            connection, credentials, sandbox.ca_path, executor, policy=AddressPolicy(allow_private=True)
        )
        built.append(provider)
        return provider

    yield make
    for provider in built:
        await provider.aclose()


@pytest.fixture
def slot(sandbox: SandboxThread, request: pytest.FixtureRequest) -> Interval:
    """An hour on a Sunday 20+ weeks after the anchor, 04:00 UTC (night in Berlin): nothing seeded."""
    anchor: date = sandbox.call(lambda state: state.anchor)
    day = anchor + timedelta(days=153 + 7 * (sum(ord(c) for c in request.node.name) % 20))
    start = datetime.combine(day, time(4), UTC)
    return Interval(start, start + timedelta(hours=1))


def events_at(
    control: SandboxControl, mailbox: str, window: Interval, *, cancelled: bool = False
) -> list[dict[str, Any]]:
    query = (
        f"start={window.start.isoformat().replace('+00:00', 'Z')}&end={window.end.isoformat().replace('+00:00', 'Z')}"
    )
    found = control.get(f"/_sandbox/mailboxes/{mailbox}/events?{query}")["events"]
    return [e for e in found if cancelled or not e["is_cancelled"]]


def spec_at(slot: Interval, **changes: Any) -> EventSpec:
    base = EventSpec(
        organizer=ANNA,
        interval=slot,
        tzid="Europe/Berlin",
        summary="EWS provider test",
        description="Agenda",
        attendees=(Attendee(BEN), Attendee(SPREE, AttendeeType.RESOURCE)),
        reminder_minutes=30,
    )
    return replace(base, **changes)


def deadline() -> Deadline:
    return Deadline.after(10)


async def test_create_books_the_room_and_is_idempotent_by_marker(
    make_provider: MakeProvider, slot: Interval, sandbox_control: SandboxControl
) -> None:
    provider = make_provider()
    marker = str(uuid.uuid4())
    created = await provider.create_event(
        spec_at(slot), marker=marker, may_exist=False, join_url=None, deadline=deadline()
    )
    try:
        assert (created.summary, created.interval, created.organizer, created.marker) == (
            "EWS provider test",
            slot,
            ANNA,
            marker,
        )
        assert created.ical_uid
        [held] = events_at(sandbox_control, ANNA, slot)
        assert held["time_zone"] == "Europe/Berlin"
        [room] = events_at(sandbox_control, SPREE, slot)
        assert room["response"] == "accepted"
        assert events_at(sandbox_control, BEN, slot)[0]["ical_uid"] == created.ical_uid

        sandbox_control.delete("/_sandbox/stats")
        again = await provider.create_event(
            spec_at(slot), marker=marker, may_exist=True, join_url=None, deadline=deadline()
        )
        assert again.id == created.id
        assert sandbox_control.count("ews:CreateItem") == 0
        assert sandbox_control.count("ews:FindItem") == 1
        found = await provider.find_event(ANNA, marker, deadline())
        assert found is not None
        assert found.id == created.id
        assert await provider.find_event(ANNA, str(uuid.uuid4()), deadline()) is None
    finally:
        await provider.cancel_event(ANNA, created.id, notify=True, deadline=deadline())


async def test_update_moves_and_renames_and_attendees_follow(
    make_provider: MakeProvider, slot: Interval, sandbox_control: SandboxControl
) -> None:
    provider = make_provider()
    spec = spec_at(slot)
    created = await provider.create_event(
        spec, marker=str(uuid.uuid4()), may_exist=False, join_url=None, deadline=deadline()
    )
    later = Interval(slot.start + timedelta(hours=2), slot.end + timedelta(hours=2))
    moved_spec = replace(spec, interval=later, summary="Moved")
    try:
        moved = await provider.update_event(
            moved_spec, created.id, moved_spec.changed_fields(spec), join_url=None, deadline=deadline()
        )
        assert (moved.id, moved.interval, moved.summary) == (created.id, later, "Moved")
        assert not events_at(sandbox_control, ANNA, slot)
        [ben] = events_at(sandbox_control, BEN, later)
        assert ben["subject"] == "Moved"
        assert events_at(sandbox_control, SPREE, later)
    finally:
        await provider.cancel_event(ANNA, created.id, notify=True, deadline=deadline())
    [ben_after] = events_at(sandbox_control, BEN, later, cancelled=True)
    assert ben_after["is_cancelled"]
    assert not events_at(sandbox_control, SPREE, later, cancelled=True)
    assert await provider.get_event(ANNA, created.id, deadline()) is None
    await provider.cancel_event(ANNA, created.id, notify=True, deadline=deadline())  # already gone: fine


async def test_a_teams_link_from_graph_goes_into_the_invitation(
    make_provider: MakeProvider, slot: Interval, sandbox: SandboxThread
) -> None:
    provider = make_provider()
    spec = spec_at(slot, teams_meeting=True, attendees=(Attendee(BEN),))
    with pytest.raises(TeamsUnavailable, match="Graph connection"):
        await provider.create_event(spec, marker="m", may_exist=False, join_url=None, deadline=deadline())
    created = await provider.create_event(
        spec, marker=str(uuid.uuid4()), may_exist=False, join_url=JOIN_URL, deadline=deadline()
    )
    try:

        def body_of(state: Any) -> tuple[str, str]:
            event = state.calendars.get(*parse_item_id(created.id))
            return event.body, event.location

        text, location = sandbox.call(body_of)
        assert JOIN_URL in text
        assert text.startswith("Agenda")
        assert location == "Microsoft Teams Meeting"
    finally:
        await provider.cancel_event(ANNA, created.id, notify=True, deadline=deadline())


async def test_calendar_view_matches_the_mailbox(
    make_provider: MakeProvider, sandbox: SandboxThread, sandbox_control: SandboxControl
) -> None:
    anchor: date = sandbox.call(lambda state: state.anchor)
    start = datetime.combine(anchor, time(), UTC)
    window = Interval(start, start + timedelta(days=7))
    events = await make_provider().list_events(BEN, window, deadline())
    expected = [e for e in events_at(sandbox_control, BEN, window, cancelled=True) if e["start"] != e["end"]]
    assert expected
    assert sorted((e.summary, e.interval.start, e.interval.end, e.is_cancelled) for e in events) == sorted(
        (e["subject"], datetime.fromisoformat(e["start"]), datetime.fromisoformat(e["end"]), e["is_cancelled"])
        for e in expected
    )
    assert events == sorted(events, key=lambda e: (e.interval.start, e.interval.end, e.id))


async def test_access_levels_and_impersonation_scope(make_provider: MakeProvider, slot: Interval) -> None:
    free_busy = make_provider("free_busy", AccessLevel.FREE_BUSY)
    with pytest.raises(AccessLevelInsufficient, match="free/busy-only"):
        await free_busy.create_event(spec_at(slot), marker="m", may_exist=False, join_url=None, deadline=deadline())
    with pytest.raises(AccessLevelInsufficient):
        await free_busy.list_events(ANNA, slot, deadline())
    with pytest.raises(ImpersonationDenied):
        await make_provider().create_event(
            spec_at(slot, organizer=FRANK), marker="m", may_exist=False, join_url=None, deadline=deadline()
        )
    with pytest.raises(TeamsUnavailable):
        await make_provider().create_online_meeting(
            ANNA, subject="x", interval=slot, external_id="e", deadline=deadline()
        )
