"""Deterministic CBOR (RFC 8949 §4.2) and the 0x-hex conventions used everywhere.

Everything Umbra hashes or signs is encoded here, so two nodes that hold equal values always
produce equal bytes. Decoding is strict where it matters for consensus: `decode_canonical`
refuses any encoding that would not round-trip byte for byte, which rules out malleable
transactions (two encodings of one tx with different hashes).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from typing import Any

import cbor2

__all__ = [
    "NOT_PLAIN",
    "CodecError",
    "decode",
    "decode_canonical",
    "decode_stored",
    "encode",
    "encode_array",
    "from_hex",
    "jsonable",
    "plain_copy",
    "sha256",
    "to_hex",
]

# Deep nesting is never legitimate in Umbra payloads and costs recursion on decode.
MAX_DEPTH = 64


class CodecError(ValueError):
    """Bytes or text that are not a valid encoding of an Umbra value."""


_ARRAY, _MAP = 0x80, 0xA0  # major types 4 and 5, in the initial byte


def _head(major: int, length: int) -> bytes:
    """The shortest head of an array or map of `length` items."""
    if length < 24:
        return bytes([major | length])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if length < 1 << (8 * size):
            return bytes([major | info]) + length.to_bytes(size, "big")
    raise CodecError("container too large")


def _encode_map(encoder: Any, value: dict[Any, Any]) -> None:
    """RFC 8949 §4.2.1: keys sorted by the bytewise order of their encodings.

    cbor2's `canonical` sorts length-first (RFC 7049), which agrees with bytewise order only when
    all keys share one major type (text, bytes or unsigned ints). Mixed keys are sorted here.
    """
    kinds = {type(key) for key in value}
    if len(kinds) <= 1 and (str in kinds or bytes in kinds or not kinds):
        encoder.encode_map(value)
        return
    items = sorted(((encode(key), item) for key, item in value.items()), key=lambda pair: pair[0])
    encoder.write(_head(_MAP, len(items)))
    for key_bytes, item in items:
        encoder.write(key_bytes)
        encoder.encode(item)


_SCALARS = frozenset((int, str, bytes, bool, float, type(None)))
_CONTAINERS = (dict, list, tuple)


def _length_first_is_bytewise(value: Any) -> bool:
    """True when no map in `value` mixes key types, so cbor2's fast canonical order is exact.

    It runs before every encode, so it walks with exact type tests and recurses only into
    containers. A subclass of dict, list or tuple answers False: the slower encoder is always right.
    """
    kind = type(value)
    if kind is dict:
        key_kind = None
        for key, item in value.items():
            if type(key) is not key_kind:
                if key_kind is not None or (type(key) is not str and type(key) is not bytes):
                    return False
                key_kind = type(key)
            if type(item) not in _SCALARS and not _length_first_is_bytewise(item):
                return False
        return True
    if kind is list or kind is tuple:
        # The element types first, in C: a long list of scalars (job ids, say) needs no walk.
        if len(value) > 16 and set(map(type, value)) <= _SCALARS:
            return True
        return all(type(item) in _SCALARS or _length_first_is_bytewise(item) for item in value)
    return kind in _SCALARS or not isinstance(value, _CONTAINERS)


_PLAIN_SCALARS = frozenset((int, bool, bytes, type(None)))  # exact types that decode as themselves
_KEY_ORDERS: dict[tuple[str, ...], tuple[str, ...]] = {}  # a map's keys -> their canonical order
_KEY_ORDERS_KEPT = 4096
NOT_PLAIN: Any = object()  # what `plain_copy` answers for a value it does not copy


def plain_copy(value: Any, *, nested: bool = True) -> Any:
    """`decode(encode(value))` made without CBOR, for the values most writes are: scalars, and maps
    of ASCII text keys to scalars (or, when `nested`, to such maps). NOT_PLAIN for anything else.

    Equal to the CBOR round trip in type and map order: exact types only, text only when ASCII (it
    always encodes), map keys in canonical order (by encoded length, then bytes). So plain cbor2,
    which writes maps in their own order, encodes the copy to the canonical bytes, and faster."""
    kind = type(value)
    if kind in _PLAIN_SCALARS or (kind is str and value.isascii()):
        return value
    if kind is not dict:
        return NOT_PLAIN
    keys = tuple(value)
    order = _KEY_ORDERS.get(keys)  # only maps of ASCII text keys have an order here
    if order is None:
        if not all(type(key) is str and key.isascii() for key in keys):
            return NOT_PLAIN
        order = tuple(sorted(keys, key=lambda key: (len(key), key)))
        if len(_KEY_ORDERS) < _KEY_ORDERS_KEPT:
            _KEY_ORDERS[keys] = order
    copy = {}
    for key in order:
        item = value[key]
        kind = type(item)
        if kind is dict and nested:
            item = plain_copy(item)
            if item is NOT_PLAIN:
                return NOT_PLAIN
        elif kind not in _PLAIN_SCALARS and not (kind is str and item.isascii()):
            return NOT_PLAIN
        copy[key] = item
    return copy


def encode(value: Any) -> bytes:
    """Deterministic CBOR: shortest forms, definite lengths, map keys sorted bytewise."""
    plain = plain_copy(value)
    if plain is not NOT_PLAIN:
        return cbor2.dumps(plain)  # every map in it already in canonical order
    try:
        if _length_first_is_bytewise(value):  # the common case, several times faster
            return cbor2.dumps(value, canonical=True)
        return cbor2.dumps(value, canonical=True, encoders={dict: _encode_map})
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise CodecError(f"value cannot be encoded as CBOR: {exc}") from None


def encode_array(encoded_items: Sequence[bytes]) -> bytes:
    """`encode(list_of_values)`, given each value's `encode(value)`: no value is encoded twice."""
    return _head(_ARRAY, len(encoded_items)) + b"".join(encoded_items)


def decode(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode one CBOR item that must span exactly `data`."""
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(
            stream, max_depth=max_depth, allow_indefinite=False, allow_duplicate_keys=False
        ).decode()
    except RecursionError:
        raise CodecError("CBOR nesting too deep") from None
    except Exception as exc:  # cbor2 raises a zoo of types on hostile input
        raise CodecError(f"malformed CBOR: {type(exc).__name__}: {exc}"[:300]) from None
    if stream.tell() != len(data):
        raise CodecError(f"{len(data) - stream.tell()} trailing bytes after the CBOR item")
    return value


def decode_stored(data: bytes) -> Any:
    """Decode a value this node encoded and stored itself (a state entry), skipping the check for
    trailing bytes: the store's state accumulator covers every stored byte, and a start-up check
    refuses a database whose values changed. Twice as fast as `decode`."""
    try:
        return cbor2.loads(data, max_depth=MAX_DEPTH, allow_indefinite=False, allow_duplicate_keys=False)
    except Exception as exc:  # cbor2 raises a zoo of types on hostile input
        raise CodecError(f"malformed CBOR: {type(exc).__name__}: {exc}"[:300]) from None


def decode_canonical(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode and insist that `data` is the deterministic encoding of what it decodes to."""
    value = decode(data, max_depth=max_depth)
    if encode(value) != bytes(data):
        raise CodecError("CBOR is not in deterministic encoding (RFC 8949 §4.2)")
    return value


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def to_hex(data: bytes) -> str:
    return "0x" + bytes(data).hex()


def from_hex(text: str, *, length: int | None = None, what: str = "value") -> bytes:
    """Parse 0x-hex (the 0x is optional). `length`, if given, is the required byte length."""
    if not isinstance(text, str):
        raise CodecError(f"{what} must be a 0x-hex string")
    body = text[2:] if text[:2] in ("0x", "0X") else text
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        raise CodecError(f"{what} is not valid hex") from None
    if length is not None and len(raw) != length:
        raise CodecError(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


def jsonable(value: Any) -> Any:
    """A CBOR value as JSON: bytes (also as map keys) become 0x-hex, tuples become lists."""
    if isinstance(value, bytes | bytearray):
        return to_hex(bytes(value))
    if isinstance(value, dict):
        return {
            (to_hex(k) if isinstance(k, bytes) else str(k) if not isinstance(k, str) else k): jsonable(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
