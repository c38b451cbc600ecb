"""The README's first requests, run as written against `calbroker demo`: no GNU-only `date`, no fixed port."""

from __future__ import annotations

import json
import re
import signal
import subprocess
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
