"""Set-up shared by the /v1/events tests: sandbox-backed settings, verified connections, free slots.

Slots are found from the sandbox's own calendars (its control plane), starting on a Sunday well
after the seeded window around `anchor`, so the tests do not depend on the year they run in and
never land on the days other sandbox tests write to.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import httpx

from calbroker.app import create_app
from calbroker.config import MasterKey, Settings, sandbox_cloud
from calbroker.domain.connections import (
    AccessLevel,
    Connection,
    ConnectionMethod,
    ConnectionPurpose,
    EwsServiceAccount,
    GraphClientSecret,
)
from calbroker.sandbox import SandboxThread
from calbroker.services import ConnectionDraft, Services, verify_and_save
from calbroker.store.applications import IssuedKey
from tests.fixtures.sandbox import SandboxControl

FIRST_DAY = 140
"""Days after the anchor (a Monday) where event tests start looking for free slots: a Sunday."""


def sandbox_settings(
    database_url: str, data_dir: Path, sandbox: SandboxThread, master_key: MasterKey, **changes: Any
) -> Settings:
    base = Settings(data_dir=data_dir, database_url=database_url, master_keys=(master_key,))
    clouds = {**base.clouds, "sandbox": sandbox_cloud(sandbox.url, sandbox.ca_path)}
    return replace(base, clouds=clouds, allow_private_upstreams=True, **changes)


@dataclass
class Api:
    """One running calbroker (its own pool, providers and sessions) and an HTTP client for it."""

    http: httpx.AsyncClient
    services: Services


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Api]:
    """The app served in this event loop: requests run concurrently in their callers' tasks, so a
    test can fire twenty at once or cancel one mid-way (Litestar's test client runs the app in a
    portal thread and handles one request at a time).

    The lifespan runs in a task of its own: its task group must be left by the task that entered
    it, and a module fixture's set-up and teardown run in different tasks.
    """
    app = create_app(settings)
    ready, stop = asyncio.Event(), asyncio.Event()

    async def lifespan() -> None:
        async with app.lifespan():
            ready.set()
            await stop.wait()

    owner = asyncio.create_task(lifespan())
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait([owner, waiting], return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        waiting.cancel()
        await owner  # raises what broke the start-up
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://calbroker.test", timeout=60) as http:
            yield Api(http, app.state.services)
    finally:
        stop.set()
        await owner


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def connect_graph(
    services: Services,
    application_id: uuid.UUID,
    sandbox: SandboxThread,
    *,
    allowed: Sequence[str] = (),
    level: AccessLevel = AccessLevel.FULL,
) -> Connection:
    """Contoso (Exchange Online) through its own app registration, verified like a tenant admin's."""
    contoso = sandbox.directory.tenants["contoso"]
    app = next(a for a in sandbox.directory.apps.values() if a.key == "contoso-secret")
    draft = ConnectionDraft(
        application_id=application_id,
        method=ConnectionMethod.GRAPH_APP,
        access_level=level,
        credentials=GraphClientSecret(contoso.id, app.client_id, app.secrets[0].value),
        domains=list(contoso.domains),
        test_mailbox="adele.vance@contoso.com",
        cloud="sandbox",
        tenant_id=contoso.id,
        allowed_mailboxes=allowed,
    )
    return await _save(services, draft)


async def connect_ews(
    services: Services,
    application_id: uuid.UUID,
    sandbox: SandboxThread,
    *,
    account: str = "svc-full",
    level: AccessLevel = AccessLevel.FULL,
) -> Connection:
    """Fabrikam (Exchange on-premises) through a service account, verified like a tenant admin's."""
    fabrikam = sandbox.directory.tenants["fabrikam"]
    service_account = fabrikam.service_accounts[account]
    draft = ConnectionDraft(
        application_id=application_id,
        method=ConnectionMethod.EWS,
        access_level=level,
        credentials=EwsServiceAccount(
            sandbox.ews_url, f"FABRIKAM\\{service_account.username}", service_account.password, "basic"
        ),
        domains=list(fabrikam.domains),
        test_mailbox="anna.schmidt@fabrikam.com",
        cloud="sandbox",
    )
    return await _save(services, draft)


async def connect_teams_bridge(services: Services, application_id: uuid.UUID, sandbox: SandboxThread) -> Connection:
    """Fabrikam's Graph app that may only create Teams meetings (hybrid tenant): purpose online_meetings,
    verified by making (and deleting) a Teams meeting for the test mailbox."""
    fabrikam = sandbox.directory.tenants["fabrikam"]
    app = next(a for a in sandbox.directory.apps.values() if a.key == "fabrikam-teams")
    draft = ConnectionDraft(
        application_id=application_id,
        method=ConnectionMethod.GRAPH_APP,
        access_level=AccessLevel.FULL,
        credentials=GraphClientSecret(fabrikam.id, app.client_id, app.secrets[0].value),
        domains=list(fabrikam.domains),
        test_mailbox="anna.schmidt@fabrikam.com",
        display_name="Fabrikam Teams bridge",
        cloud="sandbox",
        tenant_id=fabrikam.id,
        purpose=ConnectionPurpose.ONLINE_MEETINGS,
    )
    return await _save(services, draft)


async def _save(services: Services, draft: ConnectionDraft) -> Connection:
    return await verify_and_save(
        services,
        draft,
        actor="test",
    )


def sandbox_events(control: SandboxControl, mailbox: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """What the mailbox's calendar holds in [start, end), as the sandbox itself reports it."""
    window = f"start={start.isoformat().replace('+00:00', 'Z')}&end={end.isoformat().replace('+00:00', 'Z')}"
    return list(control.get(f"/_sandbox/mailboxes/{mailbox}/events?{window}")["events"])


def live(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if not e["is_cancelled"]]


@dataclass
class Slots:
    """Hands out free slots, each one checked against the sandbox calendars of every mailbox given."""

    control: SandboxControl
    anchor: date
    day: int = FIRST_DAY

    def next(self, mailboxes: Sequence[str], minutes: int = 30) -> tuple[datetime, datetime]:
        start = datetime.combine(self.anchor + timedelta(days=self.day), time(2), UTC)
        self.day += 1
        for step in range(40):
            candidate = start + timedelta(minutes=30 * step)
            end = candidate + timedelta(minutes=minutes)
            if all(not live(sandbox_events(self.control, m, candidate, end)) for m in mailboxes):
                return candidate, end
        raise AssertionError(f"no free slot on day {self.day} for {mailboxes}")


def event_body(organizer: str, start: datetime, end: datetime, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "organizer": organizer,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "summary": "calbroker test",
    }
    body.update(extra)
    return body


async def connect_contoso_and_fabrikam(
    api: Api, make_application: Callable[[str], Awaitable[IssuedKey]], sandbox: SandboxThread
) -> tuple[str, Connection]:
    """A new application with Contoso over Graph and Fabrikam over EWS, saved (not yet used by the API):
    its API key and the EWS connection."""
    issued = await make_application(f"two tenants {uuid.uuid4().hex[:6]}")
    await connect_graph(api.services, issued.application.id, sandbox)
    ews = await connect_ews(api.services, issued.application.id, sandbox)
    return issued.token, ews


def free_busy_by_mailbox(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["mailbox"]: entry for entry in answer["free_busy"]}
