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
    ConnectionStatus,
    normalize_domain,
    normalize_email,
    route_mailbox,
)
from calbroker.domain.errors import AccessLevelInsufficient, InvalidRequest, MailboxNotConnected, MailboxOutOfScope

APP = uuid.uuid4()


def _connection(domains: tuple[str, ...], allowed: tuple[str, ...] = (), *, day: int = 1, **kw: object) -> Connection:
    return Connection(
        id=uuid.uuid4(),
        application_id=APP,
        method=ConnectionMethod.GRAPH_APP,
        display_name="x",
        domains=domains,
        allowed_mailboxes=allowed,
        created_at=datetime(2026, 1, day, tzinfo=UTC),
        **{"kind": ConnectionKind.GRAPH, "access_level": AccessLevel.FULL, **kw},  # type: ignore[arg-type]
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
