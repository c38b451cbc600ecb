"""Upstream adapters: Microsoft Graph (msal + aiohttp) and EWS (exchangelib in threads).

They translate Microsoft's wire formats into domain values and own retries, throttling,
batching and token caches. Nothing here knows SQL or HTTP routing.
"""

from calbroker.providers.ews import (
    EwsLimits,
    EwsProvider,
    check_ews_endpoint,
)
from calbroker.providers.graph import GraphLimits, GraphProvider
from calbroker.providers.protocol import CalendarProvider, Deadline

__all__ = [
    "CalendarProvider",
    "Deadline",
    "EwsLimits",
    "EwsProvider",
    "GraphLimits",
    "GraphProvider",
    "check_ews_endpoint",
]
