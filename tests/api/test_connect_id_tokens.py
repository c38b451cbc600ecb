"""The ID-token checks behind "consent, then sign in": real tokens from the sandbox's Entra, real
keys from its JWKS, and every way a token can be tampered with, replayed or stale.

A genuine ID token is obtained the way calbroker gets one (authorization code at the tenant,
redeemed with the operator app's secret); the forgeries are built from it with `cryptography`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from calbroker.domain.errors import UpstreamUnavailable
from calbroker.providers.graph.id_tokens import IdTokenRejected, OpenIdKeys, public_keys, verify_id_token
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
def keys(sandbox: SandboxThread, http: requests.Session) -> dict[str, rsa.RSAPublicKey]:
    jwks = http.get(f"{sandbox.authority_host}/common/discovery/v2.0/keys").json()
    return public_keys(jwks)


def check(real: dict[str, Any], keys: dict[str, rsa.RSAPublicKey], token: str | None = None, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "key_for": keys.get,
        "issuer": real["issuer"],
        "audience": real["client_id"],
        "nonce": NONCE,
        "tenant_id": real["tenant"],
        "now": datetime.now(UTC),
    } | overrides
    return verify_id_token(token or real["token"], **options)


def refused(real: dict[str, Any], keys: dict[str, rsa.RSAPublicKey], token: str | None = None, **overrides: Any) -> str:
    with pytest.raises(IdTokenRejected) as caught:
        check(real, keys, token, **overrides)
    return caught.value.check


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(payload)), signature


def encode(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())


def test_a_genuine_token_verifies(real: dict[str, Any], keys: dict[str, rsa.RSAPublicKey]) -> None:
    verified = check(real, keys)
    assert verified.tenant_id == real["tenant"]
    assert verified.username.startswith("admin@")
    assert verified.object_id
    assert verified.directory_roles is not None
    assert GLOBAL_ADMINISTRATOR in verified.directory_roles


def test_a_tampered_payload_breaks_the_signature(real: dict[str, Any], keys: dict[str, rsa.RSAPublicKey]) -> None:
    header, claims, signature = parts(real["token"])
    for change in ({"tid": "11111111-1111-1111-1111-111111111111"}, {"wids": [GLOBAL_ADMINISTRATOR]}, {"exp": 2**40}):
        forged = encode(header, claims | change) + "." + signature
        assert refused(real, keys, forged) == "signature"


def test_a_token_signed_with_another_key_under_the_same_kid_is_refused(
    real: dict[str, Any], keys: dict[str, rsa.RSAPublicKey]
) -> None:
    header, claims, _ = parts(real["token"])
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signing_input = encode(header, claims)
    signature = impostor.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    assert refused(real, keys, signing_input + "." + b64(signature)) == "signature"


def test_weaker_or_confused_algorithms_are_refused(real: dict[str, Any], keys: dict[str, rsa.RSAPublicKey]) -> None:
    header, claims, signature = parts(real["token"])
    unsigned = encode(header | {"alg": "none"}, claims)
    assert refused(real, keys, unsigned + ".") == "format"  # no signature at all
    assert refused(real, keys, unsigned + "." + signature) == "algorithm"
    # HS256 keyed with the issuer's public key (the classic RS/HS confusion): the key is public.
    public_pem = keys[header["kid"]].public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    confused = encode(header | {"alg": "HS256"}, claims)
    mac = hmac.new(public_pem, confused.encode(), hashlib.sha256).digest()
    assert refused(real, keys, confused + "." + b64(mac)) == "algorithm"
    assert refused(real, keys, encode(header | {"alg": "PS256"}, claims) + "." + signature) == "algorithm"


def test_a_key_the_issuer_does_not_publish_is_refused(real: dict[str, Any], keys: dict[str, rsa.RSAPublicKey]) -> None:
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
    real: dict[str, Any], keys: dict[str, rsa.RSAPublicKey], overrides: dict[str, Any], failed: str
) -> None:
    assert refused(real, keys, **overrides) == failed


def test_a_lifetime_that_is_no_number_is_refused(real: dict[str, Any]) -> None:
    """Python's json reads NaN and Infinity, which compare false with everything: even a validly
    signed token must not become immortal through them (signed here with a key of our own)."""
    header, claims, _ = parts(real["token"])
    own = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for raw in (b"NaN", b"Infinity", b'"2099-01-01"', b"true"):
        payload = json.dumps(claims | {"exp": "@"}).encode().replace(b'"@"', raw)
        signing_input = b64(json.dumps(header).encode()) + "." + b64(payload)
        signature = own.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        token = signing_input + "." + b64(signature)
        assert refused(real, {}, token, key_for=lambda _kid: own.public_key()) == "format", raw
    valid = encode(header, claims)
    token = valid + "." + b64(own.sign(valid.encode(), padding.PKCS1v15(), hashes.SHA256()))
    check(real, {}, token, key_for=lambda _kid: own.public_key())  # the same token with a number passes


def test_lifetime_is_checked_with_two_minutes_of_skew(real: dict[str, Any], keys: dict[str, rsa.RSAPublicKey]) -> None:
    _, claims, _ = parts(real["token"])
    expires = datetime.fromtimestamp(claims["exp"], UTC)
    issued = datetime.fromtimestamp(claims["nbf"], UTC)
    check(real, keys, now=expires + timedelta(seconds=60))  # a slow clock here is tolerated…
    assert refused(real, keys, now=expires + timedelta(minutes=3)) == "expired"  # …an old token is not
    check(real, keys, now=issued - timedelta(seconds=60))
    assert refused(real, keys, now=issued - timedelta(minutes=3)) == "not_yet_valid"


@pytest.mark.parametrize(
    "garbage",
    ["", "abc", "a.b", "a.b.c.d", "e30.e30.e30", "eyJhbGciOiJSUzI1NiJ9.e30=.AAAA", "eyJ!bGciOiJSUzI1NiJ9.e30.AAAA"],
)
def test_malformed_tokens_are_refused(real: dict[str, Any], keys: dict[str, rsa.RSAPublicKey], garbage: str) -> None:
    assert refused(real, keys, garbage or "x") in {"format", "algorithm"}


def test_only_rsa_signing_keys_of_2048_bits_or_more_are_used() -> None:
    def entry(key: rsa.RSAPublicKey, kid: str, **extra: str) -> dict[str, str]:
        numbers = key.public_numbers()
        return {
            "kty": "RSA",
            "kid": kid,
            "n": b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64(numbers.e.to_bytes(3, "big")),
        } | extra

    strong = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    curve = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwks = {
        "keys": [
            entry(strong, "good"),
            entry(weak, "weak"),
            entry(strong, "encryption", use="enc"),
            {"kty": "EC", "kid": "curve", "crv": "P-256", "x": b64(curve.public_numbers().x.to_bytes(32, "big"))},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        ]
    }
    assert set(public_keys(jwks)) == {"good"}
    with pytest.raises(ValueError, match="keys"):
        public_keys({"no": "keys"})


def test_the_tenants_issuer_and_keys_are_fetched_once_then_again_only_for_an_unknown_kid(
    real: dict[str, Any], http: requests.Session, sandbox_control: SandboxControl
) -> None:
    now = [0.0]
    cache = OpenIdKeys(refetch_after=timedelta(minutes=1), clock=lambda: now[0])

    def fetch(url: str) -> Any:
        return http.get(url).json()

    metadata = cache.metadata(real["authority"], fetch)
    assert metadata.issuer == real["issuer"]
    assert metadata.jwks_uri == f"{real['authority']}/discovery/v2.0/keys"
    kid = parts(real["token"])[0]["kid"]
    for _ in range(3):
        assert cache.metadata(real["authority"], fetch) == metadata
        assert cache.key(metadata.jwks_uri, kid, fetch) is not None
    assert (sandbox_control.count("entra:openid-configuration"), sandbox_control.count("entra:keys")) == (1, 1)

    assert cache.key(metadata.jwks_uri, "rolled-over", fetch) is None
    assert cache.key(metadata.jwks_uri, "rolled-over", fetch) is None
    assert sandbox_control.count("entra:keys") == 1  # an unknown kid fetches again at most once a minute
    now[0] += 61
    assert cache.key(metadata.jwks_uri, "rolled-over", fetch) is None
    assert sandbox_control.count("entra:keys") == 2
    now[0] += 25 * 3600  # after a day everything is fetched again
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
