"""Arm CCA tokens: the vendor vectors of cases.json, synthetic tokens (the binding above all), and
hostile input."""

from __future__ import annotations

import hashlib
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
    cose_key,
    ec_key,
    hostile_variants,
    jwk,
    mac0,
    pem,
    point,
    refuses_or_attests_the_same,
    sign1,
)
from umbra.tee import AttestationError, Endorsements, Step, VerifiedEvidence, verify_at_time
from umbra.tee._arm_cca import ArmCcaVerifier

AT = datetime(2025, 6, 1, tzinfo=UTC)
CCA_CASES = [case for case in load_cases() if case["type"] == "arm-cca"]
# the step each refused vector must fail at, and why
EXPECTED_STEP = {
    "cca/tf-m-tools/BAD_cca_example_token_wrong_cpak": "signature",  # signed by another CPAK
    "cca/veraison-ccatoken/testBadUnwrappedTokens": "parse",  # entries are not [content-type, bstr]
    "cca/rust-ccatoken/cca-token-02+ta-02-bad": "chain",  # the anchor's point is not on P-256
}
TFM = VECTORS / "batch2/arm-cca/tf-m-tools"
CCA_TOKEN = (TFM / "cca_token.cbor").read_bytes()
CCA_EXAMPLE_TOKEN = (TFM / "cca_example_token.cbor").read_bytes()
CCA_PLATFORM_TOKEN = (TFM / "cca_platform_token.cbor").read_bytes()
TFM_CPAK = (TFM / "cca_platform.pub.pem").read_bytes()
TFM_INSTANCE_ID = "0107060504030201000f0e0d0c0b0a090817161514131211101f1e1d1c1b1a1918"

CPAK = ec_key(ES384)
RAK = ec_key(ES384)
INSTANCE_ID = b"\x01" + b"\x22" * 32
IMPLEMENTATION_ID = b"\x33" * 32
REALM_CHALLENGE = bytes(range(64))


def platform_claims(challenge: bytes, changes: dict[int, Any] | None = None) -> dict[int, Any]:
    claims: dict[int, Any] = {
        265: "tag:arm.com,2023:cca_platform#1.0.0",
        10: challenge,
        256: INSTANCE_ID,
        2396: IMPLEMENTATION_ID,
        2401: b"\xcf" * 4,
        2395: 0x3000,
        2399: [{1: "RSE_BL1_2", 2: b"\x77" * 32, 5: b"\x88" * 32}, {1: "RMM", 2: b"\x99" * 32}],
        2402: "sha-256",
    }
    return _apply(claims, changes)


def realm_claims(rak_claim: bytes, changes: dict[int, Any] | None = None) -> dict[int, Any]:
    claims: dict[int, Any] = {
        265: "tag:arm.com,2023:realm#1.0.0",
        10: REALM_CHALLENGE,
        44235: b"\xaa" * 64,
        44236: "sha-256",
        44237: rak_claim,
        44238: b"\x10" * 32,
        44239: [bytes([0x20 + i]) * 32 for i in range(4)],
        44240: "sha-256",
    }
    return _apply(claims, changes)


def _apply(claims: dict[int, Any], changes: dict[int, Any] | None) -> dict[int, Any]:
    for key, value in (changes or {}).items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims


def cca_token(
    *,
    rak_claim: bytes | None = None,
    challenge: bytes | None = None,
    realm_signer: Any = RAK,
    platform: dict[int, Any] | None = None,
    realm: dict[int, Any] | None = None,
    legacy_collection: bool = False,
) -> bytes:
    """A CCA token signed with our own CPAK and RAK; by default well formed and correctly bound."""
    rak_claim = cose_key(RAK) if rak_claim is None else rak_claim
    challenge = hashlib.sha256(rak_claim).digest() if challenge is None else challenge
    platform_token = sign1(cbor2.dumps(platform_claims(challenge, platform)), CPAK, ES384)
    realm_token = sign1(cbor2.dumps(realm_claims(rak_claim, realm)), realm_signer, ES384)
    if legacy_collection:
        return cbor2.dumps(cbor2.CBORTag(399, {44234: platform_token, 44241: realm_token}))
    return cbor2.dumps(cbor2.CBORTag(907, {44234: [263, platform_token], 44241: [263, realm_token]}))


def verify(evidence: bytes, anchor: bytes | None = pem(CPAK)) -> VerifiedEvidence:
    return ArmCcaVerifier().verify_at_time(evidence, Endorsements(anchor=anchor), AT)


def refusal(evidence: bytes, anchor: bytes | None = pem(CPAK)) -> AttestationError:
    with pytest.raises(AttestationError) as refused:
        verify(evidence, anchor)
    return refused.value


# --- the vendor vectors -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CCA_CASES, ids=[case["id"] for case in CCA_CASES])
def test_cases_json(case: dict[str, Any]) -> None:
    at = datetime.now(UTC) if case["at"] is None else datetime.fromisoformat(case["at"])
    verdict = verify_at_time(
        "arm-cca",
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
    refused = {case["id"] for case in CCA_CASES if not case["expect"]["ok"]}
    assert refused == set(EXPECTED_STEP)


def test_realm_token_reports_realm_and_platform_measurements() -> None:
    verified = verify(CCA_EXAMPLE_TOKEN, TFM_CPAK)
    claims = verified.claims
    assert claims["platform_only"] is False
    assert claims["profile"] == "tag:arm.com,2023:cca_platform#1.0.0"
    assert claims["realm_profile"] == "tag:arm.com,2024:realm#2.0.0"
    assert claims["hash_algorithm"] == "sha-256"
    assert claims["implementation_id"] == "7f454c4602010100000000000000000003003e00010000005058000000000000"
    assert claims["instance_id"] == TFM_INSTANCE_ID
    assert verified.measurements["rim"] == "311314ab73620350cf758834ae5c65d9e8c2dc7febe6e7d9654bbe864e300d49"
    assert [name for name in verified.measurements if name.startswith("rem")] == [
        "rem0",
        "rem1",
        "rem2",
        "rem3",
    ]
    assert "sw:RMM" in verified.measurements and "sw:RSE_BL1_2" in verified.measurements
    assert verified.nonce is not None and len(verified.nonce) == 64
    assert verified.report_data == verified.nonce
    assert claims["challenge"] == verified.nonce.hex()
    assert (
        claims["platform_challenge"] == hashlib.sha256(bytes.fromhex(claims["realm_public_key"])).hexdigest()
    )


def test_legacy_profile_token_with_a_raw_point_rak() -> None:
    verified = verify(CCA_TOKEN, TFM_CPAK)
    assert verified.claims["profile"] == "http://arm.com/CCA-SSD/1.0.0"
    assert "realm_profile" not in verified.claims
    assert verified.claims["realm_public_key"].startswith("04")
    assert verified.nonce == b"\xab" * 64


def test_platform_only_token_is_accepted_and_marked() -> None:
    verified = verify(CCA_PLATFORM_TOKEN, TFM_CPAK)
    assert verified.claims["platform_only"] is True
    assert set(verified.measurements) == {"sw:BL", "sw:M1", "sw:M2", "sw:M3"}
    challenge = bytes.fromhex("07060504030201000f0e0d0c0b0a090817161514131211101f1e1d1c1b1a1918")
    assert verified.nonce == challenge
    assert verified.claims["challenge"] == verified.claims["platform_challenge"] == challenge.hex()
    assert verified.report_data == challenge + bytes(32)


def test_the_facade_compares_the_realm_challenge() -> None:
    endorsements = Endorsements(anchor=TFM_CPAK)
    assert verify_at_time("arm-cca", CCA_TOKEN, endorsements, AT, nonce=b"\xab" * 64).ok
    verdict = verify_at_time("arm-cca", CCA_TOKEN, endorsements, AT, nonce=b"\xab" * 32)
    assert (verdict.ok, verdict.step) == (False, "nonce")


def test_trailing_bytes_after_the_token_are_ignored() -> None:
    assert verify(CCA_TOKEN + b"\xff\xfftrailing", TFM_CPAK).nonce == b"\xab" * 64


def test_trust_anchor_list_selects_the_cpak_by_instance_id() -> None:
    directory = VECTORS / "batch2/arm-cca/rust-ccatoken"
    evidence = (directory / "cca-token-02.cbor").read_bytes()
    entries = json.loads((directory / "ta-02-ok.json").read_text())
    assert (
        verify(evidence, json.dumps(entries).encode()).claims["realm_public_key_hash_algorithm"] == "sha-512"
    )
    entries[0]["instance-id"] = "01" + "ff" * 32
    refused = refusal(evidence, json.dumps(entries).encode())
    assert refused.step is Step.CHAIN and "no CPAK in the trust-anchor list" in refused.message


# --- synthetic tokens: the binding ------------------------------------------------------------------


@pytest.mark.parametrize("legacy_collection", [False, True], ids=["cmw-907", "legacy-399"])
@pytest.mark.parametrize("rak_form", ["cose-key", "raw-point"])
def test_synthetic_tokens_verify(legacy_collection: bool, rak_form: str) -> None:
    rak_claim = cose_key(RAK) if rak_form == "cose-key" else point(RAK)
    verified = verify(cca_token(rak_claim=rak_claim, legacy_collection=legacy_collection))
    assert verified.nonce == REALM_CHALLENGE and verified.claims["platform_only"] is False
    assert verified.measurements["rim"] == "10" * 32
    assert verified.measurements["rem3"] == "23" * 32
    assert verified.measurements["sw:RMM"] == "99" * 32


def test_bug_33_valid_signatures_but_no_binding_are_refused() -> None:
    # rust-ccatoken issue 33: a realm token spliced onto a platform token that vouches for another
    # RAK. Both signatures hold; only the binding exposes it.
    other_rak_claim = cose_key(ec_key(ES384))
    spliced = cca_token(challenge=hashlib.sha256(other_rak_claim).digest())
    refused = refusal(spliced)
    assert refused.step is Step.BINDING
    assert "platform challenge is not the sha-256 of the realm public key" in refused.message
    verdict = verify_at_time("arm-cca", spliced, Endorsements(anchor=pem(CPAK)), AT)
    assert (verdict.ok, verdict.step) == (False, "binding")


def test_binding_uses_the_realms_rak_hash_algorithm() -> None:
    rak_claim = cose_key(RAK)
    sha512 = hashlib.sha512(rak_claim).digest()
    assert verify(cca_token(challenge=sha512, realm={44240: "sha-512"})).nonce == REALM_CHALLENGE
    assert refusal(cca_token(challenge=sha512)).step is Step.BINDING  # realm says sha-256
    refused = refusal(cca_token(realm={44240: "md5"}))
    assert refused.step is Step.PARSE and "'md5' is not supported" in refused.message


def test_realm_token_not_signed_by_its_own_rak_is_refused() -> None:
    refused = refusal(cca_token(realm_signer=ec_key(ES384)))
    assert refused.step is Step.SIGNATURE and "CCA realm token" in refused.message


def test_platform_token_under_another_cpak_is_refused() -> None:
    assert refusal(cca_token(), pem(ec_key(ES384))).step is Step.SIGNATURE


@pytest.mark.parametrize(
    ("realm", "reason"),
    [
        ({10: REALM_CHALLENGE[:32]}, "challenge is 32 bytes, not 64"),
        ({44239: [b"\x20" * 32] * 3}, "extensible measurements are not 4 byte strings"),
        ({44239: [b"\x20" * 32] * 3 + ["x"]}, "extensible measurements are not 4 byte strings"),
        ({44238: None}, "lacks the initial measurement claim"),
        ({44237: b"\xa0"}, "realm public key is unusable"),
        ({44237: b"\x04" + b"\x01" * 96}, "realm public key is unusable"),
        ({44240: None}, "lacks the public key hash algorithm claim"),
    ],
)
def test_malformed_realm_claims_are_refused_at_parse(realm: dict[int, Any], reason: str) -> None:
    refused = refusal(cca_token(realm=realm))
    assert refused.step is Step.PARSE and reason in refused.message


def test_platform_lifecycle_decides_debug() -> None:
    evidence = cca_token(platform={2395: 0x5000})
    assert verify(evidence).debug is True
    verdict = verify_at_time("arm-cca", evidence, Endorsements(anchor=pem(CPAK)), AT)
    assert (verdict.ok, verdict.step, verdict.debug) == (False, "debug", True)
    unbound = cca_token(platform={2395: 0x5000}, challenge=bytes(32))
    verdict = verify_at_time("arm-cca", unbound, Endorsements(anchor=pem(CPAK)), AT, allow_debug=True)
    assert (verdict.ok, verdict.step, verdict.debug) == (False, "binding", True)


# --- synthetic tokens: the collection shapes --------------------------------------------------------


def _signed_parts() -> tuple[bytes, bytes]:
    collection = cbor2.loads(cca_token()).value
    return collection[44234][1], collection[44241][1]


def test_cmw_records_may_carry_an_indicator() -> None:
    platform, realm = _signed_parts()
    evidence = cbor2.dumps(
        cbor2.CBORTag(907, {44234: [263, platform, 1], 44241: ["application/eat+cwt", realm]})
    )
    assert verify(evidence).nonce == REALM_CHALLENGE


@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        ("cmw-entry-not-wrapped", "platform token is not a [content-type, bstr] record"),
        ("cmw-entry-bare-bstr", "platform token is a CBOR byte string, expected an array"),
        ("cmw-missing-realm", "lacks the realm token"),
        ("legacy-entry-wrapped", "platform token is a CBOR array, expected byte string"),
        ("legacy-missing-realm", "lacks the realm token claim"),
        ("collection-not-a-map", "CCA collection (tag 907) is a CBOR array, expected a map"),
        ("unknown-tag", "CCA token has CBOR tag 400"),
        ("platform-maced", "must be a signed COSE_Sign1"),
    ],
)
def test_malformed_collections_are_refused_at_parse(shape: str, reason: str) -> None:
    platform, realm = _signed_parts()
    shapes: dict[str, object] = {
        "cmw-entry-not-wrapped": cbor2.CBORTag(
            907, {44234: [263, cbor2.loads(platform)], 44241: [263, realm]}
        ),
        "cmw-entry-bare-bstr": cbor2.CBORTag(907, {44234: platform, 44241: [263, realm]}),
        "cmw-missing-realm": cbor2.CBORTag(907, {44234: [263, platform]}),
        "legacy-entry-wrapped": cbor2.CBORTag(399, {44234: [263, platform], 44241: realm}),
        "legacy-missing-realm": cbor2.CBORTag(399, {44234: platform}),
        "collection-not-a-map": cbor2.CBORTag(907, [platform, realm]),
        "unknown-tag": cbor2.CBORTag(400, {44234: platform, 44241: realm}),
        "platform-maced": cbor2.CBORTag(907, {44234: [263, mac0(b"claims", b"k")], 44241: [263, realm]}),
    }
    refused = refusal(cbor2.dumps(shapes[shape]))
    assert refused.step is Step.PARSE and reason in refused.message, refused.message


# --- hostile input ----------------------------------------------------------------------------------

_CCA_REFERENCE = verify(CCA_TOKEN, TFM_CPAK)
_PLATFORM_REFERENCE = verify(CCA_PLATFORM_TOKEN, TFM_CPAK)


@settings(max_examples=300, deadline=None)
@given(hostile_variants(CCA_TOKEN))
def test_hostile_realm_tokens(data: bytes) -> None:
    refuses_or_attests_the_same(lambda evidence: verify(evidence, TFM_CPAK), data, _CCA_REFERENCE)


@settings(max_examples=300, deadline=None)
@given(hostile_variants(CCA_PLATFORM_TOKEN))
def test_hostile_platform_tokens(data: bytes) -> None:
    refuses_or_attests_the_same(lambda evidence: verify(evidence, TFM_CPAK), data, _PLATFORM_REFERENCE)


@pytest.mark.parametrize(
    "anchor",
    [
        pem(ec_key(ES384)),
        pem(ec_key(ES256)),
        json.dumps(jwk(ec_key(ES384))).encode(),
        json.dumps([{"instance-id": TFM_INSTANCE_ID, "pkey": jwk(ec_key(ES384))}]).encode(),
    ],
    ids=["other-p384-pem", "p256-pem", "other-jwk", "trust-anchor-list-with-other-key"],
)
@pytest.mark.parametrize("evidence", [CCA_TOKEN, CCA_PLATFORM_TOKEN], ids=["realm", "platform-only"])
def test_rekeyed_tokens_are_refused_at_signature(evidence: bytes, anchor: bytes) -> None:
    assert refusal(evidence, anchor).step is Step.SIGNATURE


@pytest.mark.parametrize(
    "data",
    [
        b"\x00" * (2 << 20),
        bytes(range(256)) * (8 << 10),
        cbor2.dumps(cbor2.CBORTag(399, {44234: bytes(2 << 20), 44241: b""})),
        cbor2.dumps(cbor2.CBORTag(907, {44234: [263, b"\x5a" + bytes(2 << 20)], 44241: [263, b""]})),
    ],
    ids=["zeros", "byte-ramp", "2mb-platform-entry", "2mb-truncated-bstr-entry"],
)
def test_two_megabyte_inputs_are_refused_at_parse(data: bytes) -> None:
    assert refusal(data, TFM_CPAK).step is Step.PARSE
