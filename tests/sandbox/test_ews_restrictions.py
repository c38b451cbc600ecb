"""FindItem restrictions in the sandbox's EWS, driven by the real exchangelib: an extended property
marker is found without listing the folder, combined expressions work, and anything not modelled
falls back to the unfiltered answer."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from exchangelib import (
    BASIC,
    IMPERSONATION,
    Account,
    CalendarItem,
    Configuration,
    Credentials,
    EWSDateTime,
    EWSTimeZone,
)
from exchangelib import ExtendedProperty as EwsExtendedProperty
from exchangelib.protocol import CachingProtocol
from exchangelib.restriction import Q

from calbroker.sandbox import SandboxThread
from tests.fixtures.sandbox import SandboxControl

ERIN = "erin.baker@fabrikam.com"
CHICAGO = EWSTimeZone("America/Chicago")


class Tag(EwsExtendedProperty):  # type: ignore[misc]
    distinguished_property_set_id = "PublicStrings"
    property_name = "RestrictionTestTag"
    property_type = "String"


@pytest.fixture
def account(sandbox: SandboxThread, sandbox_control: SandboxControl, sandbox_ca_env: str) -> Iterator[Account]:
    CachingProtocol.clear_cache()
    CalendarItem.register("restriction_tag", Tag)
    service = next(a for a in sandbox_control.tenant("fabrikam")["service_accounts"] if a["access"] == "full")
    config = Configuration(
        service_endpoint=sandbox.ews_url,
        credentials=Credentials(service["user_principal_name"], service["password"]),
        auth_type=BASIC,
    )
    try:
        yield Account(ERIN, access_type=IMPERSONATION, autodiscover=False, config=config, default_timezone=CHICAGO)
    finally:
        CalendarItem.deregister("restriction_tag")
        CachingProtocol.clear_cache()


def test_find_item_evaluates_extended_property_and_subject_restrictions(
    account: Account, sandbox: SandboxThread, sandbox_control: SandboxControl
) -> None:
    anchor = sandbox.call(lambda state: state.anchor)
    day = EWSDateTime(anchor.year, anchor.month, anchor.day, 3, tzinfo=CHICAGO) + timedelta(days=181)
    run = uuid.uuid4().hex[:8]
    items = []
    for index, (tag, subject) in enumerate(((f"{run}-a", "Alpha"), (f"{run}-b", "Beta"), (None, "Alpha"))):
        item = CalendarItem(
            account=account,
            folder=account.calendar,
            subject=f"{subject} {run}",
            start=day + timedelta(hours=index),
            end=day + timedelta(hours=index, minutes=30),
        )
        if tag is not None:
            item.restriction_tag = tag
        item.save()
        items.append(item)
    try:
        stored = len(list(account.calendar.all().only("id")))
        sandbox_control.delete("/_sandbox/stats")
        found = list(account.calendar.filter(restriction_tag=f"{run}-a").only("subject", "restriction_tag"))
        assert [(i.subject, i.restriction_tag) for i in found] == [(f"Alpha {run}", f"{run}-a")]
        assert sandbox_control.count("ews:FindItem") == 1
        assert not list(account.calendar.filter(restriction_tag=f"{run}-missing").only("id"))
        either = account.calendar.filter(Q(restriction_tag=f"{run}-a") | Q(restriction_tag=f"{run}-b"))
        assert sorted(i.subject for i in either.only("subject")) == [f"Alpha {run}", f"Beta {run}"]
        untagged_alpha = account.calendar.filter(~Q(restriction_tag__exists=True), subject=f"Alpha {run}")
        assert [i.subject for i in untagged_alpha.only("subject")] == [f"Alpha {run}"]
        assert len(list(account.calendar.filter(subject__contains=run).only("id"))) == len(items)  # t:Contains
        # Not modelled (a comparison on a date): the sandbox answers unfiltered, as before restrictions existed.
        assert len(list(account.calendar.filter(start__gt=items[0].start).only("id"))) == stored
    finally:
        for item in items:
            item.delete()
