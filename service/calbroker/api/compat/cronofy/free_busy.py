"""`GET /v1/free_busy` (and its pages): the account's busy time, from the same reader as the native API.

Exchange's schedule cannot tell which blocks this application booked, so `include_managed` has no
effect (managed events are always included); statuses map as docs/cronofy.md says: busy → busy,
tentative → tentative, out of office → unavailable; free and working-elsewhere time is not busy.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from calbroker.api.compat.cronofy.auth import account_caller
from calbroker.api.compat.cronofy.paging import ReadQuery, from_token, page_of, read_query
from calbroker.api.compat.cronofy.wire import days, format_local, format_time
from calbroker.domain.busy import BusyStatus
from calbroker.domain.errors import CalbrokerError
from calbroker.providers.protocol import Deadline
from calbroker.services import Services
from calbroker.store.cronofy import Account, Grant

__all__ = ["free_busy", "free_busy_page"]

_STATUS = {BusyStatus.BUSY: "busy", BusyStatus.TENTATIVE: "tentative", BusyStatus.OOF: "unavailable"}


def _key(item: dict[str, Any]) -> tuple[str, str]:
    return item["_start"], f"{item['_end']}|{item['free_busy_status']}"


async def _answer(
    services: Services,
    grant: Grant,
    account: Account,
    query: ReadQuery,
    deadline: Deadline,
    *,
    page: int = 1,
    after: tuple[str, str] | None = None,
) -> dict[str, Any]:
    window = query.window
    found = await services.schedules.read(grant.client.application_id, [account.mailbox], window, deadline)
    result = found[account.mailbox]
    if isinstance(result, CalbrokerError):
        raise result  # one mailbox, unreadable: the whole answer is that error, never "free"
    items = []
    for block in result.busy:
        status = _STATUS.get(block.status)
        if status is None or block.interval.end <= window.start or block.interval.start >= window.end:
            continue
        start, end = max(block.interval.start, window.start), min(block.interval.end, window.end)
        items.append(
            {
                "_start": format_time(start),
                "_end": format_time(end),
                "start": start,
                "end": end,
                "calendar_id": account.calendar_id,
                "free_busy_status": status,
            }
        )
    shown = page_of(items, query, _key, page=page, after=after)
    out = []
    for item in shown.items:
        local = query.localized_times
        out.append(
            {
                "calendar_id": item["calendar_id"],
                "start": format_local(item["start"], query.tz) if local else item["_start"],
                "end": format_local(item["end"], query.tz) if local else item["_end"],
                "free_busy_status": item["free_busy_status"],
            }
        )
    base = f"{services.settings.public_url}/compat/cronofy/v1"
    return {"pages": shown.pages(base, "/free_busy"), "free_busy": out}


@get("/free_busy", include_in_schema=False)
async def free_busy(
    request: Request[Any, Any, Any], services: NamedDependency[Services], deadline: NamedDependency[Deadline]
) -> dict[str, Any]:
    """Busy blocks of the account's calendar between `from` and `to` (dates read in `tzid`)."""
    grant, account = account_caller(request, "read_free_busy")
    query = read_query(request, "free_busy", account, default_back=days(42))
    return await _answer(services, grant, account, query, deadline)


@get("/free_busy/pages/{token:str}", include_in_schema=False)
async def free_busy_page(
    token: FromPath[str],
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    deadline: NamedDependency[Deadline],
) -> dict[str, Any]:
    grant, account = account_caller(request, "read_free_busy")
    query, page, after = from_token(token, "free_busy", account)
    return await _answer(services, grant, account, query, deadline, page=page, after=after)
