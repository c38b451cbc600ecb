"""The API as `calbroker serve` runs it: uvicorn on a loopback socket, with a deadline on request headers.

A client that drips one header line at a time (slowloris) is answered 408 and disconnected once
the header deadline passes, while ordinary requests on the same server are served as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from calbroker.api.server import ApiServer, server_config
from calbroker.app import create_app
from calbroker.config import Settings

DRIP_INTERVAL_S = 0.2
MAX_DRIPS = 300  # a minute of dripping at most: the loop is bounded whatever the server does


@pytest.fixture(scope="module")
async def served(settings: Settings) -> AsyncIterator[ApiServer]:
    settings = replace(settings, host="127.0.0.1", port=0, header_timeout_s=1.0)
    server = ApiServer(server_config(create_app(settings), settings))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the server stopped before it started"
        await asyncio.sleep(0.05)
    yield server
    server.should_exit = True
    await task


async def _get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_a_client_dripping_header_lines_is_cut_off_with_408(served: ApiServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    answer = asyncio.create_task(reader.read())  # completes when the server closes the connection
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
    drips = 0
    try:
        while not answer.done() and drips < MAX_DRIPS:
            with contextlib.suppress(ConnectionError):
                writer.write(f"X-Drip-{drips}: still here\r\n".encode())
                await writer.drain()
            drips += 1
            await asyncio.sleep(DRIP_INTERVAL_S)
        assert answer.done(), f"the server kept a dripping connection open through {drips} header lines"
        assert answer.result().startswith(b"HTTP/1.1 408 "), answer.result()
    finally:
        answer.cancel()
        writer.close()
    assert (await _get(served.port, "/healthz")).startswith(b"HTTP/1.1 200 ")


async def test_the_deadline_applies_to_each_request_on_a_kept_alive_connection(served: ApiServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        first = await reader.readuntil(b'{"status":"ok"}')
        assert first.startswith(b"HTTP/1.1 200 ")
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # the second request starts, then stalls
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), timeout=MAX_DRIPS * DRIP_INTERVAL_S)
        assert rest.startswith(b"HTTP/1.1 408 "), rest
    finally:
        writer.close()
