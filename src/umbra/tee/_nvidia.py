"""NVIDIA GPU attestation: the SPDM 1.1 GET_MEASUREMENTS exchange of a Hopper GPU (DMTF DSP0274).

The evidence, as NVIDIA's nvtrust hands it over (raw, or as hex text), is the GET_MEASUREMENTS
request the verifier sent, with its 32-byte nonce, followed by the GPU's MEASUREMENTS response:
the measurement record, the GPU's own nonce, NVIDIA opaque data (driver and VBIOS versions, FWID,
...) and an ECDSA P-384 signature, raw r||s, over SHA-384 of request || response-without-signature.
Verification at `at`:

1. parse     both messages by their declared lengths (trailing bytes are ignored).
2. chain     `Endorsements.chain` (the device certificate first, then its issuers) up to the NVIDIA
             Device Identity CA (pinned, or `Endorsements.root`), every certificate valid at `at`.
3. signature the response verifies under the device certificate's key.
4. binding   the firmware id (FWID) in the opaque data, when present, is the one the device
             certificate was issued for (as nvtrust checks).

The request nonce is reported as `nonce` (and `report_data`); the facade compares it.

Not checked offline: certificate revocation (NVIDIA's OCSP service) and the measurements against
NVIDIA's golden values (the RIM service); both need the network. Debug is not judged either:
NVIDIA derives a GPU's debug status from its measurements matching the RIMs, and the opaque data
carries no debug flag, so `debug` is always False here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, ClassVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from umbra.tee._inputs import decode_evidence
from umbra.tee._model import AttestationError, Endorsements, Step, VerifiedEvidence, utc
from umbra.tee._x509 import describe, load_certificates, load_pinned_certificates, verify_chain

__all__ = ["NvidiaGpuVerifier"]

_PINNED_ROOT = "nvidia_device_identity_ca.pem"
_SPDM_1_1 = 0x11
_GET_MEASUREMENTS = 0xE0
_MEASUREMENTS = 0x60
_SIGNATURE_REQUESTED = 0x01
_DMTF_MEASUREMENT_SPECIFICATION = 0x01
_NONCE_SIZE = 32
_SIGNATURE_SIZE = 96  # ECDSA P-384: r || s, 48 bytes each, big-endian
_OPAQUE_FWID = 20
# A measurement block: index, specification, size, then (DMTF format) value type and value size.
_BLOCK_HEADER = struct.Struct("<BBHBH")
_DMTF_HEADER_SIZE = 3
# TCG DICE OID under which NVIDIA device certificates carry the firmware id.
_OID_DICE_TCB_INFO = x509.ObjectIdentifier("2.23.133.5.4.1")
_SHA384 = x509.ObjectIdentifier("2.16.840.1.101.3.4.2.2")


class _Reader:
    """A cursor over a byte string that refuses to read past its end."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._what = what
        self.offset = 0

    def take(self, size: int, field: str) -> bytes:
        end = self.offset + size
        if end > len(self._data):
            raise AttestationError(
                Step.PARSE,
                f"{self._what} is truncated: {field} needs {size} bytes at offset {self.offset}, "
                f"{len(self._data) - self.offset} left",
            )
        chunk = self._data[self.offset : end]
        self.offset = end
        return chunk

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "little")

    @property
    def remaining(self) -> int:
        return len(self._data) - self.offset


@dataclass(frozen=True)
class _SpdmReport:
    nonce: bytes  # the requester's (verifier's) nonce
    responder_nonce: bytes
    slot_id: int
    measurements: dict[int, bytes]  # block index -> DMTF measurement value
    fwid: bytes | None  # the firmware id from the opaque data
    opaque_claims: dict[str, Any]  # the decoded opaque data
    signed: bytes
    signature: bytes


def _parse(evidence: bytes) -> _SpdmReport:
    data = decode_evidence(evidence)
    reader = _Reader(data, "SPDM GET_MEASUREMENTS request")
    _expect_header(reader, _GET_MEASUREMENTS, "GET_MEASUREMENTS request")
    attributes = reader.uint(1, "request attributes")
    reader.take(1, "measurement operation")
    if not attributes & _SIGNATURE_REQUESTED:
        raise AttestationError(Step.SIGNATURE, "the request did not ask for a signed response")
    nonce = reader.take(_NONCE_SIZE, "request nonce")
    reader.take(1, "slot id")

    response = _Reader(data[reader.offset :], "SPDM MEASUREMENTS response")
    _expect_header(response, _MEASUREMENTS, "MEASUREMENTS response")
    response.take(1, "response param1")
    slot_id = response.uint(1, "response slot id") & 0x0F
    block_count = response.uint(1, "number of blocks")
    record = response.take(response.uint(3, "measurement record length"), "measurement record")
    responder_nonce = response.take(_NONCE_SIZE, "responder nonce")
    opaque = response.take(response.uint(2, "opaque data length"), "opaque data")
    signed_size = reader.offset + response.offset
    signature = response.take(_SIGNATURE_SIZE, "signature")
    opaque_fields = _parse_opaque_data(opaque)
    return _SpdmReport(
        nonce=nonce,
        responder_nonce=responder_nonce,
        slot_id=slot_id,
        measurements=_parse_measurement_record(record, block_count),
        fwid=opaque_fields.get(_OPAQUE_FWID),
        opaque_claims=_opaque_claims(opaque_fields),
        signed=data[:signed_size],
        signature=signature,
    )


def _expect_header(reader: _Reader, code: int, what: str) -> None:
    version = reader.uint(1, "SPDM version")
    if version != _SPDM_1_1:
        step = Step.UNSUPPORTED if version >> 4 == 1 else Step.PARSE
        raise AttestationError(step, f"{what}: SPDM version {version >> 4}.{version & 0xF} is not 1.1")
    actual = reader.uint(1, "request/response code")
    if actual != code:
        raise AttestationError(
            Step.PARSE, f"expected an SPDM {what} (code {code:#04x}), found code {actual:#04x}"
        )


def _parse_measurement_record(record: bytes, block_count: int) -> dict[int, bytes]:
    # A hot loop (Hopper reports carry 64 blocks), so it reads with struct rather than _Reader.
    if block_count == 0:
        raise AttestationError(Step.PARSE, "the response carries no measurement blocks")
    measurements: dict[int, bytes] = {}
    offset = 0
    for _ in range(block_count):
        if offset + _BLOCK_HEADER.size > len(record):
            raise AttestationError(Step.PARSE, f"the measurement record is truncated at offset {offset}")
        index, specification, size, _value_type, value_size = _BLOCK_HEADER.unpack_from(record, offset)
        start = offset + _BLOCK_HEADER.size
        end = start + value_size
        if specification != _DMTF_MEASUREMENT_SPECIFICATION:
            raise AttestationError(Step.PARSE, f"measurement {index} is not in the DMTF format")
        if size != _DMTF_HEADER_SIZE + value_size or end > len(record):
            raise AttestationError(
                Step.PARSE,
                f"measurement {index}: its DMTF value ({value_size} bytes) does not fill its block",
            )
        if index in measurements:
            raise AttestationError(Step.PARSE, f"measurement index {index} appears twice")
        measurements[index] = record[start:end]
        offset = end
    if offset != len(record):
        raise AttestationError(
            Step.PARSE, f"the measurement record has {len(record) - offset} bytes after its blocks"
        )
    return measurements


def _parse_opaque_data(opaque: bytes) -> dict[int, bytes]:
    """NVIDIA's opaque data: a sequence of (type u16, size u16, value) fields."""
    reader = _Reader(opaque, "opaque data")
    fields: dict[int, bytes] = {}
    while reader.remaining:
        field_type = reader.uint(2, "field type")
        value = reader.take(reader.uint(2, "field size"), f"field {field_type}")
        if field_type in fields:
            raise AttestationError(Step.PARSE, f"opaque data field {field_type} appears twice")
        fields[field_type] = value
    return fields


def _text(value: bytes) -> str:
    return value.rstrip(b"\0").decode("ascii", errors="replace")


def _vbios_version(value: bytes) -> str:
    # nvtrust's rendering (and the RIM's): the low 32 bits big-endian, then the OEM byte.
    if len(value) < 5:
        return value.hex()
    return ".".join(f"{part:02X}" for part in (value[3], value[2], value[1], value[0], value[4]))


def _counts(value: bytes) -> list[int]:
    if len(value) % 4:
        raise AttestationError(Step.PARSE, "the measurement count field is not a list of 32-bit counts")
    return [int.from_bytes(value[offset : offset + 4], "little") for offset in range(0, len(value), 4)]


def _hex(value: bytes) -> str:
    return value.hex()


# NVIDIA opaque field type -> (claim name, decoder); other types are reported as `opaque_<type>` hex.
_OPAQUE_FIELDS: dict[int, tuple[str, Callable[[bytes], Any]]] = {
    1: ("cert_issuer_name", _hex),
    2: ("cert_authority_key_identifier", _hex),
    3: ("driver_version", _text),
    4: ("gpu_info", _hex),
    5: ("sku", _hex),
    6: ("vbios_version", _vbios_version),
    7: ("manufacturer_id", _hex),
    8: ("tamper_detection", _hex),
    9: ("smc", _hex),
    10: ("vpr", _hex),
    11: ("nvdec0_status", _hex),
    12: ("measurement_counts", _counts),
    13: ("cpr_info", _hex),
    14: ("board_id", _hex),
    15: ("chip_sku", _text),
    16: ("chip_sku_mod", _text),
    17: ("project", _text),
    18: ("project_sku", _text),
    19: ("project_sku_mod", _text),
    _OPAQUE_FWID: ("fwid", _hex),
    21: ("protected_pcie_status", _hex),
    22: ("switch_pdi", _hex),
    23: ("floorswept_ports", _hex),
    24: ("position_id", _hex),
    25: ("lock_switch_status", _hex),
    32: ("gpu_link_conn", _hex),
}


def _opaque_claims(fields: dict[int, bytes]) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    for field_type, value in fields.items():
        name, decode = _OPAQUE_FIELDS.get(field_type, (f"opaque_{field_type}", _hex))
        claims[name] = decode(value)
    return claims


@asn1.sequence
class _Fwid:
    hash_algorithm: x509.ObjectIdentifier
    digest: bytes


@asn1.sequence
class _DeviceTcbInfo:
    """The body of the extension as NVIDIA writes it: version, device key, firmware id."""

    version: int
    subject_public_key_info: asn1.TLV
    fwid: _Fwid


class NvidiaGpuVerifier:
    """Verifies NVIDIA Hopper GPU SPDM measurement reports against the device certificate chain."""

    tee_type: ClassVar[str] = "nvidia-gpu"

    def verify_at_time(self, evidence: bytes, endorsements: Endorsements, at: datetime) -> VerifiedEvidence:
        report = _parse(evidence)
        try:
            device = _verify(report, endorsements, utc(at))
        except AttestationError as exc:
            raise AttestationError(exc.step, exc.message, debug=False) from None
        return VerifiedEvidence(
            tee_type=self.tee_type,
            platform="nvidia-gpu",
            measurements={str(index): value.hex() for index, value in sorted(report.measurements.items())},
            report_data=report.nonce,
            debug=False,
            nonce=report.nonce,
            claims=_claims(report, device),
        )


def _verify(report: _SpdmReport, endorsements: Endorsements, at: datetime) -> x509.Certificate:
    """Steps 2-4 of the module docstring; returns the device certificate."""
    device = _verify_chain(endorsements, at)
    _verify_signature(report, device)
    if report.fwid and report.fwid != _certificate_fwid(device):
        raise AttestationError(
            Step.BINDING, f"the report's FWID {report.fwid.hex()} is not the firmware of {describe(device)}"
        )
    return device


def _verify_chain(endorsements: Endorsements, at: datetime) -> x509.Certificate:
    """The device certificate, once its chain to a trusted NVIDIA root holds at `at`."""
    if endorsements.chain is None:
        raise AttestationError(Step.CHAIN, "no GPU device certificate chain was given")
    chain = load_certificates(endorsements.chain, what="GPU device certificate chain")
    if endorsements.root is not None:
        anchors = load_certificates(endorsements.root, what="root certificate")
    else:
        anchors = load_pinned_certificates(_PINNED_ROOT)
    verify_chain(chain, anchors, at)
    return chain[0]


def _verify_signature(report: _SpdmReport, device: x509.Certificate) -> None:
    key = device.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise AttestationError(
            Step.SIGNATURE, f"the device certificate {describe(device)} has no ECDSA P-384 key"
        )
    half = _SIGNATURE_SIZE // 2
    signature = encode_dss_signature(
        int.from_bytes(report.signature[:half], "big"), int.from_bytes(report.signature[half:], "big")
    )
    try:
        key.verify(signature, report.signed, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        raise AttestationError(
            Step.SIGNATURE, f"the measurement response signature does not verify with {describe(device)}"
        ) from None


@lru_cache(maxsize=256)
def _certificate_fwid(device: x509.Certificate) -> bytes:
    try:
        extension = device.extensions.get_extension_for_oid(_OID_DICE_TCB_INFO).value
        if not isinstance(extension, x509.UnrecognizedExtension):
            raise ValueError("unexpected extension type")
        fwid = asn1.decode_der(_DeviceTcbInfo, extension.value).fwid
    except (x509.ExtensionNotFound, ValueError) as exc:
        raise AttestationError(
            Step.BINDING, f"the device certificate {describe(device)} carries no readable FWID: {exc}"
        ) from None
    if fwid.hash_algorithm != _SHA384:
        raise AttestationError(Step.BINDING, "the device certificate's FWID is not a SHA-384 digest")
    return fwid.digest


def _claims(report: _SpdmReport, device: x509.Certificate) -> dict[str, Any]:
    return {
        "spdm_version": "1.1",
        "slot_id": report.slot_id,
        "responder_nonce": report.responder_nonce.hex(),
        "device_certificate": device.subject.rfc4514_string(),
        **report.opaque_claims,
    }
