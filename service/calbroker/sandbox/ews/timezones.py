"""Windows time zones for EWS: ids, full definitions (GetServerTimeZones) and the legacy
Bias/StandardTime/DaylightTime form used by GetUserAvailability, all derived from the IANA database.

- TimeZoneDefinition: https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/timezonedefinition
- TimeZone (Availability): https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/timezone-availability
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from calbroker.sandbox import timezones
from calbroker.sandbox.ews.soap import Element, MalformedRequest, child, find_text, format_duration, t

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# Display names for TimeZoneDefinition/@Name (Windows registry "Display" values) of the zones the seed
# and common clients use; other zones show their id. Ids come from `calbroker.sandbox.timezones`
# (CLDR), so Graph and EWS share one id table.
_DISPLAY_NAMES: dict[str, str] = {
    "UTC": "(UTC) Coordinated Universal Time",
    "Dateline Standard Time": "(UTC-12:00) International Date Line West",
    "Hawaiian Standard Time": "(UTC-10:00) Hawaii",
    "Alaskan Standard Time": "(UTC-09:00) Alaska",
    "Pacific Standard Time": "(UTC-08:00) Pacific Time (US & Canada)",
    "US Mountain Standard Time": "(UTC-07:00) Arizona",
    "Mountain Standard Time": "(UTC-07:00) Mountain Time (US & Canada)",
    "Central Standard Time": "(UTC-06:00) Central Time (US & Canada)",
    "Canada Central Standard Time": "(UTC-06:00) Saskatchewan",
    "Central Standard Time (Mexico)": "(UTC-06:00) Guadalajara, Mexico City, Monterrey",
    "Eastern Standard Time": "(UTC-05:00) Eastern Time (US & Canada)",
    "Atlantic Standard Time": "(UTC-04:00) Atlantic Time (Canada)",
    "Newfoundland Standard Time": "(UTC-03:30) Newfoundland",
    "E. South America Standard Time": "(UTC-03:00) Brasilia",
    "Argentina Standard Time": "(UTC-03:00) City of Buenos Aires",
    "Greenwich Standard Time": "(UTC+00:00) Monrovia, Reykjavik",
    "GMT Standard Time": "(UTC+00:00) Dublin, Edinburgh, Lisbon, London",
    "Morocco Standard Time": "(UTC+01:00) Casablanca",
    "W. Europe Standard Time": "(UTC+01:00) Amsterdam, Berlin, Bern, Rome, Stockholm, Vienna",
    "Romance Standard Time": "(UTC+01:00) Brussels, Copenhagen, Madrid, Paris",
    "Central Europe Standard Time": "(UTC+01:00) Belgrade, Bratislava, Budapest, Ljubljana, Prague",
    "Central European Standard Time": "(UTC+01:00) Sarajevo, Skopje, Warsaw, Zagreb",
    "GTB Standard Time": "(UTC+02:00) Athens, Bucharest",
    "FLE Standard Time": "(UTC+02:00) Helsinki, Kyiv, Riga, Sofia, Tallinn, Vilnius",
    "Israel Standard Time": "(UTC+02:00) Jerusalem",
    "Egypt Standard Time": "(UTC+02:00) Cairo",
    "South Africa Standard Time": "(UTC+02:00) Harare, Pretoria",
    "Turkey Standard Time": "(UTC+03:00) Istanbul",
    "Russian Standard Time": "(UTC+03:00) Moscow, St. Petersburg",
    "Arabian Standard Time": "(UTC+04:00) Abu Dhabi, Muscat",
    "Iran Standard Time": "(UTC+03:30) Tehran",
    "Pakistan Standard Time": "(UTC+05:00) Islamabad, Karachi",
    "India Standard Time": "(UTC+05:30) Chennai, Kolkata, Mumbai, New Delhi",
    "Nepal Standard Time": "(UTC+05:45) Kathmandu",
    "SE Asia Standard Time": "(UTC+07:00) Bangkok, Hanoi, Jakarta",
    "China Standard Time": "(UTC+08:00) Beijing, Chongqing, Hong Kong, Urumqi",
    "Singapore Standard Time": "(UTC+08:00) Kuala Lumpur, Singapore",
    "Tokyo Standard Time": "(UTC+09:00) Osaka, Sapporo, Tokyo",
    "Korea Standard Time": "(UTC+09:00) Seoul",
    "W. Australia Standard Time": "(UTC+08:00) Perth",
    "Cen. Australia Standard Time": "(UTC+09:30) Adelaide",
    "E. Australia Standard Time": "(UTC+10:00) Brisbane",
    "AUS Eastern Standard Time": "(UTC+10:00) Canberra, Melbourne, Sydney",
    "New Zealand Standard Time": "(UTC+12:00) Auckland, Wellington",
}


def windows_id(zone: str | tzinfo) -> str:
    """The Windows id Exchange reports for a zone (StartTimeZone); zones outside the table report UTC."""
    key = zone if isinstance(zone, str) else getattr(zone, "key", None) or str(zone)
    name = timezones.windows_name(key)
    return name if name in timezones.WINDOWS_TO_IANA else "UTC"


def zone_for_windows_id(ms_id: str) -> tzinfo | None:
    if ms_id not in timezones.WINDOWS_TO_IANA:
        return None
    try:
        return timezones.zone(ms_id)
    except timezones.UnknownTimeZone:  # pragma: no cover - tzdata ships every zone in the table
        return None


@dataclass(frozen=True, slots=True)
class YearlyChange:
    """A Windows-style yearly transition: the ``occurrence``-th ``weekday`` of ``month`` (5 = last),
    at local wall-clock ``at`` measured in the time that is in force before the change."""

    month: int
    weekday: int  # 0 = Monday
    occurrence: int
    at: time

    def in_year(self, year: int) -> datetime:
        first_weekday, days = calendar.monthrange(year, self.month)
        day = 1 + (self.weekday - first_weekday) % 7 + 7 * (self.occurrence - 1)
        while day > days:
            day -= 7
        return datetime.combine(date(year, self.month, day), self.at)


@dataclass(frozen=True, slots=True)
class ZoneRule:
    standard_offset: timedelta
    daylight_delta: timedelta
    to_daylight: YearlyChange | None
    to_standard: YearlyChange | None


def _offset(zone: tzinfo, instant: datetime) -> timedelta:
    return instant.astimezone(zone).utcoffset() or timedelta(0)


def _change_at(zone: tzinfo, before: datetime, after: datetime) -> datetime:
    """First UTC minute in (before, after] whose offset differs from ``before``'s."""
    old = _offset(zone, before)
    while after - before > timedelta(minutes=1):
        mid = before + (after - before) / 2
        mid = mid.replace(second=0, microsecond=0)
        if mid <= before:
            mid = before + timedelta(minutes=1)
        if _offset(zone, mid) == old:
            before = mid
        else:
            after = mid
    return after


def _yearly_change(local: datetime) -> YearlyChange:
    days = calendar.monthrange(local.year, local.month)[1]
    occurrence = 5 if local.day + 7 > days else (local.day - 1) // 7 + 1
    return YearlyChange(local.month, local.weekday(), occurrence, local.time())


def zone_rule(zone: tzinfo, year: int) -> ZoneRule:
    """The DST rule in force in ``year``, read off the IANA data by locating the year's transitions."""
    start = datetime(year, 1, 1, 12, tzinfo=UTC)
    previous = start
    to_daylight = to_standard = None
    standard = daylight = None
    for day in range(1, 367):
        instant = start + timedelta(days=day)
        if instant.year != year and day > 1 and instant.month > 1:
            break
        if _offset(zone, instant) == _offset(zone, previous):
            previous = instant
            continue
        moment = _change_at(zone, previous, instant)
        old, new = _offset(zone, previous), _offset(zone, moment)
        local_before = (moment + old).replace(tzinfo=None)
        dst = moment.astimezone(zone).dst() or timedelta(0)
        if dst and to_daylight is None:
            to_daylight = _yearly_change(local_before)
            standard, daylight = old, new
        elif not dst and to_standard is None:
            to_standard = _yearly_change(local_before)
            standard, daylight = new, old
        previous = instant
    if to_daylight is None or to_standard is None or standard is None or daylight is None:
        jan = datetime(year, 1, 15, tzinfo=UTC).astimezone(zone)
        base = (jan.utcoffset() or timedelta(0)) - (jan.dst() or timedelta(0))
        return ZoneRule(base, timedelta(0), None, None)
    return ZoneRule(standard, daylight - standard, to_daylight, to_standard)


def _minutes(delta: timedelta) -> str:
    return str(int(delta.total_seconds()) // 60)


def _change_children(parent: Element, change: YearlyChange | None, bias: timedelta) -> None:
    # A zone without DST gets zeroed rules, as Windows stores them (Month 0 = no transition).
    child(parent, t("Bias"), _minutes(bias))
    child(parent, t("Time"), change.at.strftime("%H:%M:%S") if change else "00:00:00")
    child(parent, t("DayOrder"), str(change.occurrence) if change else "0")
    child(parent, t("Month"), str(change.month) if change else "0")
    child(parent, t("DayOfWeek"), WEEKDAYS[change.weekday] if change else "Sunday")


def legacy_timezone(parent: Element, zone: tzinfo, year: int) -> Element:
    """``<t:TimeZone>`` (Bias/StandardTime/DaylightTime) of ``zone``; Bias is minutes *west* of UTC."""
    rule = zone_rule(zone, year)
    elem = child(parent, t("TimeZone"))
    child(elem, t("Bias"), _minutes(-rule.standard_offset))
    _change_children(child(elem, t("StandardTime")), rule.to_standard, timedelta(0))
    _change_children(child(elem, t("DaylightTime")), rule.to_daylight, -rule.daylight_delta)
    return elem


def timezone_definition(parent: Element, ms_id: str, year: int, *, full: bool) -> Element | None:
    """``<t:TimeZoneDefinition>`` as GetServerTimeZones returns it (one transitions group: this year's rule).

    https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/getservertimezones-operation
    """
    zone = zone_for_windows_id(ms_id)
    if zone is None:
        return None
    definition = child(parent, t("TimeZoneDefinition"), Id=ms_id, Name=_DISPLAY_NAMES.get(ms_id, ms_id))
    if not full:
        return definition
    rule = zone_rule(zone, year)
    std_id = f"trule:Microsoft/Registry/{ms_id}/{year}-Standard"
    dst_id = f"trule:Microsoft/Registry/{ms_id}/{year}-Daylight"
    periods = child(definition, t("Periods"))
    child(periods, t("Period"), Bias=format_duration(-rule.standard_offset), Name="Standard", Id=std_id)
    group = child(child(definition, t("TransitionsGroups")), t("TransitionsGroup"), Id="0")
    if rule.to_daylight is None or rule.to_standard is None:
        child(child(group, t("Transition")), t("To"), std_id, Kind="Period")
    else:
        daylight_bias = -(rule.standard_offset + rule.daylight_delta)
        child(periods, t("Period"), Bias=format_duration(daylight_bias), Name="Daylight", Id=dst_id)
        for period_id, change in ((dst_id, rule.to_daylight), (std_id, rule.to_standard)):
            transition = child(group, t("RecurringDayTransition"))
            child(transition, t("To"), period_id, Kind="Period")
            child(transition, t("TimeOffset"), format_duration(_since_midnight(change.at)))
            child(transition, t("Month"), str(change.month))
            child(transition, t("DayOfWeek"), WEEKDAYS[change.weekday])
            # GetServerTimeZones writes "last" as -1 (the legacy TimeZone element uses 5).
            child(transition, t("Occurrence"), "-1" if change.occurrence == 5 else str(change.occurrence))
    child(child(child(definition, t("Transitions")), t("Transition")), t("To"), "0", Kind="Group")
    return definition


def _since_midnight(at: time) -> timedelta:
    return timedelta(hours=at.hour, minutes=at.minute, seconds=at.second)


@dataclass(frozen=True, slots=True)
class LegacyTimeZone:
    """The request's ``<t:TimeZone>`` in GetUserAvailability; converts between UTC and its wall clock."""

    bias: timedelta  # minutes west of UTC, standard time
    standard_bias: timedelta
    daylight_bias: timedelta
    to_standard: YearlyChange | None
    to_daylight: YearlyChange | None

    @classmethod
    def from_xml(cls, elem: Element) -> LegacyTimeZone:
        def minutes(path: str) -> timedelta:
            text = find_text(elem, path)
            try:
                return timedelta(minutes=int(text or "0"))
            except ValueError as exc:
                raise MalformedRequest(f"Invalid time zone bias {text!r}") from exc

        def change(name: str) -> YearlyChange | None:
            node = elem.find(t(name))
            if node is None:
                return None
            try:
                month = int(find_text(node, t("Month")) or "0")
                order = int(find_text(node, t("DayOrder")) or "0")
                weekday = WEEKDAYS.index(find_text(node, t("DayOfWeek")) or "Sunday")
                at = time.fromisoformat(find_text(node, t("Time")) or "00:00:00")
            except ValueError as exc:
                raise MalformedRequest(f"Invalid {name} in TimeZone") from exc
            if not 1 <= month <= 12 or order == 0:
                return None
            return YearlyChange(month, weekday, 5 if order in (-1, 5) else order, at)

        return cls(
            bias=minutes(t("Bias")),
            standard_bias=minutes(f"{t('StandardTime')}/{t('Bias')}"),
            daylight_bias=minutes(f"{t('DaylightTime')}/{t('Bias')}"),
            to_standard=change("StandardTime"),
            to_daylight=change("DaylightTime"),
        )

    def _has_dst(self) -> bool:
        return (
            self.to_standard is not None and self.to_daylight is not None and self.standard_bias != self.daylight_bias
        )

    def _is_daylight(self, instant: datetime) -> bool:
        if not self._has_dst() or self.to_daylight is None or self.to_standard is None:
            return False
        year = instant.astimezone(UTC).year
        # DaylightTime.Time is standard wall-clock time, StandardTime.Time is daylight wall-clock time.
        begins = self.to_daylight.in_year(year) + self.bias + self.standard_bias
        ends = self.to_standard.in_year(year) + self.bias + self.daylight_bias
        moment = instant.astimezone(UTC).replace(tzinfo=None)
        if begins < ends:
            return begins <= moment < ends
        return moment >= begins or moment < ends

    def utc_offset(self, instant: datetime) -> timedelta:
        extra = self.daylight_bias if self._is_daylight(instant) else self.standard_bias
        return -(self.bias + extra)

    def to_local(self, instant: datetime) -> datetime:
        """Naive wall-clock time for an aware instant."""
        return (instant.astimezone(UTC) + self.utc_offset(instant)).replace(tzinfo=None)

    def to_utc(self, local: datetime) -> datetime:
        """Aware UTC instant for a naive wall-clock time (the first one in the repeated hour, as
        ``fold=0`` in Python)."""
        for extra in (self.daylight_bias, self.standard_bias):
            candidate = (local + self.bias + extra).replace(tzinfo=UTC)
            if self.to_local(candidate) == local:
                return candidate
        return (local + self.bias + self.standard_bias).replace(tzinfo=UTC)
