"""Attestation policy: each refusal names its step; the policy round-trips through genesis formats."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
import pytest

from umbra.tee import AttestationError, Endorsements, Step, Verdict, VerifiedEvidence, verify_at_time
from umbra.tee._sim import SimAuthority, SimPlatform
from umbra.tee.policy import DEFAULT_TCB_STATUSES, Policy, PolicyError, measurement_class, report_data_binding

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
MRTD = "11" * 48
MRENCLAVE = "22" * 32
MRSIGNER = "33" * 32
BINDING = report_data_binding(chain_id="umbra-test", identity_pk=b"\1" * 32)

POLICY = Policy(
    measurements={
        "dcap-tdx": {MRTD},
        "dcap-sgx": {MRENCLAVE},
        "nitro": {"44" * 48},
        "psa": {"55" * 32, "66" * 32},
        "sim": {"77" * 32},
    },
    denied_advisories=frozenset({"INTEL-SA-00837"}),
)


def tdx(**changes: Any) -> VerifiedEvidence:
    evidence = VerifiedEvidence(
        tee_type="dcap",
        platform="tdx",
        measurements={"mrtd": MRTD, "rtmr0": "aa" * 48},
        report_data=BINDING,
        debug=False,
        tcb_status="UpToDate",
        advisory_ids=("INTEL-SA-00615",),
    )
    return dataclasses.replace(evidence, **changes)


def refusal(
    policy: Policy, evidence: Verdict | VerifiedEvidence, expected: bytes | None = BINDING
) -> AttestationError:
    with pytest.raises(AttestationError) as refused:
        policy.check(evidence, expected_report_data=expected, now=NOW)
    return refused.value


def test_accepts_evidence_that_meets_every_requirement() -> None:
    POLICY.check(tdx(), expected_report_data=BINDING, now=NOW)
    POLICY.check(tdx(), expected_report_data=None, now=NOW)  # binding checked only when asked


@pytest.mark.parametrize(
    ("policy_changes", "evidence", "step"),
    [
        ({}, tdx(tee_type="sim", platform="tdx", measurements={"measurement": "77" * 32}), Step.POLICY),
        ({}, tdx(tee_type="nitro", platform="nitro", claims={"simulated": True}), Step.POLICY),
        ({}, tdx(debug=True), Step.DEBUG),
        ({"allow_debug": True}, tdx(debug=True), Step.DEBUG),  # dcap debug is never acceptable
        ({}, tdx(tcb_status="OutOfDate"), Step.TCB),
        ({"accepted_tcb_statuses": frozenset({"UpToDate"})}, tdx(tcb_status="SWHardeningNeeded"), Step.TCB),
        ({"accepted_tcb_statuses": frozenset({"OutOfDate"})}, tdx(tcb_status="Revoked"), Step.TCB_REVOKED),
        ({}, tdx(advisory_ids=("INTEL-SA-00615", "INTEL-SA-00837")), Step.ADVISORY),
        ({}, tdx(measurements={"mrtd": "12" * 48}), Step.MEASUREMENT),
        ({}, tdx(measurements={"rtmr0": MRTD}), Step.MEASUREMENT),
        (
            {},
            tdx(tee_type="sev-snp", platform="sev-snp", measurements={"measurement": MRTD}),
            Step.MEASUREMENT,
        ),
        ({}, tdx(report_data=b"\0" * 64), Step.BINDING),
        ({}, tdx(issued_at=NOW - timedelta(seconds=601)), Step.FRESHNESS),
        ({}, tdx(issued_at=NOW + timedelta(seconds=61)), Step.FRESHNESS),
    ],
    ids=[
        "sim-not-allowed",
        "simulated-claim-not-allowed",
        "debug",
        "dcap-debug-even-if-allowed",
        "tcb-out-of-date-by-default",
        "tcb-not-configured",
        "tcb-revoked-always",
        "denied-advisory",
        "measurement-not-allowed",
        "measurement-key-absent",
        "class-without-allowlist",
        "binding",
        "too-old",
        "from-the-future",
    ],
)
def test_each_refusal_names_its_step(
    policy_changes: dict[str, Any], evidence: VerifiedEvidence, step: Step
) -> None:
    policy = dataclasses.replace(POLICY, **policy_changes)
    error = refusal(policy, evidence)
    assert error.step == step, error
    assert error.message and error.debug == evidence.debug


def test_configured_relaxations_accept() -> None:
    relaxed = dataclasses.replace(
        POLICY, accepted_tcb_statuses=DEFAULT_TCB_STATUSES | {"OutOfDate"}, allow_debug=True, allow_sim=True
    )
    relaxed.check(tdx(tcb_status="OutOfDate"), expected_report_data=BINDING, now=NOW)
    nitro = tdx(
        tee_type="nitro", platform="nitro", measurements={"pcr0": "44" * 48}, debug=True, tcb_status=None
    )
    relaxed.check(nitro, expected_report_data=BINDING, now=NOW)
    sim = tdx(tee_type="sim", platform="sgx", measurements={"measurement": "77" * 32}, tcb_status=None)
    relaxed.check(sim, expected_report_data=BINDING, now=NOW)
    # within the clock skew and the age limit
    relaxed.check(tdx(issued_at=NOW + timedelta(seconds=59)), expected_report_data=BINDING, now=NOW)
    relaxed.check(tdx(issued_at=NOW - timedelta(seconds=600)), expected_report_data=BINDING, now=NOW)


def test_sgx_can_be_pinned_by_signer_instead_of_enclave() -> None:
    sgx = tdx(platform="sgx", measurements={"mrenclave": "99" * 32, "mrsigner": MRSIGNER})
    assert measurement_class(sgx) == "dcap-sgx"
    assert refusal(POLICY, sgx).step == Step.MEASUREMENT
    by_signer = Policy(measurements={"dcap-sgx": {MRSIGNER}}, measurement_keys={"dcap-sgx": "mrsigner"})
    by_signer.check(sgx, expected_report_data=BINDING, now=NOW)


def test_every_psa_software_component_must_be_allowed() -> None:
    psa = tdx(tee_type="psa", platform="psa", tcb_status=None, report_data=BINDING[:32])
    good = dataclasses.replace(psa, measurements={"sw:BL": "55" * 32, "sw:PRoT": "66" * 32})
    POLICY.check(good, expected_report_data=BINDING, now=NOW)  # a 32-byte challenge carries the binding
    bad = dataclasses.replace(psa, measurements={"sw:BL": "55" * 32, "sw#1": "67" * 32})
    error = refusal(POLICY, bad)
    assert error.step == Step.MEASUREMENT and "sw#1" in error.message


def test_a_refused_verdict_stays_refused_with_its_own_step() -> None:
    verdict = verify_at_time("sim", b"\xa0", Endorsements(), NOW)
    error = refusal(POLICY, verdict)
    assert error.step == Step.PARSE and not error.message.startswith("parse:")


def test_sim_evidence_end_to_end_with_the_binding() -> None:
    authority = SimAuthority.create(now=NOW - timedelta(days=1))
    platform = SimPlatform(
        authority.issue_hardware(now=NOW - timedelta(days=1)), measurement=bytes.fromhex("77" * 32)
    )
    fields = {"chain_id": "umbra-test", "identity_pk": b"\1" * 32}
    evidence = platform.evidence(report_data_binding(**fields), at=NOW - timedelta(seconds=5))
    verdict = verify_at_time("sim", evidence, Endorsements(root=authority.cert_pem), NOW)
    assert verdict.ok, verdict.error
    assert refusal(POLICY, verdict).step == Step.POLICY
    allow_sim = dataclasses.replace(POLICY, allow_sim=True)
    allow_sim.check(verdict, expected_report_data=report_data_binding(**fields), now=NOW)
    another_chain = report_data_binding(**{**fields, "chain_id": "another-chain"})
    assert refusal(allow_sim, verdict, another_chain).step == Step.BINDING
    with pytest.raises(AttestationError) as stale:
        allow_sim.check(
            verdict, expected_report_data=report_data_binding(**fields), now=NOW + timedelta(hours=1)
        )
    assert stale.value.step == Step.FRESHNESS


def test_round_trips_through_json_and_cbor() -> None:
    data = POLICY.to_dict()
    assert Policy.from_dict(json.loads(json.dumps(data))) == POLICY
    assert Policy.from_dict(cbor2.loads(cbor2.dumps(data, canonical=True))) == POLICY
    reordered = Policy(
        measurements={"sim": ["77" * 32], "psa": ["66" * 32, "55" * 32], "nitro": ["44" * 48]}
        | {"dcap-sgx": [MRENCLAVE.upper()], "dcap-tdx": ["0x" + MRTD]},
        denied_advisories=frozenset({"INTEL-SA-00837"}),
    )
    assert cbor2.dumps(reordered.to_dict(), canonical=True) == cbor2.dumps(data, canonical=True)


def test_from_dict_fills_defaults_and_keeps_overrides() -> None:
    policy = Policy.from_dict({"allow_sim": True, "measurement_keys": {"dcap-sgx": "mrsigner"}})
    assert policy.allow_sim and policy.accepted_tcb_statuses == DEFAULT_TCB_STATUSES
    assert policy.measurement_keys["dcap-sgx"] == "mrsigner" and policy.measurement_keys["dcap-tdx"] == "mrtd"


@pytest.mark.parametrize(
    "data",
    [
        {"allow_everything": True},
        {"version": 2},
        {"allow_sim": 1},
        {"max_evidence_age_s": -1},
        {"max_clock_skew_s": 1.5},
        {"measurements": {"tpm": ["00"]}},
        {"measurements": {"sim": ["not hex"]}},
        {"measurements": {"sim": "77"}},
        {"measurements": ["sim"]},
        {"accepted_tcb_statuses": ["UpToDate", "Revoked"]},
        {"accepted_tcb_statuses": ["UptoDate"]},
        {"measurement_keys": {"sim": ""}},
        [],
    ],
)
def test_from_dict_refuses_malformed_policies(data: Any) -> None:
    with pytest.raises(PolicyError):
        Policy.from_dict(data)


def test_report_data_binding_is_the_padded_hash_of_deterministic_cbor() -> None:
    binding = report_data_binding(chain_id="c", genesis_hash=b"\2" * 32, tee_type="sim", runtime_version=1)
    assert len(binding) == 64 and binding[32:] == bytes(32)
    same = report_data_binding(runtime_version=1, tee_type="sim", genesis_hash=b"\2" * 32, chain_id="c")
    assert same == binding
    expected = {"chain_id": "c", "genesis_hash": b"\2" * 32, "tee_type": "sim", "runtime_version": 1}
    assert binding[:32] == hashlib.sha256(cbor2.dumps(expected, canonical=True)).digest()
    assert (
        report_data_binding(chain_id="c", genesis_hash=b"\2" * 32, tee_type="sgx", runtime_version=1)
        != binding
    )
