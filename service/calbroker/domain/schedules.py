"""What a provider reads for one mailbox: its busy blocks and working hours, or why it could not."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from calbroker.domain.busy import BusyBlock
from calbroker.domain.errors import MailboxError, UpstreamError
from calbroker.domain.sync import Source
from calbroker.domain.working_hours import WorkingHours

__all__ = ["MailboxSchedule", "Room", "RoomList", "ScheduleResult"]


@dataclass(frozen=True, slots=True)
class MailboxSchedule:
    mailbox: str
    busy: tuple[BusyBlock, ...]
    working_hours: WorkingHours | None = None
    source: Source = Source.LIVE
    as_of: datetime | None = None
    """When upstream was known to look like this: the read's start (live), or the last sync round's (cache)."""


ScheduleResult = MailboxSchedule | MailboxError | UpstreamError
"""Per mailbox: the schedule, or the error that makes the mailbox unavailable (never "free")."""


@dataclass(frozen=True, slots=True)
class RoomList:
    """A room list (an Exchange distribution group of rooms, often one per building)."""

    email: str
    name: str


@dataclass(frozen=True, slots=True)
class Room:
    """A room or resource mailbox, bookable as an attendee of type `resource`; the same shape whichever
    protocol reads it, with None for what the protocol does not say."""

    email: str
    name: str
    capacity: int | None = None
    building: str | None = None
    room_list: RoomList | None = None
