"""Bad input to /v1/free_busy and /v1/availability gets a precise problem, never a 500.

These requests never reach Microsoft: validation happens before any upstream call (the last test
checks that an unconnected domain is reported per mailbox, also without an upstream call).
"""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from calbroker.store.applications import IssuedKey

START = "2026-11-24T09:00:00Z"
END = "2026-11-25T09:00:00Z"


def _auth(key: IssuedKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.token}"}


def _availability(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "participants": [{"members": [{"email": "adele@contoso.com"}], "required": "all"}],
        "duration": {"minutes": 30},
        "query_periods": [{"start": START, "end": END}],
    }
    body.update(overrides)
    return body


def _problem(response: Any, slug: str, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == f"/problems/{slug}", body
    assert "Traceback" not in response.text
    return body


def _fields(body: dict[str, Any]) -> list[str]:
    return [error["field"] for error in body.get("errors", [])]


@pytest.mark.parametrize(
    ("overrides", "slug", "field"),
    [
        ({"tzid": "Mars/Olympus_Mons"}, "invalid-request", "tzid"),
        ({"query_periods": [{"start": END, "end": START}]}, "invalid-request", "query_periods[0].end"),
        (
            {"query_periods": [{"start": "2026-11-24T09:00:00", "end": END}]},
            "invalid-request",
            "query_periods[0].start",
        ),
        ({"duration": {"minutes": 0}}, "invalid-request", "duration.minutes"),
        ({"duration": {"minutes": -5}}, "invalid-request", "duration.minutes"),
        ({"participants": []}, "invalid-request", "participants"),
        (
            {"participants": [{"members": [{"email": "not-an-email"}]}]},
            "invalid-request",
            "participants[0].members[0].email",
        ),
        (
            {"participants": [{"members": [{"email": "a@contoso.com"}], "required": 2}]},
            "invalid-request",
            "participants[0].required",
        ),
        (
            {"participants": [{"members": [{"email": "a@contoso.com"}], "required": "most"}]},
            "invalid-request",
            "participants[0].required",
        ),
        ({"response_format": "calendar"}, "invalid-request", "response_format"),
        ({"max_results": 5000}, "invalid-request", "max_results"),
        ({"tentative_as_bussy": False}, "invalid-request", "tentative_as_bussy"),
        (
            {"working_hours": {"weekly_periods": [{"day": "funday", "start_time": "09:00", "end_time": "17:00"}]}},
            "invalid-request",
            "working_hours.weekly_periods[0].day",
        ),
        (
            {"working_hours": {"weekly_periods": [{"day": "monday", "start_time": "17:00", "end_time": "09:00"}]}},
            "invalid-request",
            "working_hours.weekly_periods[0].end_time",
        ),
        (
            {"participants": [{"members": [{"email": f"u{i}@contoso.com"} for i in range(1000)]}]},
            "limit-exceeded",
            "participants[0].members",
        ),
        ({"participants": [{"members": [{"email": "a@contoso.com"}]}] * 11}, "limit-exceeded", "participants"),
        (
            {"query_periods": [{"start": "2026-11-01T00:00:00Z", "end": "2027-01-15T00:00:00Z"}]},
            "limit-exceeded",
            "query_periods",
        ),
        (
            {
                "query_periods": [
                    {"start": f"2026-11-{d:02d}T09:00:00Z", "end": f"2026-11-{d:02d}T10:00:00Z"} for d in range(1, 31)
                ]
                * 2
            },
            "limit-exceeded",
            "query_periods",
        ),
    ],
)
async def test_availability_rejects_bad_input_precisely(
    client: AsyncTestClient,
    api_key: IssuedKey,
    overrides: dict[str, Any],
    slug: str,
    field: str,  # type: ignore[type-arg]
) -> None:
    response = await client.post("/v1/availability", json=_availability(**overrides), headers=_auth(api_key))
    body = _problem(response, slug)
    assert field in _fields(body), (field, body)  # the exact path, never a prefix of it
    assert all(error["message"] for error in body["errors"])


@pytest.mark.parametrize(
    ("body", "slug", "field"),
    [
        ({"mailboxes": ["a@contoso.com"], "start": END, "end": START}, "invalid-request", "end"),
        ({"mailboxes": [], "start": START, "end": END}, "invalid-request", "mailboxes"),
        ({"mailboxes": ["a@contoso.com"], "start": START}, "invalid-request", "end"),
        ({"mailboxes": ["a@contoso.com"], "start": "tomorrow", "end": END}, "invalid-request", "start"),
        ({"mailboxes": ["a@contoso.com"], "start": START, "end": END, "tzid": "Nowhere"}, "invalid-request", "tzid"),
        (
            {"mailboxes": [f"u{i}@contoso.com" for i in range(501)], "start": START, "end": END},
            "limit-exceeded",
            "mailboxes",
        ),
        ({"mailboxes": ["a@contoso.com"], "start": START, "end": "2027-03-01T00:00:00Z"}, "limit-exceeded", "end"),
    ],
)
async def test_free_busy_rejects_bad_input_precisely(
    client: AsyncTestClient,
    api_key: IssuedKey,
    body: dict[str, Any],
    slug: str,
    field: str,  # type: ignore[type-arg]
) -> None:
    response = await client.post("/v1/free_busy", json=body, headers=_auth(api_key))
    problem = _problem(response, slug)
    assert field in _fields(problem), (field, problem)


async def test_malformed_json_is_a_400_problem(client: AsyncTestClient, api_key: IssuedKey) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/v1/free_busy", content=b'{"mailboxes": [', headers={**_auth(api_key), "Content-Type": "application/json"}
    )
    _problem(response, "malformed-body", 400)


async def test_oversize_body_is_a_413_problem(client: AsyncTestClient, api_key: IssuedKey) -> None:  # type: ignore[type-arg]
    huge = {"mailboxes": ["a@contoso.com"], "start": START, "end": END, "tzid": "x" * (3 * 1024 * 1024)}
    response = await client.post("/v1/free_busy", json=huge, headers=_auth(api_key))
    _problem(response, "payload-too-large", 413)


async def test_unconnected_domain_is_a_per_mailbox_error(client: AsyncTestClient, api_key: IssuedKey) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/v1/free_busy",
        json={"mailboxes": ["someone@unknown.example"], "start": START, "end": END},
        headers=_auth(api_key),
    )
    assert response.status_code == 200, response.text
    [entry] = response.json()["free_busy"]
    assert entry["mailbox"] == "someone@unknown.example"
    assert entry["error"]["type"] == "/problems/mailbox-not-connected"
    assert "busy" not in entry  # never reported as free
    availability = await client.post(
        "/v1/availability",
        json=_availability(participants=[{"members": [{"email": "someone@unknown.example"}]}]),
        headers=_auth(api_key),
    )
    assert availability.status_code == 200, availability.text
    body = availability.json()
    assert body["slots"] == []
    assert body["member_errors"][0]["problem"]["type"] == "/problems/mailbox-not-connected"


async def test_requests_without_a_key_are_refused_before_validation(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    _problem(await client.post("/v1/availability", json={}), "unauthorized", 401)
