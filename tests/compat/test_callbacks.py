"""Service-account callbacks leave from the channels' outbox: durable, retried, signed, in the delivery log."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pycronofy
import requests

from tests.compat.conftest import CronofyWorld
from tests.fixtures.receiver import Answer, running_receiver
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
