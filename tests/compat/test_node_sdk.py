"""The official Cronofy Node SDK (`cronofy` 3.8.4 from npm, pinned by package-lock.json) through the story.

`tests/compat/node/story.js` runs the same story as the pycronofy test with the Node SDK, its base URL
pointed at the live API (`client.urls.api`), and prints what it saw; this test checks it, running the
worker (sync rounds, push notifications) while the story waits for its notifications. Where node or
npm is not installed the test is skipped and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from calbroker.sandbox import SandboxThread
from calbroker.workers.runner import Worker
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


async def _sync_adele(world: CronofyWorld, worker: Worker) -> None:
    """Adele synced before the story starts, so the event it books is a change (a mailbox's first round
    only fills the copy and announces nothing)."""
    native = world.base_url.removesuffix("/compat/cronofy")
    async with httpx.AsyncClient(
        base_url=native, headers={"Authorization": f"Bearer {world.application.token}"}, timeout=60
    ) as http:
        connections = (await http.get("/v1/connections")).json()["connections"]
        [contoso] = [c for c in connections if c["kind"] == "graph"]
        answer = await http.put(f"/v1/connections/{contoso['id']}/sync", json={"mode": "list", "mailboxes": [ADELE]})
        assert answer.status_code == 200, answer.text
        await worker.drain()
        synced = (await http.get(f"/v1/connections/{contoso['id']}/sync")).json()
        assert [m["synced_at"] is not None for m in synced["mailboxes"]] == [True], synced


async def _run_while_draining(
    command: list[str], cwd: Path, env: dict[str, str], worker: Worker
) -> tuple[int, str, str]:
    """Run the story, draining the worker until it exits (it waits for push notifications)."""
    process = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    output = asyncio.ensure_future(process.communicate())
    async with asyncio.timeout(300):
        while not output.done():
            await worker.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(output), timeout=0.5)
    stdout, stderr = await output
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_the_node_sdk_story(
    node_story: Path, cronofy_world: CronofyWorld, sandbox: SandboxThread, compat_worker: Worker
) -> None:
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
        "push_start": _z(event_start + timedelta(hours=4)),
        "push_end": _z(event_start + timedelta(hours=4, minutes=30)),
    }
    node = shutil.which("node")
    assert node is not None
    await _sync_adele(cronofy_world, compat_worker)
    returncode, stdout, stderr = await _run_while_draining(
        [node, "story.js"], node_story, {**os.environ, "CALBROKER_STORY": json.dumps(config)}, compat_worker
    )
    assert returncode == 0, stderr
    seen = json.loads(stdout)
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
    push = seen["push"]
    channel_id = push["channel"]["channel_id"]
    assert channel_id.startswith("chn_")
    assert push["channel"]["filters"]["calendar_ids"] == [booked["calendar_id"]]
    assert push["verification"] == {"notification": {"type": "verification"}, "channel": {"channel_id": channel_id}}
    assert push["change"]["notification"]["type"] == "change"
    assert push["valid"] == [True, True]  # the SDK's hmacValid accepts Cronofy-HMAC-SHA256
    assert push["forged"] is False
    [pushed] = [e for e in push["changed"] if e.get("event_id") == "node-push-1"]
    assert pushed["start"] == config["push_start"]
    assert [c["channel_id"] for c in push["listed"]] == [channel_id]
    assert push["remaining"] == []
