"""A Cronofy-compatible API under `/compat/cronofy` (design §8, docs/cronofy.md).

Cronofy's official SDKs work against it by changing their base URL. It has its own wire Structs,
error shapes and credentials (Cronofy client credentials and tokens, not API keys), and no engine
or store of calendars of its own: every answer comes from the native services.
"""

from __future__ import annotations

from litestar import Router
from litestar.di import Provide

from calbroker.api.compat.cronofy.accounts import account, calendars, profiles, userinfo
from calbroker.api.compat.cronofy.auth import require_cronofy_token
from calbroker.api.compat.cronofy.availability import availability
from calbroker.api.compat.cronofy.batch import batch
from calbroker.api.compat.cronofy.channels import close_channel, create_channel, list_channels
from calbroker.api.compat.cronofy.errors import error_handlers
from calbroker.api.compat.cronofy.events import delete_managed_event, events_page, read_events, upsert_event
from calbroker.api.compat.cronofy.free_busy import free_busy, free_busy_page
from calbroker.api.compat.cronofy.oauth import authorize, authorize_service_account, connected, revoke, token
from calbroker.api.compat.cronofy.service_accounts import authorize_mailboxes
from calbroker.api.compat.cronofy.unsupported import UNSUPPORTED
from calbroker.api.dependencies import provide_deadline

__all__ = ["COMPAT_PATH", "cronofy_router"]

COMPAT_PATH = "/compat/cronofy"


def cronofy_router() -> Router:
    """Every compat route, with Cronofy's error shapes registered nearer than the native problem+json."""
    v1 = Router(
        path="/v1",
        route_handlers=[
            userinfo,
            account,
            profiles,
            calendars,
            free_busy,
            free_busy_page,
            read_events,
            events_page,
            upsert_event,
            delete_managed_event,
            availability,
            batch,
            create_channel,
            list_channels,
            close_channel,
            authorize_mailboxes,
        ],
        guards=[require_cronofy_token],
    )
    not_supported = Router(path="/v1", route_handlers=UNSUPPORTED)
    return Router(
        path=COMPAT_PATH,
        route_handlers=[token, revoke, authorize, authorize_service_account, connected, v1, not_supported],
        exception_handlers=error_handlers(),
        dependencies={"deadline": Provide(provide_deadline, sync_to_thread=False)},
        include_in_schema=False,
    )
