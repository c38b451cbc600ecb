"""Upstream adapters: Microsoft Graph (msal + aiohttp) and EWS (exchangelib in threads).

They translate Microsoft's wire formats into domain values and own retries, throttling,
batching and token caches. Nothing here knows SQL or HTTP routing.

    providers/   the port (`CalendarProvider`, `Deadline`), the registry that keeps one provider per
                 connection, the address policy for admin-typed URLs, Windows time zones (by name and by rule)
      graph/     Microsoft Graph: `GraphProvider`, sign-in through the operator's app, ID tokens
      ews/       EWS for on-premises Exchange: `EwsProvider`, `check_ews_endpoint`

Other layers import from here, `calbroker.providers.graph` or `calbroker.providers.ews`, never from a
module inside them.
"""

from calbroker.providers.endpoints import check_upstream_url
from calbroker.providers.ews import EwsLimits, EwsProvider, check_ews_endpoint
from calbroker.providers.graph import GraphLimits, GraphProvider
from calbroker.providers.protocol import CalendarProvider, ChangeFeed, Deadline
from calbroker.providers.registry import CredentialsSink, ProviderRegistry
from calbroker.providers.windows_zones import WINDOWS_TO_IANA, ZoneRule, ZoneTransition, zone_for, zone_from_rule

__all__ = [
    "WINDOWS_TO_IANA",
    "CalendarProvider",
    "ChangeFeed",
    "CredentialsSink",
    "Deadline",
    "EwsLimits",
    "EwsProvider",
    "GraphLimits",
    "GraphProvider",
    "ProviderRegistry",
    "ZoneRule",
    "ZoneTransition",
    "check_ews_endpoint",
    "check_upstream_url",
    "zone_for",
    "zone_from_rule",
]
