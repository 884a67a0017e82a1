"""Deterministic CBOR (RFC 8949 §4.2) and the 0x-hex conventions used everywhere.

Everything Umbra hashes or signs is encoded here, so two nodes that hold equal values always
produce equal bytes. Decoding is strict where it matters for consensus: `decode_canonical`
refuses any encoding that would not round-trip byte for byte, which rules out malleable
transactions (two encodings of one tx with different hashes).
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import cbor2

__all__ = [
    "CodecError",
    "decode",
    "decode_canonical",
    "encode",
    "from_hex",
    "jsonable",
    "sha256",
    "to_hex",
]

# Deep nesting is never legitimate in Umbra payloads and costs recursion on decode.
MAX_DEPTH = 64


class CodecError(ValueError):
    """Bytes or text that are not a valid encoding of an Umbra value."""


def _map_header(length: int) -> bytes:
    if length < 24:
        return bytes([0xA0 | length])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if length < 1 << (8 * size):
            return bytes([0xA0 | info]) + length.to_bytes(size, "big")
    raise CodecError("map too large")


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
    encoder.write(_map_header(len(items)))
    for key_bytes, item in items:
        encoder.write(key_bytes)
        encoder.encode(item)


def _length_first_is_bytewise(value: Any) -> bool:
    """True when no map in `value` mixes key types, so cbor2's fast canonical order is exact."""
    if isinstance(value, dict):
        kind = None
        for key, item in value.items():
            if kind is None:
                kind = type(key)
                if kind not in (str, bytes):
                    return False
            elif type(key) is not kind:
                return False
            if isinstance(item, dict | list | tuple) and not _length_first_is_bytewise(item):
                return False
        return True
    if isinstance(value, list | tuple):
        # The element types first, in C: a long list of scalars (job ids, say) needs no walk.
        if not any(issubclass(kind, dict | list | tuple) for kind in set(map(type, value))):
            return True
        return all(_length_first_is_bytewise(item) for item in value if isinstance(item, dict | list | tuple))
    return True


def encode(value: Any) -> bytes:
    """Deterministic CBOR: shortest forms, definite lengths, map keys sorted bytewise."""
    try:
        if _length_first_is_bytewise(value):  # the common case, several times faster
            return cbor2.dumps(value, canonical=True)
        return cbor2.dumps(value, canonical=True, encoders={dict: _encode_map})
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise CodecError(f"value cannot be encoded as CBOR: {exc}") from None


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
