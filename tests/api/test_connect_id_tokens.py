"""The ID-token checks behind "consent, then sign in": real tokens from the sandbox's Entra, real
keys from its JWKS, and every way a token can be tampered with, replayed or stale.

A genuine ID token is obtained the way calbroker gets one (authorization code at the tenant,
redeemed with the operator app's secret) and checked against the sandbox's published keys through
`OpenIdKeys` (PyJWT's `PyJWKClient`); the forgeries are built from it with `cryptography`, and the
tokens whose claims a test chooses are signed by an issuer the test plays (`OwnIssuer`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from jwt import PyJWK, PyJWKClientError, PyJWKSet
from jwt.algorithms import RSAAlgorithm

from calbroker.domain.errors import UpstreamUnavailable
from calbroker.providers.graph import IdTokenRejected, OpenIdKeys, SigningKeys, verify_id_token
from calbroker.sandbox import SandboxThread
from tests.fixtures.sandbox import SandboxControl

REDIRECT = "https://broker.example/connect/callback"
NONCE = "n0nce-" + "x" * 40
GLOBAL_ADMINISTRATOR = "62e90394-69f5-4237-9190-012177145e10"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def http(sandbox: SandboxThread) -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(sandbox.ca_path)
    yield session
    session.close()


@pytest.fixture(scope="module")
def real(
    sandbox: SandboxThread, http: requests.Session, sandbox_ssl_context: ssl.SSLContext
) -> Iterator[dict[str, Any]]:
    """A genuine ID token of Contoso's administrator for the operator app, and what it was issued for."""
    directory = sandbox.directory
    contoso = directory.tenants["contoso"]
    operator = next(a for a in directory.apps.values() if a.key == "tailspin-operator")
    admin = directory.mailbox(contoso.admin_email)
    assert admin is not None
    authorize = f"{sandbox.authority_host}/{contoso.id}/oauth2/v2.0/authorize"
    params = {
        "client_id": operator.client_id,
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "scope": "openid profile",
        "state": "s",
        "nonce": NONCE,
    }
    signed_in = http.post(
        authorize, data=params | {"username": admin.email, "password": admin.password}, allow_redirects=False
    )
    assert signed_in.status_code == 302, signed_in.text
    code = parse_qs(urlsplit(signed_in.headers["Location"]).query)["code"][0]
    answer = http.post(
        f"{sandbox.authority_host}/{contoso.id}/oauth2/v2.0/token",
        data={
            "grant_type": "authorization_code",
            "client_id": operator.client_id,
            "client_secret": operator.secrets[0].value,
            "code": code,
            "redirect_uri": REDIRECT,
        },
    )
    assert answer.status_code == 200, answer.text
    yield {
        "token": answer.json()["id_token"],
        "tenant": contoso.id,
        "client_id": operator.client_id,
        "issuer": f"{sandbox.authority_host}/{contoso.id}/v2.0",
        "authority": f"{sandbox.authority_host}/{contoso.id}",
    }
    # The sign-in consented for the user: leave the shared sandbox as it was.
    SandboxControl(sandbox.url, sandbox_ssl_context).delete(f"/_sandbox/tenants/contoso/consent/{operator.client_id}")


@pytest.fixture
def keys(sandbox: SandboxThread) -> SigningKeys:
    """The sandbox Entra's published keys, as calbroker reads them."""
    return OpenIdKeys().signing_keys(f"{sandbox.authority_host}/common/discovery/v2.0/keys", ca_bundle=sandbox.ca_path)


class KeySet:
    """A key set published by nobody but this test: PyJWT's reading of a JWKS (`PyJWKSet`), served by kid."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self._jwks = jwks

    def get_signing_key(self, kid: str) -> PyJWK:
        for key in PyJWKSet.from_dict(self._jwks).keys:
            if key.key_id == kid:
                return key
        raise PyJWKClientError(f"no key {kid!r}")


class OwnIssuer:
    """An issuer the test plays, with one RSA key: for tokens whose claims the test chooses."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def get_signing_key(self, kid: str) -> PyJWK:
        return PyJWK(RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True))

    def sign(self, header: dict[str, Any], payload: bytes) -> str:
        signing_input = b64(json.dumps(header).encode()) + "." + b64(payload)
        return signing_input + "." + b64(self.private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()))


def check(real: dict[str, Any], keys: SigningKeys, token: str | None = None, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "keys": keys,
        "issuer": real["issuer"],
        "audience": real["client_id"],
        "nonce": NONCE,
        "tenant_id": real["tenant"],
    } | overrides
    return verify_id_token(token or real["token"], **options)


def refused(real: dict[str, Any], keys: SigningKeys, token: str | None = None, **overrides: Any) -> str:
    with pytest.raises(IdTokenRejected) as caught:
        check(real, keys, token, **overrides)
    return caught.value.check


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(payload)), signature


def encode(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())


def test_a_genuine_token_verifies(real: dict[str, Any], keys: SigningKeys) -> None:
    verified = check(real, keys)
    assert verified.tenant_id == real["tenant"]
    assert verified.username.startswith("admin@")
    assert verified.object_id
    assert verified.directory_roles is not None
    assert GLOBAL_ADMINISTRATOR in verified.directory_roles


def test_a_tampered_payload_breaks_the_signature(real: dict[str, Any], keys: SigningKeys) -> None:
    header, claims, signature = parts(real["token"])
    for change in ({"tid": "11111111-1111-1111-1111-111111111111"}, {"wids": [GLOBAL_ADMINISTRATOR]}, {"exp": 2**40}):
        forged = encode(header, claims | change) + "." + signature
        assert refused(real, keys, forged) == "signature"


def test_a_token_signed_with_another_key_under_the_same_kid_is_refused(real: dict[str, Any], keys: SigningKeys) -> None:
    header, claims, _ = parts(real["token"])
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signing_input = encode(header, claims)
    signature = impostor.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    assert refused(real, keys, signing_input + "." + b64(signature)) == "signature"


def test_weaker_or_confused_algorithms_are_refused(real: dict[str, Any], keys: SigningKeys) -> None:
    header, claims, signature = parts(real["token"])
    unsigned = encode(header | {"alg": "none"}, claims)
    assert refused(real, keys, unsigned + ".") == "format"  # no signature at all
    assert refused(real, keys, unsigned + "." + signature) == "algorithm"
    # HS256 keyed with the issuer's public key (the classic RS/HS confusion): the key is public.
    public_pem = keys.get_signing_key(header["kid"]).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    confused = encode(header | {"alg": "HS256"}, claims)
    mac = hmac.new(public_pem, confused.encode(), hashlib.sha256).digest()
    assert refused(real, keys, confused + "." + b64(mac)) == "algorithm"
    assert refused(real, keys, encode(header | {"alg": "PS256"}, claims) + "." + signature) == "algorithm"


def test_a_key_the_issuer_does_not_publish_is_refused(real: dict[str, Any], keys: SigningKeys) -> None:
    header, claims, signature = parts(real["token"])
    assert refused(real, keys, encode(header | {"kid": "someone-elses"}, claims) + "." + signature) == "key"
    assert refused(real, keys, encode({k: v for k, v in header.items() if k != "kid"}, claims) + "." + signature) == (
        "key"
    )


@pytest.mark.parametrize(
    ("overrides", "failed"),
    [
        ({"audience": "00000000-0000-0000-0000-000000000001"}, "audience"),
        ({"nonce": "another sign-in's nonce"}, "nonce"),
        ({"tenant_id": "11111111-1111-1111-1111-111111111111"}, "tenant"),
        ({"issuer": "https://login.microsoftonline.com/11111111-1111-1111-1111-111111111111/v2.0"}, "issuer"),
    ],
)
def test_a_token_for_another_app_sign_in_tenant_or_issuer_is_refused(
    real: dict[str, Any], keys: SigningKeys, overrides: dict[str, Any], failed: str
) -> None:
    assert refused(real, keys, **overrides) == failed


def test_a_lifetime_that_is_no_number_is_refused(real: dict[str, Any]) -> None:
    """Python's json reads NaN and Infinity, which compare false with everything: even a validly
    signed token must not become immortal through them (signed here by an issuer of our own)."""
    header, claims, _ = parts(real["token"])
    own = OwnIssuer()
    for raw in (b"NaN", b"Infinity", b'"2099-01-01"', b"true"):
        payload = json.dumps(claims | {"exp": "@"}).encode().replace(b'"@"', raw)
        assert refused(real, own, own.sign(header, payload)) == "format", raw
    check(real, own, own.sign(header, json.dumps(claims).encode()))  # the same token with a number passes


def test_lifetime_is_checked_with_two_minutes_of_skew(real: dict[str, Any]) -> None:
    """The genuine token's claims at times around now, signed by an issuer of our own."""
    header, claims, _ = parts(real["token"])
    own = OwnIssuer()
    now = int(datetime.now(UTC).timestamp())

    def signed(**times: int) -> str:
        return own.sign(header, json.dumps(claims | times).encode())

    check(real, own, signed(exp=now - 60))  # a slow clock here is tolerated…
    assert refused(real, own, signed(exp=now - 180)) == "expired"  # …an old token is not
    check(real, own, signed(nbf=now + 60, iat=now + 60))
    assert refused(real, own, signed(nbf=now + 180, iat=now + 180)) == "not_yet_valid"


@pytest.mark.parametrize(
    "garbage",
    ["", "abc", "a.b", "a.b.c.d", "e30.e30.e30", "eyJhbGciOiJSUzI1NiJ9.e30=.AAAA", "eyJ!bGciOiJSUzI1NiJ9.e30.AAAA"],
)
def test_malformed_tokens_are_refused(real: dict[str, Any], keys: SigningKeys, garbage: str) -> None:
    assert refused(real, keys, garbage or "x") in {"format", "algorithm"}


def test_only_rsa_signing_keys_of_2048_bits_or_more_are_used(real: dict[str, Any]) -> None:
    def entry(key: rsa.RSAPublicKey, kid: str, **extra: str) -> dict[str, str]:
        numbers = key.public_numbers()
        return {
            "kty": "RSA",
            "kid": kid,
            "n": b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64(numbers.e.to_bytes(3, "big")),
        } | extra

    strong = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    curve = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwks = {
        "keys": [
            entry(strong.public_key(), "good"),
            entry(weak.public_key(), "weak"),
            entry(strong.public_key(), "encryption", use="enc"),
            {"kty": "EC", "kid": "curve", "crv": "P-256", "x": b64(curve.public_numbers().x.to_bytes(32, "big"))},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        ]
    }
    _, claims, _ = parts(real["token"])

    def refusal(kid: str, key: rsa.RSAPrivateKey) -> str | None:
        signing_input = encode({"alg": "RS256", "typ": "JWT", "kid": kid}, claims)
        token = signing_input + "." + b64(key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()))
        try:
            check(real, KeySet(jwks), token)
        except IdTokenRejected as exc:
            return exc.check
        return None

    signers = {"good": strong, "weak": weak, "encryption": strong, "curve": strong, "broken": strong}
    refusals = {kid: refusal(kid, key) for kid, key in signers.items()}
    assert {kid for kid, refused_as in refusals.items() if refused_as is None} == {"good"}
    assert set(refusals.values()) == {None, "key"}
    with pytest.raises(UpstreamUnavailable, match="key set"):
        check(real, KeySet({"no": "keys"}), encode({"alg": "RS256", "kid": "good"}, claims) + ".AAAA")


def test_the_tenants_issuer_and_keys_are_fetched_once_then_again_only_for_an_unknown_kid(
    real: dict[str, Any], http: requests.Session, sandbox: SandboxThread, sandbox_control: SandboxControl
) -> None:
    """On the real clock, scaled down: a minute is a second here, a day two seconds."""
    refetch_after, ttl = 1.0, 2.0
    cache = OpenIdKeys(ttl=timedelta(seconds=ttl), refetch_after=timedelta(seconds=refetch_after))

    def fetch(url: str) -> Any:
        return http.get(url).json()

    metadata = cache.metadata(real["authority"], fetch)
    assert metadata.issuer == real["issuer"]
    assert metadata.jwks_uri == f"{real['authority']}/discovery/v2.0/keys"
    header, claims, signature = parts(real["token"])
    keys = cache.signing_keys(metadata.jwks_uri, ca_bundle=sandbox.ca_path)
    assert keys.get_signing_key(header["kid"]) is not None
    fetched = time.monotonic()
    for _ in range(3):
        assert cache.metadata(real["authority"], fetch) == metadata
        assert cache.signing_keys(metadata.jwks_uri, ca_bundle=sandbox.ca_path) is keys
        assert keys.get_signing_key(header["kid"]) is not None
    assert (sandbox_control.count("entra:openid-configuration"), sandbox_control.count("entra:keys")) == (1, 1)

    rolled_over = encode(header | {"kid": "rolled-over"}, claims) + "." + signature
    assert refused(real, keys, rolled_over) == "key"
    assert refused(real, keys, rolled_over) == "key"
    assert sandbox_control.count("entra:keys") == 1  # an unknown kid fetches again at most once a "minute"
    time.sleep(max(0.0, fetched + refetch_after + 0.05 - time.monotonic()))
    assert refused(real, keys, rolled_over) == "key"
    assert sandbox_control.count("entra:keys") == 2
    time.sleep(max(0.0, fetched + ttl + 0.05 - time.monotonic()))  # after a "day" everything is fetched again
    cache.metadata(real["authority"], fetch)
    assert sandbox_control.count("entra:openid-configuration") == 2


def test_keys_from_another_host_or_a_template_issuer_are_not_trusted(real: dict[str, Any]) -> None:
    cache = OpenIdKeys()
    documents = {
        "elsewhere": {"issuer": real["issuer"], "jwks_uri": "https://keys.example/discovery/v2.0/keys"},
        "template": {"issuer": "https://login.example/{tenantid}/v2.0", "jwks_uri": real["authority"] + "/keys"},
    }
    for document in documents.values():
        with pytest.raises(UpstreamUnavailable):
            cache.metadata(real["authority"], lambda _url, d=document: d)
