"""Graph v1.0 through the real aiohttp client: getSchedule, calendarView paging, Teams events,
transactionId, cancellation, `$batch`, enforcement (tokens, roles, access policy, throttling) and faults."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from calbroker.sandbox import SandboxThread
from tests.fixtures.sandbox import SandboxControl

ADELE = "adele.vance@contoso.com"
ALEX = "alex.wilber@contoso.com"
DIEGO = "diego.siciliani@contoso.com"
ROOM = "rainier@contoso.com"
PST = {"Prefer": 'outlook.timezone="Pacific Standard Time"'}
# A Sunday after the seeded window: no seeded item falls on it (series run on weekdays).
FREE_DAY = "2027-02-14"


@dataclass
class Answer:
    status: int
    headers: Any
    body: Any


@dataclass
class Graph:
    session: aiohttp.ClientSession
    url: str

    async def call(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> Answer:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        url = path if path.startswith("https://") else self.url + path
        async with self.session.request(method, url, headers=headers, **kwargs) as response:
            body = await response.json() if response.content_type.startswith("application/json") else None
            return Answer(response.status, response.headers, body)


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


def when(day: str, clock: str, tz: str = "Pacific Standard Time") -> dict[str, str]:
    return {"dateTime": f"{day}T{clock}:00", "timeZone": tz}


def outlook_event(
    sandbox_control: SandboxControl, mailbox: str, subject: str, start: str, end: str, show_as: str
) -> str:
    body = {"subject": subject, "start": when(FREE_DAY, start), "end": when(FREE_DAY, end), "showAs": show_as}
    return str(sandbox_control.post(f"/_sandbox/mailboxes/{mailbox}/events", body)["id"])


async def test_get_schedule_digits_items_and_per_schedule_errors(graph: Graph, sandbox_control: SandboxControl) -> None:
    created = [
        outlook_event(sandbox_control, ADELE, "Home office", "09:00", "10:00", "workingElsewhere"),
        outlook_event(sandbox_control, ADELE, "Maybe", "10:00", "11:00", "tentative"),
        outlook_event(sandbox_control, ADELE, "Busy", "11:00", "12:00", "busy"),
        outlook_event(sandbox_control, ADELE, "Away", "12:00", "13:00", "oof"),
    ]
    try:
        body = {
            "Schedules": [ADELE, DIEGO, "nobody@contoso.com", "anna.schmidt@fabrikam.com"],
            "StartTime": when(FREE_DAY, "08:00"),
            "EndTime": when(FREE_DAY, "14:00"),
            "availabilityViewInterval": "60",
        }
        answer = await graph.call("POST", f"/users/{ADELE}/calendar/getSchedule", json=body, headers=PST)
    finally:
        for event_id in created:
            sandbox_control.delete(f"/_sandbox/mailboxes/{ADELE}/events/{event_id}")

    assert answer.status == 200
    adele, diego, nobody, other_tenant = answer.body["value"]
    # Working elsewhere shows as 0 in availabilityView (scheduleinformation resource), 4 only in EWS.
    assert adele["availabilityView"] == "001230"
    assert [i["status"] for i in adele["scheduleItems"]] == ["workingElsewhere", "tentative", "busy", "oof"]
    assert adele["scheduleItems"][2]["start"] == {
        "dateTime": f"{FREE_DAY}T11:00:00.0000000",
        "timeZone": "Pacific Standard Time",
    }
    assert adele["workingHours"]["timeZone"] == {"name": "Pacific Standard Time"}
    assert diego["error"] == {"message": "Access to OData is disabled.", "responseCode": "ErrorAccessDenied"}
    assert nobody["error"]["responseCode"] == "ErrorMailRecipientNotFound"
    assert other_tenant["error"]["responseCode"] == "ErrorMailRecipientNotFound"
    assert answer.headers["Preference-Applied"] == 'outlook.timezone="Pacific Standard Time"'


async def test_get_schedule_private_items_hide_subject(graph: Graph, sandbox_control: SandboxControl) -> None:
    body = {
        "subject": "Therapy",
        "start": when(FREE_DAY, "15:00"),
        "end": when(FREE_DAY, "16:00"),
        "sensitivity": "private",
    }
    event = sandbox_control.post(f"/_sandbox/mailboxes/{ADELE}/events", body)
    try:
        request = {"schedules": [ADELE], "startTime": when(FREE_DAY, "14:00"), "endTime": when(FREE_DAY, "17:00")}
        answer = await graph.call("POST", f"/users/{ADELE}/calendar/getSchedule", json=request)
    finally:
        sandbox_control.delete(f"/_sandbox/mailboxes/{ADELE}/events/{event['id']}")
    item = answer.body["value"][0]["scheduleItems"][0]
    assert item["isPrivate"] is True
    assert "subject" not in item
    assert item["start"]["timeZone"] == "UTC"
    assert answer.body["value"][0]["availabilityView"] == "002200"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"schedules": [f"user{i}@contoso.com" for i in range(21)]}, "limit of 20"),
        ({"availabilityViewInterval": 4}, "between 5 and 1440"),
        ({"endTime": when("2027-04-20", "08:00")}, "maximum of 62 days"),
    ],
)
async def test_get_schedule_limits(graph: Graph, change: dict[str, Any], fragment: str) -> None:
    body = {"schedules": [ADELE], "startTime": when(FREE_DAY, "08:00"), "endTime": when(FREE_DAY, "18:00")} | change
    answer = await graph.call("POST", f"/users/{ADELE}/calendar/getSchedule", json=body)
    assert answer.status == 400
    assert answer.body["error"]["code"] == "ErrorInvalidParameter"
    assert fragment in answer.body["error"]["message"]


async def test_calendar_view_pages_with_next_link_and_time_zone(graph: Graph, sandbox_control: SandboxControl) -> None:
    window = {"startDateTime": "2026-11-01T00:00:00-07:00", "endDateTime": "2026-12-15T00:00:00Z"}
    expected = sandbox_control.get(
        f"/_sandbox/mailboxes/{ADELE}/events?start=2026-11-01T07:00:00Z&end=2026-12-15T00:00:00Z"
    )["events"]
    headers = {"Prefer": 'odata.maxpagesize=5, outlook.timezone="Eastern Standard Time"'}

    pages = [await graph.call("GET", f"/users/{ADELE}/calendarView", params=window, headers=headers)]
    while "@odata.nextLink" in pages[-1].body:
        pages.append(await graph.call("GET", pages[-1].body["@odata.nextLink"], headers=headers))

    items = [item for page in pages for item in page.body["value"]]
    assert len(pages) >= 3
    assert all(len(p.body["value"]) <= 5 for p in pages)
    assert [i["id"] for i in items] == [e["id"] for e in expected]
    assert {i["start"]["timeZone"] for i in items} == {"Eastern Standard Time"}
    assert {i["type"] for i in items} >= {"singleInstance", "occurrence"}
    assert "odata.maxpagesize=5" in pages[0].headers["Preference-Applied"]


async def test_calendar_view_requires_a_window_and_honours_select(graph: Graph) -> None:
    missing = await graph.call("GET", f"/users/{ADELE}/calendarView")
    selected = await graph.call(
        "GET",
        f"/users/{ADELE}/calendar/calendarView",
        params={
            "startDateTime": "2026-11-23T00:00:00Z",
            "endDateTime": "2026-11-30T00:00:00Z",
            "$select": "subject,start",
        },
    )
    assert missing.status == 400
    assert missing.body["error"]["code"] == "ErrorInvalidParameter"
    assert set(selected.body["value"][0]) == {"@odata.etag", "id", "subject", "start"}


async def test_teams_event_lifecycle_with_attendees_room_and_cancel(
    graph: Graph, sandbox_control: SandboxControl
) -> None:
    event = {
        "subject": "Quarterly review",
        "body": {"contentType": "HTML", "content": "<p>Agenda</p>"},
        "start": when(FREE_DAY, "09:00"),
        "end": when(FREE_DAY, "10:00"),
        "location": {"displayName": "Conf Room Rainier", "locationEmailAddress": ROOM},
        "attendees": [
            {"emailAddress": {"address": ALEX, "name": "Alex Wilber"}, "type": "required"},
            {"emailAddress": {"address": ROOM}, "type": "resource"},
            {"emailAddress": {"address": "guest@example.org"}, "type": "optional"},
        ],
        "isOnlineMeeting": True,
        "onlineMeetingProvider": "teamsForBusiness",
        "singleValueExtendedProperties": [
            {"id": "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name calbroker", "value": "evt-1"}
        ],
    }
    created = await graph.call("POST", f"/users/{ADELE}/events", json=event, headers=PST)
    assert created.status == 201
    join_url = created.body["onlineMeeting"]["joinUrl"]
    assert join_url.startswith("https://teams.microsoft.com/l/meetup-join/19%3ameeting_")
    assert created.body["start"] == {"dateTime": f"{FREE_DAY}T09:00:00.0000000", "timeZone": "Pacific Standard Time"}
    responses = {a["emailAddress"]["address"]: a["status"]["response"] for a in created.body["attendees"]}
    assert responses == {ALEX: "none", ROOM: "accepted", "guest@example.org": "none"}
    event_id = created.body["id"]

    window = {"startDateTime": f"{FREE_DAY}T00:00:00Z", "endDateTime": "2027-02-16T00:00:00Z"}
    alex_view = await graph.call("GET", f"/users/{ALEX}/calendarView", params=window)
    copy = next(i for i in alex_view.body["value"] if i["iCalUId"] == created.body["iCalUId"])
    assert copy["isOrganizer"] is False
    assert copy["responseStatus"]["response"] == "notResponded"
    assert copy["onlineMeeting"]["joinUrl"] == join_url

    filtered = await graph.call(
        "GET",
        f"/users/{ADELE}/events",
        params={
            "$filter": "singleValueExtendedProperties/any(ep: ep/id eq "
            "'String {66f5a359-4659-4830-9070-00047ec6ac6e} Name calbroker' and ep/value eq 'evt-1')",
            "$expand": "singleValueExtendedProperties($filter=id eq "
            "'String {66f5a359-4659-4830-9070-00047ec6ac6e} Name calbroker')",
        },
    )
    assert [e["id"] for e in filtered.body["value"]] == [event_id]
    assert filtered.body["value"][0]["singleValueExtendedProperties"][0]["value"] == "evt-1"

    moved = await graph.call(
        "PATCH",
        f"/users/{ADELE}/events/{event_id}",
        json={"start": when(FREE_DAY, "11:00"), "end": when(FREE_DAY, "12:00"), "isOnlineMeeting": False},
    )
    assert moved.status == 200
    assert moved.body["onlineMeeting"]["joinUrl"] == join_url  # an online meeting stays online
    assert moved.body["start"]["dateTime"] == f"{FREE_DAY}T19:00:00.0000000"

    cancelled = await graph.call("POST", f"/users/{ADELE}/events/{event_id}/cancel", json={"Comment": "Sorry"})
    assert cancelled.status == 202
    gone = await graph.call("GET", f"/users/{ADELE}/events/{event_id}")
    assert gone.status == 404
    assert gone.body["error"]["code"] == "ErrorItemNotFound"
    alex_after = await graph.call("GET", f"/users/{ALEX}/events/{copy['id']}")
    assert alex_after.body["isCancelled"] is True
    room_view = await graph.call("GET", f"/users/{ROOM}/calendarView", params=window)
    assert all(i["iCalUId"] != created.body["iCalUId"] for i in room_view.body["value"])
    sandbox_control.delete(f"/_sandbox/mailboxes/{ALEX}/events/{copy['id']}")


async def test_room_declines_when_busy_and_attendee_cannot_cancel(
    graph: Graph, sandbox_control: SandboxControl
) -> None:
    first = {
        "subject": "Room hog",
        "start": when(FREE_DAY, "13:00"),
        "end": when(FREE_DAY, "15:00"),
        "attendees": [
            {"emailAddress": {"address": ROOM}, "type": "resource"},
            {"emailAddress": {"address": ALEX}, "type": "required"},
        ],
    }
    second = first | {"subject": "Too late", "start": when(FREE_DAY, "14:00"), "end": when(FREE_DAY, "15:00")}
    one = await graph.call("POST", f"/users/{ADELE}/events", json=first)
    two = await graph.call("POST", f"/users/{ADELE}/events", json=second)
    try:
        statuses = [
            {a["emailAddress"]["address"]: a["status"]["response"] for a in e.body["attendees"]}[ROOM]
            for e in (one, two)
        ]
        assert statuses == ["accepted", "declined"]
        alex_copy = next(
            e
            for e in sandbox_control.get(f"/_sandbox/mailboxes/{ALEX}/events")["events"]
            if e["ical_uid"] == one.body["iCalUId"]
        )
        refused = await graph.call("POST", f"/users/{ALEX}/events/{alex_copy['id']}/cancel", json={})
        assert refused.status == 400
        assert refused.body["error"]["message"] == (
            "Your request can't be completed. You need to be an organizer to cancel a meeting."
        )
    finally:
        for answer in (one, two):
            await graph.call("DELETE", f"/users/{ADELE}/events/{answer.body['id']}")


async def test_transaction_id_deduplicates_creates(graph: Graph, sandbox_control: SandboxControl) -> None:
    event = {
        "subject": "Once",
        "start": when(FREE_DAY, "16:00"),
        "end": when(FREE_DAY, "16:30"),
        "transactionId": "tx-42",
    }
    first = await graph.call("POST", f"/users/{ADELE}/events", json=event)
    second = await graph.call("POST", f"/users/{ADELE}/events", json=event)
    try:
        assert first.status == second.status == 201
        assert first.body["id"] == second.body["id"]
        stored = [
            e
            for e in sandbox_control.get(f"/_sandbox/mailboxes/{ADELE}/events")["events"]
            if e["transaction_id"] == "tx-42"
        ]
        assert len(stored) == 1
    finally:
        await graph.call("DELETE", f"/users/{ADELE}/events/{first.body['id']}")


@pytest.mark.parametrize(
    ("organizer", "provider", "url_prefix"),
    [
        ("nestor.wilke@contoso.com", "skypeForBusiness", "https://meet.lync.com/"),
        ("lee.gu@contoso.com", "unknown", None),
    ],
)
async def test_mailboxes_without_teams(graph: Graph, organizer: str, provider: str, url_prefix: str | None) -> None:
    event = {
        "subject": "Call",
        "start": when(FREE_DAY, "08:00"),
        "end": when(FREE_DAY, "08:30"),
        "isOnlineMeeting": True,
        "onlineMeetingProvider": "teamsForBusiness",
    }
    created = await graph.call("POST", f"/users/{organizer}/events", json=event)
    await graph.call("DELETE", f"/users/{organizer}/events/{created.body['id']}")
    assert created.body["onlineMeetingProvider"] == provider
    if url_prefix is None:
        assert created.body["onlineMeeting"] is None
        assert created.body["isOnlineMeeting"] is False
    else:
        assert created.body["onlineMeeting"]["joinUrl"].startswith(url_prefix)


async def test_join_url_missing_from_create_response_appears_on_get(
    graph: Graph, sandbox_control: SandboxControl
) -> None:
    sandbox_control.fault(route="graph:events.create", action="omit_join_url", count=1)
    event = {
        "subject": "Slow Teams",
        "start": when(FREE_DAY, "17:00"),
        "end": when(FREE_DAY, "17:30"),
        "isOnlineMeeting": True,
        "onlineMeetingProvider": "teamsForBusiness",
    }
    created = await graph.call("POST", f"/users/{ADELE}/events", json=event)
    fetched = await graph.call("GET", f"/users/{ADELE}/events/{created.body['id']}")
    await graph.call("DELETE", f"/users/{ADELE}/events/{created.body['id']}")
    assert created.body["isOnlineMeeting"] is True
    assert created.body["onlineMeeting"] is None
    assert fetched.body["onlineMeeting"]["joinUrl"].startswith("https://teams.microsoft.com/")


async def test_access_policy_roles_and_tokens(graph: Graph, sandbox_control: SandboxControl) -> None:
    window = {"startDateTime": "2026-11-23T00:00:00Z", "endDateTime": "2026-11-24T00:00:00Z"}
    out_of_scope = await graph.call("GET", f"/users/{DIEGO}/calendarView", params=window)
    assert out_of_scope.status == 403
    assert out_of_scope.body["error"]["code"] == "ErrorAccessDenied"
    assert out_of_scope.body["error"]["message"] == "Access to OData is disabled."
    assert set(out_of_scope.body["error"]["innerError"]) == {"date", "request-id", "client-request-id"}
    assert out_of_scope.headers["request-id"] == out_of_scope.body["error"]["innerError"]["request-id"]

    reader = sandbox_control.token("contoso.com", "contoso-reader")
    readable = await graph.call("GET", f"/users/{DIEGO}/calendarView", params=window, token=reader)
    write = await graph.call(
        "POST",
        f"/users/{ADELE}/events",
        token=reader,
        json={"subject": "x", "start": when(FREE_DAY, "08:00"), "end": when(FREE_DAY, "09:00")},
    )
    assert readable.status == 200  # the reader app has no access policy
    assert write.status == 403
    assert write.body["error"] == write.body["error"] | {
        "code": "ErrorAccessDenied",
        "message": "Access is denied. Check credentials and try again.",
    }

    expired = sandbox_control.token("contoso.com", "contoso-secret", expires_in=-60)
    for token, message in (
        (expired, "Lifetime validation failed, the token is expired."),
        ("", "Access token is empty."),
    ):
        answer = await graph.call(
            "GET", f"/users/{ADELE}", token=token or None, headers={"Authorization": ""} if not token else {}
        )
        assert answer.status == 401
        assert answer.body["error"]["code"] == "InvalidAuthenticationToken"
        assert answer.body["error"]["message"] == message
        assert "WWW-Authenticate" in answer.headers


async def test_unknown_and_on_premises_mailboxes(graph: Graph, sandbox_control: SandboxControl) -> None:
    window = {"startDateTime": "2026-11-23T00:00:00Z", "endDateTime": "2026-11-24T00:00:00Z"}
    unknown = await graph.call("GET", "/users/nobody@contoso.com/calendarView", params=window)
    assert unknown.status == 404
    assert unknown.body["error"]["code"] == "ErrorInvalidUser"
    user = await graph.call("GET", "/users/nobody@contoso.com")
    assert user.body["error"]["code"] == "Request_ResourceNotFound"

    operator = sandbox_control.app("tailspin-operator")["client_id"]
    sandbox_control.post(f"/_sandbox/tenants/fabrikam.com/consent/{operator}")
    try:
        token = sandbox_control.token("fabrikam.com", "tailspin-operator")
        on_premises = await graph.call(
            "GET", "/users/anna.schmidt@fabrikam.com/calendarView", params=window, token=token
        )
        profile = await graph.call("GET", "/users/anna.schmidt@fabrikam.com", token=token)
    finally:
        sandbox_control.delete(f"/_sandbox/tenants/fabrikam.com/consent/{operator}")
    assert on_premises.status == 404
    assert on_premises.body["error"]["code"] == "MailboxNotEnabledForRESTAPI"
    assert profile.body["mail"] == "anna.schmidt@fabrikam.com"


async def test_hybrid_tenant_creates_teams_meetings_through_graph(
    graph: Graph, sandbox_control: SandboxControl
) -> None:
    token = sandbox_control.token("fabrikam.com", "fabrikam-teams")
    body = {"startDateTime": "2027-02-15T09:00:00Z", "endDateTime": "2027-02-15T10:00:00Z", "subject": "Hybrid"}
    created = await graph.call("POST", "/users/anna.schmidt@fabrikam.com/onlineMeetings", json=body, token=token)
    denied = await graph.call(
        "POST",
        f"/users/{ADELE}/onlineMeetings",
        json=body,
        token=sandbox_control.token("contoso.com", "contoso-reader"),
    )
    assert created.status == 201
    assert created.body["joinWebUrl"].startswith("https://teams.microsoft.com/l/meetup-join/")
    assert denied.status == 403


async def test_batch_statuses_dependencies_and_throttled_inner_request(
    graph: Graph, sandbox_control: SandboxControl
) -> None:
    sandbox_control.fault(route="graph:getSchedule", status=429, retry_after=3, count=1)
    schedule = {"schedules": [ADELE], "startTime": when(FREE_DAY, "08:00"), "endTime": when(FREE_DAY, "12:00")}
    body = {
        "requests": [
            {"id": "1", "method": "GET", "url": f"/users/{ADELE}?$select=mail"},
            {
                "id": "2",
                "method": "POST",
                "url": f"/users/{ADELE}/calendar/getSchedule",
                "body": schedule,
                "headers": {"Content-Type": "application/json"},
            },
            {"id": "3", "method": "GET", "url": "/organization", "dependsOn": ["2"]},
            {
                "id": "4",
                "method": "GET",
                "url": f"/users/{DIEGO}/calendarView?startDateTime=2026-11-23T00:00:00Z"
                "&endDateTime=2026-11-24T00:00:00Z",
            },
        ]
    }
    answer = await graph.call("POST", "/$batch", json=body)

    assert answer.status == 200
    responses = {r["id"]: r for r in answer.body["responses"]}
    assert responses["1"]["status"] == 200
    assert responses["1"]["body"]["mail"] == ADELE
    assert responses["2"]["status"] == 429
    assert responses["2"]["headers"]["Retry-After"] == "3"
    assert responses["3"]["status"] == 424
    assert responses["4"]["status"] == 403
    routes = sandbox_control.stats()["routes"]
    assert routes["graph:batch"] == 1
    assert routes["graph:getSchedule"] == 1
    assert routes["graph:users.get"] == 1


@pytest.mark.parametrize(
    ("requests", "fragment"),
    [
        ([{"id": "1", "method": "GET", "url": "/organization"}] * 2, "unique"),
        ([{"id": str(i), "method": "GET", "url": "/organization"} for i in range(21)], "limit of 20"),
        ([{"id": "1", "method": "POST", "url": "/subscriptions", "body": {}}], "Content-Type"),
    ],
)
async def test_batch_rejects_malformed_batches(graph: Graph, requests: list[dict[str, Any]], fragment: str) -> None:
    answer = await graph.call("POST", "/$batch", json={"requests": requests})
    assert answer.status == 400
    assert fragment in answer.body["error"]["message"]


async def test_injected_429_then_success(graph: Graph, sandbox_control: SandboxControl) -> None:
    sandbox_control.fault(route="graph:users.get", mailbox=ADELE, status=429, retry_after=7, count=1)
    first = await graph.call("GET", f"/users/{ADELE}")
    second = await graph.call("GET", f"/users/{ADELE}")
    assert first.status == 429
    assert first.headers["Retry-After"] == "7"
    assert first.body["error"]["code"] == "ApplicationThrottled"
    assert second.status == 200
    assert sandbox_control.stats()["statuses"]["graph:users.get"] == {"200": 1, "429": 1}


async def test_mailbox_concurrency_limit_of_four(graph: Graph, sandbox_control: SandboxControl) -> None:
    sandbox_control.fault(route="graph:calendarView", action="delay", latency_ms=400)
    window = {"startDateTime": "2026-11-23T00:00:00Z", "endDateTime": "2026-11-24T00:00:00Z"}
    answers = await asyncio.gather(
        *(graph.call("GET", f"/users/{ADELE}/calendarView", params=window) for _ in range(6))
    )
    statuses = sorted(a.status for a in answers)
    throttled = next(a for a in answers if a.status == 429)
    assert statuses == [200, 200, 200, 200, 429, 429]
    assert throttled.body["error"]["message"] == "Application is over its MailboxConcurrency limit."
    assert int(throttled.headers["Retry-After"]) >= 1


async def test_dropped_connection_and_hang(graph: Graph, sandbox_control: SandboxControl) -> None:
    sandbox_control.fault(route="graph:organization.list", action="drop", count=2)
    with pytest.raises(aiohttp.ClientError):
        await graph.call("GET", "/organization")
    # aiohttp retries an idempotent request once after a dropped connection.
    assert sandbox_control.count("graph:organization.list") == 2
    sandbox_control.fault(route="graph:domains.list", action="timeout", count=1)
    with pytest.raises(asyncio.TimeoutError):
        await graph.call("GET", "/domains", timeout=aiohttp.ClientTimeout(total=0.5))
    assert (await graph.call("GET", "/domains")).status == 200


async def test_base_latency_applies_to_every_request(graph: Graph, sandbox_control: SandboxControl) -> None:
    sandbox_control.request("PUT", "/_sandbox/latency", {"ms": 150})
    try:
        started = time.perf_counter()
        await graph.call("GET", "/organization")
        elapsed = time.perf_counter() - started
    finally:
        sandbox_control.request("PUT", "/_sandbox/latency", {"ms": 0})
    assert elapsed >= 0.15


async def test_directory_users_places_organization(graph: Graph, sandbox_control: SandboxControl) -> None:
    by_mail = await graph.call("GET", "/users", params={"$filter": f"mail eq '{ADELE}'"})
    page = await graph.call("GET", "/users", params={"$top": "10"})
    rooms = await graph.call("GET", "/places/microsoft.graph.room")
    lists = await graph.call("GET", "/places/microsoft.graph.roomlist")
    in_list = await graph.call("GET", "/places/redmond-rooms@contoso.com/microsoft.graph.roomlist/rooms")
    organization = await graph.call("GET", "/organization")
    alias = await graph.call("GET", "/users/adelev@contoso.onmicrosoft.com")

    assert [u["mail"] for u in by_mail.body["value"]] == [ADELE]
    assert len(page.body["value"]) == 10
    assert "$skiptoken=" in page.body["@odata.nextLink"]
    assert ROOM in {r["emailAddress"] for r in rooms.body["value"]}
    assert {r["emailAddress"] for r in lists.body["value"]} == {
        "redmond-rooms@contoso.com",
        "newyork-rooms@contoso.com",
    }
    assert ROOM in {r["emailAddress"] for r in in_list.body["value"]}
    domains = {d["name"] for d in organization.body["value"][0]["verifiedDomains"]}
    assert domains == {"contoso.com", "contoso.onmicrosoft.com"}
    assert alias.body["mail"] == ADELE


async def test_mailbox_rate_limit_answers_429_with_retry_after(graph: Graph, sandbox_control: SandboxControl) -> None:
    sandbox_control.patch("/_sandbox/settings", {"mailbox_rate_limit": 3, "mailbox_rate_window_s": 30})
    try:
        answers = [await graph.call("GET", f"/users/{ALEX}/mailboxSettings") for _ in range(4)]
    finally:
        sandbox_control.patch("/_sandbox/settings", {"mailbox_rate_limit": 10_000, "mailbox_rate_window_s": 600})
    assert [a.status for a in answers] == [200, 200, 200, 429]
    assert 1 <= int(answers[3].headers["Retry-After"]) <= 30
    assert answers[0].body["workingHours"]["timeZone"] == {"name": "Pacific Standard Time"}
