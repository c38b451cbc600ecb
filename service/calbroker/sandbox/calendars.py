"""Mailbox calendars: events, meeting propagation to attendees and rooms, recurrence expansion,
free/busy derivation and change listeners.

One `CalendarStore` holds every mailbox's calendars: the default calendar, which alone feeds free/busy
and receives meeting invitations, and any secondary calendars (`add_calendar`). Graph, EWS and the
control plane all mutate it through the same methods, so an edit made through one surface is seen —
and notified — through all of them. The store is single-threaded: call it from the sandbox's event
loop only.

API for the EWS surface (stable; additions only):

- `store.occurrences(mailbox, start, end)` → `list[Event]`: singles, occurrences and exceptions
  overlapping [start, end), recurrence expanded, sorted by start. `event.start_utc`/`end_utc`,
  `event.show_as` (`ShowAs`), `event.subject`, `event.location`, `event.is_private`, `event.type`
  (`EventType`), `event.organizer_email`, `event.attendees`, `event.is_cancelled`.
- `store.get(mailbox, event_id)` → `Event | None` (ids of occurrences included); `store.events(mailbox)`
  lists stored items (singles and series masters).
- `store.create(mailbox, EventDraft(...))` → `Event`: the mailbox is the organizer; internal attendees get
  copies (response `notResponded`), rooms accept when free and decline when busy.
  `store.update(mailbox, event_id, {"subject": ..., "start": ..., ...})` (keys are `EventDraft` fields)
  propagates to attendee copies; `store.delete(mailbox, event_id)` by the organizer cancels for
  attendees (their copies become `isCancelled`, rooms drop theirs); `store.cancel(...)` is the same,
  organizer only; `store.respond(mailbox, event_id, Response.ACCEPTED)` answers as an attendee.
- `store.free_busy(mailbox, start, end)` → `list[BusyItem]` (detailed view, UTC) and
  `store.availability_view(mailbox, start, end, interval, digits=EWS_DIGITS)` → merged digit string
  (`GRAPH_DIGITS` maps working elsewhere to 0, `EWS_DIGITS` to 4).
- `store.add_listener(callback)` / `store.changes_since(mailbox, sequence)` for change notification
  and SyncFolderItems-style polling.
- `store.calendars(mailbox)` → `list[CalendarFolder]` (default first), `store.calendar_folder(mailbox, id)`,
  `store.add_calendar(mailbox, name)`; `events`, `occurrences` and `create` take `calendar_id=`
  (None or the default calendar's id: the default calendar). Items are addressed by id in the whole
  mailbox (`get`, `update`, `delete`), whichever calendar holds them.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from calbroker.sandbox.directory import Directory, Mailbox
from calbroker.sandbox.events import (
    GRAPH_DIGITS,
    Attendee,
    BusyItem,
    CalendarError,
    CalendarFolder,
    Change,
    ChangeType,
    Event,
    EventDraft,
    EventType,
    OnlineMeeting,
    Response,
    ShowAs,
)
from calbroker.sandbox.timezones import zone

__all__ = ["CalendarStore", "merged_view", "teams_meeting"]


_UPDATABLE = frozenset(f.name for f in dataclasses.fields(EventDraft)) - {"transaction_id"}
_PROPAGATED = _UPDATABLE - {"categories", "is_reminder_on", "reminder_minutes", "extended_properties"}

# Which status wins when items overlap within a slot.
_PRECEDENCE = {
    ShowAs.OOF: 5,
    ShowAs.BUSY: 4,
    ShowAs.TENTATIVE: 3,
    ShowAs.WORKING_ELSEWHERE: 2,
    ShowAs.FREE: 1,
    ShowAs.UNKNOWN: 0,
}


Listener = Callable[[Change], None]


def merged_view(
    items: Iterable[BusyItem],
    start: datetime,
    end: datetime,
    interval: timedelta,
    *,
    digits: Mapping[ShowAs, str] = GRAPH_DIGITS,
) -> str:
    """The availability view of `items` (from `CalendarStore.free_busy`): one digit per `interval`
    slot from `start`, the strongest status wins; the last slot runs its whole interval, past `end`.
    Each item touches only the slots it overlaps."""
    first = start.astimezone(UTC)
    count = max(0, -((first - end.astimezone(UTC)) // interval))
    stop = first + count * interval
    best = [_PRECEDENCE[ShowAs.FREE]] * count
    statuses = [ShowAs.FREE] * count
    for item in items:
        if item.end <= first or item.start >= stop:
            continue
        low = max(0, (item.start - first) // interval)
        high = min(count, -((first - item.end) // interval))  # the slot holding the item's last instant, + 1
        rank = _PRECEDENCE[item.status]
        for index in range(low, high):
            if rank > best[index]:
                best[index], statuses[index] = rank, item.status
    return "".join(digits[status] for status in statuses)


def teams_meeting(tenant_id: str, user_id: str, key: str) -> OnlineMeeting:
    """A deterministic Teams join URL in the documented shape (meetup-join/19:meeting_…@thread.v2)."""
    digest = hashlib.sha256(f"{user_id}|{key}".encode()).hexdigest()
    thread = base64.b64encode(digest[:36].encode()).decode().rstrip("=")
    context = f"%7b%22Tid%22%3a%22{tenant_id}%22%2c%22Oid%22%3a%22{user_id}%22%7d"
    url = f"https://teams.microsoft.com/l/meetup-join/19%3ameeting_{thread}%40thread.v2/0?context={context}"
    return OnlineMeeting("teamsForBusiness", url, str(int(digest[:12], 16) % 10**9).zfill(9), "+1 323-555-0166")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _folder_id(user_id: str, name: str) -> str:
    """A calendar id in the shape Graph shows (AAMkAG…), stable for a user and calendar name."""
    return "AAMkAGC" + hashlib.sha256(f"{user_id}|{name}".encode() if name else user_id.encode()).hexdigest()[:40]


class CalendarStore:
    """Every mailbox's default calendar, with Exchange's meeting semantics."""

    def __init__(self, directory: Directory, *, clock: Callable[[], datetime], id_seed: str = "0") -> None:
        self.directory = directory
        self._clock = clock
        self._id_seed = id_seed
        self._counter = 0
        self._sequence = 0
        self._items: dict[str, dict[str, Event]] = {m.email: {} for m in directory.all_mailboxes()}
        self._folders: dict[str, list[CalendarFolder]] = {}  # secondary calendars per mailbox
        self._log: dict[str, list[Change]] = {}
        self._listeners: list[Listener] = []

    # --- ids ----------------------------------------------------------------------------------

    def _new_ids(self, mailbox: str) -> tuple[str, str]:
        """A Graph-looking item id and an Outlook-looking iCalUId, both deterministic."""
        self._counter += 1
        digest = hashlib.sha256(f"{self._id_seed}|{mailbox}|{self._counter}".encode()).digest()
        item_id = "AAMkAD" + base64.urlsafe_b64encode(digest[:30]).decode() + "AAA="
        ical = "040000008200E00074C5B7101A82E00800000000" + digest[:24].hex().upper()
        return item_id, ical

    def occurrence_id(self, master_id: str, original_start: datetime) -> str:
        """The id Graph would give an instance of a series: decodable back to (master, original start)."""
        stamp = original_start.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        return "AAMkOC" + _b64(f"{master_id}|{stamp}".encode())

    def _split_occurrence_id(self, event_id: str) -> tuple[str, datetime] | None:
        if not event_id.startswith("AAMkOC"):
            return None
        try:
            raw = event_id[6:]
            text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
            master_id, stamp = text.rsplit("|", 1)
            return master_id, datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except (ValueError, UnicodeDecodeError):
            return None

    # --- listeners and change log -------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, mailbox: str, event_id: str, change_type: ChangeType) -> None:
        self._sequence += 1
        change = Change(self._sequence, mailbox, event_id, change_type, self._clock())
        self._log.setdefault(mailbox, []).append(change)
        for listener in list(self._listeners):
            listener(change)

    def changes_since(self, mailbox: str, sequence: int = 0) -> list[Change]:
        """Changes to `mailbox` after `sequence` (0 = all), oldest first."""
        return [c for c in self._log.get(mailbox.lower(), []) if c.sequence > sequence]

    @property
    def sequence(self) -> int:
        return self._sequence

    def clear_changes(self) -> None:
        """Forget the change log (after seeding, so the log starts with the first real change)."""
        self._log.clear()
        self._sequence = 0

    # --- calendar folders ---------------------------------------------------------------------

    def calendars(self, mailbox: str) -> list[CalendarFolder]:
        """The mailbox's calendars, the default one first."""
        owner = self._mailbox(mailbox)
        default = CalendarFolder(_folder_id(owner.id, ""), "Calendar", is_default=True)
        return [default, *self._folders.get(owner.email, [])]

    def calendar_folder(self, mailbox: str, calendar_id: str) -> CalendarFolder | None:
        return next((c for c in self.calendars(mailbox) if c.id == calendar_id), None)

    def add_calendar(self, mailbox: str, name: str, *, color: str = "auto") -> CalendarFolder:
        """A secondary calendar; names are unique per mailbox, as Exchange's folder names are."""
        owner = self._mailbox(mailbox)
        if any(c.name.lower() == name.lower() for c in self.calendars(owner.email)):
            raise CalendarError("ErrorFolderExists", "A folder with the specified name already exists.")
        folder = CalendarFolder(_folder_id(owner.id, name), name, is_default=False, color=color)
        self._folders.setdefault(owner.email, []).append(folder)
        return folder

    def _scope(self, mailbox: str, calendar_id: str | None) -> str | None:
        """The stored calendar key of `calendar_id`: None for the default calendar."""
        if calendar_id is None:
            return None
        folder = self.calendar_folder(mailbox, calendar_id)
        if folder is None:
            raise CalendarError("ErrorItemNotFound", "The specified object was not found in the store.")
        return None if folder.is_default else folder.id

    # --- reads --------------------------------------------------------------------------------

    def _calendar(self, mailbox: str) -> dict[str, Event]:
        try:
            return self._items[mailbox.lower()]
        except KeyError:
            raise CalendarError("ErrorInvalidUser", f"The requested user '{mailbox}' is invalid.") from None

    def events(self, mailbox: str, *, calendar_id: str | None = None) -> list[Event]:
        """Stored items (single instances and series masters) of one calendar, as Graph's /events lists them."""
        key = self._scope(mailbox, calendar_id)
        return sorted(
            (e for e in self._calendar(mailbox).values() if e.calendar_id == key), key=lambda e: (e.start_utc, e.id)
        )

    def get(self, mailbox: str, event_id: str) -> Event | None:
        """An item by id; occurrence ids resolve to the expanded instance (or exception)."""
        calendar = self._calendar(mailbox)
        found = calendar.get(event_id)
        if found is not None:
            return found
        split = self._split_occurrence_id(event_id)
        if split is None:
            return None
        master = calendar.get(split[0])
        if master is None or master.recurrence is None or split[1] in master.cancelled_occurrences:
            return None
        if split[1] in master.exceptions:
            return master.exceptions[split[1]]
        for instance in self._expand(master, split[1], split[1] + timedelta(seconds=1)):
            if instance.original_start == split[1]:
                return instance
        return None

    def find(self, mailbox: str, *, transaction_id: str | None = None, ical_uid: str | None = None) -> Event | None:
        for event in self._calendar(mailbox).values():
            if transaction_id is not None and event.transaction_id == transaction_id:
                return event
            if ical_uid is not None and event.ical_uid == ical_uid:
                return event
        return None

    def _instance(self, master: Event, original: datetime, start: datetime, end: datetime) -> Event:
        return dataclasses.replace(
            master,
            id=self.occurrence_id(master.id, original),
            start=start,
            end=end,
            type=EventType.OCCURRENCE,
            series_master_id=master.id,
            original_start=original,
            recurrence=None,
            exceptions={},
            cancelled_occurrences=set(),
            attendees=[dataclasses.replace(a) for a in master.attendees],
        )

    def _expand(self, master: Event, start: datetime, end: datetime) -> list[Event]:
        assert master.recurrence is not None
        duration = master.end.replace(tzinfo=None) - master.start.replace(tzinfo=None)
        tz = zone(master.recurrence.time_zone)
        start_utc, end_utc = start.astimezone(UTC), end.astimezone(UTC)
        found: list[Event] = []
        for occ_start in master.recurrence.starts(master.start, end):
            occ_end = datetime.combine(occ_start.date(), occ_start.time()) + duration
            occ_end_utc = occ_end.replace(tzinfo=tz).astimezone(UTC)
            if occ_end_utc <= start_utc:
                continue
            original = occ_start.astimezone(UTC)
            if original in master.cancelled_occurrences or original in master.exceptions:
                continue
            found.append(self._instance(master, original, occ_start, occ_end_utc.astimezone(tz)))
        for exception in master.exceptions.values():
            if exception.start_utc < end_utc and exception.end_utc > start_utc:
                found.append(exception)
        return found

    def occurrences(
        self, mailbox: str, start: datetime, end: datetime, *, calendar_id: str | None = None
    ) -> list[Event]:
        """Everything in one calendar's view [start, end): singles, occurrences, exceptions; by start.

        Free/busy reads the default calendar only: Exchange publishes free/busy from it alone.
        """
        key = self._scope(mailbox, calendar_id)
        found: list[Event] = []
        start_utc, end_utc = start.astimezone(UTC), end.astimezone(UTC)
        for event in self._calendar(mailbox).values():
            if event.calendar_id != key:
                continue
            if event.recurrence is not None:
                found.extend(self._expand(event, start, end))
                continue
            event_start = event.start_utc
            if event_start < end_utc:
                event_end = event.end_utc
                if event_end > start_utc or event_start == event_end >= start:
                    found.append(event)
        return sorted(found, key=lambda e: (e.start_utc, e.end_utc, e.id))

    def free_busy(self, mailbox: str, start: datetime, end: datetime, *, include_free: bool = False) -> list[BusyItem]:
        """Detailed free/busy: items overlapping the window (whole items, not clipped), UTC."""
        items = []
        for event in self.occurrences(mailbox, start, end):
            if event.is_cancelled or (event.show_as is ShowAs.FREE and not include_free):
                continue
            items.append(
                BusyItem(
                    start=event.start_utc,
                    end=event.end_utc,
                    status=event.show_as,
                    subject=event.subject,
                    location=event.location,
                    is_private=event.is_private,
                    is_meeting=event.is_meeting,
                    is_recurring=event.series_master_id is not None,
                    is_exception=event.type is EventType.EXCEPTION,
                    is_reminder_set=event.is_reminder_on,
                    event_id=event.id,
                )
            )
        return items

    def availability_view(
        self,
        mailbox: str,
        start: datetime,
        end: datetime,
        interval: timedelta,
        *,
        digits: Mapping[ShowAs, str] = GRAPH_DIGITS,
    ) -> str:
        """Merged free/busy: one digit per `interval` slot from `start`, the strongest status wins."""
        return merged_view(self.free_busy(mailbox, start, end), start, end, interval, digits=digits)

    # --- writes -------------------------------------------------------------------------------

    def _mailbox(self, address: str) -> Mailbox:
        mailbox = self.directory.mailbox(address)
        if mailbox is None:
            raise CalendarError("ErrorInvalidUser", f"The requested user '{address}' is invalid.")
        return mailbox

    def _online_meeting(self, organizer: Mailbox, ical_uid: str, wanted: str | None) -> OnlineMeeting | None:
        """Teams (or Skype) join info; None when the mailbox's calendar allows no provider.

        A mailbox whose calendar does not allow Teams gets its default provider instead — users
        report Skype links in that case (see upstream.md §3).
        """
        allowed = organizer.online_meeting_providers
        if not allowed:
            return None
        provider = wanted if wanted in allowed else allowed[0]
        if provider == "teamsForBusiness":
            return teams_meeting(organizer.tenant_id, organizer.id, ical_uid)
        digest = hashlib.sha256(f"{organizer.id}|{ical_uid}".encode()).hexdigest()
        tenant = self.directory.tenant_of(organizer)
        url = f"https://meet.lync.com/{tenant.key}/{organizer.alias}/{digest[:8].upper()}"
        return OnlineMeeting(provider, url, str(int(digest[:12], 16) % 10**9).zfill(9), "+1 323-555-0166")

    def create(
        self,
        mailbox: str,
        draft: EventDraft,
        *,
        at: datetime | None = None,
        notify: bool = True,
        calendar_id: str | None = None,
    ) -> Event:
        """Create `draft` in one of `mailbox`'s calendars as organizer, then send it to internal
        attendees and rooms (whose copies land in their default calendars).

        A repeated `transaction_id` returns the event it created first instead of a duplicate.
        """
        organizer = self._mailbox(mailbox)
        calendar = self._calendar(organizer.email)
        key = self._scope(organizer.email, calendar_id)
        if draft.transaction_id:
            existing = self.find(organizer.email, transaction_id=draft.transaction_id)
            if existing is not None:
                return existing
        if draft.end < draft.start:
            raise CalendarError("ErrorInvalidRequest", "The end time of the event must be after its start time.")
        now = at or self._clock()
        item_id, ical_uid = self._new_ids(organizer.email)
        tz_name = draft.time_zone or getattr(draft.start.tzinfo, "key", None) or organizer.time_zone
        tz = zone(tz_name)
        event = Event(
            id=item_id,
            mailbox=organizer.email,
            ical_uid=ical_uid,
            subject=draft.subject,
            start=draft.start.astimezone(tz),
            end=draft.end.astimezone(tz),
            time_zone=getattr(tz, "key", "UTC"),
            organizer_email=organizer.email,
            organizer_name=organizer.display_name,
            created=now,
            last_modified=now,
            response=Response.ORGANIZER,
            type=EventType.SERIES_MASTER if draft.recurrence else EventType.SINGLE,
            transaction_id=draft.transaction_id,
            calendar_id=key,
        )
        self._apply(event, draft, set(_UPDATABLE))
        if draft.is_online_meeting:
            self._enable_online_meeting(event, organizer, draft.online_meeting_provider)
        calendar[event.id] = event
        if notify:
            self._emit(organizer.email, event.id, ChangeType.CREATED)
        self._send_to_attendees(event, now, notify=notify)
        return event

    def _enable_online_meeting(self, event: Event, organizer: Mailbox, wanted: str | None) -> None:
        meeting = self._online_meeting(organizer, event.ical_uid, wanted or "teamsForBusiness")
        event.is_online_meeting = meeting is not None
        event.online_meeting = meeting
        event.online_meeting_provider = meeting.provider if meeting else "unknown"

    def _apply(self, event: Event, draft: EventDraft, names: set[str]) -> None:
        for name in names:
            value = getattr(draft, name)
            if name in ("start", "end"):
                value = value.astimezone(zone(event.time_zone))
            elif name == "attendees":
                value = [dataclasses.replace(a, email=a.email.lower()) for a in value]
            elif name in ("categories",):
                value = list(value)
            elif name == "extended_properties":
                value = {**event.extended_properties, **value}
            elif name in ("is_online_meeting", "online_meeting_provider", "time_zone"):
                continue  # handled by the caller
            setattr(event, name, value)
        if event.recurrence is not None and event.type is EventType.SINGLE:
            event.type = EventType.SERIES_MASTER

    def _copies(self, event: Event) -> list[Event]:
        """Attendee copies of an organizer's event (same iCalUId in the attendees' calendars)."""
        found = []
        for attendee in event.attendees:
            if attendee.email in self._items and attendee.email != event.mailbox:
                copy = self.find(attendee.email, ical_uid=event.ical_uid)
                if copy is not None:
                    found.append(copy)
        return found

    def _room_is_free(self, room: str, event: Event) -> bool:
        """Whether a room can take every occurrence of `event` in the next 180 days (or its only one)."""
        if event.recurrence is None:
            windows = [(event.start_utc, event.end_utc)]
        else:
            horizon = event.start_utc + timedelta(days=180)
            windows = [(o.start_utc, o.end_utc) for o in self._expand(event, event.start_utc, horizon)]
        for lo, hi in windows:
            for other in self.occurrences(room, lo, hi):
                if other.ical_uid != event.ical_uid and not other.is_cancelled and other.show_as is not ShowAs.FREE:
                    return False
        return True

    def _send_to_attendees(self, event: Event, now: datetime, *, notify: bool) -> None:
        organizer = self._mailbox(event.organizer_email)
        for attendee in event.attendees:
            target = self.directory.mailbox(attendee.email)
            if target is None or target.tenant_id != organizer.tenant_id or target.email == organizer.email:
                continue  # external recipients get an email, not a calendar item
            existing = self.find(target.email, ical_uid=event.ical_uid)
            if target.is_room:
                accepted = self._room_is_free(target.email, event)
                attendee.response = Response.ACCEPTED if accepted else Response.DECLINED
                attendee.response_time = now
                if not accepted:
                    if existing is not None:
                        self._remove(target.email, existing.id, notify=notify)
                    continue
            if existing is None:
                self._write_copy(event, target, attendee, now, notify=notify)
            else:
                self._sync_copy(existing, event, now, notify=notify)

    def _write_copy(self, event: Event, target: Mailbox, attendee: Attendee, now: datetime, *, notify: bool) -> None:
        item_id, _ = self._new_ids(target.email)
        copy = dataclasses.replace(
            event,
            id=item_id,
            mailbox=target.email,
            response=Response.ACCEPTED if target.is_room else Response.NOT_RESPONDED,
            response_time=now if target.is_room else None,
            show_as=ShowAs.TENTATIVE if event.show_as is ShowAs.BUSY and not target.is_room else event.show_as,
            attendees=[dataclasses.replace(a) for a in event.attendees],
            exceptions={},
            cancelled_occurrences=set(event.cancelled_occurrences),
            categories=[],
            extended_properties={},
            transaction_id=None,
            created=now,
            last_modified=now,
            version=1,
            calendar_id=None,
        )
        copy.exceptions = self._exceptions_for(copy, event)
        self._items[target.email][copy.id] = copy
        if notify:
            self._emit(target.email, copy.id, ChangeType.CREATED)

    def _exceptions_for(self, copy: Event, master: Event) -> dict[datetime, Event]:
        """The organizer's modified occurrences, re-keyed to the attendee's own series."""
        return {
            original: dataclasses.replace(
                exception,
                id=self.occurrence_id(copy.id, original),
                mailbox=copy.mailbox,
                series_master_id=copy.id,
                response=copy.response,
                show_as=copy.show_as if exception.show_as is master.show_as else exception.show_as,
            )
            for original, exception in master.exceptions.items()
        }

    def _sync_copy(self, copy: Event, event: Event, now: datetime, *, notify: bool) -> None:
        for name in _PROPAGATED | {
            "is_online_meeting",
            "online_meeting_provider",
            "online_meeting",
            "time_zone",
        }:
            if name == "show_as":
                continue  # the attendee's own choice stays
            setattr(
                copy,
                name,
                getattr(event, name) if name != "attendees" else [dataclasses.replace(a) for a in event.attendees],
            )
        copy.exceptions = self._exceptions_for(copy, event)
        copy.cancelled_occurrences = set(event.cancelled_occurrences)
        copy.is_cancelled = event.is_cancelled
        copy.last_modified = now
        copy.version += 1
        if notify:
            self._emit(copy.mailbox, copy.id, ChangeType.UPDATED)

    def update(self, mailbox: str, event_id: str, changes: Mapping[str, Any], *, at: datetime | None = None) -> Event:
        """Change fields (names of `EventDraft`) of an item or of one occurrence (which becomes an exception).

        The organizer's changes reach attendee copies; an attendee's changes stay in their copy.
        Once online, a meeting stays online: Graph ignores `isOnlineMeeting: false`
        (https://learn.microsoft.com/graph/outlook-calendar-online-meetings).
        """
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise CalendarError("ErrorInvalidProperty", f"Properties cannot be updated: {sorted(unknown)}")
        now = at or self._clock()
        event = self.get(mailbox, event_id)
        if event is None:
            raise CalendarError("ErrorItemNotFound", "The specified object was not found in the store.")
        owner = self._mailbox(mailbox)
        master = self._master_of(owner.email, event)
        if event.type in (EventType.OCCURRENCE, EventType.EXCEPTION):
            assert master is not None
            assert event.original_start is not None
            exception = master.exceptions.get(event.original_start) or dataclasses.replace(
                event, type=EventType.EXCEPTION, id=event.id
            )
            exception.type = EventType.EXCEPTION
            target = exception
        else:
            target = event
        draft = EventDraft(subject=target.subject, start=target.start, end=target.end)
        for name, value in changes.items():
            setattr(draft, name, value)
        if changes.get("time_zone"):
            target.time_zone = getattr(zone(str(changes["time_zone"])), "key", "UTC")
        self._apply(target, draft, set(changes))
        if target.end < target.start:
            raise CalendarError("ErrorInvalidRequest", "The end time of the event must be after its start time.")
        if changes.get("is_online_meeting") and not target.is_online_meeting and target.is_organizer:
            self._enable_online_meeting(target, owner, changes.get("online_meeting_provider"))
        target.last_modified = now
        target.version += 1
        root = target
        if target.type is EventType.EXCEPTION:
            assert master is not None
            assert target.original_start is not None
            master.exceptions[target.original_start] = target
            master.last_modified = now
            master.version += 1
            root = master
        self._emit(owner.email, root.id, ChangeType.UPDATED)
        if root.is_organizer:
            self._send_to_attendees(root, now, notify=True)
            self._drop_removed_attendees(root, now)
        return target

    def _master_of(self, mailbox: str, event: Event) -> Event | None:
        if event.series_master_id is None:
            return None
        return self._calendar(mailbox).get(event.series_master_id)

    def _drop_removed_attendees(self, event: Event, now: datetime) -> None:
        current = {a.email for a in event.attendees}
        for mailbox_email, calendar in self._items.items():
            if mailbox_email == event.mailbox or mailbox_email in current:
                continue
            copy = next((e for e in calendar.values() if e.ical_uid == event.ical_uid), None)
            if copy is not None:
                self._cancel_copy(copy, now)

    def _cancel_copy(self, copy: Event, now: datetime) -> None:
        """What an attendee's calendar does with a cancellation: rooms drop it, people see "Canceled:"."""
        if self._mailbox(copy.mailbox).is_room:
            self._remove(copy.mailbox, copy.id, notify=True)
            return
        copy.is_cancelled = True
        copy.show_as = ShowAs.FREE
        if not copy.subject.startswith("Canceled: "):
            copy.subject = "Canceled: " + copy.subject
        copy.last_modified = now
        copy.version += 1
        self._emit(copy.mailbox, copy.id, ChangeType.UPDATED)

    def _remove(self, mailbox: str, event_id: str, *, notify: bool) -> None:
        self._items[mailbox].pop(event_id, None)
        if notify:
            self._emit(mailbox, event_id, ChangeType.DELETED)

    def delete(self, mailbox: str, event_id: str, *, at: datetime | None = None) -> None:
        """Delete an item; the organizer deleting a meeting cancels it for every attendee.

        "If the event is a meeting, deleting the event on the organizer's calendar sends a
        cancellation message to the meeting attendees" (https://learn.microsoft.com/graph/api/event-delete).
        """
        now = at or self._clock()
        owner = self._mailbox(mailbox)
        event = self.get(owner.email, event_id)
        if event is None:
            raise CalendarError("ErrorItemNotFound", "The specified object was not found in the store.")
        if event.type in (EventType.OCCURRENCE, EventType.EXCEPTION):
            master = self._master_of(owner.email, event)
            assert master is not None
            assert event.original_start is not None
            master.exceptions.pop(event.original_start, None)
            master.cancelled_occurrences.add(event.original_start)
            master.last_modified = now
            master.version += 1
            self._emit(owner.email, master.id, ChangeType.UPDATED)
            if master.is_organizer:
                for copy in self._copies(master):
                    self._sync_copy(copy, master, now, notify=True)
            return
        copies = self._copies(event) if event.is_organizer else []
        self._remove(owner.email, event.id, notify=True)
        for copy in copies:
            self._cancel_copy(copy, now)

    def cancel(self, mailbox: str, event_id: str, comment: str = "", *, at: datetime | None = None) -> None:
        """The organizer's cancel action (https://learn.microsoft.com/graph/api/event-cancel)."""
        event = self.get(mailbox, event_id)
        if event is None:
            raise CalendarError("ErrorItemNotFound", "The specified object was not found in the store.")
        if not event.is_organizer:
            raise CalendarError(
                "ErrorAccessDenied",
                "Your request can't be completed. You need to be an organizer to cancel a meeting.",
            )
        self.delete(mailbox, event_id, at=at)

    def respond(self, mailbox: str, event_id: str, response: Response, *, at: datetime | None = None) -> Event:
        """An attendee accepts, tentatively accepts or declines; the organizer's copy records it."""
        now = at or self._clock()
        event = self.get(mailbox, event_id)
        if event is None:
            raise CalendarError("ErrorItemNotFound", "The specified object was not found in the store.")
        if event.is_organizer:
            raise CalendarError(
                "ErrorInvalidRequest",
                "Your request can't be completed. You can't respond to your own meeting.",
            )
        master = self._master_of(event.mailbox, event) or event
        master.response = response
        master.response_time = now
        master.show_as = {
            Response.ACCEPTED: ShowAs.BUSY,
            Response.TENTATIVELY_ACCEPTED: ShowAs.TENTATIVE,
            Response.DECLINED: ShowAs.FREE,
        }.get(response, master.show_as)
        master.version += 1
        self._emit(master.mailbox, master.id, ChangeType.UPDATED)
        organizer_copy = (
            self.find(master.organizer_email, ical_uid=master.ical_uid)
            if master.organizer_email in self._items
            else None
        )
        if organizer_copy is not None:
            for attendee in organizer_copy.attendees:
                if attendee.email == master.mailbox:
                    attendee.response, attendee.response_time = response, now
            organizer_copy.version += 1
            self._emit(organizer_copy.mailbox, organizer_copy.id, ChangeType.UPDATED)
        if response is Response.DECLINED:
            self._remove(master.mailbox, master.id, notify=True)
        return master

    # --- snapshots ----------------------------------------------------------------------------

    def snapshot(self, mailboxes: Iterable[str] | None = None) -> bytes:
        """Canonical JSON of calendars: two stores built from the same seed give identical bytes."""
        names = sorted(mailboxes) if mailboxes is not None else sorted(self._items)
        dump = {name: [_jsonable(e) for e in sorted(self._items[name].values(), key=lambda e: e.id)] for name in names}
        return json.dumps(dump, sort_keys=True, separators=(",", ":")).encode()


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, set | frozenset):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
