"""SEV-SNP verification: the shared AMD vectors, then a synthetic AMD PKI for what they lack.

Real reports cannot be re-signed, so the TCB, chip-id, VLEK, Turin and version branches run
against a test ARK/ASK/ASVK (RSA-PSS, like AMD's) and VEKs issued by them, passed as
`Endorsements.root`/`chain`. The synthetic reports are laid out here from the ABI offsets, not
with the verifier's own layout, so the two cross-check each other.
"""

from __future__ import annotations

import os
import random
import struct
import warnings
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import VECTORS, load_cases
from umbra.tee import AttestationError, Endorsements, Verdict, verify_at_time
from umbra.tee._roots import load_root
from umbra.tee._sev_snp import SevSnpVerifier, _load_vek
from umbra.tee._x509 import _parse_certificates, load_certificates

SNP_CASES = [case for case in load_cases() if case["type"] == "sev-snp"]
# The step that must refuse each negative case, per its source_expectation note.
EXPECTED_STEPS = {
    "snp/go-sev-guest/milan_vcek": "debug",  # policy 0xB0000 has DEBUG (bit 19) set
    "snp/virtee/BAD_report_byte21": "signature",
    "snp/virtee/BAD_vcek_byte40": "chain",
}


def read_vector(name: str) -> bytes:
    data = (VECTORS / name).read_bytes()
    return bytes.fromhex(data.decode()) if name.endswith(".hex") else data


def case_inputs(case: dict[str, Any]) -> tuple[bytes, Endorsements, datetime]:
    endorsements = Endorsements(
        vek=read_vector(case["vek"]),
        chain=read_vector(case["chain"]) if case.get("chain") else None,
        root=read_vector(case["root"]) if case.get("root") else None,
    )
    at = datetime.fromisoformat(case["at"]) if case["at"] else datetime.now(UTC)
    return read_vector(case["evidence"]), endorsements, at


def case_named(case_id: str) -> dict[str, Any]:
    return next(case for case in SNP_CASES if case["id"] == case_id)


# --- the shared vectors ----------------------------------------------------------------------------


def test_every_negative_case_has_an_expected_step() -> None:
    assert {case["id"] for case in SNP_CASES if not case["expect"]["ok"]} == set(EXPECTED_STEPS)


@pytest.mark.parametrize("case", SNP_CASES, ids=[case["id"] for case in SNP_CASES])
def test_vector_case(case: dict[str, Any]) -> None:
    evidence, endorsements, at = case_inputs(case)
    nonce = bytes.fromhex(case["nonce"]) if case.get("nonce") else None
    verdict = verify_at_time(
        "sev-snp", evidence, endorsements, at, allow_debug=case["allow_debug"], nonce=nonce
    )
    assert verdict.ok is case["expect"]["ok"], verdict.error
    assert verdict.step == EXPECTED_STEPS.get(case["id"])


def test_go_sev_guest_report_verifies_when_debug_is_allowed() -> None:
    # Its crypto, chain (at 2024-01-01) and TCB all hold; only the DEBUG policy bit refuses it.
    evidence, endorsements, at = case_inputs(case_named("snp/go-sev-guest/milan_vcek"))
    verdict = verify_at_time("sev-snp", evidence, endorsements, at, allow_debug=True)
    assert verdict.ok, verdict.error
    assert verdict.debug is True
    assert verdict.claims["policy"] == 0xB0000
    assert verdict.claims["product"] == "Milan"
    assert verdict.claims["reported_tcb"] == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    assert verdict.report_data == "0102030405" + "00" * 59
    refused = verify_at_time("sev-snp", evidence, endorsements, at)
    assert (refused.ok, refused.step, refused.debug) == (False, "debug", True)
    assert refused.measurements == verdict.measurements


def test_virtee_report_fields() -> None:
    evidence, endorsements, at = case_inputs(case_named("snp/virtee/milan_report"))
    verdict = verify_at_time("sev-snp", evidence, endorsements, at)
    assert verdict.ok, verdict.error
    assert (verdict.status, verdict.debug, verdict.platform) == (None, False, "sev-snp")
    assert verdict.measurements["measurement"] == evidence[0x90:0xC0].hex()
    assert verdict.measurements["chip_id"] == evidence[0x1A0:0x1E0].hex()
    assert verdict.claims["reported_tcb"] == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert verdict.claims["signing_key"] == "vcek"
    assert verdict.evidence is not None and verdict.evidence.nonce == evidence[0x50:0x90]


@cache
def virtee() -> tuple[bytes, Endorsements, datetime]:
    return case_inputs(case_named("snp/virtee/milan_report"))


def test_pinned_amd_chain_is_used_when_no_chain_is_given() -> None:
    evidence, endorsements, at = virtee()
    assert verify_at_time("sev-snp", evidence, replace(endorsements, chain=None), at).ok


def test_vek_may_be_pem() -> None:
    evidence, endorsements, at = virtee()
    assert endorsements.vek is not None
    pem = load_certificates(endorsements.vek, what="vek")[0].public_bytes(serialization.Encoding.PEM)
    assert verify_at_time("sev-snp", evidence, replace(endorsements, vek=pem), at).ok


@pytest.mark.parametrize("trailer", [b"\0" * 64, os.urandom(3000)], ids=["zeros", "random"])
def test_trailing_bytes_are_ignored(trailer: bytes) -> None:
    evidence, endorsements, at = virtee()
    assert verify_at_time("sev-snp", evidence + trailer, endorsements, at).ok


@pytest.mark.parametrize(
    ("at", "reason"),
    [(datetime(2060, 1, 1, tzinfo=UTC), "expired"), (datetime(2023, 1, 1, tzinfo=UTC), "not valid before")],
)
def test_certificates_are_judged_at_the_verification_time(at: datetime, reason: str) -> None:
    evidence, endorsements, _ = virtee()
    verdict = verify_at_time("sev-snp", evidence, endorsements, at)
    assert (verdict.ok, verdict.step) == (False, "chain")
    assert reason in (verdict.error or "")


@pytest.mark.parametrize(
    "root",
    [
        load_certificates(load_root("amd/ask_ark_genoa.pem"), what="genoa")[-1].public_bytes(
            serialization.Encoding.DER
        ),
        load_root("nvidia_device_identity_ca.pem"),
    ],
    ids=["genoa-ark", "nvidia-root"],
)
def test_a_wrong_root_fails_at_the_chain(root: bytes) -> None:
    evidence, endorsements, at = virtee()
    verdict = verify_at_time("sev-snp", evidence, replace(endorsements, root=root), at)
    assert (verdict.ok, verdict.step) == (False, "chain")


def test_a_vek_is_required() -> None:
    evidence, endorsements, at = virtee()
    verdict = verify_at_time("sev-snp", evidence, replace(endorsements, vek=None), at)
    assert (verdict.ok, verdict.step) == (False, "chain")


def test_amd_serial_zero_warning_is_silenced() -> None:
    # AMD VCEKs have serial number 0, which cryptography warns about on loading.
    evidence, endorsements, at = virtee()
    _parse_certificates.cache_clear()
    _load_vek.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SevSnpVerifier().verify_at_time(evidence, endorsements, at)


# --- hostile input: always a clean AttestationError ------------------------------------------------


def refuses(evidence: bytes, endorsements: Endorsements | None = None) -> AttestationError:
    _, good_endorsements, at = virtee()
    with pytest.raises(AttestationError) as refusal:
        SevSnpVerifier().verify_at_time(evidence, endorsements or good_endorsements, at)
    return refusal.value


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 0x4A0 - 1))
def test_truncated_reports_are_refused(length: int) -> None:
    assert refuses(virtee()[0][:length]).step == "parse"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 0x32F), st.integers(1, 255)),
        min_size=1,
        max_size=6,
        unique_by=lambda f: f[0],
    )
)
def test_flipped_signed_bytes_are_refused(flips: list[tuple[int, int]]) -> None:
    # 0x0-0x29F is signed and 0x2A0-0x32F holds r and s; beyond is unsigned reserved space.
    report = bytearray(virtee()[0])
    for offset, mask in flips:
        report[offset] ^= mask
    refuses(bytes(report))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2 * 0x4A0))
def test_random_evidence_is_refused(evidence: bytes) -> None:
    refuses(evidence)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2048), st.sampled_from(["vek", "chain", "root"]))
def test_random_endorsements_are_refused(garbage: bytes, field: str) -> None:
    _, endorsements, _ = virtee()
    assert refuses(virtee()[0], replace(endorsements, **{field: garbage})).step == "chain"


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1359), st.integers(1, 255)), min_size=1, max_size=4, unique_by=lambda f: f[0]
    )
)
def test_flipped_vek_bytes_are_refused(flips: list[tuple[int, int]]) -> None:
    # Every byte of a certificate is either signed or checked against what is signed.
    evidence, endorsements, _ = virtee()
    vek = bytearray(endorsements.vek or b"")
    assert len(vek) == 1360
    for offset, mask in flips:
        vek[offset] ^= mask
    refuses(evidence, replace(endorsements, vek=bytes(vek)))


@pytest.mark.parametrize(
    "evidence",
    [b"", b"\0" * (2 << 20), random.Random(2).randbytes(2 << 20)],
    ids=["empty", "zeros", "random"],
)
def test_empty_and_oversized_evidence_is_refused(evidence: bytes) -> None:
    refuses(evidence)


# --- a synthetic AMD PKI -------------------------------------------------------------------------

AT = datetime(2025, 6, 1, tzinfo=UTC)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
CHIP_ID = bytes(range(1, 65))
TURIN_CHIP_ID = bytes(range(1, 9))
LEGACY_TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
TURIN_TCB = {"fmc": 1, "bootloader": 4, "tee": 1, "snp": 9, "microcode": 70}
AMD_OID = "1.3.6.1.4.1.3704.1."


def amd_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
        ]
    )


def issue(
    subject: str,
    public_key: CertificateIssuerPublicKeyTypes,
    issuer: str,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    *,
    ca: bool,
    path_length: int | None = None,
    extensions: dict[str, bytes] | None = None,
    not_after: datetime = datetime(2040, 1, 1, tzinfo=UTC),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(amd_name(subject))
        .issuer_name(amd_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2024, 1, 1, tzinfo=UTC))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    )
    for oid, value in (extensions or {}).items():
        builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), False)
    rsa_padding = PSS if isinstance(issuer_key, rsa.RSAPrivateKey) else None
    return builder.sign(issuer_key, hashes.SHA384(), rsa_padding=rsa_padding)


@dataclass(frozen=True)
class Pki:
    ark: x509.Certificate
    ark_key: rsa.RSAPrivateKey
    ask: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    asvk: x509.Certificate
    asvk_key: rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def pki() -> Pki:
    ark_key, ask_key, asvk_key = (rsa.generate_private_key(65537, 2048) for _ in range(3))
    ark = issue("ARK-Test", ark_key.public_key(), "ARK-Test", ark_key, ca=True)
    ask = issue("SEV-Test", ask_key.public_key(), "ARK-Test", ark_key, ca=True, path_length=0)
    asvk = issue("SEV-VLEK-Test", asvk_key.public_key(), "ARK-Test", ark_key, ca=True, path_length=0)
    return Pki(ark, ark_key, ask, ask_key, asvk, asvk_key)


def vek_extensions(product: str, tcb: dict[str, int], hwid: bytes | None) -> dict[str, bytes]:
    spl_oids = {"bootloader": "3.1", "tee": "3.2", "snp": "3.3", "microcode": "3.8", "fmc": "3.9"}
    extensions = {AMD_OID + "2": asn1.encode_der(asn1.IA5String(product))}
    extensions |= {AMD_OID + spl_oids[name]: asn1.encode_der(level) for name, level in tcb.items()}
    if hwid is not None:
        extensions[AMD_OID + "4"] = hwid  # bare bytes, as AMD's KDS writes it
    return extensions


def make_vek(
    pki: Pki,
    *,
    product: str = "Milan-B0",
    tcb: dict[str, int] | None = None,
    hwid: bytes | None = CHIP_ID,
    vlek: bool = False,
    key: ec.EllipticCurvePrivateKey | None = None,
    not_after: datetime = datetime(2040, 1, 1, tzinfo=UTC),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = key or ec.generate_private_key(ec.SECP384R1())
    issuer, issuer_key = (pki.asvk, pki.asvk_key) if vlek else (pki.ask, pki.ask_key)
    extensions = vek_extensions(product, LEGACY_TCB if tcb is None else tcb, hwid)
    subject = "SEV-VLEK" if vlek else "SEV-VCEK"
    vek = issue(
        subject,
        key.public_key(),
        describe_name(issuer),
        issuer_key,
        ca=False,
        extensions=extensions,
        not_after=not_after,
    )
    return vek, key


def describe_name(certificate: x509.Certificate) -> str:
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def legacy_tcb(tcb: dict[str, int]) -> bytes:
    return bytes([tcb["bootloader"], tcb["tee"], 0, 0, 0, 0, tcb["snp"], tcb["microcode"]])


def turin_tcb(tcb: dict[str, int]) -> bytes:
    return bytes([tcb["fmc"], tcb["bootloader"], tcb["tee"], tcb["snp"], 0, 0, 0, tcb["microcode"]])


@dataclass(frozen=True)
class ReportSpec:
    version: int = 2
    policy: int = 0x30000
    signing_key: int = 0
    mask_chip_key: bool = False
    signature_algo: int = 1
    tcb: bytes = legacy_tcb(LEGACY_TCB)
    chip_id: bytes = CHIP_ID
    cpuid: bytes = bytes(3)
    mitigation_vectors: tuple[int, int] = (0, 0)
    report_data: bytes = bytes(range(64))
    measurement: bytes = bytes(range(100, 148))


def build_report(spec: ReportSpec, key: ec.EllipticCurvePrivateKey) -> bytes:
    report = bytearray(0x4A0)
    struct.pack_into("<IIQ", report, 0x00, spec.version, 5, spec.policy)
    struct.pack_into("<II", report, 0x30, 0, spec.signature_algo)
    report[0x38:0x40] = spec.tcb  # CURRENT_TCB
    struct.pack_into("<I", report, 0x48, spec.signing_key << 2 | spec.mask_chip_key << 1)
    report[0x50:0x90] = spec.report_data
    report[0x90:0xC0] = spec.measurement
    report[0x180:0x188] = spec.tcb  # REPORTED_TCB
    report[0x188:0x18B] = spec.cpuid
    report[0x1A0:0x1E0] = spec.chip_id.ljust(64, b"\0")
    report[0x1E0:0x1E8] = spec.tcb  # COMMITTED_TCB
    report[0x1E8:0x1EB] = bytes([21, 55, 1])  # build, minor, major
    report[0x1F0:0x1F8] = spec.tcb  # LAUNCH_TCB
    struct.pack_into("<QQ", report, 0x1F8, *spec.mitigation_vectors)
    r, s = decode_dss_signature(key.sign(bytes(report[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    report[0x2A0:0x2E8] = r.to_bytes(72, "little")
    report[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(report)


def pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(certificate.public_bytes(serialization.Encoding.PEM) for certificate in certificates)


def verify_synthetic(
    pki: Pki,
    report: bytes,
    vek: x509.Certificate,
    *,
    vlek: bool = False,
    at: datetime = AT,
    allow_debug: bool = False,
    chain: bytes | None = None,
) -> Verdict:
    endorsements = Endorsements(
        vek=vek.public_bytes(serialization.Encoding.DER),
        chain=chain if chain is not None else pem(pki.asvk if vlek else pki.ask, pki.ark),
        root=pem(pki.ark),
    )
    return verify_at_time("sev-snp", report, endorsements, at, allow_debug=allow_debug)


def test_synthetic_vcek_report_verifies(pki: Pki) -> None:
    vek, key = make_vek(pki)
    verdict = verify_synthetic(pki, build_report(ReportSpec(), key), vek)
    assert verdict.ok, verdict.error
    assert verdict.measurements["measurement"] == bytes(range(100, 148)).hex()
    assert verdict.claims["reported_tcb"] == LEGACY_TCB
    assert verdict.claims["current_firmware"] == "1.55.21"
    assert "cpuid" not in verdict.claims and "launch_mit_vector" not in verdict.claims


@pytest.mark.parametrize("component", ["bootloader", "tee", "snp", "microcode"])
def test_reported_tcb_must_be_the_vek_tcb(pki: Pki, component: str) -> None:
    vek, key = make_vek(pki, tcb={**LEGACY_TCB, component: LEGACY_TCB[component] + 1})
    verdict = verify_synthetic(pki, build_report(ReportSpec(), key), vek)
    assert (verdict.ok, verdict.step) == (False, "tcb")
    assert component in (verdict.error or "")


def test_chip_id_must_be_the_vcek_chip(pki: Pki) -> None:
    vek, key = make_vek(pki)
    verdict = verify_synthetic(pki, build_report(ReportSpec(chip_id=bytes(reversed(CHIP_ID))), key), vek)
    assert (verdict.ok, verdict.step) == (False, "binding")
    assert "chip" in (verdict.error or "")


def test_a_masked_chip_id_is_accepted(pki: Pki) -> None:
    vek, key = make_vek(pki)
    verdict = verify_synthetic(pki, build_report(ReportSpec(chip_id=bytes(64)), key), vek)
    assert verdict.ok, verdict.error
    assert verdict.claims["chip_id_masked"] is True


def test_hwid_may_be_a_der_octet_string(pki: Pki) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    vek = issue(
        "SEV-VCEK",
        key.public_key(),
        "SEV-Test",
        pki.ask_key,
        ca=False,
        extensions={**vek_extensions("Milan-B0", LEGACY_TCB, None), AMD_OID + "4": asn1.encode_der(CHIP_ID)},
    )
    assert verify_synthetic(pki, build_report(ReportSpec(), key), vek).ok


def test_vlek_report_verifies_without_a_chip_binding(pki: Pki) -> None:
    vek, key = make_vek(pki, hwid=None, vlek=True)
    verdict = verify_synthetic(pki, build_report(ReportSpec(signing_key=1), key), vek, vlek=True)
    assert verdict.ok, verdict.error
    assert verdict.claims["signing_key"] == "vlek"


def test_vlek_report_with_a_vcek_is_refused(pki: Pki) -> None:
    vek, key = make_vek(pki)
    verdict = verify_synthetic(pki, build_report(ReportSpec(signing_key=1), key), vek)
    assert (verdict.ok, verdict.step) == (False, "binding")


def test_vcek_report_with_a_vlek_is_refused(pki: Pki) -> None:
    vek, key = make_vek(pki, hwid=None, vlek=True)
    verdict = verify_synthetic(pki, build_report(ReportSpec(), key), vek, vlek=True)
    assert (verdict.ok, verdict.step) == (False, "binding")


def test_a_vlek_must_chain_through_the_asvk(pki: Pki) -> None:
    vek, key = make_vek(pki, hwid=None, vlek=True)
    verdict = verify_synthetic(
        pki, build_report(ReportSpec(signing_key=1), key), vek, chain=pem(pki.ask, pki.ark)
    )
    assert (verdict.ok, verdict.step) == (False, "chain")


def test_debug_is_reported_and_judged_by_the_facade(pki: Pki) -> None:
    vek, key = make_vek(pki)
    report = build_report(ReportSpec(policy=0x30000 | 1 << 19), key)
    refused = verify_synthetic(pki, report, vek)
    assert (refused.ok, refused.step, refused.debug) == (False, "debug", True)
    allowed = verify_synthetic(pki, report, vek, allow_debug=True)
    assert (allowed.ok, allowed.debug) == (True, True)


def test_debug_is_reported_on_other_refusals(pki: Pki) -> None:
    vek, key = make_vek(pki, tcb={**LEGACY_TCB, "snp": 1})
    verdict = verify_synthetic(pki, build_report(ReportSpec(policy=0x30000 | 1 << 19), key), vek)
    assert (verdict.ok, verdict.step, verdict.debug) == (False, "tcb", True)


def turin_report(**changes: Any) -> ReportSpec:
    spec = ReportSpec(
        version=3, tcb=turin_tcb(TURIN_TCB), chip_id=TURIN_CHIP_ID, cpuid=bytes([0x1A, 0x02, 0x01])
    )
    return replace(spec, **changes)


def test_turin_v3_report_uses_the_turin_tcb_layout(pki: Pki) -> None:
    vek, key = make_vek(pki, product="Turin-B0", tcb=TURIN_TCB, hwid=TURIN_CHIP_ID)
    verdict = verify_synthetic(pki, build_report(turin_report(), key), vek)
    assert verdict.ok, verdict.error
    assert verdict.claims["product"] == "Turin"
    assert verdict.claims["reported_tcb"] == TURIN_TCB
    assert verdict.claims["cpuid"] == {"family": 0x1A, "model": 0x02, "stepping": 0x01}


def test_turin_fmc_level_is_compared(pki: Pki) -> None:
    vek, key = make_vek(pki, product="Turin-B0", tcb={**TURIN_TCB, "fmc": 2}, hwid=TURIN_CHIP_ID)
    verdict = verify_synthetic(pki, build_report(turin_report(), key), vek)
    assert (verdict.ok, verdict.step) == (False, "tcb")
    assert "fmc" in (verdict.error or "")


def test_turin_vek_needs_an_fmc_level(pki: Pki) -> None:
    vek, key = make_vek(pki, product="Turin-B0", tcb=LEGACY_TCB, hwid=TURIN_CHIP_ID)
    verdict = verify_synthetic(pki, build_report(turin_report(), key), vek)
    assert (verdict.ok, verdict.step) == (False, "chain")


def test_cpuid_product_must_match_the_vek(pki: Pki) -> None:
    vek, key = make_vek(pki)  # Milan
    spec = replace(ReportSpec(version=3), cpuid=bytes([0x19, 0x11, 0x01]))  # Genoa
    verdict = verify_synthetic(pki, build_report(spec, key), vek)
    assert (verdict.ok, verdict.step) == (False, "binding")


def test_v5_report_carries_mitigation_vectors(pki: Pki) -> None:
    vek, key = make_vek(pki, product="Genoa", tcb=LEGACY_TCB)
    spec = ReportSpec(version=5, cpuid=bytes([0x19, 0x11, 0x01]), mitigation_vectors=(3, 7))
    verdict = verify_synthetic(pki, build_report(spec, key), vek)
    assert verdict.ok, verdict.error
    assert (verdict.claims["launch_mit_vector"], verdict.claims["current_mit_vector"]) == (3, 7)


@pytest.mark.parametrize(
    "spec",
    [ReportSpec(version=1), ReportSpec(version=6), ReportSpec(signature_algo=2), ReportSpec(signing_key=3)],
    ids=["version-1", "version-6", "algorithm", "reserved-signing-key"],
)
def test_unknown_report_formats_are_refused_at_parse(pki: Pki, spec: ReportSpec) -> None:
    vek, key = make_vek(pki)
    verdict = verify_synthetic(pki, build_report(spec, key), vek)
    assert (verdict.ok, verdict.step) == (False, "parse")


@pytest.mark.parametrize(
    "spec", [ReportSpec(signing_key=7), ReportSpec(mask_chip_key=True)], ids=["no-key", "masked-key"]
)
def test_unsigned_reports_are_refused(pki: Pki, spec: ReportSpec) -> None:
    vek, key = make_vek(pki)
    verdict = verify_synthetic(pki, build_report(spec, key), vek)
    assert (verdict.ok, verdict.step) == (False, "signature")


def test_a_report_signed_by_another_key_is_refused(pki: Pki) -> None:
    vek, _ = make_vek(pki)
    verdict = verify_synthetic(pki, build_report(ReportSpec(), ec.generate_private_key(ec.SECP384R1())), vek)
    assert (verdict.ok, verdict.step) == (False, "signature")


def test_vek_must_hold_a_p384_key(pki: Pki) -> None:
    vek, _ = make_vek(pki, key=ec.generate_private_key(ec.SECP256R1()))
    verdict = verify_synthetic(pki, build_report(ReportSpec(), ec.generate_private_key(ec.SECP384R1())), vek)
    assert (verdict.ok, verdict.step) == (False, "chain")


def test_an_expired_vek_is_refused(pki: Pki) -> None:
    vek, key = make_vek(pki, not_after=AT - timedelta(days=1))
    verdict = verify_synthetic(pki, build_report(ReportSpec(), key), vek)
    assert (verdict.ok, verdict.step) == (False, "chain")
    assert "expired" in (verdict.error or "")


def test_an_issuer_must_be_a_ca(pki: Pki) -> None:
    not_ca = issue("SEV-Test", pki.ask_key.public_key(), "ARK-Test", pki.ark_key, ca=False)
    vek, key = make_vek(pki)
    verdict = verify_synthetic(pki, build_report(ReportSpec(), key), vek, chain=pem(not_ca, pki.ark))
    assert (verdict.ok, verdict.step) == (False, "chain")
    assert "not a CA" in (verdict.error or "")


def test_path_length_constraints_hold(pki: Pki) -> None:
    # The ASK allows no CA below it, so an extra intermediate under it breaks the chain.
    extra_key = rsa.generate_private_key(65537, 2048)
    extra = issue("SEV-Extra", extra_key.public_key(), "SEV-Test", pki.ask_key, ca=True)
    key = ec.generate_private_key(ec.SECP384R1())
    extensions = vek_extensions("Milan-B0", LEGACY_TCB, CHIP_ID)
    vek = issue("SEV-VCEK", key.public_key(), "SEV-Extra", extra_key, ca=False, extensions=extensions)
    verdict = verify_synthetic(pki, build_report(ReportSpec(), key), vek, chain=pem(extra, pki.ask, pki.ark))
    assert (verdict.ok, verdict.step) == (False, "chain")
    assert "intermediate" in (verdict.error or "")


def test_a_cached_chain_does_not_vouch_for_another_root(pki: Pki) -> None:
    vek, key = make_vek(pki)
    report = build_report(ReportSpec(), key)
    assert verify_synthetic(pki, report, vek).ok
    other_key = rsa.generate_private_key(65537, 2048)
    impostor = issue("ARK-Test", other_key.public_key(), "ARK-Test", other_key, ca=True)  # same name
    # The ASK -> ARK link verified above; the cache must not carry it over to a same-named root.
    endorsements = Endorsements(
        vek=vek.public_bytes(serialization.Encoding.DER), chain=pem(pki.ask), root=pem(impostor)
    )
    verdict = verify_at_time("sev-snp", report, endorsements, AT)
    assert (verdict.ok, verdict.step) == (False, "chain")
