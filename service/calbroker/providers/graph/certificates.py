"""Certificate credentials for an app registration, as admins export them (PEM with the key).

Checked before anything is saved: the key must match the certificate, and the certificate must be
valid now, so an admin learns about a wrong file on the form rather than at the first token request.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from calbroker.domain.connections import GraphCertificate
from calbroker.domain.errors import InvalidRequest

__all__ = ["certificate_credentials", "certificate_thumbprint"]


def certificate_thumbprint(certificate_pem: str) -> str:
    """SHA-1 thumbprint (hex, upper case), as the Entra portal shows it."""
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER), usedforsecurity=False).hexdigest().upper()


def certificate_credentials(
    tenant_id: str, client_id: str, pem: bytes, *, password: bytes | None = None, field: str = "certificate"
) -> tuple[GraphCertificate, datetime]:
    """Credentials from a PEM holding the private key and certificate; also returns its expiry."""
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError):
        raise InvalidRequest.field(
            field, "must be a PEM file containing the private key (unencrypted, or give its password)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise InvalidRequest.field(field, "the private key must be RSA (as Entra ID requires) or EC")
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise InvalidRequest.field(field, "must also contain the certificate (-----BEGIN CERTIFICATE-----)") from None
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    matching = [
        c
        for c in certs
        if c.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        == public
    ]
    if not matching:
        raise InvalidRequest.field(field, "the private key does not belong to any certificate in the file")
    cert = matching[0]
    now = datetime.now(UTC)
    if cert.not_valid_after_utc <= now:
        raise InvalidRequest.field(field, f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now:
        raise InvalidRequest.field(field, f"the certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d}")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return GraphCertificate(tenant_id, client_id, key_pem, cert_pem), cert.not_valid_after_utc
