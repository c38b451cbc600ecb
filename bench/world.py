"""What every bench sets up the same way: a database on the embedded PostgreSQL, the sandbox's Contoso
tenant connected over Graph, and the percentile its figures are reported at."""

from __future__ import annotations

import math
import shutil
import uuid
import warnings
from pathlib import Path

from calbroker.domain.connections import AccessLevel, Connection, ConnectionMethod, GraphClientSecret
from calbroker.sandbox import SandboxThread
from calbroker.services import ConnectionDraft, Services, verify_and_save
from calbroker.store.database import embedded_server_url, ensure_database, leave_embedded_server

__all__ = ["bench_database", "connect_contoso", "contoso_secret", "percentile", "remove_root"]


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile: a value that was measured, never an interpolation."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def bench_database(root: Path, name: str) -> str:
    """A fresh database `name` on the embedded PostgreSQL under `root/data` (stopped with its last user)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = embedded_server_url(root / "data")
    return await ensure_database(server, name)


def remove_root(root: Path) -> None:
    """Stop the embedded PostgreSQL under `root/data` (if this process started it), then delete `root`.

    In that order: with its data directory deleted first, the server outlives the bench.
    """
    if (root / "data").exists():
        leave_embedded_server(root / "data")
    shutil.rmtree(root, ignore_errors=True)


def contoso_secret(sandbox: SandboxThread) -> GraphClientSecret:
    """The Contoso app registration's client secret, as a tenant admin would type it."""
    contoso = sandbox.directory.tenants["contoso"]
    app = next(a for a in sandbox.directory.apps.values() if a.key == "contoso-secret")
    return GraphClientSecret(contoso.id, app.client_id, app.secrets[0].value)


async def connect_contoso(
    services: Services, sandbox: SandboxThread, application_id: uuid.UUID, test_mailbox: str
) -> Connection:
    """Contoso connected over Graph with full access, verified against the sandbox like any connection."""
    credentials = contoso_secret(sandbox)
    return await verify_and_save(
        services,
        ConnectionDraft(
            application_id=application_id,
            method=ConnectionMethod.GRAPH_APP,
            access_level=AccessLevel.FULL,
            credentials=credentials,
            domains=["contoso.com"],
            test_mailbox=test_mailbox,
            cloud="sandbox",
            tenant_id=credentials.tenant_id,
        ),
        actor="bench",
    )
