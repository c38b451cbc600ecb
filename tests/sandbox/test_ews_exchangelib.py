"""The real exchangelib against the sandbox's EWS endpoint: flows, access levels, faults, limits.

exchangelib is synchronous (requests), so these tests are plain functions; the sandbox answers from
its own thread. Each test clears exchangelib's process-wide Protocol cache (upstream.md, Part 2B).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta

import pytest
from exchangelib import (
    BASIC,
    DELEGATE,
    IMPERSONATION,
    NTLM,
    Account,
    Attendee,
    CalendarItem,
    Configuration,
    Credentials,
    EWSDateTime,
    EWSTimeZone,
    ExtendedProperty,
    FailFast,
    FaultTolerance,
    Mailbox,
)
from exchangelib.errors import (
    ErrorAccessDenied,
    ErrorImpersonateUserDenied,
    ErrorItemNotFound,
    ErrorMailboxDataArrayTooBig,
    ErrorMailRecipientNotFound,
    ErrorNameResolutionNoResults,
    ErrorNonExistentMailbox,
    ErrorServerBusy,
    ErrorTimeIntervalTooBig,
    UnauthorizedError,
)
from exchangelib.properties import FreeBusyViewOptions, MailboxData, TimeWindow, TimeZone
from exchangelib.protocol import CachingProtocol
from exchangelib.services import GetUserAvailability

from calbroker.sandbox import SandboxThread
from calbroker.sandbox.events import Change
from tests.fixtures.sandbox import SandboxControl

BERLIN = EWSTimeZone("Europe/Berlin")
ANNA = "anna.schmidt@fabrikam.com"  # seed: in the impersonation scope, Europe/Berlin
BEN = "ben.taylor@fabrikam.com"
FRANK = "frank.miller@fabrikam.com"  # seed: outside the impersonation scope
ROOM = "spree@fabrikam.com"


class CalbrokerEventId(ExtendedProperty):
    """The idempotency marker calbroker stores on the events it creates."""

    distinguished_property_set_id = "PublicStrings"
    property_name = "CalbrokerEventId"
    property_type = "String"


class EwsSandbox:
    """The session sandbox (HTTPS, its own CA, own thread) seen from an EWS client's side.

    The sandbox is shared by the whole test session, so these tests never reset it: each writes at
    its own times and subjects, and `sandbox_control` clears faults and counters around every test.
    """

    def __init__(self, server: SandboxThread, control: SandboxControl) -> None:
        self._server = server
        self.control = control
        self.endpoint = server.ews_url
        self.anchor: date = server.call(lambda s: s.anchor)

    def credentials(self, service_account: str) -> tuple[str, str]:
        account = self._server.call(lambda s: s.directory.tenants["fabrikam"].service_accounts[service_account])
        return account.user_principal_name, account.password

    @contextmanager
    def limits(self, **settings: object) -> Iterator[None]:
        """Change sandbox settings for one test, with fresh throttling counters; restored after."""
        before = self.control.get("/_sandbox/settings")
        self._server.call(lambda s: s.throttle.reset())
        self.control.patch("/_sandbox/settings", settings)
        try:
            yield
        finally:
            self.control.patch("/_sandbox/settings", {k: before[k] for k in settings})
            self._server.call(lambda s: s.throttle.reset())

    def inject_fault(self, rule: dict[str, object]) -> None:
        self.control.fault(**rule)

    def route_count(self, route: str) -> int:
        return self.control.count(route)

    def change_sequence(self) -> int:
        return self._server.call(lambda s: s.calendars.sequence)

    def changes_since(self, mailbox: str, sequence: int) -> list[Change]:
        return self._server.call(lambda s: s.calendars.changes_since(mailbox, sequence))


@pytest.fixture
def ews_sandbox(sandbox: SandboxThread, sandbox_control: SandboxControl, sandbox_ca_env: str) -> Iterator[EwsSandbox]:
    # sandbox_ca_env points REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE at the sandbox CA (they override verify=).
    # exchangelib caches Protocols per (endpoint, credentials): clear it so retry policies don't leak.
    CachingProtocol.clear_cache()
    yield EwsSandbox(sandbox, sandbox_control)
    CachingProtocol.clear_cache()


@pytest.fixture(scope="module", autouse=True)
def _extended_property() -> Iterator[None]:
    CalendarItem.register("calbroker_id", CalbrokerEventId)
    yield
    CalendarItem.deregister("calbroker_id")


def account(sandbox: EwsSandbox, mailbox: str, service_account: str = "svc-full", **config: object) -> Account:
    user, password = sandbox.credentials(service_account)
    cfg = Configuration(
        service_endpoint=sandbox.endpoint,
        credentials=Credentials(user, password),
        auth_type=BASIC,
        **config,
    )
    return Account(mailbox, access_type=IMPERSONATION, autodiscover=False, config=cfg, default_timezone=BERLIN)


def week_start(sandbox: EwsSandbox) -> EWSDateTime:
    anchor = sandbox.anchor
    return EWSDateTime(anchor.year, anchor.month, anchor.day, tzinfo=BERLIN)


# --- connecting --------------------------------------------------------------------------------


def test_version_probe_and_auth_guessing_pick_ntlm(ews_sandbox: EwsSandbox) -> None:
    user, password = ews_sandbox.credentials("svc-full")
    cfg = Configuration(service_endpoint=ews_sandbox.endpoint, credentials=Credentials(user, password))
    acct = Account(ANNA, access_type=IMPERSONATION, autodiscover=False, config=cfg)

    assert acct.protocol.auth_type == NTLM  # guessed from the 401's WWW-Authenticate headers
    assert acct.version.build.major_version == 15
    assert acct.version.api_version == "Exchange2016"
    assert acct.version.fullname == "Microsoft Exchange Server 2019"
    assert acct.calendar.name == "Calendar"  # a real NTLM handshake, then an authenticated connection


@pytest.mark.parametrize("style", ["domain", "upn"])
def test_ntlm_checks_the_password(ews_sandbox: EwsSandbox, style: str) -> None:
    upn, password = ews_sandbox.credentials("svc-restricted")
    user = "FABRIKAM\\svc-restricted" if style == "domain" else upn
    good = Configuration(service_endpoint=ews_sandbox.endpoint, credentials=Credentials(user, password), auth_type=NTLM)
    assert Account(ANNA, access_type=IMPERSONATION, autodiscover=False, config=good).calendar.name == "Calendar"

    CachingProtocol.clear_cache()
    bad = Configuration(
        service_endpoint=ews_sandbox.endpoint,
        credentials=Credentials(user, password + "x"),
        auth_type=NTLM,
        retry_policy=FailFast(),
    )
    with pytest.raises(UnauthorizedError):
        Account(ANNA, access_type=IMPERSONATION, autodiscover=False, config=bad).calendar  # noqa: B018


def test_wrong_password_is_unauthorized(ews_sandbox: EwsSandbox) -> None:
    user, _ = ews_sandbox.credentials("svc-full")
    cfg = Configuration(
        service_endpoint=ews_sandbox.endpoint,
        credentials=Credentials(user, "not-the-password"),
        auth_type=BASIC,
        retry_policy=FailFast(),
    )
    with pytest.raises(UnauthorizedError):
        Account(ANNA, access_type=IMPERSONATION, autodiscover=False, config=cfg).calendar  # noqa: B018


# --- free/busy ---------------------------------------------------------------------------------


def test_free_busy_merged_and_detailed_for_several_mailboxes(ews_sandbox: EwsSandbox) -> None:
    acct = account(ews_sandbox, ANNA)
    start = week_start(ews_sandbox)
    accounts = [(acct, "Required", False), (BEN, "Required", False), ("nobody@fabrikam.com", "Optional", False)]

    merged = list(
        acct.protocol.get_free_busy_info(
            accounts=accounts, start=start, end=start + timedelta(days=5), requested_view="FreeBusyMerged"
        )
    )
    detailed = list(
        acct.protocol.get_free_busy_info(
            accounts=accounts, start=start, end=start + timedelta(days=5), requested_view="DetailedMerged"
        )
    )

    anna, ben, nobody = merged
    assert anna.view_type == "FreeBusyMerged"
    assert len(anna.merged) == 5 * 24 * 2  # 30-minute slots
    assert set(anna.merged) <= set("012345")
    assert anna.calendar_events
    assert all(e.details is None for e in anna.calendar_events)
    assert isinstance(nobody, ErrorMailRecipientNotFound)
    assert ben.working_hours
    assert ben.working_hours_timezone is not None
    # Busy digits agree with the events: every busy event covers at least one busy slot.
    for event in anna.calendar_events:
        if event.busy_type == "Busy":
            first = int((event.start - start).total_seconds() // 1800)
            assert anna.merged[max(first, 0)] in "23"

    anna_detailed = detailed[0]
    assert anna_detailed.view_type == "DetailedMerged"
    assert any(e.details is not None and e.details.subject for e in anna_detailed.calendar_events)
    # Event times come back as local times of the request's time zone, on the same instants.
    assert {(e.start, e.end) for e in anna.calendar_events} == {(e.start, e.end) for e in anna_detailed.calendar_events}


def test_free_busy_only_account_gets_availability_without_details(ews_sandbox: EwsSandbox) -> None:
    acct = account(ews_sandbox, ANNA, "svc-freebusy")
    start = week_start(ews_sandbox)

    (view,) = acct.protocol.get_free_busy_info(
        accounts=[(ANNA, "Required", False)], start=start, end=start + timedelta(days=2)
    )

    assert view.view_type == "FreeBusyMerged"  # DetailedMerged asked, free/busy time only granted
    assert all(e.details is None for e in view.calendar_events or [])


def test_free_busy_limits_are_enforced(ews_sandbox: EwsSandbox) -> None:
    acct = account(ews_sandbox, ANNA)
    start = week_start(ews_sandbox)

    with pytest.raises(ErrorTimeIntervalTooBig):
        list(
            acct.protocol.get_free_busy_info(
                accounts=[(ANNA, "Required", False)], start=start, end=start + timedelta(days=43)
            )
        )
    assert (
        len(
            list(
                acct.protocol.get_free_busy_info(
                    accounts=[(ANNA, "Required", False)], start=start, end=start + timedelta(days=42)
                )
            )
        )
        == 1
    )

    # exchangelib splits mailboxes into chunks of 100 itself; a larger chunk shows the server's limit.
    service = GetUserAvailability(acct.protocol, chunk_size=200)
    options = FreeBusyViewOptions(
        time_window=TimeWindow(start=start, end=start + timedelta(days=1)), requested_view="FreeBusy"
    )
    mailboxes = [MailboxData(email=ANNA, attendee_type="Required", exclude_conflicts=False)]
    with pytest.raises(ErrorMailboxDataArrayTooBig):
        list(
            service.call(
                tzinfo=BERLIN, mailbox_data=mailboxes * 101, timezone=TimeZone(bias=-60), free_busy_view_options=options
            )
        )
    assert (
        len(
            list(
                service.call(
                    tzinfo=BERLIN,
                    mailbox_data=mailboxes * 100,
                    timezone=TimeZone(bias=-60),
                    free_busy_view_options=options,
                )
            )
        )
        == 100
    )


# --- calendar items --------------------------------------------------------------------------------


def test_calendar_view_expands_recurring_series(ews_sandbox: EwsSandbox) -> None:
    acct = account(ews_sandbox, ANNA)
    start = week_start(ews_sandbox)

    items = list(acct.calendar.view(start=start, end=start + timedelta(days=14)))

    occurrences = [i for i in items if i.type == "Occurrence"]
    assert occurrences, "the seed gives every user weekly series"
    series = {}
    for item in occurrences:
        series.setdefault(item.uid, []).append(item)
    assert any(len(v) >= 2 for v in series.values()), "a weekly series shows up once per week"
    assert all(i.start < start + timedelta(days=14) and i.end > start for i in items)
    assert len({i.id for i in items}) == len(items)

    limited = list(acct.calendar.view(start=start, end=start + timedelta(days=14), max_items=3))
    assert [i.id for i in limited] == [i.id for i in items[:3]]


def test_meeting_lifecycle_reaches_attendees_and_room(ews_sandbox: EwsSandbox) -> None:
    anna, ben = account(ews_sandbox, ANNA), account(ews_sandbox, BEN)
    day = week_start(ews_sandbox) + timedelta(days=2)
    item = CalendarItem(
        account=anna,
        folder=anna.calendar,
        subject="Quarterly planning",
        start=day + timedelta(hours=6, minutes=30),  # early: the room is free
        end=day + timedelta(hours=7, minutes=30),
        body="Agenda to follow",
        location="Conf Room Spree",
        required_attendees=[BEN],
        resources=[Attendee(mailbox=Mailbox(email_address=ROOM))],
        calbroker_id="evt-42",
    )
    item.save(send_meeting_invitations="SendToAllAndSaveCopy")

    stored = anna.calendar.get(id=item.id)
    assert stored.subject == "Quarterly planning"
    assert stored.calbroker_id == "evt-42"
    assert stored.organizer.email_address == ANNA
    assert [(a.mailbox.email_address, a.response_type) for a in stored.resources] == [(ROOM, "Accept")]
    assert [a.mailbox.email_address for a in stored.required_attendees] == [BEN]

    def bens_copy() -> CalendarItem | None:
        found = [i for i in ben.calendar.view(start=day, end=day + timedelta(days=1)) if "Quarterly" in i.subject]
        return found[0] if found else None

    copy = bens_copy()
    assert copy is not None
    assert copy.my_response_type == "NoResponseReceived"
    assert copy.start == stored.start

    stored.subject = "Quarterly planning (moved)"
    stored.start += timedelta(hours=1)
    stored.end += timedelta(hours=1)
    stored.save(update_fields=["subject", "start", "end"], send_meeting_invitations="SendToAllAndSaveCopy")
    copy = bens_copy()
    assert copy is not None
    assert copy.subject == "Quarterly planning (moved)"
    assert copy.start == stored.start

    stored.delete(send_meeting_cancellations="SendToAllAndSaveCopy")
    copy = bens_copy()
    assert copy is not None
    assert copy.is_cancelled
    assert copy.subject.startswith("Canceled: ")
    with pytest.raises(ErrorItemNotFound):
        anna.calendar.get(id=item.id)


def test_attendee_accepts_and_organizer_cancels_with_response_objects(ews_sandbox: EwsSandbox) -> None:
    anna, ben = account(ews_sandbox, ANNA), account(ews_sandbox, BEN)
    day = week_start(ews_sandbox) + timedelta(days=4)
    meeting = CalendarItem(
        account=anna,
        folder=anna.calendar,
        subject="Contract review",
        start=day + timedelta(hours=7),
        end=day + timedelta(hours=8),
        required_attendees=[BEN],
    )
    meeting.save(send_meeting_invitations="SendToAllAndSaveCopy")
    (copy,) = [i for i in ben.calendar.view(start=day, end=day + timedelta(days=1)) if i.subject == "Contract review"]

    accepted = copy.accept(body="See you there")  # CreateItem with t:AcceptItem, saved to Sent Items
    organizer_view = anna.calendar.get(id=meeting.id)
    assert [(a.mailbox.email_address, a.response_type) for a in organizer_view.required_attendees] == [(BEN, "Accept")]
    assert accepted.id == copy.id  # Exchange answers the calendar item the response was for

    cancelled_id = organizer_view.cancel(body="Postponed")  # CreateItem with t:CancelCalendarItem
    assert cancelled_id.id == meeting.id
    (cancelled,) = [
        i for i in ben.calendar.view(start=day, end=day + timedelta(days=1)) if "Contract review" in i.subject
    ]
    assert cancelled.is_cancelled


def test_changes_through_ews_reach_change_listeners(ews_sandbox: EwsSandbox) -> None:
    anna = account(ews_sandbox, ANNA)
    day = week_start(ews_sandbox) + timedelta(days=3)
    before = ews_sandbox.change_sequence()

    CalendarItem(
        account=anna,
        folder=anna.calendar,
        subject="Focus",
        start=day + timedelta(hours=6),
        end=day + timedelta(hours=7),
    ).save(send_meeting_invitations="SendToNone")

    changes = ews_sandbox.changes_since(ANNA, before)
    assert [c.change_type for c in changes] == ["created"]


# --- directory -------------------------------------------------------------------------------------


def test_resolve_names_and_rooms(ews_sandbox: EwsSandbox) -> None:
    protocol = account(ews_sandbox, ANNA).protocol
    assert protocol.version  # exchangelib needs the version probe before ResolveNames

    ((mailbox, contact),) = protocol.resolve_names(["anna.schmidt"], return_full_contact_data=True)
    assert mailbox.email_address == ANNA
    assert contact.display_name == "Anna Schmidt"
    (missing,) = protocol.resolve_names(["no-such-person"])
    assert isinstance(missing, ErrorNameResolutionNoResults)

    room_lists = list(protocol.get_roomlists())
    assert room_lists
    assert all(r.mailbox_type == "PublicDL" for r in room_lists)
    rooms = [room.email_address for r in room_lists for room in protocol.get_rooms(r.email_address)]
    assert ROOM in rooms


# --- access levels and errors ------------------------------------------------------------------


def test_impersonation_is_denied_without_the_role_and_outside_the_scope(ews_sandbox: EwsSandbox) -> None:
    with pytest.raises(ErrorImpersonateUserDenied):
        account(ews_sandbox, ANNA, "svc-freebusy").calendar  # noqa: B018
    with pytest.raises(ErrorImpersonateUserDenied):
        account(ews_sandbox, ANNA, "svc-norights").calendar  # noqa: B018
    with pytest.raises(ErrorImpersonateUserDenied):
        account(ews_sandbox, FRANK, "svc-full").calendar  # noqa: B018


def test_impersonating_an_unknown_mailbox(ews_sandbox: EwsSandbox) -> None:
    with pytest.raises(ErrorNonExistentMailbox):
        account(ews_sandbox, "ghost@fabrikam.com").calendar  # noqa: B018
    # Mailboxes of another organisation (Exchange Online tenant) do not exist on this server either.
    with pytest.raises(ErrorNonExistentMailbox):
        account(ews_sandbox, "adele.vance@contoso.com").calendar  # noqa: B018


def test_free_busy_account_cannot_open_items_as_a_delegate(ews_sandbox: EwsSandbox) -> None:
    user, password = ews_sandbox.credentials("svc-freebusy")
    cfg = Configuration(service_endpoint=ews_sandbox.endpoint, credentials=Credentials(user, password), auth_type=BASIC)
    delegate = Account(ANNA, access_type=DELEGATE, autodiscover=False, config=cfg, default_timezone=BERLIN)
    start = week_start(ews_sandbox)

    with pytest.raises(ErrorAccessDenied):
        list(delegate.calendar.view(start=start, end=start + timedelta(days=1)))


def test_restricted_account_reaches_calendars_only(ews_sandbox: EwsSandbox) -> None:
    acct = account(ews_sandbox, ANNA, "svc-restricted")
    start = week_start(ews_sandbox)

    assert list(acct.calendar.view(start=start, end=start + timedelta(days=1))) is not None
    with pytest.raises(ErrorAccessDenied):
        list(acct.inbox.all()[:1])
    # The full account may open the inbox (the sandbox models no mail: it is empty).
    assert list(account(ews_sandbox, ANNA).inbox.all()[:1]) == []


def test_server_busy_fails_fast_with_the_back_off(ews_sandbox: EwsSandbox) -> None:
    acct = account(ews_sandbox, ANNA, retry_policy=FailFast())
    ews_sandbox.inject_fault({"route": "ews:GetFolder", "retry_after": 2.5, "count": 1})

    with pytest.raises(ErrorServerBusy) as raised:
        acct.calendar  # noqa: B018
    assert raised.value.back_off == 2.5


def test_server_busy_back_off_is_honoured_under_fault_tolerance(ews_sandbox: EwsSandbox) -> None:
    acct = account(ews_sandbox, ANNA, retry_policy=FaultTolerance(max_wait=5))
    start = week_start(ews_sandbox)
    acct.calendar  # noqa: B018  (folder lookups first, so only FindItem is throttled below)
    ews_sandbox.inject_fault({"route": "ews:FindItem", "mailbox": ANNA, "retry_after": 0.3, "count": 2})
    calls_before = ews_sandbox.route_count("ews:FindItem")

    began = time.monotonic()
    items = list(acct.calendar.view(start=start, end=start + timedelta(days=1)))
    elapsed = time.monotonic() - began

    assert items is not None
    assert ews_sandbox.route_count("ews:FindItem") - calls_before == 3  # two refusals, then the answer
    assert elapsed >= 0.6  # slept the server-given 300 ms twice


def test_per_mailbox_rate_limit_answers_server_busy(ews_sandbox: EwsSandbox) -> None:
    acct = account(ews_sandbox, ANNA, retry_policy=FailFast())
    start = week_start(ews_sandbox)
    end = start + timedelta(days=7)
    acct.calendar  # noqa: B018  (the folder lookups happen before the limit)

    with ews_sandbox.limits(mailbox_rate_limit=2, mailbox_rate_window_s=60):
        list(acct.calendar.view(start=start, end=end))  # FindItem + GetItem: the whole budget
        with pytest.raises(ErrorServerBusy) as raised:
            list(acct.calendar.view(start=start, end=end))
        # Another mailbox has its own budget (two folder lookups).
        assert account(ews_sandbox, BEN).calendar.name == "Calendar"

    assert raised.value.back_off is not None
    assert raised.value.back_off > 0


def test_deleted_item_is_not_found(ews_sandbox: EwsSandbox) -> None:
    anna = account(ews_sandbox, ANNA)
    day = week_start(ews_sandbox) + timedelta(days=4)
    item = CalendarItem(
        account=anna, folder=anna.calendar, subject="Temp", start=day + timedelta(hours=5), end=day + timedelta(hours=6)
    )
    item.save(send_meeting_invitations="SendToNone")
    item_id = item.id
    item.delete()

    (result,) = anna.fetch(ids=[(item_id, None)])
    assert isinstance(result, ErrorItemNotFound)
