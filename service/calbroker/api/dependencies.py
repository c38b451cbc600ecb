"""What handlers receive by name: the process's services, or a per-request deadline (/v1 handlers get both
with their `Caller`, see api.auth)."""

from __future__ import annotations

from litestar.datastructures import State

from calbroker.providers.protocol import Deadline
from calbroker.services import Services

__all__ = ["provide_deadline", "provide_services"]


def provide_services(state: State) -> Services:
    """The resources of the running app (absent only before start-up)."""
    services = state.get("services")
    if not isinstance(services, Services):
        raise RuntimeError("calbroker services are used before the app lifespan started")
    return services


def provide_deadline(state: State) -> Deadline:
    """Each request gets its own upstream budget, retries and back-off included."""
    return Deadline.after(provide_services(state).settings.upstream_deadline_s)
