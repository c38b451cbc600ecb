"""The seeded world: deterministic tenants, apps and mailboxes, and their calendars."""

from __future__ import annotations

from calbroker.sandbox.seed.calendars import build_calendars
from calbroker.sandbox.seed.tenants import DEFAULT_ANCHOR, WELL_KNOWN, build_directory, secret_for

__all__ = ["DEFAULT_ANCHOR", "WELL_KNOWN", "build_calendars", "build_directory", "secret_for"]
