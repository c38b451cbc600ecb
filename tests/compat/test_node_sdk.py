"""The official Cronofy Node SDK (`cronofy` 3.8.4 from npm, pinned by package-lock.json) through the story.

`tests/compat/node/story.js` runs the same story as the pycronofy test with the Node SDK, its base URL
pointed at the live API (`client.urls.api`), and prints what it saw; this test checks it. Where node or
npm is not installed the test is skipped and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from calbroker.sandbox import SandboxThread
from tests.compat.conftest import CronofyWorld

NODE_DIR = Path(__file__).parent / "node"
ADELE = "adele.vance@contoso.com"
ANNA = "anna.schmidt@fabrikam.com"


@pytest.fixture(scope="module")
def node_story(tmp_path_factory: pytest.TempPathFactory) -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed here: the Cronofy Node SDK story was not run")
    workdir = tmp_path_factory.mktemp("node-sdk")
    for name in ("package.json", "package-lock.json", "story.js"):
        shutil.copy(NODE_DIR / name, workdir / name)
    installed = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    return workdir


def _z(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_node_sdk_story(node_story: Path, cronofy_world: CronofyWorld, sandbox: SandboxThread) -> None:
    anchor = sandbox.state.anchor
    tomorrow = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    event_start = tomorrow + timedelta(hours=13)
    today = datetime.now(UTC).date()
    config: dict[str, Any] = {
        "base_url": cronofy_world.base_url,
        "client_id": cronofy_world.client_id,
        "client_secret": cronofy_world.client_secret,
        "service_account_tokens": cronofy_world.service_account_tokens,
        "graph_mailbox": ADELE,
        "ews_mailbox": ANNA,
        "week_from": anchor.isoformat(),
        "week_to": (anchor + timedelta(days=7)).isoformat(),
        # Two weeks: the seeded calendars hold a multi-day OOF near today.
        "future_from": _z(tomorrow),
        "future_to": _z(tomorrow + timedelta(days=14)),
        "event_start": _z(event_start),
        "event_end": _z(event_start + timedelta(minutes=30)),
        "moved_start": _z(event_start + timedelta(hours=1)),
        "moved_end": _z(event_start + timedelta(hours=1, minutes=30)),
        "event_day": tomorrow.date().isoformat(),
        "event_next_day": (tomorrow + timedelta(days=1)).date().isoformat(),
        "page_from": (today - timedelta(days=16)).isoformat(),
        "page_to": (today + timedelta(days=201)).isoformat(),
    }
    node = shutil.which("node")
    assert node is not None
    run = subprocess.run(
        [node, "story.js"],
        cwd=node_story,
        env={**os.environ, "CALBROKER_STORY": json.dumps(config)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    adele_sub, anna_sub = seen["subs"]
    assert adele_sub.startswith("acc_") and anna_sub.startswith("acc_")  # noqa: PT018
    assert seen["providers"] == ["office365", "exchange"]
    assert all(p["profile_id"].startswith("pro_") for p in seen["linking_profiles"])
    assert seen["free_busy"]["graph"], "the seeded week of a Graph mailbox has busy time"
    assert seen["free_busy"]["ews"], "the seeded week of an EWS mailbox has busy time"
    slots = seen["availability"]["available_slots"]
    assert slots
    assert all({p["sub"] for p in s["participants"]} == {adele_sub, anna_sub} for s in slots)
    [booked] = seen["booked"]
    assert booked["event_id"] == "node-intro-1"
    assert booked["start"] == config["event_start"]
    assert booked["conferencing"]["join_url"].startswith("https://")
    [moved] = seen["moved"]
    assert moved["start"] == config["moved_start"]
    assert moved["conferencing"]["join_url"] == booked["conferencing"]["join_url"]
    assert seen["deleted"] == []
    paged = seen["paged"]
    assert paged["count"] == len(paged["uids"]) == len(set(paged["uids"]))
    assert all(page["total"] == len(paged["pages"]) for page in paged["pages"])
    assert seen["invalid"]["status"] == 422
    assert seen["invalid"]["body"]["errors"]["start"][0]["key"] == "errors.invalid"
