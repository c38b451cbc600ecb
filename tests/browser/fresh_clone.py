"""The browser walk from a fresh clone: `git clone`, `make run PORT=…`, then tests/browser/test_demo.py.

    python -m tests.browser.fresh_clone        (from the repository root; or `make browser-fresh-clone`)

Clones this repository's committed HEAD into a temporary directory, runs `make run PORT=<free>`
there exactly as the README says (the clone's Makefile builds its own .venv from PyPI; pip's
cache makes that minutes, not tens of minutes), drives Chromium through all four connect methods
against that demo (the test module, told where the demo's data dir is), then stops `make run` with
SIGTERM to its process group, as Ctrl-C in a terminal would, and checks nothing is left running:
the embedded PostgreSQL is gone and no process of the clone remains. Exit status: pytest's, or 1.
Not part of `make test` (it builds a virtualenv).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fixtures.processes import alive, free_port

ROOT = Path(__file__).resolve().parents[2]
VENV_TIMEOUT_S = 1800.0
STOP_TIMEOUT_S = 120.0


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="calbroker-fresh-") as scratch:
        clone = Path(scratch) / "calbroker"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        port = free_port()
        log = Path(scratch) / "make-run.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALBROKER_") and k != "DATABASE_URL"}
        env["CALBROKER_LOG_LEVEL"] = "warning"
        print(f"fresh clone in {clone}: make run PORT={port} (log: {log})", flush=True)
        started = time.monotonic()
        with log.open("wb") as sink:
            make = subprocess.Popen(
                ["make", "run", f"PORT={port}"],
                cwd=clone,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, signalled as a terminal would
            )
        try:
            while b"calbroker listening" not in log.read_bytes():
                if make.poll() is not None:
                    print(log.read_text(errors="replace"), file=sys.stderr)
                    return 1
                if time.monotonic() - started > VENV_TIMEOUT_S:
                    print("make run did not start in time", file=sys.stderr)
                    return 1
                time.sleep(0.5)
            print(f"make run listening after {time.monotonic() - started:.0f} s", flush=True)
            data_dir = clone / ".calbroker"
            walk = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/browser/test_demo.py"],
                cwd=ROOT,
                env={**os.environ, "CALBROKER_DEMO_DATA_DIR": str(data_dir)},
                check=False,
            )
            pid_file = data_dir / "pg" / "postmaster.pid"
            postgres = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        finally:
            if make.poll() is None:
                os.killpg(make.pid, signal.SIGTERM)
            try:
                make.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(make.pid, signal.SIGKILL)
                make.wait()
                print("make run did not stop on SIGTERM", file=sys.stderr)
                return 1
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while (postgres is not None and alive(postgres)) or _group_alive(make.pid):
            if time.monotonic() > deadline:
                print("make run left processes running", file=sys.stderr)
                return 1
            time.sleep(0.2)
        print(f"make run stopped cleanly; browser walk exit status {walk.returncode}", flush=True)
        return walk.returncode


if __name__ == "__main__":
    sys.exit(main())
