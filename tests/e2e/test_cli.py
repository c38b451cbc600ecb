"""The operator's commands, run as the operator runs them: `calbroker connections …` and `calbroker demo`."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import asyncpg
import pytest

from calbroker.cli import main
from calbroker.config import parse_master_keys
from calbroker.sandbox import SandboxThread
from calbroker.sandbox.directory import ServiceAccount
from calbroker.store.applications import IssuedKey, authenticate
from tests.fixtures.database import new_master_key


@pytest.fixture(scope="module")
def cli_env(database_url: str, sandbox: SandboxThread, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    key = new_master_key()
    return {
        "DATABASE_URL": database_url,
        "CALBROKER_MASTER_KEYS": f"{key.kid}:{base64.b64encode(key.key).decode()}",
        "CALBROKER_DATA_DIR": str(tmp_path_factory.mktemp("cli")),
        "CALBROKER_SANDBOX_URL": sandbox.url,
        "CALBROKER_SANDBOX_CA": str(sandbox.ca_path),
        "CALBROKER_ALLOW_PRIVATE_UPSTREAMS": "true",
        "CALBROKER_LOG_LEVEL": "warning",
    }


def _add_ews(api_key: IssuedKey, account: ServiceAccount) -> list[str]:
    """`connections add-ews` for Fabrikam with this service account, before the options a test varies."""
    return [
        "connections", "add-ews", "--application", str(api_key.application.id), "--username",
        f"FABRIKAM\\{account.username}", "--password", account.password, "--domains", "fabrikam.com",
        "--test-mailbox", "anna.schmidt@fabrikam.com", "--cloud", "sandbox",
    ]  # fmt: skip


def test_add_graph_verifies_before_saving(
    cli_env: dict[str, str],
    api_key: IssuedKey,
    sandbox: SandboxThread,
    capsys: pytest.CaptureFixture[str],
) -> None:
    contoso = sandbox.directory.tenants["contoso"]
    app = next(a for a in sandbox.directory.apps.values() if a.key == "contoso-secret")
    base = [
        "connections", "add-graph", "--application", str(api_key.application.id), "--tenant-id", contoso.id,
        "--client-id", app.client_id, "--domains", "contoso.com", "--test-mailbox", "adele.vance@contoso.com",
        "--cloud", "sandbox",
    ]  # fmt: skip
    assert main([*base, "--client-secret", "wrong-secret-value"], cli_env) == 1
    err = capsys.readouterr().err
    assert "AADSTS7000215" in err or "secret" in err.lower()
    assert "wrong-secret-value" not in err
    assert main(["connections", "list", "--application", str(api_key.application.id), "--json"], cli_env) == 0
    assert json.loads(capsys.readouterr().out) == []  # nothing saved after a failed verification
    assert main([*base, "--client-secret", app.secrets[0].value], cli_env) == 0
    assert "verified with adele.vance@contoso.com" in capsys.readouterr().out
    assert main(["connections", "list", "--application", str(api_key.application.id), "--json"], cli_env) == 0
    [saved] = json.loads(capsys.readouterr().out)
    assert saved["kind"] == "graph"
    assert app.secrets[0].value not in json.dumps(saved)


def test_add_ews_refuses_exchange_online_and_impersonation_denied(
    cli_env: dict[str, str],
    api_key: IssuedKey,
    sandbox: SandboxThread,
    capsys: pytest.CaptureFixture[str],
) -> None:
    account = sandbox.directory.tenants["fabrikam"].service_accounts["svc-norights"]
    base = [*_add_ews(api_key, account), "--auth-type", "basic"]
    assert main([*base, "--endpoint", "https://outlook.office365.com/EWS/Exchange.asmx"], cli_env) == 2
    assert "Graph" in capsys.readouterr().err
    assert main([*base, "--endpoint", sandbox.ews_url], cli_env) == 1
    err = capsys.readouterr().err
    assert "ImpersonationDenied" in err
    assert account.password not in err


def test_add_ews_finds_the_endpoint_from_an_email_address(
    cli_env: dict[str, str],
    api_key: IssuedKey,
    sandbox: SandboxThread,
    capsys: pytest.CaptureFixture[str],
) -> None:
    account = sandbox.directory.tenants["fabrikam"].service_accounts["svc-full"]
    base = _add_ews(api_key, account)
    # An address Exchange does not know: the error names the URL tried and what it answered.
    assert main([*base, "--email", "nobody@fabrikam.com"], cli_env) == 2
    err = capsys.readouterr().err
    assert f"{sandbox.url}/autodiscover/autodiscover.svc (InvalidUser" in err
    assert account.password not in err

    assert main([*base, "--email", "anna.schmidt@fabrikam.com"], cli_env) == 0
    assert "verified with anna.schmidt@fabrikam.com" in capsys.readouterr().out
    assert main(["connections", "list", "--application", str(api_key.application.id), "--json"], cli_env) == 0
    endpoints = [c["endpoint"] for c in json.loads(capsys.readouterr().out) if c["kind"] == "ews"]
    assert endpoints == [sandbox.ews_url]  # found through the sandbox's Autodiscover, NTLM by default


async def test_removing_a_connection_wipes_its_secret(
    cli_env: dict[str, str], api_key: IssuedKey, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = await pool.fetch("SELECT id, secret_id FROM connections WHERE application_id = $1", api_key.application.id)
    assert rows
    connection_id, secret_id = rows[0]["id"], rows[0]["secret_id"]
    import asyncio

    code = await asyncio.to_thread(
        main,
        ["connections", "remove", "--application", str(api_key.application.id), str(connection_id)],
        cli_env,
    )
    assert code == 0
    assert await pool.fetchval("SELECT count(*) FROM sealed_secrets WHERE id = $1", secret_id) == 0


def test_add_graph_for_teams_meetings_only(
    cli_env: dict[str, str],
    api_key: IssuedKey,
    sandbox: SandboxThread,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The hybrid set-up from the command line: a Graph app that may only make Teams meetings."""
    fabrikam = sandbox.directory.tenants["fabrikam"]
    app = next(a for a in sandbox.directory.apps.values() if a.key == "fabrikam-teams")
    base = [
        "connections", "add-graph", "--application", str(api_key.application.id), "--tenant-id", fabrikam.id,
        "--client-id", app.client_id, "--client-secret", app.secrets[0].value, "--domains", "fabrikam.com",
        "--test-mailbox", "anna.schmidt@fabrikam.com", "--cloud", "sandbox",
    ]  # fmt: skip
    # As a calendar connection it is refused: the token it gets grants no calendar permission.
    assert main(base, cli_env) == 1
    refused = capsys.readouterr().err
    assert "AccessLevelInsufficient" in refused
    assert "Calendars.ReadWrite" in refused
    assert main([*base, "--purpose", "online_meetings"], cli_env) == 0
    assert "verified with anna.schmidt@fabrikam.com" in capsys.readouterr().out
    assert main(["connections", "list", "--application", str(api_key.application.id), "--json"], cli_env) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(c["purpose"], c["access_level"]) for c in listed if c["tenant_id"] == fabrikam.id] == [
        ("online_meetings", None)
    ]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_demo_serves_the_api_with_its_verified_connections(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "CALBROKER_DATA_DIR": str(tmp_path), "CALBROKER_LOG_LEVEL": "warning"}
    env.pop("DATABASE_URL", None)
    env.pop("CALBROKER_MASTER_KEYS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "calbroker.cli", "demo", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = ""
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while "calbroker listening" not in output:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, output
            output += line
            assert time.monotonic() < deadline, output
        demo = json.loads((tmp_path / "demo.json").read_text())
        assert (tmp_path / "demo.json").stat().st_mode & 0o077 == 0
        assert demo["base_url"] == f"http://127.0.0.1:{port}"
        assert demo["api_key"] in output
        cronofy = demo["cronofy"]
        assert cronofy["base_url"] == f"http://127.0.0.1:{port}/compat/cronofy"
        assert set(cronofy["service_account_tokens"]) == {"contoso", "fabrikam"}
        assert cronofy["client_id"] in output
        assert cronofy["client_secret"] in output
        for _ in range(50):  # uvicorn prints before it accepts
            try:
                urllib.request.urlopen(f"{demo['base_url']}/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        # The first printed example, exactly as printed (a curl command), run through urllib.
        body = output.split("-d '", 1)[1].split("'", 1)[0]
        request = urllib.request.Request(
            f"{demo['base_url']}/v1/free_busy",
            data=body.encode(),
            headers={"Authorization": f"Bearer {demo['api_key']}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert [e["mailbox"] for e in answer["free_busy"]] == ["adele.vance@contoso.com", "anna.schmidt@fabrikam.com"]
        assert all("busy" in e for e in answer["free_busy"]), answer
        # The hybrid Teams example: an EWS organizer's meeting with a Teams link from Graph.
        hybrid = output.split("# a Teams meeting for an Exchange on-premises organizer", 1)[1]
        path = hybrid.split(demo["base_url"], 1)[1].split(" ", 1)[0]
        booking = urllib.request.Request(
            f"{demo['base_url']}{path}",
            data=hybrid.split("-d '", 1)[1].split("'", 1)[0].encode(),
            method="PUT",
            headers={"Authorization": f"Bearer {demo['api_key']}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(booking, timeout=30) as response:
            event = json.loads(response.read())
        assert event["teams"]["status"] == "ready", event
        assert event["teams"]["join_url"].startswith("https://teams.microsoft.com/"), event
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_an_unreachable_database_is_one_line_and_a_failure_before_anything_listens(
    command: str, tmp_path: Path
) -> None:
    closed = _free_port()  # nothing listens there: connection refused, on loopback
    key = new_master_key()
    env = {
        **os.environ,
        "DATABASE_URL": f"postgresql://calbroker:s3cret-pass@127.0.0.1:{closed}/calbroker",
        "CALBROKER_MASTER_KEYS": f"{key.kid}:{base64.b64encode(key.key).decode()}",
        "CALBROKER_DATA_DIR": str(tmp_path),
        "CALBROKER_LOG_LEVEL": "info",
    }
    port = _free_port()
    done = subprocess.run(
        [sys.executable, "-m", "calbroker.cli", command, "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "listening" not in done.stdout
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"calbroker: PostgreSQL (127.0.0.1:{closed}/calbroker) is unreachable"), line
    assert "Connection refused" in line or "ConnectionRefusedError" in line
    assert "s3cret-pass" not in done.stderr + done.stdout


def test_an_http_ews_endpoint_is_accepted_only_when_the_operator_allows_http(
    cli_env: dict[str, str],
    api_key: IssuedKey,
    sandbox: SandboxThread,
    capsys: pytest.CaptureFixture[str],
) -> None:
    account = sandbox.directory.tenants["fabrikam"].service_accounts["svc-full"]
    closed = _free_port()
    command = [
        *_add_ews(api_key, account),
        "--auth-type",
        "basic",
        "--endpoint",
        f"http://127.0.0.1:{closed}/EWS/Exchange.asmx",
    ]
    assert main(command, cli_env) == 2
    assert "must use https" in capsys.readouterr().err
    # Allowed: the URL passes validation and the connection is tried (nothing listens there).
    assert main(command, {**cli_env, "CALBROKER_ALLOW_HTTP_UPSTREAMS": "true"}) == 1
    err = capsys.readouterr().err
    assert "https" not in err
    assert "refused" in err


def test_keys_generate_refuses_a_kid_that_start_up_would_refuse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["keys", "generate", "--kid", "bad kid"], {})
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "'bad kid' is not a master key id: use 1-32 letters, digits, '.', '_' or '-'" in err
    assert main(["keys", "generate", "--kid", "prod-2026.12"], {}) == 0
    [entry] = capsys.readouterr().out.split()
    [key] = parse_master_keys(entry)
    assert key.kid == "prod-2026.12"


def test_rotate_key_can_keep_the_old_key_working_for_a_while(
    cli_env: dict[str, str], database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["apps", "create", "Rotating CRM"], cli_env) == 0
    created = capsys.readouterr().out
    application_id = created.split()[1]
    old = created.rsplit(" ", 1)[1].strip()
    assert main(["apps", "rotate-key", application_id, "--keep-old-for", "24h"], cli_env) == 0
    line = capsys.readouterr().out.strip()
    assert "previous keys keep working until " in line, line
    new = line.rsplit(" ", 1)[1]

    async def usable(token: str) -> bool:
        conn = await asyncpg.connect(database_url)
        try:
            return await authenticate(conn, token) is not None
        finally:
            await conn.close()

    assert asyncio.run(usable(old))
    assert asyncio.run(usable(new))
    assert main(["apps", "list"], cli_env) == 0
    listed = next(row for row in capsys.readouterr().out.splitlines() if row.startswith(application_id))
    assert f"cbk_{old.split('_')[1]} (until " in listed

    assert main(["apps", "rotate-key", application_id], cli_env) == 0
    assert "previous keys are revoked" in capsys.readouterr().out
    assert not asyncio.run(usable(old))
    assert not asyncio.run(usable(new))
    for bad in ("0h", "31d", "a day"):
        with pytest.raises(SystemExit):
            main(["apps", "rotate-key", application_id, "--keep-old-for", bad], cli_env)
    assert "--keep-old-for" in capsys.readouterr().err


def test_one_shot_commands_log_warnings_only_unless_asked(
    cli_env: dict[str, str],
    api_key: IssuedKey,
    sandbox: SandboxThread,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Verifying over EWS logs at info (exchangelib does); the command's answer is its only output."""
    account = sandbox.directory.tenants["fabrikam"].service_accounts["svc-full"]
    command = [*_add_ews(api_key, account), "--auth-type", "basic", "--endpoint", sandbox.ews_url]
    quiet = {name: value for name, value in cli_env.items() if name != "CALBROKER_LOG_LEVEL"}
    assert main(command, quiet) == 0
    out, err = capsys.readouterr()
    assert out.startswith("verified with anna.schmidt@fabrikam.com and saved connection "), out
    assert err == ""
    assert main(command, {**quiet, "CALBROKER_LOG_LEVEL": "info"}) == 0
    assert '"level": "info"' in capsys.readouterr().err
