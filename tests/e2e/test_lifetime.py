"""Every way a calbroker process ends stops what it started: real processes, real signals.

The embedded PostgreSQL outlives its process unless the process stops it: a SIGTERM (Python's
default action skips every `finally`), an exception during start-up, an API that cannot start, or
a process that was killed and left its pid behind in the server's list of users. Each test runs
`calbroker` as the operator does and checks the server is gone afterwards; one data directory
serves the whole module, so the server is initialised once and started by each test.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from calbroker.cli import main
from tests.fixtures.processes import (
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Calbroker,
    alive,
    assert_server_stopped,
    free_port,
    postmaster_pid,
    users,
    wait_until,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("lifetime")
    yield path
    pid = postmaster_pid(path)
    if pid is not None:  # a failed test left it running: stop it (fast shutdown)
        os.kill(pid, signal.SIGINT)
        wait_until(lambda: not alive(pid), "the leftover PostgreSQL to stop", STOP_TIMEOUT_S)


@pytest.fixture
def started() -> Iterator[list[Calbroker]]:
    """Processes a test starts; any still running at the end are killed."""
    processes: list[Calbroker] = []
    yield processes
    for process in processes:
        process.kill()


@pytest.mark.parametrize(
    ("command", "ready", "signum"),
    [
        ("serve", "calbroker listening", signal.SIGTERM),
        ("serve", "calbroker listening", signal.SIGINT),
        ("worker", "calbroker worker running", signal.SIGTERM),
    ],
    ids=["serve-SIGTERM", "serve-SIGINT", "worker-SIGTERM"],
)
def test_a_stop_signal_stops_the_embedded_postgres(
    data_dir: Path, started: list[Calbroker], command: str, ready: str, signum: signal.Signals
) -> None:
    port = str(free_port())
    calbroker = Calbroker(data_dir, command, "--port" if command == "serve" else "--metrics-port", port)
    started.append(calbroker)
    calbroker.wait_for(ready)
    pid = postmaster_pid(data_dir)
    assert pid is not None
    assert users(data_dir) == [calbroker.process.pid]
    # What the container healthcheck runs: the API, or the worker's metrics endpoint, answers.
    probe = ["healthcheck"] if command == "serve" else ["healthcheck", "--worker"]
    port_variable = "CALBROKER_PORT" if command == "serve" else "CALBROKER_WORKER_METRICS_PORT"
    assert main(probe, {"CALBROKER_DATA_DIR": str(data_dir), port_variable: port}) == 0

    calbroker.process.send_signal(signum)
    assert calbroker.exit_code() == 0, calbroker.output  # a graceful stop
    assert_server_stopped(data_dir, pid)


def test_a_signal_during_start_up_stops_what_was_started(data_dir: Path, started: list[Calbroker]) -> None:
    """SIGTERM while the demo is still setting up (its database is up, its API not yet)."""
    calbroker = Calbroker(data_dir, "demo", "--port", str(free_port()))
    started.append(calbroker)
    wait_until(lambda: postmaster_pid(data_dir) is not None, "the embedded PostgreSQL", START_TIMEOUT_S)
    pid = postmaster_pid(data_dir)
    assert pid is not None

    calbroker.process.send_signal(signal.SIGTERM)
    code = calbroker.exit_code()
    assert "calbroker listening" not in calbroker.output  # it really was starting
    assert code == 128 + signal.SIGTERM, calbroker.output
    assert_server_stopped(data_dir, pid)


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_port_in_use_is_one_line_before_anything_starts(
    data_dir: Path, started: list[Calbroker], command: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        calbroker = Calbroker(data_dir, command, "--port", str(port))
        started.append(calbroker)
        code = calbroker.exit_code()
    assert code == 1, calbroker.output
    assert calbroker.output.splitlines() == [
        f"calbroker: cannot listen on 127.0.0.1:{port}: address already in use "
        "(choose another with --port or CALBROKER_PORT)"
    ]
    assert postmaster_pid(data_dir) is None  # the database (and the demo's sandbox) never started


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_an_error_during_start_up_stops_what_was_started(
    data_dir: Path, started: list[Calbroker], command: str
) -> None:
    """The master key file cannot be read: found after the database (and the demo's sandbox) started."""
    key_file = data_dir / "master.keys"
    kept = key_file.read_bytes() if key_file.exists() else None
    key_file.write_text("not a key\n")
    key_file.chmod(0o600)
    try:
        calbroker = Calbroker(data_dir, command, "--port", str(free_port()))
        started.append(calbroker)
        wait_until(lambda: postmaster_pid(data_dir) is not None, "the embedded PostgreSQL", START_TIMEOUT_S)
        pid = postmaster_pid(data_dir)
        assert pid is not None
        assert calbroker.exit_code() == 2
    finally:
        if kept is None:
            key_file.unlink()
        else:
            key_file.write_bytes(kept)
    [line] = calbroker.output.splitlines()
    assert line.startswith(f"calbroker: invalid configuration: {key_file}: entry 1 must look like"), line
    assert_server_stopped(data_dir, pid)


def test_a_killed_process_does_not_keep_the_database_running_for_the_next(
    data_dir: Path, started: list[Calbroker]
) -> None:
    first = Calbroker(data_dir, "serve", "--port", str(free_port()))
    started.append(first)
    first.wait_for("calbroker listening")
    first.kill()  # SIGKILL: nothing of it runs any more
    pid = postmaster_pid(data_dir)
    assert pid is not None  # nobody was left to stop it
    assert users(data_dir) == [first.process.pid]

    second = Calbroker(data_dir, "serve", "--port", str(free_port()))
    started.append(second)
    second.wait_for("calbroker listening")
    assert postmaster_pid(data_dir) == pid  # it joined the server that was still running
    assert users(data_dir) == [second.process.pid]  # and forgot the dead one

    second.process.send_signal(signal.SIGTERM)
    assert second.exit_code() == 0, second.output
    assert_server_stopped(data_dir, pid)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_sandbox_command_stops_on_a_signal(
    tmp_path: Path, started: list[Calbroker], signum: signal.Signals
) -> None:
    calbroker = Calbroker(tmp_path, "sandbox", "--port", "0")
    started.append(calbroker)
    calbroker.wait_for("calbroker sandbox (seed 0")
    calbroker.process.send_signal(signum)
    assert calbroker.exit_code() == 128 + signum, calbroker.output
