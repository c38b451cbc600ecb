"""EWS change tracking as the real exchangelib sees it: streaming subscriptions (with the affinity
cookie), GetStreamingEvents closing at its timeout, ErrorSubscriptionNotFound after a restart,
the hanging-connection limit, and SyncFolderItems paging, changes and rejected states."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from exchangelib import BASIC, IMPERSONATION, Account, Configuration, Credentials
from exchangelib.errors import ErrorExceededConnectionCount, ErrorInvalidSyncStateData, ErrorSubscriptionNotFound
from exchangelib.properties import CreatedEvent
from exchangelib.protocol import CachingProtocol

from calbroker.sandbox import SandboxThread
from tests.fixtures.sandbox import SandboxControl

ANNA = "anna.schmidt@fabrikam.com"
BEN = "ben.taylor@fabrikam.com"


@pytest.fixture
def accounts(sandbox: SandboxThread, sandbox_control: SandboxControl, sandbox_ca_env: str) -> Iterator[Any]:
    CachingProtocol.clear_cache()
    sandbox_control.tune(ews_stream_minute_s=1.0)
    service = sandbox.call(lambda s: s.directory.tenants["fabrikam"].service_accounts["svc-full"])
    config = Configuration(
        service_endpoint=sandbox.ews_url,
        credentials=Credentials(service.user_principal_name, service.password),
        auth_type=BASIC,
        max_connections=2,
    )

    def make(mailbox: str) -> Account:
        return Account(mailbox, access_type=IMPERSONATION, autodiscover=False, config=config)

    yield make
    CachingProtocol.clear_cache()


def outlook_edit(control: SandboxControl, mailbox: str, day: int) -> dict[str, Any]:
    made: dict[str, Any] = control.post(
        f"/_sandbox/mailboxes/{mailbox}/events",
        {
            "subject": "Streamed",
            "start": {"dateTime": f"2027-05-{day:02d}T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": f"2027-05-{day:02d}T09:30:00", "timeZone": "UTC"},
        },
    )
    return made


def test_one_stream_carries_a_group_of_mailboxes_and_closes_at_its_timeout(
    accounts: Any, sandbox_control: SandboxControl
) -> None:
    anna, ben = accounts(ANNA), accounts(BEN)
    first = anna.calendar.subscribe_to_streaming()
    assert anna.affinity_cookie  # the mailbox server's X-BackEndOverrideCookie
    ben.affinity_cookie = anna.affinity_cookie
    second = ben.calendar.subscribe_to_streaming()
    made = outlook_edit(sandbox_control, BEN, 3)
    try:
        notifications = list(anna.calendar.get_streaming_events([first, second], connection_timeout=1))
    finally:
        sandbox_control.delete(f"/_sandbox/mailboxes/{BEN}/events/{made['id']}")
    assert {n.subscription_id for n in notifications} == {second}
    kinds = [type(e) for n in notifications for e in n.events]
    assert CreatedEvent in kinds
    created = next(e for n in notifications for e in n.events if isinstance(e, CreatedEvent))
    assert created.item_id is not None
    # The generator ended: the server closed the stream at ConnectionTimeout.
    assert sandbox_control.count("ews:GetStreamingEvents") == 1
    anna.calendar.unsubscribe(first)
    ben.calendar.unsubscribe(second)


def test_a_restarted_server_has_forgotten_every_subscription(accounts: Any, sandbox_control: SandboxControl) -> None:
    anna = accounts(ANNA)
    subscription = anna.calendar.subscribe_to_streaming()
    assert sandbox_control.post("/_sandbox/ews/restart")["dropped"] >= 1
    with pytest.raises(ErrorSubscriptionNotFound):
        list(anna.calendar.get_streaming_events(subscription, connection_timeout=1))


def test_streaming_is_refused_past_the_hanging_connection_limit(accounts: Any, sandbox_control: SandboxControl) -> None:
    anna = accounts(ANNA)
    subscription = anna.calendar.subscribe_to_streaming()
    sandbox_control.tune(ews_hanging_connection_limit=0)
    with pytest.raises(ErrorExceededConnectionCount):
        list(anna.calendar.get_streaming_events(subscription, connection_timeout=1))
    anna.calendar.unsubscribe(subscription)


def test_sync_folder_items_pages_then_reports_changes(accounts: Any, sandbox_control: SandboxControl) -> None:
    ben = accounts(BEN)
    sandbox_control.tune(ews_sync_max_changes=7)
    initial = list(ben.calendar.sync_items(max_changes_returned=512, only_fields=["uid", "start", "end", "type"]))
    assert initial
    assert {kind for kind, _ in initial} == {"create"}
    calls = sandbox_control.count("ews:SyncFolderItems")
    assert calls == -(-len(initial) // 7) + (len(initial) % 7 == 0)  # capped pages, then the empty last one
    state = ben.calendar.item_sync_state
    assert state

    made = outlook_edit(sandbox_control, BEN, 4)
    sandbox_control.patch(f"/_sandbox/mailboxes/{BEN}/events/{made['id']}", {"shift_minutes": 30})
    created = list(ben.calendar.sync_items(sync_state=state, only_fields=["start", "end"]))
    assert [kind for kind, _ in created] == ["create"]  # created then moved: one create, as it is now
    assert (created[0][1].start.hour, created[0][1].start.minute) == (9, 30)
    state = ben.calendar.item_sync_state

    sandbox_control.delete(f"/_sandbox/mailboxes/{BEN}/events/{made['id']}")
    deleted = list(ben.calendar.sync_items(sync_state=state))
    assert [kind for kind, _ in deleted] == ["delete"]
    state = ben.calendar.item_sync_state
    assert list(ben.calendar.sync_items(sync_state=state)) == []

    sandbox_control.post("/_sandbox/ews/sync/expire")
    with pytest.raises(ErrorInvalidSyncStateData):
        list(ben.calendar.sync_items(sync_state=state))


def test_an_existing_item_changed_then_deleted_is_reported_once(accounts: Any, sandbox_control: SandboxControl) -> None:
    ben = accounts(BEN)
    made = outlook_edit(sandbox_control, BEN, 6)
    list(ben.calendar.sync_items(only_fields=["uid"]))
    state = ben.calendar.item_sync_state
    sandbox_control.patch(f"/_sandbox/mailboxes/{BEN}/events/{made['id']}", {"shift_minutes": 15})
    updated = list(ben.calendar.sync_items(sync_state=state, only_fields=["start"]))
    assert [kind for kind, _ in updated] == ["update"]
    sandbox_control.delete(f"/_sandbox/mailboxes/{BEN}/events/{made['id']}")
    assert [kind for kind, _ in ben.calendar.sync_items(sync_state=ben.calendar.item_sync_state)] == ["delete"]
