"""What handlers receive by name: the process's services, one of them, or a per-request deadline."""

from __future__ import annotations

from litestar.datastructures import State

from calbroker.providers.protocol import Deadline
from calbroker.services import Bookings, ScheduleReader, Services

__all__ = ["provide_bookings", "provide_deadline", "provide_schedules", "provide_services"]


def provide_services(state: State) -> Services:
    """The resources of the running app (absent only before start-up)."""
    services = state.get("services")
    if not isinstance(services, Services):
        raise RuntimeError("calbroker services are used before the app lifespan started")
    return services


def provide_schedules(state: State) -> ScheduleReader:
    return provide_services(state).schedules


def provide_bookings(state: State) -> Bookings:
    return provide_services(state).bookings


def provide_deadline(state: State) -> Deadline:
    """Each request gets its own upstream budget, retries and back-off included."""
    return Deadline.after(provide_services(state).settings.upstream_deadline_s)
