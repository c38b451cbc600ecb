"""The Cronofy-compatible surface's state: client credentials, accounts, grants, tokens and codes.

Every bearer secret (client secret, access and refresh token, authorization code) carries 256
random bits, so it is stored as a SHA-256 and found by that hash: the lookup itself is the
constant-time comparison. The client secret is also sealed in the vault, because push
notifications are signed with it. Cronofy's ids (`acc_`, `cal_`, `pro_`, `ser_`) are derived
from ours with an HMAC under a per-application key (`CronofyIds`), so they are opaque, the same on
every replica, and survive a revoke and re-authorization; accounts are also stored, because a
`sub` must resolve to a mailbox with one indexed lookup.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from calbroker.domain.errors import NotFound
from calbroker.store.audit import record_audit
from calbroker.store.channels import add_secret
from calbroker.store.database import Connection
from calbroker.store.keyring import Keyring
from calbroker.store.secrets import delete_secret, read_secret, store_secret

__all__ = [
    "SERVICE_ACCOUNT_SCOPE",
    "Account",
    "CronofyChannel",
    "CronofyClient",
    "CronofyIds",
    "Grant",
    "IssuedClient",
    "IssuedTokens",
    "PendingAuthorization",
    "Redemption",
    "account_by_id",
    "account_channel",
    "account_channels",
    "accounts_by_ids",
    "authenticate_client",
    "authenticate_token",
    "bind_code",
    "client_by_id",
    "client_by_secret",
    "client_of",
    "client_secret",
    "issue_client",
    "issue_code",
    "issue_grant",
    "issue_service_account_token",
    "link_channel",
    "redeem_code",
    "refresh_grant",
    "require_client",
    "revoke_token",
    "same_channel",
    "save_account",
    "start_authorization",
    "take_authorization",
]

_SECRET_PURPOSE = "cronofy_client_secret"  # noqa: S105 - a vault purpose label, not a secret
CLIENT_SECRET_PREFIX = "cbs_"  # noqa: S105 - prefixes make leaked secrets recognisable (and redactable)
ACCESS_PREFIX = "cbt_"
REFRESH_PREFIX = "cbr_"
CODE_PREFIX = "cbc_"
CLIENT_SIGNED_FLAVOURS = ("cronofy", "cronofy_callback")
"""Channel flavours signed with the client secret (push channels, service-account callbacks)."""


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def _secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


class CronofyIds:
    """Cronofy-style opaque ids for our mailboxes and connections, derived under one application's key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _derive(self, prefix: str, kind: str, value: str) -> str:
        mac = hmac.new(self._key, f"{kind}:{value}".encode(), hashlib.sha256).digest()
        return prefix + base64.b32encode(mac[:15]).decode().lower()

    def account(self, mailbox: str) -> str:
        return self._derive("acc_", "account", mailbox)

    def calendar(self, mailbox: str) -> str:
        return self._derive("cal_", "calendar", mailbox)

    def profile(self, connection_id: uuid.UUID) -> str:
        return self._derive("pro_", "profile", str(connection_id))

    def service_account(self, connection_id: uuid.UUID) -> str:
        return self._derive("ser_", "service_account", str(connection_id))


@dataclass(frozen=True, slots=True, repr=False)
class CronofyClient:
    """An application's Cronofy client: its public id and the key its opaque ids derive from."""

    application_id: uuid.UUID
    client_id: str
    id_key: bytes

    def __repr__(self) -> str:
        return f"CronofyClient(application_id={self.application_id}, client_id={self.client_id!r})"

    @property
    def ids(self) -> CronofyIds:
        return CronofyIds(self.id_key)


@dataclass(frozen=True, slots=True, repr=False)
class IssuedClient:
    """Client credentials as issued: the only moment the secret exists outside the application."""

    client: CronofyClient
    client_secret: str

    def __repr__(self) -> str:
        return f"IssuedClient(client_id={self.client.client_id!r}, client_secret=<redacted>)"


@dataclass(frozen=True, slots=True)
class Account:
    """A mailbox the application was authorized for (a Cronofy account with one calendar)."""

    account_id: str
    application_id: uuid.UUID
    connection_id: uuid.UUID
    mailbox: str
    calendar_id: str


@dataclass(frozen=True, slots=True)
class Grant:
    """What a token stands for: an account, or (service-account tokens) a whole connection."""

    id: uuid.UUID
    client: CronofyClient
    scope: str
    account: Account | None
    connection_id: uuid.UUID


@dataclass(frozen=True, slots=True, repr=False)
class IssuedTokens:
    grant_id: uuid.UUID
    access_token: str
    refresh_token: str | None
    expires_in: int | None

    def __repr__(self) -> str:
        return f"IssuedTokens(grant_id={self.grant_id}, tokens=<redacted>)"


def _client(row: asyncpg.Record) -> CronofyClient:
    return CronofyClient(row["application_id"], row["client_id"], bytes(row["id_key"]))


def _account(row: asyncpg.Record) -> Account:
    return Account(row["account_id"], row["application_id"], row["connection_id"], row["mailbox"], row["calendar_id"])


# --- client credentials -----------------------------------------------------------------------------


async def issue_client(
    conn: Connection,
    keyring: Keyring,
    application_id: uuid.UUID,
    *,
    actor: str,
    signing_overlap: timedelta = timedelta(hours=24),
) -> IssuedClient:
    """New client credentials for the application, or a new secret for its existing client id.

    The id key stays, so every acc_/cal_/pro_ id the application already holds keeps its meaning;
    the previous secret stops authenticating at once, but keeps signing push notifications beside the
    new one for `signing_overlap` (Cronofy's comma-separated `Cronofy-HMAC-SHA256`), so receivers can
    switch over without rejecting a notification.
    """
    secret = _secret(CLIENT_SECRET_PREFIX)
    async with conn.transaction():
        sealed = await store_secret(conn, keyring, purpose=_SECRET_PURPOSE, plaintext=secret.encode())
        previous = await conn.fetchrow(
            "SELECT secret_id FROM cronofy_clients WHERE application_id = $1 FOR UPDATE", application_id
        )
        row = await conn.fetchrow(
            """
            INSERT INTO cronofy_clients (application_id, client_id, secret_hash, secret_id, id_key)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (application_id) DO UPDATE SET
                secret_hash = EXCLUDED.secret_hash, secret_id = EXCLUDED.secret_id, rotated_at = now()
            RETURNING *
            """,
            application_id,
            "cbi_" + secrets.token_hex(16),
            _digest(secret),
            sealed,
            secrets.token_bytes(32),
        )
        assert row is not None
        if previous is not None and previous["secret_id"] is not None:
            await delete_secret(conn, previous["secret_id"])
        channels = await conn.fetch(
            "SELECT id FROM channels WHERE application_id = $1 AND flavour = ANY($2::text[])",
            application_id,
            list(CLIENT_SIGNED_FLAVOURS),
        )
        for channel in channels:
            await add_secret(conn, keyring, channel["id"], secret, retire_others_in=signing_overlap)
        client = _client(row)
        await record_audit(
            conn,
            actor=actor,
            action="cronofy_client.rotate_secret" if previous is not None else "cronofy_client.create",
            application_id=application_id,
            details={"client_id": client.client_id},
        )
    return IssuedClient(client, secret)


async def client_of(conn: Connection, application_id: uuid.UUID) -> CronofyClient | None:
    row = await conn.fetchrow("SELECT * FROM cronofy_clients WHERE application_id = $1", application_id)
    return _client(row) if row is not None else None


async def client_secret(conn: Connection, keyring: Keyring, application_id: uuid.UUID) -> str:
    """The client secret in the clear, to sign push notifications with (it never leaves in a response)."""
    secret_id = await conn.fetchval("SELECT secret_id FROM cronofy_clients WHERE application_id = $1", application_id)
    if secret_id is None:
        raise NotFound(f"application {application_id} has no Cronofy client secret")
    return (await read_secret(conn, keyring, secret_id, purpose=_SECRET_PURPOSE)).decode()


async def client_by_id(conn: Connection, client_id: str) -> CronofyClient | None:
    """The client of a live application (the id is public: it appears in authorize links)."""
    row = await conn.fetchrow(
        """SELECT c.* FROM cronofy_clients c JOIN applications a ON a.id = c.application_id
           WHERE c.client_id = $1 AND a.revoked_at IS NULL""",
        client_id,
    )
    return _client(row) if row is not None else None


async def authenticate_client(conn: Connection, client_id: str, client_secret: str) -> CronofyClient | None:
    """The client whose id and secret these are, or None; the secret is compared in constant time."""
    row = await conn.fetchrow(
        """SELECT c.* FROM cronofy_clients c JOIN applications a ON a.id = c.application_id
           WHERE c.client_id = $1 AND a.revoked_at IS NULL""",
        client_id,
    )
    stored = bytes(row["secret_hash"]) if row is not None else b"\0" * 32
    if not hmac.compare_digest(_digest(client_secret), stored) or row is None:
        return None
    return _client(row)


async def client_by_secret(conn: Connection, client_secret: str) -> CronofyClient | None:
    """The client whose secret is sent as a bearer token (Cronofy's "API key" endpoints)."""
    if not client_secret.startswith(CLIENT_SECRET_PREFIX):
        return None
    row = await conn.fetchrow(
        """SELECT c.* FROM cronofy_clients c JOIN applications a ON a.id = c.application_id
           WHERE c.secret_hash = $1 AND a.revoked_at IS NULL""",
        _digest(client_secret),
    )
    return _client(row) if row is not None else None


# --- accounts -----------------------------------------------------------------------------------------


async def save_account(conn: Connection, client: CronofyClient, connection_id: uuid.UUID, mailbox: str) -> Account:
    """The account for `mailbox` (created on first authorization; later ones move it to `connection_id`)."""
    ids = client.ids
    row = await conn.fetchrow(
        """
        INSERT INTO cronofy_accounts (account_id, application_id, connection_id, mailbox, calendar_id)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (application_id, mailbox) DO UPDATE SET connection_id = EXCLUDED.connection_id
        RETURNING *
        """,
        ids.account(mailbox),
        client.application_id,
        connection_id,
        mailbox,
        ids.calendar(mailbox),
    )
    assert row is not None
    account = _account(row)
    # A mailbox authorized again through another connection (reconnected, superseded) keeps its channels.
    await conn.execute(
        """UPDATE channels c SET connection_ids = ARRAY[$2::uuid], updated_at = now()
           FROM cronofy_channels k WHERE k.channel_id = c.id AND k.account_id = $1
             AND c.connection_ids <> ARRAY[$2::uuid]""",
        account.account_id,
        account.connection_id,
    )
    return account


async def account_by_id(conn: Connection, application_id: uuid.UUID, account_id: str) -> Account | None:
    row = await conn.fetchrow(
        "SELECT * FROM cronofy_accounts WHERE account_id = $1 AND application_id = $2", account_id, application_id
    )
    return _account(row) if row is not None else None


async def accounts_by_ids(conn: Connection, application_id: uuid.UUID, account_ids: list[str]) -> dict[str, Account]:
    """The application's accounts among `account_ids` (another application's ids are simply absent)."""
    rows = await conn.fetch(
        "SELECT * FROM cronofy_accounts WHERE application_id = $1 AND account_id = ANY($2::text[])",
        application_id,
        account_ids,
    )
    return {row["account_id"]: _account(row) for row in rows}


# --- grants and tokens --------------------------------------------------------------------------------


async def issue_grant(
    conn: Connection,
    client: CronofyClient,
    *,
    scope: str,
    account: Account | None = None,
    connection_id: uuid.UUID | None = None,
    access_ttl: timedelta | None,
    refreshable: bool = True,
) -> IssuedTokens:
    """A grant for an account (or a connection's service account) and its first access token."""
    refresh = _secret(REFRESH_PREFIX) if refreshable else None
    grant_id = await conn.fetchval(
        """INSERT INTO cronofy_grants (application_id, account_id, connection_id, scope, refresh_hash)
           VALUES ($1, $2, $3, $4, $5) RETURNING id""",
        client.application_id,
        account.account_id if account else None,
        None if account else connection_id,
        scope,
        _digest(refresh) if refresh else None,
    )
    access = await _access_token(conn, grant_id, access_ttl)
    return IssuedTokens(grant_id, access, refresh, int(access_ttl.total_seconds()) if access_ttl else None)


async def _access_token(conn: Connection, grant_id: uuid.UUID, ttl: timedelta | None) -> str:
    token = _secret(ACCESS_PREFIX)
    await conn.execute(
        """INSERT INTO cronofy_access_tokens (token_hash, grant_id, expires_at)
           VALUES ($1, $2, CASE WHEN $3::interval IS NULL THEN NULL ELSE now() + $3::interval END)""",
        _digest(token),
        grant_id,
        ttl,
    )
    return token


_GRANT_SELECT = """
    SELECT g.id AS grant_id, g.scope, g.connection_id AS grant_connection_id,
           c.application_id, c.client_id, c.id_key,
           acc.account_id, acc.connection_id, acc.mailbox, acc.calendar_id
    FROM cronofy_grants g
    JOIN cronofy_clients c ON c.application_id = g.application_id
    JOIN applications app ON app.id = g.application_id AND app.revoked_at IS NULL
    LEFT JOIN cronofy_accounts acc ON acc.account_id = g.account_id
"""


def _grant(row: asyncpg.Record) -> Grant:
    account = _account(row) if row["account_id"] is not None else None
    connection_id = account.connection_id if account else row["grant_connection_id"]
    return Grant(row["grant_id"], _client(row), row["scope"], account, connection_id)


async def authenticate_token(conn: Connection, token: str) -> Grant | None:
    """The live grant behind an access token, or None (unknown, expired or revoked)."""
    if not token.startswith(ACCESS_PREFIX) or len(token) > 100:
        return None
    row = await conn.fetchrow(
        _GRANT_SELECT
        + """ JOIN cronofy_access_tokens t ON t.grant_id = g.id
              WHERE t.token_hash = $1 AND g.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())""",
        _digest(token),
    )
    return _grant(row) if row is not None else None


async def refresh_grant(
    conn: Connection, client: CronofyClient, refresh_token: str, access_ttl: timedelta
) -> tuple[Grant, IssuedTokens] | None:
    """A new access token for the grant behind `refresh_token`; the refresh token itself stays valid."""
    row = await conn.fetchrow(
        _GRANT_SELECT + " WHERE g.refresh_hash = $1 AND g.application_id = $2 AND g.revoked_at IS NULL",
        _digest(refresh_token),
        client.application_id,
    )
    if row is None:
        return None
    grant = _grant(row)
    access = await _access_token(conn, grant.id, access_ttl)
    return grant, IssuedTokens(grant.id, access, refresh_token, int(access_ttl.total_seconds()))


async def revoke_token(conn: Connection, client: CronofyClient, token: str, *, actor: str) -> bool:
    """Revoke the grant behind an access or refresh token of this client (RFC 7009: unknown is fine)."""
    digest = _digest(token)
    grant_id = await conn.fetchval(
        """UPDATE cronofy_grants g SET revoked_at = now()
           WHERE g.application_id = $2 AND g.revoked_at IS NULL
             AND (g.refresh_hash = $1
                  OR g.id = (SELECT grant_id FROM cronofy_access_tokens WHERE token_hash = $1))
           RETURNING g.id""",
        digest,
        client.application_id,
    )
    if grant_id is None:
        return False
    await conn.execute("DELETE FROM cronofy_access_tokens WHERE grant_id = $1", grant_id)
    await record_audit(
        conn, actor=actor, action="cronofy_grant.revoke", application_id=client.application_id, target=str(grant_id)
    )
    return True


# --- authorization codes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Redemption:
    """What a code was issued for; `reused` when it had been redeemed before (its grant is now revoked)."""

    scope: str
    account: Account | None
    connection_id: uuid.UUID | None
    reused: bool = False


async def issue_code(
    conn: Connection,
    client: CronofyClient,
    *,
    redirect_uri: str,
    scope: str,
    account: Account | None = None,
    connection_id: uuid.UUID | None = None,
    ttl: timedelta,
) -> str:
    code = _secret(CODE_PREFIX)
    await conn.execute(
        """INSERT INTO cronofy_codes (code_hash, application_id, redirect_uri, account_id, connection_id, scope,
                                      expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, now() + $7::interval)""",
        _digest(code),
        client.application_id,
        redirect_uri,
        account.account_id if account else None,
        None if account else connection_id,
        scope,
        ttl,
    )
    return code


async def redeem_code(conn: Connection, client: CronofyClient, code: str, redirect_uri: str) -> Redemption | None:
    """Spend a code issued to this client for this redirect URI; None if it is unknown, expired or mismatched.

    Call inside a transaction, then `bind_code` the grant made for it. A code redeemed twice
    revokes the grant of its first redemption (RFC 6749 §4.1.2): whoever holds a leaked code
    gains nothing, and the rightful holder has to authorize again.
    """
    row = await conn.fetchrow(
        """SELECT k.*, acc.account_id AS acc_id, acc.connection_id AS acc_connection, acc.mailbox,
                  acc.calendar_id, acc.application_id AS acc_application
           FROM cronofy_codes k LEFT JOIN cronofy_accounts acc ON acc.account_id = k.account_id
           WHERE k.code_hash = $1 AND k.application_id = $2 FOR UPDATE OF k""",
        _digest(code),
        client.application_id,
    )
    if row is None or not hmac.compare_digest(row["redirect_uri"].encode(), redirect_uri.encode()):
        return None
    if row["used_at"] is not None:
        if row["grant_id"] is not None:
            await conn.execute("UPDATE cronofy_grants SET revoked_at = now() WHERE id = $1", row["grant_id"])
        return Redemption(row["scope"], None, None, reused=True)
    expired = await conn.fetchval("SELECT $1::timestamptz <= now()", row["expires_at"])
    if expired:
        return None
    await conn.execute("UPDATE cronofy_codes SET used_at = now() WHERE code_hash = $1", row["code_hash"])
    account = (
        Account(row["acc_id"], row["acc_application"], row["acc_connection"], row["mailbox"], row["calendar_id"])
        if row["acc_id"] is not None
        else None
    )
    return Redemption(row["scope"], account, row["connection_id"])


async def bind_code(conn: Connection, client: CronofyClient, code: str, grant_id: uuid.UUID) -> None:
    """Remember which grant a redeemed code produced (revoked if the code is ever replayed)."""
    await conn.execute(
        "UPDATE cronofy_codes SET grant_id = $3 WHERE code_hash = $1 AND application_id = $2",
        _digest(code),
        client.application_id,
        grant_id,
    )


# --- browser authorizations ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingAuthorization:
    application_id: uuid.UUID
    link_id: uuid.UUID
    service_account: bool
    redirect_uri: str
    scope: str
    app_state: str | None
    created_at: datetime


async def start_authorization(
    conn: Connection,
    client: CronofyClient,
    *,
    state: str,
    link_id: uuid.UUID,
    service_account: bool,
    redirect_uri: str,
    scope: str,
    app_state: str | None,
) -> None:
    """Remember a browser sent to the connect pages under `state`, which the connect link carries back."""
    await conn.execute(
        """INSERT INTO cronofy_authorizations (state_hash, application_id, link_id, kind, redirect_uri, scope,
                                               app_state)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        _digest(state),
        client.application_id,
        link_id,
        "service_account" if service_account else "account",
        redirect_uri,
        scope,
        app_state,
    )


async def take_authorization(conn: Connection, state: str) -> PendingAuthorization | None:
    """The pending authorization `state` belongs to, spent in the same statement (one use only)."""
    row = await conn.fetchrow("DELETE FROM cronofy_authorizations WHERE state_hash = $1 RETURNING *", _digest(state))
    if row is None:
        return None
    return PendingAuthorization(
        row["application_id"],
        row["link_id"],
        row["kind"] == "service_account",
        row["redirect_uri"],
        row["scope"],
        row["app_state"],
        row["created_at"],
    )


async def require_client(conn: Connection, application_id: uuid.UUID) -> CronofyClient:
    client = await client_of(conn, application_id)
    if client is None:
        raise NotFound(
            f"application {application_id} has no Cronofy client credentials; "
            "issue them with `calbroker apps cronofy-credentials`"
        )
    return client


SERVICE_ACCOUNT_SCOPE = "service_account/accounts/manage"


async def issue_service_account_token(
    conn: Connection, application_id: uuid.UUID, connection_id: uuid.UUID, *, actor: str
) -> str:
    """An operator-issued service-account token for one connection: valid until revoked, not refreshable.

    Enterprise Connect's own flow (`/enterprise_connect/oauth/authorize`) issues expiring ones; this
    is the operator's shortcut for a connection made with the CLI or the demo.
    """
    async with conn.transaction():
        client = await require_client(conn, application_id)
        found = await conn.fetchval(
            "SELECT id FROM connections WHERE id = $1 AND application_id = $2 AND status <> 'revoked'",
            connection_id,
            application_id,
        )
        if found is None:
            raise NotFound(f"application {application_id} has no live connection {connection_id}")
        issued = await issue_grant(
            conn, client, scope=SERVICE_ACCOUNT_SCOPE, connection_id=connection_id, access_ttl=None, refreshable=False
        )
        await record_audit(
            conn,
            actor=actor,
            action="cronofy_grant.service_account_token",
            application_id=application_id,
            target=str(connection_id),
            details={"grant_id": str(issued.grant_id)},
        )
    return issued.access_token


# --- push channels ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CronofyChannel:
    """A push channel as Cronofy shows it: `chn_…`, the callback URL and the filters as given."""

    channel_id: uuid.UUID
    public_id: str
    account_id: str
    callback_url: str
    calendar_ids: tuple[str, ...]
    only_managed: bool
    created_at: datetime


def _channel(row: asyncpg.Record) -> CronofyChannel:
    return CronofyChannel(
        row["channel_id"],
        row["public_id"],
        row["account_id"],
        row["callback_url"],
        tuple(row["calendar_ids"]),
        row["only_managed"],
        row["created_at"],
    )


async def link_channel(
    conn: Connection,
    channel_id: uuid.UUID,
    public_id: str,
    account: Account,
    *,
    callback_url: str,
    calendar_ids: Sequence[str],
    only_managed: bool,
) -> CronofyChannel:
    """Make an outbox channel the account's Cronofy channel (in the transaction that created it)."""
    row = await conn.fetchrow(
        """INSERT INTO cronofy_channels (channel_id, public_id, account_id, callback_url, calendar_ids, only_managed)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING *""",
        channel_id,
        public_id,
        account.account_id,
        callback_url,
        list(calendar_ids),
        only_managed,
    )
    assert row is not None
    return _channel(row)


async def same_channel(
    conn: Connection, account: Account, callback_url: str, calendar_ids: Sequence[str], only_managed: bool
) -> CronofyChannel | None:
    """The account's channel with exactly this URL and these filters (Cronofy answers it again)."""
    row = await conn.fetchrow(
        """SELECT * FROM cronofy_channels WHERE account_id = $1 AND callback_url = $2
             AND calendar_ids = $3::text[] AND only_managed = $4""",
        account.account_id,
        callback_url,
        list(calendar_ids),
        only_managed,
    )
    return _channel(row) if row is not None else None


async def account_channels(conn: Connection, account: Account) -> list[CronofyChannel]:
    rows = await conn.fetch(
        "SELECT * FROM cronofy_channels WHERE account_id = $1 ORDER BY created_at, public_id", account.account_id
    )
    return [_channel(r) for r in rows]


async def account_channel(conn: Connection, account: Account, public_id: str) -> CronofyChannel:
    """The account's channel `chn_…`; another account's is simply not found."""
    row = await conn.fetchrow(
        "SELECT * FROM cronofy_channels WHERE account_id = $1 AND public_id = $2", account.account_id, public_id
    )
    if row is None:
        raise NotFound(f"No channel {public_id!r} belongs to this account.")
    return _channel(row)
