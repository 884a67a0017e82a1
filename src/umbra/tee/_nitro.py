"""AWS Nitro Enclaves attestation documents.

A document is a COSE_Sign1 (ES384; tagged 18 or, as the NSM emits it, untagged) whose payload is a
CBOR map: module_id, digest ("SHA384"), timestamp (ms since the epoch), pcrs {index: bytes},
certificate (the DER leaf that signs the document), cabundle ([root, intermediates...] in DER),
and the optional public_key, user_data and nonce. Verification, all at time `at`:

1. the leaf chains through the cabundle to the pinned AWS Nitro Enclaves root (or
   `Endorsements.root`), every certificate valid at `at`;
2. the COSE signature verifies under the leaf's P-384 key.

Reported values: `measurements` are `pcr<index>` in lowercase hex for every PCR present;
`report_data` is user_data exactly as carried (up to 1024 bytes, not padded; empty when absent);
`nonce` is the nonce field (None when absent); `issued_at` is the timestamp. `debug` is true when
any of PCR0, PCR1 or PCR2 is all zero bytes: the NSM zeroes them for an enclave started in debug
mode (nitrite looks at PCR0 alone; requiring all three non-zero is the stricter reading).

Evidence may arrive as raw CBOR or as base64 text (how AWS SDKs and blocky's vectors carry it).
Bytes after the CBOR document are ignored; base64 text must decode as a whole.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from umbra.tee._cose import ClaimMap, CoseMessage, decode_cbor, parse_message, verify_signature
from umbra.tee._inputs import MALFORMED_CERTIFICATE
from umbra.tee._model import AttestationError, Endorsements, Step, VerifiedEvidence
from umbra.tee._roots import load_root
from umbra.tee._x509 import load_certificates, verify_chain

__all__ = ["NitroVerifier", "evidence_time"]

_ROOT_NAME: Final = "aws_nitro_enclaves_root_g1.pem"
_ES384: Final = -35
_DIGEST: Final = "SHA384"
_PCR_COUNT: Final = 32
_PCR_SIZES: Final = (32, 48, 64)
_DEBUG_PCRS: Final = (0, 1, 2)
_MAX_FIELD_SIZE: Final = 1024  # certificate, cabundle entries, public_key, user_data, nonce
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_TIMESTAMP_MS: Final = int((datetime(9999, 12, 31, tzinfo=UTC) - _EPOCH).total_seconds()) * 1000


@dataclass(frozen=True)
class _Document:
    message: CoseMessage
    module_id: str
    timestamp: datetime
    pcrs: Mapping[int, bytes]
    certificate: x509.Certificate
    cabundle: tuple[x509.Certificate, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None

    @property
    def debug(self) -> bool:
        return any(not any(self.pcrs[index]) for index in _DEBUG_PCRS)


def evidence_time(evidence: bytes) -> datetime | None:
    """The document's own timestamp, read without any verification, for `--at evidence`.

    None when the evidence cannot be read as a Nitro document.
    """
    try:
        return _parse(evidence).timestamp
    except AttestationError:
        return None


class NitroVerifier:
    tee_type: ClassVar[str] = "nitro"

    def verify_at_time(self, evidence: bytes, endorsements: Endorsements, at: datetime) -> VerifiedEvidence:
        document = _parse(evidence)
        try:
            _authenticate(document, endorsements, at)
        except AttestationError as exc:
            exc.debug = document.debug  # reported whenever the document parsed, refused or not
            raise
        claims = {"module_id": document.module_id, "digest": _DIGEST}
        if document.public_key is not None:
            claims["public_key"] = document.public_key.hex()
        return VerifiedEvidence(
            tee_type=self.tee_type,
            platform="nitro",
            measurements={f"pcr{index}": value.hex() for index, value in sorted(document.pcrs.items())},
            report_data=document.user_data or b"",
            debug=document.debug,
            issued_at=document.timestamp,
            nonce=document.nonce,
            claims=claims,
        )


def _authenticate(document: _Document, endorsements: Endorsements, at: datetime) -> None:
    # the cabundle runs root first; the chain to check runs leaf first
    verify_chain([document.certificate, *reversed(document.cabundle)], _trusted_roots(endorsements), at)
    leaf_key = document.certificate.public_key()
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey):
        raise AttestationError(Step.SIGNATURE, f"leaf certificate key is {type(leaf_key).__name__}, not EC")
    verify_signature(document.message, leaf_key, "Nitro attestation document")


def _parse(evidence: bytes) -> _Document:
    message = parse_message(
        decode_cbor(_raw(evidence), "Nitro attestation document"), "Nitro attestation document"
    )
    if message.alg != _ES384:
        raise AttestationError(Step.PARSE, f"Nitro attestation document is {message.alg_name}, not ES384")
    payload = ClaimMap(decode_cbor(message.payload, "Nitro document payload"), "Nitro document payload")
    digest = payload.require("digest", str, "digest")
    if digest != _DIGEST:
        raise AttestationError(Step.PARSE, f"Nitro document digest is {digest!r}, not {_DIGEST}")
    module_id = payload.require("module_id", str, "module_id")
    if not module_id:
        raise AttestationError(Step.PARSE, "Nitro document module_id is empty")
    cabundle = payload.array("cabundle", "cabundle")
    if not cabundle:
        raise AttestationError(Step.PARSE, "Nitro document has no cabundle")
    return _Document(
        message=message,
        module_id=module_id,
        timestamp=_timestamp(payload.require("timestamp", int, "timestamp")),
        pcrs=_pcrs(payload.map("pcrs", "pcrs")),
        certificate=_certificate(_field(payload, "certificate", required=True), "certificate"),
        cabundle=tuple(_certificate(entry, f"cabundle entry {i}") for i, entry in enumerate(cabundle)),
        public_key=_field(payload, "public_key"),
        user_data=_field(payload, "user_data"),
        nonce=_field(payload, "nonce"),
    )


def _raw(evidence: bytes) -> bytes:
    # A COSE_Sign1 starts with 0x84 (array of 4) or 0xd2 (tag 18), neither of them ASCII, so
    # evidence opening with an ASCII byte can only be text: base64.
    if not evidence or not evidence[:1].isascii():
        return evidence
    try:
        return base64.b64decode(b"".join(evidence.split()), validate=True)
    except (binascii.Error, ValueError):
        raise AttestationError(
            Step.PARSE, "Nitro attestation document is neither CBOR nor base64 text"
        ) from None


def _timestamp(milliseconds: int) -> datetime:
    if not 0 < milliseconds <= _MAX_TIMESTAMP_MS:
        raise AttestationError(Step.PARSE, f"Nitro document timestamp {milliseconds} is out of range")
    return _EPOCH + timedelta(milliseconds=milliseconds)


def _pcrs(pcrs: ClaimMap | None) -> dict[int, bytes]:
    if pcrs is None:
        raise AttestationError(Step.PARSE, "Nitro document has no pcrs")
    values: dict[int, bytes] = {}
    for index in pcrs:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < _PCR_COUNT:
            raise AttestationError(Step.PARSE, f"Nitro document PCR index {index!r} is not in 0..31")
        value = pcrs.require(index, bytes, f"PCR{index}")
        if len(value) not in _PCR_SIZES:
            raise AttestationError(
                Step.PARSE, f"Nitro document PCR{index} is {len(value)} bytes, not 32, 48 or 64"
            )
        values[index] = value
    missing = [index for index in _DEBUG_PCRS if index not in values]
    if missing:
        raise AttestationError(Step.PARSE, f"Nitro document lacks PCR{', PCR'.join(map(str, missing))}")
    return values


def _field(payload: ClaimMap, name: str, *, required: bool = False) -> bytes | None:
    value = payload.require(name, bytes, name) if required else payload.get(name, bytes, name)
    if value is not None and len(value) > _MAX_FIELD_SIZE:
        raise AttestationError(
            Step.PARSE, f"Nitro document {name} is {len(value)} bytes, over {_MAX_FIELD_SIZE}"
        )
    return value


def _certificate(der: object, what: str) -> x509.Certificate:
    if not isinstance(der, bytes) or not 0 < len(der) <= _MAX_FIELD_SIZE:
        raise AttestationError(Step.PARSE, f"Nitro document {what} is not a DER certificate of 1..1024 bytes")
    try:
        certificate = x509.load_der_x509_certificate(der)
        # cryptography parses fields lazily; touching the ones chain checks read now refuses a
        # garbled field here, as unparseable, rather than in whatever reads it first later
        _ = (certificate.subject, certificate.issuer, certificate.extensions, certificate.public_key())
    except MALFORMED_CERTIFICATE as exc:
        raise AttestationError(Step.PARSE, f"Nitro document {what} is not a DER certificate: {exc}") from None
    return certificate


def _trusted_roots(endorsements: Endorsements) -> tuple[x509.Certificate, ...]:
    if endorsements.root is not None:
        return load_certificates(endorsements.root, what="root")
    return load_certificates(load_root(_ROOT_NAME), what="pinned AWS Nitro Enclaves root")
