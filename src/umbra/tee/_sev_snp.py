"""AMD SEV-SNP attestation reports (SEV-SNP ABI specification 56860, report versions 2 to 5).

A report is a fixed 1184-byte structure; bytes 0x0-0x29F are signed with ECDSA P-384/SHA-384 by the
chip's versioned endorsement key (VEK). The VEK is either a VCEK, derived from the chip secret and
the reported TCB, or a VLEK, which AMD provisions to a cloud provider. Verification at `at`:

1. parse    the report by its structure (trailing bytes are ignored): a known version, the ECDSA
            P-384 algorithm, and a VCEK or VLEK signature (not an unsigned report).
2. chain    VEK -> ASK (VCEK) or ASVK (VLEK) -> ARK, every certificate valid at `at`. The ASK/ASVK
            comes from `Endorsements.chain`, else from the pinned chain of the VEK's product
            (Milan, Genoa, Turin). The ARK is the pinned one, or `Endorsements.root`.
3. signature the report verifies under the VEK.
4. tcb      the report's REPORTED_TCB is exactly the TCB the VEK certifies (a VEK is derived for
            one TCB; a mismatch means the key and the report describe different firmware).
5. binding  a VCEK names its chip (hwID); the report's CHIP_ID must be that chip, unless the host
            masked it to zeros. A VLEK names no chip.

Debug (guest policy bit 19) is reported, not judged. Not checked offline: revocation (AMD's CRL
lives on the KDS) and any minimum TCB or expected measurement, which are policy for the caller.
"""

from __future__ import annotations

import enum
import struct
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

from umbra.tee._model import AttestationError, Endorsements, Step, VerifiedEvidence, utc
from umbra.tee._x509 import describe, load_certificates, load_pinned_certificates, verify_chain

__all__ = ["SevSnpVerifier"]

_REPORT_SIZE = 0x4A0
_SIGNED_SIZE = 0x2A0
_SUPPORTED_VERSIONS = range(2, 6)
_CPUID_FIELDS_SINCE = 3
_MITIGATION_VECTORS_SINCE = 4
_ECDSA_P384_SHA384 = 1
_POLICY_DEBUG = 1 << 19
_KEY_INFO_MASK_CHIP_KEY = 1 << 1

# ATTESTATION_REPORT, little-endian, from offset 0 through the signature's R and S (0x2A0-0x32F).
_LAYOUT = struct.Struct(
    "<I"  # 0x000 VERSION
    "I"  # 0x004 GUEST_SVN
    "Q"  # 0x008 POLICY
    "16s"  # 0x010 FAMILY_ID
    "16s"  # 0x020 IMAGE_ID
    "I"  # 0x030 VMPL
    "I"  # 0x034 SIGNATURE_ALGO
    "8s"  # 0x038 CURRENT_TCB
    "Q"  # 0x040 PLATFORM_INFO
    "I4x"  # 0x048 KEY_INFO (AUTHOR_KEY_EN, MASK_CHIP_KEY, SIGNING_KEY), reserved
    "64s"  # 0x050 REPORT_DATA
    "48s"  # 0x090 MEASUREMENT
    "32s"  # 0x0C0 HOST_DATA
    "48s"  # 0x0E0 ID_KEY_DIGEST
    "48s"  # 0x110 AUTHOR_KEY_DIGEST
    "32s"  # 0x140 REPORT_ID
    "32s"  # 0x160 REPORT_ID_MA
    "8s"  # 0x180 REPORTED_TCB
    "3B21x"  # 0x188 CPUID family, model, stepping (version 3+), reserved
    "64s"  # 0x1A0 CHIP_ID
    "8s"  # 0x1E0 COMMITTED_TCB
    "3Bx"  # 0x1E8 CURRENT build, minor, major
    "3Bx"  # 0x1EC COMMITTED build, minor, major
    "8s"  # 0x1F0 LAUNCH_TCB
    "QQ152x"  # 0x1F8 LAUNCH_MIT_VECTOR, CURRENT_MIT_VECTOR (version 4+), reserved
    "72s72s"  # 0x2A0 SIGNATURE: R, S as little-endian integers
)

# AMD KDS certificate extensions (VCEK/VLEK specification 57230).
_OID_PRODUCT_NAME = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.2")
_OID_BOOTLOADER_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.1")
_OID_TEE_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.2")
_OID_SNP_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.3")
_OID_MICROCODE_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.8")
_OID_FMC_SPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.9")
_OID_HWID = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4")
_CHIP_ID_SIZE = 64
_HWID_SIZES = (8, 64)  # Turin chip ids are 8 bytes, earlier products use all 64


class _Product(enum.Enum):
    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @classmethod
    def from_cpuid(cls, family: int, model: int) -> _Product | None:
        """The product of a CPUID family/model (extended fields combined), if it supports SNP."""
        if family == 0x19:
            return {0x0: cls.MILAN, 0x1: cls.GENOA, 0xA: cls.GENOA}.get(model >> 4)
        if family == 0x1A and model >> 4 in (0x0, 0x1):
            return cls.TURIN
        return None


class _SigningKey(enum.IntEnum):
    VCEK = 0
    VLEK = 1
    NONE = 7


_PINNED_CHAINS = {
    (_Product.MILAN, _SigningKey.VCEK): "amd/ask_ark_milan.pem",
    (_Product.MILAN, _SigningKey.VLEK): "amd/ask_ark_milan_vlek.pem",
    (_Product.GENOA, _SigningKey.VCEK): "amd/ask_ark_genoa.pem",
    (_Product.GENOA, _SigningKey.VLEK): "amd/ask_ark_genoa_vlek.pem",
    (_Product.TURIN, _SigningKey.VCEK): "amd/ask_ark_turin_vcek.pem",
    (_Product.TURIN, _SigningKey.VLEK): "amd/ask_ark_turin_vlek.pem",
}


@dataclass(frozen=True)
class _Tcb:
    """A TCB_VERSION: the security patch levels of the platform firmware components."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None  # Turin and later

    @classmethod
    def decode(cls, raw: bytes, product: _Product) -> _Tcb:
        # Turin moved the fields to make room for the FMC level; the layout is per product.
        if product is _Product.TURIN:
            return cls(bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0])
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])

    def as_claim(self) -> dict[str, int]:
        claim = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        return claim if self.fmc is None else {"fmc": self.fmc, **claim}


@dataclass(frozen=True)
class _Report:
    """The signed bytes of one attestation report, then its fields in layout order."""

    signed: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: bytes
    platform_info: int
    key_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    cpuid_family: int
    cpuid_model: int
    cpuid_stepping: int
    chip_id: bytes
    committed_tcb: bytes
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: bytes
    launch_mit_vector: int
    current_mit_vector: int
    signature_r: bytes
    signature_s: bytes

    @classmethod
    def parse(cls, evidence: bytes) -> _Report:
        if len(evidence) < _REPORT_SIZE:
            raise AttestationError(
                Step.PARSE, f"an SEV-SNP report is {_REPORT_SIZE} bytes; the evidence has {len(evidence)}"
            )
        report = cls(bytes(evidence[:_SIGNED_SIZE]), *_LAYOUT.unpack_from(evidence))
        if report.version not in _SUPPORTED_VERSIONS:
            raise AttestationError(
                Step.PARSE,
                f"report version {report.version} is not supported "
                f"(versions {_SUPPORTED_VERSIONS.start}-{_SUPPORTED_VERSIONS.stop - 1})",
            )
        if report.signature_algo != _ECDSA_P384_SHA384:
            raise AttestationError(
                Step.PARSE, f"signature algorithm {report.signature_algo} is not ECDSA P-384 with SHA-384 (1)"
            )
        if report.signing_key_selector not in frozenset(_SigningKey):
            raise AttestationError(
                Step.PARSE, f"signing key selector {report.signing_key_selector} is reserved"
            )
        return report

    @property
    def debug(self) -> bool:
        return bool(self.policy & _POLICY_DEBUG)

    @property
    def signing_key_selector(self) -> int:
        return (self.key_info >> 2) & 0b111

    @property
    def signing_key(self) -> _SigningKey:
        return _SigningKey(self.signing_key_selector)

    @property
    def cpuid_product(self) -> _Product | None:
        if self.version < _CPUID_FIELDS_SINCE:
            return None
        return _Product.from_cpuid(self.cpuid_family, self.cpuid_model)


@dataclass(frozen=True)
class _Vek:
    """A VCEK or VLEK certificate and what AMD certifies in it."""

    certificate: x509.Certificate
    public_key: ec.EllipticCurvePublicKey
    product: _Product
    tcb: _Tcb
    hwid: bytes | None  # the chip a VCEK belongs to; a VLEK has none


class SevSnpVerifier:
    """Verifies SEV-SNP attestation reports against their VEK and AMD's certificate chain."""

    tee_type: ClassVar[str] = "sev-snp"

    def verify_at_time(self, evidence: bytes, endorsements: Endorsements, at: datetime) -> VerifiedEvidence:
        report = _Report.parse(evidence)
        try:
            product = _verify(report, endorsements, utc(at))
        except AttestationError as exc:
            raise AttestationError(exc.step, exc.message, debug=report.debug) from None
        return _verified_evidence(report, product)


def _verify(report: _Report, endorsements: Endorsements, at: datetime) -> _Product:
    """Steps 2-5 of the module docstring; returns the product the report comes from."""
    signing_key = report.signing_key
    if signing_key is _SigningKey.NONE or report.key_info & _KEY_INFO_MASK_CHIP_KEY:
        raise AttestationError(
            Step.SIGNATURE, "the report is unsigned (no signing key selected, or the chip key masked)"
        )
    if endorsements.vek is None:
        raise AttestationError(
            Step.CHAIN, "no VEK certificate (VCEK or VLEK) was given; it is not fetched from AMD offline"
        )
    vek = _load_vek(endorsements.vek)
    _check_key_kind(vek, signing_key)
    cpu = report.cpuid_product
    if cpu is not None and cpu is not vek.product:
        raise AttestationError(
            Step.BINDING,
            f"the report comes from a {cpu.value} CPU (CPUID) but the VEK is for {vek.product.value}",
        )
    _verify_chain(vek, signing_key, endorsements, at)
    _verify_signature(report, vek)
    reported = _Tcb.decode(report.reported_tcb, vek.product).as_claim()
    certified = vek.tcb.as_claim()
    if reported != certified:
        differences = ", ".join(
            f"{name} {level} (VEK {certified.get(name)})"
            for name, level in reported.items()
            if certified.get(name) != level
        )
        raise AttestationError(Step.TCB, f"the reported TCB is not the TCB the VEK certifies: {differences}")
    _check_chip_id(report, vek)
    return vek.product


def _check_key_kind(vek: _Vek, signing_key: _SigningKey) -> None:
    if signing_key is _SigningKey.VCEK and vek.hwid is None:
        raise AttestationError(
            Step.BINDING, "the report is signed by a VCEK, but the VEK certificate names no chip (a VLEK?)"
        )
    if signing_key is _SigningKey.VLEK and vek.hwid is not None:
        raise AttestationError(
            Step.BINDING, "the report is signed by a VLEK, but the VEK certificate is a chip's VCEK"
        )


def _verify_chain(vek: _Vek, signing_key: _SigningKey, endorsements: Endorsements, at: datetime) -> None:
    if endorsements.chain is not None:
        intermediates = load_certificates(endorsements.chain, what="AMD certificate chain (ASK/ASVK, ARK)")
    else:
        intermediates = _pinned_chain(vek.product, signing_key)
    if endorsements.root is not None:
        anchors = load_certificates(endorsements.root, what="root certificate")
    else:
        anchors = _pinned_chain(vek.product, signing_key)[-1:]
    verify_chain([vek.certificate, *intermediates], anchors, at)


def _pinned_chain(product: _Product, signing_key: _SigningKey) -> tuple[x509.Certificate, ...]:
    """AMD's ASK (or ASVK) then ARK for a product, as shipped with Umbra."""
    return load_pinned_certificates(_PINNED_CHAINS[product, signing_key])


def _verify_signature(report: _Report, vek: _Vek) -> None:
    signature = encode_dss_signature(
        int.from_bytes(report.signature_r, "little"), int.from_bytes(report.signature_s, "little")
    )
    try:
        vek.public_key.verify(signature, report.signed, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        raise AttestationError(
            Step.SIGNATURE, f"the report signature does not verify with the VEK {describe(vek.certificate)}"
        ) from None


def _check_chip_id(report: _Report, vek: _Vek) -> None:
    # A masked CHIP_ID is all zeros; then the VCEK signature alone ties the report to the chip.
    if vek.hwid is None or not any(report.chip_id):
        return
    if report.chip_id != vek.hwid.ljust(_CHIP_ID_SIZE, b"\0"):
        raise AttestationError(
            Step.BINDING,
            f"the report's chip id {report.chip_id.hex()} is not the chip of the VCEK (hwID {vek.hwid.hex()})",
        )


@lru_cache(maxsize=256)
def _load_vek(data: bytes) -> _Vek:
    """The first certificate of `data` read as a VEK. Cached: VEKs repeat across reports."""
    certificate = load_certificates(data, what="VEK certificate")[0]
    public_key = certificate.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp384r1":
        raise AttestationError(
            Step.CHAIN, f"the VEK {describe(certificate)} does not hold an ECDSA P-384 key"
        )
    product_name = _required_extension(certificate, _OID_PRODUCT_NAME, "productName")
    try:
        product = _Product(asn1.decode_der(asn1.IA5String, product_name).as_str().partition("-")[0])
    except ValueError:
        raise AttestationError(
            Step.CHAIN, f"the VEK names an unknown AMD product {product_name!r} (known: Milan, Genoa, Turin)"
        ) from None
    tcb = _Tcb(
        bootloader=_security_patch_level(certificate, _OID_BOOTLOADER_SPL, "blSPL"),
        tee=_security_patch_level(certificate, _OID_TEE_SPL, "teeSPL"),
        snp=_security_patch_level(certificate, _OID_SNP_SPL, "snpSPL"),
        microcode=_security_patch_level(certificate, _OID_MICROCODE_SPL, "ucodeSPL"),
        fmc=_security_patch_level(certificate, _OID_FMC_SPL, "fmcSPL") if product is _Product.TURIN else None,
    )
    return _Vek(certificate, public_key, product, tcb, _hwid(certificate))


def _security_patch_level(certificate: x509.Certificate, oid: x509.ObjectIdentifier, name: str) -> int:
    raw = _required_extension(certificate, oid, name)
    try:
        level = asn1.decode_der(int, raw)
    except ValueError:
        raise AttestationError(Step.CHAIN, f"the VEK's {name} extension is not a DER INTEGER") from None
    if not 0 <= level <= 0xFF:
        raise AttestationError(Step.CHAIN, f"the VEK's {name} extension is {level}, not a byte")
    return level


def _hwid(certificate: x509.Certificate) -> bytes | None:
    raw = _extension(certificate, _OID_HWID)
    if raw is None:
        return None
    # The KDS writes the chip id as bare bytes, not as the OCTET STRING the ASN.1 would call for;
    # accept either.
    if len(raw) not in _HWID_SIZES:
        try:
            raw = asn1.decode_der(bytes, raw)
        except ValueError:
            raise AttestationError(Step.CHAIN, "the VEK's hwID extension is malformed") from None
    if len(raw) not in _HWID_SIZES:
        raise AttestationError(Step.CHAIN, f"the VEK's hwID is {len(raw)} bytes, not 8 or 64")
    return raw


def _required_extension(certificate: x509.Certificate, oid: x509.ObjectIdentifier, name: str) -> bytes:
    raw = _extension(certificate, oid)
    if raw is None:
        raise AttestationError(Step.CHAIN, f"the VEK has no {name} extension ({oid.dotted_string})")
    return raw


def _extension(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    """The raw value of an AMD extension, None if absent."""
    try:
        extension = certificate.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        raise AttestationError(Step.CHAIN, f"the VEK's extensions are malformed: {exc}") from None
    if not isinstance(extension, x509.UnrecognizedExtension):
        raise AttestationError(Step.CHAIN, f"the VEK's extension {oid.dotted_string} has an unexpected type")
    return extension.value


def _verified_evidence(report: _Report, product: _Product) -> VerifiedEvidence:
    claims: dict[str, Any] = {
        "version": report.version,
        "product": product.value,
        "signing_key": report.signing_key.name.lower(),
        "guest_svn": report.guest_svn,
        "policy": report.policy,
        "vmpl": report.vmpl,
        "platform_info": report.platform_info,
        "author_key_enabled": bool(report.key_info & 1),
        "chip_id_masked": not any(report.chip_id),
        "reported_tcb": _Tcb.decode(report.reported_tcb, product).as_claim(),
        "current_tcb": _Tcb.decode(report.current_tcb, product).as_claim(),
        "committed_tcb": _Tcb.decode(report.committed_tcb, product).as_claim(),
        "launch_tcb": _Tcb.decode(report.launch_tcb, product).as_claim(),
        "current_firmware": f"{report.current_major}.{report.current_minor}.{report.current_build}",
        "committed_firmware": f"{report.committed_major}.{report.committed_minor}.{report.committed_build}",
    }
    if report.version >= _CPUID_FIELDS_SINCE:
        claims["cpuid"] = {
            "family": report.cpuid_family,
            "model": report.cpuid_model,
            "stepping": report.cpuid_stepping,
        }
    if report.version >= _MITIGATION_VECTORS_SINCE:
        claims["launch_mit_vector"] = report.launch_mit_vector
        claims["current_mit_vector"] = report.current_mit_vector
    measurements = {
        "measurement": report.measurement.hex(),
        "host_data": report.host_data.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "report_id": report.report_id.hex(),
        "report_id_ma": report.report_id_ma.hex(),
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "chip_id": report.chip_id.hex(),
    }
    return VerifiedEvidence(
        tee_type=SevSnpVerifier.tee_type,
        platform="sev-snp",
        measurements=measurements,
        report_data=report.report_data,
        debug=report.debug,
        # REPORT_DATA is the report's only freshness field: an expected nonce must equal all 64 bytes.
        nonce=report.report_data,
        claims=claims,
    )
