"""A write Microsoft has not answered by the deadline, then the client's quick retry: one upstream event.

The sandbox holds the first create, update or cancel well past the request deadline (a `delay`
fault, once); the API answers 504 and the client retries at once, as clients do. Whatever the
timing, the organizer's calendar must then hold exactly what the retry reports: one event, at
the retry's time, or none after a cancel. The sandbox ends a delayed request whose client went
away (as a server does for a closed connection), so what counts is whether our request was still
open upstream when the retry wrote.

Each case runs once by default; ``CALBROKER_TIMEOUT_RUNS=20`` repeats every case twenty times.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import httpx
import pytest

from calbroker.config import Settings
from calbroker.sandbox import SandboxThread
from calbroker.store.applications import IssuedKey
from tests.api.events_world import (
    Api,
    Slots,
    auth,
    connect_ews,
    connect_graph,
    event_body,
    live,
    sandbox_events,
    sandbox_settings,
    serve,
)
from tests.fixtures.database import new_master_key
from tests.fixtures.sandbox import SandboxControl

DEADLINE_S = 2.5
HELD_MS = (DEADLINE_S + 4) * 1000
"""How long the sandbox holds the first write: past the deadline and past any settling of it."""
RUNS = int(os.environ.get("CALBROKER_TIMEOUT_RUNS", "1"))


@dataclass(frozen=True)
class Protocol:
    name: str
    organizer: str
    attendee: str
    writes: dict[str, str]
    """Operation → the sandbox route of the upstream write it makes."""


GRAPH = Protocol(
    "graph",
    "adele.vance@contoso.com",
    "alex.wilber@contoso.com",
    {"create": "graph:events.create", "update": "graph:events.update", "cancel": "graph:events.cancel"},
)
EWS = Protocol(
    "ews",
    "anna.schmidt@fabrikam.com",
    "ben.taylor@fabrikam.com",
    {"create": "ews:CreateItem", "update": "ews:UpdateItem", "cancel": "ews:DeleteItem"},
)


@pytest.fixture(scope="module")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory, sandbox: SandboxThread) -> Settings:
    return sandbox_settings(
        database_url, tmp_path_factory.mktemp("data"), sandbox, new_master_key(), upstream_deadline_s=DEADLINE_S
    )


@pytest.fixture(scope="module")
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with serve(settings) as running:
        yield running


@pytest.fixture(scope="module")
async def token(api: Api, make_application: Callable[[str], Awaitable[IssuedKey]], sandbox: SandboxThread) -> str:
    issued = await make_application("write timeouts")
    await connect_graph(api.services, issued.application.id, sandbox)
    await connect_ews(api.services, issued.application.id, sandbox)
    return issued.token


@pytest.fixture
def slots(sandbox_control: SandboxControl, sandbox: SandboxThread, request: pytest.FixtureRequest) -> Slots:
    anchor: date = sandbox.call(lambda state: state.anchor)
    return Slots(sandbox_control, anchor, day=260 + sum(ord(c) for c in request.node.name) % 40 * 2)


async def _until_sandbox_idle(control: SandboxControl) -> None:
    """Until no request is open in the sandbox: the held write has landed or was dropped with its client."""
    async with asyncio.timeout(HELD_MS / 1000 + 10):
        while control.stats()["in_flight"]:  # noqa: ASYNC110 - polls the sandbox, another thread
            await asyncio.sleep(0.05)


async def _until_written(send: Callable[[], Awaitable[httpx.Response]], expected: int) -> httpx.Response:
    """The client's retries: again at once after the 504, and after `Retry-After` while another write holds it."""
    for _ in range(20):
        response = await send()
        if response.status_code != 409:
            assert response.status_code == expected, response.text
            return response
        assert response.json()["type"] == "/problems/write-in-progress", response.text
        await asyncio.sleep(float(response.headers["Retry-After"]))
    raise AssertionError("the write stayed in progress")


def _hour_after(start: datetime, hours: int) -> tuple[str, str]:
    moved = start + timedelta(hours=hours)
    return moved.isoformat(), (moved + timedelta(minutes=30)).isoformat()


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("operation", ["create", "update", "cancel"])
@pytest.mark.parametrize("protocol", [GRAPH, EWS], ids=lambda p: p.name)
async def test_a_write_held_past_the_deadline_then_retried_leaves_one_event(
    api: Api,
    token: str,
    slots: Slots,
    sandbox_control: SandboxControl,
    protocol: Protocol,
    operation: str,
    run: int,
) -> None:
    organizer, attendee = protocol.organizer, protocol.attendee
    start, _ = slots.next([organizer, attendee], minutes=30)
    window = (start, start + timedelta(hours=4))
    event_id = f"held-{protocol.name}-{operation}-{run}-{uuid.uuid4().hex[:8]}"
    url = f"/v1/events/{event_id}"
    body: dict[str, Any] = event_body(
        organizer, start, start + timedelta(minutes=30), attendees=[{"email": attendee}], summary="held"
    )
    headers = auth(token)
    if operation != "create":
        assert (await api.http.put(url, json=body, headers=headers)).status_code == 201
    sandbox_control.fault(route=protocol.writes[operation], action="delay", latency_ms=HELD_MS, count=1)
    try:
        if operation == "create":
            first = await api.http.put(url, json=body, headers=headers)
            retry = lambda: api.http.put(url, json=body, headers=headers)  # noqa: E731
            expected = 201
        elif operation == "update":
            first_start, first_end = _hour_after(start, 1)
            first = await api.http.put(url, json={**body, "start": first_start, "end": first_end}, headers=headers)
            body["start"], body["end"] = _hour_after(start, 2)
            retry = lambda: api.http.put(url, json=body, headers=headers)  # noqa: E731
            expected = 200
        else:
            first = await api.http.delete(url, headers=headers)
            retry = lambda: api.http.delete(url, headers=headers)  # noqa: E731
            expected = 204
        assert first.status_code == 504, first.text
        assert first.json()["type"] == "/problems/upstream-timeout"
        await _until_written(retry, expected)
        await _until_sandbox_idle(sandbox_control)

        held = live(sandbox_events(sandbox_control, organizer, *window))
        copies = live(sandbox_events(sandbox_control, attendee, *window))
        if operation == "cancel":
            assert (held, copies) == ([], [])
        else:
            assert [(e["start"], e["subject"]) for e in held] == [
                (datetime.fromisoformat(body["start"]).isoformat(), "held")
            ], held
            assert [e["start"] for e in copies] == [held[0]["start"]], copies
            stored = (await api.http.get(url, headers=headers)).json()
            assert stored["status"] == "confirmed"
            assert datetime.fromisoformat(stored["start"]) == datetime.fromisoformat(body["start"])
    finally:
        await api.http.delete(url, headers=headers)
