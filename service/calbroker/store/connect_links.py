"""Authorize links: single-use, expiring URLs a tenant admin opens to connect an organisation.

The link token is a bearer secret (`cbl_` + 256 random bits), so only its SHA-256 is stored; the
row also keeps the pending round trip through Microsoft (admin consent, the admin's sign-in that
follows it, or delegated sign-in) and the verification-attempt counter, so every replica enforces
the same single use and rate limit.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import asyncpg

from calbroker.domain.connections import AccessLevel, ConnectionMethod
from calbroker.domain.errors import CalbrokerError
from calbroker.store.audit import record_audit
from calbroker.store.database import Connection

__all__ = [
    "TOKEN_PREFIX",
    "AttemptBudget",
    "ConnectLink",
    "IssuedLink",
    "LinkState",
    "LinkUnavailable",
    "claim_link",
    "count_attempt",
    "create_link",
    "find_link",
    "get_link",
    "hash_secret",
    "prove_consent",
    "reconnect_target",
    "record_consent",
    "record_refused_sign_in",
    "start_flow",
    "take_flow",
]

TOKEN_PREFIX = "cbl_"  # noqa: S105 - a prefix that makes leaked tokens recognisable, not a secret


def hash_secret(value: str) -> bytes:
    """SHA-256 of a high-entropy secret (link token, flow state, session id): enough to look it up."""
    return hashlib.sha256(value.encode()).digest()


class LinkState(StrEnum):
    OPEN = "open"
    EXPIRED = "expired"
    USED = "used"


class LinkUnavailable(CalbrokerError):
    """The link was used or expired while the admin was on its pages (a race, or a second tab)."""

    slug = "conflict"

    def __init__(self, detail: str, *, state: LinkState) -> None:
        super().__init__(detail)
        self.state = state


@dataclass(frozen=True, slots=True, repr=False)
class ConnectLink:
    id: uuid.UUID
    application_id: uuid.UUID
    redirect_url: str
    state: str | None
    methods: tuple[ConnectionMethod, ...]
    access_level: AccessLevel | None
    link_key: bytes = field(compare=False)
    """Signs this link's CSRF tokens and derives its PKCE verifiers; never leaves the server."""
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    connection_id: uuid.UUID | None
    flow_method: ConnectionMethod | None = None
    flow_session_hash: bytes | None = None
    flow_form: Mapping[str, str] = field(default_factory=dict)
    flow_started_at: datetime | None = None
    flow_tenant: str | None = None
    """The tenant an admin-consent answer named: the pending sign-in must prove it (unproven until then)."""
    consented_tenant: str | None = None
    """The tenant whose admin consented, once their sign-in proved it."""

    def __repr__(self) -> str:
        return f"ConnectLink(id={self.id}, application_id={self.application_id}, link_key=<redacted>)"

    def state_at(self, now: datetime) -> LinkState:
        if self.used_at is not None:
            return LinkState.USED
        if self.expires_at <= now:
            return LinkState.EXPIRED
        return LinkState.OPEN


@dataclass(frozen=True, slots=True, repr=False)
class IssuedLink:
    """A link as created: the only moment its token exists outside the admin's browser."""

    link: ConnectLink
    token: str

    def __repr__(self) -> str:
        return f"IssuedLink(link={self.link.id}, token=<redacted>)"


@dataclass(frozen=True, slots=True)
class AttemptBudget:
    allowed: bool
    retry_after: timedelta


def _link(row: asyncpg.Record) -> ConnectLink:
    form: Any = row["flow_form"]
    return ConnectLink(
        id=row["id"],
        application_id=row["application_id"],
        redirect_url=row["redirect_url"],
        state=row["state"],
        methods=tuple(ConnectionMethod(m) for m in row["methods"]),
        access_level=AccessLevel(row["access_level"]) if row["access_level"] else None,
        link_key=bytes(row["link_key"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        used_at=row["used_at"],
        connection_id=row["connection_id"],
        flow_method=ConnectionMethod(row["flow_method"]) if row["flow_method"] else None,
        flow_session_hash=bytes(row["flow_session_hash"]) if row["flow_session_hash"] else None,
        flow_form=json.loads(form) if isinstance(form, str) else {},
        flow_started_at=row["flow_started_at"],
        flow_tenant=row["flow_tenant"],
        consented_tenant=row["consented_tenant"],
    )


async def create_link(
    conn: Connection,
    *,
    application_id: uuid.UUID,
    redirect_url: str,
    state: str | None,
    methods: Sequence[ConnectionMethod],
    access_level: AccessLevel | None,
    expires_in: timedelta,
    actor: str,
) -> IssuedLink:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with conn.transaction():
        row = await conn.fetchrow(
            """
            INSERT INTO connect_links (token_hash, application_id, redirect_url, state, methods,
                                       access_level, link_key, expires_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, now() + $8::interval)
            RETURNING *
            """,
            hash_secret(token),
            application_id,
            redirect_url,
            state,
            [m.value for m in methods],
            access_level.value if access_level else None,
            secrets.token_bytes(32),
            expires_in,
        )
        assert row is not None
        link = _link(row)
        await record_audit(
            conn,
            actor=actor,
            action="connect_link.create",
            application_id=application_id,
            target=str(link.id),
            details={"methods": [m.value for m in methods], "expires_at": link.expires_at.isoformat()},
        )
    return IssuedLink(link, token)


async def find_link(conn: Connection, token: str) -> ConnectLink | None:
    """The link behind a token, whatever its state (the page explains expired and used ones)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        return None
    row = await conn.fetchrow("SELECT * FROM connect_links WHERE token_hash = $1", hash_secret(token))
    return _link(row) if row is not None else None


async def get_link(conn: Connection, link_id: uuid.UUID) -> ConnectLink | None:
    """By id: for form posts, which prove possession of the link with their CSRF token instead."""
    row = await conn.fetchrow("SELECT * FROM connect_links WHERE id = $1", link_id)
    return _link(row) if row is not None else None


async def take_flow(conn: Connection, flow_state: str) -> ConnectLink | None:
    """The link whose round trip through Microsoft carried `flow_state`, spending that state.

    One statement finds and spends it, so Microsoft's answer is accepted once even when it
    arrives twice at once. The round trip's other details (method, session, form, tenant) stay
    until the next one replaces them.
    """
    row = await conn.fetchrow(
        "UPDATE connect_links SET flow_state_hash = NULL WHERE flow_state_hash = $1 RETURNING *",
        hash_secret(flow_state),
    )
    return _link(row) if row is not None else None


async def count_attempt(conn: Connection, link_id: uuid.UUID, *, limit: int, window: timedelta) -> AttemptBudget:
    """Count one verification attempt in a fixed window; the row lock makes it exact across replicas."""
    row = await conn.fetchrow(
        """
        UPDATE connect_links SET
            attempts = CASE WHEN attempts_since > now() - $2::interval THEN attempts + 1 ELSE 1 END,
            attempts_since = CASE WHEN attempts_since > now() - $2::interval THEN attempts_since ELSE now() END
        WHERE id = $1
        RETURNING attempts, attempts_since + $2::interval - now() AS retry_after
        """,
        link_id,
        window,
    )
    if row is None:
        return AttemptBudget(False, window)
    return AttemptBudget(row["attempts"] <= limit, max(row["retry_after"], timedelta(seconds=1)))


async def start_flow(
    conn: Connection,
    link_id: uuid.UUID,
    *,
    flow_state: str,
    session: str,
    method: ConnectionMethod,
    form: Mapping[str, str],
    tenant: str | None = None,
) -> None:
    """Remember a round trip through Microsoft; a newer one replaces an abandoned one.

    `tenant` is set for the admin's sign-in after consent: the tenant that sign-in must prove.
    """
    await conn.execute(
        """
        UPDATE connect_links SET flow_state_hash = $2, flow_session_hash = $3, flow_method = $4,
                                 flow_form = $5, flow_started_at = now(), flow_tenant = $6
        WHERE id = $1 AND used_at IS NULL
        """,
        link_id,
        hash_secret(flow_state),
        hash_secret(session),
        method.value,
        json.dumps(dict(form)),
        tenant,
    )


async def record_consent(conn: Connection, link_id: uuid.UUID, tenant: str | None) -> None:
    """The tenant whose admin granted consent through this link and proved it by signing in (None forgets it)."""
    await conn.execute("UPDATE connect_links SET consented_tenant = $2 WHERE id = $1", link_id, tenant)


async def prove_consent(
    conn: Connection, link: ConnectLink, tenant: str, *, admin_object_id: str, roles: Sequence[str]
) -> None:
    """An administrator of `tenant` signed in after consenting: the link's consented tenant, audited."""
    async with conn.transaction():
        await record_consent(conn, link.id, tenant)
        await record_audit(
            conn,
            actor=f"connect_link:{link.id}",
            action="connect_link.consent_proven",
            application_id=link.application_id,
            target=str(link.id),
            details={"tenant_id": tenant, "admin_object_id": admin_object_id, "roles": list(roles)},
        )


async def record_refused_sign_in(conn: Connection, link: ConnectLink, tenant: str, *, reason: str) -> None:
    """A sign-in after consent did not prove `tenant` (another tenant, no admin role, a bad token)."""
    await record_audit(
        conn,
        actor=f"connect_link:{link.id}",
        action="connect_link.consent_refused",
        application_id=link.application_id,
        target=str(link.id),
        details={"claimed_tenant_id": tenant, "reason": reason},
    )


async def claim_link(conn: Connection, link_id: uuid.UUID, connection_id: uuid.UUID) -> None:
    """Mark the link used by `connection_id`, inside the transaction that saves the connection.

    Raises LinkUnavailable if another tab or replica used it first, or it expired meanwhile,
    which rolls the connection back: a link yields at most one connection.
    """
    claimed = await conn.fetchval(
        """
        UPDATE connect_links SET used_at = now(), connection_id = $2, flow_state_hash = NULL
        WHERE id = $1 AND used_at IS NULL AND expires_at > now()
        RETURNING id
        """,
        link_id,
        connection_id,
    )
    if claimed is None:
        row = await conn.fetchrow("SELECT used_at FROM connect_links WHERE id = $1", link_id)
        used = row is not None and row["used_at"] is not None
        raise LinkUnavailable(
            "This link was used while you were connecting." if used else "This link expired while you were connecting.",
            state=LinkState.USED if used else LinkState.EXPIRED,
        )


async def reconnect_target(
    conn: Connection, application_id: uuid.UUID, connection_id: uuid.UUID
) -> tuple[str, str | None] | None:
    """Where a link to reconnect `connection_id` should send the admin afterwards: the redirect URL (and
    state) of the link that made it, else of the application's latest link; None if it never made one."""
    row = await conn.fetchrow(
        """
        SELECT redirect_url, state FROM connect_links WHERE application_id = $1
        ORDER BY (connection_id = $2) IS TRUE DESC, created_at DESC LIMIT 1
        """,
        application_id,
        connection_id,
    )
    return (row["redirect_url"], row["state"]) if row is not None else None
