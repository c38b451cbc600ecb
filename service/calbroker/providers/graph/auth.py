"""Graph access tokens for one connection through msal, kept off the event loop.

msal is synchronous and does network I/O in its constructor (OpenID discovery) and on a cache
miss, so both run in the provider's executor. One `ConfidentialClientApplication` lives as long as
the connection's provider: its in-memory cache makes every call after the first free of HTTP.
Errors are Entra's AADSTS codes, turned here into `CredentialsRejected` sentences an admin can act on.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from typing import Any, cast
from urllib.parse import urlsplit

import jwt
import msal
import msal.exceptions
import requests

from calbroker.config import Cloud, OperatorApp
from calbroker.domain.connections import (
    Credentials,
    GraphAdminConsent,
    GraphCertificate,
    GraphClientSecret,
    GraphDelegated,
)
from calbroker.domain.errors import (
    CalbrokerError,
    CredentialsRejected,
    UpstreamError,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from calbroker.logs import get_logger
from calbroker.metrics import Metrics, outcome_of
from calbroker.providers.protocol import Deadline

__all__ = ["DELEGATED_SCOPES", "GraphCredentials", "GraphTokens", "MsalHttpClient", "granted_permissions"]

GraphCredentials = GraphClientSecret | GraphCertificate | GraphAdminConsent | GraphDelegated

# What the delegated sign-in asks the user to consent to, and so what refreshes ask for. Not
# `.default`: Entra answers with the granted scopes, which never include ".default", so msal would
# never find the cached token again and would redeem the refresh token on every call.
DELEGATED_SCOPES = ("Calendars.ReadWrite",)

_log = get_logger(__name__)
_AADSTS = re.compile(r"AADSTS(\d+)")
_HTTP_STATUS = re.compile(r"HTTP Error: (\d{3})")

# Entra's answers an admin can fix, as sentences (never echoing a secret). Codes:
# https://learn.microsoft.com/entra/identity-platform/reference-error-codes
_SENTENCES = {
    "7000215": "The client secret was rejected for app {client_id}: enter the secret's Value, "
    "not its Secret ID, from Certificates & secrets.",
    "7000222": "The client secret of app {client_id} has expired: create a new one under "
    "Certificates & secrets and update the connection.",
    "700016": "App {client_id} is not present in tenant {tenant}: an administrator of that tenant must "
    "grant admin consent, or the directory (tenant) id is wrong.",
    "90002": "Tenant {tenant} does not exist in Microsoft Entra ID: check the directory (tenant) id.",
    "900023": "{tenant} is neither a tenant id nor a domain of a Microsoft Entra tenant.",
    "700027": "The certificate assertion of app {client_id} was rejected: the certificate is not "
    "registered on the app registration, or the signature does not match it.",
    "700024": "The certificate assertion of app {client_id} is outside its validity period: check this server's clock.",
    "7000112": "App {client_id} is disabled in tenant {tenant}.",
    "65001": "App {client_id} has not been consented to in tenant {tenant}: an administrator must grant admin consent.",
    "70008": "The mailbox owner's sign-in has expired: they must sign in again.",
    "700082": "The mailbox owner's sign-in has expired after a long time unused: they must sign in again.",
    "50173": "The mailbox owner's sign-in was revoked (password change?): they must sign in again.",
}
# OAuth2 errors that mean "Entra is having a bad moment, try later" rather than "these credentials
# will not work" (RFC 6749 §4.1.2.1; Entra sends them with AADSTS50000-style codes).
_TRANSIENT = frozenset({"temporarily_unavailable", "server_error"})


class MsalHttpClient:
    """msal's `HttpClient` interface (get/post/close) over one requests session.

    It pins `verify` to the cloud's CA bundle and sets a timeout on every request. `verify` is
    passed per request, not only set on the session, because requests lets REQUESTS_CA_BUNDLE /
    CURL_CA_BUNDLE (set on many machines, this one included) override `Session.verify`; a
    per-request path wins over them, while proxy settings from the environment keep working
    (which `trust_env = False` would also switch off).
    """

    def __init__(self, verify: str | bool, timeout_s: float) -> None:
        self._session = requests.Session()
        self._verify = verify
        self._timeout_s = timeout_s

    def post(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout_s)
        kwargs["verify"] = self._verify
        return self._session.post(url, params=params, data=data, headers=headers, **kwargs)

    def get(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout_s)
        kwargs["verify"] = self._verify
        return self._session.get(url, params=params, headers=headers, **kwargs)

    def close(self) -> None:
        self._session.close()


def granted_permissions(access_token: str) -> frozenset[str] | None:
    """The Graph permissions a token carries: `roles` (application) or `scp` (delegated); None if unreadable.

    Claims reference: https://learn.microsoft.com/entra/identity-platform/access-token-claims-reference
    (`roles`: "the set of permissions exposed by the application ... that have been given
    permission to call"; `scp`: the delegated scopes, space-separated). The signature is not
    checked, and need not be: the token is our own, just received from the token endpoint over
    TLS that we authenticated, and we only read what was granted to decide what to offer; Graph
    still enforces every call. Microsoft also says tokens are opaque to clients and their format
    may change, hence None (unknown) rather than an error when it is not a JWT.
    """
    try:
        claims = jwt.decode(access_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    roles = claims.get("roles")
    if isinstance(roles, list):
        return frozenset(str(role) for role in roles)
    scopes = claims.get("scp")
    if isinstance(scopes, str):
        return frozenset(scopes.split())
    return frozenset()


class GraphTokens:
    """Bearer tokens for one Graph connection: app-only (secret, certificate, admin consent) or
    delegated (a refresh token for one mailbox, rotated and persisted through `on_credentials_changed`)."""

    def __init__(
        self,
        credentials: GraphCredentials,
        cloud: Cloud,
        executor: Executor,
        *,
        operator_app: OperatorApp | None,
        on_credentials_changed: Callable[[Credentials], Awaitable[None]] | None,
        timeout_s: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._credentials = credentials
        self._refreshes = (metrics if metrics is not None else Metrics()).token_refreshes
        self._cloud = cloud
        self._executor = executor
        self._operator_app = operator_app
        self._on_credentials_changed = on_credentials_changed
        resource = cloud.graph_resource.rstrip("/")
        self._scopes = (
            [f"{resource}/{scope}" for scope in DELEGATED_SCOPES]
            if isinstance(credentials, GraphDelegated)
            else [f"{resource}/.default"]
        )
        self._http = MsalHttpClient(str(cloud.ca_bundle) if cloud.ca_bundle else True, timeout_s)
        self._app: msal.ConfidentialClientApplication | None = None
        self._build_lock = threading.Lock()  # the constructor runs in worker threads
        self._acquire_lock = asyncio.Lock()  # one token request at a time; the rest hit the cache
        self._refresh_token = credentials.refresh_token if isinstance(credentials, GraphDelegated) else None

    @property
    def tenant_id(self) -> str:
        return self._credentials.tenant_id

    @property
    def client_id(self) -> str:
        match self._credentials:
            case GraphClientSecret(client_id=client_id) | GraphCertificate(client_id=client_id):
                return client_id
            case _:
                return self._operator_app.client_id if self._operator_app else "(no operator app)"

    async def token(self, deadline: Deadline) -> str:
        """A bearer token, from msal's cache when it holds a fresh one (no HTTP then)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(deadline.remaining()):
                async with self._acquire_lock:
                    result, refresh_token = await loop.run_in_executor(self._executor, self._acquire_blocking)
        except TimeoutError:
            self._refreshes.labels("upstream-timeout").inc()
            raise UpstreamTimeout(
                f"Microsoft Entra ID did not issue a token for tenant {self.tenant_id} within the deadline"
            ) from None
        except CalbrokerError as exc:
            self._refreshes.labels(outcome_of(exc)).inc()
            raise
        token = result.get("access_token")
        if not isinstance(token, str):
            rejection = self._rejection(result)
            self._refreshes.labels(outcome_of(rejection)).inc()
            raise rejection
        if result.get("token_source") != "cache":  # msal says where the token came from
            self._refreshes.labels("ok").inc()
        await self._persist_rotation(refresh_token)
        return token

    async def forget(self) -> None:
        """Drop cached access tokens (not refresh tokens), after Graph said the one we sent is invalid."""
        app = self._app
        if app is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, _drop_access_tokens, app)

    def close(self) -> None:
        self._http.close()

    # --- in worker threads ----------------------------------------------------------------------

    def _build_blocking(self) -> msal.ConfidentialClientApplication:
        with self._build_lock:
            if self._app is not None:
                return self._app
            client_id, credential = self._client_credential()
            try:
                app = msal.ConfidentialClientApplication(
                    client_id,
                    client_credential=credential,
                    authority=f"{self._cloud.authority_host.rstrip('/')}/{self.tenant_id}",
                    # Instance discovery asks login.microsoftonline.com about the host; skip it
                    # for hosts msal does not know (the sandbox, private clouds).
                    instance_discovery=self._cloud.known_to_msal,
                    http_client=self._http,
                    app_name="calbroker",
                )
            except ValueError as exc:
                raise self._construction_error(exc) from None
            except (requests.RequestException, msal.exceptions.MsalServiceError) as exc:
                raise self._network_error(exc) from None
            self._app = app
            _log.info("graph.msal_ready", tenant=self.tenant_id, client_id=client_id, cloud=self._cloud.name)
            return app

    def _acquire_blocking(self) -> tuple[dict[str, Any], str | None]:
        app = self._build_blocking()
        try:
            if isinstance(self._credentials, GraphDelegated):
                return self._acquire_delegated_blocking(app)
            return cast(dict[str, Any], app.acquire_token_for_client(self._scopes)), None
        except (requests.RequestException, msal.exceptions.MsalServiceError) as exc:
            raise self._network_error(exc) from None

    def _acquire_delegated_blocking(self, app: msal.ConfidentialClientApplication) -> tuple[dict[str, Any], str | None]:
        result: dict[str, Any] | None = None
        accounts = app.get_accounts()
        if accounts:
            result = cast(dict[str, Any] | None, app.acquire_token_silent(self._scopes, account=accounts[0]))
        if not result:
            result = cast(dict[str, Any], app.acquire_token_by_refresh_token(self._refresh_token, self._scopes))
        # Entra may rotate the refresh token on any redemption; msal keeps the newest in its cache.
        cached = next(iter(app.token_cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN)), None)
        newest = result.get("refresh_token") or (cached.get("secret") if cached else None)
        return result, newest if isinstance(newest, str) else None

    def _client_credential(self) -> tuple[str, str | dict[str, str]]:
        match self._credentials:
            case GraphClientSecret(client_id=client_id, client_secret=secret):
                return client_id, secret
            case GraphCertificate(client_id=client_id, private_key_pem=key, certificate_pem=certificate):
                # With the certificate itself msal signs PS256 with an x5t#S256 (SHA-256) thumbprint,
                # the form Microsoft documents today; a bare SHA-1 `thumbprint` would mean RS256 + x5t.
                # https://learn.microsoft.com/entra/identity-platform/certificate-credentials
                return client_id, {"private_key": key, "public_certificate": certificate}
            case GraphAdminConsent() | GraphDelegated():
                if self._operator_app is None:
                    raise CredentialsRejected(
                        "This connection goes through the operator's multi-tenant app, but none is "
                        "configured (CALBROKER_GRAPH_CLIENT_ID / CALBROKER_GRAPH_CLIENT_SECRET)."
                    )
                return self._operator_app.client_id, self._operator_app.client_secret

    # --- errors --------------------------------------------------------------------------------

    def _sentence(self, code: str) -> str | None:
        template = _SENTENCES.get(code)
        return template.format(client_id=self.client_id, tenant=self.tenant_id) if template else None

    def _rejection(self, result: Mapping[str, Any]) -> UpstreamError:
        error = str(result.get("error") or "unknown_error")
        codes = result.get("error_codes")
        description = str(result.get("error_description") or "")
        found = _AADSTS.search(description)
        code = str(codes[0]) if isinstance(codes, list) and codes else found.group(1) if found else None
        upstream_code = f"AADSTS{code}" if code else error
        sentence = self._sentence(code) if code else None
        if sentence is None:
            # First line of Entra's text only: the rest is trace and correlation ids.
            first_line = description.splitlines()[0] if description else error
            sentence = (
                f"Microsoft Entra ID refused a token for app {self.client_id} in tenant {self.tenant_id}: {first_line}"
            )
        _log.warning("graph.token_refused", tenant=self.tenant_id, client_id=self.client_id, code=upstream_code)
        if error in _TRANSIENT:
            return UpstreamUnavailable(sentence, upstream_code=upstream_code)
        return CredentialsRejected(sentence, upstream_code=upstream_code)

    def _construction_error(self, exc: ValueError) -> UpstreamError:
        # msal raises ValueError from its constructor when OpenID discovery answers 4xx (an unknown
        # tenant: real Entra sends AADSTS90002 there), chaining the response text; also for a key
        # it cannot load. Neither message is passed on: the key's may describe the key.
        chained = f"{exc} {exc.__context__ or ''}"
        if "authority" in chained.lower() or "discovery" in chained.lower():
            found = _AADSTS.search(chained)
            code = found.group(1) if found else "90002"
            sentence = self._sentence(code) or self._sentence("90002")
            assert sentence is not None
            return CredentialsRejected(sentence, upstream_code=f"AADSTS{code}")
        return CredentialsRejected(
            f"The certificate or private key of app {self.client_id} could not be used: check that "
            "both are PEM and belong together."
        )

    def _network_error(self, exc: requests.RequestException | msal.exceptions.MsalServiceError) -> UpstreamError:
        host = urlsplit(self._cloud.authority_host).netloc
        if isinstance(exc, msal.exceptions.MsalServiceError):
            # msal raises (rather than returning Entra's JSON) when an answer is 5xx or 429.
            status = _HTTP_STATUS.search(str(exc))
            if status is not None and status.group(1) == "429":
                return UpstreamThrottled(f"Microsoft Entra ID at {host} is throttling token requests")
            return UpstreamUnavailable(f"Microsoft Entra ID at {host} failed: {exc}")
        if isinstance(exc, requests.exceptions.SSLError):
            return UpstreamUnavailable(
                f"TLS verification failed talking to Microsoft Entra ID at {host}: {_reason(exc)}"
            )
        if isinstance(exc, requests.Timeout):
            return UpstreamTimeout(f"Microsoft Entra ID at {host} did not answer in time")
        return UpstreamUnavailable(f"Microsoft Entra ID at {host} could not be reached: {_reason(exc)}")

    async def _persist_rotation(self, refresh_token: str | None) -> None:
        if refresh_token is None or refresh_token == self._refresh_token:
            return
        self._refresh_token = refresh_token
        credentials = self._credentials
        if isinstance(credentials, GraphDelegated) and self._on_credentials_changed is not None:
            self._credentials = GraphDelegated(credentials.tenant_id, credentials.mailbox, refresh_token)
            await self._on_credentials_changed(self._credentials)


def _drop_access_tokens(app: msal.ConfidentialClientApplication) -> None:
    cache = app.token_cache
    for token in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
        cache.remove_at(token)


def _reason(exc: BaseException) -> str:
    """The innermost cause's message: 'certificate verify failed: ...' rather than urllib3's wrapping."""
    inner: BaseException = exc
    while inner.__cause__ is not None or (inner.args and isinstance(inner.args[0], BaseException)):
        nested = inner.__cause__ or inner.args[0]
        assert isinstance(nested, BaseException)
        inner = nested
    return str(inner)[:300]
