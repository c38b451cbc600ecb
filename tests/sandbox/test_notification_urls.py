"""Graph refuses plain-http notification URLs unless the sandbox was told a local receiver needs them.

Real Graph only delivers to "a publicly accessible, HTTPS-secured endpoint"
(https://learn.microsoft.com/graph/change-notifications-delivery-webhooks). A sandbox built with
default settings therefore answers 400 and never calls the http URL; the test fixtures and
`calbroker demo` opt in explicitly (`allow_http_notification_urls`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from calbroker.sandbox import build_app
from calbroker.sandbox.state import SandboxSettings, SandboxState
from calbroker.sandbox.tls import load_key_material

ADELE = "adele.vance@contoso.com"


@pytest.fixture(scope="module")
async def default_sandbox(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    state = SandboxState(keys=load_key_material(tmp_path_factory.mktemp("defaults"), "127.0.0.1"))
    assert state.settings == SandboxSettings()  # nothing opted in
    async with TestClient(TestServer(build_app(state))) as client:
        yield client


async def _subscribe(client: TestClient[web.Request, web.Application], url: str) -> tuple[int, Any]:
    tenants = await (await client.get("/_sandbox/tenants")).json()
    app = next(a for a in tenants["apps"] if a["key"] == "contoso-secret")
    minted = await client.post("/_sandbox/tokens", json={"tenant": "contoso.com", "client_id": app["client_id"]})
    token = (await minted.json())["access_token"]
    body = {
        "changeType": "created",
        "notificationUrl": url,
        "resource": f"/users/{ADELE}/events",
        "expirationDateTime": (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.0000000Z"),
        "clientState": "state",
    }
    response = await client.post("/v1.0/subscriptions", json=body, headers={"Authorization": f"Bearer {token}"})
    return response.status, await response.json()


async def test_plain_http_notification_urls_are_refused_by_default(
    default_sandbox: TestClient[web.Request, web.Application],
) -> None:
    received: list[str] = []

    async def receiver(request: web.Request) -> web.Response:
        received.append(request.path_qs)
        return web.Response(text=request.query.get("validationToken", ""), content_type="text/plain")

    app = web.Application()
    app.router.add_post("/notify", receiver)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        status, body = await _subscribe(default_sandbox, f"http://127.0.0.1:{port}/notify")
    finally:
        await runner.cleanup()

    assert status == 400
    assert body["error"]["code"] == "InvalidRequest"
    assert "https" in body["error"]["message"]
    assert received == []  # refused before any validation request
