"""Sealed storage: the core's secrets at rest, encrypted under the platform's seal key.

    store = SealedStore(directory, platform.seal_key())
    store.put("identity", value)                # value: anything CBOR encodes
    value = store.get("identity")               # None if absent; SealedStorageError if tampered

Each purpose is one file `<purpose>.sealed` = version byte || AEAD blob, with a key derived per
purpose from the seal key and associated data naming the purpose, so a file renamed to another
purpose does not open either. Files are written atomically (temp file, fsync, rename): a crash
leaves the old version or the new one, never a torn file. A platform without a seal key gets a
`MemoryStore`: the same interface, nothing on disk.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, Protocol

from umbra import codec, crypto

__all__ = ["MemoryStore", "SealedStorageError", "SealedStore", "Store"]

_FORMAT_VERSION = 1
_PURPOSE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class SealedStorageError(Exception):
    """A sealed file that does not open: tampered, truncated, or sealed by another machine or code."""

    def __init__(self, purpose: str, path: Path, reason: str) -> None:
        super().__init__(
            f"sealed file {path} ({purpose}) does not open: {reason}. It was tampered with, damaged, or "
            "sealed by another machine or another code version. The worker can register again as a new "
            "identity (it then receives the keys again)."
        )
        self.purpose = purpose
        self.path = path


class Store(Protocol):
    def get(self, purpose: str) -> Any: ...
    def put(self, purpose: str, value: Any) -> None: ...
    def delete(self, purpose: str) -> None: ...
    def purposes(self) -> list[str]: ...

    @property
    def persistent(self) -> bool: ...


def _check_purpose(purpose: str) -> str:
    if not _PURPOSE.match(purpose):
        raise ValueError(f"bad sealed-storage purpose {purpose!r}")
    return purpose


def _aad(purpose: str) -> bytes:
    return codec.encode({"kind": "umbra/sealed/v1", "purpose": purpose})


class SealedStore:
    """Files under `directory`, each sealed with a per-purpose key derived from `seal_key`."""

    def __init__(self, directory: Path, seal_key: bytes) -> None:
        if len(seal_key) != 32:
            raise ValueError("a seal key is 32 bytes")
        self._dir = directory
        self._seal_key = seal_key
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def persistent(self) -> bool:
        return True

    @property
    def directory(self) -> Path:
        return self._dir

    def _key(self, purpose: str) -> crypto.AeadKey:
        return crypto.AeadKey(crypto.derive_key(self._seal_key, "umbra/sealed-storage", purpose.encode()))

    def _path(self, purpose: str) -> Path:
        return self._dir / f"{_check_purpose(purpose)}.sealed"

    def get(self, purpose: str) -> Any:
        path = self._path(purpose)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if not data or data[0] != _FORMAT_VERSION:
            raise SealedStorageError(purpose, path, "unknown format version or empty file")
        try:
            plaintext = self._key(purpose).open(data[1:], _aad(purpose))
        except crypto.DecryptError as exc:
            raise SealedStorageError(purpose, path, str(exc)) from None
        try:
            return codec.decode(plaintext)
        except codec.CodecError as exc:
            raise SealedStorageError(purpose, path, f"content does not decode: {exc}") from None

    def put(self, purpose: str, value: Any) -> None:
        path = self._path(purpose)
        blob = bytes([_FORMAT_VERSION]) + self._key(purpose).seal(codec.encode(value), _aad(purpose))
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(blob)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(self._dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def delete(self, purpose: str) -> None:
        self._path(purpose).unlink(missing_ok=True)

    def purposes(self) -> list[str]:
        return sorted(p.name.removesuffix(".sealed") for p in self._dir.glob("*.sealed"))

    def quarantine(self) -> Path:
        """Move every sealed file aside (kept for forensics) so the core can start afresh."""
        target = self._dir.with_name(f"{self._dir.name}.unopenable-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(self._dir, target)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return target


class MemoryStore:
    """For TEEs without a seal key: secrets live as long as the core process, and no longer."""

    def __init__(self) -> None:
        self._values: dict[str, bytes] = {}

    @property
    def persistent(self) -> bool:
        return False

    def get(self, purpose: str) -> Any:
        raw = self._values.get(_check_purpose(purpose))
        return None if raw is None else codec.decode(raw)

    def put(self, purpose: str, value: Any) -> None:
        self._values[_check_purpose(purpose)] = codec.encode(value)

    def delete(self, purpose: str) -> None:
        self._values.pop(purpose, None)

    def purposes(self) -> list[str]:
        return sorted(self._values)
