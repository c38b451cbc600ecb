"""Worker tests share a served API (the sandbox posts notifications to it) and a Contoso connection
whose Adele and Alex are synced; each module gets its own database, hence its own world."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from calbroker.config import Settings, sandbox_cloud
from calbroker.domain.connections import Connection
from calbroker.sandbox import SandboxThread
from calbroker.services import open_services, verify_and_save
from calbroker.store.applications import IssuedKey
from tests.e2e.conftest import graph_draft
from tests.fixtures.sandbox import SandboxControl
from tests.fixtures.sync import SyncWorld, fast_sync, served_api

ADELE = "adele.vance@contoso.com"
ALEX = "alex.wilber@contoso.com"


@pytest.fixture(scope="module")
async def world(settings: Settings, api_key: IssuedKey, sandbox: SandboxThread) -> AsyncIterator[SyncWorld]:
    reaching_sandbox = replace(
        settings, clouds={"sandbox": sandbox_cloud(sandbox.url, sandbox.ca_path)}, allow_private_upstreams=True
    )
    async with (
        served_api(fast_sync(reaching_sandbox)) as (url, served),
        open_services(served, pool_size=4) as services,
        SyncWorld(url, served, services, api_key) as found,
    ):
        yield found


@pytest.fixture(scope="module")
async def contoso(world: SyncWorld, sandbox: SandboxThread) -> AsyncIterator[Connection]:
    """Contoso over Graph with Adele and Alex synced (subscribed, one full round each)."""
    connection = await verify_and_save(world.services, graph_draft(world.key.application.id, sandbox), actor="test")
    response = await world.http.put(
        f"/v1/connections/{connection.id}/sync", json={"mode": "list", "mailboxes": [ADELE, ALEX]}
    )
    assert response.status_code == 200, response.text
    await world.drain()
    yield connection
    await world.http.put(f"/v1/connections/{connection.id}/sync", json={"mode": "off"})
    await world.drain()


@pytest.fixture
def control(sandbox_control: SandboxControl) -> SandboxControl:
    return sandbox_control
