"""On-premises Exchange over EWS: exchangelib in worker threads, one provider per connection.

`EwsProvider` is the `CalendarProvider` for one EWS connection; `check_ews_endpoint` normalises the
URL an admin types and refuses Exchange Online; `discover_ews_endpoint` finds it from an email
address (Autodiscover). Everything else in this package is their inside.
"""

from calbroker.providers.ews.autodiscover import discover_ews_endpoint, is_email_address
from calbroker.providers.ews.provider import EWS_PATH, EwsLimits, EwsProvider, check_ews_endpoint
from calbroker.providers.ews.streams import MAX_GROUP, StreamGroup

__all__ = [
    "EWS_PATH",
    "MAX_GROUP",
    "EwsLimits",
    "EwsProvider",
    "StreamGroup",
    "check_ews_endpoint",
    "discover_ews_endpoint",
    "is_email_address",
]
