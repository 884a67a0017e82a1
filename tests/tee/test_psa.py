"""PSA attestation tokens: the vendor vectors of cases.json, synthetic tokens, and hostile input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings

from tests.conftest import VECTORS, load_cases
from tests.tee.test_cose import (
    ES256,
    ES384,
    ec_key,
    hostile_variants,
    jwk,
    mac0,
    pem,
    refuses_or_attests_the_same,
    sign1,
)
from umbra.tee import AttestationError, Endorsements, Step, VerifiedEvidence, verify_at_time
from umbra.tee._psa import PsaVerifier

AT = datetime(2025, 6, 1, tzinfo=UTC)
PSA_CASES = [case for case in load_cases() if case["type"] == "psa"]
# the step each refused vector must fail at, and why
EXPECTED_STEP = {
    "psa/tf-m-tools/malformed": "parse",  # zero-length protected header: no algorithm
}
TFM = VECTORS / "batch2/psa/tf-m-tools"
IAT = (TFM / "iat.cbor").read_bytes()
IAT_HMAC = (TFM / "iat-hmac.cbor").read_bytes()
IAK_PEM = (TFM / "key.pub.pem").read_bytes()
HMAC_KEY = (TFM / "hmac.key").read_bytes()
IAT_NONCE = bytes.fromhex("07060504030201000f0e0d0c0b0a090817161514131211101f1e1d1c1b1a1918")

IAK = ec_key(ES256)
INSTANCE_ID = b"\x01" + b"\x22" * 32
IMPLEMENTATION_ID = b"\x33" * 32
CHALLENGE = b"\x11" * 32


def claims(changes: dict[int, Any] | None = None) -> dict[int, Any]:
    """PSA 2.0 claims; `changes` maps a claim key to a new value, or to None to drop the claim."""
    base: dict[int, Any] = {
        265: "http://arm.com/psa/2.0.0",
        10: CHALLENGE,
        256: INSTANCE_ID,
        2396: IMPLEMENTATION_ID,
        2395: 0x3000,
        2394: -1,
        2399: [{1: "BL", 2: b"\x44" * 32, 5: b"\x55" * 32, 4: "1.0.0"}, {1: "PRoT", 2: b"\x66" * 32}],
    }
    for key, value in (changes or {}).items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def token(claim_set: dict[int, Any] | None = None) -> bytes:
    return sign1(cbor2.dumps(claims() if claim_set is None else claim_set), IAK, ES256)


def verify(evidence: bytes, anchor: bytes | None = pem(IAK)) -> VerifiedEvidence:
    return PsaVerifier().verify_at_time(evidence, Endorsements(anchor=anchor), AT)


def refusal(evidence: bytes, anchor: bytes | None = pem(IAK)) -> AttestationError:
    with pytest.raises(AttestationError) as refused:
        verify(evidence, anchor)
    return refused.value


# --- the vendor vectors -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", PSA_CASES, ids=[case["id"] for case in PSA_CASES])
def test_cases_json(case: dict[str, Any]) -> None:
    at = datetime.now(UTC) if case["at"] is None else datetime.fromisoformat(case["at"])
    verdict = verify_at_time(
        "psa",
        (VECTORS / case["evidence"]).read_bytes(),
        Endorsements(anchor=(VECTORS / case["anchor"]).read_bytes()),
        at,
        allow_debug=case["allow_debug"],
    )
    assert verdict.ok is case["expect"]["ok"], verdict.error
    if verdict.ok:
        assert verdict.error is None and verdict.debug is False
    else:
        assert verdict.step == EXPECTED_STEP[case["id"]], verdict.error
        # debug is reported whenever the evidence parsed, refused or not
        assert (verdict.debug is None) is (verdict.step == "parse")


def test_every_refused_vector_has_an_expected_step() -> None:
    refused = {case["id"] for case in PSA_CASES if not case["expect"]["ok"]}
    assert refused == set(EXPECTED_STEP)


def test_legacy_token_with_an_unknown_profile_reports_its_claims() -> None:
    verified = verify(IAT, IAK_PEM)
    assert verified.claims["profile"] == "http://example.com"
    assert verified.claims["claim_keys"] == "legacy"
    assert verified.claims["protection"] == "ES256"
    assert verified.claims["security_lifecycle"] == "secured"
    assert verified.claims["instance_id"] == "01" + IAT_NONCE.hex()
    assert verified.claims["client_id"] == 2
    assert verified.nonce == IAT_NONCE
    assert verified.report_data == IAT_NONCE + bytes(32)  # a 32-byte nonce, zero-padded to 64
    assert verified.measurements == {name: IAT_NONCE.hex() for name in ("sw:BL", "sw:M1", "sw:M2", "sw:M3")}
    assert verified.claims["sw_components"][0] == {
        "measurement_type": "BL",
        "measurement_value": IAT_NONCE.hex(),
        "signer_id": IAT_NONCE.hex(),
        "version": "3.4.2",
        "measurement_description": "TF-M_SHA256MemPreXIP",
    }
    assert verified.debug is False


def test_psa_2_token_from_veraison() -> None:
    directory = VECTORS / "batch2/psa/veraison-psatoken"
    verified = verify(
        (directory / "tfmP2Sign1.cbor").read_bytes(), (directory / "testTFMECKey.pub.jwk").read_bytes()
    )
    assert verified.claims["profile"] == "http://arm.com/psa/2.0.0"
    assert verified.claims["claim_keys"] == "current"
    assert verified.claims["certification_reference"] == "0604565272829-10010"
    assert verified.nonce == bytes(64)
    assert verified.report_data == bytes(64)  # a 64-byte nonce needs no padding
    assert set(verified.measurements) == {"sw:SPE", "sw:NSPE"}


def test_mac0_token_reports_the_same_claims_as_its_signed_twin() -> None:
    maced, signed = verify(IAT_HMAC, HMAC_KEY), verify(IAT, IAK_PEM)
    assert maced.claims["protection"] == "HMAC 256/256"
    assert (maced.measurements, maced.nonce) == (signed.measurements, signed.nonce)


def test_the_facade_compares_the_nonce() -> None:
    endorsements = Endorsements(anchor=IAK_PEM)
    assert verify_at_time("psa", IAT, endorsements, AT, nonce=IAT_NONCE).ok
    verdict = verify_at_time("psa", IAT, endorsements, AT, nonce=bytes(32))
    assert (verdict.ok, verdict.step) == (False, "nonce")


def test_trailing_bytes_after_the_token_are_ignored() -> None:
    assert verify(IAT + b"\x00trailing junk", IAK_PEM).nonce == IAT_NONCE


# --- keys and anchors -------------------------------------------------------------------------------


def test_mac0_under_the_wrong_key_is_refused_at_signature() -> None:
    assert refusal(IAT_HMAC, bytes(32)).step is Step.SIGNATURE
    synthetic = mac0(cbor2.dumps(claims()), b"right key")
    assert verify(synthetic, b"right key").nonce == CHALLENGE
    refused = refusal(synthetic, b"wrong key")
    assert refused.step is Step.SIGNATURE and "MAC does not verify" in refused.message


def test_a_missing_anchor_is_refused_at_chain() -> None:
    assert refusal(IAT, None).step is Step.CHAIN
    assert "no HMAC key" in refusal(IAT_HMAC, None).message


def test_a_signed_token_under_an_hmac_key_is_refused() -> None:
    assert refusal(IAT, HMAC_KEY).step is Step.CHAIN  # 32 raw bytes are not a public key


def trust_anchors(*entries: dict[str, Any]) -> bytes:
    return json.dumps(list(entries)).encode()


def test_trust_anchor_list_is_matched_by_instance_id() -> None:
    other = {
        "instance-id": "01" + "99" * 32,
        "implementation-id": IMPLEMENTATION_ID.hex(),
        "pkey": jwk(ec_key()),
    }
    mine = {"instance-id": INSTANCE_ID.hex(), "implementation-id": IMPLEMENTATION_ID.hex(), "pkey": jwk(IAK)}
    assert verify(token(), trust_anchors(other, mine)).nonce == CHALLENGE
    as_pem = {"instance-id": INSTANCE_ID.hex().upper(), "pkey": pem(IAK).decode()}
    assert verify(token(), trust_anchors(as_pem)).nonce == CHALLENGE


@pytest.mark.parametrize(
    ("anchor", "reason"),
    [
        (
            trust_anchors({"instance-id": "01" + "99" * 32, "pkey": jwk(IAK)}),
            "no IAK in the trust-anchor list",
        ),
        (
            trust_anchors(
                {"instance-id": INSTANCE_ID.hex(), "implementation-id": "00" * 32, "pkey": jwk(IAK)}
            ),
            "belongs to implementation",
        ),
        (trust_anchors({"instance-id": INSTANCE_ID.hex()}), "no pkey"),
        (b"[1, 2]", "not a JSON array of objects"),
        (b"[", "not valid JSON"),
    ],
)
def test_unusable_trust_anchor_lists_are_refused_at_chain(anchor: bytes, reason: str) -> None:
    refused = refusal(token(), anchor)
    assert refused.step is Step.CHAIN and reason in refused.message


# --- claims -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lifecycle", "name", "debug"),
    [
        (0x3000, "secured", False),
        (0x30FF, "secured", False),
        (0x1000, "assembly-and-test", True),
        (0x2000, "psa-rot-provisioning", True),
        (0x4000, "non-psa-rot-debug", True),
        (0x5001, "recoverable-psa-rot-debug", True),
    ],
)
def test_security_lifecycle_decides_debug(lifecycle: int, name: str, debug: bool) -> None:
    evidence = token(claims({2395: lifecycle}))
    verified = verify(evidence)
    assert (verified.claims["security_lifecycle"], verified.debug) == (name, debug)
    verdict = verify_at_time("psa", evidence, Endorsements(anchor=pem(IAK)), AT)
    assert verdict.ok is not debug and verdict.debug is debug
    if debug:
        assert verdict.step == "debug"
        assert verify_at_time("psa", evidence, Endorsements(anchor=pem(IAK)), AT, allow_debug=True).ok


@pytest.mark.parametrize(
    ("lifecycle", "step"),
    [
        (0x0000, Step.POLICY),
        (0x6000, Step.POLICY),
        (0x3100, Step.PARSE),
        (0x7000, Step.PARSE),
        (0x10000, Step.PARSE),
    ],
)
def test_lifecycles_without_a_trustworthy_state_are_refused(lifecycle: int, step: Step) -> None:
    assert refusal(token(claims({2395: lifecycle}))).step is step


def test_a_tampered_lifecycle_is_a_bad_signature_not_a_policy_refusal() -> None:
    protected, unprotected, payload, signature = cbor2.loads(token()).value
    tampered = cbor2.loads(payload) | {2395: 0x6000}
    evidence = cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, cbor2.dumps(tampered), signature]))
    assert refusal(evidence).step is Step.SIGNATURE


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({10: None}, "lacks the challenge claim"),
        ({10: b"\x11" * 16}, "challenge is 16 bytes"),
        ({256: None}, "lacks the instance id claim"),
        ({2396: None}, "lacks the implementation id claim"),
        ({2395: None}, "lacks the security lifecycle claim"),
        ({2399: None}, "lacks the software components claim"),
        ({2399: []}, "software components claim is empty"),
        ({2399: [{1: "BL"}]}, "lacks the measurement value claim"),
        ({2399: [b"x"]}, "software component 0 is a CBOR byte string"),
        ({265: 1}, "profile is a CBOR integer, expected text string"),
    ],
)
def test_missing_or_mistyped_claims_are_refused_at_parse(changes: dict[int, Any], reason: str) -> None:
    refused = refusal(token(claims(changes)))
    assert refused.step is Step.PARSE and reason in refused.message


def test_legacy_token_may_declare_no_software_measurements() -> None:
    legacy = {-75008: CHALLENGE, -75009: INSTANCE_ID, -75003: IMPLEMENTATION_ID, -75002: 0x3000, -75007: 1}
    verified = verify(token(legacy))
    assert (verified.measurements, verified.claims["claim_keys"]) == ({}, "legacy")


def test_components_without_a_unique_type_are_named_by_position() -> None:
    components = [
        {1: "BL", 2: b"\x01" * 32},
        {1: "App", 2: b"\x02" * 32},
        {1: "App", 2: b"\x03" * 32},
        {2: b"\x04" * 32},
    ]
    assert verify(token(claims({2399: components}))).measurements == {
        "sw:BL": "01" * 32,
        "sw#1": "02" * 32,
        "sw#2": "03" * 32,
        "sw#3": "04" * 32,
    }


# --- hostile input ----------------------------------------------------------------------------------

_IAT_REFERENCE = verify(IAT, IAK_PEM)
_IAT_HMAC_REFERENCE = verify(IAT_HMAC, HMAC_KEY)


@settings(max_examples=300, deadline=None)
@given(hostile_variants(IAT))
def test_hostile_signed_tokens(data: bytes) -> None:
    refuses_or_attests_the_same(lambda evidence: verify(evidence, IAK_PEM), data, _IAT_REFERENCE)


@settings(max_examples=300, deadline=None)
@given(hostile_variants(IAT_HMAC))
def test_hostile_maced_tokens(data: bytes) -> None:
    refuses_or_attests_the_same(lambda evidence: verify(evidence, HMAC_KEY), data, _IAT_HMAC_REFERENCE)


@pytest.mark.parametrize(
    "anchor",
    [
        pem(ec_key(ES256)),
        pem(ec_key(ES384)),
        json.dumps(jwk(ec_key(ES256))).encode(),
        trust_anchors({"instance-id": "01" + IAT_NONCE.hex(), "pkey": jwk(ec_key(ES256))}),
    ],
    ids=["other-p256-pem", "p384-pem", "other-jwk", "trust-anchor-list-with-other-key"],
)
def test_rekeyed_tokens_are_refused_at_signature(anchor: bytes) -> None:
    assert refusal(IAT, anchor).step is Step.SIGNATURE


@pytest.mark.parametrize(
    "data",
    [
        b"\x00" * (2 << 20),
        b"\xff" * (2 << 20),
        IAT + bytes(2 << 20),  # a valid token followed by 2 MB of padding is still the token
        cbor2.dumps(cbor2.CBORTag(18, [b"\xa1\x01\x26", {}, bytes(2 << 20), bytes(64)])),
        cbor2.dumps(bytes(2 << 20))[:-1],
    ],
    ids=["zeros", "ones", "token-then-padding", "2mb-payload", "truncated-2mb-bstr"],
)
def test_two_megabyte_inputs(data: bytes) -> None:
    if data.startswith(IAT):
        assert verify(data, IAK_PEM).nonce == IAT_NONCE
        return
    assert refusal(data, IAK_PEM).step is Step.PARSE
