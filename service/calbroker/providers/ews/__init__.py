"""On-premises Exchange over EWS: exchangelib in worker threads, one provider per connection.

`EwsProvider` is the `CalendarProvider` for one EWS connection; `check_ews_endpoint` normalises the
URL an admin types and refuses Exchange Online. Everything else in this package is its inside.
"""

from calbroker.providers.ews.provider import EWS_PATH, EwsLimits, EwsProvider, check_ews_endpoint
from calbroker.providers.ews.streams import MAX_GROUP, StreamGroup

__all__ = ["EWS_PATH", "MAX_GROUP", "EwsLimits", "EwsProvider", "StreamGroup", "check_ews_endpoint"]
