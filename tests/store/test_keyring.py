"""Envelope encryption: seal/open, rotation, old keys, tampering, missing keys, key files."""

from __future__ import annotations

import stat
from pathlib import Path

import asyncpg
import pytest

from calbroker.config import ConfigError, Settings
from calbroker.store.keyring import Keyring, SecretTampered, UnknownKeyId, add_key_to_file, load_keyring
from calbroker.store.secrets import read_secret, rewrap_all, store_secret
from tests.fixtures.database import new_master_key


def test_seal_then_open_round_trips_and_hides_plaintext() -> None:
    keyring = Keyring((new_master_key("a"),))
    blob = keyring.seal(b"client-secret-value", purpose="graph", record_id="r1")
    assert b"client-secret-value" not in blob
    assert keyring.key_id(blob) == "a"
    assert keyring.open(blob, purpose="graph", record_id="r1") == b"client-secret-value"


def test_each_seal_uses_a_fresh_data_key_and_nonce() -> None:
    keyring = Keyring((new_master_key(),))
    assert keyring.seal(b"same", purpose="p", record_id="r") != keyring.seal(b"same", purpose="p", record_id="r")


def test_blob_is_bound_to_its_record() -> None:
    keyring = Keyring((new_master_key(),))
    blob = keyring.seal(b"secret", purpose="graph", record_id="r1")
    with pytest.raises(SecretTampered):
        keyring.open(blob, purpose="graph", record_id="r2")
    with pytest.raises(SecretTampered):
        keyring.open(blob, purpose="ews", record_id="r1")


@pytest.mark.parametrize("position", [0, 10, -1, -20])
def test_tampered_ciphertext_is_rejected(position: int) -> None:
    keyring = Keyring((new_master_key("k1"),))
    blob = bytearray(keyring.seal(b"secret", purpose="p", record_id="r"))
    blob[position] ^= 0x01
    with pytest.raises((SecretTampered, UnknownKeyId)):
        keyring.open(bytes(blob), purpose="p", record_id="r")


def test_truncated_blob_is_rejected() -> None:
    keyring = Keyring((new_master_key(),))
    blob = keyring.seal(b"secret", purpose="p", record_id="r")
    with pytest.raises(SecretTampered):
        keyring.open(blob[:30], purpose="p", record_id="r")


def test_old_key_still_listed_decrypts_and_new_key_seals() -> None:
    old, new = new_master_key("old"), new_master_key("new")
    blob = Keyring((old,)).seal(b"secret", purpose="p", record_id="r")
    both = Keyring((new, old))
    assert both.open(blob, purpose="p", record_id="r") == b"secret"
    assert both.key_id(both.seal(b"x", purpose="p", record_id="r")) == "new"


def test_missing_key_is_a_clear_error_naming_the_key_id() -> None:
    blob = Keyring((new_master_key("gone"),)).seal(b"secret", purpose="p", record_id="r")
    with pytest.raises(UnknownKeyId) as raised:
        Keyring((new_master_key("other"),)).open(blob, purpose="p", record_id="r")
    assert "'gone'" in str(raised.value)
    assert "CALBROKER_MASTER_KEYS" in str(raised.value)


def test_rewrap_changes_only_the_wrapping() -> None:
    old, new = new_master_key("old"), new_master_key("new")
    blob = Keyring((old,)).seal(b"secret", purpose="p", record_id="r")
    rewrapped = Keyring((new, old)).rewrap(blob, purpose="p", record_id="r")
    assert Keyring((new,)).open(rewrapped, purpose="p", record_id="r") == b"secret"
    payload = 12 + len(b"secret") + 16  # nonce, ciphertext, tag
    assert blob[-payload:] == rewrapped[-payload:]  # the sealed payload is untouched
    assert blob[:-payload] != rewrapped[:-payload]


def test_repr_never_shows_key_material() -> None:
    key = new_master_key("k1")
    assert key.key.hex() not in repr(key)
    assert "redacted" in repr(key)


async def test_rotate_rewraps_every_stored_secret(pool: asyncpg.Pool) -> None:
    old, new = new_master_key("r-old"), new_master_key("r-new")
    before = Keyring((old,))
    async with pool.acquire() as conn:
        ids = [await store_secret(conn, before, purpose="test", plaintext=f"s{i}".encode()) for i in range(5)]
    after = Keyring((new, old))
    assert await rewrap_all(pool, after, batch=2) == 5
    assert await rewrap_all(pool, after) == 0  # idempotent
    only_new = Keyring((new,))
    async with pool.acquire() as conn:
        for i, secret_id in enumerate(ids):
            assert await read_secret(conn, only_new, secret_id, purpose="test") == f"s{i}".encode()
        kids = await conn.fetch("SELECT DISTINCT key_id FROM sealed_secrets WHERE id = ANY($1)", ids)
    assert [row["key_id"] for row in kids] == ["r-new"]


def test_embedded_key_file_is_created_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    keyring = load_keyring(settings)
    mode = stat.S_IMODE(settings.master_key_file.stat().st_mode)
    assert mode == 0o600
    assert load_keyring(settings).primary_kid == keyring.primary_kid  # reused, not regenerated


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    load_keyring(settings)
    settings.master_key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_keyring(settings)


def test_generated_key_becomes_primary_and_old_still_opens(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = load_keyring(settings)
    blob = first.seal(b"secret", purpose="p", record_id="r")
    kid = add_key_to_file(settings)
    second = load_keyring(settings)
    assert second.primary_kid == kid != first.primary_kid
    assert second.open(blob, purpose="p", record_id="r") == b"secret"
    assert stat.S_IMODE(settings.master_key_file.stat().st_mode) == 0o600
