"""Hostile input for every verifier: every case's evidence (and a sim sample), mutated.

Truncated, byte-flipped, junk-appended, empty, 2 MB and wrong-type evidence must give a clean
refusal: the verifier raises only `AttestationError`, and the verdict says why. The one mutation a
format may survive is one that touches nothing signed (trailing bytes after the structure, padding,
reserved fields): then the verdict must be exactly the original one, never a different "ok".
"""

from __future__ import annotations

import contextlib
import importlib
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import VECTORS, load_cases
from umbra.tee import TEE_TYPES, AttestationError, Endorsements, Verdict, get_verifier, verify_at_time
from umbra.tee._inputs import decode_evidence, parse_time
from umbra.tee._sim import SimAuthority, SimPlatform

NOW = datetime.now(UTC)
TWO_MB = 2 * 1024 * 1024
# An Arm CCA platform token is a PSA attestation token (same claims, signed by the IAK/CPAK), and
# both verifiers report the profile rather than judge it, so each may read the other's tokens.
RELATED_TYPES = {frozenset({"psa", "arm-cca"})}


@dataclass(frozen=True)
class Sample:
    name: str
    tee_type: str
    good: bool
    evidence: bytes = field(repr=False)
    endorsements: Endorsements = field(repr=False)
    at: datetime = field(repr=False)
    allow_debug: bool = field(repr=False)
    nonce: bytes | None = field(repr=False)


def case_sample(case: dict[str, object]) -> Sample:
    evidence = decode_evidence((VECTORS / str(case["evidence"])).read_bytes())
    names = ("collateral", "vek", "chain", "root", "anchor")
    endorsements = Endorsements(
        **{name: (VECTORS / str(case[name])).read_bytes() for name in names if case.get(name)}
    )
    at = NOW
    if case.get("at") == "evidence":
        at = importlib.import_module(f"umbra.tee._{case['type']}").evidence_time(evidence) or NOW
    elif case.get("at"):
        at = parse_time(str(case["at"]))
    nonce = bytes.fromhex(str(case["nonce"])) if case.get("nonce") else None
    good = bool(case["expect"]["ok"])  # type: ignore[index]
    return Sample(
        str(case["id"]),
        str(case["type"]),
        good,
        evidence,
        endorsements,
        at,
        bool(case.get("allow_debug")),
        nonce,
    )


def sim_sample() -> Sample:
    at = datetime(2025, 1, 1, tzinfo=UTC)
    authority = SimAuthority.create(now=at - timedelta(days=1))
    platform = SimPlatform(
        authority.issue_hardware(now=at - timedelta(days=1)), presented_type="tdx", measurement=bytes(32)
    )
    evidence = platform.evidence(b"\x07" * 64, at=at)
    return Sample(
        "sim/generated", "sim", True, evidence, Endorsements(root=authority.cert_pem), at, False, None
    )


SAMPLES = [case_sample(case) for case in load_cases()] + [sim_sample()]
ALL_TYPES = tuple(TEE_TYPES)


def judge(sample: Sample, evidence: bytes, tee_type: str | None = None) -> Verdict:
    """The facade's verdict, after checking the verifier itself lets only AttestationError out
    (the facade would turn anything else into a refusal, hiding the bug)."""
    tee_type = tee_type or sample.tee_type
    with contextlib.suppress(AttestationError):
        get_verifier(tee_type).verify_at_time(evidence, sample.endorsements, sample.at)
    verdict = verify_at_time(
        tee_type, evidence, sample.endorsements, sample.at, allow_debug=sample.allow_debug, nonce=sample.nonce
    )
    if not verdict.ok:
        assert verdict.error and verdict.step, verdict
    return verdict


BASELINE = {sample.name: judge(sample, sample.evidence) for sample in SAMPLES}


def test_every_sample_gives_its_expected_verdict_unmutated() -> None:
    assert {sample.name: BASELINE[sample.name].ok for sample in SAMPLES} == {s.name: s.good for s in SAMPLES}


def assert_refused_or_unchanged(sample: Sample, verdict: Verdict, *, unsigned_change: bool = True) -> None:
    if verdict.ok:
        assert sample.good and unsigned_change, f"{sample.name}: mutated evidence accepted"
        assert verdict == BASELINE[sample.name], (
            f"{sample.name}: mutated evidence accepted with another verdict"
        )


@settings(max_examples=1200, deadline=None)
@given(sample=st.sampled_from(SAMPLES), data=st.data())
def test_truncated_evidence_is_refused(sample: Sample, data: st.DataObject) -> None:
    length = data.draw(st.integers(0, len(sample.evidence) - 1), label="length")
    verdict = judge(sample, sample.evidence[:length])
    # cutting off only zero padding after the structure may leave it intact (a TDX quote file is padded)
    assert_refused_or_unchanged(sample, verdict, unsigned_change=not any(sample.evidence[length:]))


@settings(max_examples=2500, deadline=None)
@given(sample=st.sampled_from(SAMPLES), data=st.data())
def test_flipped_bytes_are_refused(sample: Sample, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(sample.evidence) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="mask")
    mutated = bytearray(sample.evidence)
    mutated[position] ^= mask
    assert_refused_or_unchanged(sample, judge(sample, bytes(mutated)))


@settings(max_examples=600, deadline=None)
@given(sample=st.sampled_from(SAMPLES), junk=st.binary(min_size=1, max_size=4096))
def test_appended_junk_is_ignored(sample: Sample, junk: bytes) -> None:
    """Verifiers parse by structure length: what follows a well-formed structure changes nothing."""
    assert judge(sample, sample.evidence + junk) == BASELINE[sample.name]


@pytest.mark.parametrize("tee_type", ALL_TYPES)
def test_empty_and_oversized_evidence_is_refused(tee_type: str) -> None:
    sample = next((s for s in SAMPLES if s.tee_type == tee_type), SAMPLES[0])
    noise = random.Random(tee_type).randbytes(TWO_MB)
    for evidence in (b"", noise, bytes(TWO_MB), b"\xff" * TWO_MB):
        assert not judge(sample, evidence, tee_type).ok


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s.good], ids=lambda s: s.name)
def test_good_evidence_padded_to_megabytes_is_refused_cleanly_or_unchanged(sample: Sample) -> None:
    assert_refused_or_unchanged(sample, judge(sample, sample.evidence + bytes(TWO_MB)))


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_evidence_of_one_type_is_refused_by_every_other(sample: Sample) -> None:
    for tee_type in ALL_TYPES:
        if tee_type == sample.tee_type or frozenset({tee_type, sample.tee_type}) in RELATED_TYPES:
            continue
        verdict = judge(sample, sample.evidence, tee_type)
        assert not verdict.ok, f"{sample.name} accepted as {tee_type}"
