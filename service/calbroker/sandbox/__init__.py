"""A Microsoft 365 emulator — Entra ID, Graph, EWS — that the real msal, aiohttp and exchangelib
clients cannot tell from Microsoft, with seeded tenants, fault injection and a control plane.

It plays the other side of calbroker's providers, so it imports nothing of calbroker outside this
package (import-linter enforces it).
"""

from __future__ import annotations

from calbroker.sandbox.calendars import CalendarStore
from calbroker.sandbox.directory import Directory, EwsAccess, ExchangeLocation
from calbroker.sandbox.faults import DropConnection, FaultAction, FaultRule, Throttled
from calbroker.sandbox.seed import DEFAULT_ANCHOR, WELL_KNOWN, build_calendars, build_directory
from calbroker.sandbox.server import (
    Sandbox,
    SandboxThread,
    build_app,
    describe,
    run_sandbox_cli,
    start_sandbox_in_thread,
    this_week_monday,
)
from calbroker.sandbox.state import SandboxSettings, SandboxState
from calbroker.sandbox.tls import KeyMaterial, load_key_material

__all__ = [
    "DEFAULT_ANCHOR",
    "WELL_KNOWN",
    "CalendarStore",
    "Directory",
    "DropConnection",
    "EwsAccess",
    "ExchangeLocation",
    "FaultAction",
    "FaultRule",
    "KeyMaterial",
    "Sandbox",
    "SandboxSettings",
    "SandboxState",
    "SandboxThread",
    "Throttled",
    "build_app",
    "build_calendars",
    "build_directory",
    "describe",
    "load_key_material",
    "run_sandbox_cli",
    "start_sandbox_in_thread",
    "this_week_monday",
]
