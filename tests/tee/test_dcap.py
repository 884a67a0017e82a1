"""The dcap verifier (Intel SGX and TDX quotes, through dcap-qvl) on real vendor evidence."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from functools import cache
from typing import Any

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import VECTORS, load_cases
from umbra.tee import AttestationError, Endorsements, Step, Verdict, verify_at_time
from umbra.tee._dcap import DcapVerifier, _refusal
from umbra.tee._roots import load_root

DCAP_CASES = [case for case in load_cases() if case["type"] == "dcap"]

# The step at which each refused case must stop, and why.
EXPECTED_STEPS = {
    # The platform's SVNs are below every TCB level of the collateral.
    "intel/dcap-qvl/tdx_v5_outdated_2026": Step.TCB,
    "intel/go-tdx-guest/spr_e4_v4_2023": Step.TCB,
    # A TDX quote against SGX TCB Info and SGX QE Identity.
    "intel/dcap-qvl/BAD_tdx_v4_with_sgx_collateral": Step.COLLATERAL,
    # Verified after the TCB Info's nextUpdate.
    "intel/dcap-qvl/BAD_sgx_expired_collateral": Step.COLLATERAL_EXPIRED,
    # TCB Info for another FMSPC than the PCK certificate's.
    "intel/dcap-qvl/BAD_fmspc_mismatch": Step.FMSPC_MISMATCH,
    # Header version 3 with TEE type TDX; a signature data size that does not add up.
    "intel/go-tdx-guest/BAD_version_byte_changed": Step.PARSE,
    "intel/go-tdx-guest/BAD_signed_data_size_changed": Step.PARSE,
    # A byte changed inside a certificate breaks its issuer's signature.
    "intel/go-tdx-guest/BAD_intermediate_cert_byte_changed": Step.CHAIN,
    "intel/go-tdx-guest/BAD_pck_cert_byte_changed": Step.CHAIN,
    # Debug enclaves and TDs: dcap-qvl refuses them, and so does the facade.
    "intel/debug/trustee_tdx_v4_debug_2023-06": Step.DEBUG,
    "intel/debug/trustee_occlum_sgx_debug_2025-08": Step.DEBUG,
}

SGX_QUOTE = "intel-dcap/dcap-qvl/sgx_quote.bin"
SGX_COLLATERAL = "intel-dcap/dcap-qvl/sgx_quote_collateral_2025-06.json"
TDX_QUOTE = "intel-dcap/dcap-qvl/tdx_quote_v4.bin"
TDX_COLLATERAL = "intel-dcap/dcap-qvl/tdx_quote_v4_collateral_2025-06.json"
# Both collaterals are valid at this time.
AT = datetime(2025, 7, 1, tzinfo=UTC)
# tdx_quote_v4.bin holds a 4936-byte quote followed by 70 zero bytes.
TDX_QUOTE_SIZE = 4936


@cache
def vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def verify_case(case: dict[str, Any], evidence: bytes | None = None) -> Verdict:
    return verify_at_time(
        "dcap",
        vector(case["evidence"]) if evidence is None else evidence,
        Endorsements(collateral=vector(case["collateral"])),
        parse_time(case["at"]),
        allow_debug=case["allow_debug"],
    )


def verify_dcap(
    evidence: bytes, collateral: str = SGX_COLLATERAL, *, at: datetime = AT, **extra: bytes
) -> Verdict:
    return verify_at_time("dcap", evidence, Endorsements(collateral=vector(collateral), **extra), at)


def refusal(evidence: bytes, collateral: bytes) -> AttestationError:
    """What the verifier itself raises: an AttestationError and nothing else, not even via the facade."""
    with pytest.raises(AttestationError) as raised:
        DcapVerifier().verify_at_time(evidence, Endorsements(collateral=collateral), AT)
    assert raised.value.message
    return raised.value


@pytest.mark.parametrize("case", DCAP_CASES, ids=[case["id"] for case in DCAP_CASES])
def test_case(case: dict[str, Any]) -> None:
    verdict = verify_case(case)
    expect = case["expect"]
    assert verdict.ok is expect["ok"], verdict.error
    for key in ("status", "advisory_ids", "debug"):
        if key in expect:
            assert getattr(verdict, key) == expect[key]
    if verdict.ok:
        assert verdict.error is None
        assert verdict.debug is False
    else:
        assert verdict.step == EXPECTED_STEPS[case["id"]], verdict.error
        assert verdict.error is not None
        assert verdict.error.startswith(f"{verdict.step}: ")


def test_every_refused_case_has_an_expected_step() -> None:
    refused = {case["id"] for case in DCAP_CASES if not case["expect"]["ok"]}
    assert refused == set(EXPECTED_STEPS)


def collateral(case: dict[str, Any]) -> Any:
    return dcap_qvl.QuoteCollateralV3.from_json(vector(case["collateral"]).decode())


def unix(case: dict[str, Any]) -> int:
    return int(parse_time(case["at"]).timestamp())


@pytest.mark.parametrize(
    "case", [case for case in DCAP_CASES if case["expect"]["ok"]], ids=lambda case: case["id"]
)
def test_measurements_match_dcap_qvl_parser(case: dict[str, Any]) -> None:
    verdict = verify_case(case)
    report = dcap_qvl.parse_quote(vector(case["evidence"])).report
    assert verdict.report_data == report.report_data.hex()
    measured = verdict.measurements
    if verdict.platform == "sgx":
        assert measured["mrenclave"] == report.mr_enclave.hex()
        assert measured["mrsigner"] == report.mr_signer.hex()
        assert measured["attributes"] == report.attributes.hex()
        assert measured["cpu_svn"] == report.cpu_svn.hex()
        sgx_report = json.loads(
            dcap_qvl.verify(vector(case["evidence"]), collateral(case), unix(case)).to_json()
        )
        enclave = sgx_report["report"]["SgxEnclave"]
        assert measured["isv_prod_id"] == enclave["isv_prod_id"].to_bytes(2, "little").hex()
        assert measured["isv_svn"] == enclave["isv_svn"].to_bytes(2, "little").hex()
    else:
        assert verdict.platform == "tdx"
        pairs = {
            "mrtd": "mr_td",
            "rtmr0": "rt_mr0",
            "rtmr1": "rt_mr1",
            "rtmr2": "rt_mr2",
            "rtmr3": "rt_mr3",
            "mr_config_id": "mr_config_id",
            "mr_owner": "mr_owner",
            "mr_owner_config": "mr_owner_config",
            "tee_tcb_svn": "tee_tcb_svn",
            "mr_seam": "mr_seam",
            "mr_signer_seam": "mr_signer_seam",
            "seam_attributes": "seam_attributes",
            "td_attributes": "td_attributes",
            "xfam": "xfam",
        }
        for ours, theirs in pairs.items():
            assert measured[ours] == getattr(report, theirs).hex(), ours
    assert all(value == value.lower() and not value.startswith("0x") for value in measured.values())


def test_debug_is_reported_for_the_refused_debug_quotes() -> None:
    for case_id in (
        "intel/debug/trustee_tdx_v4_debug_2023-06",
        "intel/debug/trustee_occlum_sgx_debug_2025-08",
    ):
        case = next(case for case in DCAP_CASES if case["id"] == case_id)
        with pytest.raises(AttestationError) as raised:
            DcapVerifier().verify_at_time(
                vector(case["evidence"]),
                Endorsements(collateral=vector(case["collateral"])),
                parse_time(case["at"]),
            )
        assert raised.value.step is Step.DEBUG
        assert raised.value.debug is True


def test_trailing_bytes_after_the_quote_are_ignored() -> None:
    for quote, collateral_name in ((vector(SGX_QUOTE), SGX_COLLATERAL), (vector(TDX_QUOTE), TDX_COLLATERAL)):
        clean = verify_dcap(quote, collateral_name)
        assert clean.ok, clean.error
        for trailer in (b"\0", b"trailing garbage" * 7, bytes(2 * 1024 * 1024)):
            assert verify_dcap(quote + trailer, collateral_name).to_json() == clean.to_json()


def test_the_quote_ends_where_its_structure_says() -> None:
    # The TDX sample carries 70 zero bytes after its quote: all of the quote is needed, none of them is.
    assert verify_dcap(vector(TDX_QUOTE)[:TDX_QUOTE_SIZE], TDX_COLLATERAL).ok
    cut = verify_dcap(vector(TDX_QUOTE)[: TDX_QUOTE_SIZE - 1], TDX_COLLATERAL)
    assert cut.step == Step.PARSE
    assert "truncated" in (cut.error or "")


def test_certificates_are_judged_at_the_verification_time() -> None:
    quote = vector(SGX_QUOTE)
    assert verify_dcap(quote).ok
    # Long after the PCK certificates, the CRLs and the TCB Info have expired.
    late = verify_dcap(quote, at=datetime(2060, 1, 1, tzinfo=UTC))
    assert not late.ok
    assert late.step == Step.COLLATERAL_EXPIRED
    # Years before the collateral was issued.
    early = verify_dcap(quote, at=datetime(2018, 1, 1, tzinfo=UTC))
    assert early.step == Step.COLLATERAL_NOT_YET_VALID
    before_1970 = verify_dcap(quote, at=datetime(1969, 12, 31, tzinfo=UTC))
    assert before_1970.step == Step.COLLATERAL_NOT_YET_VALID


def test_another_root_fails_at_the_chain() -> None:
    verdict = verify_dcap(vector(SGX_QUOTE), root=load_root("aws_nitro_enclaves_root_g1.pem"))
    assert not verdict.ok
    assert verdict.step == Step.CHAIN
    assert "trust anchor" in (verdict.error or "")
    assert verify_dcap(vector(SGX_QUOTE), root=b"not a certificate").step == Step.CHAIN


def test_the_intel_root_can_be_given_explicitly_as_pem() -> None:
    intel_pem = x509.load_der_x509_certificate(load_root("intel_sgx_root_ca.der")).public_bytes(Encoding.PEM)
    verdict = verify_dcap(vector(SGX_QUOTE), root=intel_pem)
    assert verdict.ok, verdict.error
    assert verdict.to_json() == verify_dcap(vector(SGX_QUOTE)).to_json()


def test_collateral_is_required_and_must_be_collateral() -> None:
    quote = vector(SGX_QUOTE)
    assert verify_at_time("dcap", quote, Endorsements(), AT).step == Step.COLLATERAL
    for junk in (b"", b"\xff\xfe", b"[]", b'{"tcb_info": 1}', vector(SGX_QUOTE)):
        verdict = verify_at_time("dcap", quote, Endorsements(collateral=junk), AT)
        assert verdict.step == Step.COLLATERAL, verdict.error
        assert verdict.debug is False  # the quote itself parsed


def test_empty_oversized_and_foreign_evidence_is_refused_cleanly() -> None:
    oversized = random.Random(2).randbytes(2 * 1024 * 1024)
    sev_snp_report = vector("amd-sev-snp/go-sev-guest/attestation.bin")
    for evidence in (b"", b"\0", oversized, sev_snp_report, vector(SGX_COLLATERAL)):
        verdict = verify_dcap(evidence)
        assert not verdict.ok
        assert verdict.step == Step.PARSE, verdict.error
        assert verdict.error


# The quotes the fuzz tests mutate: every byte of each is signed or structurally checked.
FUZZ_TARGETS = (
    (SGX_QUOTE, None, SGX_COLLATERAL),
    (TDX_QUOTE, TDX_QUOTE_SIZE, TDX_COLLATERAL),
)


def fuzz_target(index: int) -> tuple[bytes, bytes]:
    quote_name, size, collateral_name = FUZZ_TARGETS[index]
    return vector(quote_name)[:size], vector(collateral_name)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(range(len(FUZZ_TARGETS))), st.data())
def test_fuzz_truncation_is_refused(target: int, data: st.DataObject) -> None:
    quote, collateral_json = fuzz_target(target)
    cut = data.draw(st.integers(0, len(quote) - 1))
    assert refusal(quote[:cut], collateral_json).step == Step.PARSE


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(FUZZ_TARGETS))), st.data())
def test_fuzz_byte_flips_are_refused(target: int, data: st.DataObject) -> None:
    quote, collateral_json = fuzz_target(target)
    position = data.draw(st.integers(0, len(quote) - 1))
    mask = data.draw(st.integers(1, 255))
    flipped = bytearray(quote)
    flipped[position] ^= mask
    refusal(bytes(flipped), collateral_json)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=6000), st.sampled_from([b"", vector(SGX_QUOTE)[:48], vector(TDX_QUOTE)[:632]]))
def test_fuzz_random_bytes_are_refused(noise: bytes, prefix: bytes) -> None:
    # Behind a real header (and a real TD report), noise reaches the deeper parsing.
    refusal(prefix + noise, vector(SGX_COLLATERAL))


# dcap-qvl checks the PCK CRL against the PCK CA of the quote's own chain and never reads the PCK CRL
# issuer chain, so a changed copy of that chain changes nothing.
CHECKED_COLLATERAL_FIELDS = sorted(set(json.loads(vector(SGX_COLLATERAL))) - {"pck_crl_issuer_chain"})


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(CHECKED_COLLATERAL_FIELDS),
    st.one_of(st.text(max_size=200), st.integers(), st.none(), st.binary(max_size=64).map(bytes.hex)),
)
def test_fuzz_collateral_fields_are_refused(field: str, value: object) -> None:
    document = json.loads(vector(SGX_COLLATERAL))
    document[field] = value
    refusal(vector(SGX_QUOTE), json.dumps(document).encode())


@pytest.mark.parametrize(
    ("message", "step"),
    [
        ("Verification failed: TCB status is invalid: Revoked", Step.TCB_REVOKED),
        ("Verification failed: Debug mode is enabled", Step.DEBUG),
        ("Verification failed: TCBInfo expired", Step.COLLATERAL_EXPIRED),
        ("Verification failed: QE Identity expired", Step.COLLATERAL_EXPIRED),
        (
            "Verification failed: Failed to verify certificate chain\n\nCaused by:\n    "
            "CrlExpired { time: UnixTime(1676764800), next_update: UnixTime(1676670969) }",
            Step.COLLATERAL_EXPIRED,
        ),
        (
            "Verification failed: CrlExpired { time: UnixTime(2), next_update: UnixTime(1) }",
            Step.COLLATERAL_EXPIRED,
        ),
        ("Verification failed: TCBInfo issue date is in the future", Step.COLLATERAL_NOT_YET_VALID),
        ("Verification failed: QE Identity issue date is in the future", Step.COLLATERAL_NOT_YET_VALID),
        (
            "Verification failed: Failed to verify certificate chain\n\nCaused by:\n    CertNotValidYet",
            Step.COLLATERAL_NOT_YET_VALID,
        ),
        ("Verification failed: Fmspc mismatch", Step.FMSPC_MISMATCH),
        ("Verification failed: Failed to decode quote\n\nCaused by:\n    Invalid TEE type", Step.PARSE),
        ("Verification failed: Unsupported DCAP quote version", Step.PARSE),
        ("Verification failed: ISV enclave report signature is invalid", Step.SIGNATURE),
        ("Verification failed: Signature is invalid for qe_report in quote", Step.SIGNATURE),
        ("Verification failed: QE report hash mismatch", Step.SIGNATURE),
        ("Verification failed: Unknown QE vendor ID", Step.SIGNATURE),
        ("Verification failed: No matching TCB level found", Step.TCB),
        ("Verification failed: Signature is invalid for tcb_info in quote_collateral", Step.COLLATERAL),
        ("Verification failed: Invalid key length", Step.COLLATERAL),
        (
            "Verification failed: Unsupported QE Identity id/version for the quote TEE type: QE version 2",
            Step.COLLATERAL,
        ),
        ("Verification failed: TDX quote with non-TDX TCB info in the collateral", Step.COLLATERAL),
        ("Verification failed: Failed to parse root CA CRL\n\nCaused by:\n    BadDer", Step.COLLATERAL),
        ("Verification failed: SEPT_VE_DISABLE is not enabled", Step.POLICY),
        (
            "Verification failed: Failed to verify certificate chain\n\nCaused by:\n    UnknownIssuer",
            Step.CHAIN,
        ),
        (
            "Verification failed: Failed to verify certificate chain\n\nCaused by:\n    "
            "InvalidSignatureForPublicKey",
            Step.CHAIN,
        ),
        (
            "Verification failed: Failed to verify certificate chain\n\nCaused by:\n    CertRevoked",
            Step.CHAIN,
        ),
        ("Verification failed: something dcap-qvl may say one day", Step.POLICY),
    ],
)
def test_dcap_qvl_messages_map_to_steps(message: str, step: Step) -> None:
    error = _refusal(message)
    assert error.step is step
    assert " ".join(message.split()) in error.message
