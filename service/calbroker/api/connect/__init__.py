"""The authorize-link pages a tenant admin opens (server-rendered HTML, no API key: the link is the credential).

`pages` holds the handlers; `flow` the verify-and-save path and the round trips through Microsoft;
`session` the browser session, CSRF and per-round-trip secrets; `forms` and `guides` what each
method asks and explains; `messages` the pages that say a link cannot be used.
"""

from calbroker.api.connect.messages import service_unavailable
from calbroker.api.connect.pages import connect_callback, connect_page, connect_submit

__all__ = ["connect_callback", "connect_page", "connect_submit", "service_unavailable"]
