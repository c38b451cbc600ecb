"""Channels end to end against the sandbox, with a worker running as `calbroker worker` does: an event
booked through calbroker and then moved in Outlook reaches a channel filtered to managed events as
`event.changed` (and the change feed shows it); consent revoked in Entra ID reaches it as
`connection.disconnected` with a fresh authorize link that opens the connect page."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest

from calbroker.config import ChannelSettings, Settings
from calbroker.domain.connections import Connection
from calbroker.sandbox import SandboxThread
from calbroker.workers.health import check_due_connections
from calbroker.workers.runner import Worker
from tests.fixtures.receiver import Received, Receiver, running_receiver
from tests.fixtures.sandbox import SandboxControl
from tests.fixtures.sync import SyncWorld, next_week
from tests.fixtures.waiting import eventually
from tests.workers.conftest import ADELE

APP_RETURN = "https://app.example.com/connected"


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    """Receivers listen on plain http on loopback, as in `calbroker demo`."""
    return replace(settings, channels=ChannelSettings(allow_loopback_http=True))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as found:
        yield found


@contextlib.asynccontextmanager
async def running_worker(world: SyncWorld) -> AsyncIterator[Worker]:
    """A worker in the background for the block, on its own services (as a separate process would be)."""
    worker = await world.worker()
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await task


async def new_channel(world: SyncWorld, receiver: Receiver, path: str, **body: Any) -> dict[str, Any]:
    response = await world.http.post("/v1/channels", json={"callback_url": f"{receiver.url}{path}", **body})
    assert response.status_code == 201, response.text
    channel: dict[str, Any] = response.json()
    await eventually(lambda: receiver.delivered(path), timeout_s=60, what="the channel.verification delivery")
    return channel


def of_type(receiver: Receiver, path: str, kind: str) -> list[Received]:
    return [r for r in receiver.delivered(path) if r.payload["type"] == kind]


async def test_an_event_moved_in_outlook_reaches_a_managed_channel_as_event_changed(
    world: SyncWorld, contoso: Connection, control: SandboxControl, receiver: Receiver
) -> None:
    event_id = f"e2e-moved-{uuid.uuid4().hex[:8]}"
    start, _ = next_week()
    slot = start + timedelta(days=4, hours=21)
    async with running_worker(world):
        channel = await new_channel(
            world, receiver, "/managed", types=["event.changed", "event.deleted", "mailbox.changed"], only_managed=True
        )
        try:
            booked = await world.http.put(
                f"/v1/events/{event_id}",
                json={
                    "organizer": ADELE,
                    "summary": "Booked through calbroker",
                    "start": slot.isoformat(),
                    "end": (slot + timedelta(minutes=30)).isoformat(),
                },
            )
            assert booked.status_code in (200, 201), booked.text
            async with world.services.pool.acquire() as conn:
                upstream_id = await conn.fetchval("SELECT upstream_id FROM events WHERE event_id = $1", event_id)
            assert upstream_id

            loop = asyncio.get_running_loop()
            moved_at = loop.time()
            control.patch(f"/_sandbox/mailboxes/{ADELE}/events/{upstream_id}", {"shift_minutes": 60})
            (changed,) = await eventually(
                lambda: of_type(receiver, "/managed", "event.changed"), timeout_s=90, what="event.changed"
            )
            print(f"Outlook edit to event.changed: {loop.time() - moved_at:.2f} s")
            data = changed.verify(channel["secret"])["data"]
            assert data | {"channel_id": None} == {
                "channel_id": None,
                "connection_id": str(contoso.id),
                "mailbox": ADELE,
                "event_id": event_id,
                "change": "moved",
                "start": (slot + timedelta(hours=1)).isoformat(),
                "end": (slot + timedelta(hours=1, minutes=30)).isoformat(),
                "show_as": "busy",
            }
            (mailbox_changed,) = await eventually(
                lambda: of_type(receiver, "/managed", "mailbox.changed"), timeout_s=60, what="mailbox.changed"
            )
            # calbroker's own booking was not announced as a change: only the Outlook move was.
            assert len(of_type(receiver, "/managed", "event.changed")) == 1
            since = mailbox_changed.verify(channel["secret"])["data"]["changes_since"]
            feed = await world.http.get("/v1/events", params={"mailbox": ADELE, "changed_since": since})
            assert feed.status_code == 200, feed.text
            mine = [c for c in feed.json()["changes"] if c.get("event_id") == event_id]
            assert mine == [
                {
                    "id": upstream_id,
                    "change": "updated",
                    "managed": True,
                    "event_id": event_id,
                    "start": (slot + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
                    "end": (slot + timedelta(hours=1, minutes=30)).isoformat().replace("+00:00", "Z"),
                    "show_as": "busy",
                }
            ]
        finally:
            await world.http.delete(f"/v1/events/{event_id}")
            await world.http.delete(f"/v1/channels/{channel['id']}")


async def test_revoked_consent_reaches_the_channel_as_connection_disconnected(
    world: SyncWorld, contoso: Connection, control: SandboxControl, sandbox: SandboxThread, receiver: Receiver
) -> None:
    link = await world.http.post("/v1/connect_links", json={"redirect_url": APP_RETURN})
    assert link.status_code == 201, link.text
    client_id = control.app("contoso-secret")["client_id"]
    saved = sandbox.call(lambda state: state.directory.tenants["contoso"].service_principals[client_id])

    async def check_now() -> None:
        async with world.services.pool.acquire() as conn:
            await conn.execute(
                "UPDATE connection_checks SET next_check_at = now() - interval '1 second' WHERE connection_id = $1",
                contoso.id,
            )
        assert (await check_due_connections(world.services)).checked == 1

    async with running_worker(world):
        channel = await new_channel(
            world, receiver, "/health", types=["connection.degraded", "connection.disconnected"]
        )
        try:
            control.delete(f"/_sandbox/tenants/contoso/consent/{client_id}")
            await check_now()
            await check_now()
            (degraded,) = await eventually(
                lambda: of_type(receiver, "/health", "connection.degraded"), timeout_s=60, what="connection.degraded"
            )
            (disconnected,) = await eventually(
                lambda: of_type(receiver, "/health", "connection.disconnected"),
                timeout_s=60,
                what="connection.disconnected",
            )
            assert degraded.verify(channel["secret"])["data"]["connection_id"] == str(contoso.id)
            data = disconnected.verify(channel["secret"])["data"]
            assert data["connection_id"] == str(contoso.id)
            assert data["method"] == contoso.method.value
            assert data["error"]
            assert data["authorize_url"].startswith(f"{world.url}/connect/")
            # The link is sealed at rest and shown only in the signed body, never in the delivery log.
            log = (await world.http.get(f"/v1/channels/{channel['id']}/deliveries")).json()["deliveries"]
            assert "authorize_url" not in log[0]["data"]
            assert data["authorize_url"].split("/")[-1] not in str(log)
            async with httpx.AsyncClient() as browser:
                page = await browser.get(data["authorize_url"])
            assert page.status_code == 200, page.text
            await check_now()  # still refused: announced once per episode
            assert len(of_type(receiver, "/health", "connection.disconnected")) == 1
        finally:
            sandbox.call(
                lambda state: state.directory.tenants["contoso"].service_principals.__setitem__(client_id, saved)
            )
            await check_now()
            await world.http.delete(f"/v1/channels/{channel['id']}")


async def test_a_secret_nearing_expiry_reaches_the_channel_at_30_and_7_days(
    world: SyncWorld, contoso: Connection, receiver: Receiver
) -> None:
    async def expires_in(days: int | None) -> None:
        async with world.services.pool.acquire() as conn:
            await conn.execute(
                """UPDATE connections SET secret_expires_at = CASE WHEN $2::int IS NULL THEN NULL
                                                                    ELSE now() + make_interval(days => $2) END
                   WHERE id = $1""",
                contoso.id,
                days,
            )
            await conn.execute(
                "UPDATE connection_checks SET next_check_at = now() - interval '1 second' WHERE connection_id = $1",
                contoso.id,
            )
        assert (await check_due_connections(world.services)).checked == 1

    async with running_worker(world):
        channel = await new_channel(world, receiver, "/expiring", types=["connection.expiring"])
        try:
            await expires_in(20)
            await expires_in(19)  # the same threshold: announced once
            await expires_in(5)
            got = await eventually(
                lambda: (found := of_type(receiver, "/expiring", "connection.expiring")) and len(found) >= 2 and found,
                timeout_s=60,
                what="two connection.expiring deliveries",
            )
            data = [r.verify(channel["secret"])["data"] for r in got]
            expected = [(str(contoso.id), 30), (str(contoso.id), 7)]
            assert [(d["connection_id"], d["threshold_days"]) for d in data] == expected
            assert all(d["secret_expires_at"] and d["message"] for d in data)
        finally:
            await expires_in(None)
            async with world.services.pool.acquire() as conn:
                await conn.execute(
                    "UPDATE connection_checks SET expiry_warned_days = NULL WHERE connection_id = $1", contoso.id
                )
            await world.http.delete(f"/v1/channels/{channel['id']}")
