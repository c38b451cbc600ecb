"""Exchange Web Services as on-premises Exchange answers them: SOAP 1.1 at `/EWS/Exchange.asmx`,
Basic/NTLM service accounts and mailbox users, impersonation, availability, folder and calendar-item
operations, streaming notifications and SyncFolderItems; and the Autodiscover service (POX and SOAP)
that finds the EWS URL from an address."""

from __future__ import annotations

from calbroker.sandbox.ews.autodiscover import routes as autodiscover_routes
from calbroker.sandbox.ews.endpoint import EWS_PATH, EwsEndpoint, routes
from calbroker.sandbox.ews.items import parse_item_id
from calbroker.sandbox.ews.notifications import EwsStreams
from calbroker.sandbox.ews.timezones import LegacyTimeZone, legacy_timezone, timezone_definition

__all__ = [
    "EWS_PATH",
    "EwsEndpoint",
    "EwsStreams",
    "LegacyTimeZone",
    "autodiscover_routes",
    "legacy_timezone",
    "parse_item_id",
    "routes",
    "timezone_definition",
]
