"""The browser session on an authorize link: its cookie, the CSRF token, and values derived per round trip.

A random session id lives in an HttpOnly, SameSite=Lax cookie scoped to /connect; each form carries
HMAC-SHA256(link_key, session id), where `link_key` is a random per-link server secret, so another
site can neither read the cookie nor compute the token, and a token from one link is useless on
another. The PKCE verifier and the OpenID nonce of a round trip through Microsoft are derived from
`link_key` and the round trip's `state` the same way, so neither is stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.datastructures import Cookie

from calbroker.services import Services
from calbroker.store.connect_links import ConnectLink

__all__ = ["COOKIE", "Visit", "csrf_token", "nonce", "pkce_verifier", "redirect_uri", "session_cookie", "session_of"]

COOKIE = "calbroker_connect"
_SESSION = re.compile(r"^[A-Za-z0-9_-]{43}$")


def session_of(request: Request[Any, Any, Any]) -> str | None:
    value = request.cookies.get(COOKIE)
    return value if value and _SESSION.match(value) else None


def csrf_token(link: ConnectLink, session: str) -> str:
    mac = hmac.new(link.link_key, b"csrf|" + session.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _derived(link: ConnectLink, purpose: bytes, flow_state: str) -> str:
    mac = hmac.new(link.link_key, purpose + b"|" + flow_state.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def pkce_verifier(link: ConnectLink, flow_state: str) -> str:
    """Derived, not stored: only this server (holding link_key) can recompute it for the redemption."""
    return _derived(link, b"pkce", flow_state)


def nonce(link: ConnectLink, flow_state: str) -> str:
    """The OpenID nonce of one sign-in: unique per round trip, unguessable, recomputed to check the ID token."""
    return _derived(link, b"nonce", flow_state)


def session_cookie(services: Services, session: str) -> Cookie:
    return Cookie(
        key=COOKIE,
        value=session,
        path="/connect",
        httponly=True,
        samesite="lax",
        secure=services.settings.public_url.startswith("https://"),
        max_age=30 * 86400,
    )


def redirect_uri(services: Services) -> str:
    """The operator app's redirect URI: register exactly this in Entra."""
    return f"{services.settings.public_url.rstrip('/')}/connect/callback"


@dataclass(frozen=True, slots=True)
class Visit:
    """One request on an open link: who sent it (application), and which browser session."""

    services: Services
    link: ConnectLink
    app_name: str
    session: str

    def context(self) -> dict[str, Any]:
        return {
            "app_name": self.app_name,
            "link_id": str(self.link.id),
            "csrf_token": csrf_token(self.link, self.session),
            "expires_at": f"{self.link.expires_at:%d %B %Y, %H:%M} UTC",
        }

    def cookies(self, new_session: bool) -> list[Cookie] | None:
        return [session_cookie(self.services, self.session)] if new_session else None
