"""`GET /users/{id}/calendarView/delta`: incremental changes to the events in a date range.

Follows https://learn.microsoft.com/graph/api/event-delta and the delta overview
(https://learn.microsoft.com/graph/delta-query-overview, https://learn.microsoft.com/graph/delta-query-events):

- The first request names `startDateTime`/`endDateTime`; every page after it is followed through
  `@odata.nextLink` (`$skiptoken`) until `@odata.deltaLink` (`$deltatoken`), and the token pins the
  range: later rounds send only the token.
- Paging honours `Prefer: odata.maxpagesize`; "a nextLink may come with an empty page" (setting
  `delta_empty_first_page`).
- Occurrences come *thin*: only `@odata.type`, `@odata.etag`, `id`, `seriesMasterId`, `type`,
  `start`, `end` — no `showAs` (https://github.com/microsoftgraph/microsoft-graph-docs/issues/7632).
  Single instances and exceptions come whole.
- A changed series re-emits all of its occurrences
  (https://github.com/microsoftgraph/microsoft-graph-docs-contrib/issues/6290), and a deleted
  occurrence gets no explicit `@removed` while its series lives (setting
  `delta_omit_occurrence_removals`; https://github.com/microsoftgraph/microsoft-graph-docs/pull/4501).
- Deleted items come as `{"id", "@removed": {"reason": "deleted"}}`; items added, changed or deleted
  outside the range are reported as `@removed` too ("filter by your range").
- Tokens live in a bounded cache ("the upper limit is not fixed; it's dependent on the size of the
  internal delta token cache"): an evicted or expired token answers `410 Gone` with a `Location`
  to restart from and `SyncStateNotFound` in the body
  (https://github.com/microsoftgraph/microsoft-graph-docs/issues/2350); `delta_expired_status` 400
  answers the `syncStateNotFound` form instead. `/_sandbox/delta/expire` expires tokens on demand.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from calbroker.sandbox.events import Event, EventType
from calbroker.sandbox.graph.events import READ, event_json, requested_window, requested_zone
from calbroker.sandbox.graph.odata import (
    GraphContext,
    GraphError,
    GraphRequest,
    GraphResponse,
    Route,
    make_route,
    prefer,
)
from calbroker.sandbox.state import SandboxState
from calbroker.sandbox.timezones import format_graph_datetime

__all__ = ["ROUTES", "DeltaBook"]

Fingerprint = tuple[datetime, datetime, str, bool, int, str]


def _fingerprint(event: Event) -> Fingerprint:
    return (event.start_utc, event.end_utc, event.show_as.value, event.is_cancelled, event.version, event.type.value)


@dataclass(slots=True)
class _Cursor:
    """What a delta token stands for: the range and what the client has been told so far."""

    mailbox: str
    start: datetime
    end: datetime
    seen: dict[str, tuple[Fingerprint, str | None]]
    sequence: int


@dataclass(slots=True)
class _Rest:
    """The pages of a round still to be fetched through `$skiptoken`."""

    mailbox_id: str
    items: list[dict[str, Any]]
    delta_token: str
    size: int


class DeltaBook:
    """Delta tokens and pending pages, bounded like Exchange's internal token cache."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self._tokens: OrderedDict[str, _Cursor] = OrderedDict()
        self._rests: OrderedDict[str, _Rest] = OrderedDict()
        self._generation = 0
        state.on_reset(self._forget)

    def _forget(self) -> None:
        self.expire()

    def expire(self, mailbox: str | None = None) -> int:
        """Forget tokens (of one mailbox, or all): their next use answers 410 Gone."""
        doomed = [k for k, c in self._tokens.items() if mailbox is None or c.mailbox == mailbox.lower()]
        for key in doomed:
            del self._tokens[key]
        if mailbox is None:
            self._rests.clear()
        self._generation += 1
        return len(doomed)

    def _remember(self, cursor: _Cursor) -> str:
        token = secrets.token_urlsafe(24)
        self._tokens[token] = cursor
        while len(self._tokens) > self.state.settings.delta_token_capacity:
            self._tokens.popitem(last=False)
        return token

    def _park(self, rest: _Rest) -> str:
        token = secrets.token_urlsafe(24)
        self._rests[token] = rest
        while len(self._rests) > self.state.settings.delta_token_capacity:
            self._rests.popitem(last=False)
        return token

    # --- the round ------------------------------------------------------------------------------------

    def answer(self, ctx: GraphContext, req: GraphRequest) -> GraphResponse:
        mailbox = req.target
        _, preferred = prefer(req.headers)
        settings = self.state.settings
        size = max(1, min(preferred or settings.calendar_view_page_size, settings.calendar_view_max_page_size))
        base = f"{ctx.graph_url}/users/{quote(mailbox.id)}/calendarView/delta"
        skip = req.option("$skiptoken")
        if skip is not None:
            rest = self._rests.pop(skip, None)
            if rest is None or rest.mailbox_id != mailbox.id:
                raise self._expired(base)
            return self._page(base, rest)
        token = req.option("$deltatoken")
        if token is not None:
            cursor = self._tokens.get(token)
            if cursor is None or cursor.mailbox != mailbox.email:
                raise self._expired(base)
            self._tokens.move_to_end(token)
            items, fresh = self._changes(ctx, req, cursor)
        else:
            start, end = requested_window(req, allow_empty=False)
            cursor = _Cursor(mailbox.email, start, end, {}, self.state.calendars.sequence)
            items, fresh = self._changes(ctx, req, cursor, initial=True)
        rest = _Rest(mailbox.id, items, self._remember(fresh), size)
        if settings.delta_empty_first_page and items:
            return GraphResponse(
                200,
                {"@odata.context": _CONTEXT, "@odata.nextLink": f"{base}?$skiptoken={self._park(rest)}", "value": []},
            )
        return self._page(base, rest)

    def _page(self, base: str, rest: _Rest) -> GraphResponse:
        chunk, remaining = rest.items[: rest.size], rest.items[rest.size :]
        body: dict[str, Any] = {"@odata.context": _CONTEXT, "value": chunk}
        if remaining:
            follow = _Rest(rest.mailbox_id, remaining, rest.delta_token, rest.size)
            body["@odata.nextLink"] = f"{base}?$skiptoken={self._park(follow)}"
        else:
            body["@odata.deltaLink"] = f"{base}?$deltatoken={rest.delta_token}"
        return GraphResponse(200, body)

    def _changes(
        self, ctx: GraphContext, req: GraphRequest, cursor: _Cursor, *, initial: bool = False
    ) -> tuple[list[dict[str, Any]], _Cursor]:
        """The items to report since `cursor`, and the cursor that follows them."""
        calendars = self.state.calendars
        tz_name = requested_zone(req)
        now = {e.id: e for e in calendars.occurrences(cursor.mailbox, cursor.start, cursor.end)}
        current = {i: (_fingerprint(e), e.series_master_id) for i, e in now.items()}
        changed = {i for i, (fp, _) in current.items() if cursor.seen.get(i, (None, None))[0] != fp}
        # A series with any changed member re-emits every occurrence it has in the range.
        touched_series = {current[i][1] for i in changed if current[i][1] is not None}
        emit = sorted(
            (e for i, e in now.items() if i in changed or e.series_master_id in touched_series),
            key=lambda e: (e.start_utc, e.id),
        )
        items = [self._item(ctx, e, tz_name) for e in emit]
        if not initial:
            masters_alive: set[str] = {e.series_master_id for e in now.values() if e.series_master_id}
            for gone, (_, series) in cursor.seen.items():
                if gone in current:
                    continue
                if (
                    series is not None
                    and series in masters_alive
                    and self.state.settings.delta_omit_occurrence_removals
                ):
                    continue
                items.append(_removed(gone))
            reported = {e.id for e in emit} | set(cursor.seen) | masters_alive
            for change in calendars.changes_since(cursor.mailbox, cursor.sequence):
                if change.event_id not in reported and change.event_id not in current:
                    items.append(_removed(change.event_id))
                    reported.add(change.event_id)
        fresh = _Cursor(cursor.mailbox, cursor.start, cursor.end, current, calendars.sequence)
        return items, fresh

    def _item(self, ctx: GraphContext, event: Event, tz_name: str | None) -> dict[str, Any]:
        if event.type is EventType.OCCURRENCE:
            zone_label = tz_name or "UTC"
            return {
                "@odata.type": "#microsoft.graph.event",
                "@odata.etag": f'W/"{event.change_key}"',
                "id": event.id,
                "seriesMasterId": event.series_master_id,
                "type": event.type.value,
                "start": {"dateTime": format_graph_datetime(event.start, zone_label), "timeZone": zone_label},
                "end": {"dateTime": format_graph_datetime(event.end, zone_label), "timeZone": zone_label},
            }
        return {"@odata.type": "#microsoft.graph.event", **event_json(ctx, event, tz_name=tz_name)}

    def _expired(self, base: str) -> GraphError:
        self._generation += 1
        if self.state.settings.delta_expired_status == 400:
            return GraphError(400, "syncStateNotFound", "The sync state is not found or has expired.")
        return GraphError(
            410,
            "SyncStateNotFound",
            f"The sync state generation is not found; generation={self._generation};",
            {"Location": f"{base}?$deltatoken="},
        )


_CONTEXT = "https://graph.microsoft.com/v1.0/$metadata#Collection(event)"


def _removed(event_id: str) -> dict[str, Any]:
    return {"@odata.type": "#microsoft.graph.event", "id": event_id, "@removed": {"reason": "deleted"}}


async def calendar_view_delta(ctx: GraphContext, req: GraphRequest) -> GraphResponse:
    # https://learn.microsoft.com/graph/api/event-delta
    return ctx.deltas.answer(ctx, req)


ROUTES: tuple[Route, ...] = (
    make_route(
        "GET",
        r"/users/{user}(?:/calendar)?/calendarView/delta",
        "graph:calendarView.delta",
        calendar_view_delta,
        READ,
        family="outlook",
    ),
)
