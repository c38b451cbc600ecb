"""The long-lived resources handlers use, opened by the app lifespan and closed by it."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from litestar.datastructures import State

from calbroker.api.schedules import ScheduleReader
from calbroker.config import Settings
from calbroker.providers.protocol import Deadline
from calbroker.providers.registry import ProviderRegistry
from calbroker.store.keyring import Keyring

__all__ = ["Services", "provide_deadline", "provide_schedules", "provide_services"]


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    pool: asyncpg.Pool
    keyring: Keyring
    providers: ProviderRegistry
    schedules: ScheduleReader


def provide_services(state: State) -> Services:
    """Dependency: the resources of the running app (absent only before start-up)."""
    services = state.get("services")
    if not isinstance(services, Services):
        raise RuntimeError("calbroker services are used before the app lifespan started")
    return services


def provide_schedules(state: State) -> ScheduleReader:
    return provide_services(state).schedules


def provide_deadline(state: State) -> Deadline:
    """Each request gets its own upstream budget, retries and back-off included."""
    return Deadline.after(provide_services(state).settings.upstream_deadline_s)
