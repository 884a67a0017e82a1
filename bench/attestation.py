"""Attestation benchmark: verifications per second per TEE type, one core, warm.

Each type is timed on its first good case in ../shared/attestation-vectors/cases.json, at the
case's verification time, through the public facade (`umbra.tee.verify_at_time`)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from bench._harness import Metric
from umbra.tee import Endorsements, verify_at_time
from umbra.tee._inputs import decode_evidence
from umbra.tee._nitro import evidence_time as nitro_evidence_time

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "attestation-vectors"
TARGETS = {"dcap": 500, "sev-snp": 1000}  # the targets; other types: at least 100/s


def _at(case: dict[str, object], evidence: bytes) -> datetime:
    at = case.get("at")
    if at == "evidence":
        found = nitro_evidence_time(evidence)
        assert found is not None
        return found
    if isinstance(at, str):
        return datetime.fromisoformat(at.replace("Z", "+00:00"))
    return datetime.now(UTC)


def verifications(seconds: float) -> list[Metric]:
    cases = json.loads((VECTORS / "cases.json").read_text())["cases"]
    chosen: dict[str, dict[str, object]] = {}
    for case in cases:
        if case["expect"]["ok"] and case["type"] not in chosen:
            chosen[case["type"]] = case
    metrics = []
    for tee_type, case in sorted(chosen.items()):
        evidence = decode_evidence((VECTORS / str(case["evidence"])).read_bytes())
        files = {
            k: (VECTORS / str(case[k])).read_bytes()
            for k in ("collateral", "vek", "chain", "root", "anchor")
            if case.get(k)
        }
        endorsements = Endorsements(**files)
        at = _at(case, evidence)
        nonce = bytes.fromhex(str(case["nonce"])) if case.get("nonce") else None
        allow_debug = bool(case.get("allow_debug"))
        verdict = verify_at_time(tee_type, evidence, endorsements, at, allow_debug=allow_debug, nonce=nonce)
        assert verdict.ok, f"{case['id']}: {verdict.error}"
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            verify_at_time(tee_type, evidence, endorsements, at, allow_debug=allow_debug, nonce=nonce)
            count += 1
        metrics.append(
            Metric(
                f"attestation verifications/s ({tee_type})",
                count / elapsed,
                "verif/s",
                TARGETS.get(tee_type, 100),
                "higher",
            )
        )
    return metrics
