"""docker-compose.yml and the Dockerfile, checked without Docker (this machine cannot run it).

Pure reading: the compose file as YAML after Compose's own interpolation rules, the Dockerfile's
instructions as text, and the `calbroker` commands they name, run in-process.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from calbroker.cli import main
from calbroker.config import parse_master_keys

ROOT = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _image_env() -> dict[str, str]:
    """The runtime stage's ENV (the last stage of the Dockerfile)."""
    runtime = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV (.*?)(?<!\\)$", runtime, flags=re.MULTILINE | re.DOTALL):
        for name, value in re.findall(r"([A-Z_]+)=(\S+)", block):
            env[name] = value
    return env


def _interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`; `?` forms raise, as Compose refuses to run."""

    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3) or ""
        current = environ.get(name)
        if operator in (":?", "?") and (current is None or (operator == ":?" and current == "")):
            raise LookupError(f"{name}: {argument}")
        if operator == ":-" and not current:
            return argument
        if operator == "-" and current is None:
            return argument
        return current or ""

    return _INTERPOLATION.sub(one, value)


def _strings(node: object) -> list[str]:
    """Every string in the parsed file (what Compose interpolates; comments are not)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [text for key, value in node.items() for text in (*_strings(key), *_strings(value))]
    if isinstance(node, list):
        return [text for item in node for text in _strings(item)]
    return []


def _service_env(name: str) -> dict[str, str]:
    """A service's environment as the container sees it: the image's ENV, then the service's own."""
    declared = SERVICES[name].get("environment") or {}
    return {**_image_env(), **{key: _interpolate(str(value), {}) for key, value in declared.items()}}


def test_compose_can_be_interpolated_with_an_empty_environment() -> None:
    """`docker compose run --rm tools keys generate` runs before .env holds any secret."""
    for text in _strings(COMPOSE):
        _interpolate(text, {})  # raises LookupError where Compose would refuse the whole file
    for name in SERVICES:
        _service_env(name)  # raises LookupError where Compose would refuse the whole file


def test_the_one_off_for_keys_generate_needs_no_database_and_no_secret(capsys: pytest.CaptureFixture[str]) -> None:
    tools = SERVICES["tools"]
    assert "depends_on" not in tools  # `compose run` would start PostgreSQL and the migration first
    assert "environment" not in tools
    assert tools.get("profiles") == ["tools"]  # never started by `docker compose up`
    # Even the API's own environment, secrets still missing, lets `keys generate` run.
    environ = _service_env("api-1")
    assert environ["CALBROKER_MASTER_KEYS"] == ""
    assert main(["keys", "generate"], environ) == 0
    [entry] = capsys.readouterr().out.split()
    assert len(parse_master_keys(entry)) == 1
    # A command that needs the keys says which variable is missing.
    assert main(["migrate"], environ) == 2
    assert "CALBROKER_MASTER_KEYS: is required with DATABASE_URL" in capsys.readouterr().err


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if s.get("ports")])
def test_published_ports_reach_the_api_and_the_public_url_names_them(name: str) -> None:
    environ = _service_env(name)
    [mapping] = SERVICES[name]["ports"]
    host_port, container_port = str(mapping).split(":")
    assert container_port == environ["CALBROKER_PORT"]
    assert environ["CALBROKER_PUBLIC_URL"] == f"http://localhost:{host_port}"


def test_the_image_exposes_and_checks_the_port_it_listens_on() -> None:
    port = _image_env()["CALBROKER_PORT"]
    assert re.search(rf"^EXPOSE {port}$", DOCKERFILE, flags=re.MULTILINE)
    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (\[.*?\])$", DOCKERFILE, flags=re.MULTILINE | re.DOTALL)
    assert healthcheck is not None
    assert yaml.safe_load(healthcheck.group(1))[:2] == ["calbroker", "healthcheck"]
    assert not re.search(r"\b\d{4,5}\b", healthcheck.group(0).split("CMD", 1)[1])  # no port written into it


def test_workers_serve_the_metrics_endpoint_their_healthcheck_probes() -> None:
    worker = SERVICES["worker"]
    port = _service_env("worker")["CALBROKER_WORKER_METRICS_PORT"]
    assert worker["expose"] == [port]
    assert worker["healthcheck"]["test"] == ["CMD", "calbroker", "healthcheck", "--worker"]


def _listening_port() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, int(sock.getsockname()[1])


def test_healthcheck_probes_the_configured_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing answers /healthz on a port that only accepts connections: exit 1, naming the URL."""
    sock, port = _listening_port()
    with sock:
        sock.close()
        environ = {"CALBROKER_DATA_DIR": str(tmp_path), "CALBROKER_HOST": "0.0.0.0", "CALBROKER_PORT": str(port)}
        assert main(["healthcheck", "--timeout", "2"], environ) == 1
    assert f"http://127.0.0.1:{port}/healthz" in capsys.readouterr().err
    assert main(["healthcheck", "--worker"], {"CALBROKER_DATA_DIR": str(tmp_path)}) == 1
    assert "CALBROKER_WORKER_METRICS_PORT" in capsys.readouterr().err
