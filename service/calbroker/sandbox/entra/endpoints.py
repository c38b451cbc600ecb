"""Entra ID v2.0's JSON endpoints: OpenID discovery, JWKS and the token endpoint (client credentials
with secret or certificate assertion, authorization code + PKCE, refresh token). The sign-in and
admin-consent pages live in `pages`.

What msal sends is listed in upstream.md Part 2A; the flows follow the client-credentials page
(https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow) and the
certificate-credentials page (https://learn.microsoft.com/entra/identity-platform/certificate-credentials).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any

from aiohttp import web

from calbroker.sandbox.directory import AppRegistration, Tenant
from calbroker.sandbox.entra import pages
from calbroker.sandbox.entra.authority import (
    GRAPH_APP_ID,
    GRAPH_RESOURCE,
    EntraAuthority,
    EntraError,
    error_response,
    resolve_tenant,
)
from calbroker.sandbox.entra.tokens import (
    TokenError,
    b64url_decode,
    b64url_encode,
    decode_unverified,
    jwk,
    load_public_key,
    verify,
)
from calbroker.sandbox.faults import FaultAction
from calbroker.sandbox.state import SandboxState

__all__ = ["routes"]

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


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
    """The aiohttp routes serving Entra ID under `/{tenant}/…`, its HTML pages included."""

    async def openid_configuration(request: web.Request) -> web.StreamResponse:
        await state.checkpoint("entra:openid-configuration")
        segment = request.match_info["tenant"]
        try:
            tenant = resolve_tenant(state, segment, allow_generic=True)
        except EntraError as exc:
            return error_response(request, state, exc)
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
            return error_response(request, state, exc)

    return [
        web.get("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration),
        web.get("/{tenant}/discovery/v2.0/keys", keys),
        web.get("/{tenant}/discovery/keys", keys),
        web.post("/{tenant}/oauth2/v2.0/token", token),
        *pages.routes(state, authority),
    ]
