"""Deterministic calendars for the seeded directory: series with exceptions and cancelled
occurrences, meetings with internal attendees and rooms, all-day, multi-day, OOF, tentative,
working-elsewhere, private and DST-crossing items, over −30…+60 days around the anchor.

Every random choice comes from `random.Random` seeded with `"{seed}|{tenant}|…"` strings, and every
timestamp from the anchor, so the same (seed, anchor) gives byte-identical calendars
(`CalendarStore.snapshot()`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta

from calbroker.sandbox.calendars import CalendarStore
from calbroker.sandbox.directory import Directory, Mailbox, Tenant
from calbroker.sandbox.events import Attendee, AttendeeType, EventDraft, Response, Sensitivity, ShowAs
from calbroker.sandbox.recurrence import Recurrence
from calbroker.sandbox.seed.tenants import WEEKDAYS, WELL_KNOWN
from calbroker.sandbox.timezones import utc_offset_changes, zone

__all__ = ["build_calendars"]

_SUBJECTS = (
    "Project sync",
    "Design review",
    "Customer call",
    "Budget planning",
    "Interview",
    "Quarterly review",
    "Roadmap discussion",
    "Vendor meeting",
    "Focus time",
    "Training",
    "Lunch with team",
    "Status update",
)


class _Calendars:
    """One pass of calendar generation for one tenant; every random choice comes from `rng`."""

    def __init__(self, store: CalendarStore, tenant: Tenant, seed: int, anchor: date) -> None:
        self.store = store
        self.tenant = tenant
        self.anchor = anchor
        self.seed = seed
        self.people = sorted(tenant.users(), key=lambda m: m.email)
        self.rooms = sorted(tenant.rooms(), key=lambda m: m.email)
        self.created = datetime.combine(anchor - timedelta(days=60), time(9), UTC)

    def rng(self, *parts: str) -> random.Random:
        return random.Random("|".join((str(self.seed), self.tenant.key, *parts)))

    def at(self, rng: random.Random) -> datetime:
        return self.created + timedelta(minutes=rng.randrange(0, 30 * 24 * 60))

    def slot(self, mailbox: Mailbox, day: date, rng: random.Random, minutes: int) -> tuple[datetime, datetime]:
        tz = zone(mailbox.time_zone)
        start_t, end_t = mailbox.working_hours.start, mailbox.working_hours.end
        span = (end_t.hour * 60 + end_t.minute) - (start_t.hour * 60 + start_t.minute) - minutes
        offset = rng.randrange(0, max(span, 30) // 30) * 30
        start = datetime.combine(day, start_t, tz) + timedelta(minutes=offset)
        start = start.astimezone(UTC).astimezone(tz)
        return start, start + timedelta(minutes=minutes)

    def create(self, organizer: Mailbox, draft: EventDraft, rng: random.Random) -> str:
        return self.store.create(organizer.email, draft, at=self.at(rng), notify=False).id

    def attendees(self, rng: random.Random, organizer: Mailbox, count: int, *, room: bool = False) -> list[Attendee]:
        others = [p for p in self.people if p.email != organizer.email]
        chosen = rng.sample(others, min(count, len(others)))
        result = [
            Attendee(p.email, p.display_name, AttendeeType.REQUIRED if i else AttendeeType.OPTIONAL)
            for i, p in enumerate(chosen)
        ]
        result.reverse()
        if room and self.rooms:
            chosen_room = rng.choice(self.rooms)
            result.append(Attendee(chosen_room.email, chosen_room.display_name, AttendeeType.RESOURCE))
        return result

    def series(self) -> None:
        """Weekly and monthly series with a modified and a cancelled occurrence, crossing DST."""
        rng = self.rng("series")
        organizers = rng.sample(self.people, min(12, len(self.people)))
        fixed = [p for p in self.people if p.email in WELL_KNOWN.values()]
        for organizer in fixed + [o for o in organizers if o not in fixed]:
            local = self.rng("series", organizer.email)
            weekday = local.choice(WEEKDAYS)
            first_day = self.anchor - timedelta(weeks=7) + timedelta(days=WEEKDAYS.index(weekday))
            start, end = self.slot(organizer, first_day, local, local.choice((30, 60)))
            tz_name = organizer.time_zone
            bounded = local.random() < 0.3
            recurrence = Recurrence(
                pattern_type="weekly",
                start_date=first_day,
                time_zone=tz_name,
                days_of_week=(weekday,),
                first_day_of_week="sunday",
                range_type="endDate" if bounded else "noEnd",
                end_date=self.anchor + timedelta(weeks=12) if bounded else None,
            )
            master_id = self.create(
                organizer,
                EventDraft(
                    subject=f"Weekly {local.choice(('team sync', '1:1', 'planning', 'standup review'))}",
                    start=start,
                    end=end,
                    time_zone=tz_name,
                    attendees=self.attendees(local, organizer, local.randint(1, 3), room=local.random() < 0.4),
                    recurrence=recurrence,
                    is_online_meeting=local.random() < 0.5,
                    online_meeting_provider="teamsForBusiness",
                ),
                local,
            )
            week = local.randint(3, 6)
            moved = datetime.combine(
                first_day + timedelta(weeks=week), start.timetz().replace(tzinfo=None), zone(tz_name)
            )
            original = moved.astimezone(UTC)
            self.store.update(
                organizer.email,
                self.store.occurrence_id(master_id, original),
                {
                    "start": moved + timedelta(hours=1),
                    "end": moved + (end - start) + timedelta(hours=1),
                    "subject": "Moved: weekly",
                },
                at=self.at(local),
            )
            cancelled = datetime.combine(
                first_day + timedelta(weeks=week + 2), start.timetz().replace(tzinfo=None), zone(tz_name)
            )
            self.store.delete(
                organizer.email,
                self.store.occurrence_id(master_id, cancelled.astimezone(UTC)),
                at=self.at(local),
            )
        admin = next((p for p in self.people if p.is_admin), self.people[0])
        first = self.anchor - timedelta(days=60)
        monthly = Recurrence("relativeMonthly", first, admin.time_zone, days_of_week=("tuesday",), index="first")
        # The series master starts on the first occurrence, as Outlook stores it.
        start = next(
            monthly.starts(datetime.combine(first, time(10), zone(admin.time_zone)), self.created + timedelta(days=400))
        )
        self.create(
            admin,
            EventDraft(
                subject="All-hands",
                start=start,
                end=start + timedelta(hours=1),
                time_zone=admin.time_zone,
                attendees=[Attendee(p.email, p.display_name) for p in self.people[::4] if p != admin],
                recurrence=monthly,
                is_online_meeting=True,
                online_meeting_provider="teamsForBusiness",
            ),
            rng,
        )

    def singles(self, mailbox: Mailbox) -> None:
        """Meetings, all-day, multi-day, OOF, working-elsewhere, private and DST-crossing items."""
        rng = self.rng("singles", mailbox.email)
        window = [self.anchor + timedelta(days=d) for d in range(-30, 61)]
        workdays = [d for d in window if d.weekday() < 5]
        well_known = mailbox.email in WELL_KNOWN.values()
        for _ in range(rng.randint(6, 10)):
            day = rng.choice(workdays)
            start, end = self.slot(mailbox, day, rng, rng.choice((30, 30, 60, 60, 90)))
            roll = rng.random()
            meeting = roll < 0.5
            self.create(
                mailbox,
                EventDraft(
                    subject=rng.choice(_SUBJECTS),
                    start=start,
                    end=end,
                    show_as=ShowAs.TENTATIVE if 0.85 < roll < 0.95 else ShowAs.FREE if roll >= 0.95 else ShowAs.BUSY,
                    attendees=self.attendees(rng, mailbox, rng.randint(1, 3), room=rng.random() < 0.3)
                    if meeting
                    else (),
                    is_online_meeting=meeting and rng.random() < 0.5,
                    online_meeting_provider="teamsForBusiness",
                    location="" if meeting else rng.choice(("", "Cafeteria", "Building 40", "Home")),
                ),
                rng,
            )
        tz = zone(mailbox.time_zone)

        def all_day(first: date, days: int, subject: str, show_as: ShowAs, location: str = "") -> None:
            start = datetime.combine(first, time(0), tz)
            end = datetime.combine(first + timedelta(days=days), time(0), tz)
            draft = EventDraft(subject, start, end, is_all_day=True, show_as=show_as, location=location)
            self.create(mailbox, draft, rng)

        all_day(rng.choice(workdays), 1, "Training day", rng.choice((ShowAs.BUSY, ShowAs.FREE)))
        all_day(rng.choice(workdays), 1, "Working from home", ShowAs.WORKING_ELSEWHERE)
        if well_known or rng.random() < 0.4:
            all_day(rng.choice(workdays[:-10]), rng.randint(3, 5), "Vacation", ShowAs.OOF)
        if well_known or rng.random() < 0.25:
            all_day(
                rng.choice(workdays[:-5]),
                rng.randint(2, 3),
                "Conference",
                ShowAs.BUSY,
                location="Convention Center",
            )
        day = rng.choice(workdays)
        start, end = self.slot(mailbox, day, rng, 60)
        self.create(
            mailbox,
            EventDraft(
                subject="Doctor appointment",
                start=start,
                end=end,
                sensitivity=Sensitivity.PRIVATE,
                location="Clinic",
            ),
            rng,
        )
        window_start = datetime.combine(window[0], time(0), UTC)
        changes = utc_offset_changes(tz, window_start, window_start + timedelta(days=91))
        if changes and (well_known or rng.random() < 0.2):
            switch = changes[0].astimezone(tz)
            night = datetime.combine(switch.date() - timedelta(days=1), time(22), tz)
            self.create(
                mailbox,
                EventDraft(
                    subject="Overnight maintenance window (DST change)",
                    start=night,
                    end=datetime.combine(switch.date(), time(6), tz),
                    show_as=ShowAs.BUSY,
                ),
                rng,
            )

    def responses(self) -> None:
        """Attendees answer most invitations, so organizers see a mix of response statuses."""
        rng = self.rng("responses")
        for person in self.people:
            for event in list(self.store.events(person.email)):
                if event.is_organizer or event.is_cancelled:
                    continue
                roll = rng.random()
                response = (
                    Response.ACCEPTED
                    if roll < 0.6
                    else Response.TENTATIVELY_ACCEPTED
                    if roll < 0.75
                    else Response.DECLINED
                    if roll < 0.8
                    else None
                )
                if response is not None:
                    self.store.respond(person.email, event.id, response, at=self.at(rng))


# Secondary calendars of well-known users, as people add them in Outlook ("New calendar"): their items
# show in the calendar's own views only, never in free/busy.
SECONDARY_CALENDARS = (
    (WELL_KNOWN["contoso_user"], "Team Holidays", ("Store opening", "Regional holiday", "Inventory day")),
    (WELL_KNOWN["fabrikam_user"], "Projects", ("Milestone review", "Release window", "Site visit")),
)


def _secondary_calendars(store: CalendarStore, directory: Directory, seed: int, anchor: date) -> None:
    for address, name, subjects in SECONDARY_CALENDARS:
        mailbox = directory.mailbox(address)
        assert mailbox is not None, address
        folder = store.add_calendar(mailbox.email, name)
        rng = random.Random(f"{seed}|secondary|{mailbox.email}")
        tz = zone(mailbox.time_zone)
        for subject in subjects:
            day = anchor + timedelta(days=rng.randrange(0, 28))
            start = datetime.combine(day, time(rng.choice((9, 11, 14))), tz)
            draft = EventDraft(subject, start, start + timedelta(hours=1), show_as=ShowAs.BUSY)
            created = datetime.combine(anchor - timedelta(days=30), time(9), UTC)
            store.create(mailbox.email, draft, at=created, notify=False, calendar_id=folder.id)


def build_calendars(directory: Directory, seed: int, anchor: date, clock: Callable[[], datetime]) -> CalendarStore:
    """Fill every mailbox's calendar for the window −30…+60 days around `anchor` (a Monday)."""
    if anchor.weekday() != 0:
        raise ValueError(f"the calendar anchor must be a Monday, got {anchor.isoformat()}")
    store = CalendarStore(directory, clock=clock, id_seed=str(seed))
    for key in ("contoso", "fabrikam"):
        generator = _Calendars(store, directory.tenants[key], seed, anchor)
        generator.series()
        for mailbox in generator.people:
            generator.singles(mailbox)
        generator.responses()
    _secondary_calendars(store, directory, seed, anchor)
    store.clear_changes()
    return store
