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
from dataclasses import dataclass
from pathlib import Path

import httpx

from calbroker.config import MasterKey
from calbroker.sandbox import SandboxThread

__all__ = ["Served", "api_environment", "eventually", "free_port", "served"]


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


@dataclass(frozen=True)
class Served:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (user + system; NaN where /proc is absent).

        On a machine shared with other work, CPU per request is the figure load does not distort:
        throughput falls when the cores are busy elsewhere, the work a request costs does not.
        """
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def served(env: dict[str, str]) -> AsyncIterator[Served]:
    """`calbroker serve` with `env`; yields it once /readyz answers, terminates it after."""
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
        yield Served(url, process.pid)
    finally:
        process.terminate()
        await process.wait()
