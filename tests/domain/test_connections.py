"""Mailbox routing by domain and allow-list (design §5), and address normalisation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from calbroker.domain.connections import (
    AccessLevel,
    Connection,
    ConnectionKind,
    ConnectionMethod,
    ConnectionPurpose,
    ConnectionStatus,
    normalize_domain,
    normalize_email,
    route_mailbox,
    successor,
)
from calbroker.domain.errors import AccessLevelInsufficient, InvalidRequest, MailboxNotConnected, MailboxOutOfScope

APP = uuid.uuid4()


def _connection(domains: tuple[str, ...], allowed: tuple[str, ...] = (), *, day: int = 1, **kw: object) -> Connection:
    defaults: dict[str, object] = {
        "kind": ConnectionKind.GRAPH,
        "method": ConnectionMethod.GRAPH_APP,
        "access_level": AccessLevel.FULL,
        "tenant_id": "tenant-a",
        "application_id": APP,
    }
    return Connection(
        id=uuid.uuid4(),
        display_name="x",
        domains=domains,
        allowed_mailboxes=allowed,
        created_at=datetime(2026, 1, day, tzinfo=UTC),
        **{**defaults, **kw},  # type: ignore[arg-type]
    )


def test_routes_by_domain() -> None:
    contoso = _connection(("contoso.com",))
    fabrikam = _connection(("fabrikam.com",))
    assert route_mailbox([contoso, fabrikam], "a@fabrikam.com") is fabrikam
    with pytest.raises(MailboxNotConnected) as raised:
        route_mailbox([contoso, fabrikam], "a@tailspin.com")
    assert raised.value.mailbox == "a@tailspin.com"


def test_allow_list_narrows_and_explicit_listing_wins() -> None:
    scoped = _connection(("contoso.com",), ("a@contoso.com",), day=2)
    with pytest.raises(MailboxOutOfScope):
        route_mailbox([scoped], "b@contoso.com")
    open_ended = _connection(("contoso.com",), day=3)
    assert route_mailbox([open_ended, scoped], "a@contoso.com") is scoped
    assert route_mailbox([open_ended, scoped], "b@contoso.com") is open_ended


def test_oldest_connection_wins_ties_and_revoked_ones_are_ignored() -> None:
    newer = _connection(("contoso.com",), day=5)
    older = _connection(("contoso.com",), day=2)
    revoked = _connection(("contoso.com",), day=1, status=ConnectionStatus.REVOKED)
    assert route_mailbox([newer, revoked, older], "x@contoso.com") is older


@pytest.mark.parametrize("bad", ["", "no-at-sign", "a@b", "a b@contoso.com", "<a@contoso.com>", "a@@contoso.com"])
def test_bad_addresses_name_the_field(bad: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        normalize_email(bad, field_name="mailboxes[3]")
    assert raised.value.errors[0].field == "mailboxes[3]"


def test_addresses_and_domains_are_normalised() -> None:
    assert normalize_email("  Adele.Vance@Contoso.COM ") == "adele.vance@contoso.com"
    assert normalize_domain("Contoso.com.") == "contoso.com"
    with pytest.raises(InvalidRequest):
        normalize_domain("https://contoso.com")


@pytest.mark.parametrize(
    ("kind", "remedy"),
    [(ConnectionKind.GRAPH, "Calendars.ReadWrite"), (ConnectionKind.EWS, "ApplicationImpersonation")],
)
def test_free_busy_only_refuses_calendar_access_with_the_protocols_remedy(kind: ConnectionKind, remedy: str) -> None:
    connection = _connection(("contoso.com",), kind=kind, access_level=AccessLevel.FREE_BUSY)
    with pytest.raises(AccessLevelInsufficient, match="free/busy-only") as caught:
        connection.require_calendar_access("book events")
    assert caught.value.detail.startswith("Cannot book events: connection 'x' has free/busy-only access.")
    assert remedy in caught.value.detail


@pytest.mark.parametrize("level", [AccessLevel.FULL, AccessLevel.RESTRICTED])
def test_calendar_levels_may_open_calendars(level: AccessLevel) -> None:
    _connection(("contoso.com",), access_level=level).require_calendar_access("book events")
    assert level.opens_calendars


# --- reconnecting: healthy first, supersession ----------------------------------------------------


def test_a_healthy_connection_serves_before_an_older_degraded_one() -> None:
    degraded = _connection(("contoso.com",), day=1, status=ConnectionStatus.DEGRADED)
    healthy = _connection(("contoso.com",), day=4)
    assert route_mailbox([degraded, healthy], "x@contoso.com") is healthy
    # Only degraded ones: still routed (the mailbox then reports the connection's error, never "free").
    assert route_mailbox([degraded], "x@contoso.com") is degraded


def test_superseded_and_online_meeting_connections_never_serve_calendars() -> None:
    superseded = _connection(("contoso.com",), day=1, status=ConnectionStatus.SUPERSEDED, superseded_by=uuid.uuid4())
    teams = _connection(("contoso.com",), day=2, purpose=ConnectionPurpose.ONLINE_MEETINGS)
    with pytest.raises(MailboxNotConnected):
        route_mailbox([superseded, teams], "x@contoso.com")
    assert route_mailbox([superseded, teams], "x@contoso.com", purpose=ConnectionPurpose.ONLINE_MEETINGS) is teams


def test_connecting_the_same_tenant_again_supersedes_the_older_connection() -> None:
    older = _connection(("contoso.com",), day=1, status=ConnectionStatus.DEGRADED)
    newer = _connection(
        ("contoso.com", "contoso.net"), day=2, method=ConnectionMethod.GRAPH_CONSENT, tenant_id="TENANT-A"
    )
    assert newer.supersedes(older)
    assert not older.supersedes(newer)  # it does not cover contoso.net
    assert not newer.supersedes(newer)


@pytest.mark.parametrize(
    "other",
    [
        {"tenant_id": "tenant-b"},
        {"cloud": "usgov"},
        {
            "kind": ConnectionKind.EWS,
            "method": ConnectionMethod.EWS,
            "endpoint": "https://mail.contoso.com/EWS/Exchange.asmx",
        },
        {"purpose": ConnectionPurpose.ONLINE_MEETINGS},
        {"method": ConnectionMethod.GRAPH_DELEGATED, "allowed": ("a@contoso.com",)},
        {"application_id": uuid.uuid4()},
        {"domains": ("fabrikam.com",)},
    ],
)
def test_a_connection_to_something_else_supersedes_nothing(other: dict[str, object]) -> None:
    older = _connection(("contoso.com",), day=1)
    changes = dict(other)
    newer = _connection(changes.pop("domains", ("contoso.com",)), changes.pop("allowed", ()), day=2, **changes)  # type: ignore[arg-type]
    assert not newer.supersedes(older)


def test_ews_connections_are_the_same_organisation_by_endpoint_and_delegated_ones_by_mailbox() -> None:
    ews = {"kind": ConnectionKind.EWS, "method": ConnectionMethod.EWS, "tenant_id": None}
    older = _connection(("fabrikam.com",), endpoint="https://mail.fabrikam.com/EWS/Exchange.asmx", **ews)
    again = _connection(("fabrikam.com",), day=3, endpoint="https://MAIL.fabrikam.com/EWS/Exchange.asmx", **ews)
    elsewhere = _connection(("fabrikam.com",), day=3, endpoint="https://mail2.fabrikam.com/EWS/Exchange.asmx", **ews)
    assert again.supersedes(older)
    assert not elsewhere.supersedes(older)
    delegated = {"method": ConnectionMethod.GRAPH_DELEGATED}
    alex = _connection(("contoso.com",), ("alex@contoso.com",), **delegated)
    assert _connection(("contoso.com",), ("alex@contoso.com",), day=2, **delegated).supersedes(alex)
    assert not _connection(("contoso.com",), ("adele@contoso.com",), day=2, **delegated).supersedes(alex)


def test_an_event_follows_supersession_to_the_connection_serving_it_now() -> None:
    newest = _connection(("contoso.com",), day=3)
    middle = _connection(("contoso.com",), day=2, status=ConnectionStatus.REVOKED, superseded_by=newest.id)
    oldest = _connection(("contoso.com",), day=1, status=ConnectionStatus.SUPERSEDED, superseded_by=middle.id)
    everything = [oldest, middle, newest]
    assert successor(everything, oldest.id) is newest
    assert successor(everything, newest.id) is newest
    assert successor(everything, uuid.uuid4()) is None


def test_online_meetings_is_a_graph_app_purpose() -> None:
    with pytest.raises(InvalidRequest) as raised:
        _connection(
            ("fabrikam.com",),
            kind=ConnectionKind.EWS,
            method=ConnectionMethod.EWS,
            purpose=ConnectionPurpose.ONLINE_MEETINGS,
        )
    assert raised.value.errors[0].field == "purpose"
    teams = _connection(("fabrikam.com",), purpose=ConnectionPurpose.ONLINE_MEETINGS)
    with pytest.raises(AccessLevelInsufficient, match="only makes Teams meetings"):
        teams.require_calendar_access("read calendars")
