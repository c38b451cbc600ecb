"""Channels through the worker to a real receiver on loopback: every type signed and verified with the
`standardwebhooks` package (before and after a rotation), and the faults of the wild as tests — a
receiver down for hours (on a simulated clock), slow, answering 500/429/410, a worker killed mid
delivery, two workers at once, a channel failing for days — plus the delivery log, retry and replay."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import signal
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import WebhookVerificationError

from calbroker.config import ChannelSettings, Settings
from calbroker.domain.channels import Notice, NoticeType
from calbroker.services.channels import mailbox_key
from calbroker.store import outbox
from calbroker.workers.metrics import metrics_endpoint
from calbroker.workers.runner import Worker
from tests.fixtures.receiver import Answer, FakeClock, Received, Receiver, running_receiver
from tests.fixtures.sync import SyncWorld
from tests.fixtures.waiting import eventually

SCHEDULE = ChannelSettings().schedule


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    """Receivers listen on plain http on loopback, as in `calbroker demo`."""
    return replace(settings, channels=ChannelSettings(allow_loopback_http=True))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as found:
        yield found


async def create_channel(world: SyncWorld, url: str, **body: Any) -> dict[str, Any]:
    """A channel whose channel.verification is already delivered (the receiver's default answer is 204), so
    each test scripts its receiver for the deliveries it is about."""
    response = await world.http.post("/v1/channels", json={"callback_url": url, **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    await drain(world)
    assert await states(world, created) == {"delivered": 1}
    return created


async def delete_channel(world: SyncWorld, channel: dict[str, Any]) -> None:
    await world.http.delete(f"/v1/channels/{channel['id']}")


async def drain(world: SyncWorld, clock: FakeClock | None = None) -> int:
    """One burst of the worker (the production job path) on `clock`; returns the attempts made."""
    worker = Worker(world.services, clock=clock or FakeClock(), concurrency=8)
    return (await worker.drain()).deliveries


async def publish(world: SyncWorld, notice: Notice) -> None:
    async with world.services.pool.acquire() as conn, conn.transaction():
        await world.services.channels.notices.publish(conn, world.key.application.id, notice)


def mailbox_notice(mailbox: str, n: int, kind: NoticeType = NoticeType.EVENT_CHANGED) -> Notice:
    connection = uuid.UUID(int=1)
    return Notice(
        kind,
        {"mailbox": mailbox, "n": n, "connection_id": str(connection)},
        order_key=f"mailbox:{connection}:{mailbox}",
        connection_id=connection,
        mailbox=mailbox,
        managed=True,
    )


async def next_due(world: SyncWorld, channel: dict[str, Any]) -> datetime | None:
    async with world.services.pool.acquire() as conn:
        return await outbox.next_due(conn, uuid.UUID(channel["id"]))


async def states(world: SyncWorld, channel: dict[str, Any]) -> dict[str, int]:
    async with world.services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT state, count(*) AS n FROM channel_messages WHERE channel_id = $1 GROUP BY state",
            uuid.UUID(channel["id"]),
        )
    return {r["state"]: r["n"] for r in rows}


def of_type(received: list[Received], kind: str = "event.changed") -> list[Received]:
    return [r for r in received if r.payload["type"] == kind]


async def test_every_type_arrives_signed_and_verifies_before_and_after_a_rotation(
    world: SyncWorld, receiver: Receiver
) -> None:
    channel = await create_channel(world, f"{receiver.url}/all")
    secret = channel["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert "secret" not in (await world.http.get(f"/v1/channels/{channel['id']}")).json()  # shown once
    try:
        (verification,) = receiver.on("/all")
        assert verification.verify(secret) == {
            "type": "channel.verification",
            "timestamp": verification.payload["timestamp"],
            "data": {"channel_id": channel["id"]},
        }
        kinds = [t for t in NoticeType if t is not NoticeType.CHANNEL_VERIFICATION]
        for n, kind in enumerate(kinds):
            await publish(world, mailbox_notice("adele.vance@contoso.com", n, kind))
        await drain(world)
        first = receiver.on("/all")[1:]
        assert [r.verify(secret)["type"] for r in first] == [k.value for k in kinds]  # in order: one mailbox
        for r in first:
            assert r.headers["webhook-id"].startswith("msg_")
            assert "." not in r.headers["webhook-id"]
            assert abs(int(r.headers["webhook-timestamp"]) - datetime.now(UTC).timestamp()) < 60
            assert r.payload["data"]["channel_id"] == channel["id"]

        rotated = (await world.http.post(f"/v1/channels/{channel['id']}/rotate_secret")).json()
        new_secret = rotated["secret"]
        assert new_secret != secret
        for n, kind in enumerate(kinds):
            await publish(world, mailbox_notice("adele.vance@contoso.com", 100 + n, kind))
        await drain(world)
        after = receiver.on("/all")[1 + len(kinds) :]
        assert [r.payload["type"] for r in after] == [k.value for k in kinds]
        for r in after:
            # During the overlap both secrets sign: receivers on either verify.
            assert len(r.headers["webhook-signature"].split(" ")) == 2
            assert r.verify(new_secret) == r.verify(secret)
        with pytest.raises(WebhookVerificationError, match="No matching signature"):
            after[0].verify("whsec_" + base64.b64encode(b"x" * 32).decode())
    finally:
        await delete_channel(world, channel)


async def test_a_receiver_down_for_hours_gets_everything_in_order_with_stable_ids(
    world: SyncWorld, receiver: Receiver
) -> None:
    channel = await create_channel(world, f"{receiver.url}/down", types=["event.changed", "event.deleted"])
    receiver.answer(default=Answer(503))
    try:
        for n in range(3):
            await publish(world, mailbox_notice("adele.vance@contoso.com", n))
            await publish(world, mailbox_notice("alex.wilber@contoso.com", n))
        await publish(world, mailbox_notice("adele.vance@contoso.com", 3, NoticeType.EVENT_DELETED))
        clock = FakeClock()
        started = clock.now
        while True:
            await drain(world, clock)
            due = await next_due(world, channel)
            assert due is not None, "nothing may be given up within the schedule's ~27 hours"
            if due - started > timedelta(hours=6):
                break
            assert due > clock.now, "a run left a due delivery behind"
            clock.to(due)
        assert of_type(receiver.delivered("/down")) == []
        failed = receiver.on("/down")[1:]
        # Each mailbox's first delivery was tried at 0, 5 s, 5 min, 30 min and 2 h; the rest wait behind it.
        assert sorted((r.payload["data"]["mailbox"], r.payload["data"]["n"]) for r in failed) == sorted(
            [("adele.vance@contoso.com", 0)] * 5 + [("alex.wilber@contoso.com", 0)] * 5
        )
        receiver.answer(default=Answer(204))
        for _ in range(4):  # each mailbox's first delivery at its own (jittered) 7.5-hour attempt
            clock.to(due)
            await drain(world, clock)
            if (due := await next_due(world, channel)) is None:
                break
        assert await states(world, channel) == {"delivered": 8}
        delivered = receiver.delivered("/down")[1:]
        assert len(delivered) == 7
        for mailbox, expected in (("adele.vance@contoso.com", [0, 1, 2, 3]), ("alex.wilber@contoso.com", [0, 1, 2])):
            mine = [r.payload["data"]["n"] for r in delivered if r.payload["data"]["mailbox"] == mailbox]
            assert mine == expected, f"out of order for {mailbox}: {mine}"
        # Every retry carried the webhook-id of its first attempt, and verifies.
        by_id: defaultdict[str, list[int]] = defaultdict(list)
        for r in receiver.on("/down")[1:]:
            by_id[r.id].append(r.answered)
            r.verify(channel["secret"])
        assert len(by_id) == 7
        assert sorted(len(answers) for answers in by_id.values()) == [1] * 5 + [6, 6]
        assert all(answers[-1] == 204 and set(answers[:-1]) <= {503} for answers in by_id.values())
        log = (await world.http.get(f"/v1/channels/{channel['id']}/deliveries", params={"limit": 200})).json()
        attempts = [a for d in log["deliveries"] for a in d["attempts"]]
        assert {a["outcome"] for a in attempts} == {"retry", "delivered"}
        assert {a["status_code"] for a in attempts} == {503, 204}
        assert "failing_since" not in (await world.http.get(f"/v1/channels/{channel['id']}")).json()
    finally:
        await delete_channel(world, channel)


async def test_the_schedule_waits_as_documented_and_honours_retry_after(world: SyncWorld, receiver: Receiver) -> None:
    channel = await create_channel(world, f"{receiver.url}/schedule", types=["event.changed"])
    receiver.answer(Answer(500), Answer(500), Answer(429, headers={"Retry-After": "3600"}), default=Answer(200))
    try:
        await publish(world, mailbox_notice("megan.bowen@contoso.com", 1))
        clock = FakeClock()
        waits = []
        for _ in range(3):
            await drain(world, clock)
            due = await next_due(world, channel)
            assert due is not None
            waits.append(due - clock.now)
            clock.to(due)
        await drain(world, clock)
        assert await states(world, channel) == {"delivered": 2}
        # 5 s, then 5 min (±10 % jitter), then the receiver's Retry-After (longer than the 30 min scheduled).
        assert timedelta(seconds=4.5) <= waits[0] <= timedelta(seconds=5.5)
        assert timedelta(minutes=4.5) <= waits[1] <= timedelta(minutes=5.5)
        assert waits[2] == timedelta(hours=1)
        assert [r.answered for r in receiver.on("/schedule")[1:]] == [500, 500, 429, 200]
    finally:
        await delete_channel(world, channel)


async def test_a_410_disables_the_channel_and_it_says_so(world: SyncWorld, receiver: Receiver) -> None:
    channel = await create_channel(world, f"{receiver.url}/gone", types=["event.changed"])
    receiver.answer(default=Answer(410, body="unsubscribed"))
    try:
        await publish(world, mailbox_notice("megan.bowen@contoso.com", 1))
        await drain(world)
        shown = (await world.http.get(f"/v1/channels/{channel['id']}")).json()
        assert shown["state"] == "disabled"
        assert "410" in shown["disabled_reason"]
        await publish(world, mailbox_notice("megan.bowen@contoso.com", 2))  # a disabled channel takes nothing
        assert await drain(world) == 0
        deliveries = (await world.http.get(f"/v1/channels/{channel['id']}/deliveries")).json()["deliveries"]
        assert [d["type"] for d in deliveries] == ["event.changed", "channel.verification"]
        assert deliveries[0]["state"] == "failed"
        assert deliveries[0]["attempts"][0] | {"started_at": None, "latency_ms": None} == {
            "number": 1,
            "started_at": None,
            "latency_ms": None,
            "outcome": "gone",
            "status_code": 410,
            "error_class": "http_status",
            "response_excerpt": "unsubscribed",
        }
        retried = await world.http.post(f"/v1/channels/{channel['id']}/deliveries/{deliveries[0]['id']}/retry")
        assert retried.status_code == 409, retried.text
        assert "enable it first" in retried.json()["detail"]
        since = {"since": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}
        assert (await world.http.post(f"/v1/channels/{channel['id']}/replay", json=since)).status_code == 409
        receiver.answer(default=Answer(204))
        enabled = (await world.http.post(f"/v1/channels/{channel['id']}/enable")).json()
        assert enabled["state"] == "active"
        assert "disabled_reason" not in enabled
    finally:
        await delete_channel(world, channel)


async def test_a_channel_failing_for_days_is_disabled(world: SyncWorld, receiver: Receiver) -> None:
    channel = await create_channel(world, f"{receiver.url}/failing", types=["event.changed"])
    receiver.answer(default=Answer(500))
    try:
        await publish(world, mailbox_notice("megan.bowen@contoso.com", 1))
        clock = FakeClock()
        begun = clock.now
        while (due := await next_due(world, channel)) is not None:
            clock.to(due)
            await drain(world, clock)
        assert await states(world, channel) == {"delivered": 1, "failed": 1}  # the ~27-hour schedule is spent
        assert len(receiver.on("/failing")) == 1 + len(SCHEDULE)
        assert clock.now - begun >= timedelta(hours=24)
        assert (await world.http.get(f"/v1/channels/{channel['id']}")).json()["state"] == "active"
        clock.advance(timedelta(days=4))
        await publish(world, mailbox_notice("megan.bowen@contoso.com", 2))
        await drain(world, clock)
        shown = (await world.http.get(f"/v1/channels/{channel['id']}")).json()
        assert shown["state"] == "disabled"
        assert "every delivery failed since" in shown["disabled_reason"]
    finally:
        await delete_channel(world, channel)


async def test_a_slow_receiver_is_cut_off_at_15_seconds_and_tried_again(world: SyncWorld, receiver: Receiver) -> None:
    channel = await create_channel(world, f"{receiver.url}/slow", types=["event.changed"])
    receiver.answer(Answer(204, delay_s=40), default=Answer(204))
    try:
        await publish(world, mailbox_notice("megan.bowen@contoso.com", 1))
        clock = FakeClock()
        await drain(world, clock)
        delivery = (await world.http.get(f"/v1/channels/{channel['id']}/deliveries")).json()["deliveries"][0]
        (attempt,) = delivery["attempts"]
        assert attempt["error_class"] == "timeout"
        assert 15_000 <= attempt["latency_ms"] < 40_000  # cut off, not waited for
        assert delivery["state"] == "pending"
        clock.to(await next_due(world, channel) or clock.now)
        await drain(world, clock)
        assert await states(world, channel) == {"delivered": 2}
        assert [r.id for r in receiver.delivered("/slow")][-1] == delivery["id"]
    finally:
        await delete_channel(world, channel)


async def test_two_workers_never_attempt_one_mailbox_twice_at_once(world: SyncWorld, receiver: Receiver) -> None:
    channel = await create_channel(world, f"{receiver.url}/two", types=["event.changed"])
    receiver.answer(default=Answer(204, delay_s=0.02))
    try:
        mailboxes = [f"user{i}@contoso.com" for i in range(4)]
        for n in range(10):
            for mailbox in mailboxes:
                await publish(world, mailbox_notice(mailbox, n))
        first, second = await world.worker(), await world.worker()
        summaries = await asyncio.gather(first.drain(), second.drain())
        assert await states(world, channel) == {"delivered": 41}
        assert sum(s.deliveries for s in summaries) == 40
        got = of_type(receiver.on("/two"))
        ids = [r.id for r in got]
        assert len(ids) == len(set(ids)) == 40  # nothing attempted twice
        for mailbox in mailboxes:
            mine = [r for r in got if r.payload["data"]["mailbox"] == mailbox]
            assert [r.payload["data"]["n"] for r in mine] == list(range(10))
            for earlier, later in itertools.pairwise(mine):
                assert earlier.finished <= later.started, f"two deliveries of {mailbox} were in flight at once"
    finally:
        await delete_channel(world, channel)


async def test_a_worker_killed_mid_delivery_loses_nothing(world: SyncWorld, receiver: Receiver) -> None:
    channel = await create_channel(world, f"{receiver.url}/killed", types=["event.changed"])
    receiver.answer(Answer(204, delay_s=60), default=Answer(204))
    try:
        for n in range(5):
            await publish(world, mailbox_notice("megan.bowen@contoso.com", n))
        key = world.settings.master_keys[0]
        env = {
            **os.environ,
            "DATABASE_URL": world.settings.database_url or "",
            "CALBROKER_MASTER_KEYS": f"{key.kid}:{base64.b64encode(key.key).decode()}",
            "CALBROKER_CALLBACKS_ALLOW_LOOPBACK_HTTP": "true",
            "CALBROKER_HEALTH_CHECK_INTERVAL_S": "0",
            "CALBROKER_EWS_STREAMING": "false",
            "CALBROKER_LOG_LEVEL": "warning",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "calbroker.cli", "worker", "--concurrency", "2", env=env
        )
        try:
            await eventually(lambda: receiver.in_flight >= 1, timeout_s=120, what="the worker to be mid-delivery")
        finally:
            process.send_signal(signal.SIGKILL)
            await process.wait()
        assert process.returncode == -signal.SIGKILL
        assert (await states(world, channel)) == {"delivered": 1, "sending": 1, "pending": 4}
        assert of_type(receiver.delivered("/killed")) == []
        # The lease outlives the 15-second timeout; once it lapses another worker takes the delivery over.
        lapsed = await next_due(world, channel)
        assert lapsed is not None
        assert lapsed > datetime.now(UTC)
        await drain(world, FakeClock(lapsed))
        assert await states(world, channel) == {"delivered": 6}
        got = of_type(receiver.delivered("/killed"))
        assert [r.payload["data"]["n"] for r in got] == [0, 1, 2, 3, 4]
        killed = of_type(receiver.on("/killed"))[0]
        assert killed.answered == 204
        assert killed.id == got[0].id
    finally:
        await delete_channel(world, channel)


async def test_the_delivery_log_retry_and_replay(world: SyncWorld, receiver: Receiver) -> None:
    channel = await create_channel(world, f"{receiver.url}/log", types=["event.changed"])
    try:
        for n in range(3):
            await publish(world, mailbox_notice("megan.bowen@contoso.com", n))
        await drain(world)
        page = (await world.http.get(f"/v1/channels/{channel['id']}/deliveries", params={"limit": 2})).json()
        assert [d["state"] for d in page["deliveries"]] == ["delivered", "delivered"]
        assert [d["data"]["n"] for d in page["deliveries"]] == [2, 1]
        older = (
            await world.http.get(
                f"/v1/channels/{channel['id']}/deliveries", params={"limit": 2, "cursor": page["next_cursor"]}
            )
        ).json()
        assert [d["type"] for d in older["deliveries"]] == ["event.changed", "channel.verification"]
        assert "next_cursor" not in older
        newest = page["deliveries"][0]
        assert newest["attempts"][0]["outcome"] == "delivered"
        assert newest["attempts"][0]["status_code"] == 204

        retried = await world.http.post(f"/v1/channels/{channel['id']}/deliveries/{newest['id']}/retry")
        assert retried.status_code == 202, retried.text
        assert retried.json()["state"] == "pending"
        await drain(world)
        assert [r.id for r in receiver.on("/log")][-1] == newest["id"]  # same webhook-id

        before = len(receiver.on("/log"))
        replay = await world.http.post(
            f"/v1/channels/{channel['id']}/replay",
            json={"since": (datetime.now(UTC) - timedelta(hours=1)).isoformat()},
        )
        assert replay.json() == {"replayed": 4}  # the verification too
        await drain(world)
        again = of_type(receiver.on("/log")[before:])
        assert [r.payload["data"]["n"] for r in again] == [0, 1, 2]
        missing = await world.http.post(f"/v1/channels/{channel['id']}/deliveries/msg_{'0' * 32}/retry")
        assert missing.status_code == 404
    finally:
        await delete_channel(world, channel)


def sample(exposition: str, name: str) -> float:
    """The value of one sample (`name` with its labels, as Prometheus prints it), 0 when absent."""
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_count_outcomes_latency_and_the_queue(world: SyncWorld, receiver: Receiver) -> None:
    async with metrics_endpoint(world.services, "127.0.0.1", 0) as port, httpx.AsyncClient() as http:
        url = f"http://127.0.0.1:{port}/metrics"
        before = (await http.get(url)).text
        channel = await create_channel(world, f"{receiver.url}/metrics", types=["event.changed"])
        try:
            receiver.answer(Answer(500), default=Answer(204))
            await publish(world, mailbox_notice("megan.bowen@contoso.com", 1))
            await publish(world, mailbox_notice("megan.bowen@contoso.com", 2))
            clock = FakeClock()
            await drain(world, clock)
            waiting = (await world.http.get("/metrics")).text  # the API reports the queue too
            assert sample(waiting, "calbroker_channel_undelivered") == 2
            assert sample(waiting, "calbroker_channel_oldest_undelivered_seconds") > 0
            clock.to(await next_due(world, channel) or clock.now)
            await drain(world, clock)
            after = (await http.get(url)).text
        finally:
            await delete_channel(world, channel)

    def grew(name: str) -> float:
        return sample(after, name) - sample(before, name)

    assert grew('calbroker_channel_attempts_total{outcome="retry"}') == 1
    assert grew('calbroker_channel_attempts_total{outcome="delivered"}') == 3  # the verification, then both
    assert grew('calbroker_channel_attempt_duration_seconds_count{outcome="delivered"}') == 3
    assert sample(after, "calbroker_channel_undelivered") == 0
    assert sample(after, "calbroker_channel_oldest_undelivered_seconds") == 0


async def test_redirects_are_failures_and_never_followed(world: SyncWorld, receiver: Receiver) -> None:
    channel = await create_channel(world, f"{receiver.url}/moved", types=["event.changed"])
    receiver.answer(Answer(308, headers={"Location": f"{receiver.url}/elsewhere"}), default=Answer(204))
    try:
        await publish(world, mailbox_notice("megan.bowen@contoso.com", 1))
        await drain(world)
        delivery = (await world.http.get(f"/v1/channels/{channel['id']}/deliveries")).json()["deliveries"][0]
        (attempt,) = delivery["attempts"]
        assert (attempt["status_code"], attempt["error_class"], attempt["outcome"]) == (308, "redirect", "retry")
        assert receiver.on("/elsewhere") == []
    finally:
        await delete_channel(world, channel)


async def test_mailbox_changed_waits_at_most_once_per_channel_and_mailbox(world: SyncWorld, receiver: Receiver) -> None:
    channel = await create_channel(world, f"{receiver.url}/coalesced", types=["mailbox.changed"])
    receiver.answer(default=Answer(503))
    connection = uuid.UUID(int=2)
    moments = [datetime(2026, 12, 1, 9, minute, tzinfo=UTC).isoformat() for minute in range(4)]

    def changed(since: str, mailbox: str = "megan.bowen@contoso.com") -> Notice:
        return Notice(
            NoticeType.MAILBOX_CHANGED,
            {"connection_id": str(connection), "mailbox": mailbox, "changes_since": since},
            order_key=mailbox_key(connection, mailbox),
            connection_id=connection,
            mailbox=mailbox,
            coalesce_key=mailbox_key(connection, mailbox),
        )

    try:
        await publish(world, changed(moments[0]))
        await publish(world, changed(moments[1]))  # merged: the waiting one already reaches back further
        await publish(world, changed(moments[0], "adele.vance@contoso.com"))  # another mailbox: its own
        clock = FakeClock()
        await drain(world, clock)  # both attempted, both failed: back to waiting
        await publish(world, changed(moments[2]))  # merged into the one waiting for its retry
        clock.to(await next_due(world, channel) or clock.now)
        receiver.answer(default=Answer(204))
        while (due := await next_due(world, channel)) is not None:
            clock.to(due)
            await drain(world, clock)
        got = [r.payload["data"] for r in receiver.delivered("/coalesced") if r.payload["type"] == "mailbox.changed"]
        assert sorted((d["mailbox"], d["changes_since"]) for d in got) == [
            ("adele.vance@contoso.com", moments[0]),
            ("megan.bowen@contoso.com", moments[0]),
        ]
        assert await states(world, channel) == {"delivered": 3}
    finally:
        await delete_channel(world, channel)
