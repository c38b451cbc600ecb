"""Settings: the one immutable configuration object, built once from the environment.

`Settings.from_env(mapping)` is called only by the CLI (tests pass a dict); everything else
receives the object. A bad value fails at start with `ConfigError`, whose message names the
variable and never echoes a secret.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "BUILTIN_CLOUDS",
    "ChannelSettings",
    "Cloud",
    "ConfigError",
    "MasterKey",
    "OperatorApp",
    "Settings",
    "SyncSettings",
    "check_key_id",
    "parse_master_keys",
]

_KID = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
_LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """A setting is missing or invalid; the message is one line naming the variable."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


def check_key_id(kid: str) -> str:
    """A master key id, as stored next to everything its key seals; ValueError says what is allowed."""
    if not _KID.match(kid):
        raise ValueError(f"{kid!r} is not a master key id: use 1-32 letters, digits, '.', '_' or '-'")
    return kid


@dataclass(frozen=True, slots=True, repr=False)
class MasterKey:
    """A 256-bit key-encryption key and the id stored next to everything it wraps."""

    kid: str
    key: bytes

    def __post_init__(self) -> None:
        check_key_id(self.kid)
        if len(self.key) != 32:
            raise ValueError(f"master key {self.kid!r} must be 32 bytes (AES-256), got {len(self.key)}")

    def __repr__(self) -> str:  # never let the key reach a log line or a traceback
        return f"MasterKey(kid={self.kid!r}, key=<redacted>)"


def parse_master_keys(value: str, *, variable: str = "CALBROKER_MASTER_KEYS") -> tuple[MasterKey, ...]:
    """Parse `kid:base64key,...`; the first key encrypts, all of them decrypt."""
    keys: list[MasterKey] = []
    for position, item in enumerate(part.strip() for part in value.split(",")):
        if not item:
            continue
        kid, sep, encoded = item.partition(":")
        if not sep or not _KID.match(kid):
            raise ConfigError(
                variable,
                f"entry {position + 1} must look like 'kid:base64key' with a kid of 1-32 letters, "
                "digits, '.', '_' or '-'",
            )
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(variable, f"key {kid!r} is not valid base64") from None
        if len(key) != 32:
            raise ConfigError(variable, f"key {kid!r} must decode to 32 bytes (AES-256), got {len(key)}")
        if any(existing.kid == kid for existing in keys):
            raise ConfigError(variable, f"key id {kid!r} appears twice")
        keys.append(MasterKey(kid, key))
    if not keys:
        raise ConfigError(variable, "no keys given; expected 'kid:base64key[,kid:base64key...]'")
    return tuple(keys)


@dataclass(frozen=True, slots=True)
class Cloud:
    """Where a Microsoft cloud lives: Entra authority host, Graph endpoint, and the CA to trust.

    Microsoft's national clouds and calbroker's own sandbox are all just clouds, so the sandbox
    exercises the production code paths with nothing patched.
    """

    name: str
    authority_host: str
    """e.g. https://login.microsoftonline.com"""
    graph_url: str
    """Graph base including the version, e.g. https://graph.microsoft.com/v1.0"""
    graph_resource: str = "https://graph.microsoft.com"
    """The app-only token scope is `{graph_resource}/.default`."""
    ca_bundle: Path | None = None
    """Extra CA to trust (the sandbox's, or an on-premises Exchange's internal CA)."""
    known_to_msal: bool = True
    """False for hosts msal does not know, so it skips Microsoft's instance discovery."""
    autodiscover_host: str | None = None
    """Where Exchange Autodiscover answers for this cloud (``host[:port]``). None: derive the
    documented candidates from the email address's domain (``https://{domain}/autodiscover/…``,
    ``https://autodiscover.{domain}/…``, then the http redirect and DNS SRV); the sandbox, which
    serves no DNS, names its own host."""


BUILTIN_CLOUDS: Mapping[str, Cloud] = {
    # https://learn.microsoft.com/graph/deployments (national cloud endpoints)
    "global": Cloud("global", "https://login.microsoftonline.com", "https://graph.microsoft.com/v1.0"),
    "usgov": Cloud(
        "usgov",
        "https://login.microsoftonline.us",
        "https://graph.microsoft.us/v1.0",
        "https://graph.microsoft.us",
    ),
    "usgov-dod": Cloud(
        "usgov-dod",
        "https://login.microsoftonline.us",
        "https://dod-graph.microsoft.us/v1.0",
        "https://dod-graph.microsoft.us",
    ),
    "china": Cloud(
        "china",
        "https://login.chinacloudapi.cn",
        "https://microsoftgraph.chinacloudapi.cn/v1.0",
        "https://microsoftgraph.chinacloudapi.cn",
    ),
}


def sandbox_cloud(url: str, ca_bundle: Path | None) -> Cloud:
    """The cloud served by `calbroker sandbox` at `url` (HTTPS with its own CA)."""
    base = url.rstrip("/")
    return Cloud(
        "sandbox",
        base,
        f"{base}/v1.0",
        "https://graph.microsoft.com",
        ca_bundle,
        known_to_msal=False,
        autodiscover_host=urlsplit(base).netloc,
    )


@dataclass(frozen=True, slots=True, repr=False)
class OperatorApp:
    """The operator's multi-tenant Entra app: admin consent and delegated sign-in go through it."""

    client_id: str
    client_secret: str
    cloud: str = "global"

    def __repr__(self) -> str:
        return f"OperatorApp(client_id={self.client_id!r}, cloud={self.cloud!r}, client_secret=<redacted>)"


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(name, f"must be a TCP port between 1 and 65535, got {raw!r}")
    return int(raw)


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(name, f"must be a positive whole number, got {raw!r}")
    return int(raw)


def _days(env: Mapping[str, str], name: str, default: timedelta) -> timedelta:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(name, f"must be a positive whole number of days, got {raw!r}")
    return timedelta(days=int(raw))


def _interval(env: Mapping[str, str], name: str, default: int) -> float | None:
    """Whole seconds, at least 10; 0 switches the periodic job off."""
    raw = env.get(name, "").strip()
    if not raw:
        return float(default)
    if not raw.isdigit() or 0 < int(raw) < 10:
        raise ConfigError(name, f"must be 0 (off) or a whole number of seconds of at least 10, got {raw!r}")
    return float(raw) if int(raw) else None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, f"must be true or false, got {raw!r}")


def _database_url(raw: str) -> str | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        parts = urlsplit(raw)
    except ValueError:
        raise ConfigError("DATABASE_URL", "must be a postgresql:// URL") from None
    if parts.scheme not in ("postgres", "postgresql"):
        # Say what was wrong without repeating the URL: it may hold a password.
        raise ConfigError("DATABASE_URL", "must be a postgresql:// URL")
    return raw


def _base_url(raw: str, default: str, *, variable: str = "CALBROKER_PUBLIC_URL") -> str:
    value = (raw.strip() or default).rstrip("/")
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ConfigError(variable, f"must be an absolute http(s) URL, got {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(variable, f"must be an absolute http(s) URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ConfigError(variable, "must not have a query or fragment")
    return value


def _host(raw: str) -> str:
    host = raw.strip() or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", host):
            raise ConfigError("CALBROKER_HOST", f"must be an IP address or host name, got {host!r}") from None
    return host


@dataclass(frozen=True, slots=True)
class SyncSettings:
    """How the sync worker keeps mailboxes' busy time and when the copy may answer (issue 12)."""

    max_age: timedelta = timedelta(minutes=15)
    """The copy answers only if its last round started this recently (CALBROKER_SYNC_MAX_AGE_S)."""
    reconcile_every: timedelta = timedelta(minutes=10)
    """Every mailbox gets a round at least this often, whatever notifications did; under `max_age`,
    so a quiet mailbox stays answerable from the copy (CALBROKER_SYNC_RECONCILE_S)."""
    full_every: timedelta = timedelta(days=1)
    """A full round (and a new window) this often."""
    window_past: timedelta = timedelta(days=1)
    window_future: timedelta = timedelta(days=180)
    """The synced window around now (CALBROKER_SYNC_WINDOW_DAYS sets the future part)."""
    debounce: timedelta = timedelta(seconds=3)
    """Wait this long after a change signal before the round: one edit brings several notifications."""
    max_mailboxes: int = 1000
    """Mailboxes synced per connection (CALBROKER_SYNC_MAX_MAILBOXES)."""
    graph_subscription_lifetime: timedelta = timedelta(minutes=4230)
    """Valid under every published revision of Graph's limit for events (changes.md §1.1)."""
    receiver_url: str | None = None
    """Where Microsoft sends notifications (`/hooks/...` is appended); None: the public URL
    (CALBROKER_RECEIVER_URL). Graph needs it to be https and reachable from the internet."""
    ews_streaming: bool = True
    """EWS streaming subscriptions; off (or refused by Exchange) means polling (CALBROKER_EWS_STREAMING)."""
    ews_poll_every: timedelta = timedelta(minutes=5)
    ews_stream_minutes: int = 25
    """GetStreamingEvents ConnectionTimeout: under Exchange's 30-minute limit, then reconnect."""
    round_deadline_s: float = 120.0
    """How long one round may spend upstream (a full round pages through the whole window)."""

    def __post_init__(self) -> None:
        if self.reconcile_every >= self.max_age:
            raise ConfigError(
                "CALBROKER_SYNC_RECONCILE_S", "must be shorter than CALBROKER_SYNC_MAX_AGE_S, or copies go stale"
            )
        if not 1 <= self.ews_stream_minutes <= 30:
            raise ConfigError("CALBROKER_EWS_STREAM_MINUTES", "must be 1-30 (Exchange's ConnectionTimeout range)")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SyncSettings:
        receiver = env.get("CALBROKER_RECEIVER_URL", "").strip()
        default = cls()
        return cls(
            max_age=_seconds(env, "CALBROKER_SYNC_MAX_AGE_S", default.max_age),
            reconcile_every=_seconds(env, "CALBROKER_SYNC_RECONCILE_S", default.reconcile_every),
            window_future=_days(env, "CALBROKER_SYNC_WINDOW_DAYS", default.window_future),
            max_mailboxes=_positive_int(env, "CALBROKER_SYNC_MAX_MAILBOXES", default.max_mailboxes),
            graph_subscription_lifetime=timedelta(
                minutes=_positive_int(env, "CALBROKER_GRAPH_SUBSCRIPTION_MINUTES", 4230)
            ),
            receiver_url=_base_url(receiver, receiver, variable="CALBROKER_RECEIVER_URL") if receiver else None,
            ews_streaming=_bool(env, "CALBROKER_EWS_STREAMING", True),
            ews_stream_minutes=_positive_int(env, "CALBROKER_EWS_STREAM_MINUTES", default.ews_stream_minutes),
        )


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """How webhooks reach applications (issue 13): the Standard Webhooks schedule and its limits."""

    schedule: tuple[timedelta, ...] = (
        timedelta(0),
        timedelta(seconds=5),
        timedelta(minutes=5),
        timedelta(minutes=30),
        timedelta(hours=2),
        timedelta(hours=5),
        timedelta(hours=10),
        timedelta(hours=10),
    )
    """When each attempt of a delivery falls due after the one before: Svix's schedule, about 27.6 h
    in all (https://docs.svix.com/retries); the first attempt is immediate."""
    jitter: float = 0.1
    """Each wait is stretched or shrunk by up to this fraction, so retries after an outage spread out."""
    timeout: timedelta = timedelta(seconds=15)
    """An attempt answered later than this failed (Standard Webhooks: 15-30 s)."""
    disable_after: timedelta = timedelta(days=5)
    """A channel whose every attempt failed for this long is disabled (CALBROKER_CHANNELS_DISABLE_AFTER_DAYS)."""
    rotation_overlap: timedelta = timedelta(hours=24)
    """After a secret rotation the old secret still signs for this long (both signatures are sent)."""
    retention: timedelta = timedelta(days=30)
    """Finished deliveries and their attempts are kept this long (listing, retry, replay)."""
    max_channels: int = 25
    """Channels per application (CALBROKER_CHANNELS_MAX)."""
    max_retry_after: timedelta = timedelta(hours=10)
    """The longest `Retry-After` honoured: a receiver cannot park a delivery for days."""
    allow_private_hosts: bool = False
    """Callback URLs may reach loopback and private addresses (CALBROKER_CALLBACKS_ALLOW_PRIVATE): for
    receivers inside the operator's own network. Link-local and metadata addresses stay refused."""
    allow_loopback_http: bool = False
    """Plain http to loopback receivers (`calbroker demo`, so a first webhook works on a laptop;
    CALBROKER_CALLBACKS_ALLOW_LOOPBACK_HTTP)."""

    def __post_init__(self) -> None:
        if not self.schedule or self.schedule[0] != timedelta(0):
            raise ConfigError("schedule", "the first attempt is immediate: the schedule starts at 0")
        if not 0 <= self.jitter < 1:
            raise ConfigError("jitter", "must be at least 0 and below 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ChannelSettings:
        default = cls()
        return cls(
            disable_after=_days(env, "CALBROKER_CHANNELS_DISABLE_AFTER_DAYS", default.disable_after),
            max_channels=_positive_int(env, "CALBROKER_CHANNELS_MAX", default.max_channels),
            allow_private_hosts=_bool(env, "CALBROKER_CALLBACKS_ALLOW_PRIVATE", False),
            allow_loopback_http=_bool(env, "CALBROKER_CALLBACKS_ALLOW_LOOPBACK_HTTP", False),
        )


def _seconds(env: Mapping[str, str], name: str, default: timedelta) -> timedelta:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(name, f"must be a positive whole number of seconds, got {raw!r}")
    return timedelta(seconds=int(raw))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything calbroker reads from its environment, validated once."""

    data_dir: Path
    database_url: str | None = None
    master_keys: tuple[MasterKey, ...] | None = None
    public_url: str = "http://127.0.0.1:8080"
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    log_json: bool | None = None
    """None: JSON unless stderr is a terminal."""
    max_body_bytes: int = 2 * 1024 * 1024
    database_pool_size: int = 10
    clouds: Mapping[str, Cloud] = field(default_factory=lambda: dict(BUILTIN_CLOUDS))
    allow_private_upstreams: bool = False
    """Let admin-typed URLs (EWS endpoints, webhooks) point at loopback/private addresses."""
    allow_http_upstreams: bool = False
    """Let admin-typed URLs use plain http (only for labs and the sandbox)."""
    upstream_deadline_s: float = 10.0
    """How long one API request may wait on Microsoft, retries and back-off included."""
    operator_app: OperatorApp | None = None
    """None: the admin-consent and delegated sign-in methods are not offered."""
    health_check_interval_s: float | None = None
    """How often the worker re-verifies each connection; None disables the checker (the default
    for hand-built settings, so tests never see background upstream calls). `from_env` turns it
    on: CALBROKER_HEALTH_CHECK_INTERVAL_S, default 300, 0 disables."""
    graph_max_schedules: int = 20
    """Mailboxes per Graph getSchedule call: commonly reported, not documented (upstream.md §2)."""
    graph_max_window: timedelta = timedelta(days=62)
    """Longest getSchedule window, longer ones are split: commonly reported, not documented."""
    ews_max_mailboxes: int = 100
    """Mailboxes per EWS GetUserAvailability call (Exchange's default, upstream.md §7)."""
    ews_max_window: timedelta = timedelta(days=42)
    """Longest GetUserAvailability window, longer ones are split: Exchange's default, which an
    Exchange administrator can change."""
    header_timeout_s: float = 10.0
    """How long a client may take to send a request's line and headers before the connection is
    closed (408): a connection dripping one header line every few seconds must not stay open."""
    sync: SyncSettings = field(default_factory=SyncSettings)
    channels: ChannelSettings = field(default_factory=ChannelSettings)
    worker_metrics_port: int | None = None
    """Where `calbroker worker` serves /metrics and /healthz (on `host`); None: no endpoint."""

    @property
    def receiver_url(self) -> str:
        """The base Microsoft posts change notifications to (`/hooks/...` follows)."""
        return self.sync.receiver_url or self.public_url

    @property
    def embedded_database(self) -> bool:
        """True when calbroker runs its own PostgreSQL under data_dir."""
        return self.database_url is None

    @property
    def master_key_file(self) -> Path:
        """Where the embedded default keeps its generated master keys (mode 0600)."""
        return self.data_dir / "master.keys"

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, cwd: Path | None = None) -> Settings:
        """Build settings from a mapping (os.environ in production, a dict in tests)."""
        base = cwd or Path.cwd()
        data_dir = Path(env.get("CALBROKER_DATA_DIR", "").strip() or base / ".calbroker")
        if not data_dir.is_absolute():
            data_dir = base / data_dir
        database_url = _database_url(env.get("DATABASE_URL", ""))
        keys_raw = env.get("CALBROKER_MASTER_KEYS", "").strip()
        master_keys = parse_master_keys(keys_raw) if keys_raw else None
        if database_url is not None and master_keys is None:
            # A key file on one replica's disk would make secrets unreadable on the others.
            raise ConfigError(
                "CALBROKER_MASTER_KEYS",
                "is required with DATABASE_URL (generate one with `calbroker keys generate`)",
            )
        host = _host(env.get("CALBROKER_HOST", ""))
        port = _port(env, "CALBROKER_PORT", 8080)
        level = env.get("CALBROKER_LOG_LEVEL", "").strip().lower() or "info"
        if level not in _LOG_LEVELS:
            raise ConfigError("CALBROKER_LOG_LEVEL", f"must be one of {', '.join(_LOG_LEVELS)}, got {level!r}")
        log_format = env.get("CALBROKER_LOG_FORMAT", "").strip().lower()
        if log_format not in ("", "json", "console"):
            raise ConfigError("CALBROKER_LOG_FORMAT", f"must be json or console, got {log_format!r}")
        clouds = dict(BUILTIN_CLOUDS)
        sandbox_url = env.get("CALBROKER_SANDBOX_URL", "").strip()
        if sandbox_url:
            ca = env.get("CALBROKER_SANDBOX_CA", "").strip()
            sandbox_base = _base_url(sandbox_url, sandbox_url, variable="CALBROKER_SANDBOX_URL")
            clouds["sandbox"] = sandbox_cloud(sandbox_base, Path(ca) if ca else None)
        operator_app = None
        operator_id = env.get("CALBROKER_GRAPH_CLIENT_ID", "").strip()
        if operator_id:
            operator_secret = env.get("CALBROKER_GRAPH_CLIENT_SECRET", "").strip()
            if not operator_secret:
                raise ConfigError("CALBROKER_GRAPH_CLIENT_SECRET", "is required with CALBROKER_GRAPH_CLIENT_ID")
            operator_cloud = env.get("CALBROKER_GRAPH_CLOUD", "").strip() or "global"
            if operator_cloud not in clouds:
                raise ConfigError("CALBROKER_GRAPH_CLOUD", f"must be one of {', '.join(sorted(clouds))}")
            operator_app = OperatorApp(operator_id, operator_secret, operator_cloud)
        return cls(
            data_dir=data_dir,
            clouds=clouds,
            operator_app=operator_app,
            allow_private_upstreams=_bool(env, "CALBROKER_ALLOW_PRIVATE_UPSTREAMS", False),
            allow_http_upstreams=_bool(env, "CALBROKER_ALLOW_HTTP_UPSTREAMS", False),
            database_url=database_url,
            master_keys=master_keys,
            public_url=_base_url(env.get("CALBROKER_PUBLIC_URL", ""), f"http://{host}:{port}"),
            host=host,
            port=port,
            log_level=level,
            log_json=None if not log_format else log_format == "json",
            max_body_bytes=_positive_int(env, "CALBROKER_MAX_BODY_BYTES", 2 * 1024 * 1024),
            database_pool_size=_positive_int(env, "CALBROKER_DB_POOL_SIZE", 10),
            health_check_interval_s=_interval(env, "CALBROKER_HEALTH_CHECK_INTERVAL_S", 300),
            graph_max_schedules=_positive_int(env, "CALBROKER_GRAPH_MAX_SCHEDULES", 20),
            graph_max_window=_days(env, "CALBROKER_GRAPH_MAX_WINDOW_DAYS", timedelta(days=62)),
            ews_max_mailboxes=_positive_int(env, "CALBROKER_EWS_MAX_MAILBOXES", 100),
            ews_max_window=_days(env, "CALBROKER_EWS_MAX_WINDOW_DAYS", timedelta(days=42)),
            header_timeout_s=_positive_int(env, "CALBROKER_HEADER_TIMEOUT_S", 10),
            sync=SyncSettings.from_env(env),
            channels=ChannelSettings.from_env(env),
            worker_metrics_port=_port(env, "CALBROKER_WORKER_METRICS_PORT", 0) or None,
        )
