"""The long-lived resources handlers use, opened by the app lifespan and closed by it."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from litestar.datastructures import State

from calbroker.config import Settings
from calbroker.store.keyring import Keyring

__all__ = ["Services", "provide_services"]


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    pool: asyncpg.Pool
    keyring: Keyring


def provide_services(state: State) -> Services:
    """Dependency: the resources of the running app (absent only before start-up)."""
    services = state.get("services")
    if not isinstance(services, Services):
        raise RuntimeError("calbroker services are used before the app lifespan started")
    return services
