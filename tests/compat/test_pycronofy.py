"""The official `pycronofy` SDK, unchanged except for its base URL, through a Cronofy app's whole story.

Authorize a Graph and an EWS mailbox with service-account tokens (202, then a callback with a code),
list calendars, read free/busy, ask for availability with two participants, upsert an event with
Teams conferencing and read its join URL back, move it, delete it, page through events, and keep up
with a calendar through a push channel (signed notifications, `last_modified`, `include_deleted`). The
answers are checked against the native API (same application, API key) and the sandbox's own
control plane, never against numbers written into the test.
"""

from __future__ import annotations

import math
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pycronofy
import pytest
import requests
from pycronofy.batch import BatchBuilder
from pycronofy.exceptions import PyCronofyRequestError

from calbroker.api.compat.cronofy.paging import PAGE_SIZE
from calbroker.sandbox import SandboxThread
from calbroker.services import Services
from calbroker.store.cronofy import issue_client
from calbroker.workers.runner import Worker
from tests.compat.conftest import CallbackReceiver, CronofyWorld
from tests.fixtures.sandbox import SandboxControl
from tests.fixtures.waiting import eventually

ADELE = "adele.vance@contoso.com"  # Microsoft 365, Graph
ANNA = "anna.schmidt@fabrikam.com"  # Exchange on-premises, EWS
ALEX = "alex.wilber@contoso.com"


def sdk(world: CronofyWorld, **tokens: Any) -> pycronofy.Client:
    client = pycronofy.Client(client_id=world.client_id, client_secret=world.client_secret, **tokens)
    client.request_handler.base_url = world.base_url  # the one change a migrating application makes
    return client


@dataclass
class Authorized:
    client: pycronofy.Client
    sub: str
    calendar_id: str
    tokens: dict[str, Any]


def authorize(world: CronofyWorld, receiver: CallbackReceiver, tenant: str, email: str) -> Authorized:
    admin = sdk(world, access_token=world.service_account_tokens[tenant])
    callback = f"{receiver.url}/cronofy/callback/{tenant}"
    admin.authorize_with_service_account(email, "read_write", callback, state=f"state-{tenant}")
    arrived = receiver.next()
    assert arrived["path"] == f"/cronofy/callback/{tenant}"
    authorization = arrived["body"]["authorization"]
    assert authorization["state"] == f"state-{tenant}", authorization
    assert "code" in authorization, authorization
    user = sdk(world)
    tokens = user.get_authorization_from_code(authorization["code"], redirect_uri=callback)
    info = user.userinfo()
    [calendar] = user.list_calendars()
    return Authorized(
        user, info["sub"], calendar["calendar_id"], tokens | {"code": authorization["code"], "callback": callback}
    )


@pytest.fixture(scope="module")
def adele(cronofy_world: CronofyWorld, receiver: CallbackReceiver) -> Authorized:
    return authorize(cronofy_world, receiver, "contoso", ADELE)


@pytest.fixture(scope="module")
def anna(cronofy_world: CronofyWorld, receiver: CallbackReceiver) -> Authorized:
    return authorize(cronofy_world, receiver, "fabrikam", ANNA)


@pytest.fixture(scope="module")
def native(cronofy_world: CronofyWorld) -> Iterator[requests.Session]:
    """The same application on the native API, to compare answers with."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {cronofy_world.application.token}"
    yield session
    session.close()


def _future(days: int) -> tuple[datetime, datetime]:
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return start, start + timedelta(days=days)


def test_service_accounts_authorize_a_graph_and_an_ews_mailbox(
    adele: Authorized, anna: Authorized, cronofy_world: CronofyWorld
) -> None:
    assert adele.sub.startswith("acc_")
    assert anna.sub.startswith("acc_")
    assert adele.sub != anna.sub
    for who, provider, protocol in ((adele, "office365", "graph_api"), (anna, "exchange", "exchange_web_services")):
        [calendar] = who.client.list_calendars()
        assert calendar["calendar_id"].startswith("cal_")
        assert calendar["provider_name"] == provider
        assert not calendar["calendar_readonly"]
        [profile] = who.client.list_profiles()
        assert profile["profile_id"] == calendar["profile_id"]
        assert profile["profile_id"].startswith("pro_")
        assert who.client.userinfo()["cronofy.data"]["profiles"][0]["provider_protocol"] == protocol
    assert adele.client.account()["email"] == ADELE
    # A code works once: a replay is refused and revokes what the first redemption granted.
    replay = sdk(cronofy_world)
    with pytest.raises(PyCronofyRequestError) as refused:
        replay.get_authorization_from_code(adele.tokens["code"], redirect_uri=adele.tokens["callback"])
    assert refused.value.response.status_code == 400
    assert refused.value.response.json()["error"] == "invalid_grant"
    with pytest.raises(PyCronofyRequestError) as revoked:
        adele.client.list_calendars()
    assert revoked.value.response.status_code == 401


def test_refresh_and_revoke(cronofy_world: CronofyWorld, receiver: CallbackReceiver) -> None:
    fresh = authorize(cronofy_world, receiver, "contoso", ADELE)
    old_access = fresh.client.auth.access_token
    fresh.client.refresh_authorization()
    assert fresh.client.auth.access_token != old_access
    assert fresh.client.list_calendars()[0]["calendar_id"] == fresh.calendar_id
    fresh.client.revoke_authorization()
    with pytest.raises(PyCronofyRequestError) as after:
        sdk(cronofy_world, access_token=fresh.tokens["access_token"]).list_calendars()
    assert after.value.response.status_code == 401


@pytest.fixture(scope="module")
def reauthorized(cronofy_world: CronofyWorld, receiver: CallbackReceiver) -> dict[str, Authorized]:
    """Fresh grants (the replay test above revoked Adele's first one)."""
    return {
        "adele": authorize(cronofy_world, receiver, "contoso", ADELE),
        "anna": authorize(cronofy_world, receiver, "fabrikam", ANNA),
    }


def test_free_busy_across_graph_and_ews_matches_the_native_api(
    reauthorized: dict[str, Authorized], native: requests.Session, cronofy_world: CronofyWorld, sandbox: SandboxThread
) -> None:
    anchor: date = sandbox.state.anchor
    start = datetime.combine(anchor, datetime.min.time(), UTC)
    end = start + timedelta(days=7)
    statuses = {"busy": "busy", "tentative": "tentative", "oof": "unavailable"}
    for who, email in ((reauthorized["adele"], ADELE), (reauthorized["anna"], ANNA)):
        blocks = who.client.read_free_busy(from_date=anchor, to_date=anchor + timedelta(days=7), tzid="Etc/UTC").all()
        assert blocks, f"the seeded week of {email} has busy time"
        assert {b["calendar_id"] for b in blocks} == {who.calendar_id}
        answer = native.post(
            f"{cronofy_world.base_url.removesuffix('/compat/cronofy')}/v1/free_busy",
            json={"mailboxes": [email], "start": start.isoformat(), "end": end.isoformat()},
            timeout=60,
        ).json()["free_busy"][0]
        expected = sorted(
            (_utc(b["start"]), _utc(b["end"]), statuses[b["status"]]) for b in answer["busy"] if b["status"] in statuses
        )
        assert sorted((b["start"], b["end"], b["free_busy_status"]) for b in blocks) == expected


def _utc(value: str) -> str:
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_availability_with_two_participants_matches_the_native_api(
    reauthorized: dict[str, Authorized], native: requests.Session, cronofy_world: CronofyWorld
) -> None:
    adele, anna = reauthorized["adele"], reauthorized["anna"]
    # Two weeks: the seeded calendars hold a multi-day OOF near today, which can fill a shorter window.
    start, end = _future(14)
    period = {"start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "end": end.strftime("%Y-%m-%dT%H:%M:%SZ")}
    slots = adele.client.availability(
        participants=[{"members": [{"sub": adele.sub}, {"sub": anna.sub}], "required": "all"}],
        required_duration=30,
        start_interval=30,
        buffer={"before": 10},
        available_periods=[dict(period)],
        response_format="overlapping_slots",
        max_results=50,
    )
    answer = native.post(
        f"{cronofy_world.base_url.removesuffix('/compat/cronofy')}/v1/availability",
        json={
            "participants": [{"members": [{"email": ADELE}, {"email": ANNA}], "required": "all"}],
            "duration": {"minutes": 30},
            "start_interval": {"minutes": 30},
            "buffer": {"before": {"minutes": 10}},
            "query_periods": [period],
            "max_results": 50,
        },
        timeout=60,
    ).json()
    assert answer["member_errors"] == []
    assert slots, "two weeks of two calendars leave some common free half hours"
    assert [(s["start"], s["end"]) for s in slots] == [(_utc(s["start"]), _utc(s["end"])) for s in answer["slots"]]
    assert all({p["sub"] for p in s["participants"]} == {adele.sub, anna.sub} for s in slots)
    periods = adele.client.availability(
        participants=[{"members": [adele.sub, anna.sub], "required": 1}],
        required_duration=60,
        available_periods=[dict(period)],
    )
    assert periods
    assert all(p["participants"] for p in periods)


def _managed(who: Authorized, start: datetime, end: datetime) -> list[dict[str, Any]]:
    return list(
        who.client.read_events(
            calendar_ids=(who.calendar_id,),
            from_date=start.date(),
            to_date=(end + timedelta(days=1)).date(),
            tzid="Etc/UTC",
            only_managed=True,
        ).all()
    )


def test_an_event_with_teams_is_upserted_moved_and_deleted(
    reauthorized: dict[str, Authorized], sandbox_control: SandboxControl
) -> None:
    adele = reauthorized["adele"]
    start, _end = _future(2)
    start += timedelta(hours=10)
    event = {
        "event_id": "intro-call-1",
        "summary": "Intro call",
        "description": "Booked through the Cronofy SDK",
        "start": start,
        "end": start + timedelta(minutes=30),
        "tzid": "Europe/London",
        "attendees": {"invite": [{"email": ALEX, "display_name": "Alex Wilber"}]},
        "conferencing": {"profile_id": "default"},
    }
    adele.client.upsert_event(adele.calendar_id, dict(event))
    [booked] = _managed(adele, start, start)
    assert booked["event_id"] == "intro-call-1"
    assert booked["summary"] == "Intro call"
    assert booked["start"] == start.strftime("%Y-%m-%dT%H:%M:%SZ")
    join_url = booked["conferencing"]["join_url"]
    assert booked["conferencing"]["provider_name"] == "ms_teams"
    assert join_url.startswith("https://")
    assert [a["email"] for a in booked["attendees"]] == [ALEX]
    # Move it an hour later: the same event (same Teams link), at the new time.
    moved_start = start + timedelta(hours=1)
    adele.client.upsert_event(
        adele.calendar_id, {**event, "start": moved_start, "end": moved_start + timedelta(minutes=30)}
    )
    [moved] = _managed(adele, start, moved_start)
    assert moved["start"] == moved_start.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert moved["conferencing"]["join_url"] == join_url
    query = urlencode({"start": start.isoformat(), "end": (start + timedelta(hours=3)).isoformat()})
    upstream = [
        e
        for e in sandbox_control.get(f"/_sandbox/mailboxes/{ADELE}/events?{query}")["events"]
        if e["subject"] == "Intro call" and not e["is_cancelled"]
    ]
    assert len(upstream) == 1  # moved, not booked twice
    adele.client.delete_event(adele.calendar_id, "intro-call-1")
    assert _managed(adele, start, moved_start) == []
    adele.client.delete_event(adele.calendar_id, "intro-call-1")  # deleting again is fine, as in Cronofy


def test_paging_through_events_booked_in_batches(reauthorized: dict[str, Authorized]) -> None:
    """More events than a page holds, booked with `/v1/batch` (207, every entry 202), then read page by page."""
    adele = reauthorized["adele"]
    day = datetime.now(UTC).replace(hour=6, minute=0, second=0, microsecond=0) + timedelta(days=150)
    count = PAGE_SIZE + 5
    starts = [day + timedelta(days=i // 40, minutes=15 * (i % 40)) for i in range(count)]
    ids = [f"paging-{i:03d}" for i in range(count)]
    try:
        for chunk in range(0, count, 50):
            builder = BatchBuilder()
            for event_id, start in zip(ids[chunk : chunk + 50], starts[chunk : chunk + 50], strict=True):
                builder.upsert_event(
                    adele.calendar_id,
                    {
                        "event_id": event_id,
                        "summary": f"Paging {event_id}",
                        "start": _z(start),
                        "end": _z(start + timedelta(minutes=15)),
                    },
                )
            answer = adele.client.batch(builder)  # raises PyCronofyPartialSuccessError unless every entry is 202
            assert [entry.status() for entry in answer.entries] == [202] * len(builder.build())
        pages = adele.client.read_events(
            from_date=day.date(), to_date=(day + timedelta(days=4)).date(), tzid="Etc/UTC", only_managed=True
        )
        assert (pages.current, pages.total) == (1, math.ceil(count / PAGE_SIZE))
        assert len(pages.current_page()) == PAGE_SIZE
        assert pages.next_page_url.startswith(adele.client.request_handler.base_url + "/v1/events/pages/")
        events = pages.all()
        assert [e["event_id"] for e in events] == ids  # every event once, in start order
        assert [e["start"] for e in events] == [_z(start) for start in starts]
    finally:
        for chunk in range(0, count, 50):
            builder = BatchBuilder()
            for event_id in ids[chunk : chunk + 50]:
                builder.delete_event(adele.calendar_id, event_id)
            adele.client.batch(builder)
    assert (
        adele.client.read_events(
            from_date=day.date(), to_date=(day + timedelta(days=4)).date(), tzid="Etc/UTC", only_managed=True
        ).all()
        == []
    )


def _z(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- push channels -------------------------------------------------------------------------------------


class Notifications:
    """Push notifications as a Cronofy app receives them, delivered by a burst-mode worker on demand."""

    def __init__(self, receiver: CallbackReceiver, worker: Worker) -> None:
        self._receiver = receiver
        self._worker = worker

    async def next(self, kind: str) -> dict[str, Any]:
        """The next notification of `kind` (earlier ones of other kinds are skipped), running the worker
        until it arrives: Graph's notification reaches the API, a sync round runs, the outbox delivers."""

        async def arrived() -> dict[str, Any] | None:
            await self._worker.drain()
            while True:
                try:
                    found = self._receiver.received.get_nowait()
                except queue.Empty:
                    return None
                if found["body"]["notification"]["type"] == kind:
                    return found

        return await eventually(arrived, timeout_s=180, what=f"a {kind} notification")


def _read_changes(who: Authorized, since: str, day: date, **flags: Any) -> list[dict[str, Any]]:
    return list(
        who.client.read_events(
            calendar_ids=(who.calendar_id,),
            from_date=day,
            to_date=day + timedelta(days=3),
            tzid="Etc/UTC",
            last_modified=since,
            include_managed=True,
            **flags,
        ).all()
    )


def _valid(who: Authorized, world: CronofyWorld, secret: str, arrived: dict[str, Any]) -> bool:
    client = pycronofy.Client(client_id=world.client_id, client_secret=secret)
    return bool(client.hmac_valid(arrived["headers"].get("cronofy-hmac-sha256"), arrived["raw"].decode()))


async def test_a_push_channel_tells_of_changes_signed_and_they_read_with_last_modified(
    reauthorized: dict[str, Authorized],
    cronofy_world: CronofyWorld,
    compat_services: Services,
    compat_worker: Worker,
    sandbox_control: SandboxControl,
) -> None:
    adele = reauthorized["adele"]
    secret = cronofy_world.client_secret
    day = datetime.now(UTC).date() + timedelta(days=1)
    slot = datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=21)
    with CallbackReceiver() as receiver:
        push = Notifications(receiver, compat_worker)
        url = f"{receiver.url}/cronofy/push"
        channel = adele.client.create_notification_channel(url, calendar_ids=(adele.calendar_id,))
        assert channel["channel_id"].startswith("chn_")
        assert channel["callback_url"] == url
        assert channel["filters"]["calendar_ids"] == [adele.calendar_id]
        again = adele.client.create_notification_channel(url, calendar_ids=(adele.calendar_id,))
        assert again["channel_id"] == channel["channel_id"]  # an identical request answers the same channel
        assert [c["channel_id"] for c in adele.client.list_notification_channels()] == [channel["channel_id"]]

        verification = await push.next("verification")
        assert verification["path"] == "/cronofy/push"
        assert verification["body"]["channel"]["channel_id"] == channel["channel_id"]
        assert verification["headers"]["content-type"].startswith("application/json")
        assert adele.client.hmac_valid(verification["headers"]["cronofy-hmac-sha256"], verification["raw"].decode())
        assert not _valid(adele, cronofy_world, "cbs_" + "x" * 43, verification)

        # A change through calbroker: the event booked with the SDK shows up from changes_since.
        adele.client.upsert_event(
            adele.calendar_id,
            {"event_id": "push-1", "summary": "Pushed", "start": slot, "end": slot + timedelta(minutes=30)},
        )
        booked = await push.next("change")
        assert adele.client.hmac_valid(booked["headers"]["cronofy-hmac-sha256"], booked["raw"].decode())
        since = booked["body"]["notification"]["changes_since"]
        assert since.endswith("Z")
        # changes_since is floored to the second, so earlier changes of that second come along (at least once).
        [pushed] = [e for e in _read_changes(adele, since, day) if e.get("event_id") == "push-1"]
        assert (pushed["summary"], pushed["start"], pushed["deleted"]) == ("Pushed", _z(slot), False)
        assert _read_changes(adele, _z(datetime.now(UTC) + timedelta(seconds=1)), day) == []

        # A change in Outlook (the sandbox's own calendar): a new meeting, then it is moved.
        made = sandbox_control.post(
            f"/_sandbox/mailboxes/{ADELE}/events",
            {
                "subject": "Made in Outlook",
                "start": {"dateTime": (slot + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
                "end": {"dateTime": (slot + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            },
        )
        outlook = await push.next("change")
        # Other tests' events in this mailbox may come along (changes are read at least once): pick ours.
        [external] = [
            e
            for e in _read_changes(adele, outlook["body"]["notification"]["changes_since"], day)
            if "event_id" not in e and e["summary"] == "Made in Outlook"
        ]
        assert external["start"] == _z(slot + timedelta(hours=1))
        sandbox_control.patch(f"/_sandbox/mailboxes/{ADELE}/events/{made['id']}", {"shift_minutes": 30})
        moved = await push.next("change")
        [shifted] = [
            e
            for e in _read_changes(adele, moved["body"]["notification"]["changes_since"], day)
            if e["event_uid"] == external["event_uid"]
        ]
        assert shifted["start"] == _z(slot + timedelta(hours=1, minutes=30))
        # Moved out of the window read (a week later): only include_moved still shows it, where it is now.
        sandbox_control.patch(f"/_sandbox/mailboxes/{ADELE}/events/{made['id']}", {"shift_minutes": 7 * 24 * 60})
        away = (await push.next("change"))["body"]["notification"]["changes_since"]
        assert external["event_uid"] not in [e["event_uid"] for e in _read_changes(adele, away, day)]
        [elsewhere] = [
            e for e in _read_changes(adele, away, day, include_moved=True) if e["event_uid"] == external["event_uid"]
        ]
        assert elsewhere["start"] == _z(slot + timedelta(days=7, hours=1, minutes=30))
        assert elsewhere["deleted"] is False

        # The client secret is rotated: while the old one still signs, both signatures are sent.
        async with compat_services.pool.acquire() as conn:
            rotated = await issue_client(
                conn,
                compat_services.keyring,
                cronofy_world.application.application.id,
                actor="test",
                signing_overlap=timedelta(hours=1),
            )
        new_secret = rotated.client_secret

        # A deletion in Outlook: seen only with include_deleted, by the event_uid it had.
        sandbox_control.delete(f"/_sandbox/mailboxes/{ADELE}/events/{made['id']}")
        deleted = await push.next("change")
        assert len(deleted["headers"]["cronofy-hmac-sha256"].split(",")) == 2
        assert _valid(adele, cronofy_world, secret, deleted)
        assert _valid(adele, cronofy_world, new_secret, deleted)
        gone_since = deleted["body"]["notification"]["changes_since"]
        assert external["event_uid"] not in [e["event_uid"] for e in _read_changes(adele, gone_since, day)]
        [gone] = [e for e in _read_changes(adele, gone_since, day, include_deleted=True) if e["deleted"]]
        assert gone["event_uid"] == external["event_uid"]

        adele.client.close_notification_channel(channel["channel_id"])
        assert adele.client.list_notification_channels() == []
        adele.client.delete_event(adele.calendar_id, "push-1")
