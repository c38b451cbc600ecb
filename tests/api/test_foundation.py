"""The API skeleton: health, readiness, metrics, auth, request ids and problem documents."""

from __future__ import annotations

import html
from datetime import datetime, timedelta

import asyncpg
from litestar.testing import AsyncTestClient

from calbroker.api.problems import CATALOGUE
from calbroker.store.applications import IssuedKey, create_application, rotate_key

PROBLEM_KEYS = {"type", "title", "status", "detail", "request_id"}


def _auth(key: IssuedKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.token}"}


def _is_problem(response, slug: str, status: int) -> dict[str, object]:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert set(body) >= PROBLEM_KEYS, body
    assert body["type"] == f"/problems/{slug}"
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return body  # type: ignore[no-any-return]


async def test_healthz_and_readyz(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok", "keyring": "ok"},
        "master_keys": ["k1"],
    }


async def test_me_returns_the_calling_application(client: AsyncTestClient, api_key: IssuedKey) -> None:  # type: ignore[type-arg]
    response = await client.get("/v1/me", headers=_auth(api_key))
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(api_key.application.id)
    assert body["name"] == api_key.application.name
    assert body["api_key"]["prefix"] == api_key.prefix
    assert body["api_key"]["expires_at"] is None
    assert api_key.token not in response.text


async def test_me_says_when_a_rotated_out_key_stops_working(client: AsyncTestClient, pool: asyncpg.Pool) -> None:  # type: ignore[type-arg]
    async with pool.acquire() as conn:
        old = await create_application(conn, "rotating", actor="test")
        new = await rotate_key(conn, old.application.id, actor="test", keep_old_for=timedelta(hours=24))
    answer = (await client.get("/v1/me", headers=_auth(old))).json()
    assert datetime.fromisoformat(answer["api_key"]["expires_at"]) == new.previous_keys_expire_at
    assert (await client.get("/v1/me", headers=_auth(new))).json()["api_key"]["expires_at"] is None


async def test_missing_and_bad_keys_are_401_with_www_authenticate(
    client: AsyncTestClient,
    api_key: IssuedKey,  # type: ignore[type-arg]
) -> None:
    missing = await client.get("/v1/me")
    _is_problem(missing, "unauthorized", 401)
    assert missing.headers["www-authenticate"] == 'Bearer realm="calbroker", error="invalid_request"'
    for header in (
        f"Basic {api_key.token}",
        "Bearer",
        f"Bearer {api_key.token}x",
        "Bearer cbk_aaaaaaaa_" + "a" * 43,
    ):
        response = await client.get("/v1/me", headers={"Authorization": header})
        _is_problem(response, "unauthorized", 401)
        assert response.headers["www-authenticate"].startswith('Bearer realm="calbroker"')


async def test_unknown_route_and_wrong_method_are_problems(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    _is_problem(await client.get("/v1/nowhere"), "route-not-found", 404)
    not_allowed = await client.delete("/healthz")
    _is_problem(not_allowed, "method-not-allowed", 405)
    assert "GET" in not_allowed.headers["allow"]


async def test_request_id_is_echoed_when_well_formed_and_replaced_otherwise(
    client: AsyncTestClient,  # type: ignore[type-arg]
) -> None:
    echoed = await client.get("/healthz", headers={"X-Request-Id": "abc-123.def:456"})
    assert echoed.headers["x-request-id"] == "abc-123.def:456"
    replaced = await client.get("/healthz", headers={"X-Request-Id": "<script>" + "x" * 200})
    assert replaced.headers["x-request-id"] != "<script>" + "x" * 200
    assert len(replaced.headers["x-request-id"]) == 32
    assert (await client.get("/nope")).headers["x-request-id"]


async def test_metrics_count_requests_by_route_template_and_status(
    client: AsyncTestClient,
    api_key: IssuedKey,  # type: ignore[type-arg]
) -> None:
    await client.get("/v1/me", headers=_auth(api_key))
    await client.get("/v1/me")
    await client.get("/v1/not-a-route/123")
    text = (await client.get("/metrics")).text
    assert 'calbroker_http_requests_total{method="GET",route="/v1/me",status="200"}' in text
    assert 'calbroker_http_requests_total{method="GET",route="/v1/me",status="401"}' in text
    assert 'route="unmatched",status="404"' in text
    assert "/v1/not-a-route/123" not in text  # raw paths never become labels
    assert 'calbroker_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/me"' in text


async def test_every_problem_type_has_a_page(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    for slug, problem in CATALOGUE.items():
        page = await client.get(f"/problems/{slug}")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert problem.title in html.unescape(page.text)
    index = await client.get("/problems")
    assert all(f"/problems/{slug}" in index.text for slug in CATALOGUE)
    _is_problem(await client.get("/problems/no-such-problem"), "route-not-found", 404)


async def test_openapi_is_served(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    assert "/v1/me" in document["paths"]
    assert (await client.get("/docs")).status_code == 200
