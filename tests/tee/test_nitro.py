"""AWS Nitro attestation documents: blocky/nitrite's real documents from cases.json, documents built
under our own CA, and hostile input."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import VECTORS, load_cases
from tests.tee.test_cose import (
    ES256,
    ES384,
    ec_key,
    hostile_variants,
    mac0,
    refuses_or_attests_the_same,
    sign1,
)
from umbra.tee import AttestationError, Endorsements, Step, VerifiedEvidence, verify_at_time
from umbra.tee._nitro import NitroVerifier, evidence_time

NITRO_CASES = [case for case in load_cases() if case["type"] == "nitro"]
# the step each refused vector must fail at, and why
EXPECTED_STEP = {
    "nitro/blocky/BAD_debug_not_allowed": "debug",  # PCR0..2 all zero; the facade refuses debug
    "nitro/blocky/BAD_selfsigned": "parse",  # null unprotected header and cabundle: not AWS-shaped
    "nitro/blocky/BAD_expired_now": "chain",  # the leaf lives three hours
}
BLOCKY = VECTORS / "aws-nitro/blocky-nitrite"
REAL_TEXT = (BLOCKY / "nitro_attestation.b64").read_bytes()
REAL = base64.b64decode(REAL_TEXT)
REAL_TIME = datetime(2024, 9, 7, 14, 37, 39, 545000, tzinfo=UTC)

# our own Nitro-shaped PKI: a root CA and an enclave leaf, valid around AT
AT = datetime(2025, 6, 1, 12, tzinfo=UTC)
ROOT_KEY = ec_key(ES384)
LEAF_KEY = ec_key(ES384)


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(AT - timedelta(hours=1))
        .not_valid_after(AT + timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(issuer_key, hashes.SHA384())


ROOT = _certificate("test nitro root", ROOT_KEY, "test nitro root", ROOT_KEY, ca=True)
LEAF = _certificate("i-test-enc", LEAF_KEY, "test nitro root", ROOT_KEY, ca=False)
ROOT_PEM = ROOT.public_bytes(serialization.Encoding.PEM)


def payload(**changes: Any) -> dict[str, Any]:
    """A document payload; `changes` replace fields, None drops one."""
    fields: dict[str, Any] = {
        "module_id": "i-test-enc0123",
        "digest": "SHA384",
        "timestamp": int(AT.timestamp() * 1000),
        "pcrs": {index: bytes([index + 1]) * 48 if index < 3 else bytes(48) for index in range(16)},
        "certificate": LEAF.public_bytes(serialization.Encoding.DER),
        "cabundle": [ROOT.public_bytes(serialization.Encoding.DER)],
        "public_key": None,  # the NSM writes null for an optional field it was not given
        "user_data": b"user data",
        "nonce": b"\x42" * 20,
    }
    for name, value in changes.items():
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value
    return fields


def document(
    fields: dict[str, Any] | None = None, *, key: ec.EllipticCurvePrivateKey = LEAF_KEY, alg: int = ES384
) -> bytes:
    return sign1(cbor2.dumps(payload() if fields is None else fields), key, alg, tagged=False)


def verify(evidence: bytes, *, root: bytes | None = ROOT_PEM, at: datetime = AT) -> VerifiedEvidence:
    return NitroVerifier().verify_at_time(evidence, Endorsements(root=root), at)


def refusal(evidence: bytes, *, root: bytes | None = ROOT_PEM, at: datetime = AT) -> AttestationError:
    with pytest.raises(AttestationError) as refused:
        verify(evidence, root=root, at=at)
    return refused.value


# --- the vendor vectors -----------------------------------------------------------------------------


def _case_time(case: dict[str, Any], evidence: bytes) -> datetime:
    if case["at"] == "evidence":
        at = evidence_time(evidence)
        return datetime.now(UTC) if at is None else at  # unreadable evidence: any time refuses it
    return datetime.now(UTC) if case["at"] is None else datetime.fromisoformat(case["at"])


@pytest.mark.parametrize("case", NITRO_CASES, ids=[case["id"] for case in NITRO_CASES])
def test_cases_json(case: dict[str, Any]) -> None:
    evidence = (VECTORS / case["evidence"]).read_bytes()
    verdict = verify_at_time(
        "nitro", evidence, Endorsements(), _case_time(case, evidence), allow_debug=case["allow_debug"]
    )
    assert verdict.ok is case["expect"]["ok"], verdict.error
    if verdict.ok:
        assert verdict.error is None
    else:
        assert verdict.step == EXPECTED_STEP[case["id"]], verdict.error
        # debug is reported whenever the evidence parsed, refused or not
        assert (verdict.debug is None) is (verdict.step == "parse")


def test_every_refused_vector_has_an_expected_step() -> None:
    refused = {case["id"] for case in NITRO_CASES if not case["expect"]["ok"]}
    assert refused == set(EXPECTED_STEP)


def test_evidence_time_reads_the_document_timestamp() -> None:
    assert evidence_time(REAL_TEXT) == REAL_TIME
    assert evidence_time(REAL) == REAL_TIME
    assert evidence_time(document()) == AT
    assert evidence_time(b"garbage") is None
    assert evidence_time(b"") is None


def test_real_document_reports_pcrs_user_data_and_nonce() -> None:
    verified = verify(REAL_TEXT, root=None, at=REAL_TIME)
    assert verified.platform == "nitro" and verified.debug is False
    assert list(verified.measurements) == [f"pcr{index}" for index in range(16)]
    assert verified.measurements["pcr0"].startswith("e72a46ca80a260fb")
    assert verified.measurements["pcr3"] == "00" * 48
    assert verified.report_data == b"\x01" * 1024  # user_data as carried, unpadded
    assert verified.nonce == b"\x01" * 1024
    assert verified.issued_at == REAL_TIME
    assert verified.claims["module_id"] == "i-0a22e5c5f24d22174-enc0191cceb4289903f"
    assert verified.claims["public_key"] == "01" * 1024


def test_raw_cbor_base64_text_and_wrapped_base64_are_the_same_document() -> None:
    wrapped = b"\n".join(REAL_TEXT[i : i + 76] for i in range(0, len(REAL_TEXT), 76)) + b"\n"
    reports = [verify(form, root=None, at=REAL_TIME).measurements for form in (REAL, REAL_TEXT, wrapped)]
    assert reports[0] == reports[1] == reports[2]


def test_trailing_bytes_after_the_document_are_ignored() -> None:
    assert verify(REAL + b"\x00\xfftrailing", root=None, at=REAL_TIME).issued_at == REAL_TIME


def test_certificates_are_judged_at_the_verification_time() -> None:
    # the leaf is valid 14:37:36..17:37:39 on the day; nothing depends on the wall clock
    assert verify(REAL, root=None, at=REAL_TIME + timedelta(hours=2)).issued_at == REAL_TIME
    early = refusal(REAL, root=None, at=REAL_TIME - timedelta(minutes=5))
    assert early.step is Step.CHAIN and "not valid before" in early.message
    late = refusal(REAL, root=None, at=datetime(2026, 1, 1, tzinfo=UTC))
    assert late.step is Step.CHAIN and "expired" in late.message


def test_a_refused_debug_document_still_reports_debug() -> None:
    debug_document = (BLOCKY / "nitro_attestation_debug.b64").read_bytes()
    verdict = verify_at_time(
        "nitro", debug_document, Endorsements(), datetime(2026, 1, 1, tzinfo=UTC), allow_debug=True
    )
    assert (verdict.ok, verdict.step, verdict.debug) == (False, "chain", True)


def test_real_document_under_another_root_is_refused_at_chain() -> None:
    assert refusal(REAL, root=ROOT_PEM, at=REAL_TIME).step is Step.CHAIN


def test_unparseable_root_is_refused_at_chain() -> None:
    assert (
        refusal(document(), root=b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").step
        is Step.CHAIN
    )


# --- documents under our own CA ---------------------------------------------------------------------


def test_document_under_a_replacement_root() -> None:
    verified = verify(document())
    assert verified.report_data == b"user data"
    assert verified.nonce == b"\x42" * 20
    assert verified.issued_at == AT
    assert verified.debug is False
    assert "public_key" not in verified.claims


def test_the_pinned_aws_root_does_not_trust_our_ca() -> None:
    assert refusal(document(), root=None).step is Step.CHAIN


def test_tagged_documents_are_accepted_too() -> None:
    tagged = sign1(cbor2.dumps(payload()), LEAF_KEY, ES384, tagged=True)
    assert verify(tagged).nonce == b"\x42" * 20


def test_absent_user_data_and_nonce() -> None:
    verified = verify(document(payload(user_data=None, nonce=None)))
    assert (verified.report_data, verified.nonce) == (b"", None)


@pytest.mark.parametrize(
    ("zeroed", "debug"),
    [((), False), ((0, 1, 2), True), ((0,), True), ((1,), True), ((2,), True), ((3, 4), False)],
)
def test_debug_is_any_of_pcr0_to_2_all_zero(zeroed: tuple[int, ...], debug: bool) -> None:
    pcrs = {index: bytes(48) if index in zeroed else b"\x07" * 48 for index in range(5)}
    assert verify(document(payload(pcrs=pcrs))).debug is debug


def test_the_facade_judges_debug() -> None:
    evidence = document(payload(pcrs={0: bytes(48), 1: bytes(48), 2: bytes(48)}))
    endorsements = Endorsements(root=ROOT_PEM)
    refused = verify_at_time("nitro", evidence, endorsements, AT)
    assert (refused.ok, refused.step, refused.debug) == (False, "debug", True)
    assert verify_at_time("nitro", evidence, endorsements, AT, allow_debug=True).ok


def test_a_document_not_signed_by_its_leaf_is_refused_at_signature() -> None:
    refused = refusal(document(key=ec_key(ES384)))
    assert refused.step is Step.SIGNATURE and "does not verify" in refused.message


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"digest": "SHA256"}, "digest is 'SHA256', not SHA384"),
        ({"module_id": ""}, "module_id is empty"),
        ({"module_id": None}, "lacks the module_id claim"),
        ({"timestamp": 0}, "timestamp 0 is out of range"),
        ({"timestamp": 10**20}, "out of range"),
        ({"timestamp": "now"}, "timestamp is a CBOR text string"),
        ({"pcrs": None}, "has no pcrs"),
        ({"pcrs": {0: bytes(48), 1: bytes(48)}}, "lacks PCR2"),
        ({"pcrs": {0: bytes(48), 1: bytes(48), 2: bytes(48), 32: bytes(48)}}, "PCR index 32"),
        ({"pcrs": {0: bytes(20), 1: bytes(48), 2: bytes(48)}}, "PCR0 is 20 bytes"),
        ({"pcrs": {"0": bytes(48)}}, "PCR index '0'"),
        ({"cabundle": []}, "has no cabundle"),
        ({"cabundle": [b"\x30\x00"]}, "cabundle entry 0 is not a DER certificate"),
        ({"certificate": b"\x01" * 1025}, "certificate is 1025 bytes, over 1024"),
        ({"certificate": b"\x01"}, "certificate is not a DER certificate"),
        ({"user_data": b"\x01" * 1025}, "user_data is 1025 bytes"),
        ({"nonce": "n"}, "nonce is a CBOR text string"),
    ],
)
def test_malformed_payloads_are_refused_at_parse(changes: dict[str, Any], reason: str) -> None:
    refused = refusal(document(payload(**changes)))
    assert refused.step is Step.PARSE and reason in refused.message, refused.message


def test_only_es384_signed_documents_are_read() -> None:
    assert "is ES256, not ES384" in refusal(document(key=ec_key(ES256), alg=ES256)).message
    assert "must be a signed COSE_Sign1" in refusal(mac0(cbor2.dumps(payload()), b"k")).message


def test_text_that_is_not_base64_is_refused_at_parse() -> None:
    refused = refusal(b"this is not base64!")
    assert refused.step is Step.PARSE and "neither CBOR nor base64" in refused.message


# --- hostile input ----------------------------------------------------------------------------------

_REAL_REFERENCE = verify(REAL, root=None, at=REAL_TIME)


@settings(max_examples=300, deadline=None)
@given(hostile_variants(REAL))
def test_hostile_documents(data: bytes) -> None:
    refuses_or_attests_the_same(
        lambda evidence: verify(evidence, root=None, at=REAL_TIME), data, _REAL_REFERENCE
    )


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(REAL_TEXT) - 1), st.sampled_from(b"A/+=\n!\x00\xff"))
def test_hostile_base64_text(index: int, replacement: int) -> None:
    data = REAL_TEXT[:index] + bytes([replacement]) + REAL_TEXT[index + 1 :]
    refuses_or_attests_the_same(
        lambda evidence: verify(evidence, root=None, at=REAL_TIME), data, _REAL_REFERENCE
    )


@pytest.mark.parametrize(
    "data",
    [
        b"\x00" * (2 << 20),
        b"A" * (2 << 20),
        cbor2.dumps([b"\xa1\x01\x38\x22", {}, bytes(2 << 20), bytes(96)]),
        cbor2.dumps(bytes(2 << 20))[:-1],
    ],
    ids=["zeros", "base64-text", "2mb-payload", "truncated-2mb-bstr"],
)
def test_two_megabyte_inputs_are_refused_at_parse(data: bytes) -> None:
    assert refusal(data, root=None, at=REAL_TIME).step is Step.PARSE
