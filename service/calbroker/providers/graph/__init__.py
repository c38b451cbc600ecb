"""Microsoft Graph (Exchange Online): app-only and delegated tokens through msal, requests through aiohttp.

`GraphProvider` is the `CalendarProvider` for one Graph connection. The browser round trips of the
operator's multi-tenant app (admin consent, the admin's sign-in, delegated sign-in) and the
checks on the ID tokens they return live here too, as do certificate credentials for an app
registration and `read_schedules`, the pure reading of a getSchedule answer. Everything else in
this package is its inside.
"""

from calbroker.providers.graph.certificates import certificate_credentials, certificate_thumbprint
from calbroker.providers.graph.changes import GraphChanges, GraphSubscription, Notification, read_notifications
from calbroker.providers.graph.events import MARKER_PROPERTY
from calbroker.providers.graph.id_tokens import (
    IdToken,
    IdTokenRejected,
    OpenIdKeys,
    OpenIdMetadata,
    SigningKeys,
    verify_id_token,
)
from calbroker.providers.graph.provider import GraphLimits, GraphProvider
from calbroker.providers.graph.sign_in import (
    ADMIN_ROLES,
    SignedIn,
    admin_consent_url,
    admin_sign_in_url,
    pkce_challenge,
    redeem_admin_sign_in,
    redeem_sign_in,
    sign_in_url,
)
from calbroker.providers.graph.wire import read_schedules

__all__ = [
    "ADMIN_ROLES",
    "MARKER_PROPERTY",
    "GraphChanges",
    "GraphLimits",
    "GraphProvider",
    "GraphSubscription",
    "IdToken",
    "IdTokenRejected",
    "Notification",
    "OpenIdKeys",
    "OpenIdMetadata",
    "SignedIn",
    "SigningKeys",
    "admin_consent_url",
    "admin_sign_in_url",
    "certificate_credentials",
    "certificate_thumbprint",
    "pkce_challenge",
    "read_notifications",
    "read_schedules",
    "redeem_admin_sign_in",
    "redeem_sign_in",
    "sign_in_url",
    "verify_id_token",
]
