"""Microsoft Graph payloads as msgspec Structs, and their conversion to domain values.

Shapes follow https://learn.microsoft.com/graph/api/calendar-getschedule,
https://learn.microsoft.com/graph/api/resources/scheduleinformation,
https://learn.microsoft.com/graph/api/resources/room and Graph's error envelope
(https://learn.microsoft.com/graph/errors).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time
from functools import lru_cache
from typing import TypeVar
from zoneinfo import ZoneInfo

import msgspec

from calbroker.domain.busy import BusyBlock, BusyStatus
from calbroker.domain.errors import (
    InvalidRequest,
    MailboxError,
    MailboxNotFound,
    MailboxOutOfScope,
    UpstreamError,
    UpstreamRejected,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from calbroker.domain.intervals import Interval, to_us
from calbroker.domain.schedules import MailboxSchedule, Room, RoomList, ScheduleResult
from calbroker.domain.working_hours import Weekday, WeeklyPeriod, WorkingHours
from calbroker.logs import get_logger
from calbroker.providers.windows_zones import zone_for

__all__ = [
    "DateTimeTimeZone",
    "GraphErrorEnvelope",
    "Place",
    "PlacesPage",
    "ScheduleInformation",
    "ScheduleRequest",
    "ScheduleResponse",
    "decode",
    "decode_error",
    "encoder",
    "places_decoder",
    "read_schedules",
    "schedule_decoder",
    "schedule_error",
    "schedule_result",
    "wall_time",
]

_log = get_logger(__name__)
T = TypeVar("T")


class GraphModel(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """Base of every Graph wire type.

    - ``rename="camel"``: Python's ``schedule_items`` is Graph's ``scheduleItems``.
    - no ``forbid_unknown_fields``: Graph adds properties all the time; be a tolerant reader.
    - ``kw_only``: fields with defaults may come before required ones, in Graph's order.
    - ``omit_defaults``: requests we encode carry only what we set.
    """


def wall_time(moment: datetime) -> str:
    """`2026-11-24T09:00:00`: ISO 8601 without offset, the year always four digits.

    `strftime("%Y")` writes year 1 as `1` on glibc, which Graph would not parse.
    """
    return moment.replace(tzinfo=None, microsecond=0).isoformat()


class DateTimeTimeZone(GraphModel):
    """https://learn.microsoft.com/graph/api/resources/datetimetimezone"""

    date_time: str
    time_zone: str | None = None

    @classmethod
    def utc(cls, moment: datetime) -> DateTimeTimeZone:
        return cls(date_time=wall_time(moment.astimezone(UTC)), time_zone="UTC")

    def instant(self) -> datetime:
        """The instant this names. An explicit offset wins; an unknown zone name falls back to UTC,
        which is what we ask for with ``Prefer: outlook.timezone="UTC"``."""
        # Graph sends seven fractional digits; fromisoformat (3.11+) truncates beyond six.
        moment = datetime.fromisoformat(self.date_time.strip())
        if moment.tzinfo is not None:
            return moment.astimezone(UTC)
        zone = zone_for(self.time_zone) if self.time_zone else ZoneInfo("UTC")
        if zone is None:
            _log.warning("graph.unknown_time_zone", time_zone=self.time_zone, assumed="UTC")
            zone = ZoneInfo("UTC")
        return moment.replace(tzinfo=zone).astimezone(UTC)


class ScheduleRequest(GraphModel):
    schedules: list[str]
    start_time: DateTimeTimeZone
    end_time: DateTimeTimeZone
    availability_view_interval: int


class ScheduleItem(GraphModel):
    start: DateTimeTimeZone
    end: DateTimeTimeZone
    status: str | None = None


class GraphTimeZone(GraphModel):
    name: str | None = None


class WorkingHoursWire(GraphModel):
    """https://learn.microsoft.com/graph/api/resources/workinghours"""

    days_of_week: list[str] = []
    start_time: str | None = None
    end_time: str | None = None
    time_zone: GraphTimeZone | None = None


class FreeBusyError(GraphModel):
    message: str | None = None
    response_code: str | None = None


class ScheduleInformation(GraphModel):
    schedule_id: str | None = None
    schedule_items: list[ScheduleItem] = []
    working_hours: WorkingHoursWire | None = None
    error: FreeBusyError | None = None


class ScheduleResponse(GraphModel):
    value: list[ScheduleInformation] = []


class Place(GraphModel):
    email_address: str | None = None
    display_name: str | None = None
    capacity: int | None = None
    building: str | None = None

    def to_domain(self, room_list: RoomList | None = None) -> Room | None:
        if not self.email_address:
            return None
        email = self.email_address.strip().lower()
        return Room(
            email=email,
            name=self.display_name or email,
            capacity=self.capacity,
            building=self.building,
            room_list=room_list,
        )


class PlacesPage(GraphModel):
    value: list[Place] = []
    next_link: str | None = msgspec.field(default=None, name="@odata.nextLink")


class GraphErrorBody(GraphModel):
    code: str | None = None
    message: str | None = None


class GraphErrorEnvelope(GraphModel):
    """``{"error": {"code", "message", "innerError": {...}}}``"""

    error: GraphErrorBody = msgspec.field(default_factory=GraphErrorBody)


encoder = msgspec.json.Encoder()
schedule_decoder = msgspec.json.Decoder(ScheduleResponse)
places_decoder = msgspec.json.Decoder(PlacesPage)
_error_decoder = msgspec.json.Decoder(GraphErrorEnvelope)


def decode(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    """`body` as the decoder's type; an answer that does not fit is Microsoft's fault, said so."""
    try:
        return decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise UpstreamRejected(f"Microsoft Graph sent an answer calbroker cannot read: {exc}") from None


def decode_error(body: bytes) -> GraphErrorBody:
    """Graph's error code and message; empty for a body that is not Graph's envelope (a proxy's page)."""
    try:
        return _error_decoder.decode(body).error
    except msgspec.MsgspecError:
        return GraphErrorBody()


# --- getSchedule → domain ----------------------------------------------------------------------

_STATUSES = {
    "tentative": BusyStatus.TENTATIVE,
    "busy": BusyStatus.BUSY,
    "oof": BusyStatus.OOF,
    "workingelsewhere": BusyStatus.WORKING_ELSEWHERE,
}
# The spellings Graph sends (lower camel case, the docs' examples capitalised), looked up as they come.
_STATUS_AS_SENT: dict[str | None, BusyStatus | None] = {
    None: BusyStatus.BUSY,
    "free": None,
    "Free": None,
    "busy": BusyStatus.BUSY,
    "Busy": BusyStatus.BUSY,
    "tentative": BusyStatus.TENTATIVE,
    "Tentative": BusyStatus.TENTATIVE,
    "oof": BusyStatus.OOF,
    "Oof": BusyStatus.OOF,
    "workingElsewhere": BusyStatus.WORKING_ELSEWHERE,
    "WorkingElsewhere": BusyStatus.WORKING_ELSEWHERE,
}
_UNSEEN = object()

# Per-schedule freeBusyError.responseCode values (Exchange availability codes) and what they mean
# for the mailbox. Codes not listed become UpstreamRejected, never "free".
_NOT_FOUND = frozenset(
    {"errormailrecipientnotfound", "errorinvaliduser", "errornonexistentmailbox", "mailboxnotenabledforrestapi"}
)
_OUT_OF_SCOPE = frozenset({"erroraccessdenied", "errornofreebusyaccess"})
_THROTTLED = frozenset({"errorserverbusy", "applicationthrottled", "toomanyrequests"})
_UNAVAILABLE = frozenset(
    {"errorproxyrequestprocessingfailed", "errorfreebusygenerationfailed", "errorinternalservererror"}
)


def _busy_status(raw: str | None) -> BusyStatus | None:
    """None for free time. Graph's ``unknown`` (and any value Microsoft adds later) counts as busy:
    we cannot tell what the owner chose, and calling it free would offer a slot that may be taken."""
    known = _STATUS_AS_SENT.get(raw, _UNSEEN)
    if known is not _UNSEEN:
        return known  # type: ignore[return-value]
    assert raw is not None
    lowered = raw.strip().lower()
    if lowered == "free":
        return None
    return _STATUSES.get(lowered, BusyStatus.BUSY)


_Seen = dict[tuple[str, str, str | None], BusyBlock | None]


class _Reading:
    """What one getSchedule answer has read so far. Meetings have many attendees and calendars sit on
    a grid, so most items repeat an instant (or a whole item) already read; a BusyBlock is immutable,
    so the same one serves every schedule that holds it."""

    __slots__ = ("blocks", "instants")

    def __init__(self) -> None:
        self.instants: dict[str, int] = {}
        self.blocks: _Seen = {}

    def utc_us(self, raw: str) -> int:
        """Epoch microseconds of a UTC wall time as Graph writes it (``2026-11-24T09:00:00.0000000``)."""
        if len(raw) < 19 or raw[10] != "T" or raw[19:20] not in ("", "."):
            moment = DateTimeTimeZone(date_time=raw, time_zone="UTC").instant()
        else:
            # With the offset spelled out, fromisoformat returns the UTC singleton: no zone lookup.
            moment = datetime.fromisoformat(raw[:26] + "+00:00")
        found = self.instants[raw] = to_us(moment)
        return found

    def other_zone(self, item: ScheduleItem) -> BusyBlock | None:
        """An item Graph wrote in a zone other than the UTC we asked for (the slow path)."""
        status = _busy_status(item.status)
        start, end = item.start.instant(), item.end.instant()
        return BusyBlock(Interval(start, end), status) if status is not None and start < end else None


def _busy_blocks(items: Sequence[ScheduleItem], reading: _Reading) -> list[BusyBlock]:
    """The schedule's busy blocks. This loop is the hot path of every cold free/busy and availability
    answer (ten thousand items for a large query), hence the local names and the inlined lookups."""
    blocks: list[BusyBlock] = []
    append = blocks.append
    seen, instants, statuses = reading.blocks, reading.instants, _STATUS_AS_SENT
    new = tuple.__new__  # BusyBlock.at without its check: the loop has made it already
    for item in items:
        start, end = item.start, item.end
        if start.time_zone != "UTC" or end.time_zone != "UTC":
            block = reading.other_zone(item)
        else:
            key = (start.date_time, end.date_time, item.status)
            block = seen.get(key, _UNSEEN)  # type: ignore[arg-type]
            if block is _UNSEEN:
                status = statuses.get(item.status, _UNSEEN)
                if status is _UNSEEN:
                    status = _busy_status(item.status)
                block = None
                if status is not None:
                    began = instants.get(key[0]) or reading.utc_us(key[0])
                    ended = instants.get(key[1]) or reading.utc_us(key[1])
                    if began < ended:  # Exchange can hold zero-length items; they block nothing
                        block = new(BusyBlock, (began, ended, status))
                seen[key] = block
        if block is not None:
            append(block)
    return blocks


def _clock(raw: str | None) -> time | None:
    if not raw:
        return None
    try:
        return time.fromisoformat(raw.strip())
    except ValueError:
        return None


def _working_hours(wire: WorkingHoursWire | None, mailbox: str) -> WorkingHours | None:
    """None when Graph gave nothing usable: an unknown zone or no working days means "not known",
    not "never working"."""
    if wire is None:
        return None
    zone_name = wire.time_zone.name if wire.time_zone else None
    usable, hours = _hours_of(zone_name, wire.start_time, wire.end_time, tuple(wire.days_of_week))
    if not usable:
        _log.warning("graph.working_hours_unusable", mailbox=mailbox, time_zone=zone_name, start=wire.start_time)
    return hours


@lru_cache(maxsize=1024)
def _hours_of(
    zone_name: str | None, start_raw: str | None, end_raw: str | None, days_of_week: tuple[str, ...]
) -> tuple[bool, WorkingHours | None]:
    """Working hours from their wire fields, remembered: colleagues share a handful of values, and
    WorkingHours is immutable. False first when the zone or a clock cannot be read."""
    zone = zone_for(zone_name)
    start, end = _clock(start_raw), _clock(end_raw)
    if zone is None or start is None or end is None:
        return False, None
    days = [Weekday[d.strip().upper()] for d in days_of_week if d.strip().upper() in Weekday.__members__]
    periods: list[WeeklyPeriod] = []
    for day in sorted(set(days)):
        if end == time(0):
            periods.append(WeeklyPeriod(day, start, None))  # "00:00" as an end is midnight
        elif start < end:
            periods.append(WeeklyPeriod(day, start, end))
        elif end < start:  # a night shift: until midnight, then on into the next day
            periods.append(WeeklyPeriod(day, start, None))
            periods.append(WeeklyPeriod(Weekday((day + 1) % 7), time(0), end))
    try:
        return True, WorkingHours(tuple(periods), zone) if periods else None
    except InvalidRequest:
        return True, None


def schedule_error(code: str | None, message: str | None, mailbox: str) -> MailboxError | UpstreamError:
    """The mailbox error for a per-schedule ``freeBusyError``."""
    lowered = (code or "").lower()
    text = message or "no message"
    if lowered in _NOT_FOUND:
        return MailboxNotFound(f"Exchange Online has no mailbox {mailbox} ({code}).", mailbox=mailbox)
    if lowered in _OUT_OF_SCOPE:
        return MailboxOutOfScope(
            f"{mailbox} is outside the mailboxes this connection's app may read "
            f"(the tenant's application access policy): {code}: {text}",
            mailbox=mailbox,
        )
    if lowered in _THROTTLED:
        return UpstreamThrottled(
            f"Exchange Online is throttling free/busy for {mailbox}: {text}", upstream_code=code, mailbox=mailbox
        )
    if lowered == "errortimeoutexpired":
        return UpstreamTimeout(
            f"Exchange Online timed out reading {mailbox}: {text}", upstream_code=code, mailbox=mailbox
        )
    if lowered in _UNAVAILABLE:
        return UpstreamUnavailable(
            f"Exchange Online could not read {mailbox}: {code}: {text}", upstream_code=code, mailbox=mailbox
        )
    return UpstreamRejected(
        f"Exchange Online refused free/busy for {mailbox}: {code}: {text}", upstream_code=code, mailbox=mailbox
    )


def schedule_result(info: ScheduleInformation, mailbox: str, reading: _Reading | None = None) -> ScheduleResult:
    """One scheduleInformation as the mailbox's busy blocks and working hours, or its error."""
    if info.error is not None and info.error.response_code:
        return schedule_error(info.error.response_code, info.error.message, mailbox)
    try:
        blocks = _busy_blocks(info.schedule_items, reading or _Reading())
    except (ValueError, InvalidRequest) as exc:
        return UpstreamRejected(
            f"Microsoft Graph sent a schedule item for {mailbox} that could not be read: {exc}",
            mailbox=mailbox,
        )
    return MailboxSchedule(mailbox, tuple(blocks), _working_hours(info.working_hours, mailbox))


def read_schedules(body: bytes, mailboxes: Sequence[str]) -> dict[str, ScheduleResult]:
    """A getSchedule answer as each requested mailbox's result.

    Entries are matched by `scheduleId`, else by position when Graph answered one entry per
    schedule; a mailbox the answer leaves out gets an error, never an empty (free) calendar.
    """
    response = decode(body, schedule_decoder)
    by_id = {(info.schedule_id or "").strip().lower(): info for info in response.value}
    found: dict[str, ScheduleResult] = {}
    reading = _Reading()
    for position, mailbox in enumerate(mailboxes):
        info = by_id.get(mailbox)
        if info is None and len(response.value) == len(mailboxes):
            info = response.value[position]
        if info is None:
            found[mailbox] = UpstreamUnavailable(
                f"Microsoft Graph's getSchedule answer had no entry for {mailbox}", mailbox=mailbox
            )
            continue
        found[mailbox] = schedule_result(info, mailbox, reading)
    return found
