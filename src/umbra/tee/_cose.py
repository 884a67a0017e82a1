"""The slice of COSE (RFC 9052/9053) that attestation tokens use, on top of cbor2 and cryptography.

COSE_Sign1 with ES256/ES384/ES512 over EC2 keys, and COSE_Mac0 with HMAC-SHA2. The algorithm is
read from the protected header only and must fit the key: an algorithm in the unauthenticated
bucket, or a critical header (none is understood here), is refused rather than ignored.

Decoding parses by structure length: the first CBOR item is read and any bytes after it are
ignored. Every malformation surfaces as `AttestationError(Step.PARSE)` naming what was being read;
a failed signature or MAC as `Step.SIGNATURE`. Key readers raise `KeyFormatError` instead, because
only the caller knows whether an unreadable key is bad evidence or a bad trust anchor.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeGuard, TypeVar

import cbor2
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from umbra.tee._model import AttestationError, Step

__all__ = [
    "TAG_MAC0",
    "TAG_SIGN1",
    "ClaimMap",
    "CoseMessage",
    "KeyFormatError",
    "decode_cbor",
    "load_public_key",
    "parse_message",
    "public_key_from_cose_key",
    "public_key_from_jwk",
    "public_key_from_point",
    "verify_mac",
    "verify_signature",
]

TAG_MAC0: Final = 17
TAG_SIGN1: Final = 18
_HEADER_ALG: Final = 1
_HEADER_CRIT: Final = 2
# Evidence nests a few levels at most; the bound keeps hostile nesting cheap to refuse.
_MAX_CBOR_DEPTH: Final = 16

_T = TypeVar("_T")


@dataclass(frozen=True)
class _Ecdsa:
    name: str
    hash: hashes.HashAlgorithm
    curve: type[ec.EllipticCurve]


@dataclass(frozen=True)
class _Hmac:
    name: str
    digest: str


# RFC 9053 algorithm identifiers. ECDSA is bound to the curve of matching strength (its SHOULD
# made a MUST), so a token cannot pair a strong-looking algorithm with a weaker key.
_ECDSA: Final[Mapping[int, _Ecdsa]] = {
    -7: _Ecdsa("ES256", hashes.SHA256(), ec.SECP256R1),
    -35: _Ecdsa("ES384", hashes.SHA384(), ec.SECP384R1),
    -36: _Ecdsa("ES512", hashes.SHA512(), ec.SECP521R1),
}
_HMAC: Final[Mapping[int, _Hmac]] = {
    5: _Hmac("HMAC 256/256", "sha256"),
    6: _Hmac("HMAC 384/384", "sha384"),
    7: _Hmac("HMAC 512/512", "sha512"),
}
_JWK_CURVES: Final[Mapping[str, type[ec.EllipticCurve]]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}
_COSE_CURVES: Final[Mapping[int, type[ec.EllipticCurve]]] = {
    1: ec.SECP256R1,
    2: ec.SECP384R1,
    3: ec.SECP521R1,
}
_POINT_CURVES: Final[Mapping[int, ec.EllipticCurve]] = {
    1 + 2 * ((curve.key_size + 7) // 8): curve for curve in (ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1())
}
_COSE_KEY_KTY: Final = 1
_COSE_KTY_EC2: Final = 2
_COSE_EC2_CRV: Final = -1
_COSE_EC2_X: Final = -2
_COSE_EC2_Y: Final = -3


class KeyFormatError(ValueError):
    """A public key that cannot be read or is not an EC key on a supported curve."""


def decode_cbor(data: bytes, what: str) -> Any:
    """The first CBOR item in `data`. Trailing bytes are ignored; duplicate map keys are refused."""
    if not data:
        raise AttestationError(Step.PARSE, f"{what} is empty")
    decoder = cbor2.CBORDecoder(io.BytesIO(data), max_depth=_MAX_CBOR_DEPTH, allow_duplicate_keys=False)
    try:
        return decoder.decode()
    except cbor2.CBORError as exc:
        raise AttestationError(Step.PARSE, f"{what} is not well-formed CBOR: {exc}") from None


class ClaimMap:
    """A CBOR map read with typed accessors; every missing or mistyped entry refuses at PARSE."""

    def __init__(self, item: object, what: str) -> None:
        if not isinstance(item, Mapping):
            raise AttestationError(Step.PARSE, f"{what} is a CBOR {_kind(item)}, expected a map")
        self._items: Mapping[Any, Any] = item
        self.what = what

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def get(self, key: object, kind: type[_T], name: str) -> _T | None:
        """The entry under `key` if present and not null, which must be a `kind`."""
        value = self._items.get(key)
        if value is None:
            return None
        # bool is an int subclass in Python but a distinct CBOR type
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise AttestationError(
                Step.PARSE, f"{self.what}: {name} is a CBOR {_kind(value)}, expected {_kind_name(kind)}"
            )
        return value

    def require(self, key: object, kind: type[_T], name: str) -> _T:
        value = self.get(key, kind, name)
        if value is None:
            raise AttestationError(Step.PARSE, f"{self.what} lacks the {name} claim")
        return value

    def array(self, key: object, name: str) -> Sequence[Any] | None:
        value = self._items.get(key)
        if value is None:
            return None
        if not _is_array(value):
            raise AttestationError(
                Step.PARSE, f"{self.what}: {name} is a CBOR {_kind(value)}, expected an array"
            )
        return value

    def map(self, key: object, name: str) -> ClaimMap | None:
        value = self._items.get(key)
        return None if value is None else ClaimMap(value, f"{self.what}: {name}")


@dataclass(frozen=True)
class CoseMessage:
    """A COSE_Sign1 or COSE_Mac0, reduced to what verification needs."""

    mac: bool
    alg: int
    protected: bytes  # the serialized protected header, exactly as signed
    payload: bytes
    proof: bytes  # the signature (r || s) or the MAC tag

    @property
    def alg_name(self) -> str:
        return _HMAC[self.alg].name if self.mac else _ECDSA[self.alg].name


def parse_message(item: object, what: str, *, allow_mac: bool = False) -> CoseMessage:
    """Read a decoded COSE_Sign1 (tag 18 or untagged) or, if `allow_mac`, COSE_Mac0 (tag 17)."""
    tag: int | None = None
    if isinstance(item, cbor2.CBORTag):
        if item.tag not in (TAG_SIGN1, TAG_MAC0):
            raise AttestationError(
                Step.PARSE,
                f"{what} has CBOR tag {item.tag}, not COSE_Sign1 ({TAG_SIGN1}) or COSE_Mac0 ({TAG_MAC0})",
            )
        tag, item = item.tag, item.value
    if not _is_array(item) or len(item) != 4:
        raise AttestationError(Step.PARSE, f"{what} is not a COSE message (an array of 4)")
    protected, unprotected, payload, proof = item
    if not isinstance(protected, bytes):
        raise AttestationError(Step.PARSE, f"{what}: protected header is not a byte string")
    if not isinstance(unprotected, Mapping):
        raise AttestationError(
            Step.PARSE, f"{what}: unprotected header is a CBOR {_kind(unprotected)}, not a map"
        )
    if not isinstance(payload, bytes):
        raise AttestationError(Step.PARSE, f"{what}: payload is not an attached byte string")
    if not isinstance(proof, bytes):
        raise AttestationError(Step.PARSE, f"{what}: signature or tag is not a byte string")
    # RFC 9052 3: a zero-length protected header stands for the empty map
    header = ClaimMap(
        decode_cbor(protected, f"{what} protected header") if protected else {}, f"{what} header"
    )
    alg = header.get(_HEADER_ALG, int, "algorithm")
    if alg is None:
        raise AttestationError(Step.PARSE, f"{what} names no algorithm in its protected header")
    if _HEADER_ALG in unprotected:
        raise AttestationError(Step.PARSE, f"{what} repeats the algorithm in its unprotected header")
    if _HEADER_CRIT in header or _HEADER_CRIT in unprotected:
        raise AttestationError(Step.PARSE, f"{what} marks headers critical; none are supported")
    mac = alg in _HMAC
    if not mac and alg not in _ECDSA:
        raise AttestationError(Step.PARSE, f"{what} uses unsupported COSE algorithm {alg}")
    if tag is not None and tag != (TAG_MAC0 if mac else TAG_SIGN1):
        raise AttestationError(
            Step.PARSE, f"{what} is tagged {tag} but its algorithm {alg} belongs to the other type"
        )
    if mac and not allow_mac:
        raise AttestationError(Step.PARSE, f"{what} must be a signed COSE_Sign1, not a COSE_Mac0")
    return CoseMessage(mac=mac, alg=alg, protected=protected, payload=payload, proof=proof)


def verify_signature(message: CoseMessage, key: ec.EllipticCurvePublicKey, what: str) -> None:
    """Check a COSE_Sign1 signature (raw r || s, RFC 9053 2.1) with `key`, or refuse at SIGNATURE."""
    if message.mac:
        raise AttestationError(Step.SIGNATURE, f"{what} is MACed, but a public key was given")
    alg = _ECDSA[message.alg]
    if not isinstance(key.curve, alg.curve):
        raise AttestationError(
            Step.SIGNATURE, f"{what} is {alg.name}, which does not fit a {key.curve.name} key"
        )
    size = _coordinate_size(key.curve)
    if len(message.proof) != 2 * size:
        raise AttestationError(
            Step.SIGNATURE, f"{what}: {alg.name} signature is {len(message.proof)} bytes, expected {2 * size}"
        )
    signature = encode_dss_signature(
        int.from_bytes(message.proof[:size], "big"), int.from_bytes(message.proof[size:], "big")
    )
    to_be_signed = cbor2.dumps(["Signature1", message.protected, b"", message.payload])
    try:
        key.verify(signature, to_be_signed, ec.ECDSA(alg.hash))
    except InvalidSignature:
        raise AttestationError(
            Step.SIGNATURE, f"{what} signature does not verify under the given key"
        ) from None


def verify_mac(message: CoseMessage, key: bytes, what: str) -> None:
    """Check a COSE_Mac0 tag with the shared `key`, or refuse at SIGNATURE."""
    if not message.mac:
        raise AttestationError(Step.SIGNATURE, f"{what} is signed, but an HMAC key was expected")
    digest = _HMAC[message.alg].digest
    to_be_maced = cbor2.dumps(["MAC0", message.protected, b"", message.payload])
    if not hmac.compare_digest(hmac.new(key, to_be_maced, digest).digest(), message.proof):
        raise AttestationError(Step.SIGNATURE, f"{what} MAC does not verify under the given key")


def load_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """An EC public key from PEM, DER (SubjectPublicKeyInfo) or a JWK in JSON."""
    text = data.strip()
    if text.startswith(b"{"):
        try:
            jwk = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise KeyFormatError(f"JWK is not valid JSON: {exc}") from None
        if not isinstance(jwk, dict):
            raise KeyFormatError("JWK is not a JSON object")
        return public_key_from_jwk(jwk)
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(text)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError(f"not a PEM, DER or JWK public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise KeyFormatError(f"{type(key).__name__} is not an EC public key")
    return key


def public_key_from_jwk(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    """An EC public key from a JWK object (RFC 7518 6.2); private members are ignored."""
    if jwk.get("kty") != "EC":
        raise KeyFormatError(f"JWK key type {jwk.get('kty')!r} is not EC")
    curve = _JWK_CURVES.get(str(jwk.get("crv")))
    if curve is None:
        raise KeyFormatError(f"JWK curve {jwk.get('crv')!r} is not one of {', '.join(_JWK_CURVES)}")
    return _ec_key(curve(), _base64url(jwk.get("x"), "x"), _base64url(jwk.get("y"), "y"))


def public_key_from_cose_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """An EC public key from a serialized COSE_Key of type EC2 with both coordinates (RFC 9053 7.1.1)."""
    try:
        key = ClaimMap(decode_cbor(data, "COSE_Key"), "COSE_Key")
        kty = key.require(_COSE_KEY_KTY, int, "key type")
        crv = key.require(_COSE_EC2_CRV, int, "curve")
        x = key.require(_COSE_EC2_X, bytes, "x coordinate")
        y = key.require(_COSE_EC2_Y, bytes, "y coordinate")
    except AttestationError as exc:
        raise KeyFormatError(exc.message) from None
    if kty != _COSE_KTY_EC2:
        raise KeyFormatError(f"COSE_Key type {kty} is not EC2 ({_COSE_KTY_EC2})")
    curve = _COSE_CURVES.get(crv)
    if curve is None:
        raise KeyFormatError(f"COSE_Key curve {crv} is not P-256, P-384 or P-521")
    return _ec_key(curve(), x, y)


def public_key_from_point(point: bytes) -> ec.EllipticCurvePublicKey:
    """An EC public key from an uncompressed SEC1 point (0x04 || x || y); its length tells the curve."""
    curve = _POINT_CURVES.get(len(point))
    if curve is None or point[:1] != b"\x04":
        raise KeyFormatError(f"{len(point)}-byte value is not an uncompressed P-256, P-384 or P-521 point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except ValueError as exc:
        raise KeyFormatError(f"invalid {curve.name} point: {exc}") from None


def _ec_key(curve: ec.EllipticCurve, x: bytes, y: bytes) -> ec.EllipticCurvePublicKey:
    size = _coordinate_size(curve)
    if len(x) != size or len(y) != size:
        raise KeyFormatError(f"{curve.name} coordinates must be {size} bytes, got {len(x)} and {len(y)}")
    numbers = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve)
    try:
        return numbers.public_key()
    except ValueError as exc:
        raise KeyFormatError(f"invalid {curve.name} key: {exc}") from None


def _coordinate_size(curve: ec.EllipticCurve) -> int:
    return (curve.key_size + 7) // 8


def _base64url(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise KeyFormatError(f"JWK member {name!r} is missing or not a string")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError(f"JWK member {name!r} is not base64url: {exc}") from None


def _is_array(value: object) -> TypeGuard[list[Any] | tuple[Any, ...]]:
    # cbor2 decodes arrays to lists, or to tuples under a tag or inside map keys
    return isinstance(value, list | tuple)


def _kind(value: object) -> str:
    if isinstance(value, cbor2.CBORTag):
        return f"tag {value.tag}"
    return _kind_name(type(value))


def _kind_name(kind: type) -> str:
    names = {bytes: "byte string", str: "text string", int: "integer", bool: "boolean", float: "float"}
    if kind in names:
        return names[kind]
    if issubclass(kind, Mapping):
        return "map"
    if issubclass(kind, list | tuple):
        return "array"
    return "null" if kind is type(None) else kind.__name__
