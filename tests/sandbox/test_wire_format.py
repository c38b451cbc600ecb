"""Sandbox responses against the JSON examples in Microsoft's documentation (tests/sandbox/fixtures/,
each with its source URL): every documented property is present, with the same JSON type."""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests

from calbroker.sandbox import SandboxThread
from tests.fixtures.sandbox import SandboxControl

FIXTURES = Path(__file__).parent / "fixtures"
ADELE = "adele.vance@contoso.com"
PST = {"Prefer": 'outlook.timezone="Pacific Standard Time"'}


def documented(name: str) -> Any:
    data = json.loads((FIXTURES / name).read_text())
    assert data["source"].startswith("https://learn.microsoft.com/")
    return data["example"]


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def assert_same_shape(doc: Any, ours: Any, path: str = "$", *, renamed: dict[str, str] | None = None) -> None:
    """Every documented key exists in `ours` with the same JSON type (None on either side matches)."""
    renamed = renamed or {}
    if doc is None or ours is None:
        return
    assert _kind(doc) == _kind(ours), f"{path}: documented {_kind(doc)}, sandbox {_kind(ours)}"
    if isinstance(doc, dict):
        for key, value in doc.items():
            name = renamed.get(key, key)
            assert name in ours, f"{path}: missing documented property {key!r}"
            assert_same_shape(value, ours[name], f"{path}.{name}", renamed=renamed)
    elif isinstance(doc, list) and doc and ours:
        assert_same_shape(doc[0], ours[0], f"{path}[0]", renamed=renamed)


@pytest.fixture
async def session(
    sandbox_ssl_context: ssl.SSLContext, sandbox_control: SandboxControl
) -> AsyncIterator[aiohttp.ClientSession]:
    token = sandbox_control.token("contoso.com", "contoso-secret")
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=sandbox_ssl_context), headers={"Authorization": f"Bearer {token}"}
    ) as client:
        yield client


async def test_get_schedule_matches_the_documented_response(
    sandbox: SandboxThread, session: aiohttp.ClientSession
) -> None:
    body = {
        "schedules": [ADELE],
        "startTime": {"dateTime": "2026-11-24T09:00:00", "timeZone": "Pacific Standard Time"},
        "endTime": {"dateTime": "2026-11-24T18:00:00", "timeZone": "Pacific Standard Time"},
        "availabilityViewInterval": 60,
    }
    async with session.post(
        f"{sandbox.graph_url}/users/{ADELE}/calendar/getSchedule", json=body, headers=PST
    ) as response:
        ours = await response.json()
    doc = documented("graph/getschedule.json")
    assert_same_shape(doc, ours)
    assert len(ours["value"][0]["availabilityView"]) == len(doc["value"][0]["availabilityView"])
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}", ours["value"][0]["scheduleItems"][0]["start"]["dateTime"]
    )


async def test_teams_event_matches_the_documented_response(
    sandbox: SandboxThread, session: aiohttp.ClientSession
) -> None:
    event = {
        "subject": "Prep for customer meeting",
        "body": {"contentType": "HTML", "content": "Does this time work for you?"},
        "start": {"dateTime": "2027-02-14T13:00:00", "timeZone": "Pacific Standard Time"},
        "end": {"dateTime": "2027-02-14T14:00:00", "timeZone": "Pacific Standard Time"},
        "location": {"displayName": "Cordova conference room"},
        "attendees": [
            {"emailAddress": {"address": "alex.wilber@contoso.com", "name": "Alex Wilber"}, "type": "required"}
        ],
        "allowNewTimeProposals": True,
        "isOnlineMeeting": True,
        "onlineMeetingProvider": "teamsForBusiness",
    }
    async with session.post(f"{sandbox.graph_url}/users/{ADELE}/events", json=event, headers=PST) as response:
        ours = await response.json()
        assert response.status == 201
    async with session.get(f"{sandbox.graph_url}/users/{ADELE}/calendar") as response:
        calendar = await response.json()
    async with session.delete(f"{sandbox.graph_url}/users/{ADELE}/events/{ours['id']}"):
        pass
    assert_same_shape(documented("graph/event-create-online-meeting.json"), ours)
    assert ours["location"]["uniqueIdType"] == "private"
    assert ours["responseStatus"] == {"response": "organizer", "time": "0001-01-01T00:00:00Z"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", ours["createdDateTime"])
    assert_same_shape(documented("graph/calendar.json"), calendar)


async def test_calendar_view_items_carry_the_documented_properties(
    sandbox: SandboxThread, session: aiohttp.ClientSession
) -> None:
    params = {"startDateTime": "2026-11-23T00:00:00Z", "endDateTime": "2026-12-01T00:00:00Z"}
    async with session.get(f"{sandbox.graph_url}/users/{ADELE}/calendarView", params=params) as response:
        ours = await response.json()
    doc = documented("graph/calendarview.json")
    assert_same_shape({"value": doc["value"]}, {"value": ours["value"]})
    with_location = next(
        i for i in ours["value"] if i["location"]["displayName"] and not i["location"].get("locationUri")
    )
    assert_same_shape(
        {k: v for k, v in documented("graph/event-create.json").items() if not k.startswith("@odata.context")},
        with_location,
    )


async def test_batch_and_error_envelope_match_the_documented_response(
    sandbox: SandboxThread, session: aiohttp.ClientSession
) -> None:
    requests_ = [
        {"id": "1", "method": "GET", "url": "/organization"},
        {
            "id": "3",
            "method": "GET",
            "url": "/users/diego.siciliani@contoso.com/calendarView"
            "?startDateTime=2026-11-23T00:00:00Z&endDateTime=2026-11-24T00:00:00Z",
        },
    ]
    async with session.post(f"{sandbox.graph_url}/$batch", json={"requests": requests_}) as response:
        ours = await response.json()
    doc = documented("graph/batch-response.json")
    assert_same_shape(doc["responses"][0] | {"body": {}}, ours["responses"][0] | {"body": {}})
    # x-ms-resource-unit is a directory-only header (see the page's comment); compare the rest.
    assert_same_shape(doc["responses"][1] | {"headers": {}}, ours["responses"][1])


async def test_directory_objects_match_the_documented_responses(
    sandbox: SandboxThread, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{sandbox.graph_url}/users/{ADELE}") as response:
        user = await response.json()
    async with session.get(f"{sandbox.graph_url}/places/microsoft.graph.room") as response:
        rooms = await response.json()
    assert set(user) == set(documented("graph/user.json"))
    doc_rooms = documented("graph/places-rooms.json")
    doc_rooms["value"][0]["capacity"] = 50  # the list example quotes it; the room resource types it Int32
    assert_same_shape(
        doc_rooms,
        rooms,
        renamed={"isWheelchairAccessible": "isWheelChairAccessible", "displayDevice": "displayDeviceName"},
    )


async def test_subscription_matches_the_documented_response(
    sandbox: SandboxThread, sandbox_control: SandboxControl, session: aiohttp.ClientSession
) -> None:
    from aiohttp import web

    async def validate(request: web.Request) -> web.Response:
        return web.Response(text=request.query["validationToken"], content_type="text/plain")

    app = web.Application()
    app.router.add_post("/hook", validate)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        body = {
            "changeType": "created",
            "notificationUrl": f"http://127.0.0.1:{runner.addresses[0][1]}/hook",
            "resource": f"users/{ADELE}/events",
            "expirationDateTime": "2099-01-01T00:00:00Z",
            "clientState": "secretClientValue",
        }
        sandbox_control.patch("/_sandbox/settings", {"subscription_max_minutes": 10**8})
        async with session.post(f"{sandbox.graph_url}/subscriptions", json=body) as response:
            ours = await response.json()
        async with session.delete(f"{sandbox.graph_url}/subscriptions/{ours['id']}"):
            pass
    finally:
        sandbox_control.patch("/_sandbox/settings", {"subscription_max_minutes": 10_080})
        await runner.cleanup()
    assert_same_shape(documented("graph/subscription.json"), ours)


def test_token_response_and_error_match_the_documented_bodies(
    sandbox: SandboxThread, sandbox_control: SandboxControl, sandbox_ca_env: str
) -> None:
    app = sandbox_control.app("contoso-secret")
    url = f"{sandbox.authority_host}/contoso.onmicrosoft.com/oauth2/v2.0/token"
    form = {
        "client_id": app["client_id"],
        "client_secret": app["secrets"][0]["value"],
        "grant_type": "client_credentials",
    }
    ok = requests.post(
        url, data=form | {"scope": "https://graph.microsoft.com/.default"}, verify=sandbox_ca_env, timeout=10
    )
    bad = requests.post(
        url, data=form | {"scope": "https://foo.microsoft.com/.default"}, verify=sandbox_ca_env, timeout=10
    )

    assert_same_shape(documented("entra/token-response.json"), ok.json())
    assert bad.status_code == 400
    assert_same_shape(documented("entra/token-error.json"), bad.json())
    assert re.fullmatch(
        r"AADSTS70011: .+\r\nTrace ID: [0-9a-f-]{36}\r\nCorrelation ID: [0-9a-f-]{36}\r\n"
        r"Timestamp: \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ",
        bad.json()["error_description"],
    )
