"""`/v1/connections/{id}/sync` and the `freshness` option: bad input gets a precise problem, another
application's connection does not exist, and nothing here needs Microsoft or a worker."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from calbroker.domain.connections import (
    AccessLevel,
    Connection,
    ConnectionKind,
    ConnectionMethod,
    EwsServiceAccount,
    GraphClientSecret,
)
from calbroker.store.applications import IssuedKey, create_application
from calbroker.store.connections import NewConnection, save_connection
from calbroker.store.keyring import Keyring
from tests.fixtures.database import new_master_key

START = "2026-11-24T09:00:00Z"
END = "2026-11-25T09:00:00Z"


def _auth(key: IssuedKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.token}"}


def _problem(response: Any, slug: str, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == f"/problems/{slug}", body
    return body


async def _connection(
    pool: asyncpg.Pool, application_id: uuid.UUID, *, kind: ConnectionKind = ConnectionKind.GRAPH, domain: str
) -> Connection:
    graph = kind is ConnectionKind.GRAPH
    async with pool.acquire() as conn:
        return await save_connection(
            conn,
            Keyring((new_master_key(),)),
            NewConnection(
                application_id=application_id,
                kind=kind,
                method=ConnectionMethod.GRAPH_APP if graph else ConnectionMethod.EWS,
                access_level=AccessLevel.FULL,
                display_name=domain,
                domains=(domain,),
                credentials=GraphClientSecret("tenant", "client", "secret")
                if graph
                else EwsServiceAccount(f"https://mail.{domain}/EWS/Exchange.asmx", "svc@" + domain, "password"),
                tenant_id="tenant" if graph else None,
                endpoint=None if graph else f"https://mail.{domain}/EWS/Exchange.asmx",
            ),
            actor="test",
        )


@pytest.fixture(scope="module")
async def graph(pool: asyncpg.Pool, api_key: IssuedKey) -> Connection:
    return await _connection(pool, api_key.application.id, domain="sync-graph.example")


@pytest.fixture(scope="module")
async def ews(pool: asyncpg.Pool, api_key: IssuedKey) -> Connection:
    return await _connection(pool, api_key.application.id, kind=ConnectionKind.EWS, domain="sync-ews.example")


async def test_a_new_connection_syncs_nothing_and_a_list_is_recorded(
    client: AsyncTestClient,  # type: ignore[type-arg]
    api_key: IssuedKey,
    graph: Connection,
) -> None:
    url = f"/v1/connections/{graph.id}/sync"
    before = await client.get(url, headers=_auth(api_key))
    assert before.status_code == 200, before.text
    assert before.json()["mode"] == "off"
    assert before.json()["mailboxes"] == []
    listed = await client.put(
        url, json={"mode": "list", "mailboxes": ["Ann@Sync-Graph.example"]}, headers=_auth(api_key)
    )
    assert listed.status_code == 200, listed.text
    assert listed.json()["mode"] == "list"
    assert listed.json()["listed"] == ["ann@sync-graph.example"]
    assert listed.json()["limit"] >= 1
    off = await client.put(url, json={"mode": "off"}, headers=_auth(api_key))
    assert off.json()["mode"] == "off"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mode": "some"}, "mode"),
        ({"mode": "all", "mailboxes": ["ann@sync-graph.example"]}, "mailboxes"),
        ({"mode": "list", "mailboxes": ["not an address"]}, "mailboxes[0]"),
        ({"mode": "list", "mailboxes": ["ann@elsewhere.example"]}, "mailboxes[0]"),
    ],
)
async def test_bad_scopes_are_refused_precisely(
    client: AsyncTestClient,  # type: ignore[type-arg]
    api_key: IssuedKey,
    graph: Connection,
    body: dict[str, Any],
    field: str,
) -> None:
    response = await client.put(f"/v1/connections/{graph.id}/sync", json=body, headers=_auth(api_key))
    problem = _problem(response, "invalid-request")
    assert field in [error["field"] for error in problem.get("errors", [])], problem


async def test_exchange_on_premises_cannot_sync_everyone_without_an_allow_list(
    client: AsyncTestClient,  # type: ignore[type-arg]
    api_key: IssuedKey,
    ews: Connection,
) -> None:
    response = await client.put(f"/v1/connections/{ews.id}/sync", json={"mode": "all"}, headers=_auth(api_key))
    problem = _problem(response, "invalid-request")
    assert [error["field"] for error in problem["errors"]] == ["mode"]


async def test_another_applications_connection_does_not_exist(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pool: asyncpg.Pool,
    api_key: IssuedKey,
) -> None:
    async with pool.acquire() as conn:
        other = await create_application(conn, "someone else", actor="test")
    theirs = await _connection(pool, other.application.id, domain="theirs.example")
    for url in (f"/v1/connections/{theirs.id}/sync", f"/v1/connections/{uuid.uuid4()}/sync"):
        _problem(await client.get(url, headers=_auth(api_key)), "not-found", 404)
        _problem(await client.put(url, json={"mode": "off"}, headers=_auth(api_key)), "not-found", 404)


async def test_freshness_is_auto_or_live(
    client: AsyncTestClient,  # type: ignore[type-arg]
    api_key: IssuedKey,
) -> None:
    free_busy = {"mailboxes": ["ann@sync-graph.example"], "start": START, "end": END, "freshness": "cached"}
    problem = _problem(await client.post("/v1/free_busy", json=free_busy, headers=_auth(api_key)), "invalid-request")
    assert "freshness" in str(problem)
    availability = {
        "participants": [{"members": [{"email": "ann@sync-graph.example"}], "required": "all"}],
        "duration": {"minutes": 30},
        "query_periods": [{"start": START, "end": END}],
        "freshness": "stale",
    }
    problem = _problem(
        await client.post("/v1/availability", json=availability, headers=_auth(api_key)), "invalid-request"
    )
    assert "freshness" in str(problem)
