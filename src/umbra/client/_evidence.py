"""Re-verifying a worker's attestation on the client, instead of trusting that the node did.

The registry keeps only the SHA-256 of the evidence a worker registered with. The worker serves
the evidence itself (GET {endpoint}/info); the client checks it hashes to the registry's value,
then runs it through `umbra.tee` at the time the chain accepted it, with the network's policy
and the report_data binding to this chain and this worker's keys, as `registry.register_worker`
does. A node that lied about a worker being attested is caught here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from umbra import codec, tee
from umbra.chain.modules.registry import binding_fields
from umbra.client._errors import VerificationError
from umbra.client._protocol import WorkerRecord
from umbra.tee.policy import Policy, PolicyError, report_data_binding

__all__ = ["verify_worker_evidence"]

_ENDORSEMENT_KEYS = ("collateral", "vek", "chain", "anchor")


def verify_worker_evidence(
    record: WorkerRecord,
    *,
    evidence: bytes,
    endorsements: Mapping[str, bytes],
    policy_doc: Mapping[str, Any],
    sim_root: bytes | None,
    chain_id: str,
    genesis_hash: bytes,
) -> tee.Verdict:
    name = codec.to_hex(record.id)
    if codec.sha256(evidence) != record.evidence_hash:
        raise VerificationError("bad_evidence", f"the evidence {name} serves is not what it registered with")
    try:
        policy = Policy.from_dict(policy_doc)
    except (PolicyError, ValueError, TypeError, KeyError) as exc:
        raise VerificationError("bad_evidence", f"the network's policy does not parse: {exc}") from None
    at = datetime.fromtimestamp(record.attested_at_ms / 1000, UTC)
    extra = {k: bytes(v) for k, v in endorsements.items() if k in _ENDORSEMENT_KEYS}
    root = sim_root if record.tee_type == "sim" else None
    verdict = tee.verify_at_time(
        record.tee_type, evidence, tee.Endorsements(root=root, **extra), at, allow_debug=policy.allow_debug
    )
    if not verdict.ok:
        raise VerificationError("bad_evidence", f"the evidence of {name} does not verify: {verdict.error}")
    binding = report_data_binding(
        **binding_fields(
            chain_id=chain_id,
            genesis_hash=genesis_hash,
            identity_pk=record.id,
            ecdh_pk=record.ecdh_pk,
            tee_type=record.tee_type,
        )
    )
    try:
        policy.check(verdict, expected_report_data=binding, now=at)
    except tee.AttestationError as exc:
        raise VerificationError(
            "bad_evidence", f"the evidence of {name} is refused by policy: {exc}"
        ) from None
    return verdict
