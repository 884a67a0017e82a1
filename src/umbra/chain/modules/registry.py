"""`registry`: TEE workers, attested on chain.

`register_worker` verifies the evidence natively at block time with the endorsements carried in
the tx, so every node decides the same: the vendor chain and signatures, the council's policy
(measurement allowlist, TCB statuses, debug, sim), the report_data binding to the worker's keys,
chain and genesis, and the identity key's signature over {operator, endpoint, chain_id}.
Attestation expires; re-attesting before then keeps a worker eligible. Revocations and policy
changes take effect in the block that makes them, and start a key rotation.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from umbra import RUNTIME_VERSION, codec, crypto
from umbra.chain.module import (
    BlockContext,
    CallContext,
    Module,
    ModuleError,
    Origin,
    StorageMap,
    StorageValue,
    call,
)
from umbra.chain.state import State
from umbra.tee import TEE_TYPES, AttestationError, Endorsements, verify_at_time
from umbra.tee.policy import (
    DEFAULT_MEASUREMENT_KEYS,
    Policy,
    PolicyError,
    measurement_class,
    report_data_binding,
)

__all__ = ["Registry", "binding_fields"]

ACTIVE, UNRESPONSIVE, EXPIRED, REVOKED = "active", "unresponsive", "expired", "revoked"
ROLES = ("worker", "gatekeeper")
_ENDORSEMENT_KEYS = ("collateral", "vek", "chain", "anchor")
_MAX_EVIDENCE = 64 * 1024
_MAX_ENDPOINT = 256


class RegistryError(ModuleError):
    pass


def binding_fields(
    *, chain_id: str, genesis_hash: bytes, identity_pk: bytes, ecdh_pk: bytes, tee_type: str
) -> dict[str, Any]:
    """The fields whose hash a worker's evidence must carry as report_data (docs/protocol.md)."""
    return {
        "chain_id": chain_id,
        "genesis_hash": genesis_hash,
        "identity_pk": identity_pk,
        "ecdh_pk": ecdh_pk,
        "tee_type": tee_type,
        "runtime_version": RUNTIME_VERSION,
    }


class Registry(Module):
    name = "registry"
    events = frozenset(
        {
            "WorkerRegistered",
            "WorkerReattested",
            "WorkerRevoked",
            "WorkerExpired",
            "WorkerUnresponsive",
            "WorkerOnline",
            "MeasurementRevoked",
            "PolicySet",
        }
    )
    Error = RegistryError

    workers = StorageMap("worker")
    all_workers = StorageValue("all", [])  # ids in registration order: the deterministic iteration order
    revoked_measurements = StorageMap("revoked_measurement")
    policy_doc = StorageValue("policy")
    settings = StorageValue("settings", {})

    def genesis(self, state: State, config: Any, params: dict[str, Any]) -> None:
        config = dict(config or {})
        policy = Policy.from_dict(config.get("policy", {}))
        self.policy_doc.set(state, policy.to_dict())
        self.settings.set(
            state,
            {
                "sim_root": config.get("sim_root"),
                "attestation_ttl_ms": int(config.get("attestation_ttl_ms", 24 * 3600 * 1000)),
                "heartbeat_blocks": int(config.get("heartbeat_blocks", 20)),
                "missed_heartbeats": int(config.get("missed_heartbeats", 3)),
            },
        )

    # ---- interface -------------------------------------------------------------------------------
    def worker(self, state: State, worker: bytes) -> dict[str, Any] | None:
        record: dict[str, Any] | None = self.workers.get(state, worker)
        return record

    def worker_ids(self, state: State) -> list[bytes]:
        ids: list[bytes] = self.all_workers.get(state)
        return ids

    def is_attested(self, state: State, worker: bytes, now_ms: int) -> bool:
        record = self.worker(state, worker)
        return record is not None and record["status"] == ACTIVE and record["expires_at_ms"] > now_ms

    def policy(self, state: State) -> Policy:
        memo: dict[str, Any] = state.memo
        if "registry.policy" not in memo:
            memo["registry.policy"] = Policy.from_dict(self.policy_doc.get(state))
        policy: Policy = memo["registry.policy"]
        return policy

    def operator_of(self, state: State, worker: bytes) -> bytes | None:
        record = self.worker(state, worker)
        return None if record is None else bytes(record["operator"])

    # ---- calls ---------------------------------------------------------------------------------
    @call()
    def register_worker(
        self,
        ctx: CallContext,
        evidence: bytes,
        tee_type: str,
        endorsements: dict[str, Any],
        identity_pk: bytes,
        ecdh_pk: bytes,
        endpoint: str,
        binding_sig: bytes,
        role: str = "worker",
    ) -> None:
        operator = ctx.signer()
        # validate
        self.ensure(tee_type in TEE_TYPES, "bad_tee_type", f"unknown TEE type {tee_type!r}")
        self.ensure(role in ROLES, "bad_role", f"role must be one of {', '.join(ROLES)}")
        self.ensure(
            len(identity_pk) == 32 and len(ecdh_pk) == 32, "bad_key", "identity and ECDH keys are 32 bytes"
        )
        self.ensure(0 < len(evidence) <= _MAX_EVIDENCE, "bad_evidence", "evidence is empty or too large")
        self.ensure(
            0 < len(endpoint) <= _MAX_ENDPOINT, "bad_endpoint", "endpoint must be a URL of at most 256 chars"
        )
        self.ensure(
            set(endorsements) <= set(_ENDORSEMENT_KEYS)
            and all(isinstance(v, bytes) for v in endorsements.values()),
            "bad_endorsements",
            f"endorsements map {', '.join(_ENDORSEMENT_KEYS)} to bytes",
        )
        existing = self.worker(ctx.state, identity_pk)
        self.ensure(
            existing is None or existing["operator"] == operator,
            "not_operator",
            "this worker identity is registered to another operator",
        )
        self.ensure(
            existing is None or existing["status"] != REVOKED, "revoked", "this worker identity is revoked"
        )
        binding = {"operator": operator, "endpoint": endpoint, "chain_id": self.rt.chain_id}
        self.ensure(
            crypto.verify("umbra/worker-binding/v1", binding, binding_sig, identity_pk),
            "bad_binding_signature",
            "the identity key's signature over {operator, endpoint, chain_id} does not verify",
        )
        verified = self._attest(ctx, tee_type, evidence, endorsements, identity_pk, ecdh_pk)
        measurement = verified["measurement"]
        self.ensure(
            not self.revoked_measurements.contains(ctx.state, f"{verified['class']}:{measurement}"),
            "measurement_revoked",
            f"measurement {measurement} is revoked by the council",
        )
        # mutate and emit
        ttl = int(self.settings.get(ctx.state)["attestation_ttl_ms"])
        expires = ctx.time_ms + ttl
        record = {
            "id": identity_pk,
            "operator": operator,
            "ecdh_pk": ecdh_pk,
            "tee_type": tee_type,
            "platform": verified["platform"],
            "class": verified["class"],
            "measurement": measurement,
            "tcb_status": verified["tcb_status"],
            "endpoint": endpoint,
            "role": role,
            "attested_at_ms": ctx.time_ms,
            "expires_at_ms": expires,
            "registered_height": ctx.height if existing is None else existing["registered_height"],
            "last_heartbeat": ctx.height,
            "status": ACTIVE,
            "evidence_hash": codec.sha256(evidence),
        }
        if existing is not None and existing["ecdh_pk"] != ecdh_pk:
            self.fail("bad_key", "re-attestation must keep the registered ECDH key")
        if existing is not None and existing["role"] != role:
            self.fail("bad_role", f"re-attestation must keep the registered role {existing['role']!r}")
        self.workers.set(ctx.state, identity_pk, record)
        if existing is None:
            self.all_workers.set(ctx.state, [*self.worker_ids(ctx.state), identity_pk])
            self.emit(
                ctx,
                "WorkerRegistered",
                worker=identity_pk,
                operator=operator,
                ecdh_pk=ecdh_pk,
                tee_type=tee_type,
                platform=verified["platform"],
                measurement=measurement,
                role=role,
                expires_at_ms=expires,
            )
        else:
            self.emit(ctx, "WorkerReattested", worker=identity_pk, expires_at_ms=expires)

    def _attest(
        self,
        ctx: CallContext,
        tee_type: str,
        evidence: bytes,
        endorsements: dict[str, Any],
        identity_pk: bytes,
        ecdh_pk: bytes,
    ) -> dict[str, Any]:
        policy = self.policy(ctx.state)
        settings = self.settings.get(ctx.state)
        root = settings.get("sim_root") if tee_type == "sim" else None
        at = datetime.fromtimestamp(ctx.time_ms / 1000, UTC)
        verdict = verify_at_time(
            tee_type,
            evidence,
            Endorsements(root=root, **{k: endorsements[k] for k in _ENDORSEMENT_KEYS if k in endorsements}),
            at,
            allow_debug=policy.allow_debug,
        )
        if not verdict.ok or verdict.evidence is None:
            self.fail("attestation_refused", f"evidence refused: {verdict.error}")
        binding = report_data_binding(
            **binding_fields(
                chain_id=self.rt.chain_id,
                genesis_hash=self.rt.genesis.hash,
                identity_pk=identity_pk,
                ecdh_pk=ecdh_pk,
                tee_type=tee_type,
            )
        )
        try:
            policy.check(verdict, expected_report_data=binding, now=at)
        except AttestationError as exc:
            self.fail(f"policy_{exc.step.value}", f"evidence refused by policy: {exc}")
        evidence_model = verdict.evidence
        cls = measurement_class(evidence_model)
        key = policy.measurement_keys.get(cls) or DEFAULT_MEASUREMENT_KEYS.get(cls, "measurement")
        return {
            "platform": evidence_model.platform,
            "class": cls,
            "measurement": str(evidence_model.measurements.get(key, "")),
            "tcb_status": evidence_model.tcb_status,
        }

    @call()
    def heartbeat(self, ctx: CallContext, worker: bytes, height: int, signature: bytes) -> None:
        operator = ctx.signer()
        record = self.worker(ctx.state, worker)
        self.ensure(record is not None, "unknown_worker", "no such worker")
        assert record is not None
        self.ensure(
            record["operator"] == operator, "not_operator", "only the worker's operator sends its heartbeat"
        )
        self.ensure(
            ctx.height - int(self.settings.get(ctx.state)["heartbeat_blocks"]) <= height <= ctx.height,
            "stale_heartbeat",
            "heartbeat names a height too far from now",
        )
        body = {"chain_id": self.rt.chain_id, "worker": worker, "height": height}
        self.ensure(
            crypto.verify("umbra/heartbeat/v1", body, signature, worker),
            "bad_signature",
            "heartbeat signature does not verify",
        )
        record["last_heartbeat"] = ctx.height
        if record["status"] == UNRESPONSIVE:
            record["status"] = ACTIVE
            self.emit(ctx, "WorkerOnline", worker=worker)
        self.workers.set(ctx.state, worker, record)

    def mark_unresponsive(self, ctx: CallContext | BlockContext, worker: bytes, reason: str) -> None:
        """Used by compute when a worker misses a job deadline."""
        record = self.worker(ctx.state, worker)
        if record is not None and record["status"] == ACTIVE:
            record["status"] = UNRESPONSIVE
            self.workers.set(ctx.state, worker, record)
            self.emit(ctx, "WorkerUnresponsive", worker=worker, reason=reason)

    @call(origin=Origin.COUNCIL)
    def revoke_worker(self, ctx: CallContext, worker: bytes) -> None:
        record = self.worker(ctx.state, worker)
        self.ensure(record is not None, "unknown_worker", "no such worker")
        self._revoke(ctx, [worker], "revoked by the council")
        self.rt.keys.start_rotation(ctx)

    @call(origin=Origin.COUNCIL)
    def revoke_measurement(self, ctx: CallContext, measurement_class: str, measurement: str) -> None:
        measurement = measurement.lower().removeprefix("0x")
        self.revoked_measurements.set(ctx.state, f"{measurement_class}:{measurement}", ctx.height)
        self.emit(ctx, "MeasurementRevoked", measurement_class=measurement_class, measurement=measurement)
        affected = [
            wid
            for wid in self.worker_ids(ctx.state)
            if (r := self.worker(ctx.state, wid)) is not None
            and r["class"] == measurement_class
            and r["measurement"] == measurement
            and r["status"] != REVOKED
        ]
        self._revoke(ctx, affected, f"measurement {measurement} revoked")
        self.rt.keys.start_rotation(ctx)

    @call(origin=Origin.COUNCIL)
    def set_policy(self, ctx: CallContext, policy: dict[str, Any]) -> None:
        try:
            parsed = Policy.from_dict(policy)
        except (PolicyError, ValueError, TypeError, KeyError) as exc:
            self.fail("bad_policy", f"policy does not parse: {exc}")
        self.policy_doc.set(ctx.state, parsed.to_dict())
        ctx.state.memo.pop("registry.policy", None)
        self.emit(ctx, "PolicySet")
        # Workers whose recorded attestation the new policy would refuse lose eligibility now.
        affected = []
        for wid in self.worker_ids(ctx.state):
            record = self.worker(ctx.state, wid)
            if record is None or record["status"] == REVOKED:
                continue
            allowed = parsed.measurements.get(record["class"], ())
            tcb_ok = record["tcb_status"] is None or record["tcb_status"] in parsed.accepted_tcb_statuses
            if (
                record["measurement"] not in allowed
                or not tcb_ok
                or (record["class"] == "sim" and not parsed.allow_sim)
            ):
                affected.append(wid)
        if affected:
            self._revoke(ctx, affected, "no longer acceptable under the new policy")
            self.rt.keys.start_rotation(ctx)

    def _revoke(self, ctx: CallContext, workers: list[bytes], reason: str) -> None:
        for wid in workers:
            record = self.worker(ctx.state, wid)
            if record is None:
                continue
            record["status"] = REVOKED
            self.workers.set(ctx.state, wid, record)
            self.emit(ctx, "WorkerRevoked", worker=wid, reason=reason)

    # ---- timers --------------------------------------------------------------------------------
    def on_finalize(self, block: BlockContext) -> None:
        settings = self.settings.get(block.state)
        every = max(1, int(settings["heartbeat_blocks"]))
        if block.height % every:
            return
        silent_after = every * int(settings["missed_heartbeats"])
        for wid in self.worker_ids(block.state):
            record = self.worker(block.state, wid)
            if record is None or record["status"] in (REVOKED, EXPIRED):
                continue
            if record["expires_at_ms"] <= block.time_ms:
                record["status"] = EXPIRED
                self.workers.set(block.state, wid, record)
                self.emit(block, "WorkerExpired", worker=wid)
            elif record["status"] == ACTIVE and block.height - record["last_heartbeat"] > silent_after:
                self.mark_unresponsive(block, wid, "missed heartbeats")
