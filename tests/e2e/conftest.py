"""The API wired to the sandbox: settings with a `sandbox` cloud, and verified connections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from calbroker.config import Settings, sandbox_cloud
from calbroker.domain.connections import AccessLevel, Connection, ConnectionMethod, EwsServiceAccount, GraphClientSecret
from calbroker.sandbox import SandboxThread
from calbroker.services import ConnectionDraft, Services, open_services, verify_and_save
from calbroker.store.applications import IssuedKey
from tests.fixtures.database import new_master_key


@pytest.fixture(scope="module")
def settings(database_url: str, sandbox: SandboxThread, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The production settings shape, with the sandbox as one more Microsoft cloud."""
    return Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        database_url=database_url,
        master_keys=(new_master_key(),),
        clouds={"sandbox": sandbox_cloud(sandbox.url, sandbox.ca_path)},
        allow_private_upstreams=True,
    )


@dataclass(frozen=True)
class Tenants:
    graph: Connection
    ews: Connection


def graph_draft(app_id: object, sandbox: SandboxThread, **overrides: object) -> ConnectionDraft:
    directory = sandbox.directory
    contoso = directory.tenants["contoso"]
    app = next(a for a in directory.apps.values() if a.key == "contoso-secret")
    fields: dict[str, object] = {
        "application_id": app_id,
        "method": ConnectionMethod.GRAPH_APP,
        "access_level": AccessLevel.FULL,
        "credentials": GraphClientSecret(contoso.id, app.client_id, app.secrets[0].value),
        "domains": list(contoso.all_domains),
        "test_mailbox": "adele.vance@contoso.com",
        "cloud": "sandbox",
        "tenant_id": contoso.id,
    }
    fields.update(overrides)
    return ConnectionDraft(**fields)  # type: ignore[arg-type]


def ews_draft(
    app_id: object, sandbox: SandboxThread, account: str = "svc-full", **overrides: object
) -> ConnectionDraft:
    fabrikam = sandbox.directory.tenants["fabrikam"]
    service = fabrikam.service_accounts[account]
    fields: dict[str, object] = {
        "application_id": app_id,
        "method": ConnectionMethod.EWS,
        "access_level": AccessLevel.FULL,
        "credentials": EwsServiceAccount(sandbox.ews_url, f"FABRIKAM\\{service.username}", service.password, "basic"),
        "domains": list(fabrikam.domains),
        "test_mailbox": "anna.schmidt@fabrikam.com",
        "cloud": "sandbox",
    }
    fields.update(overrides)
    return ConnectionDraft(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
async def tenant_services(settings: Settings) -> AsyncIterator[Services]:
    """Services on the test's own event loop (the test client runs the app on another one)."""
    async with open_services(settings, pool_size=2) as services:
        yield services


async def connect(services: Services, draft: ConnectionDraft) -> Connection:
    return await verify_and_save(
        services,
        draft,
        actor="test",
    )


@pytest.fixture(scope="module")
async def tenants(tenant_services: Services, api_key: IssuedKey, sandbox: SandboxThread) -> Tenants:
    """Contoso over Graph and Fabrikam over EWS, connected through the production verify-then-save path."""
    graph = await connect(tenant_services, graph_draft(api_key.application.id, sandbox))
    ews = await connect(tenant_services, ews_draft(api_key.application.id, sandbox))
    return Tenants(graph=graph, ews=ews)
