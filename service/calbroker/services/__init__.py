"""Application services: what the API, the CLI and the workers share.

Schedule reading (route, batch, coalesce), bookings, onboarding and the provider of each stored
connection, bundled as `Services` and opened once per process by `open_services`. No HTTP
routing and no SQL of their own: they compose the store and the providers.
"""

from calbroker.services.availability import AvailabilityAnswer, answer_availability
from calbroker.services.bookings import Bookings, CalendarEntry, Outcome, teams_available
from calbroker.services.bundle import Services, open_services
from calbroker.services.onboarding import ConnectionDraft, SaveHook, verify_and_save
from calbroker.services.schedules import Coalescer, ScheduleReader
from calbroker.services.telemetry import refresh_gauges
from calbroker.services.upstream import Upstream

__all__ = [
    "AvailabilityAnswer",
    "Bookings",
    "CalendarEntry",
    "Coalescer",
    "ConnectionDraft",
    "Outcome",
    "SaveHook",
    "ScheduleReader",
    "Services",
    "Upstream",
    "answer_availability",
    "open_services",
    "refresh_gauges",
    "teams_available",
    "verify_and_save",
]
