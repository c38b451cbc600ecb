"""The Cronofy-compatible API served for real (uvicorn on loopback), with the world a Cronofy app sees.

Cronofy's SDKs speak HTTP with their own clients (pycronofy on `requests`, the Node SDK on axios),
so the API runs in a uvicorn server on a pre-bound loopback socket: `public_url` is known before
the app is built, which the absolute `next_page` URLs need. Service-account callbacks go to a
loopback receiver, reachable because the settings allow plain http to loopback callbacks (the URL
policy's explicit allowance for `calbroker demo`, labs and tests). Callbacks and push notifications
are delivered from the outbox by `calbroker worker`, running beside the API in a thread of its own
(`LiveWorker`); push tests also drain a burst-mode worker to move sync rounds along at once.
"""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import uvicorn

from calbroker.app import create_app
from calbroker.config import BUILTIN_CLOUDS, ChannelSettings, Settings, sandbox_cloud
from calbroker.sandbox import SandboxThread
from calbroker.services import Services, open_services
from calbroker.store.applications import IssuedKey, create_application
from calbroker.store.cronofy import issue_client, issue_service_account_token
from calbroker.workers.runner import Worker
from tests.e2e.conftest import connect, ews_draft, graph_draft
from tests.fixtures.database import new_master_key
from tests.fixtures.sync import fast_sync


@pytest.fixture(scope="module")
def settings(database_url: str, sandbox: SandboxThread, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The production settings shape, with the sandbox as one more Microsoft cloud."""
    return fast_sync(
        Settings(
            data_dir=tmp_path_factory.mktemp("data"),
            database_url=database_url,
            master_keys=(new_master_key(),),
            clouds={**BUILTIN_CLOUDS, "sandbox": sandbox_cloud(sandbox.url, sandbox.ca_path)},
            allow_private_upstreams=True,
            channels=ChannelSettings(allow_loopback_http=True),
        )
    )


@pytest.fixture(scope="module")
def server_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture(scope="module")
def compat_settings(settings: Settings, server_socket: socket.socket) -> Settings:
    port = server_socket.getsockname()[1]
    return replace(settings, public_url=f"http://127.0.0.1:{port}", allow_http_upstreams=True)


class LiveServer:
    """uvicorn running the app in its own thread and event loop, like `calbroker serve`."""

    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        config = uvicorn.Config(create_app(settings), log_config=None, access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.url = settings.public_url
        self._sock = sock
        self._thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[sock])), daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        ready = threading.Event()
        while not self.server.started and self._thread.is_alive():
            ready.wait(0.05)
        assert self.server.started, "the API did not start"
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)


class LiveWorker:
    """`calbroker worker` in its own thread and event loop, on services of its own, like its own process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: Worker | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        async with open_services(self._settings, pool_size=8) as services:
            self._loop = asyncio.get_running_loop()
            self._worker = Worker(services, concurrency=4)
            self._started.set()
            await self._worker.run()

    def __enter__(self) -> LiveWorker:
        self._thread.start()
        while not self._started.wait(0.05):
            assert self._thread.is_alive(), "the worker did not start"
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._loop is not None and self._worker is not None:
            self._loop.call_soon_threadsafe(self._worker.stop)
        self._thread.join(timeout=60)


@pytest.fixture(scope="module")
def live_worker(compat_settings: Settings) -> Iterator[LiveWorker]:
    with LiveWorker(compat_settings) as worker:
        yield worker


@pytest.fixture(scope="module")
def live_api(compat_settings: Settings, server_socket: socket.socket) -> Iterator[LiveServer]:
    with LiveServer(compat_settings, server_socket) as server:
        yield server


class CallbackReceiver:
    """An application's callback endpoint on loopback: every POST (path, parsed body, the raw body and
    the headers, lower-cased), in arrival order."""

    def __init__(self) -> None:
        received: queue.Queue[dict[str, Any]] = queue.Queue()
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                received.put(
                    {
                        "path": self.path,
                        "body": json.loads(raw or b"{}"),
                        "raw": raw,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                    }
                )
                self.send_response(202)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def next(self, timeout: float = 60) -> dict[str, Any]:
        """The next callback; waits for it (the condition), failing only if none ever comes."""
        return self.received.get(timeout=timeout)

    def __enter__(self) -> CallbackReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as found:
        yield found


@dataclass(frozen=True)
class CronofyWorld:
    """What an application migrating from Cronofy holds: client credentials and service-account tokens."""

    base_url: str
    application: IssuedKey
    client_id: str
    client_secret: str
    service_account_tokens: dict[str, str]


@pytest.fixture(scope="module")
async def compat_services(compat_settings: Settings) -> AsyncIterator[Services]:
    async with open_services(compat_settings, pool_size=2) as services:
        yield services


@pytest.fixture(scope="module")
async def compat_worker(compat_settings: Settings) -> AsyncIterator[Worker]:
    """`calbroker worker` in burst mode on services of its own (as its own process would have): it runs
    sync rounds and delivers push notifications when a test drains it."""
    async with open_services(compat_settings, pool_size=12) as services:
        yield Worker(services, concurrency=4)


@pytest.fixture(scope="module")
async def cronofy_world(
    compat_services: Services, sandbox: SandboxThread, live_api: LiveServer, live_worker: LiveWorker
) -> CronofyWorld:
    async with compat_services.pool.acquire() as conn:
        application = await create_application(conn, "Cronofy migrant", actor="test")
    app_id = application.application.id
    graph = await connect(compat_services, graph_draft(app_id, sandbox))
    ews = await connect(compat_services, ews_draft(app_id, sandbox))
    async with compat_services.pool.acquire() as conn:
        client = await issue_client(conn, compat_services.keyring, app_id, actor="test")
        tokens = {
            "contoso": await issue_service_account_token(conn, app_id, graph.id, actor="test"),
            "fabrikam": await issue_service_account_token(conn, app_id, ews.id, actor="test"),
        }
    return CronofyWorld(
        base_url=f"{live_api.url}/compat/cronofy",
        application=application,
        client_id=client.client.client_id,
        client_secret=client.client_secret,
        service_account_tokens=tokens,
    )
