"""Envelope encryption for secrets at rest (AES-256-GCM, design §4).

Each secret gets its own random data key; the data key is wrapped by a master key whose id is
stored with it. Rotating master keys therefore re-wraps 60-byte data keys and never touches the
sealed payloads. Both layers authenticate the record's purpose and id as associated data, so a
sealed blob copied onto another record fails to open instead of leaking into the wrong tenant.

Keys from the embedded default's key file are re-read when the file changes (checked before
sealing, and whenever a blob names a key id the keyring does not have), so a running server
follows `calbroker keys rotate --generate` run next to it. Keys from CALBROKER_MASTER_KEYS are
fixed for the life of the process; the README gives the order of steps that keeps every replica
able to open every secret while they change.

Blob layout (version 1):
    b"cb1" | len(kid):u8 | kid | wrap_nonce:12 | wrapped_key:48 | nonce:12 | ciphertext+tag
"""

from __future__ import annotations

import os
import secrets
import stat
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from calbroker.config import ConfigError, MasterKey, Settings, parse_master_keys

__all__ = [
    "Keyring",
    "KeyringError",
    "SecretTampered",
    "UnknownKeyId",
    "add_key_to_file",
    "generate_master_key",
    "load_keyring",
]

_MAGIC = b"cb1"
_NONCE = 12
_WRAPPED = 32 + 16


class KeyringError(Exception):
    """A sealed secret cannot be opened; the message names the cause, never the secret."""


class UnknownKeyId(KeyringError):
    """The blob was wrapped by a master key that is not configured any more."""

    def __init__(self, kid: str) -> None:
        super().__init__(
            f"secret is sealed with master key {kid!r}, which is not configured; "
            f"add it back to CALBROKER_MASTER_KEYS (or the key file) and run `calbroker keys rotate`"
        )
        self.kid = kid


class SecretTampered(KeyringError):
    """Authentication failed: the blob was altered, truncated or belongs to another record."""


@dataclass(frozen=True, slots=True)
class _Parsed:
    kid: str
    wrap_nonce: bytes
    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes


def _parse(blob: bytes) -> _Parsed:
    if len(blob) < 4 or blob[:3] != _MAGIC:
        raise SecretTampered("sealed secret has an unknown format")
    kid_len = blob[3]
    head = 4 + kid_len
    if len(blob) < head + _NONCE + _WRAPPED + _NONCE + 16:
        raise SecretTampered("sealed secret is truncated")
    try:
        kid = blob[4:head].decode("ascii")
    except UnicodeDecodeError:
        raise SecretTampered("sealed secret has an unreadable key id") from None
    wrap_nonce = blob[head : head + _NONCE]
    wrapped = blob[head + _NONCE : head + _NONCE + _WRAPPED]
    body = blob[head + _NONCE + _WRAPPED :]
    return _Parsed(kid, wrap_nonce, wrapped, body[:_NONCE], body[_NONCE:])


def _aad(purpose: str, record_id: str) -> bytes:
    return f"calbroker:{purpose}:{record_id}".encode()


class Keyring:
    """Seals and opens secrets with the configured master keys (the first one seals).

    Built from a key file (`from_key_file`: the embedded default), it re-reads the file when it has
    changed: see `refresh`.
    """

    __slots__ = ("_by_kid", "_file", "_primary", "_stamp")

    def __init__(self, keys: tuple[MasterKey, ...]) -> None:
        self._file: Path | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._use(keys)

    @classmethod
    def from_key_file(cls, path: Path) -> Keyring:
        """The keys of `path`, followed as the file changes."""
        stamp = _stamp(path)  # before reading: a change in between is then seen by the next refresh
        keyring = cls(_read_key_file(path))
        keyring._file, keyring._stamp = path, stamp
        return keyring

    def _use(self, keys: tuple[MasterKey, ...]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one master key")
        self._primary = keys[0]
        self._by_kid = {key.kid: AESGCM(key.key) for key in keys}

    def __repr__(self) -> str:
        return f"Keyring(primary={self._primary.kid!r}, kids={sorted(self._by_kid)!r})"

    @property
    def primary_kid(self) -> str:
        return self._primary.kid

    @property
    def kids(self) -> tuple[str, ...]:
        """Every master key id, the sealing one first."""
        return (self._primary.kid, *(kid for kid in self._by_kid if kid != self._primary.kid))

    def refresh(self) -> bool:
        """Re-read the key file if it changed since it was read; True if the keys were replaced.

        Raises KeyringError when the changed file cannot be used (the keys in use stay).
        """
        if self._file is None:
            return False
        try:
            stamp = _stamp(self._file)
            if stamp == self._stamp:
                return False
            keys = _read_key_file(self._file)
        except (OSError, ConfigError) as exc:
            raise KeyringError(f"master key file {self._file} cannot be read: {exc}") from None
        self._use(keys)
        self._stamp = stamp
        return True

    def seal(self, plaintext: bytes, *, purpose: str, record_id: str) -> bytes:
        """Encrypt under a fresh data key bound to (purpose, record_id), with the newest primary key."""
        with suppress(KeyringError):  # an unreadable key file: keep sealing with the keys in use
            self.refresh()
        aad = _aad(purpose, record_id)
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE)
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, aad)
        return self._wrap(data_key, aad) + nonce + ciphertext

    def open(self, blob: bytes, *, purpose: str, record_id: str) -> bytes:
        """Decrypt, or raise UnknownKeyId / SecretTampered."""
        parsed = _parse(blob)
        aad = _aad(purpose, record_id)
        data_key = self._unwrap(parsed, aad)
        try:
            return AESGCM(data_key).decrypt(parsed.nonce, parsed.ciphertext, aad)
        except InvalidTag:
            raise SecretTampered("sealed secret failed authentication (tampered or misplaced)") from None

    def key_id(self, blob: bytes) -> str:
        """The master key id a blob is wrapped with, without decrypting it."""
        return _parse(blob).kid

    def rewrap(self, blob: bytes, *, purpose: str, record_id: str) -> bytes:
        """Re-wrap the data key under the primary master key; the payload is untouched."""
        parsed = _parse(blob)
        if parsed.kid == self._primary.kid:
            return blob
        aad = _aad(purpose, record_id)
        data_key = self._unwrap(parsed, aad)
        return self._wrap(data_key, aad) + parsed.nonce + parsed.ciphertext

    def _wrap(self, data_key: bytes, aad: bytes) -> bytes:
        kid = self._primary.kid.encode("ascii")
        wrap_nonce = os.urandom(_NONCE)
        wrapped = self._by_kid[self._primary.kid].encrypt(wrap_nonce, data_key, aad)
        return _MAGIC + bytes([len(kid)]) + kid + wrap_nonce + wrapped

    def _unwrap(self, parsed: _Parsed, aad: bytes) -> bytes:
        master = self._by_kid.get(parsed.kid)
        if master is None and self.refresh():
            master = self._by_kid.get(parsed.kid)
        if master is None:
            raise UnknownKeyId(parsed.kid)
        try:
            return master.decrypt(parsed.wrap_nonce, parsed.wrapped_key, aad)
        except InvalidTag:
            raise SecretTampered("sealed secret's data key failed authentication") from None


def generate_master_key(kid: str | None = None) -> str:
    """A new `kid:base64key` entry for CALBROKER_MASTER_KEYS or the key file.

    Raises ValueError for a kid that `parse_master_keys` would refuse at start-up.
    """
    import base64  # noqa: PLC0415 - only the CLI path generates keys

    key = MasterKey(kid or f"k{secrets.token_hex(4)}", os.urandom(32))
    return f"{key.kid}:{base64.b64encode(key.key).decode()}"


def _stamp(path: Path) -> tuple[int, int, int]:
    """What changes when the key file is rewritten (`add_key_to_file` replaces it: a new inode)."""
    info = path.stat()
    return info.st_ino, info.st_mtime_ns, info.st_size


def _read_key_file(path: Path) -> tuple[MasterKey, ...]:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(str(path), f"master key file is readable by others (mode {oct(mode & 0o777)}); run chmod 600")
    entries = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return parse_master_keys(",".join(entries), variable=str(path))


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process created it first; read theirs
    with os.fdopen(fd, "w") as handle:
        handle.write(generate_master_key("k1") + "\n")


def load_keyring(settings: Settings, *, create: bool = True) -> Keyring:
    """Keys from CALBROKER_MASTER_KEYS, else the embedded default's 0600 key file."""
    if settings.master_keys is not None:
        return Keyring(settings.master_keys)
    path = settings.master_key_file
    if not path.exists():
        if not create:
            raise ConfigError("CALBROKER_MASTER_KEYS", f"is unset and {path} does not exist")
        _create_key_file(path)
    return Keyring.from_key_file(path)


def add_key_to_file(settings: Settings) -> str:
    """Put a newly generated key first in the embedded key file; returns its kid."""
    if settings.master_keys is not None:
        raise ConfigError(
            "CALBROKER_MASTER_KEYS",
            "keys come from the environment: prepend a new entry there (see `calbroker keys generate`)",
        )
    path = settings.master_key_file
    existing = _read_key_file(path) if path.exists() else ()
    taken = {key.kid for key in existing}
    number = len(existing) + 1
    while f"k{number}" in taken:
        number += 1
    entry = generate_master_key(f"k{number}")
    lines = [entry] + [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else [entry]
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    tmp.replace(path)
    return f"k{number}"
