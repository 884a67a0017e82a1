"""NVIDIA GPU (SPDM GET_MEASUREMENTS) verification: the nvtrust Hopper sample, then synthetic reports.

The synthetic reports are signed by a test device key under a test root passed as
`Endorsements.root`, which reaches the branches a real report cannot (FWID mismatch, other SPDM
versions, malformed records). They are assembled here from DSP0274 field by field, independently
of the verifier's parser.
"""

from __future__ import annotations

import base64
import os
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509 import load_pem_x509_certificate
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import VECTORS, load_cases
from umbra.tee import AttestationError, Endorsements, Verdict, verify_at_time
from umbra.tee._nvidia import NvidiaGpuVerifier
from umbra.tee._roots import load_root

NVIDIA_CASES = [case for case in load_cases() if case["type"] == "nvidia-gpu"]
EXPECTED_STEPS = {
    # byte 100 is the index of measurement block 2; flipped it repeats index 3, which the parser
    # refuses before the signature (which would fail too) is checked.
    "nvidia/BAD_report_tampered": "parse",
    "nvidia/BAD_nonce_mismatch": "nonce",
}
SAMPLE_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
NOW = datetime.now(UTC)


@cache
def sample() -> tuple[bytes, Endorsements]:
    """The nvtrust Hopper report (hex text, as shipped) and its certificate chain."""
    evidence = (VECTORS / "nvidia-gpu/nvtrust/hopperAttestationReport.txt").read_bytes()
    return evidence, Endorsements(chain=(VECTORS / "nvidia-gpu/nvtrust/hopperCertChain.txt").read_bytes())


def sample_raw() -> bytes:
    return bytes.fromhex(sample()[0].decode())


# --- the shared vectors ----------------------------------------------------------------------------


def test_every_negative_case_has_an_expected_step() -> None:
    assert {case["id"] for case in NVIDIA_CASES if not case["expect"]["ok"]} == set(EXPECTED_STEPS)


@pytest.mark.parametrize("case", NVIDIA_CASES, ids=[case["id"] for case in NVIDIA_CASES])
def test_vector_case(case: dict[str, Any]) -> None:
    evidence = (VECTORS / case["evidence"]).read_bytes()
    endorsements = Endorsements(chain=(VECTORS / case["chain"]).read_bytes())
    at = datetime.fromisoformat(case["at"]) if case["at"] else NOW
    nonce = bytes.fromhex(case["nonce"]) if case.get("nonce") else None
    verdict = verify_at_time(
        "nvidia-gpu", evidence, endorsements, at, allow_debug=case["allow_debug"], nonce=nonce
    )
    assert verdict.ok is case["expect"]["ok"], verdict.error
    assert verdict.step == EXPECTED_STEPS.get(case["id"])


def test_hopper_sample_fields() -> None:
    evidence, endorsements = sample()
    verdict = verify_at_time("nvidia-gpu", evidence, endorsements, NOW, nonce=SAMPLE_NONCE)
    assert verdict.ok, verdict.error
    assert (verdict.platform, verdict.debug, verdict.status) == ("nvidia-gpu", False, None)
    assert verdict.report_data == SAMPLE_NONCE.hex()
    assert len(verdict.measurements) == 64
    assert verdict.measurements["2"] == (
        "8048dfd18fe229bf16eb9d30cca0f11a24dafe6eb731de1462984645a0b189b77c4e4e17de727a5e19e3d07de51da338"
    )
    assert verdict.measurements["1"] == "00" * 48
    claims = verdict.claims
    assert claims["driver_version"] == "550.90.07"
    assert claims["vbios_version"] == "96.00.9F.00.01"
    assert claims["fwid"].startswith("f5c384aebb579217")
    assert (claims["project"], claims["project_sku"], claims["chip_sku"]) == ("1010", "0200", "882")
    assert claims["measurement_counts"][:4] == [0, 1, 4, 1]
    assert claims["spdm_version"] == "1.1"


@pytest.mark.parametrize(
    "evidence",
    [
        sample_raw(),
        sample()[0].upper(),
        b"\n".join(sample()[0][i : i + 64] for i in range(0, len(sample()[0]), 64)) + b"\n",
        sample_raw() + b"\0" * 40,
        sample_raw() + os.urandom(500),
    ],
    ids=["raw", "upper-hex", "wrapped-hex", "trailing-zeros", "trailing-random"],
)
def test_evidence_forms_and_trailing_bytes(evidence: bytes) -> None:
    assert verify_at_time("nvidia-gpu", evidence, sample()[1], NOW, nonce=SAMPLE_NONCE).ok


def test_a_changed_measurement_value_fails_the_signature() -> None:
    report = bytearray(sample_raw())
    report[37 + 8 + 55 + 7 + 10] ^= 0x01  # inside the value of measurement block 2
    verdict = verify_at_time("nvidia-gpu", bytes(report), sample()[1], NOW)
    assert (verdict.ok, verdict.step, verdict.debug) == (False, "signature", False)


def test_certificates_are_judged_at_the_verification_time() -> None:
    # The sample chain is valid until 9999; its provisioner CA only from 2022-03-01.
    verdict = verify_at_time("nvidia-gpu", sample()[0], sample()[1], datetime(2021, 6, 1, tzinfo=UTC))
    assert (verdict.ok, verdict.step) == (False, "chain")
    assert "not valid before" in (verdict.error or "")


def test_a_wrong_root_fails_at_the_chain() -> None:
    root = load_root("amd/ask_ark_milan.pem")
    verdict = verify_at_time("nvidia-gpu", sample()[0], replace(sample()[1], root=root), NOW)
    assert (verdict.ok, verdict.step) == (False, "chain")


def test_the_pinned_root_may_be_given_explicitly() -> None:
    endorsements = replace(sample()[1], root=load_root("nvidia_device_identity_ca.pem"))
    assert verify_at_time("nvidia-gpu", sample()[0], endorsements, NOW).ok


def sample_chain() -> list[bytes]:
    text = sample()[1].chain or b""
    return [block + b"-----END CERTIFICATE-----\n" for block in text.split(b"-----END CERTIFICATE-----")[:-1]]


@pytest.mark.parametrize(
    "chain",
    [
        None,
        sample_chain()[0],
        b"".join(reversed(sample_chain())),
        b"".join(sample_chain()[:2] + sample_chain()[3:]),
    ],
    ids=["missing", "leaf-only", "reversed", "gap"],
)
def test_an_incomplete_chain_is_refused(chain: bytes | None) -> None:
    verdict = verify_at_time("nvidia-gpu", sample()[0], Endorsements(chain=chain), NOW)
    assert (verdict.ok, verdict.step) == (False, "chain")


def test_the_chain_may_stop_below_the_root() -> None:
    chain = b"".join(sample_chain()[:-1])
    assert verify_at_time("nvidia-gpu", sample()[0], Endorsements(chain=chain), NOW).ok


# --- hostile input: always a clean AttestationError ------------------------------------------------


def refuses(evidence: bytes) -> AttestationError:
    with pytest.raises(AttestationError) as refusal:
        NvidiaGpuVerifier().verify_at_time(evidence, sample()[1], NOW)
    return refusal.value


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 4116))
def test_truncated_reports_are_refused(length: int) -> None:
    assert refuses(sample_raw()[:length]).step == "parse"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4116), st.integers(1, 255)), min_size=1, max_size=6, unique_by=lambda f: f[0]
    )
)
def test_flipped_bytes_are_refused(flips: list[tuple[int, int]]) -> None:
    report = bytearray(sample_raw())
    for offset, mask in flips:
        report[offset] ^= mask
    refuses(bytes(report))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000) | st.text("0123456789abcdef \n", max_size=5000).map(str.encode))
def test_random_evidence_is_refused(evidence: bytes) -> None:
    refuses(evidence)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_flipped_certificate_bytes_are_refused(data: st.DataObject) -> None:
    ders = [
        bytearray(load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER))
        for pem in sample_chain()
    ]
    target = data.draw(st.sampled_from(ders))
    positions = st.integers(0, len(target) - 1)
    flips = data.draw(
        st.lists(st.tuples(positions, st.integers(1, 255)), min_size=1, max_size=4, unique_by=lambda f: f[0])
    )
    for offset, mask in flips:
        target[offset] ^= mask
    chain = b"".join(pem_block(bytes(der)) for der in ders)
    with pytest.raises(AttestationError):
        NvidiaGpuVerifier().verify_at_time(sample_raw(), Endorsements(chain=chain), NOW)


def pem_block(der: bytes) -> bytes:
    return b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    "evidence",
    [b"", b"\0" * (2 << 20), random.Random(1).randbytes(2 << 20)],
    ids=["empty", "zeros", "random"],
)
def test_empty_and_oversized_evidence_is_refused(evidence: bytes) -> None:
    refuses(evidence)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from(["chain", "root"]))
def test_random_endorsements_are_refused(garbage: bytes, field: str) -> None:
    with pytest.raises(AttestationError) as refusal:
        NvidiaGpuVerifier().verify_at_time(sample_raw(), replace(sample()[1], **{field: garbage}), NOW)
    assert refusal.value.step == "chain"


# --- synthetic reports -----------------------------------------------------------------------------

AT = datetime(2025, 6, 1, tzinfo=UTC)
FWID = bytes(range(48))
SHA384_OID = bytes.fromhex("0609608648016503040202")
NONCE = bytes(range(32))


def der(tag: int, body: bytes) -> bytes:
    size = len(body)
    length = (
        bytes([size])
        if size < 0x80
        else bytes([0x80 | (size.bit_length() + 7) // 8]) + size.to_bytes((size.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + length + body


def fwid_extension(key: ec.EllipticCurvePrivateKey, fwid: bytes) -> bytes:
    """NVIDIA's form: SEQUENCE { INTEGER 1, SubjectPublicKeyInfo, SEQUENCE { sha384, OCTET STRING } }."""
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der(0x30, der(0x02, b"\x01") + spki + der(0x30, SHA384_OID + der(0x04, fwid)))


def issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    fwid: bytes | None = None,
    not_after: datetime = datetime(2040, 1, 1, tzinfo=UTC),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2024, 1, 1, tzinfo=UTC))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if fwid is not None:
        oid = x509.ObjectIdentifier("2.23.133.5.4.1")
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, fwid_extension(key, fwid)), False)
    return builder.sign(issuer_key, hashes.SHA384())


def spdm_report(
    key: ec.EllipticCurvePrivateKey,
    *,
    blocks: list[tuple[int, bytes]] | None = None,
    opaque: list[tuple[int, bytes]] | None = None,
    version: int = 0x11,
    attributes: int = 0x01,
    response_code: int = 0x60,
    block_count: int | None = None,
    record_trailer: bytes = b"",
    specification: int = 0x01,
) -> bytes:
    blocks = [(1, bytes(48)), (2, bytes([7]) * 48)] if blocks is None else blocks
    opaque = [(3, b"999.1.2\0"), (20, FWID)] if opaque is None else opaque
    request = bytes([version, 0xE0, attributes, 0xFF]) + NONCE + b"\0"
    record = b"".join(
        bytes([index, specification])
        + (3 + len(value)).to_bytes(2, "little")
        + b"\x01"
        + len(value).to_bytes(2, "little")
        + value
        for index, value in blocks
    )
    record += record_trailer
    opaque_data = b"".join(
        kind.to_bytes(2, "little") + len(v).to_bytes(2, "little") + v for kind, v in opaque
    )
    response = (
        bytes([version, response_code, 0, 0, len(blocks) if block_count is None else block_count])
        + len(record).to_bytes(3, "little")
        + record
        + bytes([0xAB]) * 32
        + len(opaque_data).to_bytes(2, "little")
        + opaque_data
    )
    r, s = decode_dss_signature(key.sign(request + response, ec.ECDSA(hashes.SHA384())))
    return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big")


@pytest.fixture(scope="module")
def device() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, x509.Certificate]:
    root_key, device_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    root = issue("Test Device Identity CA", root_key, "Test Device Identity CA", root_key, ca=True)
    leaf = issue("Test GPU", device_key, "Test Device Identity CA", root_key, ca=False, fwid=FWID)
    return device_key, leaf, root


def verify_synthetic(
    report: bytes, leaf: x509.Certificate, root: x509.Certificate, at: datetime = AT
) -> Verdict:
    chain = leaf.public_bytes(serialization.Encoding.PEM)
    endorsements = Endorsements(chain=chain, root=root.public_bytes(serialization.Encoding.PEM))
    return verify_at_time("nvidia-gpu", report, endorsements, at, nonce=NONCE)


Device = tuple[ec.EllipticCurvePrivateKey, x509.Certificate, x509.Certificate]


def test_synthetic_report_verifies(device: Device) -> None:
    key, leaf, root = device
    verdict = verify_synthetic(
        spdm_report(key, opaque=[(3, b"999.1.2\0"), (20, FWID), (99, b"\x01\x02")]), leaf, root
    )
    assert verdict.ok, verdict.error
    assert verdict.measurements == {"1": "00" * 48, "2": "07" * 48}
    assert (verdict.claims["driver_version"], verdict.claims["opaque_99"]) == ("999.1.2", "0102")


def test_fwid_must_match_the_device_certificate(device: Device) -> None:
    key, leaf, root = device
    verdict = verify_synthetic(spdm_report(key, opaque=[(20, bytes(48))]), leaf, root)
    assert (verdict.ok, verdict.step) == (False, "binding")


def test_a_report_without_fwid_is_not_compared(device: Device) -> None:
    key, leaf, root = device
    assert verify_synthetic(spdm_report(key, opaque=[]), leaf, root).ok


def test_fwid_needs_a_readable_certificate_fwid(device: Device) -> None:
    key = device[0]
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = issue("Other CA", root_key, "Other CA", root_key, ca=True)
    bare_leaf = issue("Test GPU", key, "Other CA", root_key, ca=False)
    verdict = verify_synthetic(spdm_report(key), bare_leaf, root)
    assert (verdict.ok, verdict.step) == (False, "binding")


def test_an_expired_device_certificate_is_refused(device: Device) -> None:
    key, leaf, root = device
    verdict = verify_synthetic(spdm_report(key), leaf, root, at=datetime(2041, 1, 1, tzinfo=UTC))
    assert (verdict.ok, verdict.step) == (False, "chain")
    assert "expired" in (verdict.error or "")


def test_a_report_signed_by_another_key_is_refused(device: Device) -> None:
    _, leaf, root = device
    verdict = verify_synthetic(spdm_report(ec.generate_private_key(ec.SECP384R1())), leaf, root)
    assert (verdict.ok, verdict.step) == (False, "signature")


def test_the_nonce_is_the_request_nonce(device: Device) -> None:
    key, leaf, root = device
    endorsements = Endorsements(
        chain=leaf.public_bytes(serialization.Encoding.PEM),
        root=root.public_bytes(serialization.Encoding.PEM),
    )
    verdict = verify_at_time("nvidia-gpu", spdm_report(key), endorsements, AT, nonce=bytes([0xAB]) * 32)
    assert (verdict.ok, verdict.step) == (False, "nonce")  # the responder's nonce is not the challenge


@pytest.mark.parametrize(
    ("changes", "step"),
    [
        ({"version": 0x12}, "unsupported"),
        ({"version": 0x42}, "parse"),
        ({"attributes": 0x00}, "signature"),
        ({"response_code": 0x61}, "parse"),
        ({"block_count": 0, "blocks": []}, "parse"),
        ({"block_count": 3}, "parse"),
        ({"record_trailer": b"\0"}, "parse"),
        ({"specification": 0x02}, "parse"),
        ({"blocks": [(1, bytes(48)), (1, bytes(48))]}, "parse"),
        ({"opaque": [(3, b"1"), (3, b"2")]}, "parse"),
        ({"opaque": [(12, b"\0\0\0")]}, "parse"),
    ],
    ids=[
        "spdm-1.2",
        "not-spdm",
        "unsigned-request",
        "response-code",
        "no-blocks",
        "block-count",
        "record-trailer",
        "not-dmtf",
        "repeated-index",
        "repeated-opaque-field",
        "bad-measurement-counts",
    ],
)
def test_malformed_reports_are_refused(device: Device, changes: dict[str, Any], step: str) -> None:
    key, leaf, root = device
    verdict = verify_synthetic(spdm_report(key, **changes), leaf, root)
    assert (verdict.ok, verdict.step) == (False, step)


def test_the_leaf_key_must_be_p384() -> None:
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = issue("P256 CA", root_key, "P256 CA", root_key, ca=True)
    small_key = ec.generate_private_key(ec.SECP256R1())
    leaf = issue("Test GPU", small_key, "P256 CA", root_key, ca=False, not_after=AT + timedelta(days=1))
    verdict = verify_synthetic(spdm_report(small_key, opaque=[]), leaf, root)
    assert (verdict.ok, verdict.step) == (False, "signature")
