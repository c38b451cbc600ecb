"""Named calendars over Graph through the real aiohttp client: the calendar collection and groups,
events and calendar views of a secondary calendar, and the default calendar under its real id.

python-o365 and other SDKs address every named-calendar call this way
(https://learn.microsoft.com/graph/api/user-list-calendars, calendar-list-calendarview,
calendar-post-events); secondary calendars never feed free/busy.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from calbroker.sandbox import SandboxThread
from calbroker.sandbox.seed.calendars import SECONDARY_CALENDARS
from tests.fixtures.sandbox import SandboxControl
from tests.sandbox.test_graph import Answer, Graph

ADELE = "adele.vance@contoso.com"  # seed: has the secondary calendar "Team Holidays"
ALEX = "alex.wilber@contoso.com"  # seed: only the default calendar
DIEGO = "diego.siciliani@contoso.com"  # outside the application access policy
MEGAN = "megan.bowen@contoso.com"  # gets a calendar created by a test (the session sandbox keeps it)
HOLIDAYS = "Team Holidays"
WINDOW = {"startDateTime": "2026-11-23T00:00:00Z", "endDateTime": "2026-12-21T00:00:00Z"}
FREE_DAY = "2027-02-14"


@pytest.fixture
async def graph(
    sandbox: SandboxThread, sandbox_ssl_context: ssl.SSLContext, sandbox_control: SandboxControl
) -> AsyncIterator[Graph]:
    token = sandbox_control.token("contoso.com", "contoso-secret")
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=sandbox_ssl_context), headers={"Authorization": f"Bearer {token}"}
    )
    try:
        yield Graph(session, sandbox.graph_url)
    finally:
        await session.close()


async def calendars_of(graph: Graph, mailbox: str) -> dict[str, dict[str, Any]]:
    answer = await graph.call("GET", f"/users/{mailbox}/calendars")
    assert answer.status == 200, answer.body
    return {c["name"]: c for c in answer.body["value"]}


def ids(answer: Answer) -> set[str]:
    assert answer.status == 200, answer.body
    return {e["id"] for e in answer.body["value"]}


async def test_the_calendar_collection_lists_the_default_calendar_with_its_real_id_first(graph: Graph) -> None:
    listed = await graph.call("GET", f"/users/{ADELE}/calendars")
    default = await graph.call("GET", f"/users/{ADELE}/calendar")

    names = [c["name"] for c in listed.body["value"]]
    assert names == ["Calendar", HOLIDAYS]
    first = listed.body["value"][0]
    assert first["id"] == default.body["id"]
    assert first["isDefaultCalendar"] is True
    assert first["isRemovable"] is False
    holidays = listed.body["value"][1]
    assert holidays["isDefaultCalendar"] is False
    assert holidays["owner"] == {"name": "Adele Vance", "address": ADELE}
    assert listed.body["@odata.context"].endswith("/calendars")
    assert [(a, n) for a, n, _ in SECONDARY_CALENDARS if a == ADELE] == [(ADELE, HOLIDAYS)]
    assert [c["name"] for c in (await graph.call("GET", f"/users/{ALEX}/calendars")).body["value"]] == ["Calendar"]

    single = await graph.call("GET", f"/users/{ADELE}/calendars/{holidays['id']}")
    assert single.status == 200
    assert {k: v for k, v in single.body.items() if not k.startswith("@")} == holidays


async def test_a_named_calendar_has_its_own_view_and_stays_out_of_free_busy(graph: Graph) -> None:
    calendars = await calendars_of(graph, ADELE)
    default_id, holidays_id = calendars["Calendar"]["id"], calendars[HOLIDAYS]["id"]

    default_view = ids(await graph.call("GET", f"/users/{ADELE}/calendarView", params=WINDOW | {"$top": "500"}))
    by_id = ids(
        await graph.call("GET", f"/users/{ADELE}/calendars/{default_id}/calendarView", params=WINDOW | {"$top": "500"})
    )
    holiday_answer = await graph.call("GET", f"/users/{ADELE}/calendars/{holidays_id}/calendarView", params=WINDOW)
    holiday_view = ids(holiday_answer)

    assert by_id == default_view  # the default calendar, addressed by its id
    assert len(holiday_view) == 3
    assert not holiday_view & default_view
    assert {e["subject"] for e in holiday_answer.body["value"]} == {
        "Store opening",
        "Regional holiday",
        "Inventory day",
    }
    assert holiday_answer.body["@odata.context"].endswith(f"calendars('{holidays_id}')/calendarView")
    # Free/busy is published from the default calendar only.
    events = holiday_answer.body["value"]
    schedule = await graph.call(
        "POST",
        f"/users/{ADELE}/calendar/getSchedule",
        json={
            "schedules": [ADELE],
            "startTime": {"dateTime": events[0]["start"]["dateTime"], "timeZone": "UTC"},
            "endTime": {"dateTime": events[0]["end"]["dateTime"], "timeZone": "UTC"},
            "availabilityViewInterval": 60,
        },
    )
    items = schedule.body["value"][0]["scheduleItems"]
    assert events[0]["subject"] not in {i.get("subject") for i in items}


async def test_events_in_a_named_calendar_round_trip(graph: Graph, sandbox_control: SandboxControl) -> None:
    holidays_id = (await calendars_of(graph, ADELE))[HOLIDAYS]["id"]
    base = f"/users/{ADELE}/calendars/{holidays_id}/events"
    body = {
        "subject": "Company picnic",
        "start": {"dateTime": f"{FREE_DAY}T12:00:00", "timeZone": "Pacific Standard Time"},
        "end": {"dateTime": f"{FREE_DAY}T15:00:00", "timeZone": "Pacific Standard Time"},
        "attendees": [{"emailAddress": {"address": ALEX}, "type": "required"}],
    }

    created = await graph.call("POST", base, json=body)
    assert created.status == 201, created.body
    event_id = created.body["id"]
    try:
        assert created.body["@odata.context"].endswith(f"calendars('{holidays_id}')/events/$entity")
        assert (await graph.call("GET", f"{base}/{event_id}")).body["subject"] == "Company picnic"
        assert (await graph.call("GET", f"/users/{ADELE}/events/{event_id}")).status == 200  # ids are mailbox-wide
        assert event_id in ids(await graph.call("GET", base))
        assert event_id not in ids(await graph.call("GET", f"/users/{ADELE}/events", params={"$top": "500"}))
        # The invitation reaches the attendee's default calendar.
        alex_view = await graph.call(
            "GET",
            f"/users/{ALEX}/calendarView",
            params={"startDateTime": f"{FREE_DAY}T00:00:00Z", "endDateTime": f"{FREE_DAY}T23:59:00Z"},
        )
        assert "Company picnic" in {e["subject"] for e in alex_view.body["value"]}

        patched = await graph.call("PATCH", f"{base}/{event_id}", json={"subject": "Company picnic (moved)"})
        assert patched.status == 200
        assert patched.body["subject"] == "Company picnic (moved)"
    finally:
        deleted = await graph.call("DELETE", f"{base}/{event_id}")
    assert deleted.status == 204
    assert (await graph.call("GET", f"{base}/{event_id}")).status == 404


async def test_calendar_groups_hold_the_calendars(graph: Graph) -> None:
    groups = await graph.call("GET", f"/users/{ADELE}/calendarGroups")
    assert groups.status == 200
    (group,) = groups.body["value"]
    assert group["name"] == "My Calendars"
    assert group["classId"] == "0006f0b7-0000-0000-c000-000000000046"

    in_group = await graph.call("GET", f"/users/{ADELE}/calendarGroups/{group['id']}/calendars")
    assert [c["name"] for c in in_group.body["value"]] == ["Calendar", HOLIDAYS]
    holidays_id = in_group.body["value"][1]["id"]
    view = await graph.call(
        "GET", f"/users/{ADELE}/calendarGroups/{group['id']}/calendars/{holidays_id}/calendarView", params=WINDOW
    )
    assert len(view.body["value"]) == 3

    missing = await graph.call("GET", f"/users/{ADELE}/calendarGroups/AAMkAGGnotagroup/calendars")
    assert missing.status == 404
    assert missing.body["error"]["code"] == "ErrorItemNotFound"


async def test_creating_a_calendar_and_the_errors_around_it(graph: Graph) -> None:
    created = await graph.call("POST", f"/users/{MEGAN}/calendars", json={"name": "Volunteering"})
    assert created.status == 201, created.body
    assert created.body["isDefaultCalendar"] is False
    again = await graph.call("POST", f"/users/{MEGAN}/calendars", json={"name": "volunteering"})
    assert again.status == 409
    assert again.body["error"]["code"] == "ErrorFolderExists"
    events = await graph.call("GET", f"/users/{MEGAN}/calendars/{created.body['id']}/events")
    assert events.body["value"] == []

    unknown = await graph.call("GET", f"/users/{ADELE}/calendars/AAMkAGCnotacalendar/calendarView", params=WINDOW)
    assert unknown.status == 404
    assert unknown.body["error"] == {
        "code": "ErrorItemNotFound",
        "message": "The specified object was not found in the store.",
        "innerError": unknown.body["error"]["innerError"],
    }
    out_of_scope = await graph.call("GET", f"/users/{DIEGO}/calendars")
    assert out_of_scope.status == 403
    assert out_of_scope.body["error"]["message"] == "Access to OData is disabled."
    app_only_me = await graph.call("GET", "/me/calendars")
    assert app_only_me.status == 400
    assert app_only_me.body["error"]["message"] == "/me request is only valid with delegated authentication flow."


async def test_instances_of_a_series_through_the_calendar_path(graph: Graph) -> None:
    listed = await graph.call("GET", f"/users/{ADELE}/calendar/events", params={"$top": "500"})
    series = [e for e in listed.body["value"] if e["type"] == "seriesMaster"]
    assert series
    instances = await graph.call(
        "GET", f"/users/{ADELE}/calendar/events/{series[0]['id']}/instances", params=WINDOW | {"$top": "100"}
    )
    assert instances.status == 200
    assert instances.body["value"]
    assert {i["seriesMasterId"] for i in instances.body["value"]} == {series[0]["id"]}
