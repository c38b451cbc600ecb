"""The browser round trips through the operator's multi-tenant app: admin consent and delegated sign-in.

- Admin consent (v2): https://learn.microsoft.com/entra/identity-platform/v2-admin-consent —
  `/{tenant}/v2.0/adminconsent?client_id&scope={resource}/.default&redirect_uri&state`, answered with
  `admin_consent=True&tenant=<guid>&state` or `error&error_description&state`.
- Authorization code + PKCE: https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow —
  the code is redeemed here with msal (in a thread: msal is synchronous) for a refresh token and an
  ID token naming the signed-in mailbox and its tenant.
- The administrator's sign-in after admin consent (OpenID Connect,
  https://learn.microsoft.com/entra/identity-platform/v2-protocols-oidc). The consent answer
  (`admin_consent=True&tenant=…`) travels through the browser unsigned, so it proves nothing by
  itself ("the admin consent response is not proof of identity"): the admin then signs in to
  the consented tenant, and only an ID token whose signature, issuer, audience, nonce, lifetime
  and `tid` check out (`id_tokens.verify_id_token`) says which organisation that really was.

Delegated sign-in goes to `organizations` ("whichever work tenant the user belongs to"; `common`
would let personal accounts in); admin consent goes to the tenant that owns the test mailbox's
domain, and the admin's sign-in to the tenant the consent answer named.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote, urlencode

import msal
import msal.exceptions
import requests

from calbroker.config import Cloud, OperatorApp
from calbroker.domain.errors import CredentialsRejected, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from calbroker.logs import get_logger
from calbroker.providers.graph.auth import DELEGATED_SCOPES, MsalHttpClient
from calbroker.providers.graph.id_tokens import IdToken, OpenIdKeys, verify_id_token

__all__ = [
    "ADMIN_ROLES",
    "SignedIn",
    "admin_consent_url",
    "admin_sign_in_url",
    "pkce_challenge",
    "redeem_admin_sign_in",
    "redeem_sign_in",
    "sign_in_url",
]

ADMIN_ROLES: dict[str, str] = {
    # Role template ids (the values of `wids`). Only these two may grant consent to Microsoft
    # Graph *application* permissions; (Cloud) Application Administrators may not:
    # https://learn.microsoft.com/entra/identity/role-based-access-control/permissions-reference
    # https://learn.microsoft.com/entra/identity/enterprise-apps/grant-admin-consent
    "62e90394-69f5-4237-9190-012177145e10": "Global Administrator",
    "e8611ab8-c189-46e8-94e1-60213ab1f814": "Privileged Role Administrator",
}
"""An admin-consent sign-in must carry one of these: the roles that could have granted the consent."""

# Tenants' issuers and signing keys, shared by every sign-in of this process.
_OPENID_KEYS = OpenIdKeys()

_log = get_logger(__name__)
_ANY_WORK_TENANT = "organizations"
_AADSTS = re.compile(r"AADSTS(\d+)")


def _authority(cloud: Cloud) -> str:
    return f"{cloud.authority_host.rstrip('/')}/{_ANY_WORK_TENANT}"


def pkce_challenge(verifier: str) -> str:
    """S256 code challenge (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def admin_consent_url(cloud: Cloud, operator: OperatorApp, *, tenant: str, redirect_uri: str, state: str) -> str:
    """Where the admin grants the operator app's application permissions for their whole tenant.

    `tenant` is a GUID or a verified domain (the test mailbox's): Microsoft's page then names the
    organisation being consented for, instead of leaving the admin to pick one.
    """
    query = urlencode(
        {
            "client_id": operator.client_id,
            "scope": f"{cloud.graph_resource.rstrip('/')}/.default",
            "redirect_uri": redirect_uri,
            "state": state,
        }
    )
    return f"{cloud.authority_host.rstrip('/')}/{quote(tenant, safe='')}/v2.0/adminconsent?{query}"


def admin_sign_in_url(
    cloud: Cloud,
    operator: OperatorApp,
    *,
    tenant: str,
    redirect_uri: str,
    state: str,
    nonce: str,
    code_challenge: str,
) -> str:
    """Where the admin who just granted consent signs in to `tenant`, so the ID token names them.

    Only `openid profile`: calbroker wants to know who signed in, not to act as them.
    `prompt=select_account` lets an admin who was refused (wrong account) pick another one
    instead of being signed in again silently as the same user.
    """
    query = urlencode(
        {
            "client_id": operator.client_id,
            "response_type": "code",
            "response_mode": "query",
            "redirect_uri": redirect_uri,
            "scope": "openid profile",
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            "prompt": "select_account",
        }
    )
    return f"{_tenant_authority(cloud, tenant)}/oauth2/v2.0/authorize?{query}"


def _tenant_authority(cloud: Cloud, tenant: str) -> str:
    return f"{cloud.authority_host.rstrip('/')}/{quote(tenant, safe='')}"


def _delegated_scopes(cloud: Cloud) -> list[str]:
    resource = cloud.graph_resource.rstrip("/")
    return [f"{resource}/{scope}" for scope in DELEGATED_SCOPES]


def sign_in_url(
    cloud: Cloud, operator: OperatorApp, *, redirect_uri: str, state: str, code_challenge: str, login_hint: str
) -> str:
    """Where one user signs in and consents to calendar access for their own mailbox."""
    query = urlencode(
        {
            "client_id": operator.client_id,
            "response_type": "code",
            "response_mode": "query",
            "redirect_uri": redirect_uri,
            "scope": " ".join(["openid", "profile", "email", "offline_access", *_delegated_scopes(cloud)]),
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            "login_hint": login_hint,
            "prompt": "select_account",
        }
    )
    return f"{_authority(cloud)}/oauth2/v2.0/authorize?{query}"


@dataclass(frozen=True, slots=True, repr=False)
class SignedIn:
    """Who signed in, and the refresh token that keeps calbroker's access to their calendar."""

    tenant_id: str
    mailbox: str
    refresh_token: str

    def __repr__(self) -> str:
        return f"SignedIn(tenant_id={self.tenant_id!r}, mailbox={self.mailbox!r}, refresh_token=<redacted>)"


async def redeem_sign_in(
    cloud: Cloud,
    operator: OperatorApp,
    *,
    code: str,
    redirect_uri: str,
    code_verifier: str,
    timeout_s: float = 20.0,
) -> SignedIn:
    """Redeem an authorization code (with its PKCE verifier) for the user's tokens."""
    try:
        async with asyncio.timeout(timeout_s):
            result = await asyncio.to_thread(_redeem_blocking, cloud, operator, code, redirect_uri, code_verifier)
    except TimeoutError:
        raise UpstreamTimeout("Microsoft Entra ID did not complete the sign-in in time") from None
    claims = result.get("id_token_claims")
    refresh_token = result.get("refresh_token")
    if not isinstance(claims, dict) or not isinstance(refresh_token, str):
        raise _refusal(result)
    mailbox = str(claims.get("email") or claims.get("preferred_username") or "").strip().lower()
    tenant = str(claims.get("tid") or "")
    if not mailbox or not tenant:
        raise CredentialsRejected("Microsoft's sign-in answer names no mailbox or tenant (no email or tid claim).")
    return SignedIn(tenant, mailbox, refresh_token)


def _redeem_blocking(
    cloud: Cloud, operator: OperatorApp, code: str, redirect_uri: str, code_verifier: str
) -> dict[str, Any]:
    http = MsalHttpClient(str(cloud.ca_bundle) if cloud.ca_bundle else True, 15.0)
    try:
        return _redeem_code(
            http,
            cloud,
            operator,
            authority=_authority(cloud),
            code=code,
            scopes=_delegated_scopes(cloud),
            redirect_uri=redirect_uri,
            code_verifier=code_verifier,
        )
    finally:
        http.close()


def _redeem_code(
    http: MsalHttpClient,
    cloud: Cloud,
    operator: OperatorApp,
    *,
    authority: str,
    code: str,
    scopes: list[str],
    redirect_uri: str,
    code_verifier: str,
) -> dict[str, Any]:
    """The token endpoint's answer to an authorization code (msal's dict: tokens, or Entra's error)."""
    with _entra_errors(cloud, authority):
        app = msal.ConfidentialClientApplication(
            operator.client_id,
            client_credential=operator.client_secret,
            authority=authority,
            instance_discovery=cloud.known_to_msal,
            http_client=http,
            app_name="calbroker",
            # An admin's sign-in asks for `openid profile` only: no refresh token to keep.
            exclude_scopes=None if scopes else ["offline_access"],
        )
        # msal suggests its auth-code-flow helpers, which keep the flow (verifier, state) in a dict
        # between the two halves; calbroker keeps them server-side, bound to the link, so it
        # redeems the code with the lower-level call and its own PKCE verifier.
        return cast(
            dict[str, Any],
            app.acquire_token_by_authorization_code(
                code, scopes, redirect_uri=redirect_uri, data={"code_verifier": code_verifier}
            ),
        )


@contextmanager
def _entra_errors(cloud: Cloud, authority: str) -> Iterator[None]:
    """msal's and requests' exceptions as calbroker's errors."""
    try:
        yield
    except ValueError:
        # msal raises it from the constructor when OpenID discovery fails (an unknown tenant).
        raise CredentialsRejected(f"The authority {authority} could not be used (OpenID discovery failed).") from None
    except requests.exceptions.SSLError:
        raise UpstreamUnavailable(
            f"TLS verification failed talking to Microsoft Entra ID at {cloud.authority_host}"
        ) from None
    except (requests.RequestException, msal.exceptions.MsalServiceError) as exc:
        raise UpstreamUnavailable(
            f"Microsoft Entra ID at {cloud.authority_host} could not be reached: {type(exc).__name__}"
        ) from None


async def redeem_admin_sign_in(
    cloud: Cloud,
    operator: OperatorApp,
    *,
    tenant: str,
    code: str,
    redirect_uri: str,
    code_verifier: str,
    nonce: str,
    timeout_s: float = 20.0,
) -> IdToken:
    """Redeem the admin's sign-in code at `tenant` and return its ID token, once every check passed.

    Raises `IdTokenRejected` (a `CredentialsRejected`) for a token that fails a check, among them
    a `tid` other than `tenant`; other `UpstreamError`s when Entra refused or was unreachable.
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await asyncio.to_thread(
                _admin_sign_in_blocking,
                cloud,
                operator,
                tenant=tenant,
                code=code,
                redirect_uri=redirect_uri,
                code_verifier=code_verifier,
                nonce=nonce,
            )
    except TimeoutError:
        raise UpstreamTimeout("Microsoft Entra ID did not complete the sign-in in time") from None


def _admin_sign_in_blocking(
    cloud: Cloud, operator: OperatorApp, *, tenant: str, code: str, redirect_uri: str, code_verifier: str, nonce: str
) -> IdToken:
    authority = _tenant_authority(cloud, tenant)
    http = MsalHttpClient(str(cloud.ca_bundle) if cloud.ca_bundle else True, 15.0)

    def fetch(url: str) -> Any:
        with _entra_errors(cloud, authority):
            response = http.get(url)
            if response.status_code != 200:
                raise UpstreamUnavailable(f"Microsoft Entra ID answered {url} with HTTP {response.status_code}")
            return response.json()

    try:
        result = _redeem_code(
            http,
            cloud,
            operator,
            authority=authority,
            code=code,
            scopes=[],
            redirect_uri=redirect_uri,
            code_verifier=code_verifier,
        )
        id_token = result.get("id_token")
        if not isinstance(id_token, str):
            raise _refusal(result)
        metadata = _OPENID_KEYS.metadata(authority, fetch)
        return verify_id_token(
            id_token,
            keys=_OPENID_KEYS.signing_keys(metadata.jwks_uri, ca_bundle=cloud.ca_bundle),
            issuer=metadata.issuer,
            audience=operator.client_id,
            nonce=nonce,
            tenant_id=tenant,
        )
    finally:
        http.close()


def _refusal(result: dict[str, Any]) -> UpstreamError:
    description = str(result.get("error_description") or result.get("error") or "no tokens in the answer")
    found = _AADSTS.search(description)
    code = f"AADSTS{found.group(1)}" if found else str(result.get("error") or "unknown_error")
    _log.warning("graph.sign_in_refused", code=code)
    return CredentialsRejected(
        f"Microsoft Entra ID refused the sign-in: {description.splitlines()[0]}", upstream_code=code
    )
