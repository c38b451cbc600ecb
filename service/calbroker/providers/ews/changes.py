"""Keeping up with a mailbox over EWS, a round at a time: SyncFolderItems for what changed, and a
calendar view for what recurring series look like now.

SyncFolderItems returns the calendar folder's items — single items and recurring masters — created,
updated or deleted since a SyncState, at most 512 per call
(https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/syncfolderitems-operation),
and "does not include any calendaring logic": Microsoft's guidance for calendars is to re-read with
FindItem and a CalendarView, which expands recurrences
(https://learn.microsoft.com/exchange/client-developer/exchange-web-services/mailbox-synchronization-and-ews-in-exchange).
So a round applies single items from the sync directly and, whenever a master changed or an item
was deleted (a deleted master is reported by item id only), re-reads the window's series whole.
A full round is the calendar view of the window plus a sync from nothing, for the state.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from exchangelib import EWSDateTime

from calbroker.domain.busy import BusyStatus
from calbroker.domain.intervals import Interval
from calbroker.domain.sync import CalendarItem, ChangeSet
from calbroker.providers.ews.events import FREE_BUSY_IN, item_instant

__all__ = ["calendar_items", "sync_folder"]

_FIELDS = (
    "start",
    "end",
    "legacy_free_busy_status",
    "type",
    "uid",
    "is_cancelled",
    "_start_timezone",
    "_end_timezone",
)
_MAX_CHANGES = 512
_VIEW_SPAN = timedelta(days=31)
"""Calendar views are not paged: read the window a month at a time to stay under Exchange's item limit."""
_SERIES_TYPES = frozenset({"Occurrence", "Exception"})


def _item(raw: Any, window: Interval) -> CalendarItem | None:
    """One exchangelib item in the cache's terms; None when it has no time inside `window`."""
    start = item_instant(raw.start, getattr(raw, "_start_timezone", None), end=False)
    end = item_instant(raw.end, getattr(raw, "_end_timezone", None), end=True)
    if start is None or end is None or end <= window.start or start >= window.end:
        return None
    status = FREE_BUSY_IN.get(raw.legacy_free_busy_status or "Busy", BusyStatus.BUSY)
    if raw.is_cancelled or end <= start:
        return CalendarItem(str(raw.id), Interval(start, start + timedelta(microseconds=1)), BusyStatus.FREE)
    series = str(raw.uid) if raw.type in _SERIES_TYPES and raw.uid else None
    return CalendarItem(str(raw.id), Interval(start, end), status, series)


def calendar_items(_timeout_s: float, *, account_for: Callable[[], Any], window: Interval) -> list[CalendarItem]:
    """Everything in `window` (singles, occurrences, exceptions), a month-long CalendarView at a time."""
    calendar = account_for().calendar
    found: dict[str, CalendarItem] = {}
    for piece in window.split(_VIEW_SPAN):
        view = calendar.view(start=EWSDateTime.from_datetime(piece.start), end=EWSDateTime.from_datetime(piece.end))
        for raw in view.only(*_FIELDS):
            item = _item(raw, window)
            if item is not None:
                found[item.upstream_id] = item
    return sorted(found.values(), key=lambda i: (i.interval.start_us, i.upstream_id))


def sync_folder(timeout_s: float, *, account_for: Callable[[], Any], window: Interval, state: str | None) -> ChangeSet:
    """One round: SyncFolderItems from `state` (from nothing when None), then the series if needed."""
    account = account_for()
    folder = account.calendar
    folder.item_sync_state = state  # the Account is shared: never let another round's state leak in
    changes = list(folder.sync_items(sync_state=state, only_fields=list(_FIELDS), max_changes_returned=_MAX_CHANGES))
    cursor = str(folder.item_sync_state)
    if state is None:
        return ChangeSet(
            cursor=cursor, full=True, items=tuple(calendar_items(timeout_s, account_for=lambda: account, window=window))
        )
    singles: list[CalendarItem] = []
    removed: list[str] = []
    reread = False
    for kind, raw in changes:
        if kind == "delete":
            removed.append(str(raw.id))
            reread = True
        elif kind in ("create", "update"):
            if raw.type == "RecurringMaster":
                reread = True
                continue
            item = _item(raw, window)
            if item is None:
                removed.append(str(raw.id))  # moved out of the window
            else:
                singles.append(item)
    if not reread:
        return ChangeSet(cursor=cursor, full=False, items=tuple(singles), removed=tuple(removed))
    series: dict[str, list[CalendarItem]] = {}
    for item in calendar_items(timeout_s, account_for=lambda: account, window=window):
        if item.series_id is not None:
            series.setdefault(item.series_id, []).append(item)
    return ChangeSet(
        cursor=cursor,
        full=False,
        items=tuple(singles),
        removed=tuple(removed),
        series={k: tuple(v) for k, v in series.items()},
        series_complete=True,
    )
