"""Cronofy endpoints with no counterpart in calbroker: a clear 501 that says so, never a bare 404.

They are hosted-UI or third-party products calbroker does not clone (docs/cronofy.md, "Not supported").
"""

from __future__ import annotations

from typing import Any, Literal

from litestar import route
from litestar.handlers import HTTPRouteHandler

from calbroker.api.compat.cronofy.errors import NotSupported

__all__ = ["UNSUPPORTED"]

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
_ALL: list[Method] = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def _refusal(name: str, paths: list[str], description: str, *, methods: list[Method] | None = None) -> HTTPRouteHandler:
    async def refuse() -> Any:
        raise NotSupported(name, description)

    refuse.__name__ = f"unsupported_{name}"
    return route(
        paths, http_method=methods or _ALL, status_code=501, include_in_schema=False, name=f"cronofy-unsupported-{name}"
    )(refuse)


UNSUPPORTED: list[HTTPRouteHandler] = [
    _refusal(
        "sequenced_availability",
        ["/sequenced_availability"],
        "Sequenced availability is not supported; query /v1/availability once per step.",
    ),
    _refusal(
        "availability_rules",
        ["/availability_rules", "/availability_rules/{rule_id:str}", "/available_periods"],
        "Availability rules and available periods are not supported; pass available_periods per member in "
        "/v1/availability.",
    ),
    _refusal(
        "real_time_scheduling",
        [
            "/real_time_scheduling",
            "/real_time_scheduling/{scheduling_id:str}",
            "/real_time_scheduling/{scheduling_id:str}/disable",
            "/real_time_sequencing",
        ],
        "Real-Time Scheduling (Cronofy's hosted booking pages) is not supported.",
    ),
    _refusal("smart_invites", ["/smart_invites"], "Smart Invites are not supported."),
    _refusal(
        "ui_elements",
        ["/element_tokens", "/link_tokens", "/add_to_calendar", "/bookable_events", "/scheduling_conversations"],
        "UI Elements and the products built on them are not supported.",
    ),
    _refusal(
        "other",
        [
            "/application_calendars",
            "/conferencing_service_authorizations",
            "/resources",
            "/permissions",
            "/delegated_authorizations",
            "/accessible_calendars",
            "/profiles/{profile_id:str}/revoke",
            "/calendars/{calendar_id:str}/events/{event_uid:str}/participation_status",
        ],
        "This Cronofy endpoint has no counterpart in calbroker.",
    ),
    _refusal("create_calendar", ["/calendars"], "Creating calendars is not supported.", methods=["POST"]),
    _refusal("bulk_delete", ["/events"], "Bulk deletion of events is not supported.", methods=["DELETE"]),
]
