"""GraphProvider's event methods against the sandbox, through the real msal and aiohttp clients.

What Exchange holds is read back from the sandbox's control plane; which calls were made, from its
request stats. Events are written on Sundays long after the seeded window and removed afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import aiohttp
import pytest

from calbroker.config import sandbox_cloud
from calbroker.domain.busy import BusyStatus
from calbroker.domain.connections import AccessLevel, Connection, ConnectionKind, ConnectionMethod, GraphClientSecret
from calbroker.domain.errors import AccessLevelInsufficient, TeamsUnavailable
from calbroker.domain.events import Attendee, AttendeeType, EventSpec
from calbroker.domain.intervals import Interval
from calbroker.providers import Deadline, GraphProvider
from calbroker.providers.graph import MARKER_PROPERTY
from calbroker.sandbox import SandboxThread
from tests.fixtures.sandbox import SandboxControl

ADELE = "adele.vance@contoso.com"
ALEX = "alex.wilber@contoso.com"
RAINIER = "rainier@contoso.com"
ANNA = "anna.schmidt@fabrikam.com"

MakeProvider = Callable[..., GraphProvider]


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="graph-events-test") as pool:
        yield pool


@pytest.fixture
async def make_provider(
    sandbox: SandboxThread, sandbox_control: SandboxControl, executor: ThreadPoolExecutor
) -> AsyncIterator[MakeProvider]:
    built: list[GraphProvider] = []
    async with aiohttp.ClientSession() as http:

        def make(
            app_key: str = "contoso-secret", tenant: str = "contoso", level: AccessLevel = AccessLevel.FULL
        ) -> GraphProvider:
            found = sandbox_control.tenant(tenant)
            app = sandbox_control.app(app_key)
            connection = Connection(
                id=uuid.uuid4(),
                application_id=uuid.uuid4(),
                kind=ConnectionKind.GRAPH,
                method=ConnectionMethod.GRAPH_APP,
                access_level=level,
                display_name=tenant,
                domains=tuple(found["domains"]),
                cloud="sandbox",
                tenant_id=found["id"],
            )
            credentials = GraphClientSecret(found["id"], app["client_id"], app["secrets"][0]["value"])
            provider = GraphProvider(
                connection, credentials, sandbox_cloud(sandbox.url, sandbox.ca_path), http, executor
            )
            built.append(provider)
            return provider

        yield make
        for provider in built:
            await provider.aclose()


@pytest.fixture
def slot(sandbox: SandboxThread, request: pytest.FixtureRequest) -> Interval:
    """An hour on a Sunday 20+ weeks after the anchor, 03:00 UTC (evening in Redmond): nothing seeded."""
    anchor: date = sandbox.call(lambda state: state.anchor)
    day = anchor + timedelta(days=146 + 7 * (sum(ord(c) for c in request.node.name) % 20))
    start = datetime.combine(day, time(3), UTC)
    return Interval(start, start + timedelta(hours=1))


@pytest.fixture
def cleanup(sandbox_control: SandboxControl) -> Iterator[list[tuple[str, str]]]:
    made: list[tuple[str, str]] = []
    yield made
    for mailbox, event_id in made:
        if any(e["id"] == event_id for e in sandbox_control.get(f"/_sandbox/mailboxes/{mailbox}/events")["events"]):
            sandbox_control.delete(f"/_sandbox/mailboxes/{mailbox}/events/{event_id}")


def events_at(control: SandboxControl, mailbox: str, window: Interval) -> list[dict[str, Any]]:
    query = (
        f"start={window.start.isoformat().replace('+00:00', 'Z')}&end={window.end.isoformat().replace('+00:00', 'Z')}"
    )
    return [e for e in control.get(f"/_sandbox/mailboxes/{mailbox}/events?{query}")["events"] if not e["is_cancelled"]]


def spec_at(slot: Interval, **changes: Any) -> EventSpec:
    base = EventSpec(
        organizer=ADELE,
        interval=slot,
        tzid="America/Los_Angeles",
        summary="Provider test",
        description="Notes",
        location="Building 40",
        attendees=(Attendee(ALEX, name="Alex Wilber"), Attendee(RAINIER, AttendeeType.RESOURCE)),
    )
    return replace(base, **changes)


def deadline() -> Deadline:
    return Deadline.after(10)


async def test_create_is_idempotent_by_marker_and_findable(
    make_provider: MakeProvider, slot: Interval, sandbox_control: SandboxControl, cleanup: list[tuple[str, str]]
) -> None:
    provider = make_provider()
    marker = str(uuid.uuid4())
    spec = spec_at(slot, show_as=BusyStatus.TENTATIVE)
    created = await provider.create_event(spec, marker=marker, may_exist=False, join_url=None, deadline=deadline())
    cleanup.append((ADELE, created.id))
    assert (created.summary, created.interval, created.location, created.organizer) == (
        "Provider test",
        slot,
        "Building 40",
        ADELE,
    )
    assert {(a.email, a.type) for a in created.attendees} == {
        (ALEX, AttendeeType.REQUIRED),
        (RAINIER, AttendeeType.RESOURCE),
    }
    [held] = events_at(sandbox_control, ADELE, slot)
    assert (held["transaction_id"], held["show_as"], held["time_zone"]) == (marker, "tentative", "America/Los_Angeles")
    stored = sandbox_control.get(f"/_sandbox/mailboxes/{ADELE}/events")
    assert any(e["id"] == created.id for e in stored["events"])

    again = await provider.create_event(spec, marker=marker, may_exist=True, join_url=None, deadline=deadline())
    assert again.id == created.id
    assert len(events_at(sandbox_control, ADELE, slot)) == 1

    found = await provider.find_event(ADELE, marker, deadline())
    assert found is not None
    assert (found.id, found.marker) == (created.id, marker)
    assert await provider.find_event(ADELE, str(uuid.uuid4()), deadline()) is None
    fetched = await provider.get_event(ADELE, created.id, deadline())
    assert fetched is not None
    assert fetched.marker == marker


async def test_update_sends_only_the_changed_fields(
    make_provider: MakeProvider, slot: Interval, sandbox_control: SandboxControl, cleanup: list[tuple[str, str]]
) -> None:
    provider = make_provider()
    spec = spec_at(slot, teams_meeting=True)
    created = await provider.create_event(
        spec, marker=str(uuid.uuid4()), may_exist=False, join_url=None, deadline=deadline()
    )
    cleanup.append((ADELE, created.id))
    later = Interval(slot.start + timedelta(minutes=30), slot.end + timedelta(minutes=30))
    moved_spec = replace(spec, interval=later, summary="Moved")
    # Someone renames the location in Outlook meanwhile: a PATCH of other fields must keep it.
    sandbox_control.patch(
        f"/_sandbox/mailboxes/{ADELE}/events/{created.id}", {"location": {"displayName": "Outlook edit"}}
    )
    moved = await provider.update_event(
        moved_spec, created.id, moved_spec.changed_fields(spec), join_url=None, deadline=deadline()
    )
    assert (moved.id, moved.interval, moved.summary, moved.location) == (created.id, later, "Moved", "Outlook edit")
    assert moved.join_url == created.join_url is not None
    assert sandbox_control.count("graph:events.update") == 1


async def test_cancel_tells_attendees_and_delete_is_quiet_and_both_tolerate_gone(
    make_provider: MakeProvider, slot: Interval, sandbox_control: SandboxControl
) -> None:
    provider = make_provider()
    meeting = await provider.create_event(
        spec_at(slot), marker=str(uuid.uuid4()), may_exist=False, join_url=None, deadline=deadline()
    )
    await provider.cancel_event(ADELE, meeting.id, notify=True, deadline=deadline())
    assert not events_at(sandbox_control, ADELE, slot)
    query = f"start={slot.start.isoformat().replace('+00:00', 'Z')}&end={slot.end.isoformat().replace('+00:00', 'Z')}"
    [alex] = sandbox_control.get(f"/_sandbox/mailboxes/{ALEX}/events?{query}")["events"]
    assert alex["is_cancelled"]
    await provider.cancel_event(ADELE, meeting.id, notify=True, deadline=deadline())
    assert await provider.get_event(ADELE, meeting.id, deadline()) is None

    solo = await provider.create_event(
        spec_at(slot, attendees=()), marker=str(uuid.uuid4()), may_exist=False, join_url=None, deadline=deadline()
    )
    await provider.cancel_event(ADELE, solo.id, notify=False, deadline=deadline())
    assert sandbox_control.count("graph:events.cancel") == 2
    assert sandbox_control.count("graph:events.delete") == 1
    assert not events_at(sandbox_control, ADELE, slot)


async def test_join_url_missing_from_create_is_fetched_again(
    make_provider: MakeProvider, slot: Interval, sandbox_control: SandboxControl, cleanup: list[tuple[str, str]]
) -> None:
    provider = make_provider()
    sandbox_control.fault(route="graph:events.create", action="omit_join_url", count=1)
    sandbox_control.fault(route="graph:events.get", action="omit_join_url", count=1)
    created = await provider.create_event(
        spec_at(slot, teams_meeting=True), marker=str(uuid.uuid4()), may_exist=False, join_url=None, deadline=deadline()
    )
    cleanup.append((ADELE, created.id))
    assert created.join_url is not None
    assert created.join_url == events_at(sandbox_control, ADELE, slot)[0]["join_url"]
    assert sandbox_control.count("graph:events.get") == 2


async def test_calendar_view_follows_every_page(
    make_provider: MakeProvider, sandbox: SandboxThread, sandbox_control: SandboxControl
) -> None:
    anchor: date = sandbox.call(lambda state: state.anchor)
    start = datetime.combine(anchor, time(), UTC)
    window = Interval(start, start + timedelta(days=21))
    original = sandbox_control.get("/_sandbox/settings")["calendar_view_max_page_size"]
    sandbox_control.patch("/_sandbox/settings", {"calendar_view_max_page_size": 2})
    try:
        events = await make_provider().list_events(ADELE, window, deadline())
    finally:
        sandbox_control.patch("/_sandbox/settings", {"calendar_view_max_page_size": original})
    expected = events_at(sandbox_control, ADELE, window)
    assert len(expected) > 4
    assert sorted(e.id for e in events) == sorted(e["id"] for e in expected)
    assert sandbox_control.count("graph:calendarView") == -(-len(expected) // 2)
    assert events == sorted(events, key=lambda e: (e.interval.start, e.interval.end, e.id))


async def test_free_busy_connections_may_not_write(make_provider: MakeProvider, slot: Interval) -> None:
    provider = make_provider(level=AccessLevel.FREE_BUSY)
    with pytest.raises(AccessLevelInsufficient):
        await provider.create_event(spec_at(slot), marker="m", may_exist=False, join_url=None, deadline=deadline())


async def test_online_meetings_are_created_once_per_external_id_and_deleted(
    make_provider: MakeProvider, slot: Interval, sandbox: SandboxThread, sandbox_control: SandboxControl
) -> None:
    bridge = make_provider("fabrikam-teams", tenant="fabrikam")
    external_id = str(uuid.uuid4())
    first = await bridge.create_online_meeting(
        ANNA, subject="Hybrid", interval=slot, external_id=external_id, deadline=deadline()
    )
    again = await bridge.create_online_meeting(
        ANNA, subject="Hybrid", interval=slot, external_id=external_id, deadline=deadline()
    )
    assert again == first
    assert first.join_url.startswith("https://teams.microsoft.com/l/meetup-join/")
    assert sandbox.call(lambda state: first.id in state.online_meetings)
    await bridge.delete_online_meeting(ANNA, first.id, deadline())
    await bridge.delete_online_meeting(ANNA, first.id, deadline())  # already gone: fine
    assert not sandbox.call(lambda state: first.id in state.online_meetings)
    # Users are addressed by object id, looked up once per mailbox.
    assert sandbox_control.count("graph:users.get") == 1


async def test_online_meetings_without_a_teams_policy_are_teams_unavailable(
    make_provider: MakeProvider, slot: Interval
) -> None:
    no_policy = make_provider("contoso-reader")  # Calendars.Read only: Graph refuses onlineMeetings
    with pytest.raises(TeamsUnavailable, match="application access policy"):
        await no_policy.create_online_meeting(ADELE, subject="x", interval=slot, external_id="e", deadline=deadline())


def test_marker_is_the_property_ews_writes() -> None:
    # PS_PUBLIC_STRINGS, named CalbrokerEventId: the sandbox stores EWS's ExtendedFieldURI under this id.
    assert MARKER_PROPERTY == "String {00020329-0000-0000-C000-000000000046} Name CalbrokerEventId"
