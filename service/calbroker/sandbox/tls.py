"""Key material: the sandbox CA and server certificate, the token-signing key and the app certificate.

msal refuses non-https authorities, so the sandbox serves HTTPS with a CA it generates and writes
to `state_dir` (clients trust it through `verify=`/an ssl context). Keys are reused from `state_dir`
when present, so a long-running demo keeps the CA an operator already trusts.
"""

from __future__ import annotations

import base64
import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from calbroker.sandbox.directory import AppCertificate, stable_id

__all__ = ["KeyMaterial", "load_key_material"]

_VALIDITY = timedelta(days=3650)


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """Everything the sandbox signs or serves with, and the files clients need."""

    ca_path: Path
    server_cert_path: Path
    server_key_path: Path
    signing_key: rsa.RSAPrivateKey
    signing_kid: str
    signing_cert_der: bytes
    app_certificate: AppCertificate

    def server_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert_path, self.server_key_path)
        return context

    def client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context that trusts the sandbox CA (and the system roots, for outbound webhooks)."""
        context = ssl.create_default_context()
        context.load_verify_locations(cafile=str(self.ca_path))
        return context


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(key, rsa.RSAPrivateKey):
            return key
    key = _new_key()
    path.write_bytes(_pem_key(key))
    path.chmod(0o600)
    return key


def _certificate(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: x509.Name | None = None,
    issuer_key: rsa.RSAPrivateKey | None = None,
    *,
    ca: bool = False,
    hosts: tuple[str, ...] = (),
) -> x509.Certificate:
    now = datetime.now(UTC) - timedelta(days=1)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        if issuer_key is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
    return builder.sign(issuer_key or key, hashes.SHA256())


def _load_or_create_certificate(
    path: Path, key: rsa.RSAPrivateKey, create: Callable[[], x509.Certificate]
) -> x509.Certificate:
    """The certificate in `path` if it is for `key`; else a new one from `create`, written there."""
    if path.exists():
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        if cert.public_key() == key.public_key():
            return cert
    cert = create()
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def _server_cert_covers(path: Path, hosts: tuple[str, ...], ca: x509.Certificate) -> bool:
    if not path.exists():
        return False
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    if cert.issuer != ca.subject or cert.not_valid_after_utc < datetime.now(UTC) + timedelta(days=1):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
    return set(hosts) <= present


def _thumbprints(cert: x509.Certificate) -> tuple[str, str]:
    return cert.fingerprint(hashes.SHA1()).hex().upper(), cert.fingerprint(hashes.SHA256()).hex().upper()  # noqa: S303  # x5t is SHA-1 by definition


def load_key_material(state_dir: Path, host: str) -> KeyMaterial:
    """Create (or reuse) the CA, the server certificate for `host`, the signing key, the app certificate."""
    state_dir.mkdir(parents=True, exist_ok=True)
    ca_key = _load_or_create_key(state_dir / "ca-key.pem")
    ca_path = state_dir / "ca.pem"
    ca_cert = _load_or_create_certificate(
        ca_path, ca_key, lambda: _certificate("calbroker sandbox CA", ca_key, ca=True)
    )

    hosts = tuple(dict.fromkeys((host, "127.0.0.1", "localhost", "::1")))
    server_key_path = state_dir / "server-key.pem"
    server_cert_path = state_dir / "server.pem"
    server_key = _load_or_create_key(server_key_path)
    if not _server_cert_covers(server_cert_path, hosts, ca_cert):
        cert = _certificate("calbroker sandbox", server_key, ca_cert.subject, ca_key, hosts=hosts)
        server_cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    signing_key = _load_or_create_key(state_dir / "token-signing-key.pem")
    signing_cert = _load_or_create_certificate(
        state_dir / "token-signing.pem", signing_key, lambda: _certificate("sandbox token signing", signing_key)
    )
    sha1, _ = _thumbprints(signing_cert)
    kid = base64.urlsafe_b64encode(bytes.fromhex(sha1)).decode().rstrip("=")

    app_key = _load_or_create_key(state_dir / "contoso-app-key.pem")
    app_cert = _load_or_create_certificate(
        state_dir / "contoso-app.pem", app_key, lambda: _certificate("contoso-scheduling", app_key)
    )
    app_sha1, app_sha256 = _thumbprints(app_cert)
    certificate = AppCertificate(
        key_id=stable_id("certificate", "contoso-certificate"),
        thumbprint_sha1=app_sha1,
        thumbprint_sha256=app_sha256,
        certificate_pem=app_cert.public_bytes(serialization.Encoding.PEM).decode(),
        private_key_pem=_pem_key(app_key).decode(),
        public_key_pem=app_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
        expires=app_cert.not_valid_after_utc,
    )
    return KeyMaterial(
        ca_path=ca_path,
        server_cert_path=server_cert_path,
        server_key_path=server_key_path,
        signing_key=signing_key,
        signing_kid=kid,
        signing_cert_der=signing_cert.public_bytes(serialization.Encoding.DER),
        app_certificate=certificate,
    )
