"""Graph client secrets and certificates expire; warn 30 and 7 days ahead (design §7).

A connection whose secret silently expires makes availability go empty for a whole organisation,
so the warning is part of the connection itself, computed from the date the admin entered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["WARNING_DAYS", "SecretWarning", "secret_warning"]

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
