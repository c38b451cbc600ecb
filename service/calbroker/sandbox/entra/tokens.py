"""JSON Web Tokens as Entra issues and checks them: RS256 (and PS256) over the sandbox's keys.

Access tokens are signed with the sandbox signing key (`kid` = base64url SHA-1 thumbprint, like
Entra's `x5t`/`kid`); client assertions are verified against the app's registered certificate
(https://learn.microsoft.com/entra/identity-platform/certificate-credentials).
"""

from __future__ import annotations

import base64
import json
from typing import Any, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = ["TokenError", "b64url_decode", "b64url_encode", "decode_unverified", "jwk", "sign", "verify"]


class TokenError(ValueError):
    """A JWT that cannot be decoded or whose signature does not verify."""


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise TokenError("invalid base64url") from exc


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size)


def sign(claims: dict[str, Any], key: rsa.RSAPrivateKey, header: dict[str, Any]) -> str:
    """A compact JWS; `header["alg"]` picks RS256 (default) or PS256."""
    full_header = {"typ": "JWT", "alg": "RS256", **header}
    signing_input = (
        b64url_encode(json.dumps(full_header, separators=(",", ":")).encode())
        + "."
        + b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    )
    if full_header["alg"] == "PS256":
        signature = key.sign(signing_input.encode(), _pss(), hashes.SHA256())
    else:
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url_encode(signature)


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """(header, claims, signing input, signature) without checking anything."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("a JWT has three dot-separated parts")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenError("JWT header or payload is not JSON") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("JWT header and payload must be JSON objects")
    return (
        cast(dict[str, Any], header),
        cast(dict[str, Any], claims),
        f"{parts[0]}.{parts[1]}".encode(),
        b64url_decode(parts[2]),
    )


def verify(token: str, public_key: rsa.RSAPublicKey) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of `token` if its RS256/PS256 signature verifies with `public_key`."""
    header, claims, signing_input, signature = decode_unverified(token)
    alg = header.get("alg")
    try:
        if alg == "RS256":
            public_key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "PS256":
            public_key.verify(signature, signing_input, _pss(), hashes.SHA256())
        else:
            raise TokenError(f"unsupported JWT alg {alg!r}")
    except InvalidSignature as exc:
        raise TokenError("JWT signature does not verify") from exc
    return header, claims


def load_public_key(pem: str) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, rsa.RSAPublicKey):
        raise TokenError("only RSA keys are supported")
    return key


def jwk(key: rsa.RSAPublicKey, kid: str, cert_der: bytes) -> dict[str, Any]:
    """A JWKS entry the way Entra publishes its keys (kty, use, kid, x5t, n, e, x5c)."""
    numbers = key.public_numbers()
    n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    return {
        "kty": "RSA",
        "use": "sig",
        "kid": kid,
        "x5t": kid,
        "n": b64url_encode(n),
        "e": b64url_encode(e),
        "x5c": [base64.b64encode(cert_der).decode()],
    }
