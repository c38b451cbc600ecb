"""Checking the ID tokens Microsoft Entra ID issues, with `cryptography` and nothing else.

msal decodes ID tokens but, since 1.38, validates none of it ("validation is the application's
responsibility"), so calbroker checks what OpenID Connect Core §3.1.3.7 and Microsoft ask:

- the JWS: three base64url parts, `alg` RS256 (the one value Entra's discovery document lists in
  `id_token_signing_alg_values_supported`), a `kid` naming a key of the `jwks_uri` the tenant's
  OpenID configuration gives, and an RSASSA-PKCS1-v1_5 SHA-256 signature by that key —
  https://learn.microsoft.com/entra/identity-platform/v2-protocols-oidc ;
- `iss` equal to that configuration's issuer, `aud` equal to the app's client id, `nonce` equal to
  the one sent with the sign-in, `exp` / `nbf` / `iat` within two minutes of clock skew, and `tid`
  the tenant the sign-in was for — https://learn.microsoft.com/entra/identity-platform/id-token-claims-reference .

`OpenIdKeys` caches, per process, each tenant's issuer and `jwks_uri` and each key set (a day),
and fetches a key set again, at most once a minute, when a token names a `kid` it lacks (Entra
rolls its signing keys over without notice).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from calbroker.domain.errors import CredentialsRejected, UpstreamUnavailable

__all__ = ["IdToken", "IdTokenRejected", "OpenIdKeys", "OpenIdMetadata", "public_keys", "verify_id_token"]

FetchJson = Callable[[str], Any]
"""GET a URL and return its JSON body (raising `UpstreamError` when that fails)."""

CLOCK_SKEW = timedelta(minutes=2)
_MIN_RSA_BITS = 2048
_MAX_TOKEN_CHARS = 16_384
_MAX_CACHED = 1024
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]+$")


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


def _b64url(text: str) -> bytes:
    """Strict unpadded base64url (RFC 7515 §2): any other character is an error, not skipped."""
    if not _BASE64URL.match(text):
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json would read NaN and Infinity as numbers


def _json_object(raw: bytes) -> dict[str, Any]:
    value = json.loads(raw, parse_constant=_no_constants)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return cast(dict[str, Any], value)


def public_keys(jwks: Any) -> dict[str, rsa.RSAPublicKey]:
    """The RSA signing keys of a JSON Web Key Set (RFC 7517), by `kid`; other keys are skipped."""
    found: dict[str, rsa.RSAPublicKey] = {}
    entries = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(entries, list):
        raise ValueError("a JSON Web Key Set has a `keys` list")
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig":
            continue
        kid, n, e = entry.get("kid"), entry.get("n"), entry.get("e")
        if not (isinstance(kid, str) and isinstance(n, str) and isinstance(e, str)):
            continue
        try:
            key = rsa.RSAPublicNumbers(
                int.from_bytes(_b64url(e), "big"), int.from_bytes(_b64url(n), "big")
            ).public_key()
        except (ValueError, binascii.Error):
            continue
        if key.key_size >= _MIN_RSA_BITS:
            found[kid] = key
    return found


def _number(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IdTokenRejected(f"The ID token's `{name}` is not a time.", check="format")
    return float(value)


def verify_id_token(
    token: str,
    *,
    key_for: Callable[[str], rsa.RSAPublicKey | None],
    issuer: str,
    audience: str,
    nonce: str,
    tenant_id: str,
    now: datetime,
    clock_skew: timedelta = CLOCK_SKEW,
) -> IdToken:
    """The token's claims if every check passes; `IdTokenRejected` naming the first that fails.

    `key_for(kid)` returns the issuer's public key with that id, or None.
    """
    parts = token.split(".") if len(token) <= _MAX_TOKEN_CHARS else []
    if len(parts) != 3:
        raise IdTokenRejected("The ID token is not a signed JWT (three dot-separated parts).", check="format")
    try:
        header = _json_object(_b64url(parts[0]))
        claims = _json_object(_b64url(parts[1]))
        signature = _b64url(parts[2])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise IdTokenRejected("The ID token's parts are not base64url-encoded JSON.", check="format") from None
    # Only RS256: a token may not choose a weaker (or no) algorithm, nor use the key as an HMAC secret.
    if header.get("alg") != "RS256":
        raise IdTokenRejected(f"The ID token is signed with {header.get('alg')!r}, not RS256.", check="algorithm")
    kid = header.get("kid")
    key = key_for(kid) if isinstance(kid, str) and kid else None
    if key is None:
        raise IdTokenRejected("The ID token is signed with a key the issuer does not publish.", check="key")
    try:
        key.verify(signature, f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise IdTokenRejected("The ID token's signature does not verify.", check="signature") from None

    # The signature holds, so these are Entra's words: the tenant first, as a sign-in to another
    # organisation is the refusal an admin must understand (its issuer differs too).
    tid = claims.get("tid")
    if not isinstance(tid, str) or tid.lower() != tenant_id.lower():
        raise IdTokenRejected(f"The sign-in was to organisation {tid!r}, not {tenant_id!r}.", check="tenant")
    if claims.get("iss") != issuer:
        raise IdTokenRejected(f"The ID token was issued by {claims.get('iss')!r}, not {issuer!r}.", check="issuer")
    if claims.get("aud") != audience:
        raise IdTokenRejected("The ID token was issued for another application.", check="audience")
    sent = claims.get("nonce")
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), nonce.encode()):
        raise IdTokenRejected("The ID token does not answer this sign-in (its nonce differs).", check="nonce")
    instant = now.timestamp()
    skew = clock_skew.total_seconds()
    expires = _number(claims, "exp", required=True)
    assert expires is not None
    if instant - skew >= expires:
        raise IdTokenRejected("The ID token has expired.", check="expired")
    not_before = _number(claims, "nbf", required=False)
    issued = _number(claims, "iat", required=False)
    if (not_before is not None and instant + skew < not_before) or (issued is not None and instant + skew < issued):
        raise IdTokenRejected("The ID token is not valid yet (check this server's clock).", check="not_yet_valid")
    return IdToken(claims)


@dataclass(slots=True)
class _Cached:
    value: Any
    fetched: float


class OpenIdKeys:
    """Tenants' OpenID metadata and issuers' signing keys, cached for the process (thread-safe)."""

    def __init__(
        self,
        *,
        ttl: timedelta = timedelta(hours=24),
        refetch_after: timedelta = timedelta(minutes=1),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl.total_seconds()
        self._refetch_after = refetch_after.total_seconds()
        self._clock = clock
        self._lock = threading.Lock()
        self._metadata: dict[str, _Cached] = {}
        self._keys: dict[str, _Cached] = {}

    def _fresh(self, table: dict[str, _Cached], url: str) -> _Cached | None:
        with self._lock:
            cached = table.get(url)
        if cached is not None and self._clock() - cached.fetched < self._ttl:
            return cached
        return None

    def _store(self, table: dict[str, _Cached], url: str, value: Any) -> None:
        with self._lock:
            if len(table) >= _MAX_CACHED and url not in table:
                table.pop(next(iter(table)))
            table[url] = _Cached(value, self._clock())

    def metadata(self, authority: str, fetch: FetchJson) -> OpenIdMetadata:
        """`issuer` and `jwks_uri` of `{authority}/v2.0/.well-known/openid-configuration`.

        The key set must come from the authority's own origin: the configuration is trusted
        because TLS proved where it came from, and so must the keys be.
        """
        url = f"{authority.rstrip('/')}/v2.0/.well-known/openid-configuration"
        cached = self._fresh(self._metadata, url)
        if cached is not None:
            return cast(OpenIdMetadata, cached.value)
        document = fetch(url)
        issuer = document.get("issuer") if isinstance(document, dict) else None
        jwks_uri = document.get("jwks_uri") if isinstance(document, dict) else None
        if not isinstance(issuer, str) or not isinstance(jwks_uri, str) or "{" in issuer:
            raise UpstreamUnavailable(f"The OpenID configuration at {url} names no tenant issuer or jwks_uri.")
        origin, keys_origin = urlsplit(authority), urlsplit(jwks_uri)
        if (keys_origin.scheme, keys_origin.netloc) != (origin.scheme, origin.netloc):
            raise UpstreamUnavailable(f"The OpenID configuration at {url} points at keys on another host.")
        metadata = OpenIdMetadata(issuer, jwks_uri)
        self._store(self._metadata, url, metadata)
        return metadata

    def key(self, jwks_uri: str, kid: str, fetch: FetchJson) -> rsa.RSAPublicKey | None:
        """The key `kid` of the set at `jwks_uri`: cached, fetched again when it is unknown."""
        cached = self._fresh(self._keys, jwks_uri)
        if cached is not None:
            keys = cast(dict[str, rsa.RSAPublicKey], cached.value)
            if kid in keys or self._clock() - cached.fetched < self._refetch_after:
                return keys.get(kid)
        try:
            keys = public_keys(fetch(jwks_uri))
        except ValueError:
            raise UpstreamUnavailable(f"The key set at {jwks_uri} is not a JSON Web Key Set.") from None
        self._store(self._keys, jwks_uri, keys)
        return keys.get(kid)
