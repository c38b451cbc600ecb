"""Microsoft Graph v1.0 as the sandbox plays it: users and places, calendars, events, online
meetings, getSchedule, calendarView delta, change-notification subscriptions and JSON `$batch`."""

from __future__ import annotations

from calbroker.sandbox.graph.delta import DeltaBook
from calbroker.sandbox.graph.endpoint import routes
from calbroker.sandbox.graph.events import parse_draft, parse_event
from calbroker.sandbox.graph.odata import GraphContext, GraphError
from calbroker.sandbox.graph.subscriptions import Subscription, SubscriptionBook

__all__ = [
    "DeltaBook",
    "GraphContext",
    "GraphError",
    "Subscription",
    "SubscriptionBook",
    "parse_draft",
    "parse_event",
    "routes",
]
