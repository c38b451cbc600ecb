"""The seeded world: deterministic (same seed → byte-identical calendars) and varied enough to
exercise every calendar feature the broker must handle."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from calbroker.sandbox.directory import AppCertificate, EwsAccess, ExchangeLocation
from calbroker.sandbox.events import EventType, Sensitivity, ShowAs
from calbroker.sandbox.seed import DEFAULT_ANCHOR, WELL_KNOWN, build_calendars, build_directory
from calbroker.sandbox.tls import load_key_material


def _clock() -> datetime:
    return datetime(2026, 11, 23, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> AppCertificate:
    return load_key_material(Path(tmp_path_factory.mktemp("keys")), "127.0.0.1").app_certificate


def test_same_seed_gives_byte_identical_calendars(certificate: AppCertificate) -> None:
    first = build_calendars(build_directory(7, certificate), 7, DEFAULT_ANCHOR, _clock).snapshot()
    second = build_calendars(build_directory(7, certificate), 7, DEFAULT_ANCHOR, _clock).snapshot()
    other = build_calendars(build_directory(8, certificate), 8, DEFAULT_ANCHOR, _clock).snapshot()
    assert first == second
    assert first != other
    assert len(first) > 1_000_000  # thousands of items, not a toy


def test_credentials_are_stable_across_seeds(certificate: AppCertificate) -> None:
    zero, one = build_directory(0, certificate), build_directory(1, certificate)
    assert {a.client_id: [s.value for s in a.secrets] for a in zero.apps.values()} == {
        a.client_id: [s.value for s in a.secrets] for a in one.apps.values()
    }
    assert zero.tenants["contoso"].id == one.tenants["contoso"].id
    assert {m.email for m in zero.tenants["contoso"].users()} != {m.email for m in one.tenants["contoso"].users()}
    for email in WELL_KNOWN.values():
        assert zero.mailbox(email) is not None
        assert one.mailbox(email) is not None


def test_tenants_scope_groups_and_service_accounts(certificate: AppCertificate) -> None:
    directory = build_directory(0, certificate)
    contoso, fabrikam = directory.tenants["contoso"], directory.tenants["fabrikam"]
    assert contoso.exchange is ExchangeLocation.ONLINE
    assert fabrikam.exchange is ExchangeLocation.ON_PREMISES
    for tenant in (contoso, fabrikam):
        assert len(tenant.users()) >= 50
        assert len(tenant.rooms()) >= 5
        assert all(set(r.rooms) <= set(tenant.mailboxes) for r in tenant.room_lists.values())
        scope = tenant.groups[tenant.scope_group].members
        outside = [u.email for u in tenant.users() if u.email not in scope]
        assert 2 <= len(outside) < 10
    assert WELL_KNOWN["contoso_out_of_scope"] not in contoso.groups[contoso.scope_group].members
    zones = {u.time_zone for t in (contoso, fabrikam) for u in t.users()}
    assert {"America/Los_Angeles", "America/New_York", "Europe/London", "Europe/Berlin", "Australia/Sydney"} <= zones
    accounts = {a.access for a in fabrikam.service_accounts.values()}
    assert accounts == set(EwsAccess)
    full = directory.authenticate_service_account("FABRIKAM\\svc-full", fabrikam.service_accounts["svc-full"].password)
    assert full is not None
    anna, frank = directory.mailbox(WELL_KNOWN["fabrikam_user"]), directory.mailbox(WELL_KNOWN["fabrikam_out_of_scope"])
    assert anna is not None
    assert frank is not None
    assert full.can_impersonate(anna)
    assert not full.can_impersonate(frank)
    assert directory.authenticate_service_account("svc-full@fabrikam.com", "wrong") is None


def test_calendars_hold_every_kind_of_item(certificate: AppCertificate) -> None:
    directory = build_directory(0, certificate)
    store = build_calendars(directory, 0, DEFAULT_ANCHOR, _clock)
    start = datetime.combine(DEFAULT_ANCHOR - timedelta(days=30), datetime.min.time(), UTC)
    end = start + timedelta(days=90)
    items = [e for m in directory.all_mailboxes() for e in store.occurrences(m.email, start, end)]
    masters = [e for m in directory.all_mailboxes() for e in store.events(m.email) if e.recurrence]

    assert {e.type for e in items} == {EventType.SINGLE, EventType.OCCURRENCE, EventType.EXCEPTION}
    assert any(m.cancelled_occurrences for m in masters)
    assert {e.show_as for e in items} >= {
        ShowAs.BUSY,
        ShowAs.TENTATIVE,
        ShowAs.FREE,
        ShowAs.OOF,
        ShowAs.WORKING_ELSEWHERE,
    }
    assert any(e.is_all_day and e.end - e.start > timedelta(days=1) for e in items)
    assert any(e.sensitivity is Sensitivity.PRIVATE for e in items)
    assert any(e.start.utcoffset() != e.end.utcoffset() for e in items)  # spans a DST switch
    assert any(e.attendees and not e.is_organizer for e in items)
    assert any(e.online_meeting for e in items)
    weekly = [e for e in items if e.series_master_id and e.time_zone == "America/Los_Angeles"]
    assert {e.start_utc.hour for e in weekly if e.start.hour == 12} >= {19, 20}  # wall clock kept across DST


def test_anchor_must_be_a_monday(certificate: AppCertificate) -> None:
    with pytest.raises(ValueError, match="Monday"):
        build_calendars(build_directory(0, certificate), 0, date(2026, 11, 24), _clock)
