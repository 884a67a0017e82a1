"""Key-value state with a root that costs O(writes) to update.

The state root is a homomorphic multiset hash (AdHash, Bellare–Micciancio) over all entries:

    acc  = Σ H(key, value)  mod 2^8192        H = SHAKE-256 with a 1,024-byte output
    root = SHA-256("umbra/state-root/v1" || acc)

Adding an entry adds its hash and removing one subtracts it, so a block's root update costs two
hashes per changed key, whatever the total size of the state. Equal states give equal roots in
any order of writes, and a change of any entry changes the root. With an 8,192-bit modulus the
best known attack on AdHash (Wagner's generalized birthday) costs about 2^180 operations.

`State` is an overlay journal over a read-only `StateBackend` (SQLite, or a dict in tests):
`checkpoint()` / `rollback()` / `discard()` make each tx atomic, and `changes()` yields the
block's net writes for the store to commit in one transaction. No I/O happens here.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from umbra import codec

__all__ = ["MemoryBackend", "State", "StateBackend", "StateRoot", "entry_hash"]

_ACC_BYTES = 1024
_ACC_MASK = (1 << (8 * _ACC_BYTES)) - 1
_ENTRY_TAG = b"umbra/state-entry/v1"
_ROOT_TAG = b"umbra/state-root/v1"


# Most entries a block writes are overwritten by the next block (busy accounts, nonces): the old
# value's hash, needed to subtract it, then comes from here instead of another SHAKE-256 of 1 KiB.
@functools.lru_cache(maxsize=4096)
def entry_hash(key: bytes, value: bytes) -> int:
    h = hashlib.shake_256(_ENTRY_TAG)
    h.update(len(key).to_bytes(4, "big"))
    h.update(key)
    h.update(value)
    return int.from_bytes(h.digest(_ACC_BYTES), "big")


class StateRoot:
    """The AdHash accumulator. Serialises to 1,024 bytes for the store."""

    __slots__ = ("_acc",)

    def __init__(self, acc: int = 0) -> None:
        self._acc = acc & _ACC_MASK

    @classmethod
    def from_bytes(cls, data: bytes) -> StateRoot:
        if len(data) != _ACC_BYTES:
            raise ValueError("state accumulator must be 1024 bytes")
        return cls(int.from_bytes(data, "big"))

    def to_bytes(self) -> bytes:
        return self._acc.to_bytes(_ACC_BYTES, "big")

    def copy(self) -> StateRoot:
        return StateRoot(self._acc)

    def apply(self, key: bytes, old: bytes | None, new: bytes | None) -> None:
        if old is not None:
            self._acc = (self._acc - entry_hash(key, old)) & _ACC_MASK
        if new is not None:
            self._acc = (self._acc + entry_hash(key, new)) & _ACC_MASK

    def digest(self) -> bytes:
        return hashlib.sha256(_ROOT_TAG + self.to_bytes()).digest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StateRoot) and other._acc == self._acc

    def __hash__(self) -> int:
        return hash(self._acc)


class StateBackend(Protocol):
    """Committed state, read-only to the runtime."""

    def get(self, key: bytes) -> bytes | None: ...

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Entries whose key starts with `prefix`, in ascending key order."""
        ...


class MemoryBackend:
    """A dict-backed backend for tests, replays and genesis."""

    def __init__(self, data: Mapping[bytes, bytes] | None = None) -> None:
        self.data: dict[bytes, bytes] = dict(data or {})

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key in sorted(k for k in self.data if k.startswith(prefix)):
            yield key, self.data[key]

    def apply(self, changes: Mapping[bytes, bytes | None]) -> None:
        for key, value in changes.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value


_DELETED = None


class _Value:
    """A typed write: kept as a plain copy and encoded only when the bytes are needed (the block's
    net changes, a raw read), so a value rewritten many times in a block is encoded once."""

    __slots__ = ("_raw", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self._raw: bytes | None = None

    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = codec.encode(self.value)
        return self._raw

    def copy(self) -> Any:
        return dict(self.value) if type(self.value) is dict else self.value


_Entry = bytes | _Value | None


class State:
    """A write journal over a backend. Reads see the newest write; deletes are `None` entries."""

    def __init__(self, backend: StateBackend) -> None:
        self._backend = backend
        self._layers: list[dict[bytes, _Entry]] = [{}]
        self._read_cache: dict[bytes, bytes | None] = {}  # backend reads; the backend is fixed for our life
        # Decoded values derived from state that stay fixed for this view's life (chain parameters:
        # a change made in a block takes effect from the next block).
        self.memo: dict[str, Any] = {}

    # ---- reads -------------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        for layer in reversed(self._layers):
            if key in layer:
                entry = layer[key]
                return entry.raw() if isinstance(entry, _Value) else entry
        return self._committed(key)

    def get_value(self, key: bytes, default: Any = None) -> Any:
        """The decoded value under `key` (a fresh object the caller may change), or `default`."""
        for layer in reversed(self._layers):
            if key in layer:
                entry = layer[key]
                if isinstance(entry, _Value):
                    return entry.copy()
                return default if entry is None else codec.decode_stored(entry)
        raw = self._committed(key)
        return default if raw is None else codec.decode_stored(raw)

    def _committed(self, key: bytes) -> bytes | None:
        try:
            return self._read_cache[key]
        except KeyError:
            value = self._read_cache[key] = self._backend.get(key)
            return value

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Merged, key-ordered view of backend and journal under `prefix`."""
        pending: dict[bytes, _Entry] = {}
        for layer in self._layers:
            for key, entry in layer.items():
                if key.startswith(prefix):
                    pending[key] = entry
        merged: dict[bytes, _Entry] = dict(self._backend.iter_prefix(prefix))
        merged.update(pending)
        for key in sorted(merged):
            entry = merged[key]
            if entry is not None:
                yield key, entry.raw() if isinstance(entry, _Value) else entry

    # ---- writes ------------------------------------------------------------------------------
    def set(self, key: bytes, value: bytes) -> None:
        self._layers[-1][key] = value

    def set_value(self, key: bytes, value: Any) -> None:
        """Write `value`, to be CBOR-encoded; later changes to the caller's object do not count."""
        copy = codec.plain_copy(value, nested=False)  # flat: `_Value.copy` copies one level
        self._layers[-1][key] = codec.encode(value) if copy is codec.NOT_PLAIN else _Value(copy)

    def delete(self, key: bytes) -> None:
        self._layers[-1][key] = _DELETED

    # ---- atomicity ---------------------------------------------------------------------------
    def checkpoint(self) -> None:
        self._layers.append({})

    def rollback(self) -> None:
        """Drop every write since the last checkpoint."""
        if len(self._layers) == 1:
            raise RuntimeError("rollback without checkpoint")
        self._layers.pop()

    def discard(self) -> None:
        """Keep the writes since the last checkpoint, merging them into the layer below."""
        if len(self._layers) == 1:
            raise RuntimeError("discard without checkpoint")
        top = self._layers.pop()
        self._layers[-1].update(top)

    # ---- block end ---------------------------------------------------------------------------
    def changes(self) -> dict[bytes, bytes | None]:
        """The net writes of this journal against the backend (unchanged values dropped)."""
        if len(self._layers) != 1:
            raise RuntimeError("changes() with open checkpoints")
        net: dict[bytes, bytes | None] = {}
        for key, entry in self._layers[0].items():
            value = entry.raw() if isinstance(entry, _Value) else entry
            if self._committed(key) != value:
                net[key] = value
        return net

    def updated_root(self, root: StateRoot, changes: Mapping[bytes, bytes | None]) -> StateRoot:
        """`root` advanced by `changes` (which must be this journal's `changes()`)."""
        new = root.copy()
        for key in sorted(changes):
            new.apply(key, self._committed(key), changes[key])
        return new
