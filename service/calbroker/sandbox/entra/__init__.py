"""Entra ID v2.0 as the sandbox plays it: discovery, JWKS, the token endpoint, the sign-in and
admin-consent pages, and the tokens it mints and checks."""

from __future__ import annotations

from calbroker.sandbox.entra.authority import EntraAuthority, EntraError
from calbroker.sandbox.entra.endpoints import routes
from calbroker.sandbox.entra.tokens import TokenError, load_public_key, sign, verify

__all__ = ["EntraAuthority", "EntraError", "TokenError", "load_public_key", "routes", "sign", "verify"]
