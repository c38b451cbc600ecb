"""`calbroker demo` for a newcomer: every connect method offered, link-made connections in the sandbox's
cloud, and an API key that survives restarts of the same data directory (it lives only in demo.json:
keys are stored hashed)."""

from __future__ import annotations

import json
import signal
import urllib.request
import uuid
from pathlib import Path

from calbroker.api.connect.forms import draft_from_form
from calbroker.api.connections import offered_methods
from calbroker.config import Settings
from calbroker.demo import demo_settings
from calbroker.domain.connections import ConnectionMethod
from calbroker.sandbox import SandboxThread
from tests.fixtures.metrics import samples, value
from tests.fixtures.processes import Calbroker, assert_server_stopped, free_port, postmaster_pid, wait_until


def test_the_demo_offers_all_four_methods_and_typed_servers_trust_the_sandbox(
    settings: Settings, sandbox: SandboxThread
) -> None:
    demo = demo_settings(settings, sandbox)
    assert offered_methods(demo, None) == [
        ConnectionMethod.GRAPH_CONSENT,
        ConnectionMethod.GRAPH_APP,
        ConnectionMethod.EWS,
        ConnectionMethod.GRAPH_DELEGATED,
    ]
    draft = draft_from_form(
        ConnectionMethod.EWS,
        {"endpoint": sandbox.ews_url, "username": "FABRIKAM\\svc", "test_mailbox": "anna.schmidt@fabrikam.com"},
        {"password": "typed"},
        application_id=uuid.uuid4(),
        requested_level=None,
        settings=demo,
    )
    assert draft.cloud == "sandbox"
    assert demo.clouds[draft.cloud].ca_bundle == sandbox.ca_path


def _me(world: dict[str, object]) -> int:
    request = urllib.request.Request(
        f"{world['base_url']}/v1/me", headers={"Authorization": f"Bearer {world['api_key']}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status)


def _full_rounds(world: dict[str, object]) -> float:
    with urllib.request.urlopen(f"{world['base_url']}/metrics", timeout=30) as response:
        scraped = samples(response.read().decode())
    return value(scraped, "calbroker_sync_rounds_total", kind="full", outcome="ok")


def _run_demo(data_dir: Path) -> tuple[dict[str, object], str]:
    """Start the demo, read what it wrote and said, stop it (SIGTERM) and check it left nothing running."""
    demo = Calbroker(data_dir, "demo", "--port", str(free_port()))
    try:
        demo.wait_for("calbroker listening")
        world = json.loads((data_dir / "demo.json").read_text())
        assert _me(world) == 200
        # The demo's API and its worker count into one registry: the worker's rounds show on /metrics.
        wait_until(lambda: _full_rounds(world) > 0, "the worker's first rounds on the API's /metrics", 120)
        pid = postmaster_pid(data_dir)
        assert pid is not None
        demo.process.send_signal(signal.SIGTERM)
        assert demo.exit_code() == 0, demo.output
        assert_server_stopped(data_dir, pid)
        return world, demo.output
    finally:
        demo.kill()


def test_the_demo_keeps_its_api_key_across_restarts_and_says_when_it_cannot(tmp_path: Path) -> None:
    first, said = _run_demo(tmp_path)
    assert f"api key      : {first['api_key']} (new: any earlier demo key no longer works)" in said
    assert str(first["connect_link"]).startswith(f"{first['base_url']}/connect/cbl_")
    assert str(first["connect_link"]) in said

    second, said = _run_demo(tmp_path)
    assert second["api_key"] == first["api_key"]
    assert f"api key      : {first['api_key']} (kept from the last start)" in said
    assert second["cronofy"]["client_secret"] == first["cronofy"]["client_secret"]  # type: ignore[index]
    assert second["connect_link"] != first["connect_link"]  # single use: a new one every start

    forged = {**second, "api_key": "cbk_abcdefgh_" + "x" * 43}
    (tmp_path / "demo.json").write_text(json.dumps(forged))
    third, said = _run_demo(tmp_path)
    assert third["api_key"] not in (first["api_key"], forged["api_key"])
    assert f"api key      : {third['api_key']} (new: any earlier demo key no longer works)" in said
