"""Graph `onlineMeetings/createOrGet` in the sandbox, through the real aiohttp client.

https://learn.microsoft.com/graph/api/onlinemeeting-createorget: one meeting per (organizer,
externalId), the same one returned again; app-only calls need a Teams application access policy.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from calbroker.sandbox import SandboxThread
from tests.fixtures.sandbox import SandboxControl

ANNA = "anna.schmidt@fabrikam.com"
BEN = "ben.taylor@fabrikam.com"
ADELE = "adele.vance@contoso.com"


@pytest.fixture
async def http(sandbox_ssl_context: ssl.SSLContext) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=sandbox_ssl_context)) as session:
        yield session


async def create_or_get(
    http: aiohttp.ClientSession, sandbox: SandboxThread, token: str, user: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with http.post(
        f"{sandbox.graph_url}/users/{user}/onlineMeetings/createOrGet",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        return response.status, await response.json()


def meeting_body(external_id: str) -> dict[str, Any]:
    return {
        "externalId": external_id,
        "startDateTime": "2027-05-02T09:00:00Z",
        "endDateTime": "2027-05-02T10:00:00Z",
        "subject": "Hybrid sync",
    }


async def test_create_or_get_returns_the_same_meeting_for_the_same_external_id(
    http: aiohttp.ClientSession, sandbox: SandboxThread, sandbox_control: SandboxControl
) -> None:
    token = sandbox_control.token("fabrikam", "fabrikam-teams")
    anna_id = next(u["id"] for u in sandbox_control.tenant("fabrikam")["users"] if u["email"] == ANNA)
    status, first = await create_or_get(http, sandbox, token, anna_id, meeting_body("booking-1"))
    assert status == 201
    assert first["externalId"] == "booking-1"
    assert first["joinWebUrl"].startswith("https://teams.microsoft.com/l/meetup-join/")
    assert first["subject"] == "Hybrid sync"
    status, again = await create_or_get(http, sandbox, token, anna_id, meeting_body("booking-1"))
    assert status == 200
    assert (again["id"], again["joinWebUrl"]) == (first["id"], first["joinWebUrl"])
    _, other = await create_or_get(http, sandbox, token, anna_id, meeting_body("booking-2"))
    assert other["id"] != first["id"]
    # The external id is per organizer: Ben's "booking-1" is another meeting.
    _, bens = await create_or_get(http, sandbox, token, BEN, meeting_body("booking-1"))
    assert bens["id"] != first["id"]
    assert sandbox_control.count("graph:onlineMeetings.createOrGet") == 4
    for meeting, user in ((first, anna_id), (other, anna_id), (bens, BEN)):
        async with http.delete(
            f"{sandbox.graph_url}/users/{user}/onlineMeetings/{meeting['id']}",
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            assert response.status == 204


async def test_create_or_get_needs_an_external_id_and_a_teams_policy(
    http: aiohttp.ClientSession, sandbox: SandboxThread, sandbox_control: SandboxControl
) -> None:
    token = sandbox_control.token("fabrikam", "fabrikam-teams")
    status, body = await create_or_get(http, sandbox, token, ANNA, {"subject": "no id"})
    assert (status, body["error"]["code"]) == (400, "BadRequest")
    # contoso-expired holds OnlineMeetings.ReadWrite.All but no Teams application access policy.
    no_policy = sandbox_control.token("contoso", "contoso-expired")
    status, body = await create_or_get(http, sandbox, no_policy, ADELE, meeting_body("x"))
    assert (status, body["error"]["code"]) == (403, "Forbidden")
    # contoso-reader lacks the permission altogether.
    reader = sandbox_control.token("contoso", "contoso-reader")
    status, body = await create_or_get(http, sandbox, reader, ADELE, meeting_body("x"))
    assert (status, body["error"]["code"]) == (403, "ErrorAccessDenied")
