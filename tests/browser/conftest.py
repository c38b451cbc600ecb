"""Browser fixtures: calbroker served over real HTTP (uvicorn in a thread) and Debian's Chromium.

Chromium is launched from /usr/bin/chromium (installed by `make test` / `.ci/run`; Playwright never
downloads browsers here) with the flags a machine without network needs, or it stalls on start-up
waiting for component updates and sync.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvicorn
from playwright.async_api import BrowserContext, async_playwright

from calbroker.app import create_app
from calbroker.config import Settings
from calbroker.sandbox import SandboxThread
from tests.fixtures.connect import connect_settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


class ServedApp:
    """create_app(settings) behind uvicorn on an ephemeral loopback port, in its own thread and loop."""

    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        self.settings = settings
        self.url = settings.public_url
        config = uvicorn.Config(create_app(settings), log_config=None, lifespan="on", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="calbroker-under-test", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("calbroker did not start under uvicorn")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


@pytest.fixture(scope="module")
def served(settings: Settings, sandbox: SandboxThread) -> Iterator[ServedApp]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = ServedApp(connect_settings(settings, sandbox, public_url=f"http://127.0.0.1:{port}"), sock)
    app.start()
    try:
        yield app
    finally:
        app.stop()
        sock.close()


@pytest.fixture(scope="module")
def chromium_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh, empty user data dir (and the screenshot folder), or a skip naming what to install."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's Chromium is not installed: run `make browser` or `apt-get install -y chromium`")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return tmp_path_factory.mktemp("chromium-profile")


@pytest.fixture(scope="module")
async def chromium(chromium_profile: Path) -> AsyncIterator[BrowserContext]:
    """One Chromium with a fresh profile; tests open their own pages (and clear cookies)."""
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(chromium_profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1000, "height": 800},
            ignore_https_errors=True,  # the sandbox plays Microsoft with its own CA
            locale="en-GB",
        )
        try:
            yield context
        finally:
            await context.close()
