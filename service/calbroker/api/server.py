"""The HTTP server the API runs in: uvicorn, with a deadline for reading each request's headers.

uvicorn bounds the idle time between requests (keep-alive) but not the time a client takes to
send one request's line and headers, so a client dripping a header line every few seconds holds
a connection (and its memory) forever: the slowloris attack. `HeaderDeadlineProtocol` arms a
timer when a connection opens and when each request begins, and cancels it once the headers are
complete; if it fires first, the client gets `408 Request Timeout` and the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from calbroker.config import Settings

__all__ = ["ApiServer", "HeaderDeadlineProtocol", "server_config"]

_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's headers."""

    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # the next request on a kept-alive connection gets the same deadline

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()


def _protocol(settings: Settings) -> type[HeaderDeadlineProtocol]:
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": settings.header_timeout_s})


def server_config(app: Any, settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration for the API: our logging, no server header, the header deadline."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=_protocol(settings),
        log_config=None,
        access_log=False,
        lifespan="on",
        server_header=False,
        proxy_headers=True,
        timeout_keep_alive=5,
    )


class ApiServer(uvicorn.Server):
    """A uvicorn server that says "listening" once it is, and only then, and that returns after a
    stop signal instead of re-raising it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT stop the server gracefully, then the previous handlers come back.

        uvicorn's own version re-raises the signal once the server has stopped; with SIGTERM's
        default action that kills the process before the caller has stopped what it started
        (the worker, the sandbox, the embedded PostgreSQL). The caller decides how the process ends.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.signal(signum, self.handle_exit) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(f"calbroker listening on http://{self.config.host}:{self.port}", file=sys.stdout, flush=True)

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one the OS picked for port 0)."""
        for server in self.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.config.port
