"""The audit trail: who did what to which application, and never a secret."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from calbroker.redaction import redact
from calbroker.store.database import Connection

__all__ = ["AuditEntry", "list_audit", "record_audit"]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    application_id: uuid.UUID | None
    target: str | None
    details: Mapping[str, object]


async def record_audit(
    conn: Connection,
    *,
    actor: str,
    action: str,
    application_id: uuid.UUID | None = None,
    target: str | None = None,
    details: Mapping[str, object] | None = None,
) -> None:
    """Append an entry; details pass through the same redaction as logs (defence in depth)."""
    await conn.execute(
        "INSERT INTO audit_log (actor, action, application_id, target, details) VALUES ($1, $2, $3, $4, $5)",
        actor,
        action,
        application_id,
        target,
        json.dumps(redact(dict(details or {}))),
    )


async def list_audit(conn: Connection, application_id: uuid.UUID | None = None) -> list[AuditEntry]:
    rows = await conn.fetch(
        "SELECT * FROM audit_log WHERE $1::uuid IS NULL OR application_id = $1 ORDER BY id", application_id
    )
    return [
        AuditEntry(r["at"], r["actor"], r["action"], r["application_id"], r["target"], json.loads(r["details"]))
        for r in rows
    ]
