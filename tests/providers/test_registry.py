"""ProviderRegistry against the sandbox: the providers it builds follow the limits in Settings.

Upstream call counts come from the sandbox's request stats.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from calbroker.config import Settings, sandbox_cloud
from calbroker.domain.connections import (
    AccessLevel,
    Connection,
    ConnectionKind,
    ConnectionMethod,
    EwsServiceAccount,
    GraphClientSecret,
)
from calbroker.domain.intervals import Interval
from calbroker.domain.schedules import MailboxSchedule
from calbroker.providers import CalendarProvider, Deadline, ProviderRegistry
from calbroker.sandbox import SandboxThread
from tests.fixtures.sandbox import SandboxControl

ANCHOR = datetime(2026, 11, 23, tzinfo=UTC)  # the sandbox's default calendar anchor (a Monday)
WINDOW = Interval(ANCHOR, ANCHOR + timedelta(days=5))
CONTOSO = ["adele.vance@contoso.com", "alex.wilber@contoso.com", "megan.bowen@contoso.com"]


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="registry-test") as pool:
        yield pool


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def settings(sandbox: SandboxThread, tmp_path: Path, **limits: Any) -> Settings:
    # The sandbox listens on loopback, which every EWS connection checks (the address policy).
    return Settings(
        data_dir=tmp_path,
        clouds={"sandbox": sandbox_cloud(sandbox.url, sandbox.ca_path)},
        allow_private_upstreams=True,
        **limits,
    )


def graph_connection(control: SandboxControl) -> tuple[Connection, GraphClientSecret]:
    tenant_id = str(control.tenant("contoso")["id"])
    app = control.app("contoso-secret")
    connection = Connection(
        id=uuid.uuid4(),
        application_id=uuid.uuid4(),
        kind=ConnectionKind.GRAPH,
        method=ConnectionMethod.GRAPH_APP,
        access_level=AccessLevel.FULL,
        display_name="Contoso",
        domains=("contoso.com",),
        cloud="sandbox",
        tenant_id=tenant_id,
    )
    return connection, GraphClientSecret(tenant_id, app["client_id"], app["secrets"][0]["value"])


def ews_connection(control: SandboxControl, sandbox: SandboxThread) -> tuple[Connection, EwsServiceAccount]:
    account = next(a for a in control.tenant("fabrikam")["service_accounts"] if a["access"] == "full")
    connection = Connection(
        id=uuid.uuid4(),
        application_id=uuid.uuid4(),
        kind=ConnectionKind.EWS,
        method=ConnectionMethod.EWS,
        access_level=AccessLevel.FULL,
        display_name="Fabrikam",
        domains=("fabrikam.com",),
        cloud="sandbox",
        endpoint=sandbox.ews_url,
    )
    return connection, EwsServiceAccount(
        sandbox.ews_url, f"{account['domain']}\\{account['username']}", account["password"]
    )


def fabrikam_mailboxes(control: SandboxControl) -> list[str]:
    well_known = control.tenants()["well_known"]
    return [well_known["fabrikam_user"], well_known["fabrikam_colleague"], "nobody@fabrikam.com"]


async def read(provider: CalendarProvider, mailboxes: list[str]) -> None:
    results = await provider.fetch_schedules(mailboxes, WINDOW, Deadline.after(15))
    assert isinstance(results[mailboxes[0]], MailboxSchedule)


@pytest.mark.parametrize(
    ("limits", "calls"),
    [
        ({}, 1),  # the defaults: 20 mailboxes and 62 days per getSchedule
        ({"graph_max_schedules": 2, "graph_max_window": timedelta(days=3)}, math.ceil(3 / 2) * math.ceil(5 / 3)),
    ],
)
async def test_graph_providers_follow_the_configured_limits(
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
    http: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
    tmp_path: Path,
    limits: dict[str, Any],
    calls: int,
) -> None:
    registry = ProviderRegistry(settings(sandbox, tmp_path, **limits), http, executor)
    provider = registry.build(*graph_connection(sandbox_control))
    try:
        await read(provider, CONTOSO)
    finally:
        await provider.aclose()
        await registry.aclose()
    assert sandbox_control.count("graph:getSchedule") == calls


@pytest.mark.parametrize(
    ("limits", "calls"),
    [
        ({}, 1),  # the defaults: 100 mailboxes and 42 days per GetUserAvailability
        ({"ews_max_mailboxes": 2, "ews_max_window": timedelta(days=3)}, math.ceil(3 / 2) * math.ceil(5 / 3)),
    ],
)
async def test_ews_providers_follow_the_configured_limits(
    sandbox: SandboxThread,
    sandbox_control: SandboxControl,
    http: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
    tmp_path: Path,
    limits: dict[str, Any],
    calls: int,
) -> None:
    registry = ProviderRegistry(settings(sandbox, tmp_path, **limits), http, executor)
    provider = registry.build(*ews_connection(sandbox_control, sandbox))
    try:
        await read(provider, fabrikam_mailboxes(sandbox_control))
    finally:
        await provider.aclose()
        await registry.aclose()
    assert sandbox_control.count("ews:GetUserAvailability") == calls
