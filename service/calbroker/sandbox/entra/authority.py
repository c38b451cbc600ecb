"""Entra ID's side of a sign-in: the authority that mints access, ID and refresh tokens and keeps
issued authorization codes and refresh grants, plus AADSTS errors and tenant resolution.

Error bodies follow "Token Issuance Endpoint Errors"
(https://learn.microsoft.com/previous-versions/azure/dn645548(v=azure.100)); token claims follow
https://learn.microsoft.com/entra/identity-platform/access-token-claims-reference and
https://learn.microsoft.com/entra/identity-platform/id-token-claims-reference .
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from calbroker.sandbox.directory import AppRegistration, Mailbox, ServicePrincipal, Tenant
from calbroker.sandbox.entra.tokens import b64url_encode, sign
from calbroker.sandbox.state import SandboxState

__all__ = [
    "GRAPH_APP_ID",
    "GRAPH_RESOURCE",
    "RESERVED_SCOPES",
    "AuthorizationCode",
    "EntraAuthority",
    "EntraError",
    "RefreshGrant",
    "error_response",
    "resolve_tenant",
    "short_scope",
]

GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
# Directory-role template ids, as `wids` carries them
# (https://learn.microsoft.com/entra/identity/role-based-access-control/permissions-reference).
# Every member holds the default User role; Microsoft's own examples show it next to an admin role
# ("HTTP 403 authorization error when calling the Microsoft Graph Security API", learn.microsoft.com
# troubleshoot/entra) [unverified: that a role-less member's token lists it].
USER_ROLE_ID = "b79fbf4d-3ef9-4689-8143-76b194e85509"
GLOBAL_ADMINISTRATOR_ROLE_ID = "62e90394-69f5-4237-9190-012177145e10"
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_GENERIC = ("common", "organizations")


class EntraError(Exception):
    """An AADSTS error; rendered as the token endpoint's JSON body."""

    def __init__(self, status: int, error: str, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"AADSTS{code}: {message}")
        self.status = status
        self.error = error
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass(slots=True)
class AuthorizationCode:
    client_id: str
    redirect_uri: str
    user_id: str
    tenant_id: str
    scopes: tuple[str, ...]
    challenge: str | None
    challenge_method: str
    nonce: str | None
    expires: datetime
    redeemed: bool = False


@dataclass(slots=True)
class RefreshGrant:
    client_id: str
    user_id: str
    tenant_id: str
    scopes: tuple[str, ...]
    expires: datetime


class EntraAuthority:
    """Issued authorization codes and refresh tokens (cleared on reset), plus token minting."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.codes: dict[str, AuthorizationCode] = {}
        self.refresh_tokens: dict[str, RefreshGrant] = {}
        state.on_reset(self.clear)

    def clear(self) -> None:
        self.codes.clear()
        self.refresh_tokens.clear()

    # --- token minting ------------------------------------------------------------------------------

    def _sign(self, claims: dict[str, Any]) -> str:
        keys = self.state.keys
        return sign(claims, keys.signing_key, {"kid": keys.signing_kid, "x5t": keys.signing_kid})

    def app_token(self, tenant: Tenant, app: AppRegistration, principal: ServicePrincipal, *, certificate: bool) -> str:
        """An app-only Graph access token; `roles` is absent when nothing was consented (like Entra)."""
        now = int(self.state.clock().timestamp())
        claims: dict[str, Any] = {
            "aud": GRAPH_RESOURCE,
            "iss": f"https://sts.windows.net/{tenant.id}/",
            "iat": now,
            "nbf": now,
            "exp": now + self.state.settings.token_lifetime_s,
            "aio": b64url_encode(secrets.token_bytes(24)),
            "app_displayname": app.display_name,
            "appid": app.client_id,
            "appidacr": "2" if certificate else "1",
            "idp": f"https://sts.windows.net/{tenant.id}/",
            "idtyp": "app",
            "oid": principal.id,
            "rh": "0.sandbox.",
            "sub": principal.id,
            "tenant_region_scope": tenant.country_code or "NA",
            "tid": tenant.id,
            "uti": b64url_encode(secrets.token_bytes(16)),
            "ver": "1.0",
            "wids": ["0997a1d0-0d1d-4acb-b408-d5ca73121e90"],
        }
        if principal.app_roles:
            claims["roles"] = sorted(principal.app_roles)
        return self._sign(claims)

    def id_token(self, tenant: Tenant, app: AppRegistration, user: Mailbox, nonce: str | None) -> str:
        """A v2.0 ID token, with the claims of
        https://learn.microsoft.com/entra/identity-platform/id-token-claims-reference : `iss` is the
        tenant's issuer (`{authority}/{tid}/v2.0`, as the tenant's OpenID configuration says), `aud`
        the client id, `tid` the tenant signed in to, `nonce` echoed unmodified from the authorize
        request (https://learn.microsoft.com/entra/identity-platform/v2-protocols-oidc).

        `wids` lists the user's directory roles. Entra emits it when the app registration asks for
        directory roles (`groupMembershipClaims` `DirectoryRole` or `All`:
        https://learn.microsoft.com/entra/identity/hybrid/connect/how-to-connect-fed-group-claims);
        the sandbox's apps all behave as if they did. A tenant's admin (`is_admin`, the tenant's
        `admin_email`) is a Global Administrator.
        """
        now = int(self.state.clock().timestamp())
        roles = [GLOBAL_ADMINISTRATOR_ROLE_ID, USER_ROLE_ID] if user.is_admin else [USER_ROLE_ID]
        claims: dict[str, Any] = {
            "aud": app.client_id,
            "iss": f"{self.state.base_url}/{tenant.id}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + self.state.settings.token_lifetime_s,
            "name": user.display_name,
            "oid": user.id,
            "preferred_username": user.user_principal_name,
            "email": user.email,
            "sub": hashlib.sha256(f"{user.id}|{app.client_id}".encode()).hexdigest()[:43],
            "tid": tenant.id,
            "uti": b64url_encode(secrets.token_bytes(16)),
            "ver": "2.0",
            "wids": roles,
        }
        if nonce:
            claims["nonce"] = nonce
        return self._sign(claims)

    def user_tokens(
        self, tenant: Tenant, app: AppRegistration, user: Mailbox, scopes: tuple[str, ...], nonce: str | None
    ) -> dict[str, Any]:
        """The token response of a delegated flow: access token, id token, refresh token, client_info."""
        now = int(self.state.clock().timestamp())
        lifetime = self.state.settings.token_lifetime_s
        short = sorted({short_scope(s) for s in scopes} - RESERVED_SCOPES)
        access = self._sign(
            {
                "aud": GRAPH_RESOURCE,
                "iss": f"https://sts.windows.net/{tenant.id}/",
                "iat": now,
                "nbf": now,
                "exp": now + lifetime,
                "acr": "1",
                "amr": ["pwd"],
                "app_displayname": app.display_name,
                "appid": app.client_id,
                "appidacr": "1",
                "family_name": user.surname,
                "given_name": user.given_name,
                "idtyp": "user",
                "name": user.display_name,
                "oid": user.id,
                "scp": " ".join(short),
                "sub": hashlib.sha256(f"{user.id}|{app.client_id}".encode()).hexdigest()[:43],
                "tid": tenant.id,
                "unique_name": user.user_principal_name,
                "upn": user.user_principal_name,
                "uti": b64url_encode(secrets.token_bytes(16)),
                "ver": "1.0",
            }
        )
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(s for s in scopes),
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access,
            "client_info": b64url_encode(f'{{"uid":"{user.id}","utid":"{tenant.id}"}}'.encode()),
        }
        if "openid" in scopes:
            body["id_token"] = self.id_token(tenant, app, user, nonce)
        if "offline_access" in scopes:
            refresh = "0.A" + secrets.token_urlsafe(48)
            expires = self.state.clock() + timedelta(seconds=self.state.settings.refresh_token_lifetime_s)
            self.refresh_tokens[refresh] = RefreshGrant(app.client_id, user.id, tenant.id, scopes, expires)
            body["refresh_token"] = refresh
        return body


def short_scope(scope: str) -> str:
    for prefix in (GRAPH_RESOURCE + "/", GRAPH_APP_ID + "/"):
        if scope.lower().startswith(prefix.lower()):
            return scope[len(prefix) :]
    return scope


def error_response(request: web.Request, state: SandboxState, exc: EntraError) -> web.Response:
    """Entra's error JSON: AADSTS text with Trace ID / Correlation ID / Timestamp lines."""
    trace_id = str(uuid.uuid4())
    correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
    timestamp = state.clock().astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    body = {
        "error": exc.error,
        "error_description": (
            f"AADSTS{exc.code}: {exc.message}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {correlation_id}\r\nTimestamp: {timestamp}"
        ),
        "error_codes": [exc.code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"{state.base_url}/error?code={exc.code}",
    }
    return web.json_response(body, status=exc.status, headers=exc.headers)


def resolve_tenant(state: SandboxState, ref: str, *, allow_generic: bool) -> Tenant | None:
    """Resolve the tenant segment of an Entra URL; None for common/organizations when allowed."""
    if ref.lower() in _GENERIC:
        if allow_generic:
            return None
        raise EntraError(
            400,
            "invalid_request",
            50059,
            "No tenant-identifying information found in either the request or implied by any provided credentials.",
        )
    if not _GUID.match(ref) and "." not in ref:
        raise EntraError(
            400,
            "invalid_request",
            900023,
            f"Specified tenant identifier '{ref}' is neither a valid DNS name, nor a valid external domain.",
        )
    tenant = state.directory.tenant(ref)
    if tenant is None or (not _GUID.match(ref) and ref.lower() not in tenant.all_domains):
        raise EntraError(
            400,
            "invalid_tenant",
            90002,
            f"Tenant '{ref}' not found. Check to make sure you have the correct tenant ID and are signing into the "
            "correct cloud. Check with your subscription administrator, this may happen if there are no active "
            "subscriptions for the tenant.",
        )
    return tenant
