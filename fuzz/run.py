"""`make fuzz`: schemathesis against a real calbroker and sandbox on loopback, then stop both.

Starts `calbroker demo` (the sandbox, an embedded PostgreSQL, the API, a demo application with
verified Graph and EWS connections) in a fresh data directory on a free loopback port, runs
schemathesis with every check against the served `/openapi.json`, authenticated with the demo's
API key, and stops the demo (which stops the sandbox and PostgreSQL) whatever happened.

    python fuzz/run.py [--examples N] [--seed S] [extra schemathesis options...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_demo(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CALBROKER_DATA_DIR": str(data_dir), "CALBROKER_LOG_LEVEL": "warning"}
    for name in ("DATABASE_URL", "CALBROKER_MASTER_KEYS"):
        env.pop(name, None)  # the demo's own embedded PostgreSQL and key file
    with log.open("wb") as sink:  # a file, not a pipe: nothing blocks when no one reads
        return subprocess.Popen(
            [sys.executable, "-m", "calbroker.cli", "demo", "--port", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def _wait_until_listening(demo: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and demo.poll() is None:
        if b"calbroker listening" in log.read_bytes():
            return
        time.sleep(0.2)
    sys.stderr.write(log.read_text(errors="replace"))
    raise SystemExit("fuzz: calbroker demo did not start")


def _stop(demo: subprocess.Popen[bytes]) -> None:
    if demo.poll() is None:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=250, help="test cases per operation and phase")
    parser.add_argument("--seed", type=int, default=None)
    options, extra = parser.parse_known_args()
    data_dir = Path(tempfile.mkdtemp(prefix="calbroker-fuzz-"))
    port = _free_port()
    log = data_dir / "demo.log"
    demo = _start_demo(data_dir, port, log)
    try:
        _wait_until_listening(demo, log)
        key = json.loads((data_dir / "demo.json").read_text())["api_key"]
        common = [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file",
            str(ROOT / "fuzz" / "schemathesis.toml"),
            "run",
            f"http://127.0.0.1:{port}/openapi.json",
            "--checks",
            "all",
            # DELETE /v1/events/{event_id} cancels: the event stays readable with status "cancelled"
            # (an application can see what became of its booking) and a repeated DELETE answers 204
            # (design §5). "A deleted resource answers 404" does not hold by design.
            "--exclude-checks",
            "use_after_free",
            "--header",
            f"Authorization: Bearer {key}",
            "--max-examples",
            str(options.examples),
            # Revoking the demo's connections would leave nothing to fuzz: the test suite covers it.
            "--exclude-operation-id",
            "revokeConnection",
            *(["--seed", str(options.seed)] if options.seed is not None else []),
        ]
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "fuzz.hooks", "PYTHONPATH": str(ROOT)}
        # The coverage phase runs on one worker: with two, Hypothesis's lambda-source parsing trips
        # CPython 3.11's AST recursion check ("AST constructor recursion depth mismatch"), a tool error.
        runs = (("examples,coverage", "1"), ("fuzzing,stateful", "2"))
        codes = [
            subprocess.run([*common, "--phases", phases, "--workers", workers, *extra], env=env, check=False).returncode
            for phases, workers in runs
        ]
        return max(codes)
    finally:
        _stop(demo)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
