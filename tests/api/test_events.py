"""/v1/events through the API against the sandbox: Graph with Teams, EWS with rooms, hybrid Teams,
idempotent retries, upstream failures, bad input and the calendar view. Nothing is mocked: what the
calendars hold is read back from the sandbox's control plane.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from calbroker.config import Settings
from calbroker.domain.connections import AccessLevel
from calbroker.sandbox import SandboxThread
from calbroker.store.applications import IssuedKey
from tests.api.events_world import (
    Api,
    Slots,
    auth,
    connect_ews,
    connect_graph,
    connect_teams_bridge,
    event_body,
    live,
    sandbox_events,
    sandbox_settings,
    serve,
)
from tests.fixtures.database import new_master_key
from tests.fixtures.sandbox import SandboxControl

ADELE = "adele.vance@contoso.com"
ALEX = "alex.wilber@contoso.com"
MEGAN = "megan.bowen@contoso.com"
RAINIER = "rainier@contoso.com"
ANNA = "anna.schmidt@fabrikam.com"
BEN = "ben.taylor@fabrikam.com"
CHLOE = "chloe.martin@fabrikam.com"
SPREE = "spree@fabrikam.com"

Client = httpx.AsyncClient


@pytest.fixture(scope="module")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory, sandbox: SandboxThread) -> Settings:
    return sandbox_settings(database_url, tmp_path_factory.mktemp("data"), sandbox, new_master_key())


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with serve(settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(api: Api) -> Client:
    return api.http


@dataclass
class World:
    """Applications: `main` (contoso over Graph with an allow-list, fabrikam over EWS), `hybrid`
    (fabrikam over EWS plus the Teams bridge over Graph) and `free_busy` (fabrikam, free/busy only)."""

    main: str
    hybrid: str
    free_busy: str


@pytest.fixture(scope="module")
async def world(api: Api, make_application: Callable[[str], Awaitable[IssuedKey]], sandbox: SandboxThread) -> World:
    services = api.services
    main = await make_application("events main")
    await connect_graph(
        services, main.application.id, sandbox, allowed=[ADELE, ALEX, MEGAN, RAINIER, "lynne.robbins@contoso.com"]
    )
    await connect_ews(services, main.application.id, sandbox)
    hybrid = await make_application("events hybrid")
    await connect_ews(services, hybrid.application.id, sandbox)
    await connect_teams_bridge(services, hybrid.application.id, sandbox)
    free_busy = await make_application("events free/busy")
    await connect_ews(services, free_busy.application.id, sandbox, account="svc-freebusy", level=AccessLevel.FREE_BUSY)
    return World(main.token, hybrid.token, free_busy.token)


@pytest.fixture(scope="module")
def anchor(sandbox: SandboxThread) -> date:
    found: date = sandbox.call(lambda state: state.anchor)
    return found


@pytest.fixture
def slots(sandbox_control: SandboxControl, anchor: date, request: pytest.FixtureRequest) -> Slots:
    # Each test looks on its own days, so a failed test's leftovers never block the next one.
    offset = sum(ord(c) for c in request.node.name) % 40 * 3
    return Slots(sandbox_control, anchor, day=140 + offset)


@pytest.fixture
async def booked(client: Client, world: World) -> AsyncIterator[list[tuple[str, str]]]:
    """Events a test booked, cancelled afterwards so the shared sandbox calendars stay as seeded."""
    made: list[tuple[str, str]] = []
    yield made
    for token, event_id in made:
        await client.delete(f"/v1/events/{event_id}", headers=auth(token))


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def put(
    client: Client, token: str, event_id: str, body: dict[str, Any], booked: list[tuple[str, str]] | None = None
) -> Any:
    response = await client.put(f"/v1/events/{event_id}", json=body, headers=auth(token))
    if booked is not None:
        booked.append((token, event_id))
    return response


def problem(response: Any, slug: str, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == f"/problems/{slug}", body
    return body


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- Graph: Teams, move, cancel ------------------------------------------------------------------


async def test_graph_teams_meeting_created_moved_and_cancelled(
    client: Client, world: World, slots: Slots, sandbox_control: SandboxControl, booked: list[tuple[str, str]]
) -> None:
    start, end = slots.next([ADELE, ALEX, RAINIER], minutes=60)
    event_id = new_id("graph")
    body = event_body(
        ADELE,
        start,
        end,
        tzid="America/Los_Angeles",
        summary="Quarterly review",
        description="Agenda: numbers",
        attendees=[
            {"email": ALEX, "name": "Alex Wilber"},
            {"email": RAINIER, "type": "resource"},
        ],
        teams_meeting=True,
        reminder_minutes=10,
    )
    created = await put(client, world.main, event_id, body, booked)
    assert created.status_code == 201, created.text
    event = created.json()
    assert event["status"] == "confirmed"
    assert event["teams"]["status"] == "ready"
    join_url = event["teams"]["join_url"]
    assert join_url.startswith("https://teams.microsoft.com/l/meetup-join/")
    assert at(event["start"]) == start
    assert event["tzid"] == "America/Los_Angeles"
    assert at(event["start"]).utcoffset() == start.astimezone(ZoneInfo("America/Los_Angeles")).utcoffset()

    [organizer_copy] = live(sandbox_events(sandbox_control, ADELE, start, end))
    assert organizer_copy["join_url"] == join_url
    assert organizer_copy["transaction_id"] is not None
    assert {a["email"] for a in organizer_copy["attendees"]} == {ALEX, RAINIER}
    [attendee_copy] = live(sandbox_events(sandbox_control, ALEX, start, end))
    assert attendee_copy["join_url"] == join_url
    assert live(sandbox_events(sandbox_control, RAINIER, start, end))  # the room accepted

    # A blind retry: the same answer, nothing written upstream.
    sandbox_control.delete("/_sandbox/stats")
    again = await put(client, world.main, event_id, body)
    assert again.status_code == 201
    assert again.json() == event
    assert sandbox_control.stats()["routes"].get("graph:events.create", 0) == 0
    assert sandbox_control.stats()["routes"].get("graph:events.update", 0) == 0

    # Move it by an hour: one PATCH, the same Teams link, still one meeting.
    moved_body = {
        **body,
        "start": (start + timedelta(hours=1)).isoformat(),
        "end": (end + timedelta(hours=1)).isoformat(),
    }
    moved = await put(client, world.main, event_id, moved_body)
    assert moved.status_code == 200, moved.text
    assert moved.json()["teams"] == {"status": "ready", "join_url": join_url}
    assert moved.json()["version"] == 2
    assert sandbox_control.count("graph:events.update") == 1
    assert sandbox_control.count("graph:events.create") == 0
    assert not live(sandbox_events(sandbox_control, ADELE, start, start + timedelta(hours=1)))
    [now_held] = live(sandbox_events(sandbox_control, ADELE, end, end + timedelta(hours=1)))
    assert now_held["id"] == organizer_copy["id"]
    assert now_held["join_url"] == join_url
    read = await client.get(f"/v1/events/{event_id}", headers=auth(world.main))
    assert read.status_code == 200
    assert read.json() == moved.json()

    # Cancel: attendees see the cancellation; the organizer's event is gone; DELETE again is 204.
    cancelled = await client.delete(f"/v1/events/{event_id}", headers=auth(world.main))
    assert cancelled.status_code == 204
    assert sandbox_control.count("graph:events.cancel") == 1
    assert not sandbox_events(sandbox_control, ADELE, start, end + timedelta(hours=1))
    [alex_view] = sandbox_events(sandbox_control, ALEX, start, end + timedelta(hours=1))
    assert alex_view["is_cancelled"]
    assert alex_view["subject"].startswith("Canceled: ")
    assert (await client.delete(f"/v1/events/{event_id}", headers=auth(world.main))).status_code == 204
    assert sandbox_control.count("graph:events.cancel") == 1
    gone = await client.get(f"/v1/events/{event_id}", headers=auth(world.main))
    assert gone.json()["status"] == "cancelled"


async def test_a_cancelled_event_id_can_be_booked_again_as_a_new_event(
    client: Client, world: World, slots: Slots, sandbox_control: SandboxControl, booked: list[tuple[str, str]]
) -> None:
    start, end = slots.next([MEGAN])
    event_id = new_id("again")
    body = event_body(MEGAN, start, end, reminder_minutes=5)
    first = (await put(client, world.main, event_id, body, booked)).json()
    assert (await client.delete(f"/v1/events/{event_id}", headers=auth(world.main))).status_code == 204
    rebooked = await put(client, world.main, event_id, body)
    assert rebooked.status_code == 201, rebooked.text
    assert (rebooked.json()["status"], rebooked.json()["version"]) == ("confirmed", 1)
    assert rebooked.json()["ical_uid"] != first["ical_uid"]
    [held] = live(sandbox_events(sandbox_control, MEGAN, start, end))
    assert held["ical_uid"] == rebooked.json()["ical_uid"]


async def test_event_without_attendees_is_deleted_not_cancelled(
    client: Client, world: World, slots: Slots, sandbox_control: SandboxControl
) -> None:
    start, end = slots.next([MEGAN])
    event_id = new_id("solo")
    assert (await put(client, world.main, event_id, event_body(MEGAN, start, end))).status_code == 201
    assert (await client.delete(f"/v1/events/{event_id}", headers=auth(world.main))).status_code == 204
    assert sandbox_control.count("graph:events.delete") == 1
    assert sandbox_control.count("graph:events.cancel") == 0
    assert not sandbox_events(sandbox_control, MEGAN, start, end)


async def test_changed_body_patches_only_what_changed(
    client: Client, world: World, slots: Slots, sandbox_control: SandboxControl, booked: list[tuple[str, str]]
) -> None:
    start, end = slots.next([ADELE])
    event_id = new_id("patch")
    body = event_body(ADELE, start, end, location="Room 12", show_as="tentative")
    assert (await put(client, world.main, event_id, body, booked)).status_code == 201
    renamed = await put(client, world.main, event_id, {**body, "summary": "Renamed"})
    assert renamed.status_code == 200
    assert renamed.json()["summary"] == "Renamed"
    [held] = live(sandbox_events(sandbox_control, ADELE, start, end))
    assert (held["subject"], held["show_as"]) == ("Renamed", "tentative")
    assert sandbox_control.count("graph:events.update") == 1


async def test_join_url_missing_from_the_create_answer_is_read_again(
    client: Client, world: World, slots: Slots, sandbox_control: SandboxControl, booked: list[tuple[str, str]]
) -> None:
    start, end = slots.next([ADELE])
    sandbox_control.fault(route="graph:events.create", action="omit_join_url", count=1)
    response = await put(client, world.main, new_id("late"), event_body(ADELE, start, end, teams_meeting=True), booked)
    assert response.status_code == 201, response.text
    assert response.json()["teams"]["status"] == "ready"
    assert (
        response.json()["teams"]["join_url"] == live(sandbox_events(sandbox_control, ADELE, start, end))[0]["join_url"]
    )
    assert sandbox_control.count("graph:events.get") >= 1
    assert sandbox_control.count("graph:events.create") == 1


async def test_join_url_still_missing_at_the_deadline_is_pending_then_filled_on_read(
    settings: Settings,
    world: World,
    slots: Slots,
    sandbox_control: SandboxControl,
    booked: list[tuple[str, str]],
) -> None:
    start, end = slots.next([ADELE])
    event_id = new_id("pending")
    sandbox_control.fault(route="graph:events.*", action="omit_join_url")
    async with serve(replace(settings, upstream_deadline_s=1.5)) as running:
        quick = running.http
        response = await put(quick, world.main, event_id, event_body(ADELE, start, end, teams_meeting=True), booked)
        assert response.status_code == 201, response.text
        assert response.json()["teams"] == {"status": "pending"}
        assert (await quick.get(f"/v1/events/{event_id}", headers=auth(world.main))).json()["teams"] == {
            "status": "pending"
        }
        sandbox_control.delete("/_sandbox/faults")
        filled = (await quick.get(f"/v1/events/{event_id}", headers=auth(world.main))).json()
    assert filled["teams"]["status"] == "ready"
    assert filled["teams"]["join_url"] == live(sandbox_events(sandbox_control, ADELE, start, end))[0]["join_url"]
    assert sandbox_control.count("graph:events.create") == 1


# --- EWS: rooms, move, cancel, hybrid Teams ---------------------------------------------------------


async def test_ews_meeting_with_a_room_created_moved_and_cancelled(
    client: Client, world: World, slots: Slots, sandbox_control: SandboxControl, booked: list[tuple[str, str]]
) -> None:
    start, end = slots.next([ANNA, BEN, SPREE])
    event_id = new_id("ews")
    body = event_body(
        ANNA,
        start,
        end,
        tzid="Europe/Berlin",
        summary="Planning",
        attendees=[{"email": BEN}, {"email": CHLOE, "type": "optional"}, {"email": SPREE, "type": "resource"}],
        reminder_minutes=15,
    )
    created = await put(client, world.main, event_id, body, booked)
    assert created.status_code == 201, created.text
    assert "teams" not in created.json()
    assert created.json()["ical_uid"]
    [held] = live(sandbox_events(sandbox_control, ANNA, start, end))
    assert {(a["email"], a["type"]) for a in held["attendees"]} == {
        (BEN, "required"),
        (CHLOE, "optional"),
        (SPREE, "resource"),
    }
    [room] = live(sandbox_events(sandbox_control, SPREE, start, end))
    assert room["response"] == "accepted"
    assert live(sandbox_events(sandbox_control, BEN, start, end))

    sandbox_control.delete("/_sandbox/stats")
    assert (await put(client, world.main, event_id, body)).status_code == 201
    assert sandbox_control.count("ews:CreateItem") == 0
    assert sandbox_control.count("ews:UpdateItem") == 0

    later = {**body, "start": (start + timedelta(hours=2)).isoformat(), "end": (end + timedelta(hours=2)).isoformat()}
    moved = await put(client, world.main, event_id, later)
    assert moved.status_code == 200, moved.text
    assert sandbox_control.count("ews:UpdateItem") == 1
    [now_held] = live(sandbox_events(sandbox_control, ANNA, start + timedelta(hours=2), end + timedelta(hours=2)))
    assert now_held["id"] == held["id"]
    assert live(sandbox_events(sandbox_control, SPREE, start + timedelta(hours=2), end + timedelta(hours=2)))

    assert (await client.delete(f"/v1/events/{event_id}", headers=auth(world.main))).status_code == 204
    assert not sandbox_events(sandbox_control, ANNA, start, end + timedelta(hours=2))
    assert not sandbox_events(sandbox_control, SPREE, start, end + timedelta(hours=2))  # rooms drop it
    [ben_view] = sandbox_events(sandbox_control, BEN, start, end + timedelta(hours=2))
    assert ben_view["is_cancelled"]
    assert (await client.delete(f"/v1/events/{event_id}", headers=auth(world.main))).status_code == 204


async def test_teams_on_an_ews_only_tenant_is_refused_before_anything_is_written(
    client: Client, world: World, slots: Slots, sandbox_control: SandboxControl
) -> None:
    start, end = slots.next([ANNA])
    event_id = new_id("noteams")
    body = problem(
        await put(client, world.main, event_id, event_body(ANNA, start, end, teams_meeting=True)),
        "teams-unavailable",
        422,
    )
    assert "online_meetings" in body["detail"]
    assert "OnlineMeetings.ReadWrite.All" in body["detail"]
    assert body["mailbox"] == ANNA
    assert sandbox_control.count("ews:CreateItem") == 0
    problem(await client.get(f"/v1/events/{event_id}", headers=auth(world.main)), "not-found", 404)


async def test_hybrid_tenant_gets_its_teams_link_from_graph_into_the_ews_meeting(
    client: Client,
    world: World,
    slots: Slots,
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
    booked: list[tuple[str, str]],
) -> None:
    start, end = slots.next([ANNA, BEN])
    event_id = new_id("hybrid")
    body = event_body(
        ANNA,
        start,
        end,
        tzid="Europe/Berlin",
        description="Bring slides",
        attendees=[{"email": BEN}],
        teams_meeting=True,
    )
    created = await put(client, world.hybrid, event_id, body, booked)
    assert created.status_code == 201, created.text
    teams = created.json()["teams"]
    assert teams["status"] == "ready"
    [held] = live(sandbox_events(sandbox_control, ANNA, start, end))

    def stored(state: Any) -> tuple[str, str, int]:
        event = state.calendars.get(ANNA, held["id"])
        return event.body, event.location, len(state.online_meetings)

    text, location, meetings = sandbox.call(stored)
    assert teams["join_url"] in text
    assert "Bring slides" in text
    assert location == "Microsoft Teams Meeting"
    assert sandbox_control.count("graph:onlineMeetings.createOrGet") == 1

    later = {**body, "start": (start + timedelta(hours=1)).isoformat(), "end": (end + timedelta(hours=1)).isoformat()}
    moved = await put(client, world.hybrid, event_id, later)
    assert moved.status_code == 200, moved.text
    assert moved.json()["teams"] == teams
    assert sandbox_control.count("graph:onlineMeetings.createOrGet") == 1
    assert sandbox.call(stored)[2] == meetings

    assert (await client.delete(f"/v1/events/{event_id}", headers=auth(world.hybrid))).status_code == 204
    assert sandbox_control.count("graph:onlineMeetings.delete") == 1
    assert sandbox.call(lambda state: len(state.online_meetings)) == meetings - 1


async def test_free_busy_access_cannot_write_events(client: Client, world: World, slots: Slots) -> None:
    start, end = slots.next([ANNA])
    response = await put(client, world.free_busy, new_id("fb"), event_body(ANNA, start, end))
    assert "free/busy-only" in problem(response, "access-level-insufficient", 403)["detail"]
    view = await client.get(
        "/v1/events",
        params={"mailbox": ANNA, "start": start.isoformat(), "end": end.isoformat()},
        headers=auth(world.free_busy),
    )
    problem(view, "access-level-insufficient", 403)


# --- upstream failures leave a row a retry heals --------------------------------------------------


async def test_graph_throttled_create_is_a_503_and_the_retry_books_once(
    client: Client, world: World, slots: Slots, sandbox_control: SandboxControl, booked: list[tuple[str, str]]
) -> None:
    start, end = slots.next([ADELE])
    event_id = new_id("throttled")
    body = event_body(ADELE, start, end)
    sandbox_control.fault(route="graph:events.create", status=429, retry_after=60, count=1)
    failed = problem(await put(client, world.main, event_id, body, booked), "upstream-throttled", 503)
    assert failed["upstream_code"] == "ApplicationThrottled"
    pending = (await client.get(f"/v1/events/{event_id}", headers=auth(world.main))).json()
    assert pending["status"] == "pending"
    assert "upstream-throttled" in pending["last_error"]
    retried = await put(client, world.main, event_id, body)
    assert retried.status_code == 201, retried.text
    assert retried.json()["status"] == "confirmed"
    assert len(live(sandbox_events(sandbox_control, ADELE, start, end))) == 1


async def test_ews_server_error_is_a_5xx_and_the_retry_books_once(
    client: Client, world: World, slots: Slots, sandbox_control: SandboxControl, booked: list[tuple[str, str]]
) -> None:
    start, end = slots.next([ANNA])
    event_id = new_id("ewsfail")
    body = event_body(ANNA, start, end)
    sandbox_control.fault(route="ews:CreateItem", code="ErrorServerBusy", retry_after=60, count=1)
    failed = problem(await put(client, world.main, event_id, body, booked), "upstream-throttled", 503)
    assert failed["upstream_code"] == "ErrorServerBusy"
    retried = await put(client, world.main, event_id, body)
    assert retried.status_code == 201, retried.text
    assert len(live(sandbox_events(sandbox_control, ANNA, start, end))) == 1


async def test_graph_rejection_is_a_502_and_a_timeout_a_504_each_healed_by_a_retry(
    settings: Settings, world: World, slots: Slots, sandbox_control: SandboxControl, booked: list[tuple[str, str]]
) -> None:
    async with serve(replace(settings, upstream_deadline_s=1.5)) as running:
        quick = running.http
        for fault, slug, status in (
            ({"status": 400, "code": "ErrorInvalidRequest", "message": "Bad thing."}, "upstream-rejected", 502),
            ({"action": "timeout"}, "upstream-timeout", 504),
        ):
            start, end = slots.next([ADELE])
            event_id = new_id(slug)
            body = event_body(ADELE, start, end)
            sandbox_control.fault(route="graph:events.create", count=1, **fault)
            failed = problem(await put(quick, world.main, event_id, body, booked), slug, status)
            if status == 502:
                assert failed["upstream_code"] == "ErrorInvalidRequest"
                assert "Bad thing." in failed["detail"]
            pending = (await quick.get(f"/v1/events/{event_id}", headers=auth(world.main))).json()
            assert (pending["status"], pending["last_error"].split(":")[0]) == ("pending", slug)
            retried = await put(quick, world.main, event_id, body)
            assert retried.status_code == 201, retried.text
            assert len(live(sandbox_events(sandbox_control, ADELE, start, end))) == 1


# --- check_availability -----------------------------------------------------------------------------


async def test_check_availability_refuses_busy_time_with_the_conflicts(
    client: Client, world: World, slots: Slots, sandbox_control: SandboxControl, booked: list[tuple[str, str]]
) -> None:
    start, end = slots.next([ADELE, ALEX])
    outlook = sandbox_control.post(
        f"/_sandbox/mailboxes/{ALEX}/events",
        {
            "subject": "Dentist",
            "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {"dateTime": (start + timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "showAs": "oof",
        },
    )
    try:
        body = event_body(ADELE, start, end, attendees=[{"email": ALEX}], check_availability=True)
        refused = problem(await put(client, world.main, new_id("busy"), body), "slot-unavailable", 409)
        assert refused["conflicts"] == [
            {
                "mailbox": ALEX,
                "start": start.isoformat(),
                "end": (start + timedelta(minutes=15)).isoformat(),
                "status": "oof",
            }
        ]
        assert sandbox_control.count("graph:events.create") == 0
        # Optional attendees never block; without the check the booking goes through.
        optional = {**body, "attendees": [{"email": ALEX, "type": "optional"}]}
        assert (await put(client, world.main, new_id("optional"), optional, booked)).status_code == 201
    finally:
        sandbox_control.delete(f"/_sandbox/mailboxes/{ALEX}/events/{outlook['id']}")


async def test_moving_an_event_is_not_a_conflict_with_itself(
    client: Client, world: World, slots: Slots, booked: list[tuple[str, str]]
) -> None:
    start, end = slots.next([ADELE], minutes=90)
    event_id = new_id("self")
    body = event_body(ADELE, start, start + timedelta(minutes=60), check_availability=True)
    assert (await put(client, world.main, event_id, body, booked)).status_code == 201
    shifted = {**body, "start": (start + timedelta(minutes=30)).isoformat(), "end": end.isoformat()}
    assert (await put(client, world.main, event_id, shifted)).status_code == 200


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "slug", "status", "field"),
    [
        ({"end": "2027-01-01T09:00:00Z", "start": "2027-01-01T10:00:00Z"}, "invalid-request", 422, "end"),
        ({"start": "2027-01-01T09:00:00"}, "invalid-request", 422, "start"),
        ({"organizer": "someone@unknown-domain.example"}, "mailbox-not-connected", 422, None),
        ({"organizer": "pradeep.gupta@contoso.com"}, "mailbox-out-of-scope", 403, None),
        ({"attendees": [{"email": f"guest{i}@example.com"} for i in range(500)]}, "limit-exceeded", 422, "attendees"),
        ({"summary": "x" * 1_000_000}, "limit-exceeded", 422, "summary"),
        ({"description": "y" * 40_000}, "limit-exceeded", 422, "description"),
        ({"tzid": "Mars/Olympus_Mons"}, "invalid-request", 422, "tzid"),
        ({"show_as": "maybe"}, "invalid-request", 422, "show_as"),
        ({"attendees": [{"email": ALEX}, {"email": ALEX}]}, "invalid-request", 422, "attendees[1].email"),
        ({"attendees": [{"email": "not-an-address"}]}, "invalid-request", 422, "attendees[0].email"),
        ({"reminder_minutes": -1}, "invalid-request", 422, "reminder_minutes"),
        ({"end": "2027-03-01T10:00:00Z"}, "limit-exceeded", 422, "end"),
        ({"check_avialability": True}, "invalid-request", 422, "check_avialability"),
    ],
)
async def test_bad_input_gets_a_precise_problem(
    client: Client,
    world: World,
    sandbox_control: SandboxControl,
    change: dict[str, Any],
    slug: str,
    status: int,
    field: str | None,
) -> None:
    body = {
        **event_body(
            ADELE,
            datetime.fromisoformat("2027-01-01T09:00:00+00:00"),
            datetime.fromisoformat("2027-01-01T10:00:00+00:00"),
        ),
        **change,
    }
    found = problem(await put(client, world.main, new_id("bad"), body), slug, status)
    if field is not None:
        assert field in [e["field"] for e in found["errors"]], found
    assert sandbox_control.stats()["routes"].get("graph:events.create", 0) == 0


async def test_bad_event_id_and_unknown_event(client: Client, world: World) -> None:
    problem(await client.get("/v1/events/has%20space", headers=auth(world.main)), "invalid-request", 422)
    problem(await client.get("/v1/events/never-booked", headers=auth(world.main)), "not-found", 404)
    problem(await client.delete("/v1/events/never-booked", headers=auth(world.main)), "not-found", 404)
    problem(await client.get("/v1/events/never-booked"), "unauthorized", 401)


# --- calendar view ---------------------------------------------------------------------------------


async def test_calendar_view_marks_the_events_this_application_booked(
    client: Client, world: World, slots: Slots, sandbox_control: SandboxControl, booked: list[tuple[str, str]]
) -> None:
    start, end = slots.next([ADELE, ALEX], minutes=60)
    event_id = new_id("view")
    body = event_body(ADELE, start, start + timedelta(minutes=30), attendees=[{"email": ALEX}], teams_meeting=True)
    assert (await put(client, world.main, event_id, body, booked)).status_code == 201
    sandbox_control.post(
        f"/_sandbox/mailboxes/{ADELE}/events",
        {
            "subject": "Made in Outlook",
            "start": {"dateTime": (start + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {"dateTime": end.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
        },
    )
    params = {"mailbox": ADELE, "start": start.isoformat(), "end": end.isoformat(), "tzid": "Europe/London"}
    view = await client.get("/v1/events", params=params, headers=auth(world.main))
    assert view.status_code == 200, view.text
    events = view.json()["events"]
    assert [(e["summary"], e["managed"], e.get("event_id")) for e in events] == [
        ("calbroker test", True, event_id),
        ("Made in Outlook", False, None),
    ]
    assert events[0]["teams_join_url"].startswith("https://teams.microsoft.com/")
    # The attendee's copy is recognised too (same iCalUId).
    alex = await client.get("/v1/events", params={**params, "mailbox": ALEX}, headers=auth(world.main))
    assert [(e["managed"], e.get("event_id")) for e in alex.json()["events"]] == [(True, event_id)]
    # Pages of one.
    first = (await client.get("/v1/events", params={**params, "limit": 1}, headers=auth(world.main))).json()
    assert [e["summary"] for e in first["events"]] == ["calbroker test"]
    second = (
        await client.get(
            "/v1/events", params={**params, "limit": 1, "cursor": first["next_cursor"]}, headers=auth(world.main)
        )
    ).json()
    assert [e["summary"] for e in second["events"]] == ["Made in Outlook"]
    assert "next_cursor" not in second
    for leftover in live(sandbox_events(sandbox_control, ADELE, start, end)):
        if leftover["subject"] == "Made in Outlook":
            sandbox_control.delete(f"/_sandbox/mailboxes/{ADELE}/events/{leftover['id']}")


@pytest.mark.parametrize(("organizer", "attendee"), [(ADELE, ALEX), (ANNA, BEN)], ids=["graph", "ews"])
async def test_every_copy_of_a_booked_event_is_marked_cancelled_ones_and_earlier_generations_too(
    client: Client,
    world: World,
    slots: Slots,
    booked: list[tuple[str, str]],
    organizer: str,
    attendee: str,
) -> None:
    """An attendee keeps the copy of a cancelled meeting ("Canceled: …"); the application must still be
    able to tie it to its event_id, also after booking the same event_id again."""
    start, end = slots.next([organizer, attendee])
    event_id = new_id("copies")
    body = event_body(organizer, start, end, attendees=[{"email": attendee}])
    assert (await put(client, world.main, event_id, body)).status_code == 201
    assert (await client.delete(f"/v1/events/{event_id}", headers=auth(world.main))).status_code == 204
    params = {"mailbox": attendee, "start": start.isoformat(), "end": end.isoformat()}
    view = (await client.get("/v1/events", params=params, headers=auth(world.main))).json()["events"]
    assert [(e.get("cancelled", False), e["managed"], e.get("event_id")) for e in view] == [(True, True, event_id)]

    assert (await put(client, world.main, event_id, body, booked)).status_code == 201  # a new generation
    view = (await client.get("/v1/events", params=params, headers=auth(world.main))).json()["events"]
    assert sorted((e.get("cancelled", False), e["managed"], e.get("event_id")) for e in view) == [
        (False, True, event_id),
        (True, True, event_id),
    ]
    organizers = (
        await client.get("/v1/events", params={**params, "mailbox": organizer}, headers=auth(world.main))
    ).json()
    assert [(e.get("cancelled", False), e.get("event_id")) for e in organizers["events"]] == [(False, event_id)]
