"""`POST /v1/batch`: up to 50 event writes in one request, answered 207 with a status per entry.

Entries run in order (two entries for one event must not race) through the same code as the single
endpoints; each answers exactly 202 on success, because pycronofy counts only `status % 100 == 2`
responses as successes (cronofy.md §3.1), and otherwise the status and body Cronofy would have sent.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency

from calbroker.api.compat.cronofy.auth import account_caller
from calbroker.api.compat.cronofy.errors import NotSupported, cronofy_error
from calbroker.api.compat.cronofy.events import DeleteEvent, UpsertEvent, remove_managed_event, upsert_managed_event
from calbroker.api.compat.cronofy.wire import Body, decode_body
from calbroker.domain.errors import FieldError, InvalidRequest
from calbroker.providers.protocol import Deadline
from calbroker.services import Services

__all__ = ["batch"]

MAX_ENTRIES = 50
_EVENTS_URL = re.compile(r"^/v1/calendars/(?P<calendar_id>[^/?#]+)/events$")


class _Entry(Body):
    method: str
    relative_url: str
    data: dict[str, Any] | None = None


class BatchIn(Body):
    batch: Annotated[list[_Entry], msgspec.Meta(min_length=1, max_length=MAX_ENTRIES)]


def _convert(data: dict[str, Any] | None, into: type[Any]) -> Any:
    try:
        return msgspec.convert(data or {}, into)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc), [FieldError("base", str(exc))]) from None


async def _run(request: Request[Any, Any, Any], services: Services, entry: _Entry, deadline: Deadline) -> None:
    found = _EVENTS_URL.match(entry.relative_url.split("?", 1)[0])
    method = entry.method.upper()
    if found is None or method not in ("POST", "DELETE"):
        raise NotSupported(
            "batch entry", f"{method} {entry.relative_url} cannot be batched here; only event upserts and deletes can."
        )
    calendar_id = found.group("calendar_id")
    if method == "POST":
        grant, account = account_caller(request, "create_event")
        upsert = _convert(entry.data, UpsertEvent)
        await upsert_managed_event(services, grant, account, calendar_id=calendar_id, data=upsert, deadline=deadline)
    else:
        grant, account = account_caller(request, "delete_event")
        removal = _convert(entry.data, DeleteEvent)
        await remove_managed_event(services, grant, account, calendar_id=calendar_id, data=removal, deadline=deadline)


@post("/batch", status_code=207, include_in_schema=False)
async def batch(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Response[dict[str, Any]]:
    """Each entry gets the upstream budget of a request of its own, so fifty writes fit."""
    data = await decode_body(request, BatchIn)
    answers: list[dict[str, Any]] = []
    for entry in data.batch:
        try:
            await _run(request, services, entry, Deadline.after(services.settings.upstream_deadline_s))
        except Exception as exc:  # noqa: BLE001 - every failure becomes that entry's answer, as Cronofy does
            failed = cronofy_error(exc)
            answers.append({"status": failed.status_code, "data": failed.content})
        else:
            answers.append({"status": 202})
    return Response({"batch": answers}, status_code=207)
