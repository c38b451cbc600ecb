"""Settings from the environment: valid values parse, invalid ones fail with one line naming the variable."""

from __future__ import annotations

import base64
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from calbroker.config import ConfigError, Settings, parse_master_keys

KEY = base64.b64encode(b"k" * 32).decode()


def test_defaults_use_the_embedded_database_under_the_working_directory(tmp_path: Path) -> None:
    settings = Settings.from_env({}, cwd=tmp_path)
    assert settings.embedded_database
    assert settings.data_dir == tmp_path / ".calbroker"
    assert (settings.host, settings.port, settings.public_url) == ("127.0.0.1", 8080, "http://127.0.0.1:8080")


def test_full_configuration(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://u:p@db/calbroker",
            "CALBROKER_MASTER_KEYS": f"new:{KEY}, old:{KEY}",
            "CALBROKER_PUBLIC_URL": "https://cal.example.com/",
            "CALBROKER_HOST": "0.0.0.0",
            "CALBROKER_PORT": "9000",
            "CALBROKER_LOG_LEVEL": "DEBUG",
            "CALBROKER_DATA_DIR": "state",
        },
        cwd=tmp_path,
    )
    assert settings.master_keys is not None
    assert [k.kid for k in settings.master_keys] == ["new", "old"]
    assert settings.public_url == "https://cal.example.com"
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 9000, "debug")
    assert settings.data_dir == tmp_path / "state"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CALBROKER_PORT": "http"}, "CALBROKER_PORT"),
        ({"CALBROKER_PORT": "70000"}, "CALBROKER_PORT"),
        ({"CALBROKER_LOG_LEVEL": "loud"}, "CALBROKER_LOG_LEVEL"),
        ({"CALBROKER_PUBLIC_URL": "ftp://x"}, "CALBROKER_PUBLIC_URL"),
        ({"CALBROKER_PUBLIC_URL": "https://[::1/x"}, "CALBROKER_PUBLIC_URL"),  # urlsplit raises on the bracket
        ({"DATABASE_URL": "postgresql://u:pw@[db/x"}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://secret-password@db/x"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://db/x"}, "CALBROKER_MASTER_KEYS"),
        ({"CALBROKER_MASTER_KEYS": "nokid"}, "CALBROKER_MASTER_KEYS"),
        ({"CALBROKER_MASTER_KEYS": "k1:not-base64!"}, "CALBROKER_MASTER_KEYS"),
        ({"CALBROKER_MASTER_KEYS": f"k1:{base64.b64encode(b'short').decode()}"}, "CALBROKER_MASTER_KEYS"),
        ({"CALBROKER_MASTER_KEYS": f"k1:{KEY},k1:{KEY}"}, "CALBROKER_MASTER_KEYS"),
        ({"CALBROKER_MAX_BODY_BYTES": "-1"}, "CALBROKER_MAX_BODY_BYTES"),
        ({"CALBROKER_HEALTH_CHECK_INTERVAL_S": "5"}, "CALBROKER_HEALTH_CHECK_INTERVAL_S"),
        ({"CALBROKER_HEALTH_CHECK_INTERVAL_S": "often"}, "CALBROKER_HEALTH_CHECK_INTERVAL_S"),
        ({"CALBROKER_GRAPH_MAX_SCHEDULES": "0"}, "CALBROKER_GRAPH_MAX_SCHEDULES"),
        ({"CALBROKER_GRAPH_MAX_WINDOW_DAYS": "62.5"}, "CALBROKER_GRAPH_MAX_WINDOW_DAYS"),
        ({"CALBROKER_EWS_MAX_MAILBOXES": "many"}, "CALBROKER_EWS_MAX_MAILBOXES"),
        ({"CALBROKER_EWS_MAX_WINDOW_DAYS": "-1"}, "CALBROKER_EWS_MAX_WINDOW_DAYS"),
    ],
)
def test_invalid_values_name_the_variable(env: dict[str, str], variable: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env, cwd=tmp_path)
    assert raised.value.variable == variable
    assert str(raised.value).startswith(variable)
    assert "secret-password" not in str(raised.value)
    assert "\n" not in str(raised.value)


def test_health_checks_run_every_five_minutes_unless_switched_off(tmp_path: Path) -> None:
    assert Settings.from_env({}, cwd=tmp_path).health_check_interval_s == 300
    assert Settings.from_env({"CALBROKER_HEALTH_CHECK_INTERVAL_S": "60"}, cwd=tmp_path).health_check_interval_s == 60
    assert Settings.from_env({"CALBROKER_HEALTH_CHECK_INTERVAL_S": "0"}, cwd=tmp_path).health_check_interval_s is None
    assert Settings(data_dir=tmp_path).health_check_interval_s is None


def test_microsofts_undocumented_limits_are_settings(tmp_path: Path) -> None:
    defaults = Settings.from_env({}, cwd=tmp_path)
    assert (defaults.graph_max_schedules, defaults.graph_max_window) == (20, timedelta(days=62))
    assert (defaults.ews_max_mailboxes, defaults.ews_max_window) == (100, timedelta(days=42))
    assert defaults == Settings(data_dir=tmp_path / ".calbroker", health_check_interval_s=300)
    tuned = Settings.from_env(
        {
            "CALBROKER_GRAPH_MAX_SCHEDULES": "10",
            "CALBROKER_GRAPH_MAX_WINDOW_DAYS": "31",
            "CALBROKER_EWS_MAX_MAILBOXES": "50",
            "CALBROKER_EWS_MAX_WINDOW_DAYS": "60",
        },
        cwd=tmp_path,
    )
    assert (tuned.graph_max_schedules, tuned.graph_max_window) == (10, timedelta(days=31))
    assert (tuned.ews_max_mailboxes, tuned.ews_max_window) == (50, timedelta(days=60))


def test_master_key_errors_never_echo_key_material() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_master_keys(f"k1:{base64.b64encode(b'x' * 31).decode()}")
    assert base64.b64encode(b"x" * 31).decode() not in str(raised.value)


def test_cli_reports_bad_configuration_in_one_line_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "calbroker.cli", "migrate"],
        env={"CALBROKER_PORT": "eighty", "PATH": "/usr/bin:/bin", "CALBROKER_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "calbroker: invalid configuration: CALBROKER_PORT: must be a TCP port between 1 and 65535, got 'eighty'"
    ]
