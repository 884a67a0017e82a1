"""Attestation inputs as people and scripts hand them over.

Evidence arrives as raw bytes, hex text or base64 text; certificates as PEM (one or more) or DER;
times as ISO-8601 or unix seconds. These helpers turn each into one canonical value, or raise
`ValueError` saying what was wrong, so every caller (the CLI, tests, the worker) reads inputs alike.
"""

from __future__ import annotations

import base64
import binascii
import re
import string
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

__all__ = ["decode_evidence", "load_certificates", "parse_hex", "parse_time"]

_HEX_DIGITS = frozenset(string.hexdigits)
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/\-_]+={0,2}")
_UNIX_SECONDS = re.compile(r"[+-]?\d+(\.\d+)?")
# Text evidence is printable ASCII plus line breaks; a single byte outside this marks raw binary.
_TEXT_BYTES = frozenset(string.printable.encode("ascii"))


def decode_evidence(data: bytes) -> bytes:
    """The evidence bytes of `data`: hex text first, then base64 text, else `data` itself (raw).

    Whitespace anywhere in text is ignored and hex may carry a 0x prefix, so wrapped and
    copy-pasted evidence decodes the same as a clean file.
    """
    if not data or not _TEXT_BYTES.issuperset(data):
        return bytes(data)
    compact = "".join(data.decode("ascii").split())
    hex_body = compact[2:] if compact[:2] in ("0x", "0X") else compact
    if hex_body and len(hex_body) % 2 == 0 and _HEX_DIGITS.issuperset(hex_body):
        return bytes.fromhex(hex_body)
    if compact and _BASE64_TEXT.fullmatch(compact):
        standard = compact.translate(str.maketrans("-_", "+/"))
        try:
            return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
        except binascii.Error:
            pass
    return bytes(data)


def parse_hex(text: str) -> bytes:
    """Hex with an optional 0x prefix; surrounding whitespace is ignored."""
    body = text.strip()
    body = body[2:] if body[:2] in ("0x", "0X") else body
    try:
        return bytes.fromhex(body)
    except ValueError:
        raise ValueError(f"{text!r} is not hex") from None


def parse_time(text: str) -> datetime:
    """ISO-8601 (a time without zone is UTC) or unix seconds, as an aware UTC datetime."""
    value = text.strip()
    try:
        if _UNIX_SECONDS.fullmatch(value):
            return datetime.fromtimestamp(float(value), UTC)
        parsed = datetime.fromisoformat(value)
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"{text!r} is not an ISO-8601 time or unix seconds") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# What cryptography raises for a certificate it cannot read. Several are not ValueErrors, and
# names and extensions are parsed lazily, so callers must read them inside the same `try`.
MALFORMED_CERTIFICATE = (
    ValueError,
    TypeError,  # a name attribute whose ASN.1 string type does not fit its OID (found by fuzzing)
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in PEM `data` (in order), or the one certificate of DER `data`."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except MALFORMED_CERTIFICATE as exc:
        raise ValueError(f"not a PEM or DER certificate: {exc}") from None
