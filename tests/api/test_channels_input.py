"""`/v1/channels` and `GET /v1/events?changed_since=`: bad input and limits get a precise problem that
names the field, another application's channel does not exist, and nothing is written on a refusal.
No worker runs here, so nothing is ever delivered: receivers are the discard port on loopback."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from calbroker.config import ChannelSettings, Settings
from calbroker.domain.channels import MAX_MAILBOX_FILTERS
from calbroker.store.applications import IssuedKey, create_application

RECEIVER = "http://127.0.0.1:9/hooks"
MAX_CHANNELS = 3


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    return replace(settings, channels=ChannelSettings(allow_loopback_http=True, max_channels=MAX_CHANNELS))


def _auth(key: IssuedKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.token}"}


def _problem(response: Any, slug: str, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == f"/problems/{slug}", body
    return body


def _fields(problem: dict[str, Any]) -> list[str]:
    return [error["field"] for error in problem.get("errors", [])]


async def _count(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        found: int = await conn.fetchval("SELECT count(*) FROM channels")
    return found


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"callback_url": "http://203.0.113.7/hook"}, "callback_url"),  # plain http off loopback
        ({"callback_url": "https://10.0.0.5/hook"}, "callback_url"),  # private: the demo allows loopback only
        ({"callback_url": "https://169.254.169.254/latest"}, "callback_url"),  # cloud metadata
        ({"callback_url": "https://user:pw@127.0.0.1/hook"}, "callback_url"),
        ({"callback_url": "ftp://127.0.0.1/hook"}, "callback_url"),
        ({"callback_url": RECEIVER, "types": ["event.exploded"]}, "types[0]"),
        ({"callback_url": RECEIVER, "mailboxes": ["not an address"]}, "mailboxes[0]"),
        ({"callback_url": RECEIVER, "connection_ids": [str(uuid.uuid4())]}, "connection_ids[0]"),
        ({"callback_url": RECEIVER, "types": ["connection.degraded"], "only_managed": True}, "only_managed"),
        ({"callback_url": RECEIVER, "only_managed": "yes"}, "only_managed"),
        ({"callback_url": RECEIVER, "surprise": 1}, "surprise"),
    ],
)
async def test_bad_channels_are_refused_precisely_and_nothing_is_written(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pool: asyncpg.Pool,
    api_key: IssuedKey,
    body: dict[str, Any],
    field: str,
) -> None:
    before = await _count(pool)
    problem = _problem(await client.post("/v1/channels", json=body, headers=_auth(api_key)), "invalid-request")
    assert field in _fields(problem), problem
    assert await _count(pool) == before


async def test_limits_are_422_limit_exceeded(
    client: AsyncTestClient,  # type: ignore[type-arg]
    make_application: Any,
) -> None:
    key = await make_application("channel limits")
    too_many = [f"user{i}@contoso.com" for i in range(MAX_MAILBOX_FILTERS + 1)]
    problem = _problem(
        await client.post("/v1/channels", json={"callback_url": RECEIVER, "mailboxes": too_many}, headers=_auth(key)),
        "limit-exceeded",
    )
    assert "mailboxes" in problem["detail"], problem
    for _ in range(MAX_CHANNELS):
        created = await client.post("/v1/channels", json={"callback_url": RECEIVER}, headers=_auth(key))
        assert created.status_code == 201, created.text
    problem = _problem(
        await client.post("/v1/channels", json={"callback_url": RECEIVER}, headers=_auth(key)), "limit-exceeded"
    )
    assert f"at most {MAX_CHANNELS} channels" in problem["detail"]


async def test_a_channel_as_created_listed_and_deleted(
    client: AsyncTestClient,  # type: ignore[type-arg]
    make_application: Any,
) -> None:
    key = await make_application("channel lifecycle")
    created = await client.post(
        "/v1/channels",
        json={"callback_url": RECEIVER, "types": ["event.changed"], "mailboxes": ["Adele.Vance@Contoso.com"]},
        headers=_auth(key),
    )
    assert created.status_code == 201, created.text
    channel = created.json()
    assert channel["secret"].startswith("whsec_")
    assert channel["types"] == ["event.changed"]
    assert channel["mailboxes"] == ["adele.vance@contoso.com"]
    assert channel["state"] == "active"
    assert channel["signature"] == "standard-webhooks"
    listed = (await client.get("/v1/channels", headers=_auth(key))).json()["channels"]
    assert [c["id"] for c in listed] == [channel["id"]]
    assert "secret" not in listed[0]
    (queued,) = (await client.get(f"/v1/channels/{channel['id']}/deliveries", headers=_auth(key))).json()["deliveries"]
    assert (queued["type"], queued["state"], queued["attempts"]) == ("channel.verification", "pending", [])
    deleted = await client.delete(f"/v1/channels/{channel['id']}", headers=_auth(key))
    assert deleted.status_code == 204
    _problem(await client.get(f"/v1/channels/{channel['id']}", headers=_auth(key)), "not-found", 404)


async def test_another_applications_channel_does_not_exist(
    client: AsyncTestClient,  # type: ignore[type-arg]
    pool: asyncpg.Pool,
    api_key: IssuedKey,
) -> None:
    async with pool.acquire() as conn:
        other = await create_application(conn, "someone else's channels", actor="test")
    theirs = (await client.post("/v1/channels", json={"callback_url": RECEIVER}, headers=_auth(other))).json()
    delivery = (await client.get(f"/v1/channels/{theirs['id']}/deliveries", headers=_auth(other))).json()
    delivery_id = delivery["deliveries"][0]["id"]
    for method, path, body in (
        ("GET", f"/v1/channels/{theirs['id']}", None),
        ("DELETE", f"/v1/channels/{theirs['id']}", None),
        ("POST", f"/v1/channels/{theirs['id']}/rotate_secret", None),
        ("POST", f"/v1/channels/{theirs['id']}/enable", None),
        ("GET", f"/v1/channels/{theirs['id']}/deliveries", None),
        ("POST", f"/v1/channels/{theirs['id']}/deliveries/{delivery_id}/retry", None),
        ("POST", f"/v1/channels/{theirs['id']}/replay", {"since": datetime.now(UTC).isoformat()}),
    ):
        response = await client.request(method, path, json=body, headers=_auth(api_key))
        _problem(response, "not-found", 404)
    still = await client.get(f"/v1/channels/{theirs['id']}", headers=_auth(other))
    assert still.status_code == 200
    _problem(await client.get("/v1/channels/not-a-uuid", headers=_auth(api_key)), "route-not-found", 404)


async def test_bad_delivery_ids_cursors_and_replays(
    client: AsyncTestClient,  # type: ignore[type-arg]
    make_application: Any,
) -> None:
    key = await make_application("channel log input")
    channel = (await client.post("/v1/channels", json={"callback_url": RECEIVER}, headers=_auth(key))).json()
    base = f"/v1/channels/{channel['id']}"
    for bad in ("msg_xyz", "0" * 32, f"msg_{'0' * 31}"):
        response = await client.post(f"{base}/deliveries/{bad}/retry", headers=_auth(key))
        assert response.status_code in (404, 422), response.text
        assert response.headers["content-type"].startswith("application/problem+json")
    _problem(await client.get(f"{base}/deliveries", params={"limit": 0}, headers=_auth(key)), "invalid-request")
    _problem(await client.get(f"{base}/deliveries", params={"cursor": "abc"}, headers=_auth(key)), "invalid-request")
    _problem(await client.get(f"{base}/deliveries", params={"state": "lost"}, headers=_auth(key)), "invalid-request")
    old = (datetime.now(UTC) - timedelta(days=45)).isoformat()
    problem = _problem(await client.post(f"{base}/replay", json={"since": old}, headers=_auth(key)), "invalid-request")
    assert _fields(problem) == ["since"]
    assert "kept 30 days" in problem["errors"][0]["message"]
    problem = _problem(
        await client.post(f"{base}/replay", json={"since": "yesterday"}, headers=_auth(key)), "invalid-request"
    )
    assert "since" in _fields(problem)


async def test_changed_since_is_refused_where_it_cannot_be_answered(
    client: AsyncTestClient,  # type: ignore[type-arg]
    api_key: IssuedKey,
) -> None:
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    params = {"mailbox": "adele.vance@contoso.com", "changed_since": since}
    problem = _problem(await client.get("/v1/events", params=params, headers=_auth(api_key)), "invalid-request")
    assert _fields(problem) == ["mailbox"]
    assert "not synced" in problem["errors"][0]["message"]
    with_window = {**params, "start": since, "end": datetime.now(UTC).isoformat()}
    problem = _problem(await client.get("/v1/events", params=with_window, headers=_auth(api_key)), "invalid-request")
    assert _fields(problem) == ["changed_since"]
    neither = {"mailbox": "adele.vance@contoso.com"}
    problem = _problem(await client.get("/v1/events", params=neither, headers=_auth(api_key)), "invalid-request")
    assert _fields(problem) == ["start"]
