"""Sealed storage: secrets at rest under the platform's seal key, tampering detected."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from umbra.enclave.sealing import MemoryStore, SealedStorageError, SealedStore

KEY = bytes(range(32))
VALUE = {"identity_seed": b"\x01" * 32, "epochs": [0, 1], "note": "secret"}


def test_roundtrip_and_purposes(tmp_path: Path) -> None:
    store = SealedStore(tmp_path / "core", KEY)
    assert store.get("identity") is None
    store.put("identity", VALUE)
    store.put("master-0", {"secret": b"\x02" * 32})
    reopened = SealedStore(tmp_path / "core", KEY)
    assert reopened.get("identity") == VALUE
    assert reopened.purposes() == ["identity", "master-0"]
    reopened.delete("master-0")
    assert reopened.purposes() == ["identity"]


def test_files_hold_no_plaintext_and_are_private(tmp_path: Path) -> None:
    store = SealedStore(tmp_path / "core", KEY)
    store.put("identity", VALUE)
    path = tmp_path / "core" / "identity.sealed"
    data = path.read_bytes()
    assert b"secret" not in data and b"\x01" * 32 not in data
    assert data[0] == 1  # the format version byte
    assert path.stat().st_mode & 0o077 == 0
    assert [p.name for p in (tmp_path / "core").iterdir()] == ["identity.sealed"]  # no temp files left


@pytest.mark.parametrize("offset", [0, 1, 20, -1])
def test_a_flipped_byte_is_detected_and_reported(tmp_path: Path, offset: int) -> None:
    store = SealedStore(tmp_path / "core", KEY)
    store.put("identity", VALUE)
    path = tmp_path / "core" / "identity.sealed"
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(SealedStorageError) as caught:
        store.get("identity")
    message = str(caught.value)
    assert "identity.sealed" in message and "register again as a new identity" in message


def test_truncated_and_empty_files_are_detected(tmp_path: Path) -> None:
    store = SealedStore(tmp_path / "core", KEY)
    store.put("checkpoint", VALUE)
    path = tmp_path / "core" / "checkpoint.sealed"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(SealedStorageError):
        store.get("checkpoint")
    path.write_bytes(b"")
    with pytest.raises(SealedStorageError):
        store.get("checkpoint")


def test_another_key_or_another_purpose_does_not_open(tmp_path: Path) -> None:
    store = SealedStore(tmp_path / "core", KEY)
    store.put("master-0", VALUE)
    with pytest.raises(SealedStorageError):
        SealedStore(tmp_path / "core", bytes(32)).get("master-0")
    # A file renamed to another purpose: the per-purpose key and AAD refuse it.
    os.replace(tmp_path / "core" / "master-0.sealed", tmp_path / "core" / "master-1.sealed")
    with pytest.raises(SealedStorageError):
        store.get("master-1")


def test_quarantine_moves_everything_aside(tmp_path: Path) -> None:
    store = SealedStore(tmp_path / "core", KEY)
    store.put("identity", VALUE)
    moved = store.quarantine()
    assert (moved / "identity.sealed").exists()
    assert store.purposes() == [] and store.get("identity") is None


def test_purposes_are_checked() -> None:
    store = MemoryStore()
    with pytest.raises(ValueError):
        store.put("../escape", 1)
    store.put("identity", VALUE)
    assert store.get("identity") == VALUE and not store.persistent
