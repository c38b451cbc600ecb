"""`calbroker` command line: serve, worker, migrate, apps, keys, connections, demo, sandbox, openapi.

The only place that reads the environment: it builds `Settings` once and passes it down. Errors
the operator can fix print one line and exit non-zero; they never print a traceback.

Every way a command ends stops what it started. SIGTERM and SIGINT cancel the running command, so
its `finally` and `async with` blocks run (Python's default for SIGTERM ends the process on the
spot); the server and the worker take the signals over while they run, to stop gracefully; and
`main` leaves the embedded PostgreSQL last, whatever happened before.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import re
import signal
import socket
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg

from calbroker.config import ConfigError, Settings, check_key_id
from calbroker.domain.connections import (
    AccessLevel,
    ConnectionMethod,
    ConnectionPurpose,
    Credentials,
    EwsServiceAccount,
    GraphCertificate,
    GraphClientSecret,
)
from calbroker.domain.errors import CalbrokerError, InvalidRequest
from calbroker.domain.secret_expiry import parse_secret_expiry
from calbroker.logs import configure_logging, get_logger
from calbroker.metrics import Metrics
from calbroker.providers.graph import certificate_credentials
from calbroker.redaction import redact_text
from calbroker.services import ConnectionDraft, open_services, verify_and_save
from calbroker.store.applications import (
    MAX_KEY_OVERLAP,
    create_application,
    get_application,
    list_applications,
    revoke_application,
    rotate_key,
)
from calbroker.store.connections import delete_connection, get_connection, list_connections
from calbroker.store.cronofy import issue_client, issue_service_account_token
from calbroker.store.database import (
    DatabaseUnavailable,
    connect_pool,
    database_location,
    leave_embedded_server,
    resolve_database_url,
)
from calbroker.store.keyring import KeyringError, add_key_to_file, generate_master_key, load_keyring
from calbroker.store.migrations import MigrationError, migrate
from calbroker.store.secrets import rewrap_all

__all__ = ["main"]

log = get_logger("calbroker.cli")
_ACTOR = "cli"


@asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A small migrated pool for commands that only read and write rows (no upstream calls)."""
    url = await resolve_database_url(settings)
    async with connect_pool(url, max_size=2) as pool:
        async with pool.acquire() as conn:
            await migrate(conn)
        yield pool


async def _cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    url = await resolve_database_url(settings)
    conn = await asyncpg.connect(url)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    if applied:
        for migration in applied:
            print(f"applied {migration.version:04d}_{migration.name}")
    else:
        print("database is up to date")
    return 0


async def _cmd_apps_create(settings: Settings, args: argparse.Namespace) -> int:
    async with _database(settings) as pool, pool.acquire() as conn:
        issued = await create_application(conn, args.name, actor=_ACTOR)
    print(f"application {issued.application.id} ({issued.application.name})")
    print(f"api key (shown once, store it now): {issued.token}")
    return 0


async def _cmd_apps_list(settings: Settings, args: argparse.Namespace) -> int:
    async with _database(settings) as pool, pool.acquire() as conn:
        apps = await list_applications(conn)
        now: datetime = await conn.fetchval("SELECT now()")
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": str(app.id),
                        "name": app.name,
                        "created_at": app.created_at.isoformat(),
                        "revoked": app.revoked_at is not None,
                        "keys": [
                            {
                                "prefix": k.prefix,
                                "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                                "revoked": k.revoked_at is not None,
                                "expires_at": k.expires_at.isoformat() if k.expires_at else None,
                                "usable": k.usable(now),
                            }
                            for k in keys
                        ],
                    }
                    for app, keys in apps
                ],
                indent=2,
            )
        )
        return 0
    if not apps:
        print("no applications yet: create one with `calbroker apps create NAME`")
    for app, keys in apps:
        state = "revoked" if app.revoked_at else "active"
        usable = [
            f"cbk_{k.prefix}" + (f" (until {k.expires_at.isoformat(timespec='seconds')})" if k.expires_at else "")
            for k in keys
            if k.usable(now)
        ]
        last = max((k.last_used_at for k in keys if k.last_used_at), default=None)
        print(
            f"{app.id}  {app.name}  {state}  keys: {', '.join(usable) or '-'}"
            f"  last used: {last.isoformat(timespec='seconds') if last else 'never'}"
        )
    return 0


def _uuid_arg(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an id (a UUID)") from None


async def _cmd_apps_revoke(settings: Settings, args: argparse.Namespace) -> int:
    async with _database(settings) as pool, pool.acquire() as conn:
        await revoke_application(conn, args.application_id, actor=_ACTOR)
    print(f"application {args.application_id} revoked; its keys no longer work")
    return 0


_DURATION = re.compile(r"^(\d{1,6})([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _duration_arg(raw: str) -> timedelta:
    """`90s`, `30m`, `24h` or `7d`."""
    match = _DURATION.match(raw.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a duration: write e.g. 30m, 24h or 7d")
    amount = timedelta(**{_UNITS[match[2]]: int(match[1])})
    if not timedelta(0) < amount <= MAX_KEY_OVERLAP:
        raise argparse.ArgumentTypeError(f"{raw!r}: must be more than 0 and at most {MAX_KEY_OVERLAP.days}d")
    return amount


async def _cmd_apps_rotate(settings: Settings, args: argparse.Namespace) -> int:
    async with _database(settings) as pool, pool.acquire() as conn:
        issued = await rotate_key(conn, args.application_id, actor=_ACTOR, keep_old_for=args.keep_old_for)
    if args.keep_old_for is not None and issued.previous_keys_expire_at is None:
        previous = "no previous key was in use"
    elif issued.previous_keys_expire_at is None:
        previous = "previous keys are revoked"
    else:
        until = issued.previous_keys_expire_at.astimezone(UTC).isoformat(timespec="seconds")
        previous = f"previous keys keep working until {until}, then expire"
    print(f"new api key for {issued.application.id} (shown once; {previous}): {issued.token}")
    return 0


async def _cmd_apps_cronofy_credentials(settings: Settings, args: argparse.Namespace) -> int:
    keyring = load_keyring(settings)
    async with _database(settings) as pool, pool.acquire() as conn:
        await get_application(conn, args.application_id)
        issued = await issue_client(
            conn, keyring, args.application_id, actor=_ACTOR, signing_overlap=settings.channels.rotation_overlap
        )
    print(
        f"Cronofy client for {args.application_id} (the secret is shown once; a previous one stops working, "
        f"but signs push notifications beside it for {settings.channels.rotation_overlap}):"
    )
    print(f"client_id:     {issued.client.client_id}")
    print(f"client_secret: {issued.client_secret}")
    print(f"base URL:      {settings.public_url}/compat/cronofy")
    return 0


async def _cmd_apps_service_account_token(settings: Settings, args: argparse.Namespace) -> int:
    async with _database(settings) as pool, pool.acquire() as conn:
        token = await issue_service_account_token(conn, args.application_id, args.connection_id, actor=_ACTOR)
    print(f"Cronofy service-account token for connection {args.connection_id} (shown once): {token}")
    return 0


async def _cmd_keys_rotate(settings: Settings, args: argparse.Namespace) -> int:
    if args.generate:
        kid = add_key_to_file(settings)
        print(f"generated master key {kid!r} and made it primary in {settings.master_key_file}")
    keyring = load_keyring(settings)
    async with _database(settings) as pool:
        count = await rewrap_all(pool, keyring)
    print(f"re-wrapped {count} secret(s) under master key {keyring.primary_kid!r}")
    return 0


def _kid_arg(raw: str) -> str:
    try:
        return check_key_id(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _cmd_keys_generate(_settings: Settings, args: argparse.Namespace) -> int:
    print(generate_master_key(args.kid))
    return 0


async def _cmd_healthcheck(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when this container's API (or, with --worker, its worker's metrics endpoint) answers
    /healthz: the port comes from the same settings the server uses, so no image hard-codes one."""
    port = settings.worker_metrics_port if args.worker else settings.port
    if port is None:
        print("calbroker: the worker has no metrics endpoint: set CALBROKER_WORKER_METRICS_PORT", file=sys.stderr)
        return 1
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(settings.host, settings.host)  # noqa: S104 - a bind-all host
    url = f"http://{host}:{port}/healthz"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout)) as http,
            http.get(url) as response,
        ):
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"calbroker: {url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"calbroker: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


async def _cmd_openapi(settings: Settings, args: argparse.Namespace) -> int:
    from calbroker.app import create_app, openapi_document  # noqa: PLC0415 - only this command needs the app

    document = openapi_document(create_app(settings))
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        await asyncio.to_thread(Path(args.output).write_text, text)
        print(f"wrote {args.output}")
    return 0


def _bind(settings: Settings, args: argparse.Namespace) -> Settings:
    host, port = args.host or settings.host, args.port or settings.port
    derived = f"http://{settings.host}:{settings.port}"
    public_url = f"http://{host}:{port}" if settings.public_url == derived else settings.public_url
    return replace(settings, host=host, port=port, public_url=public_url)


class CannotListen(Exception):
    """The API's address cannot be bound (in use, not this machine's, or a privileged port)."""


def _api_socket(settings: Settings) -> socket.socket:
    """The API's socket, bound before anything else starts (it listens only once the API serves).

    A port in use is then one line at once, instead of after the database, the sandbox and the
    worker have started (and had to be stopped again).
    """
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CannotListen(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = " (choose another with --port or CALBROKER_PORT)" if exc.errno == errno.EADDRINUSE else ""
        raise CannotListen(
            f"cannot listen on {settings.host}:{settings.port}: {(exc.strerror or str(exc)).lower()}{hint}"
        ) from None
    return sock


async def _serve(
    settings: Settings, sock: socket.socket, extra_routes: Sequence[object] = (), metrics: Metrics | None = None
) -> int:
    """Open the services first: an unreachable database is one line and exit 1, before the socket listens."""
    from calbroker.api.server import ApiServer, server_config  # noqa: PLC0415
    from calbroker.app import create_app  # noqa: PLC0415

    async with open_services(settings, metrics=metrics) as services:
        app = create_app(settings, services)
        for route in extra_routes:
            app.register(route)  # type: ignore[arg-type]
        server = ApiServer(server_config(app, settings))
        await server.serve(sockets=[sock])
    return 0 if server.started else 1


async def _cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    settings = _bind(settings, args)
    with _api_socket(settings) as sock:
        return await _serve(settings, sock)


@asynccontextmanager
async def _running_worker(
    settings: Settings, concurrency: int, metrics: Metrics
) -> AsyncIterator[asyncio.Task[object]]:
    """A worker for the duration of the block (the demo's), on the same code path as `calbroker worker`.

    It counts into `metrics`, the API's registry, so the demo's /metrics shows the worker's too.
    """
    from calbroker.workers.runner import Worker  # noqa: PLC0415

    async with open_services(settings, pool_size=concurrency + 4, metrics=metrics) as services:
        worker = Worker(services, concurrency=concurrency)
        task: asyncio.Task[object] = asyncio.create_task(worker.run(), name="calbroker-worker")
        try:
            yield task
        finally:
            worker.stop()
            await task


async def _cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from calbroker.workers.metrics import metrics_endpoint  # noqa: PLC0415
    from calbroker.workers.runner import Worker  # noqa: PLC0415

    port = args.metrics_port if args.metrics_port is not None else settings.worker_metrics_port
    async with open_services(settings, pool_size=args.concurrency + 4) as services:
        worker = Worker(services, concurrency=args.concurrency)
        if args.burst:
            summary = await worker.drain()
            print(
                f"calbroker worker: drained the queue: {summary.rounds} rounds ({summary.round_failures} failed), "
                f"{summary.deliveries} webhook attempts"
            )
            return 0
        async with contextlib.AsyncExitStack() as stack:
            where = ""
            if port is not None:
                try:
                    bound = await stack.enter_async_context(metrics_endpoint(services, settings.host, port))
                except OSError as exc:
                    reason = (exc.strerror or str(exc)).lower()
                    where = f"{settings.host}:{port}"
                    raise CannotListen(f"cannot serve the worker's metrics on {where}: {reason}") from None
                where = f"; metrics on http://{settings.host}:{bound}/metrics"
            with _stop_signals(lambda _signum: worker.stop()):
                print(f"calbroker worker running (Ctrl-C stops it after the running jobs){where}", flush=True)
                await worker.run()
    return 0


async def _cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from calbroker.demo import (  # noqa: PLC0415
        demo_connected,
        demo_instructions,
        demo_settings,
        prepare_demo,
        read_demo_file,
        start_demo_sandbox,
        write_demo_file,
    )

    settings = _bind(settings, args)
    with _api_socket(settings) as sock:
        sandbox = await asyncio.to_thread(
            start_demo_sandbox, settings, seed=args.seed, port=args.sandbox_port, latency_ms=args.latency_ms
        )
        try:
            settings = demo_settings(settings, sandbox)
            demo_file = settings.data_dir / "demo.json"
            previous = await asyncio.to_thread(read_demo_file, demo_file)
            async with open_services(settings, pool_size=2) as services:
                world = await prepare_demo(services, sandbox, settings.public_url, previous)
            await asyncio.to_thread(write_demo_file, demo_file, world)
            print(demo_instructions(world, demo_file), flush=True)
            metrics = Metrics()  # one registry: the demo's /metrics shows its worker's rounds too
            async with _running_worker(settings, concurrency=4, metrics=metrics):
                return await _serve(settings, sock, [demo_connected], metrics=metrics)
        finally:
            await asyncio.to_thread(sandbox.stop)


async def _cmd_sandbox(settings: Settings, args: argparse.Namespace) -> int:
    """Serve the sandbox on this command's own loop until a signal cancels it (then it closes)."""
    from calbroker.sandbox import Sandbox, describe  # noqa: PLC0415

    async with Sandbox(
        seed=args.seed,
        port=args.port,
        latency_ms=args.latency_ms,
        state_dir=settings.data_dir / "sandbox",
        allow_http_notification_urls=args.allow_http_notifications,
    ) as sandbox:
        print(describe(sandbox), flush=True)
        await asyncio.Event().wait()
    return 0


def _secret_argument(value: str, what: str) -> str:
    """`-` reads the secret from stdin, so it never lands in shell history or the process list."""
    if value == "-":
        secret = sys.stdin.readline().rstrip("\n")
        if not secret:
            raise InvalidRequest.field(what, "was empty on standard input")
        return secret
    return value


def _csv(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def _expiry(value: str | None) -> datetime | None:
    return parse_secret_expiry(value, now=datetime.now(UTC), field="--secret-expires") if value else None


def _draft(
    args: argparse.Namespace,
    method: ConnectionMethod,
    credentials: Credentials,
    *,
    tenant_id: str | None = None,
    secret_expires_at: datetime | None = None,
) -> ConnectionDraft:
    """The draft the `connections add-*` options describe (every method shares these)."""
    return ConnectionDraft(
        application_id=args.application,
        method=method,
        access_level=AccessLevel(args.access_level),
        credentials=credentials,
        domains=_csv(args.domains),
        test_mailbox=args.test_mailbox,
        display_name=args.name,
        cloud=args.cloud,
        tenant_id=tenant_id,
        allowed_mailboxes=_csv(args.allowed_mailboxes),
        secret_expires_at=secret_expires_at,
        purpose=ConnectionPurpose(args.purpose),
    )


async def _add_connection(settings: Settings, draft: ConnectionDraft) -> int:
    async with open_services(settings, pool_size=2) as services:
        async with services.pool.acquire() as conn:
            await get_application(conn, draft.application_id)
        connection = await verify_and_save(services, draft, actor=_ACTOR)
    print(f"verified with {draft.test_mailbox} and saved connection {connection.id} ({connection.display_name})")
    return 0


async def _cmd_connections_add_graph(settings: Settings, args: argparse.Namespace) -> int:
    expires = _expiry(args.secret_expires)
    credentials: GraphCertificate | GraphClientSecret
    if args.certificate:
        pem = await asyncio.to_thread(Path(args.certificate).read_bytes)
        credentials, cert_expiry = certificate_credentials(args.tenant_id, args.client_id, pem)
        expires = expires or cert_expiry
    elif args.client_secret:
        credentials = GraphClientSecret(
            args.tenant_id, args.client_id, _secret_argument(args.client_secret, "client_secret")
        )
    else:
        raise InvalidRequest.field("client_secret", "give --client-secret (or - for stdin) or --certificate PEM")
    draft = _draft(args, ConnectionMethod.GRAPH_APP, credentials, tenant_id=args.tenant_id, secret_expires_at=expires)
    return await _add_connection(settings, draft)


async def _cmd_connections_add_ews(settings: Settings, args: argparse.Namespace) -> int:
    password = _secret_argument(args.password, "password")
    # An email address (--email, or typed into --endpoint) is looked up with Autodiscover when verifying.
    credentials = EwsServiceAccount(args.endpoint or args.email, args.username, password, args.auth_type)
    return await _add_connection(settings, _draft(args, ConnectionMethod.EWS, credentials))


async def _cmd_connections_list(settings: Settings, args: argparse.Namespace) -> int:
    async with _database(settings) as pool, pool.acquire() as conn:
        await get_application(conn, args.application)
        connections = await list_connections(conn, args.application, include_retired=args.all)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": str(c.id),
                        "kind": c.kind.value,
                        "method": c.method.value,
                        "purpose": c.purpose.value,
                        "access_level": c.access_level.value if c.purpose is ConnectionPurpose.CALENDARS else None,
                        "display_name": c.display_name,
                        "domains": list(c.domains),
                        "status": c.status.value,
                        "tenant_id": c.tenant_id,
                        "endpoint": c.endpoint,
                        "cloud": c.cloud,
                        "last_error": c.last_error,
                        "superseded_by": str(c.superseded_by) if c.superseded_by else None,
                    }
                    for c in connections
                ],
                indent=2,
            )
        )
        return 0
    if not connections:
        print("no connections yet: add one with `calbroker connections add-graph` or `add-ews`")
    for c in connections:
        where = c.endpoint or f"tenant {c.tenant_id}"
        use = c.access_level.value if c.purpose is ConnectionPurpose.CALENDARS else c.purpose.value
        print(f"{c.id}  {c.kind.value}/{use}  {','.join(c.domains)}  {where}  {c.status.value}")
    return 0


async def _cmd_connections_remove(settings: Settings, args: argparse.Namespace) -> int:
    async with _database(settings) as pool, pool.acquire() as conn:
        connection = await get_connection(conn, args.application, args.connection_id)
        await delete_connection(conn, connection, actor=_ACTOR)
    print(f"connection {args.connection_id} revoked; its credentials are wiped")
    return 0


Command = Callable[[Settings, argparse.Namespace], Coroutine[object, object, int]]
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_LONG_RUNNING = frozenset({"serve", "worker", "demo", "sandbox"})
"""Commands that log at CALBROKER_LOG_LEVEL (default info); the others log warnings and errors only."""


@contextmanager
def _stop_signals(on_signal: Callable[[int], object]) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT call `on_signal(signum)` on the event loop.

    `signal.signal` rather than `loop.add_signal_handler`, so handlers nest: uvicorn installs its
    own the same way while it serves and puts these back afterwards. Outside the main thread
    (`main` called from a thread, as tests do) signals cannot be handled there: nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()

    def handle(signum: int, _frame: object) -> None:
        loop.call_soon_threadsafe(on_signal, signum)

    previous = {signum: signal.signal(signum, handle) for signum in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


async def _until_signalled(command: Coroutine[object, object, int]) -> int:
    """Run a command; a stop signal cancels it, so its `finally` and `async with` blocks all run.

    Answers 128 + the signal's number when a signal cut the command short, as a shell would.
    """
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def cancel(signum: int) -> None:
        received.append(signum)
        task.cancel()  # a second signal cancels again: whatever cleanup is waiting gives up

    with _stop_signals(cancel):
        try:
            return await command
        except asyncio.CancelledError:
            if not received:
                raise
            task.uncancel()
            return 128 + received[0]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calbroker", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API (embedded PostgreSQL unless DATABASE_URL is set)")
    serve.add_argument("--host", default=None, help="bind address (default CALBROKER_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default CALBROKER_PORT or 8080)")
    serve.set_defaults(run=_cmd_serve)

    worker = sub.add_parser("worker", help="run the sync worker: notifications, rounds, reconciliation, health checks")
    worker.add_argument("--concurrency", type=int, default=16, help="jobs in flight at once (default 16)")
    worker.add_argument("--burst", action="store_true", help="work until the queue is empty, then exit")
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics and /healthz on this port (default CALBROKER_WORKER_METRICS_PORT; none if unset)",
    )
    worker.set_defaults(run=_cmd_worker)

    demo = sub.add_parser("demo", help="the API plus the Microsoft 365 sandbox, with a demo app and connections")
    demo.add_argument("--host", default=None, help="bind address (default CALBROKER_HOST or 127.0.0.1)")
    demo.add_argument("--port", type=int, default=None, help="API port (default CALBROKER_PORT or 8080)")
    demo.add_argument("--sandbox-port", type=int, default=0, help="sandbox HTTPS port (default: any free port)")
    demo.add_argument("--seed", type=int, default=0, help="sandbox seed (same seed, same calendars)")
    demo.add_argument("--latency-ms", type=float, default=0, help="simulated round-trip time to Microsoft")
    demo.set_defaults(run=_cmd_demo)

    sandbox = sub.add_parser("sandbox", help="serve the Microsoft 365 sandbox alone and print what it serves")
    sandbox.add_argument("--port", type=int, default=8443)
    sandbox.add_argument("--seed", type=int, default=0)
    sandbox.add_argument("--latency-ms", type=float, default=0)
    sandbox.add_argument(
        "--allow-http-notifications",
        action="store_true",
        help="accept plain-http Graph notification URLs (a local receiver); real Graph requires https",
    )
    sandbox.set_defaults(run=_cmd_sandbox)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(run=_cmd_migrate)

    apps = sub.add_parser("apps", help="manage applications and their API keys").add_subparsers(
        dest="apps_command", required=True
    )
    create = apps.add_parser("create", help="create an application and print its API key once")
    create.add_argument("name")
    create.set_defaults(run=_cmd_apps_create)
    listing = apps.add_parser("list", help="list applications")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_cmd_apps_list)
    revoke = apps.add_parser("revoke", help="revoke an application and all its keys")
    revoke.add_argument("application_id", type=_uuid_arg)
    revoke.set_defaults(run=_cmd_apps_revoke)
    rotate = apps.add_parser("rotate-key", help="issue a new key; the old ones stop working now or after an overlap")
    rotate.add_argument("application_id", type=_uuid_arg)
    rotate.add_argument(
        "--keep-old-for",
        metavar="DURATION",
        type=_duration_arg,
        default=None,
        help="let the previous keys work this much longer (e.g. 24h, 7d; at most "
        f"{MAX_KEY_OVERLAP.days}d), then expire by themselves; default: revoke them now",
    )
    rotate.set_defaults(run=_cmd_apps_rotate)
    cronofy = apps.add_parser(
        "cronofy-credentials",
        help="issue Cronofy client credentials (client id + secret, shown once) for the /compat/cronofy API",
    )
    cronofy.add_argument("application_id", type=_uuid_arg)
    cronofy.set_defaults(run=_cmd_apps_cronofy_credentials)
    sa_token = apps.add_parser(
        "service-account-token", help="issue a Cronofy service-account token for one connection (shown once)"
    )
    sa_token.add_argument("application_id", type=_uuid_arg)
    sa_token.add_argument("connection_id", type=_uuid_arg)
    sa_token.set_defaults(run=_cmd_apps_service_account_token)

    keys = sub.add_parser("keys", help="master keys that seal stored credentials").add_subparsers(
        dest="keys_command", required=True
    )
    generate = keys.add_parser("generate", help="print a new kid:base64key entry for CALBROKER_MASTER_KEYS")
    generate.add_argument(
        "--kid", type=_kid_arg, default=None, help="the key id: 1-32 letters, digits, '.', '_' or '-' (default: random)"
    )
    generate.set_defaults(run=_cmd_keys_generate, standalone=True)
    krotate = keys.add_parser("rotate", help="re-wrap every stored secret under the newest (first) master key")
    krotate.add_argument(
        "--generate", action="store_true", help="embedded default only: first add a new key to the key file"
    )
    krotate.set_defaults(run=_cmd_keys_rotate)

    connections = sub.add_parser("connections", help="connections to Microsoft 365 / Exchange tenants").add_subparsers(
        dest="connections_command", required=True
    )
    graph = connections.add_parser("add-graph", help="connect a tenant's own Graph app registration (verified first)")
    ews = connections.add_parser("add-ews", help="connect an on-premises Exchange service account (verified first)")
    for cmd in (graph, ews):
        cmd.add_argument("--application", type=_uuid_arg, required=True, help="application id (UUID)")
        cmd.add_argument("--domains", required=True, help="comma-separated domains, e.g. contoso.com")
        cmd.add_argument("--test-mailbox", required=True, help="a mailbox to verify the credentials with")
        cmd.add_argument("--access-level", choices=[a.value for a in AccessLevel], default=AccessLevel.FULL.value)
        cmd.add_argument("--allowed-mailboxes", help="comma-separated allow-list (default: every mailbox)")
        cmd.add_argument("--cloud", default="global", help="global, usgov, usgov-dod, china or sandbox")
        cmd.add_argument("--name", default=None, help="display name")
    graph.add_argument("--tenant-id", required=True, help="directory (tenant) id or primary domain")
    graph.add_argument("--client-id", required=True, help="application (client) id")
    graph.add_argument("--client-secret", help="the secret value, or - to read it from stdin")
    graph.add_argument("--certificate", help="PEM file with the private key and certificate")
    graph.add_argument("--secret-expires", help="secret expiry date (YYYY-MM-DD), for expiry warnings")
    graph.add_argument(
        "--purpose",
        choices=[p.value for p in ConnectionPurpose],
        default=ConnectionPurpose.CALENDARS.value,
        help="calendars (default), or online_meetings: Teams meetings only, for a hybrid tenant whose mailboxes "
        "are on Exchange on-premises (the app needs OnlineMeetings.ReadWrite.All and a Teams access policy)",
    )
    graph.set_defaults(run=_cmd_connections_add_graph)
    where = ews.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", help="EWS URL, e.g. https://mail.contoso.com/EWS/Exchange.asmx (or an email)")
    where.add_argument("--email", help="a mailbox's address: Autodiscover finds the EWS URL from it")
    ews.add_argument("--username", required=True, help="service account, e.g. CONTOSO\\svc-calbroker")
    ews.add_argument("--password", required=True, help="the password, or - to read it from stdin")
    ews.add_argument("--auth-type", choices=["basic", "ntlm"], default="ntlm")
    ews.set_defaults(run=_cmd_connections_add_ews, purpose=ConnectionPurpose.CALENDARS.value)
    clist = connections.add_parser("list", help="list an application's connections")
    clist.add_argument("--application", type=_uuid_arg, required=True)
    clist.add_argument("--all", action="store_true", help="include superseded and revoked connections")
    clist.add_argument("--json", action="store_true")
    clist.set_defaults(run=_cmd_connections_list)
    cremove = connections.add_parser("remove", help="revoke a connection and wipe its credentials")
    cremove.add_argument("--application", type=_uuid_arg, required=True)
    cremove.add_argument("connection_id", type=_uuid_arg)
    cremove.set_defaults(run=_cmd_connections_remove)

    openapi = sub.add_parser("openapi", help="write the OpenAPI document generated from the code")
    openapi.add_argument("--output", default="openapi/openapi.json")
    openapi.set_defaults(run=_cmd_openapi)

    health = sub.add_parser("healthcheck", help="exit 0 if this host's API (or worker) answers /healthz")
    health.add_argument("--worker", action="store_true", help="probe the worker's metrics endpoint instead")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    health.set_defaults(run=_cmd_healthcheck)
    return parser


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """Entry point of the `calbroker` console script."""
    args = _parser().parse_args(argv)
    env = dict(os.environ) if environ is None else environ
    settings: Settings | None = None
    try:
        # A standalone command (keys generate) needs nothing from the environment: it must work
        # before the environment is complete, e.g. to make the master key it is missing.
        settings = Settings.from_env({} if getattr(args, "standalone", False) else env)
        # A one-shot command answers in a line or two: info logs would drown it unless asked for.
        asked = bool(env.get("CALBROKER_LOG_LEVEL", "").strip())
        level = settings.log_level if asked or args.command in _LONG_RUNNING else "warning"
        configure_logging(level, json=settings.log_json)
        run: Command = args.run
        try:
            return asyncio.run(_until_signalled(run(settings, args)))
        finally:
            if settings.embedded_database:
                # After asyncio.run: its threads (one may still be starting the server) are done.
                leave_embedded_server(settings.data_dir)
    except ConfigError as exc:
        print(f"calbroker: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except InvalidRequest as exc:
        print(f"calbroker: {exc.detail}", file=sys.stderr)
        return 2
    except DatabaseUnavailable as exc:
        where = database_location(settings.database_url) if settings and settings.database_url else "embedded"
        print(f"calbroker: PostgreSQL ({where}) is unreachable: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    except CannotListen as exc:
        print(f"calbroker: {exc}", file=sys.stderr)
        return 1
    except (CalbrokerError, KeyringError, MigrationError) as exc:
        print(f"calbroker: {type(exc).__name__}: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"calbroker: {type(exc).__name__}: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
