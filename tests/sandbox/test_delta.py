"""calendarView delta as the sandbox plays it: paging to a deltaLink, thin occurrences, @removed,
series re-emitted whole, out-of-range changes, and expired tokens (410 / syncStateNotFound)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from calbroker.sandbox import SandboxThread
from tests.fixtures.sandbox import SandboxControl

MAILBOX = "alex.wilber@contoso.com"
START, END = "2027-04-01T00:00:00Z", "2027-04-30T00:00:00Z"


@pytest.fixture
async def session(sandbox_ssl_context: ssl.SSLContext) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=sandbox_ssl_context)) as client:
        yield client


@pytest.fixture
def calendar(sandbox_control: SandboxControl) -> Any:
    """Events made in Outlook for this test (April 2027), removed after."""
    made: list[str] = []

    def add(subject: str, day: int, hour: int = 9, **extra: Any) -> dict[str, Any]:
        body = {
            "subject": subject,
            "start": {"dateTime": f"2027-04-{day:02d}T{hour:02d}:00:00", "timeZone": "UTC"},
            "end": {"dateTime": f"2027-04-{day:02d}T{hour:02d}:30:00", "timeZone": "UTC"},
            **extra,
        }
        created: dict[str, Any] = sandbox_control.post(f"/_sandbox/mailboxes/{MAILBOX}/events", body)
        made.append(created["id"])
        return created

    yield add
    for event_id in made:
        with contextlib.suppress(AssertionError):  # the test deleted it already
            sandbox_control.delete(f"/_sandbox/mailboxes/{MAILBOX}/events/{event_id}")


class Delta:
    def __init__(self, session: aiohttp.ClientSession, sandbox: SandboxThread, token: str) -> None:
        self.session = session
        self.sandbox = sandbox
        self.headers = {"Authorization": f"Bearer {token}", "Prefer": 'odata.maxpagesize=3, outlook.timezone="UTC"'}
        self.pages = 0
        self.page_sizes: list[int] = []

    async def round(self, link: str | None = None) -> tuple[list[dict[str, Any]], str]:
        """Every item of one round (following nextLinks) and the deltaLink that ends it."""
        url = link or (
            f"{self.sandbox.graph_url}/users/{MAILBOX}/calendarView/delta?startDateTime={START}&endDateTime={END}"
        )
        items: list[dict[str, Any]] = []
        while True:
            async with self.session.get(url, headers=self.headers) as response:
                body = await response.json()
                assert response.status == 200, body
            self.pages += 1
            self.page_sizes.append(len(body["value"]))
            items.extend(body["value"])
            if "@odata.deltaLink" in body:
                return items, body["@odata.deltaLink"]
            url = body["@odata.nextLink"]


@pytest.fixture
def delta(session: aiohttp.ClientSession, sandbox: SandboxThread, sandbox_control: SandboxControl) -> Delta:
    return Delta(session, sandbox, sandbox_control.token("contoso.com", "contoso-secret"))


DAILY = {
    "recurrence": {
        "pattern": {"type": "daily", "interval": 1},
        "range": {"type": "numbered", "startDate": "2027-04-12", "numberOfOccurrences": 4},
    },
    "showAs": "tentative",
}


async def test_a_first_round_pages_to_a_delta_link_with_thin_occurrences(delta: Delta, calendar: Any) -> None:
    single = calendar("One-off", 5)
    series = calendar("Stand-up", 12, **DAILY)
    items, link = await delta.round()
    assert "$deltatoken=" in link
    assert delta.pages >= 2  # five items at three per page
    by_type: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_type.setdefault(item["type"], []).append(item)
    singles = [i for i in by_type["singleInstance"] if i["id"] == single["id"]]
    assert len(singles) == 1
    assert singles[0]["showAs"] == "busy"
    occurrences = [o for o in by_type["occurrence"] if o["seriesMasterId"] == series["id"]]
    assert len(occurrences) == 4
    # Thin: what the series says about busy time must come from elsewhere.
    thin = {"@odata.type", "@odata.etag", "id", "seriesMasterId", "type", "start", "end"}
    assert all(set(o) == thin for o in by_type["occurrence"])


async def test_later_rounds_report_only_changes(delta: Delta, calendar: Any, sandbox_control: SandboxControl) -> None:
    single = calendar("One-off", 5)
    series = calendar("Stand-up", 12, **DAILY)
    _, link = await delta.round()
    nothing, link = await delta.round(link)
    assert nothing == []

    sandbox_control.patch(f"/_sandbox/mailboxes/{MAILBOX}/events/{single['id']}", {"shift_minutes": 60})
    moved, link = await delta.round(link)
    assert [i["id"] for i in moved] == [single["id"]]
    assert moved[0]["start"]["dateTime"].startswith("2027-04-05T10:00:00")

    sandbox_control.patch(f"/_sandbox/mailboxes/{MAILBOX}/events/{series['id']}", {"showAs": "busy"})
    reemitted, link = await delta.round(link)
    assert len(reemitted) == 4  # a changed series re-emits every occurrence it has in the range
    assert {i["seriesMasterId"] for i in reemitted} == {series["id"]}

    one = reemitted[1]["id"]
    sandbox_control.delete(f"/_sandbox/mailboxes/{MAILBOX}/events/{one}")
    after_delete, link = await delta.round(link)
    assert one not in [i["id"] for i in after_delete]  # no @removed for the deleted occurrence
    assert not any("@removed" in i for i in after_delete)
    assert len(after_delete) == 3  # the rest of the series comes again

    sandbox_control.delete(f"/_sandbox/mailboxes/{MAILBOX}/events/{single['id']}")
    removed, link = await delta.round(link)
    assert removed == [{"@odata.type": "#microsoft.graph.event", "id": single["id"], "@removed": {"reason": "deleted"}}]


async def test_changes_outside_the_range_come_as_removed(
    delta: Delta, calendar: Any, sandbox_control: SandboxControl
) -> None:
    single = calendar("Moves away", 20)
    _, link = await delta.round()
    sandbox_control.patch(f"/_sandbox/mailboxes/{MAILBOX}/events/{single['id']}", {"shift_minutes": 60 * 24 * 30})
    gone, link = await delta.round(link)
    assert gone == [{"@odata.type": "#microsoft.graph.event", "id": single["id"], "@removed": {"reason": "deleted"}}]
    outside = sandbox_control.post(
        f"/_sandbox/mailboxes/{MAILBOX}/events",
        {
            "subject": "Never in range",
            "start": {"dateTime": "2027-06-01T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2027-06-01T10:00:00", "timeZone": "UTC"},
        },
    )
    try:
        reported, _ = await delta.round(link)
    finally:
        sandbox_control.delete(f"/_sandbox/mailboxes/{MAILBOX}/events/{outside['id']}")
    assert [i["id"] for i in reported] == [outside["id"]]
    assert reported[0]["@removed"] == {"reason": "deleted"}  # the client filters by its range


async def test_an_expired_token_answers_410_gone_or_sync_state_not_found(
    delta: Delta, sandbox_control: SandboxControl, session: aiohttp.ClientSession
) -> None:
    _, link = await delta.round()
    assert sandbox_control.post("/_sandbox/delta/expire", {"mailbox": MAILBOX})["expired"] >= 1
    async with session.get(link, headers=delta.headers) as response:
        body = await response.json()
        assert response.status == 410
        assert body["error"]["code"] == "SyncStateNotFound"
        assert response.headers["Location"].endswith("$deltatoken=")
    sandbox_control.tune(delta_expired_status=400)
    async with session.get(link, headers=delta.headers) as response:
        body = await response.json()
        assert response.status == 400
        assert body["error"]["code"] == "syncStateNotFound"


async def test_a_next_link_may_come_with_an_empty_page(
    delta: Delta, calendar: Any, sandbox_control: SandboxControl
) -> None:
    calendar("One-off", 7)
    sandbox_control.tune(delta_empty_first_page=True)
    items, _ = await delta.round()
    assert items
    assert delta.page_sizes[0] == 0
