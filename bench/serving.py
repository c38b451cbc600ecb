"""`calbroker serve` in a process of its own, for benches that measure the API as deployed: the
server under load shares no interpreter (and no GIL) with the load tool or the sandbox."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx

from calbroker.config import MasterKey
from calbroker.sandbox import SandboxThread

__all__ = ["api_environment", "eventually", "free_port", "served"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def api_environment(
    *, database: str, key: MasterKey, sandbox: SandboxThread, port: int, data_dir: str, **extra: str
) -> dict[str, str]:
    """The environment `calbroker serve` reads: this database, key and sandbox, quiet logs, no health checks."""
    return {
        **os.environ,
        "DATABASE_URL": database,
        "CALBROKER_MASTER_KEYS": f"{key.kid}:{base64.b64encode(key.key).decode()}",
        "CALBROKER_SANDBOX_URL": sandbox.url,
        "CALBROKER_SANDBOX_CA": str(sandbox.ca_path),
        "CALBROKER_ALLOW_PRIVATE_UPSTREAMS": "true",
        "CALBROKER_PORT": str(port),
        "CALBROKER_HEALTH_CHECK_INTERVAL_S": "0",
        "CALBROKER_LOG_LEVEL": "warning",
        "CALBROKER_DATA_DIR": data_dir,
        **extra,
    }


@asynccontextmanager
async def served(env: dict[str, str]) -> AsyncIterator[str]:
    """`calbroker serve` with `env`; yields its base URL once /readyz answers, terminates it after."""
    port = int(env["CALBROKER_PORT"])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "calbroker.cli", "serve", env=env, stdout=asyncio.subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:

            async def up() -> bool:
                try:
                    return (await client.get(url + "/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(up, 60, "the API process")
        yield url
    finally:
        process.terminate()
        await process.wait()
