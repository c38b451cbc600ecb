"""What leaves the channels' outbox besides changes: service-account callbacks (durable, retried, signed,
in the delivery log) and `profile_disconnected` when Microsoft refuses an account's connection."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pycronofy
import requests

from calbroker.sandbox import SandboxThread
from calbroker.services import Services
from calbroker.workers.health import check_due_connections
from tests.compat.conftest import CronofyWorld
from tests.fixtures.receiver import Answer, Received, Receiver, running_receiver
from tests.fixtures.sandbox import SandboxControl
from tests.fixtures.waiting import eventually

ADELE = "adele.vance@contoso.com"


async def test_a_callback_the_application_failed_to_take_is_retried_from_the_outbox(
    cronofy_world: CronofyWorld,
) -> None:
    native = cronofy_world.base_url.removesuffix("/compat/cronofy")
    api_key = {"Authorization": f"Bearer {cronofy_world.application.token}"}
    async with running_receiver() as receiver:
        receiver.answer(Answer(503), default=Answer(202))
        url = f"{receiver.url}/sa-callback"
        accepted = await asyncio.to_thread(
            requests.post,
            f"{cronofy_world.base_url}/v1/service_account_authorizations",
            json={"email": ADELE, "scope": "read_write", "callback_url": url, "state": "retried"},
            headers={"Authorization": f"Bearer {cronofy_world.service_account_tokens['contoso']}"},
            timeout=60,
        )
        assert accepted.status_code == 202, accepted.text
        # The live worker delivers it; the 503 is retried on the schedule (5 s later), not dropped.
        await eventually(lambda: receiver.delivered("/sa-callback"), timeout_s=90, what="the retried callback")
        first, second = receiver.on("/sa-callback")
        assert (first.answered, second.answered) == (503, 202)
        assert first.body == second.body  # the same callback again, with the same code
        authorization = json.loads(second.body)["authorization"]
        assert authorization["state"] == "retried"
        signer = pycronofy.Client(client_id=cronofy_world.client_id, client_secret=cronofy_world.client_secret)
        assert signer.hmac_valid(second.headers["cronofy-hmac-sha256"], second.body.decode())

    def log() -> dict[str, Any]:
        channels = requests.get(f"{native}/v1/channels", headers=api_key, timeout=30).json()["channels"]
        [channel] = [c for c in channels if c["signature"] == "cronofy_callback" and c["callback_url"] == url]
        deliveries: dict[str, Any] = requests.get(
            f"{native}/v1/channels/{channel['id']}/deliveries", headers=api_key, timeout=30
        ).json()
        return deliveries

    [delivery] = (await asyncio.to_thread(log))["deliveries"]
    assert [a["outcome"] for a in delivery["attempts"]] == ["retry", "delivered"]
    assert [a["status_code"] for a in delivery["attempts"]] == [503, 202]
    assert authorization["code"] not in json.dumps(delivery)  # the code is sealed: only the signed body has it
    redeemed = await asyncio.to_thread(
        requests.post,
        f"{cronofy_world.base_url}/oauth/token",
        json={
            "grant_type": "authorization_code",
            "client_id": cronofy_world.client_id,
            "client_secret": cronofy_world.client_secret,
            "code": authorization["code"],
            "redirect_uri": url,
        },
        timeout=30,
    )
    assert redeemed.status_code == 200, redeemed.text


async def _account_token(world: CronofyWorld, receiver: Receiver) -> str:
    url = f"{receiver.url}/authorized"
    accepted = await asyncio.to_thread(
        requests.post,
        f"{world.base_url}/v1/service_account_authorizations",
        json={"email": ADELE, "scope": "read_write", "callback_url": url},
        headers={"Authorization": f"Bearer {world.service_account_tokens['contoso']}"},
        timeout=60,
    )
    assert accepted.status_code == 202, accepted.text
    [callback] = await eventually(lambda: receiver.delivered("/authorized"), timeout_s=60, what="the callback")
    token = await asyncio.to_thread(
        requests.post,
        f"{world.base_url}/oauth/token",
        json={
            "grant_type": "authorization_code",
            "client_id": world.client_id,
            "client_secret": world.client_secret,
            "code": json.loads(callback.body)["authorization"]["code"],
            "redirect_uri": url,
        },
        timeout=30,
    )
    assert token.status_code == 200, token.text
    return str(token.json()["access_token"])


def _of_type(receiver: Receiver, kind: str) -> list[Received]:
    return [r for r in receiver.delivered("/push") if json.loads(r.body)["notification"]["type"] == kind]


async def test_revoked_consent_reaches_the_accounts_channels_as_profile_disconnected(
    cronofy_world: CronofyWorld, compat_services: Services, sandbox: SandboxThread, sandbox_control: SandboxControl
) -> None:
    async with compat_services.pool.acquire() as conn:
        contoso = await conn.fetchval(
            "SELECT id FROM connections WHERE application_id = $1 AND kind = 'graph'",
            cronofy_world.application.application.id,
        )

    async def check_now() -> None:
        async with compat_services.pool.acquire() as conn:
            await conn.execute(
                "UPDATE connection_checks SET next_check_at = now() - interval '1 second' WHERE connection_id = $1",
                contoso,
            )
        assert (await check_due_connections(compat_services)).checked == 1

    client_id = sandbox_control.app("contoso-secret")["client_id"]
    saved = sandbox.call(lambda state: state.directory.tenants["contoso"].service_principals[client_id])
    async with running_receiver() as receiver:
        bearer = {"Authorization": f"Bearer {await _account_token(cronofy_world, receiver)}"}
        created = await asyncio.to_thread(
            requests.post,
            f"{cronofy_world.base_url}/v1/channels",
            json={"callback_url": f"{receiver.url}/push"},
            headers=bearer,
            timeout=60,
        )
        assert created.status_code == 200, created.text
        channel_id = created.json()["channel"]["channel_id"]
        await eventually(lambda: _of_type(receiver, "verification"), timeout_s=60, what="the verification")
        try:
            sandbox_control.delete(f"/_sandbox/tenants/contoso/consent/{client_id}")
            await check_now()
            await check_now()
            [disconnected] = await eventually(
                lambda: _of_type(receiver, "profile_disconnected"), timeout_s=60, what="profile_disconnected"
            )
            assert json.loads(disconnected.body) == {
                "notification": {"type": "profile_disconnected"},
                "channel": {"channel_id": channel_id},
            }
            signer = pycronofy.Client(client_id=cronofy_world.client_id, client_secret=cronofy_world.client_secret)
            assert signer.hmac_valid(disconnected.headers["cronofy-hmac-sha256"], disconnected.body.decode())
        finally:
            sandbox.call(
                lambda state: state.directory.tenants["contoso"].service_principals.__setitem__(client_id, saved)
            )
            await check_now()
            await asyncio.to_thread(
                requests.delete, f"{cronofy_world.base_url}/v1/channels/{channel_id}", headers=bearer, timeout=30
            )
