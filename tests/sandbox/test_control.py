"""The control plane (`/_sandbox/*`) and the CLI runner: what tests, the demo and bench/ rely on."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from calbroker.sandbox import SandboxThread, describe
from calbroker.sandbox.seed import DEFAULT_ANCHOR, build_calendars, build_directory
from tests.fixtures.sandbox import SandboxControl


def test_tenants_list_everything_a_client_needs(sandbox: SandboxThread, sandbox_control: SandboxControl) -> None:
    listing = sandbox_control.tenants()

    assert listing["ca_pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert listing["graph_url"] == sandbox.graph_url
    assert {t["key"] for t in listing["tenants"]} == {"contoso", "fabrikam", "tailspin"}
    fabrikam = sandbox_control.tenant("fabrikam")
    assert fabrikam["exchange"] == "on_premises"
    assert fabrikam["ews_url"] == sandbox.ews_url
    assert {a["access"] for a in fabrikam["service_accounts"]} == {"full", "restricted", "free_busy", "none"}
    assert all(a["password"] for a in fabrikam["service_accounts"])
    contoso = sandbox_control.tenant("contoso")
    adele = next(u for u in contoso["users"] if u["email"] == listing["well_known"]["contoso_user"])
    assert adele["password"]
    assert adele["in_scope"] is True
    assert next(u for u in contoso["users"] if u["email"] == "diego.siciliani@contoso.com")["in_scope"] is False
    certificate = sandbox_control.app("contoso-certificate")["certificates"][0]
    assert certificate["private_key_pem"].startswith("-----BEGIN PRIVATE KEY-----")
    assert len(certificate["thumbprint_sha1"]) == 40
    assert sandbox_control.app("contoso-expired")["secrets"][0]["expired"] is True
    assert sandbox_control.app("tailspin-operator")["consented_tenants"] == ["tailspin"]


def test_fault_rules_count_and_clear(sandbox_control: SandboxControl) -> None:
    rule = sandbox_control.fault(
        route="ews:Get*", mailbox="*@fabrikam.com", status=500, code="ErrorServerBusy", retry_after=2, count=3
    )
    listed = sandbox_control.get("/_sandbox/faults")["faults"]
    sandbox_control.delete(f"/_sandbox/faults/{rule['id']}")

    assert rule["action"] == "error"
    assert [r["id"] for r in listed] == [rule["id"]]
    assert sandbox_control.get("/_sandbox/faults")["faults"] == []
    with pytest.raises(AssertionError, match="unknown fault fields"):
        sandbox_control.fault(rout="graph:*")


def test_settings_can_be_read_and_changed(sandbox_control: SandboxControl) -> None:
    settings = sandbox_control.get("/_sandbox/settings")
    changed = sandbox_control.patch("/_sandbox/settings", {"max_schedules": 5})
    sandbox_control.patch("/_sandbox/settings", {"max_schedules": settings["max_schedules"]})

    assert settings["mailbox_concurrency"] == 4
    assert changed["max_schedules"] == 5
    with pytest.raises(AssertionError, match="unknown settings"):
        sandbox_control.patch("/_sandbox/settings", {"max_schedule": 5})


def test_outlook_edits_through_the_control_plane(sandbox_control: SandboxControl) -> None:
    mailbox = "megan.bowen@contoso.com"
    body = {
        "subject": "Dentist",
        "start": {"dateTime": "2027-03-01T08:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2027-03-01T09:00:00", "timeZone": "UTC"},
        "showAs": "oof",
    }
    created = sandbox_control.post(f"/_sandbox/mailboxes/{mailbox}/events", body)
    moved = sandbox_control.patch(f"/_sandbox/mailboxes/{mailbox}/events/{created['id']}", {"shift_minutes": 90})
    sandbox_control.delete(f"/_sandbox/mailboxes/{mailbox}/events/{created['id']}")

    assert created["show_as"] == "oof"
    assert moved["start"] == "2027-03-01T09:30:00+00:00"
    window = "start=2027-03-01T00:00:00Z&end=2027-03-02T00:00:00Z"
    assert all(
        e["id"] != created["id"]
        for e in sandbox_control.get(f"/_sandbox/mailboxes/{mailbox}/events?{window}")["events"]
    )


def test_reset_returns_to_the_seed(sandbox: SandboxThread, sandbox_control: SandboxControl) -> None:
    sandbox_control.post(
        "/_sandbox/mailboxes/megan.bowen@contoso.com/events",
        {"subject": "Noise", "start": {"dateTime": "2027-03-02T08:00:00"}, "end": {"dateTime": "2027-03-02T09:00:00"}},
    )
    sandbox_control.post("/_sandbox/reset", {})
    expected = build_calendars(
        build_directory(0, sandbox.state.keys.app_certificate), 0, DEFAULT_ANCHOR, lambda: datetime.now(UTC)
    ).snapshot()

    assert sandbox_control.get("/_sandbox/snapshot")["sha256"] == hashlib.sha256(expected).hexdigest()
    text = describe(sandbox._sandbox())
    assert "svc-full" in text
    assert sandbox_control.app("contoso-secret")["client_id"] in text


def test_cli_prints_what_it_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    code = (
        "from pathlib import Path; from calbroker.sandbox import run_sandbox_cli; "
        f"run_sandbox_cli(port=0, seed=0, state_dir=Path({str(tmp_path)!r}))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "service")}
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "contoso_user" in line:
            break
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=20)
    output = "".join(lines) + rest

    assert "tenant contoso" in output
    assert "EWS account FABRIKAM\\svc-freebusy" in output
    assert "sandbox stopped" in output
    assert (tmp_path / "ca.pem").exists()
