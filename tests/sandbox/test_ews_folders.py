"""The folder tree through exchangelib: secondary calendars under Calendar (FindFolder, GetFolder),
their items, what a calendar-only service account sees, and distribution lists (ResolveNames, ExpandDL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from exchangelib import BASIC, IMPERSONATION, Account, CalendarItem, Configuration, Credentials, EWSDateTime
from exchangelib import UTC as EWS_UTC
from exchangelib.folders import Calendar
from exchangelib.protocol import CachingProtocol, FailFast

from calbroker.sandbox import SandboxThread

ANNA = "anna.schmidt@fabrikam.com"  # seed: has the secondary calendar "Projects"
BEN = "ben.taylor@fabrikam.com"


@pytest.fixture(autouse=True)
def _fresh_protocols(sandbox_ca_env: str) -> Iterator[None]:
    CachingProtocol.clear_cache()
    yield
    CachingProtocol.clear_cache()


def account(sandbox: SandboxThread, mailbox: str, service_account: str = "svc-full") -> Account:
    secret = sandbox.call(lambda s: s.directory.tenants["fabrikam"].service_accounts[service_account].password)
    config = Configuration(
        service_endpoint=sandbox.ews_url,
        credentials=Credentials(f"FABRIKAM\\{service_account}", secret),
        auth_type=BASIC,
        retry_policy=FailFast(),
    )
    return Account(mailbox, access_type=IMPERSONATION, autodiscover=False, config=config, default_timezone=EWS_UTC)


def week_start(sandbox: SandboxThread) -> EWSDateTime:
    anchor = sandbox.call(lambda s: s.anchor)
    return EWSDateTime(anchor.year, anchor.month, anchor.day, tzinfo=EWS_UTC)


def test_secondary_calendars_are_subfolders_of_calendar(sandbox: SandboxThread) -> None:
    acct = account(sandbox, ANNA)

    children = list(acct.calendar.children)
    projects = acct.calendar / "Projects"
    start = week_start(sandbox)
    items = list(projects.view(start=start, end=start + timedelta(days=28)).only("subject"))

    assert [c.name for c in children] == ["Projects"]
    assert isinstance(projects, Calendar)
    assert projects.folder_class == "IPF.Appointment"
    assert acct.calendar.child_folder_count == 1
    # TotalCount counts the folder's own items: the default calendar's, without the secondary one's.
    assert acct.calendar.total_count == sandbox.call(lambda s: len(s.calendars.events(ANNA)))
    assert projects.total_count == 3
    assert {i.subject for i in items} == {"Milestone review", "Release window", "Site visit"}
    calendars = {f.name for f in acct.root.walk() if f.folder_class == "IPF.Appointment"}
    assert calendars == {"Calendar", "Projects"}


def test_items_saved_in_a_secondary_calendar_stay_out_of_the_default_one(sandbox: SandboxThread) -> None:
    acct = account(sandbox, ANNA)
    projects = acct.calendar / "Projects"
    start = week_start(sandbox) + timedelta(days=70, hours=9)
    item = CalendarItem(
        account=acct, folder=projects, subject="Go-live rehearsal", start=start, end=start + timedelta(hours=2)
    )
    item.save()
    try:
        in_projects = [i.subject for i in projects.view(start=start, end=start + timedelta(days=1))]
        in_default = [i.subject for i in acct.calendar.view(start=start, end=start + timedelta(days=1))]
        (view,) = acct.protocol.get_free_busy_info(
            accounts=[(ANNA, "Required", False)], start=start, end=start + timedelta(hours=2), requested_view="Detailed"
        )
    finally:
        item.delete()

    assert in_projects == ["Go-live rehearsal"]
    assert "Go-live rehearsal" not in in_default
    assert all(e.details is None or e.details.subject != "Go-live rehearsal" for e in view.calendar_events or [])


def test_a_calendar_only_account_walks_to_the_calendars_and_no_further(sandbox: SandboxThread) -> None:
    acct = account(sandbox, ANNA, "svc-restricted")

    names = {f.name for f in acct.root.walk()}

    assert {"Calendar", "Projects"} <= names
    assert not names & {"Inbox", "Contacts", "Sent Items"}


def test_distribution_lists_resolve_and_expand(sandbox: SandboxThread) -> None:
    protocol = account(sandbox, ANNA).protocol
    assert protocol.version

    ((resolved, _),) = protocol.resolve_names(["Engineering"], return_full_contact_data=True)
    members = list(protocol.expand_dl("engineering@fabrikam.com"))

    assert resolved.email_address == "engineering@fabrikam.com"
    assert resolved.mailbox_type == "PublicDL"
    assert ANNA in {m.email_address for m in members}
    assert all(m.mailbox_type == "Mailbox" for m in members)
    assert BEN not in {m.email_address for m in members}  # Sales, not Engineering
