"""Graph client secrets and certificates expire; warn 30 and 7 days ahead (design §7).

A connection whose secret silently expires makes availability go empty for a whole organisation,
so the warning is part of the connection itself, computed from the date the admin entered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from calbroker.domain.errors import InvalidRequest

__all__ = ["WARNING_DAYS", "SecretWarning", "parse_secret_expiry", "secret_warning"]

WARNING_DAYS = (30, 7)
"""Thresholds, widest first: each is announced once as the expiry date comes closer."""


@dataclass(frozen=True, slots=True)
class SecretWarning:
    code: str
    """`secret_expiring` (within 30 days), `secret_expiring_soon` (within 7) or `secret_expired`."""
    threshold_days: int
    """The tightest threshold crossed: 30, 7, or 0 once expired."""
    message: str


def secret_warning(expires_at: datetime | None, now: datetime) -> SecretWarning | None:
    """The warning a connection carries at `now`, or None when the secret is far from expiry."""
    if expires_at is None:
        return None
    left = expires_at - now
    day = f"{expires_at:%Y-%m-%d}"
    if left <= timedelta(0):
        return SecretWarning(
            "secret_expired",
            0,
            f"The connection's client secret or certificate expired on {day}: the tenant admin must create a "
            "new one and reconnect through a new authorize link.",
        )
    days = left.days
    for threshold in sorted(WARNING_DAYS):
        if left <= timedelta(days=threshold):
            return SecretWarning(
                "secret_expiring_soon" if threshold == min(WARNING_DAYS) else "secret_expiring",
                threshold,
                f"The connection's client secret or certificate expires on {day} (in {days} day"
                f"{'' if days == 1 else 's'}): ask the tenant admin to create a new one and reconnect "
                "through a new authorize link before then.",
            )
    return None


def parse_secret_expiry(raw: str, *, now: datetime, field: str = "secret_expires_on") -> datetime:
    """The instant a secret stops working, from what an admin types; one parser for every door.

    Entra shows a secret's expiry as a date (``2027-06-30``), and the secret works through that
    day, so a date means its last second in UTC. A full RFC 3339 time with an offset (Graph's
    ``endDateTime``) is taken as given; a time without an offset is ambiguous and refused, and so
    is an expiry that has already passed.
    """
    text = raw.strip()
    try:
        if len(text) == 10:
            expires = datetime.combine(date.fromisoformat(text), time(23, 59, 59), UTC)
        else:
            expires = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest.field(field, "enter the date as shown under Expires, e.g. 2027-06-30") from None
    if expires.tzinfo is None or expires.utcoffset() is None:
        raise InvalidRequest.field(
            field, "a time needs a UTC offset (e.g. 2027-06-30T10:00:00Z); or enter just the date, e.g. 2027-06-30"
        )
    expires = expires.astimezone(UTC)
    if expires <= now:
        raise InvalidRequest.field(
            field,
            f"{expires:%Y-%m-%d} has passed, so this secret has expired: create a new client secret under "
            "Certificates & secrets and enter its Value and expiry date",
        )
    return expires
