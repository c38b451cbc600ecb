"""Checking the ID tokens Microsoft Entra ID issues: PyJWT verifies the JWT, calbroker adds OpenID Connect.

msal decodes ID tokens but, since 1.38, validates none of it ("validation is the application's
responsibility"), so calbroker checks what OpenID Connect Core §3.1.3.7 and Microsoft ask
(https://learn.microsoft.com/entra/identity-platform/v2-protocols-oidc ,
https://learn.microsoft.com/entra/identity-platform/id-token-claims-reference):

- with PyJWT (`jwt.decode`): an RS256 signature (the one value Entra's discovery document lists in
  `id_token_signing_alg_values_supported`) by an RSA key of at least 2048 bits, the one the header's
  `kid` names in the tenant's `jwks_uri`; `aud` equal to the app's client id; `exp` / `nbf` /
  `iat` within two minutes of clock skew;
- here: the compact form, `tid` the tenant the sign-in was for, `iss` that tenant's issuer and
  `nonce` the one sent with the sign-in.

`OpenIdKeys` caches, per process, each tenant's issuer and `jwks_uri` (a day) and one
`jwt.PyJWKClient` per key set, which keeps the set a day and fetches it again, at most once a
minute, when a token names a `kid` it lacks (Entra rolls its signing keys over without notice).
PyJWKClient does blocking I/O: call `verify_id_token` in a worker thread.
"""

from __future__ import annotations

import hmac
import math
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import jwt

from calbroker.domain.errors import CredentialsRejected, UpstreamUnavailable

__all__ = ["IdToken", "IdTokenRejected", "OpenIdKeys", "OpenIdMetadata", "SigningKeys", "verify_id_token"]

FetchJson = Callable[[str], Any]
"""GET a URL and return its JSON body (raising `UpstreamError` when that fails)."""

CLOCK_SKEW = timedelta(minutes=2)
_MAX_TOKEN_CHARS = 16_384
_MAX_CACHED = 1024
# RFC 7515 §7.1's compact form: three unpadded base64url parts. Checked before PyJWT, whose decoder
# also accepts padding and an empty signature (the form of `alg: none`).
_COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


class IdTokenRejected(CredentialsRejected):
    """An ID token that fails a check, so nothing in it can be believed.

    `check` names the failed check: "format", "algorithm", "key", "signature", "issuer",
    "audience", "nonce", "expired", "not_yet_valid" or "tenant".
    """

    def __init__(self, detail: str, *, check: str) -> None:
        super().__init__(detail, upstream_code=f"id_token:{check}")
        self.check = check


@dataclass(frozen=True, slots=True)
class IdToken:
    """The verified claims of an ID token, with the ones calbroker reads named."""

    claims: Mapping[str, Any]

    @property
    def tenant_id(self) -> str:
        return str(self.claims.get("tid") or "")

    @property
    def object_id(self) -> str:
        return str(self.claims.get("oid") or "")

    @property
    def username(self) -> str:
        """`preferred_username` (mutable: for display, never for a decision)."""
        return str(self.claims.get("preferred_username") or self.claims.get("email") or "")

    @property
    def directory_roles(self) -> frozenset[str] | None:
        """Template ids of the user's Entra roles (`wids`), or None when the token has no such claim.

        Entra emits `wids` only when the app asks for directory roles (`groupMembershipClaims`
        `DirectoryRole` or `All`): https://learn.microsoft.com/entra/identity/hybrid/connect/how-to-connect-fed-group-claims
        """
        raw = self.claims.get("wids")
        if not isinstance(raw, list):
            return None
        return frozenset(str(role).lower() for role in raw)


@dataclass(frozen=True, slots=True)
class OpenIdMetadata:
    """What calbroker reads from a tenant's OpenID configuration."""

    issuer: str
    jwks_uri: str


class SigningKeys(Protocol):
    """An issuer's published keys by `kid`, the way `jwt.PyJWKClient` serves them.

    Raises `jwt.PyJWKClientError` for a `kid` the set lacks, `jwt.PyJWKClientConnectionError` when
    the set cannot be fetched and `jwt.PyJWKSetError` when it holds no usable key.
    """

    def get_signing_key(self, kid: str) -> jwt.PyJWK: ...


class _IdTokenJWT(jwt.PyJWT):
    """PyJWT, reading `exp`, `nbf` and `iat` as RFC 7519 §2 defines a NumericDate: a JSON number.

    PyJWT reads them with `int()`, which takes `true` or `"2099"`, and its JSON parser reads `NaN`
    and `Infinity`; `_decode_payload` is PyJWT's hook for payload decoding, documented for overriding.
    """

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        payload = super()._decode_payload(decoded)
        for name in ("exp", "nbf", "iat"):
            value = payload.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise jwt.DecodeError(f"The `{name}` claim is not a number of seconds")
        return payload


# `iss` is checked after `tid` (see verify_id_token), so PyJWT does not check it.
_JWT = _IdTokenJWT(
    options={"require": ["exp"], "verify_iss": False, "strict_aud": True, "enforce_minimum_key_length": True}
)


def verify_id_token(
    token: str,
    *,
    keys: SigningKeys,
    issuer: str,
    audience: str,
    nonce: str,
    tenant_id: str,
    clock_skew: timedelta = CLOCK_SKEW,
) -> IdToken:
    """The token's claims if every check passes; `IdTokenRejected` naming the first that fails.

    `UpstreamUnavailable` when the issuer's keys cannot be had (the token may be fine).
    """
    if len(token) > _MAX_TOKEN_CHARS or not _COMPACT_JWS.match(token):
        raise IdTokenRejected("The ID token is not a signed JWT (three base64url-encoded parts).", check="format")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise IdTokenRejected("The ID token's header is not base64url-encoded JSON.", check="format") from None
    # Only RS256: a token may not choose a weaker (or no) algorithm, nor use the key as an HMAC
    # secret. Checked before the key is looked up, so a forged header costs no key-set fetch.
    if header.get("alg") != "RS256":
        raise IdTokenRejected(f"The ID token is signed with {header.get('alg')!r}, not RS256.", check="algorithm")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise IdTokenRejected("The ID token names no signing key.", check="key")
    try:
        key = keys.get_signing_key(kid)
    except jwt.PyJWKClientConnectionError as exc:
        raise UpstreamUnavailable(f"The issuer's signing keys could not be fetched: {exc}") from None
    except (jwt.PyJWKSetError, ValueError):
        raise UpstreamUnavailable("The issuer's key set is not a JSON Web Key Set with a usable key.") from None
    except jwt.PyJWKClientError:
        raise IdTokenRejected("The ID token is signed with a key the issuer does not publish.", check="key") from None
    # Whatever serves the keys (PyJWKClient already skips `use: enc` keys), only an RSA signing key will do.
    if key.key_type != "RSA" or key.public_key_use not in (None, "sig"):
        raise IdTokenRejected("The ID token names a key that is not an RSA signing key.", check="key")
    try:
        claims = _JWT.decode(token, key, algorithms=["RS256"], audience=audience, leeway=clock_skew)
    except jwt.InvalidAlgorithmError:  # the published key is for another algorithm
        raise IdTokenRejected("The ID token is not signed with RS256.", check="algorithm") from None
    except jwt.InvalidKeyError:
        raise IdTokenRejected("The ID token's signing key is shorter than 2048 bits.", check="key") from None
    except jwt.InvalidSignatureError:
        raise IdTokenRejected("The ID token's signature does not verify.", check="signature") from None
    except jwt.ExpiredSignatureError:
        raise IdTokenRejected("The ID token has expired.", check="expired") from None
    except jwt.ImmatureSignatureError:
        raise IdTokenRejected(
            "The ID token is not valid yet (check this server's clock).", check="not_yet_valid"
        ) from None
    except jwt.InvalidAudienceError:
        raise IdTokenRejected("The ID token was issued for another application.", check="audience") from None
    except jwt.MissingRequiredClaimError as exc:
        if exc.claim == "aud":
            raise IdTokenRejected("The ID token names no application.", check="audience") from None
        raise IdTokenRejected(f"The ID token has no `{exc.claim}` claim.", check="format") from None
    except jwt.InvalidTokenError:
        raise IdTokenRejected("The ID token's claims are not what a JWT holds.", check="format") from None

    # The signature holds, so these are Entra's words: the tenant before the issuer, as a sign-in
    # to another organisation is the refusal an admin must understand (its issuer differs too).
    tid = claims.get("tid")
    if not isinstance(tid, str) or tid.lower() != tenant_id.lower():
        raise IdTokenRejected(f"The sign-in was to organisation {tid!r}, not {tenant_id!r}.", check="tenant")
    if claims.get("iss") != issuer:
        raise IdTokenRejected(f"The ID token was issued by {claims.get('iss')!r}, not {issuer!r}.", check="issuer")
    sent = claims.get("nonce")
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), nonce.encode()):
        raise IdTokenRejected("The ID token does not answer this sign-in (its nonce differs).", check="nonce")
    return IdToken(claims)


@dataclass(slots=True)
class _Cached:
    metadata: OpenIdMetadata
    fetched: float


class OpenIdKeys:
    """Tenants' OpenID metadata and issuers' signing keys, cached for the process (thread-safe)."""

    def __init__(
        self,
        *,
        ttl: timedelta = timedelta(hours=24),
        refetch_after: timedelta = timedelta(minutes=1),
        timeout_s: float = 15.0,
    ) -> None:
        self._ttl = ttl.total_seconds()
        self._refetch_after = refetch_after.total_seconds()
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._metadata: dict[str, _Cached] = {}
        self._key_sets: dict[tuple[str, Path | None], jwt.PyJWKClient] = {}

    def metadata(self, authority: str, fetch: FetchJson) -> OpenIdMetadata:
        """`issuer` and `jwks_uri` of `{authority}/v2.0/.well-known/openid-configuration`.

        PyJWT does no OpenID discovery, hence this. The key set must come from the authority's own
        origin: the configuration is trusted because TLS proved where it came from, and so must
        the keys be.
        """
        url = f"{authority.rstrip('/')}/v2.0/.well-known/openid-configuration"
        with self._lock:
            cached = self._metadata.get(url)
        if cached is not None and time.monotonic() - cached.fetched < self._ttl:
            return cached.metadata
        document = fetch(url)
        issuer = document.get("issuer") if isinstance(document, dict) else None
        jwks_uri = document.get("jwks_uri") if isinstance(document, dict) else None
        if not isinstance(issuer, str) or not isinstance(jwks_uri, str) or "{" in issuer:
            raise UpstreamUnavailable(f"The OpenID configuration at {url} names no tenant issuer or jwks_uri.")
        origin, keys_origin = urlsplit(authority), urlsplit(jwks_uri)
        if (keys_origin.scheme, keys_origin.netloc) != (origin.scheme, origin.netloc):
            raise UpstreamUnavailable(f"The OpenID configuration at {url} points at keys on another host.")
        metadata = OpenIdMetadata(issuer, jwks_uri)
        with self._lock:
            if len(self._metadata) >= _MAX_CACHED and url not in self._metadata:
                self._metadata.pop(next(iter(self._metadata)))
            self._metadata[url] = _Cached(metadata, time.monotonic())
        return metadata

    def signing_keys(self, jwks_uri: str, *, ca_bundle: Path | None) -> SigningKeys:
        """The key set at `jwks_uri`, trusted through `ca_bundle` (the cloud's CA) when there is one."""
        key = (jwks_uri, ca_bundle)
        with self._lock:
            client = self._key_sets.get(key)
            if client is None:
                context = ssl.create_default_context(cafile=str(ca_bundle)) if ca_bundle is not None else None
                client = jwt.PyJWKClient(
                    jwks_uri,
                    lifespan=self._ttl,
                    cooldown_duration=self._refetch_after,
                    timeout=self._timeout_s,
                    ssl_context=context,
                )
                if len(self._key_sets) >= _MAX_CACHED:
                    self._key_sets.pop(next(iter(self._key_sets)))
                self._key_sets[key] = client
        return client
