"""Entra ID v2.0: OpenID discovery, JWKS and the token endpoint (client credentials with secret or
certificate assertion, authorization code + PKCE, refresh token), with Entra's AADSTS error bodies.
The sign-in and admin-consent pages live in `entra.pages`.

What msal sends is listed in upstream.md Part 2A; error bodies follow "Token Issuance Endpoint
Errors" (https://learn.microsoft.com/previous-versions/azure/dn645548(v=azure.100)) and the
client-credentials page (https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from calbroker.sandbox.directory import AppRegistration, Mailbox, ServicePrincipal, Tenant
from calbroker.sandbox.entra.tokens import (
    TokenError,
    b64url_decode,
    b64url_encode,
    decode_unverified,
    jwk,
    load_public_key,
    sign,
    verify,
)
from calbroker.sandbox.faults import FaultAction
from calbroker.sandbox.state import SandboxState

__all__ = [
    "RESERVED_SCOPES",
    "AuthorizationCode",
    "EntraAuthority",
    "EntraError",
    "resolve_tenant",
    "routes",
    "short_scope",
]

GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
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


def _aad_error(request: web.Request, state: SandboxState, exc: EntraError) -> web.Response:
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


def _not_found_in_directory(client_id: str, tenant: Tenant) -> EntraError:
    return EntraError(
        400,
        "unauthorized_client",
        700016,
        f"Application with identifier '{client_id}' was not found in the directory '{tenant.display_name}'. This can "
        "happen if the application has not been installed by the administrator of the tenant or consented to by any "
        "user in the tenant. You may have sent your authentication request to the wrong tenant.",
    )


def _token_endpoint(state: SandboxState, tenant_segment: str) -> str:
    return f"{state.base_url}/{tenant_segment}/oauth2/v2.0/token"


def _authenticate_client(
    state: SandboxState,
    request_tenant: str,
    tenant: Tenant,
    app: AppRegistration,
    *,
    form: dict[str, str],
    basic: tuple[str, str] | None,
) -> bool:
    """Check the client credential; returns True for a certificate, False for a secret."""
    secret = form.get("client_secret") or (basic[1] if basic else None)
    assertion = form.get("client_assertion")
    now = state.clock()
    if assertion:
        if form.get("client_assertion_type") != JWT_BEARER:
            raise EntraError(
                400, "invalid_request", 50027, "Invalid JWT token. The client_assertion_type is not supported."
            )
        try:
            header, claims, _, _ = decode_unverified(assertion)
        except TokenError:
            raise EntraError(401, "invalid_client", 50027, "Invalid JWT token. Token format not valid.") from None
        cert = None
        try:
            if header.get("x5t#S256"):
                cert = app.certificate(sha256_hex=b64url_decode(str(header["x5t#S256"])).hex())
            elif header.get("x5t"):
                cert = app.certificate(sha1_hex=b64url_decode(str(header["x5t"])).hex())
        except TokenError:
            cert = None
        if cert is None:
            raise EntraError(
                401,
                "invalid_client",
                700027,
                "The certificate with identifier used to sign the client assertion is not registered on application. "
                "[Reason - The key was not found.]",
            )
        try:
            verify(assertion, load_public_key(cert.public_key_pem))
        except TokenError:
            raise EntraError(401, "invalid_client", 700027, "Client assertion failed signature validation.") from None
        audiences = {_token_endpoint(state, tenant.id), _token_endpoint(state, request_tenant)}
        # [unverified] codes for wrong audience/issuer; the validation itself follows certificate-credentials.
        if claims.get("aud") not in audiences:
            raise EntraError(
                401, "invalid_client", 700027, f"Client assertion contains an invalid audience: '{claims.get('aud')}'."
            )
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            raise EntraError(
                401, "invalid_client", 700023, "Client assertion issuer and subject must be the client id."
            )
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp < now.timestamp() - 300:
            raise EntraError(401, "invalid_client", 700024, "Client assertion is not within its valid time range.")
        return True
    if secret:
        for candidate in app.secrets:
            if secrets.compare_digest(candidate.value, secret):
                if candidate.expires <= now:
                    raise EntraError(
                        401,
                        "invalid_client",
                        7000222,
                        f"The provided client secret keys for app '{app.client_id}' are expired. Visit the Azure "
                        "portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using "
                        "certificate "
                        "credentials for added security: https://aka.ms/certCreds.",
                    )
                return False
        raise EntraError(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, "
            f"not the client secret ID, for a secret added to app '{app.client_id}'.",
        )
    raise EntraError(
        401,
        "invalid_client",
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    )


def _basic(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return user, password


async def _token(state: SandboxState, authority: EntraAuthority, request: web.Request) -> web.Response:
    # POST /{tenant}/oauth2/v2.0/token
    # https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow#get-a-token
    form = {k: str(v) for k, v in (await request.post()).items()}
    basic = _basic(request)
    client_id = (form.get("client_id") or (basic[0] if basic else "")).strip().lower()
    fault = await state.checkpoint("entra:token", client_id=client_id or None)
    if fault is not None and fault.action is FaultAction.ERROR:
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        raise EntraError(
            fault.status,
            fault.code or ("temporarily_unavailable" if fault.status in (429, 503) else "server_error"),
            50000,
            fault.message or "There was an error issuing a token or an issue with our sign-in service.",
            headers,
        )
    grant_type = form.get("grant_type", "")
    tenant_segment = request.match_info["tenant"]
    tenant_or_generic = resolve_tenant(state, tenant_segment, allow_generic=grant_type != "client_credentials")
    if not client_id:
        raise EntraError(
            400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'."
        )
    app = state.directory.app(client_id)
    match grant_type:
        case "client_credentials":
            assert tenant_or_generic is not None
            tenant = tenant_or_generic
            principal = tenant.service_principals.get(client_id)
            if app is None or principal is None:
                raise _not_found_in_directory(client_id, tenant)
            scope = form.get("scope", "")
            if scope.lower() not in (GRAPH_RESOURCE + "/.default", GRAPH_APP_ID + "/.default"):
                raise EntraError(
                    400,
                    "invalid_scope",
                    1002012 if not scope.endswith("/.default") else 70011,
                    f"The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid.",
                )
            certificate = _authenticate_client(state, tenant_segment, tenant, app, form=form, basic=basic)
            lifetime = state.settings.token_lifetime_s
            body = {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": authority.app_token(tenant, app, principal, certificate=certificate),
            }
            return web.json_response(body, headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})
        case "authorization_code":
            if app is None:
                raise EntraError(
                    400, "unauthorized_client", 700016, f"Application with identifier '{client_id}' was not found."
                )
            code = authority.codes.get(form.get("code", ""))
            if code is None or code.expires <= state.clock():
                raise EntraError(
                    400,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity.",
                )
            if code.redeemed:
                raise EntraError(
                    400,
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an "
                    "existing refresh token.",
                )
            if code.client_id != client_id or code.redirect_uri != form.get("redirect_uri"):
                raise EntraError(
                    400,
                    "invalid_grant",
                    50148,
                    "The redirect_uri or client_id does not match the authorization request.",
                )
            code_tenant = state.directory.tenant_by_id(code.tenant_id)
            assert code_tenant is not None
            _authenticate_client(state, tenant_segment, code_tenant, app, form=form, basic=basic)
            if code.challenge:
                verifier = form.get("code_verifier", "")
                computed = (
                    b64url_encode(hashlib.sha256(verifier.encode()).digest())
                    if code.challenge_method == "S256"
                    else verifier
                )
                if not verifier or not secrets.compare_digest(computed, code.challenge):
                    raise EntraError(
                        400,
                        "invalid_grant",
                        501481,
                        "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                    )
            code.redeemed = True
            user = state.directory.mailbox_by_id(code.user_id)
            assert user is not None
            return web.json_response(authority.user_tokens(code_tenant, app, user, code.scopes, code.nonce))
        case "refresh_token":
            grant = authority.refresh_tokens.get(form.get("refresh_token", ""))
            if grant is None or grant.client_id != client_id or app is None:
                raise EntraError(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
            if grant.expires <= state.clock():
                raise EntraError(400, "invalid_grant", 700082, "The refresh token has expired due to inactivity.")
            grant_tenant = state.directory.tenant_by_id(grant.tenant_id)
            grant_user = state.directory.mailbox_by_id(grant.user_id)
            assert grant_tenant is not None
            assert grant_user is not None
            _authenticate_client(state, tenant_segment, grant_tenant, app, form=form, basic=basic)
            del authority.refresh_tokens[form["refresh_token"]]  # rotation: the old one is spent
            return web.json_response(authority.user_tokens(grant_tenant, app, grant_user, grant.scopes, None))
        case _:
            raise EntraError(
                400, "unsupported_grant_type", 70003, f"The app requested an unsupported grant type '{grant_type}'."
            )


def _discovery(state: SandboxState, tenant: Tenant | None, segment: str) -> dict[str, Any]:
    # https://learn.microsoft.com/entra/identity-platform/v2-protocols-oidc#find-your-apps-openid-configuration-document-uri
    base = state.base_url
    path = tenant.id if tenant is not None else segment
    issuer_tenant = tenant.id if tenant is not None else "{tenantid}"
    return {
        "token_endpoint": f"{base}/{path}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": f"{base}/{path}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"{base}/{issuer_tenant}/v2.0",
        "request_uri_parameter_supported": False,
        "userinfo_endpoint": f"{base}/oidc/userinfo",
        "authorization_endpoint": f"{base}/{path}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{base}/{path}/oauth2/v2.0/devicecode",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{base}/{path}/oauth2/v2.0/logout",
        "claims_supported": [
            "sub",
            "iss",
            "cloud_instance_name",
            "cloud_instance_host_name",
            "cloud_graph_host_name",
            "msgraph_host",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "acr",
            "nonce",
            "preferred_username",
            "name",
            "tid",
            "ver",
            "at_hash",
            "c_hash",
            "email",
        ],
        "kerberos_endpoint": f"{base}/{path}/kerberos",
        "tenant_region_scope": (tenant.country_code if tenant else None) or "NA",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    }


def routes(state: SandboxState, authority: EntraAuthority) -> list[web.RouteDef]:
    """The aiohttp routes serving Entra ID under `/{tenant}/…`."""

    async def openid_configuration(request: web.Request) -> web.StreamResponse:
        await state.checkpoint("entra:openid-configuration")
        segment = request.match_info["tenant"]
        try:
            tenant = resolve_tenant(state, segment, allow_generic=True)
        except EntraError as exc:
            return _aad_error(request, state, exc)
        return web.json_response(_discovery(state, tenant, segment))

    async def keys(request: web.Request) -> web.StreamResponse:
        # https://learn.microsoft.com/entra/identity-platform/access-tokens#validate-the-signature
        await state.checkpoint("entra:keys")
        material = state.keys
        return web.json_response(
            {"keys": [jwk(material.signing_key.public_key(), material.signing_kid, material.signing_cert_der)]}
        )

    async def token(request: web.Request) -> web.StreamResponse:
        try:
            return await _token(state, authority, request)
        except EntraError as exc:
            return _aad_error(request, state, exc)

    return [
        web.get("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration),
        web.get("/{tenant}/discovery/v2.0/keys", keys),
        web.get("/{tenant}/discovery/keys", keys),
        web.post("/{tenant}/oauth2/v2.0/token", token),
    ]
