"""Graph change notifications end to end: the sandbox validates a local aiohttp receiver, then
POSTs real notifications when a calendar changes (through the control plane or Graph)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from calbroker.sandbox import SandboxThread
from tests.fixtures.sandbox import SandboxControl
from tests.fixtures.waiting import eventually

ADELE = "adele.vance@contoso.com"


@dataclass
class Receiver:
    url: str
    notifications: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    lifecycle: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    validations: list[str] = field(default_factory=list)
    answer_after_s: float = 0.0
    """How long the receiver takes to answer a notification (a slow receiver)."""


@pytest.fixture
async def receiver(sandbox_control: SandboxControl) -> AsyncIterator[Receiver]:
    app = web.Application()
    found = Receiver(url="")

    def handler(queue: asyncio.Queue[dict[str, Any]]) -> Any:
        async def handle(request: web.Request) -> web.Response:
            token = request.query.get("validationToken")
            if token is not None:
                found.validations.append(token)
                return web.Response(text=token, content_type="text/plain")
            await queue.put(await request.json())
            if found.answer_after_s:
                await asyncio.sleep(found.answer_after_s)
            return web.Response(status=202)

        return handle

    async def echo_encoded(request: web.Request) -> web.Response:
        # Echoing the still-encoded token is the classic mistake; Graph refuses it.
        return web.Response(text=request.raw_path.split("validationToken=", 1)[1], content_type="text/plain")

    app.router.add_post("/notify", handler(found.notifications))
    app.router.add_post("/lifecycle", handler(found.lifecycle))
    app.router.add_post("/encoded", echo_encoded)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield found
    finally:
        for subscription in sandbox_control.get("/_sandbox/subscriptions")["subscriptions"]:
            if subscription["notificationUrl"].startswith(found.url):
                sandbox_control.post(f"/_sandbox/subscriptions/{subscription['id']}/expire")
        await runner.cleanup()


@pytest.fixture
async def session(sandbox_ssl_context: ssl.SSLContext) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=sandbox_ssl_context)) as client:
        yield client


def expiry(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


async def subscribe(
    session: aiohttp.ClientSession, sandbox: SandboxThread, token: str, receiver: Receiver, **extra: Any
) -> tuple[int, dict[str, Any]]:
    body = {
        "changeType": "created,updated,deleted",
        "notificationUrl": f"{receiver.url}/notify?tenant=contoso",
        "lifecycleNotificationUrl": f"{receiver.url}/lifecycle",
        "resource": f"/users/{ADELE}/events",
        "expirationDateTime": expiry(60),
        "clientState": "s3cr3t-state",
    } | extra
    async with session.post(
        f"{sandbox.graph_url}/subscriptions", json=body, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        return response.status, await response.json()


async def test_handshake_then_notifications_for_outlook_edits(
    sandbox: SandboxThread, sandbox_control: SandboxControl, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    sandbox_control.tune(notification_copies_max=1)
    token = sandbox_control.token("contoso.com", "contoso-secret")
    status, subscription = await subscribe(session, sandbox, token, receiver)
    assert status == 201, subscription
    assert len(receiver.validations) == 2  # notificationUrl and lifecycleNotificationUrl
    assert receiver.validations[0].startswith("Validation: ")
    try:
        event = {
            "subject": "Edited in Outlook",
            "start": {"dateTime": "2027-02-14T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2027-02-14T10:00:00", "timeZone": "UTC"},
        }
        created = sandbox_control.post(f"/_sandbox/mailboxes/{ADELE}/events", event)
        first = await asyncio.wait_for(receiver.notifications.get(), 5)
        sandbox_control.patch(f"/_sandbox/mailboxes/{ADELE}/events/{created['id']}", {"shift_minutes": 30})
        second = await asyncio.wait_for(receiver.notifications.get(), 5)
        sandbox_control.delete(f"/_sandbox/mailboxes/{ADELE}/events/{created['id']}")
        third = await asyncio.wait_for(receiver.notifications.get(), 5)
    finally:
        async with session.delete(
            f"{sandbox.graph_url}/subscriptions/{subscription['id']}", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 204

    notification = first["value"][0]
    assert notification["subscriptionId"] == subscription["id"]
    assert notification["clientState"] == "s3cr3t-state"
    assert notification["changeType"] == "created"
    assert notification["tenantId"] == sandbox_control.tenant("contoso")["id"]
    assert notification["resourceData"]["id"] == created["id"]
    assert notification["resourceData"]["@odata.type"] == "#Microsoft.Graph.Event"
    assert [n["value"][0]["changeType"] for n in (second, third)] == ["updated", "deleted"]
    documented = json.loads((Path(__file__).parent / "fixtures/graph/change-notification.json").read_text())["example"]
    assert set(documented["value"][0]) <= set(notification)
    assert set(documented["value"][0]["resourceData"]) <= set(notification["resourceData"])


async def test_graph_writes_notify_too_and_respect_change_types(
    sandbox: SandboxThread, sandbox_control: SandboxControl, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    sandbox_control.tune(notification_copies_max=1)
    token = sandbox_control.token("contoso.com", "contoso-secret")
    status, subscription = await subscribe(session, sandbox, token, receiver, changeType="deleted")
    assert status == 201
    headers = {"Authorization": f"Bearer {token}"}
    event = {
        "subject": "Via Graph",
        "start": {"dateTime": "2027-02-14T11:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2027-02-14T12:00:00", "timeZone": "UTC"},
    }
    async with session.post(f"{sandbox.graph_url}/users/{ADELE}/events", json=event, headers=headers) as response:
        event_id = (await response.json())["id"]
    async with session.delete(f"{sandbox.graph_url}/users/{ADELE}/events/{event_id}", headers=headers):
        pass
    notification = await asyncio.wait_for(receiver.notifications.get(), 5)
    await session.delete(f"{sandbox.graph_url}/subscriptions/{subscription['id']}", headers=headers)
    assert notification["value"][0]["changeType"] == "deleted"
    assert receiver.notifications.empty()  # "created" was not subscribed


async def test_validation_failure_answers_400(
    sandbox: SandboxThread, sandbox_control: SandboxControl, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    token = sandbox_control.token("contoso.com", "contoso-secret")
    status, body = await subscribe(
        session, sandbox, token, receiver, notificationUrl=f"{receiver.url}/encoded", lifecycleNotificationUrl=None
    )
    assert status == 400
    assert body["error"]["message"] == (
        "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request."
    )


async def test_scope_and_expiration_rules(
    sandbox: SandboxThread, sandbox_control: SandboxControl, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    token = sandbox_control.token("contoso.com", "contoso-secret")
    out_of_scope = await subscribe(
        session, sandbox, token, receiver, resource="/users/diego.siciliani@contoso.com/events"
    )
    too_long = await subscribe(session, sandbox, token, receiver, expirationDateTime=expiry(20_000))
    assert out_of_scope[0] == 403
    assert out_of_scope[1]["error"]["code"] == "ExtensionError"
    assert "Access to OData is disabled." in out_of_scope[1]["error"]["message"]
    assert too_long[0] == 201  # clamped to the documented maximum, 10,080 minutes
    clamped = datetime.fromisoformat(too_long[1]["expirationDateTime"].replace("Z", "+00:00"))
    assert clamped <= datetime.now(UTC) + timedelta(minutes=10_080)
    assert clamped >= datetime.now(UTC) + timedelta(minutes=10_079)
    sandbox_control.tune(subscription_reject_overlong=True)
    refused = await subscribe(session, sandbox, token, receiver, expirationDateTime=expiry(20_000))
    assert refused[0] == 400
    assert "10080 minutes" in refused[1]["error"]["message"]

    status, subscription = await subscribe(session, sandbox, token, receiver, expirationDateTime=expiry(10))
    assert status == 201
    bumped = datetime.fromisoformat(subscription["expirationDateTime"].replace("Z", "+00:00"))
    assert bumped >= datetime.now(UTC) + timedelta(minutes=44)  # under 45 minutes is raised to 45
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{sandbox.graph_url}/subscriptions/{subscription['id']}"
    async with session.patch(url, json={"expirationDateTime": expiry(3 * 24 * 60)}, headers=headers) as response:
        renewed = await response.json()
        assert response.status == 200
    assert renewed["expirationDateTime"] > subscription["expirationDateTime"]
    async with session.post(f"{sandbox.url}/_sandbox/subscriptions/{subscription['id']}/expire") as response:
        assert response.status == 200
    async with session.get(url, headers=headers) as response:
        assert response.status == 404


async def test_lifecycle_notifications_from_the_control_plane(
    sandbox: SandboxThread, sandbox_control: SandboxControl, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    token = sandbox_control.token("contoso.com", "contoso-secret")
    status, subscription = await subscribe(session, sandbox, token, receiver)
    assert status == 201
    control = f"{sandbox.url}/_sandbox/subscriptions/{subscription['id']}/lifecycle"
    for event in ("reauthorizationRequired", "missed", "subscriptionRemoved"):
        async with session.post(control, json={"event": event}) as response:
            assert (await response.json())["delivered"] is True
        received = await asyncio.wait_for(receiver.lifecycle.get(), 5)
        assert received["value"][0]["lifecycleEvent"] == event
        assert received["value"][0]["clientState"] == "s3cr3t-state"
    async with session.get(
        f"{sandbox.graph_url}/subscriptions/{subscription['id']}", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 404


async def test_one_change_brings_several_notifications(
    sandbox: SandboxThread, sandbox_control: SandboxControl, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    sandbox_control.tune(notification_copies_min=3, notification_copies_max=3)
    token = sandbox_control.token("contoso.com", "contoso-secret")
    status, _ = await subscribe(session, sandbox, token, receiver)
    assert status == 201
    created = sandbox_control.post(f"/_sandbox/mailboxes/{ADELE}/events", EVENT)
    copies = [await asyncio.wait_for(receiver.notifications.get(), 5) for _ in range(3)]
    assert {c["value"][0]["resourceData"]["id"] for c in copies} == {created["id"]}
    assert len({c["value"][0]["id"] for c in copies}) == 3  # no reliable dedup key: each has its own id
    sandbox_control.delete(f"/_sandbox/mailboxes/{ADELE}/events/{created['id']}")


async def test_a_slow_receiver_loses_notifications_and_is_told_missed(
    sandbox: SandboxThread, sandbox_control: SandboxControl, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    sandbox_control.tune(
        notification_copies_max=1, notification_slow_ms=20, notification_window=2, notification_flush_s=60
    )
    token = sandbox_control.token("contoso.com", "contoso-secret")
    status, subscription = await subscribe(session, sandbox, token, receiver)
    assert status == 201
    receiver.answer_after_s = 0.1
    created = sandbox_control.post(f"/_sandbox/mailboxes/{ADELE}/events", EVENT)
    await asyncio.wait_for(receiver.notifications.get(), 5)
    sandbox_control.patch(f"/_sandbox/mailboxes/{ADELE}/events/{created['id']}", {"shift_minutes": 15})
    await asyncio.wait_for(receiver.notifications.get(), 5)
    await eventually(lambda: len(notification_log(sandbox_control, subscription["id"])) >= 2)
    # Both answers were slow: the endpoint is now over the 15 % drop threshold.
    sandbox_control.delete(f"/_sandbox/mailboxes/{ADELE}/events/{created['id']}")
    missed = await asyncio.wait_for(receiver.lifecycle.get(), 5)
    assert missed["value"][0]["lifecycleEvent"] == "missed"
    assert "dropped" in [d["error"] for d in notification_log(sandbox_control, subscription["id"])]
    assert receiver.notifications.empty()


async def test_blocked_notifications_vanish_without_a_word(
    sandbox: SandboxThread, sandbox_control: SandboxControl, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    token = sandbox_control.token("contoso.com", "contoso-secret")
    status, subscription = await subscribe(session, sandbox, token, receiver)
    assert status == 201
    sandbox_control.tune(notifications_blocked=True)
    created = sandbox_control.post(f"/_sandbox/mailboxes/{ADELE}/events", EVENT)
    sandbox_control.delete(f"/_sandbox/mailboxes/{ADELE}/events/{created['id']}")
    log = notification_log(sandbox_control, subscription["id"])
    assert [d["error"] for d in log] == ["blocked", "blocked"]
    assert receiver.notifications.empty()
    assert receiver.lifecycle.empty()


async def test_lifecycle_notifications_in_the_shape_seen_in_the_wild(
    sandbox: SandboxThread, sandbox_control: SandboxControl, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    token = sandbox_control.token("contoso.com", "contoso-secret")
    status, subscription = await subscribe(session, sandbox, token, receiver)
    assert status == 201
    sandbox_control.post(
        f"/_sandbox/subscriptions/{subscription['id']}/lifecycle", {"event": "missed", "variant": "organizationId"}
    )
    item = (await asyncio.wait_for(receiver.lifecycle.get(), 5))["value"][0]
    assert item["organizationId"] == sandbox_control.tenant("contoso")["id"]
    assert "tenantId" not in item
    assert item["resource"] == ""
    assert item["lifecycleEvent"] == "missed"


async def test_revoked_consent_asks_for_reauthorization_that_then_fails(
    sandbox: SandboxThread, sandbox_control: SandboxControl, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    app = sandbox_control.app("contoso-secret")["client_id"]
    token = sandbox_control.token("contoso.com", "contoso-secret")
    status, subscription = await subscribe(session, sandbox, token, receiver)
    assert status == 201
    saved = sandbox.call(lambda state: state.directory.tenants["contoso"].service_principals[app])
    try:
        sandbox_control.delete(f"/_sandbox/tenants/contoso/consent/{app}")
        item = (await asyncio.wait_for(receiver.lifecycle.get(), 5))["value"][0]
        assert item["lifecycleEvent"] == "reauthorizationRequired"
        url = f"{sandbox.graph_url}/subscriptions/{subscription['id']}/reauthorize"
        async with session.post(url, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 403
    finally:
        sandbox.call(lambda state: state.directory.tenants["contoso"].service_principals.__setitem__(app, saved))


async def test_the_per_mailbox_subscription_quota(
    sandbox: SandboxThread, sandbox_control: SandboxControl, receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    sandbox_control.tune(subscription_max_per_mailbox=1)
    token = sandbox_control.token("contoso.com", "contoso-secret")
    first = await subscribe(session, sandbox, token, receiver)
    second = await subscribe(session, sandbox, token, receiver)
    assert first[0] == 201
    assert second[0] == 403
    assert second[1]["error"]["code"] == "ExtensionError"
    assert "Maximum number of subscriptions has been reached" in second[1]["error"]["message"]


EVENT = {
    "subject": "Edited in Outlook",
    "start": {"dateTime": "2027-02-15T09:00:00", "timeZone": "UTC"},
    "end": {"dateTime": "2027-02-15T10:00:00", "timeZone": "UTC"},
}


def notification_log(control: SandboxControl, subscription_id: str) -> list[dict[str, Any]]:
    return [
        d
        for d in control.get("/_sandbox/deliveries")["deliveries"]
        if d["subscriptionId"] == subscription_id and d["kind"] == "notification"
    ]
