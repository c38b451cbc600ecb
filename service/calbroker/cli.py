"""`calbroker` command line: serve, migrate, apps, keys, openapi.

The only place that reads the environment: it builds `Settings` once and passes it down. Errors
the operator can fix print one line and exit non-zero; they never print a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import asyncpg

from calbroker.config import ConfigError, Settings
from calbroker.domain.errors import CalbrokerError
from calbroker.logs import configure_logging, get_logger
from calbroker.redaction import redact_text
from calbroker.store.applications import create_application, list_applications, revoke_application, rotate_key
from calbroker.store.database import resolve_database_url
from calbroker.store.keyring import KeyringError, add_key_to_file, generate_master_key, load_keyring
from calbroker.store.migrations import MigrationError, migrate
from calbroker.store.secrets import rewrap_all

__all__ = ["main"]

log = get_logger("calbroker.cli")
_ACTOR = "cli"


@asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    url = await resolve_database_url(settings)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        yield pool
    finally:
        await pool.close()


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
        active = [k for k in keys if k.revoked_at is None]
        last = max((k.last_used_at for k in keys if k.last_used_at), default=None)
        print(
            f"{app.id}  {app.name}  {state}  keys: {', '.join('cbk_' + k.prefix for k in active) or '-'}"
            f"  last used: {last.isoformat(timespec='seconds') if last else 'never'}"
        )
    return 0


def _application_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an application id (a UUID)") from None


async def _cmd_apps_revoke(settings: Settings, args: argparse.Namespace) -> int:
    async with _database(settings) as pool, pool.acquire() as conn:
        await revoke_application(conn, args.application_id, actor=_ACTOR)
    print(f"application {args.application_id} revoked; its keys no longer work")
    return 0


async def _cmd_apps_rotate(settings: Settings, args: argparse.Namespace) -> int:
    async with _database(settings) as pool, pool.acquire() as conn:
        issued = await rotate_key(conn, args.application_id, actor=_ACTOR)
    print(f"new api key for {issued.application.id} (shown once; previous keys are revoked): {issued.token}")
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


async def _cmd_keys_generate(_settings: Settings, args: argparse.Namespace) -> int:
    print(generate_master_key(args.kid))
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


async def _cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415

    from calbroker.app import create_app  # noqa: PLC0415

    settings = replace(settings, host=args.host or settings.host, port=args.port or settings.port)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        server_header=False,
        proxy_headers=True,
    )
    server = uvicorn.Server(config)
    print(f"calbroker listening on http://{settings.host}:{settings.port}", flush=True)
    await server.serve()
    return 0 if server.started else 1


Command = Callable[[Settings, argparse.Namespace], Coroutine[object, object, int]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calbroker", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API (embedded PostgreSQL unless DATABASE_URL is set)")
    serve.add_argument("--host", default=None, help="bind address (default CALBROKER_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default CALBROKER_PORT or 8080)")
    serve.set_defaults(run=_cmd_serve)

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
    revoke.add_argument("application_id", type=_application_id)
    revoke.set_defaults(run=_cmd_apps_revoke)
    rotate = apps.add_parser("rotate-key", help="issue a new key and revoke the old ones")
    rotate.add_argument("application_id", type=_application_id)
    rotate.set_defaults(run=_cmd_apps_rotate)

    keys = sub.add_parser("keys", help="master keys that seal stored credentials").add_subparsers(
        dest="keys_command", required=True
    )
    generate = keys.add_parser("generate", help="print a new kid:base64key entry for CALBROKER_MASTER_KEYS")
    generate.add_argument("--kid", default=None)
    generate.set_defaults(run=_cmd_keys_generate)
    krotate = keys.add_parser(
        "rotate", help="re-wrap every stored secret under the newest (first) master key"
    )
    krotate.add_argument(
        "--generate", action="store_true", help="embedded default only: first add a new key to the key file"
    )
    krotate.set_defaults(run=_cmd_keys_rotate)

    openapi = sub.add_parser("openapi", help="write the OpenAPI document generated from the code")
    openapi.add_argument("--output", default="openapi/openapi.json")
    openapi.set_defaults(run=_cmd_openapi)
    return parser


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """Entry point of the `calbroker` console script."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(dict(os.environ) if environ is None else environ)
        configure_logging(settings.log_level, json=settings.log_json)
        run: Command = args.run
        return asyncio.run(run(settings, args))
    except ConfigError as exc:
        print(f"calbroker: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except (CalbrokerError, KeyringError, MigrationError) as exc:
        print(f"calbroker: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"calbroker: {type(exc).__name__}: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
