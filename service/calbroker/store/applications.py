"""Applications (the downstream apps that call calbroker) and their API keys.

A key is `cbk_<prefix>_<secret>`: the prefix finds the row, the secret is compared against a
SHA-256 hash in constant time. The secret carries 256 bits of entropy, so a fast hash is the
right tool (a password hash would only slow every request down). Keys are shown once. A key
stops working when it is revoked, or when its expiry passes (a rotation with an overlap).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import asyncpg

from calbroker.domain.errors import InvalidRequest, NotFound
from calbroker.store.audit import record_audit
from calbroker.store.database import Connection

__all__ = [
    "MAX_KEY_OVERLAP",
    "ApiKey",
    "Application",
    "IssuedKey",
    "authenticate",
    "create_application",
    "get_application",
    "list_applications",
    "revoke_application",
    "rotate_key",
]

_KEY = re.compile(r"^cbk_([a-z2-7]{8})_([A-Za-z0-9_-]{43})$")
_LAST_USED_GRANULARITY = timedelta(seconds=60)
MAX_KEY_OVERLAP = timedelta(days=30)
"""The longest a rotated-out key may keep working: long enough to roll out any deployment."""


@dataclass(frozen=True, slots=True)
class Application:
    id: uuid.UUID
    name: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class ApiKey:
    prefix: str
    application_id: uuid.UUID
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None = None
    """When a key rotated out with an overlap stops working; None: until revoked."""

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True, slots=True, repr=False)
class IssuedKey:
    """A key as issued: the only time its secret exists outside the caller's hands."""

    application: Application
    prefix: str
    token: str
    previous_keys_expire_at: datetime | None = None
    """After a rotation with an overlap: when the keys it replaced stop working."""

    def __repr__(self) -> str:
        return f"IssuedKey(application={self.application.id}, prefix={self.prefix!r}, token=<redacted>)"


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def _new_key() -> tuple[str, str, bytes]:
    prefix = base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower()
    secret = secrets.token_urlsafe(32)
    return prefix, f"cbk_{prefix}_{secret}", _hash(secret)


def _application(row: asyncpg.Record) -> Application:
    return Application(row["id"], row["name"], row["created_at"], row["revoked_at"])


async def _issue_key(conn: Connection, application: Application) -> IssuedKey:
    prefix, token, digest = _new_key()
    await conn.execute(
        "INSERT INTO api_keys (prefix, application_id, secret_hash) VALUES ($1, $2, $3)",
        prefix,
        application.id,
        digest,
    )
    return IssuedKey(application, prefix, token)


async def create_application(conn: Connection, name: str, *, actor: str) -> IssuedKey:
    """Create an application and its first key (returned once, never stored in clear)."""
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise InvalidRequest.field("name", "must be 1 to 200 characters")
    async with conn.transaction():
        row = await conn.fetchrow("INSERT INTO applications (name) VALUES ($1) RETURNING *", name)
        assert row is not None
        application = _application(row)
        issued = await _issue_key(conn, application)
        await record_audit(
            conn,
            actor=actor,
            action="application.create",
            application_id=application.id,
            details={"name": name, "key_prefix": issued.prefix},
        )
    return issued


async def get_application(conn: Connection, application_id: uuid.UUID) -> Application:
    row = await conn.fetchrow("SELECT * FROM applications WHERE id = $1", application_id)
    if row is None:
        raise NotFound(f"no application {application_id}")
    return _application(row)


async def list_applications(conn: Connection) -> list[tuple[Application, list[ApiKey]]]:
    """Every application with its keys, newest first (for the operator's CLI)."""
    apps = await conn.fetch("SELECT * FROM applications ORDER BY created_at DESC, id")
    keys = await conn.fetch("SELECT * FROM api_keys ORDER BY created_at")
    by_app: dict[uuid.UUID, list[ApiKey]] = {}
    for row in keys:
        by_app.setdefault(row["application_id"], []).append(
            ApiKey(
                row["prefix"],
                row["application_id"],
                row["created_at"],
                row["last_used_at"],
                row["revoked_at"],
                row["expires_at"],
            )
        )
    return [(_application(row), by_app.get(row["id"], [])) for row in apps]


async def revoke_application(conn: Connection, application_id: uuid.UUID, *, actor: str) -> None:
    """Revoke an application and all its keys; its data stays for the audit trail."""
    async with conn.transaction():
        result = await conn.execute(
            "UPDATE applications SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", application_id
        )
        if result == "UPDATE 0":
            await get_application(conn, application_id)  # raises NotFound if it does not exist
            return
        await conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE application_id = $1 AND revoked_at IS NULL",
            application_id,
        )
        await record_audit(conn, actor=actor, action="application.revoke", application_id=application_id)


async def rotate_key(
    conn: Connection, application_id: uuid.UUID, *, actor: str, keep_old_for: timedelta | None = None
) -> IssuedKey:
    """Issue a new key; the previous ones stop working at once, or after `keep_old_for`.

    The overlap lets an application switch keys without a moment of refused requests; a previous
    key that already expires sooner keeps its earlier expiry.
    """
    if keep_old_for is not None and not timedelta(0) < keep_old_for <= MAX_KEY_OVERLAP:
        raise InvalidRequest.field("keep_old_for", f"must be more than 0 and at most {MAX_KEY_OVERLAP.days} days")
    async with conn.transaction():
        application = await get_application(conn, application_id)
        if application.revoked_at is not None:
            raise InvalidRequest.field("application", "is revoked; create a new application instead")
        if keep_old_for is None:
            await conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE application_id = $1 AND revoked_at IS NULL",
                application_id,
            )
            old_keys_expire = None
        else:
            old_keys_expire = await conn.fetchval(
                """
                WITH ending AS (
                    UPDATE api_keys SET expires_at = LEAST(coalesce(expires_at, 'infinity'), now() + $2::interval)
                    WHERE application_id = $1 AND revoked_at IS NULL
                      AND (expires_at IS NULL OR expires_at > now())
                    RETURNING expires_at
                )
                SELECT max(expires_at) FROM ending
                """,
                application_id,
                keep_old_for,
            )
        issued = replace(await _issue_key(conn, application), previous_keys_expire_at=old_keys_expire)
        await record_audit(
            conn,
            actor=actor,
            action="application.rotate_key",
            application_id=application_id,
            details={
                "key_prefix": issued.prefix,
                "previous_keys_expire_at": old_keys_expire.isoformat() if old_keys_expire else None,
            },
        )
    return issued


async def authenticate(conn: Connection, token: str) -> tuple[Application, ApiKey] | None:
    """The application a key belongs to, or None for any malformed, unknown, revoked or expired key."""
    match = _KEY.match(token)
    if match is None:
        return None
    prefix, secret = match.groups()
    row = await conn.fetchrow(
        """
        SELECT k.prefix, k.secret_hash, k.created_at AS key_created_at, k.last_used_at,
               k.last_used_at IS NULL OR k.last_used_at < now() - $2::interval AS touch,
               k.revoked_at AS key_revoked_at, k.expires_at, k.expires_at <= now() AS expired,
               a.id, a.name, a.created_at, a.revoked_at
        FROM api_keys k JOIN applications a ON a.id = k.application_id
        WHERE k.prefix = $1
        """,
        prefix,
        _LAST_USED_GRANULARITY,
    )
    # Hash even when the prefix is unknown so timing does not tell which prefixes exist.
    candidate = _hash(secret)
    stored = row["secret_hash"] if row is not None else b"\0" * 32
    if not hmac.compare_digest(candidate, bytes(stored)) or row is None:
        return None
    if row["key_revoked_at"] is not None or row["revoked_at"] is not None or row["expired"]:
        return None
    last_used = row["last_used_at"]
    # Touch last_used at most once a minute per key: a hot key costs no write, nor a round trip, per
    # request. The read says whether it is due; the write checks again, so racing requests touch once.
    if row["touch"]:
        await conn.execute(
            """UPDATE api_keys SET last_used_at = now() WHERE prefix = $1
               AND (last_used_at IS NULL OR last_used_at < now() - $2::interval)""",
            prefix,
            _LAST_USED_GRANULARITY,
        )
    application = Application(row["id"], row["name"], row["created_at"], row["revoked_at"])
    key = ApiKey(prefix, row["id"], row["key_created_at"], last_used, row["key_revoked_at"], row["expires_at"])
    return application, key
