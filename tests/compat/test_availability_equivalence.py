"""Availability through the Cronofy-compatible API equals the native answer for the same request.

Hypothesis generates requests (groups, `required`, durations, start intervals, buffers, query and
member periods, response formats, result limits); each is sent to both APIs of one live server
(Cronofy shape with the client secret as API key, native shape with the API key), against the
sandbox's Graph and EWS mailboxes, and the answers must agree exactly: `periods` and
`overlapping_slots` are the native periods and slots; `slots` are the earliest native slots that
do not overlap one another.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from calbroker.services import Services
from calbroker.store.connections import list_connections
from calbroker.store.cronofy import client_of, save_account
from tests.compat.conftest import CronofyWorld, LiveServer

MAILBOXES = (
    "adele.vance@contoso.com",
    "alex.wilber@contoso.com",
    "anna.schmidt@fabrikam.com",
    "ben.taylor@fabrikam.com",
)
DAY0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)


@dataclass(frozen=True)
class Both:
    session: requests.Session
    base: str
    api_key: str
    client_secret: str
    subs: dict[str, str]


@pytest.fixture(scope="module")
async def subs(cronofy_world: CronofyWorld, compat_services: Services) -> dict[str, str]:
    """An account per mailbox, as a service-account authorization would have made them."""
    app_id = cronofy_world.application.application.id
    async with compat_services.pool.acquire() as conn:
        client = await client_of(conn, app_id)
        assert client is not None
        connections = {c.domains[0]: c for c in await list_connections(conn, app_id)}
        found = {}
        for mailbox in MAILBOXES:
            account = await save_account(conn, client, connections[mailbox.rpartition("@")[2]].id, mailbox)
            found[mailbox] = account.account_id
    return found


@pytest.fixture(scope="module")
def both(cronofy_world: CronofyWorld, live_api: LiveServer, subs: dict[str, str]) -> Iterator[Both]:
    with requests.Session() as session:
        yield Both(session, live_api.url, cronofy_world.application.token, cronofy_world.client_secret, subs)


def _z(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@st.composite
def requests_(draw: st.DrawFn) -> dict[str, Any]:
    groups = []
    for members in draw(
        st.lists(st.lists(st.sampled_from(MAILBOXES), min_size=1, max_size=3, unique=True), min_size=1, max_size=2)
    ):
        required = draw(st.one_of(st.just("all"), st.integers(1, len(members))))
        groups.append((members, required))
    periods = []
    for _ in range(draw(st.integers(1, 3))):
        start = DAY0 + timedelta(hours=draw(st.integers(0, 13 * 24)), minutes=draw(st.sampled_from([0, 10, 30])))
        periods.append((start, start + timedelta(hours=draw(st.integers(1, 36)))))
    member_periods: dict[str, tuple[datetime, datetime]] = {}
    if draw(st.booleans()):
        mailbox = draw(st.sampled_from([m for members, _ in groups for m in members]))
        start = DAY0 + timedelta(hours=draw(st.integers(0, 13 * 24)))
        member_periods[mailbox] = (start, start + timedelta(hours=draw(st.integers(2, 72))))
    return {
        "groups": groups,
        "periods": periods,
        "member_periods": member_periods,
        "duration": draw(st.sampled_from([15, 30, 45, 60, 90])),
        "interval": draw(st.sampled_from([None, 5, 10, 15, 20, 30, 45, 60])),
        "before": draw(st.sampled_from([0, 5, 10, 15])),
        "after": draw(st.sampled_from([0, 5, 10, 15])),
        "format": draw(st.sampled_from(["periods", "slots", "overlapping_slots"])),
        "max_results": draw(st.integers(1, 60)),
    }


def _cronofy_body(case: dict[str, Any], subs: dict[str, str]) -> dict[str, Any]:
    def member(mailbox: str) -> dict[str, Any]:
        found: dict[str, Any] = {"sub": subs[mailbox]}
        if mailbox in case["member_periods"]:
            start, end = case["member_periods"][mailbox]
            found["available_periods"] = [{"start": _z(start), "end": _z(end)}]
        return found

    body: dict[str, Any] = {
        "participants": [{"members": [member(m) for m in ms], "required": r} for ms, r in case["groups"]],
        "required_duration": {"minutes": case["duration"]},
        "query_periods": [{"start": _z(s), "end": _z(e)} for s, e in case["periods"]],
        "buffer": {"before": {"minutes": case["before"]}, "after": {"minutes": case["after"]}},
        "response_format": case["format"],
        "max_results": case["max_results"],
    }
    if case["interval"] is not None:
        body["start_interval"] = {"minutes": case["interval"]}
    return body


def _native_body(case: dict[str, Any]) -> dict[str, Any]:
    def member(mailbox: str) -> dict[str, Any]:
        found: dict[str, Any] = {"email": mailbox}
        if mailbox in case["member_periods"]:
            start, end = case["member_periods"][mailbox]
            found["available_periods"] = [{"start": _z(start), "end": _z(end)}]
        return found

    body: dict[str, Any] = {
        "participants": [{"members": [member(m) for m in ms], "required": r} for ms, r in case["groups"]],
        "duration": {"minutes": case["duration"]},
        "query_periods": [{"start": _z(s), "end": _z(e)} for s, e in case["periods"]],
        "buffer": {"before": {"minutes": case["before"]}, "after": {"minutes": case["after"]}},
        "response_format": "periods" if case["format"] == "periods" else "slots",
        # Cronofy's non-overlapping slots are chosen among every grid slot, not the first N.
        "max_results": 1024 if case["format"] == "slots" else case["max_results"],
    }
    if case["interval"] is not None:
        body["start_interval"] = {"minutes": case["interval"]}
    return body


def _utc(value: str) -> str:
    return _z(datetime.fromisoformat(value).astimezone(UTC))


@hypothesis_settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=requests_())
def test_compat_availability_equals_the_native_answer(both: Both, case: dict[str, Any]) -> None:
    compat = both.session.post(
        f"{both.base}/compat/cronofy/v1/availability",
        json=_cronofy_body(case, both.subs),
        headers={"Authorization": f"Bearer {both.client_secret}"},
        timeout=60,
    )
    native = both.session.post(
        f"{both.base}/v1/availability",
        json=_native_body(case),
        headers={"Authorization": f"Bearer {both.api_key}"},
        timeout=60,
    )
    assert native.status_code == 200, native.text
    assert compat.status_code == 200, compat.text
    expected_raw = native.json()["periods" if case["format"] == "periods" else "slots"]
    expected = [(_utc(s["start"]), _utc(s["end"]), sorted(both.subs[m] for m in s["members"])) for s in expected_raw]
    if case["format"] == "slots":
        chosen: list[tuple[str, str, list[str]]] = []
        for slot in expected:
            if not chosen or slot[0] >= chosen[-1][1]:
                chosen.append(slot)
        expected = chosen[: case["max_results"]]
    key = "available_periods" if case["format"] == "periods" else "available_slots"
    found = [(s["start"], s["end"], sorted(p["sub"] for p in s["participants"])) for s in compat.json()[key]]
    assert found == expected
    assert native.json()["member_errors"] == []
    assert "member_errors" not in compat.json()
