"""The README's first requests, run as written against `calbroker demo`: no GNU-only `date`, no fixed port."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.fixtures.processes import Calbroker, free_port

README = Path(__file__).resolve().parents[2] / "README.md"


def _shell_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```sh\n(.*?)```", text[start:end], flags=re.DOTALL)


def _documents(output: str) -> list[object]:
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(output.rstrip()):
        document, at = decoder.raw_decode(output, at)
        found.append(document)
    return found


def test_the_readme_uses_no_gnu_only_date_options() -> None:
    assert not re.search(r"\bdate\b[^\n]*\s-d\b", README.read_text())


def test_the_first_requests_work_as_written_on_any_port(tmp_path: Path) -> None:
    blocks = _shell_blocks("First requests")
    assert len(blocks) == 2
    data_dir = tmp_path / ".calbroker"
    demo = Calbroker(data_dir, "demo", "--port", str(free_port()))
    try:
        demo.wait_for("calbroker listening")
        # The blocks run one after the other in one shell, from the directory `make run` was started in.
        script = "set -eu\n" + "\n".join(blocks)
        run = subprocess.run(
            ["/bin/bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )
        assert run.returncode == 0, run.stderr
        me, free_busy, availability, event, status = _documents(run.stdout)  # curl -s adds no newlines
        assert me["name"] == "calbroker demo"
        assert [entry["mailbox"] for entry in free_busy["free_busy"]] == [
            "adele.vance@contoso.com",
            "anna.schmidt@fabrikam.com",
        ]
        assert all("error" not in entry for entry in free_busy["free_busy"]), free_busy
        assert availability["slots"], availability
        assert event["event_id"] == "readme-demo-1", event
        assert event["teams"]["join_url"], event
        assert status == 204  # DELETE's -w '%{http_code}'
        demo.process.send_signal(signal.SIGTERM)
        assert demo.exit_code() == 0, demo.output
    finally:
        demo.kill()


def test_the_first_webhook_arrives_as_written(tmp_path: Path) -> None:
    """The README's webhook section, run as written: only the receiver's port (a free one, not 8765) and
    the interpreter (this one, with `standardwebhooks`) are substituted, and `<changes_since>` is filled in."""
    setup = _shell_blocks("First requests")[0].split("\ncurl", 1)[0] + "\n"  # demo(), BASE, KEY: no requests
    create, receiver, change = _shell_blocks("Your first webhook, in a minute")
    port = str(free_port())

    def as_here(block: str) -> str:
        return block.replace("8765", port).replace(".venv/bin/python", sys.executable)

    data_dir = tmp_path / ".calbroker"
    demo = Calbroker(data_dir, "demo", "--port", str(free_port()))
    listening: subprocess.Popen[str] | None = None
    try:
        demo.wait_for("calbroker listening")
        made = subprocess.run(
            ["/bin/bash", "-c", "set -eu\n" + setup + as_here(create) + 'echo "$SECRET"\n'],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert made.returncode == 0, made.stderr
        secret = made.stdout.strip().splitlines()[-1]
        assert secret.startswith("whsec_"), made.stdout
        output = tmp_path / "receiver.out"
        with output.open("w") as sink:
            listening = subprocess.Popen(
                ["/bin/bash", "-c", f"SECRET={secret}\n" + as_here(receiver)],
                cwd=tmp_path,
                stdout=sink,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )

        def arrived(kind: str) -> str:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for line in output.read_text().splitlines():
                    if f" {kind} " in line:
                        return line
                time.sleep(0.2)
            raise AssertionError(f"no {kind} within 60 s; the receiver printed {output.read_text()!r}")

        arrived("channel.verification")
        since = datetime.now(UTC).isoformat()
        changed = subprocess.run(
            ["/bin/bash", "-c", "set -eu\n" + setup + as_here(change).replace("<changes_since>", since)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert changed.returncode == 0, changed.stderr
        made_event, changes = _documents(changed.stdout)
        assert made_event["subject"] == "Dentist", made_event
        assert changes["mailbox"] == "adele.vance@contoso.com", changes
        line = arrived("mailbox.changed")
        assert '"adele.vance@contoso.com"' in line, line
    finally:
        if listening is not None:
            os.killpg(listening.pid, signal.SIGTERM)
            listening.wait(timeout=10)
        demo.process.send_signal(signal.SIGTERM)
        demo.exit_code()
        demo.kill()
