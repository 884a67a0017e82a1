"""Intel DCAP quotes (SGX v3, TDX v4 and v5), verified by dcap-qvl against the pinned Intel root.

dcap-qvl checks, at the verification time, the PCK certificate chain and the CRLs, the signatures
and validity of TCB Info and QE Identity, the QE report and its binding to the attestation key, the
quote signature, the FMSPC, and the TCB level. Around it this module adds what a verdict needs:

- Its own structural parse of the quote. The verdict reports platform, measurements and the debug
  bit even when dcap-qvl refuses; bytes after the signature data are cut off before dcap-qvl sees
  them; and every byte of the quote is either signed or checked here. The nested sizes must add up
  exactly, and the PCK chain must be canonical PEM that ends at the trust anchor. dcap-qvl itself
  ignores the root certificate in the chain and reads PEM loosely. So a quote has exactly one
  encoding, and a flipped byte anywhere in it is refused.
- The mapping of dcap-qvl's error text to a `Step`. Its own text stays in the message.
- Caches of parsed collateral and certificates, keyed by their exact bytes. Parsing is pure and
  does not depend on the time. Verdicts are never cached.

Collateral is the JSON of dcap-qvl's `QuoteCollateralV3`: CRLs and signatures as hex, issuer
chains as PEM, TCB Info and QE Identity as the exact signed JSON text (the shape that
`umbra.tee._pccs` produces). Measurements are the report fields' bytes as hex, in quote byte order,
so an SGX ISV SVN of 6 reads "0600".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, ClassVar, Final

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from umbra.tee._inputs import MALFORMED_CERTIFICATE
from umbra.tee._model import AttestationError, Endorsements, Step, VerifiedEvidence, utc
from umbra.tee._roots import load_root
from umbra.tee._x509 import load_certificates

__all__ = ["DcapVerifier"]

_INTEL_ROOT = "intel_sgx_root_ca.der"

_HEADER_SIZE = 48
_TEE_SGX = 0x00000000
_TEE_TDX = 0x00000081
_ECDSA_P256 = 2
# The quote signature and the attestation public key, 64 bytes each for ECDSA P-256.
_SIGNATURE_AND_KEY_SIZE = 128
_QE_REPORT_SIZE = 384
_QE_REPORT_SIGNATURE_SIZE = 64
# Certification data types (Intel DCAP quote format): a QE report that certifies a nested PCK
# chain (v4 and v5 wrap their QE certification in it), and the PEM PCK chain itself.
_QE_REPORT_CERTIFICATION = 6
_PCK_CHAIN_PEM = 5


@dataclass(frozen=True)
class _BodyLayout:
    """A report body: its size and where its fields sit. Reserved fields are left out."""

    platform: str
    size: int
    fields: tuple[tuple[str, int, int], ...]  # (measurement name, offset, size)
    report_data_offset: int
    debug_offset: int
    debug_mask: int


_SGX_REPORT = _BodyLayout(
    platform="sgx",
    size=384,
    fields=(
        ("cpu_svn", 0, 16),
        ("misc_select", 16, 4),
        ("isv_ext_prod_id", 32, 16),
        ("attributes", 48, 16),
        ("mrenclave", 64, 32),
        ("mrsigner", 128, 32),
        ("config_id", 192, 64),
        ("isv_prod_id", 256, 2),
        ("isv_svn", 258, 2),
        ("config_svn", 260, 2),
        ("isv_family_id", 304, 16),
    ),
    report_data_offset=320,
    # ATTRIBUTES.DEBUG is bit 1 of the enclave's ATTRIBUTES.
    debug_offset=48,
    debug_mask=0x02,
)

_TD10_FIELDS = (
    ("tee_tcb_svn", 0, 16),
    ("mr_seam", 16, 48),
    ("mr_signer_seam", 64, 48),
    ("seam_attributes", 112, 8),
    ("td_attributes", 120, 8),
    ("xfam", 128, 8),
    ("mrtd", 136, 48),
    ("mr_config_id", 184, 48),
    ("mr_owner", 232, 48),
    ("mr_owner_config", 280, 48),
    ("rtmr0", 328, 48),
    ("rtmr1", 376, 48),
    ("rtmr2", 424, 48),
    ("rtmr3", 472, 48),
)
# TD_ATTRIBUTES.DEBUG is bit 0 of TD_ATTRIBUTES.
_TD_REPORT_10 = _BodyLayout(
    "tdx", 584, _TD10_FIELDS, report_data_offset=520, debug_offset=120, debug_mask=0x01
)
_TD_REPORT_15 = _BodyLayout(
    "tdx",
    648,
    (*_TD10_FIELDS, ("tee_tcb_svn2", 584, 16), ("mr_service_td", 600, 48)),
    report_data_offset=520,
    debug_offset=120,
    debug_mask=0x01,
)
# Quote v5 names its body by type: 2 is a TD report 1.0, 3 a TD report 1.5.
_V5_TDX_BODIES: Final = {2: _TD_REPORT_10, 3: _TD_REPORT_15}


@dataclass(frozen=True)
class _Quote:
    version: int
    layout: _BodyLayout
    body: bytes
    structure: bytes  # the quote itself, without any bytes that followed it
    pck_chain_pem: bytes  # as the quote carries it

    @property
    def debug(self) -> bool:
        return bool(self.body[self.layout.debug_offset] & self.layout.debug_mask)

    @property
    def report_data(self) -> bytes:
        offset = self.layout.report_data_offset
        return self.body[offset : offset + 64]

    def measurements(self) -> dict[str, str]:
        return {name: self.body[offset : offset + size].hex() for name, offset, size in self.layout.fields}


class _Reader:
    """Reads a quote front to back. Running out of bytes is a parse refusal that names the field."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.offset = 0

    def take(self, size: int, field: str) -> bytes:
        end = self.offset + size
        if end > len(self._data):
            remaining = len(self._data) - self.offset
            raise AttestationError(
                Step.PARSE,
                f"quote truncated: {field} needs {size} bytes at offset {self.offset}, {remaining} remain",
            )
        chunk = self._data[self.offset : end]
        self.offset = end
        return chunk

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "little")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "little")


def _parse_quote(evidence: bytes) -> _Quote:
    reader = _Reader(evidence)
    version, key_type, tee_type = struct.unpack_from("<HHI", reader.take(_HEADER_SIZE, "header"))
    if key_type != _ECDSA_P256:
        raise AttestationError(
            Step.PARSE, f"attestation key type {key_type} is not supported (only {_ECDSA_P256}, ECDSA P-256)"
        )
    layout = _body_layout(reader, version, tee_type)
    body = reader.take(layout.size, "report body")
    signature_data_size = reader.u32("signature data size")
    signature_data_start = reader.offset
    reader.take(_SIGNATURE_AND_KEY_SIZE, "quote signature and attestation key")
    if version == 3:
        certification_data = _read_qe_certification(reader)
    else:
        _expect_type(
            "outer certification data", reader.u16("certification data type"), _QE_REPORT_CERTIFICATION
        )
        declared = reader.u32("certification data size")
        start = reader.offset
        certification_data = _read_qe_certification(reader)
        _expect_size("QE report certification data", declared, reader.offset - start)
    _expect_size("signature data", signature_data_size, reader.offset - signature_data_start)
    return _Quote(version, layout, body, evidence[: reader.offset], certification_data)


def _body_layout(reader: _Reader, version: int, tee_type: int) -> _BodyLayout:
    if tee_type == _TEE_SGX and version == 3:
        return _SGX_REPORT
    if tee_type == _TEE_TDX and version == 4:
        return _TD_REPORT_10
    if tee_type == _TEE_TDX and version == 5:
        body_type = reader.u16("body type")
        body_size = reader.u32("body size")
        layout = _V5_TDX_BODIES.get(body_type)
        if layout is None:
            raise AttestationError(Step.PARSE, f"quote v5 body type {body_type} is not a supported TD report")
        _expect_size(f"body of type {body_type}", body_size, layout.size)
        return layout
    raise AttestationError(
        Step.PARSE,
        f"unsupported quote: version {version} with TEE type {tee_type:#x} "
        "(supported: SGX v3, TDX v4 and v5)",
    )


def _read_qe_certification(reader: _Reader) -> bytes:
    """The QE report certification data: QE report, its signature, QE auth data, PCK chain."""
    reader.take(_QE_REPORT_SIZE + _QE_REPORT_SIGNATURE_SIZE, "QE report and its signature")
    reader.take(reader.u16("QE authentication data size"), "QE authentication data")
    _expect_type("QE certification data", reader.u16("PCK certification data type"), _PCK_CHAIN_PEM)
    return reader.take(reader.u32("PCK certification data size"), "PCK certificate chain")


def _expect_type(what: str, found: int, expected: int) -> None:
    if found != expected:
        raise AttestationError(Step.PARSE, f"{what} has type {found}, expected {expected}")


def _expect_size(what: str, declared: int, actual: int) -> None:
    if declared != actual:
        raise AttestationError(Step.PARSE, f"{what} declares {declared} bytes but its parts take {actual}")


@lru_cache(maxsize=256)
def _pck_chain(pck_chain_pem: bytes) -> tuple[x509.Certificate, ...]:
    """The quote's PCK chain, leaf first. The quoting enclave writes it as PEM plus a NUL."""
    pem = pck_chain_pem.removesuffix(b"\0")
    try:
        chain = tuple(x509.load_pem_x509_certificates(pem))
    except MALFORMED_CERTIFICATE as exc:
        raise AttestationError(Step.CHAIN, f"PCK certificate chain in the quote: {exc}") from None
    if b"".join(certificate.public_bytes(Encoding.PEM) for certificate in chain) != pem:
        raise AttestationError(
            Step.PARSE, "PCK certificate chain in the quote is not canonical PEM (stray or reformatted bytes)"
        )
    return chain


@lru_cache(maxsize=16)
def _trust_anchor(root: bytes) -> tuple[x509.Certificate, bytes]:
    """The anchor of a root bundle (its last certificate, as bundles list the root last), with its DER."""
    anchor = load_certificates(root, what="root certificate")[-1]
    return anchor, anchor.public_bytes(Encoding.DER)


@lru_cache(maxsize=64)
def _collateral(document: bytes) -> Any:
    try:
        return dcap_qvl.QuoteCollateralV3.from_json(document.decode())
    except ValueError as exc:  # UnicodeDecodeError included
        raise AttestationError(
            Step.COLLATERAL, f"collateral is not dcap-qvl QuoteCollateralV3 JSON: {exc}"
        ) from None


# dcap-qvl fails with text such as "Verification failed: Failed to verify certificate chain\n\nCaused
# by:\n    CrlExpired {...}". Each rule maps fragments of that text (lower case) to a step, and the
# first rule with a matching fragment wins. So the specific causes come first: an expired CRL under
# "Failed to verify certificate chain" is expired collateral, not a broken chain.
_STEP_RULES: Final[tuple[tuple[Step, tuple[str, ...]], ...]] = (
    (Step.DEBUG, ("debug mode is enabled",)),
    (Step.TCB_REVOKED, ("tcb status is invalid: revoked",)),
    (Step.COLLATERAL_EXPIRED, ("expired",)),
    (Step.COLLATERAL_NOT_YET_VALID, ("in the future", "not valid yet", "notvalidyet", "not valid before")),
    (Step.FMSPC_MISMATCH, ("fmspc mismatch",)),
    (
        Step.PARSE,
        (
            "failed to decode quote",
            "quote version",
            "must have version",
            "attestation key type",
            "pck cert format",
            "certification data type",
            "qe auth data",
            "failed to decode qe report",
            "signed quote",
        ),
    ),
    # A QE that Intel's QE Identity does not vouch for makes the quote signature worthless.
    (
        Step.SIGNATURE,
        (
            "qe_report",
            "enclave report signature",
            "qe report hash",
            "qe vendor id",
            "qe mrsigner",
            "qe isvprodid",
            "qe miscselect",
            "qe attributes",
            "qe report validation",
        ),
    ),
    (
        Step.TCB,
        (
            "tcb level",
            "tcb too old",
            "qe isvsvn",
            "tdx module",
            "component count",
            "current tdx tcb",
            "tcb status",
        ),
    ),
    (
        Step.POLICY,
        ("td attributes", "sept_ve_disable", "td migration", "td profiling", "servtd_ext", "mr service td"),
    ),
    (
        Step.COLLATERAL,
        (
            "crl",
            "revocation",
            "tcbinfo",
            "tcb info",
            "tcb_info",
            "tcb fmspc",
            "qe identity",
            "qeidentity",
            "qe_identity",
            "collateral",
            "invalid key length",  # a TCB Info or QE Identity signature of the wrong length
        ),
    ),
    (
        Step.CHAIN,
        ("certificate", "root ca", "intel extension", "revoked", "unknownissuer", "fmspc", "pcesvn"),
    ),
)


def _refusal(message: str) -> AttestationError:
    """The AttestationError for a dcap-qvl error message, which it keeps (on one line)."""
    text = " ".join(message.split())
    lowered = text.lower()
    for step, fragments in _STEP_RULES:
        if any(fragment in lowered for fragment in fragments):
            return AttestationError(step, f"dcap-qvl: {text}")
    return AttestationError(Step.POLICY, f"dcap-qvl refused the quote: {text}")


def _unix_seconds(at: datetime) -> int:
    seconds = int(utc(at).timestamp())
    if seconds < 0:
        raise AttestationError(
            Step.COLLATERAL_NOT_YET_VALID, f"verification time {at.isoformat()} precedes any Intel collateral"
        )
    return seconds


class DcapVerifier:
    """Intel SGX and TDX quotes. The collateral is required; `root` replaces the Intel SGX root."""

    tee_type: ClassVar[str] = "dcap"

    def verify_at_time(self, evidence: bytes, endorsements: Endorsements, at: datetime) -> VerifiedEvidence:
        quote = _parse_quote(evidence)
        try:
            status, advisory_ids = _verify(quote, endorsements, at)
        except AttestationError as exc:
            raise AttestationError(exc.step, exc.message, debug=quote.debug) from None
        return VerifiedEvidence(
            tee_type=self.tee_type,
            platform=quote.layout.platform,
            measurements=quote.measurements(),
            report_data=quote.report_data,
            debug=quote.debug,
            tcb_status=status,
            advisory_ids=advisory_ids,
            claims={"quote_version": quote.version},
        )


def _verify(quote: _Quote, endorsements: Endorsements, at: datetime) -> tuple[str, tuple[str, ...]]:
    """Run dcap-qvl on the quote; the TCB status and advisory ids, or an AttestationError."""
    anchor, anchor_der = _trust_anchor(endorsements.root or load_root(_INTEL_ROOT))
    if _pck_chain(quote.pck_chain_pem)[-1] != anchor:
        # Not described by name: the quote's certificates may be malformed beyond their encoding.
        raise AttestationError(Step.CHAIN, "the PCK chain in the quote does not end at the trust anchor")
    if endorsements.collateral is None:
        raise AttestationError(Step.COLLATERAL, "dcap needs collateral (TCB Info, QE Identity, CRLs)")
    collateral = _collateral(bytes(endorsements.collateral))
    try:
        report = dcap_qvl.verify_with_root_ca(quote.structure, collateral, anchor_der, _unix_seconds(at))
    except ValueError as exc:
        raise _refusal(str(exc)) from None
    status = str(report.status)
    if status == "Revoked":
        raise AttestationError(Step.TCB_REVOKED, "the platform's TCB level is Revoked")
    return status, tuple(str(advisory) for advisory in report.advisory_ids)
