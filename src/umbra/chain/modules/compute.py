"""`compute`: confidential jobs, from escrowed request to settled, verified result.

A request escrows the fee (and any `value` for the contract). At the end of each block the
scheduler gives each contract's oldest waiting job to `replicas` distinct eligible workers,
least loaded first, then the better reputation, ties broken by ring order from
SHA-256(parent block hash || job) to each SHA-256(worker id); commands on one
contract run one at a time, different contracts in parallel. A result is accepted only from an
assigned, attested worker whose signature holds and whose prev_state_hash is the chain's. A job
settles when a majority of replicas agree; a missed deadline reassigns the job to another worker,
marks the silent worker unresponsive and slashes it `slash_missed_deadline`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

from umbra import codec, crypto
from umbra.chain.module import BlockContext, CallContext, Module, ModuleError, StorageMap, StorageValue, call
from umbra.chain.modules.balances import TREASURY
from umbra.chain.modules.contracts import MAX_STATE_BYTES
from umbra.chain.state import State

__all__ = ["Compute"]

QUEUED, ASSIGNED, SETTLED, FAILED = "queued", "assigned", "settled", "failed"
DISTINCT = ("none", "operators", "tee_types")
MAX_SEALED_INPUT = 512 * 1024
MAX_SEALED_OUTPUT = 512 * 1024
MAX_REPLICAS = 7
MAX_ATTEMPTS = 5
_RESULT_FIELDS = frozenset(
    {
        "job",
        "contract",
        "worker",
        "code_hash",
        "input_hash",
        "sealed_output_hash",
        "output_commitment",
        "prev_state_hash",
        "new_state_hash",
        "failed",
        "transfers",
        "events",
    }
)


class ComputeError(ModuleError):
    pass


class _Ranking:
    """One block's candidates in scheduling order, kept incrementally.

    Workers sit in buckets keyed by (load, -reputation); inside a bucket, on a ring ordered by
    SHA-256 of their id. A job walks the buckets in key order and each ring from its own hash
    point, so a pick costs O(log W) instead of sorting every candidate for every job, and the
    whole schedule grows as n log n in workers plus jobs.
    """

    def __init__(self, candidates: list[dict[str, Any]], load_of: Callable[[bytes], int]) -> None:
        self._records = {c["id"]: c for c in candidates}
        self._point = {
            c["id"]: int.from_bytes(codec.sha256(b"umbra/ring/" + c["id"]), "big") for c in candidates
        }
        self._key: dict[bytes, tuple[int, int]] = {}
        self._buckets: dict[tuple[int, int], list[tuple[int, bytes]]] = {}
        for c in candidates:
            self._place(c["id"], (load_of(c["id"]), -int(c["score"])))
        self._keys = sorted(self._buckets)

    def _place(self, worker: bytes, key: tuple[int, int]) -> None:
        self._key[worker] = key
        bisect.insort(self._buckets.setdefault(key, []), (self._point[worker], worker))

    def ordered(self, start: int) -> Iterator[dict[str, Any]]:
        for key in self._keys:
            ring = self._buckets[key]
            first = bisect.bisect_left(ring, (start, b""))
            for i in range(len(ring)):
                yield self._records[ring[(first + i) % len(ring)][1]]

    def bump(self, worker: bytes) -> None:
        """The worker took one more job: move it to the next load level."""
        load, score = self._key[worker]
        ring = self._buckets[(load, score)]
        ring.remove((self._point[worker], worker))
        if not ring:
            del self._buckets[(load, score)]
            self._keys.remove((load, score))
        if (load + 1, score) not in self._buckets:
            bisect.insort(self._keys, (load + 1, score))
        self._place(worker, (load + 1, score))


def _escrow(args: dict[str, Any]) -> int:
    total = 0
    for name in ("max_fee", "value"):
        value = args.get(name, 0)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            total += value
    return total


class Compute(Module):
    name = "compute"
    events = frozenset(
        {
            "JobRequested",
            "JobAssigned",
            "ResultSubmitted",
            "ResultRefused",
            "JobSettled",
            "JobFailed",
            "JobReassigned",
            "Dispute",
        }
    )
    Error = ComputeError

    jobs = StorageMap("job")
    queues = StorageMap("queue")  # contract -> [job ids], oldest first
    waiting = StorageValue("waiting", [])  # contracts with queued jobs and none running, oldest first
    running = StorageMap("running")  # contract -> job id
    load = StorageMap("load")  # worker -> jobs assigned and not finished
    deadlines = StorageMap("deadline")  # height -> [job ids assigned with it]: a block reads only its own
    refusals = StorageMap("refusals")  # worker -> results refused since its last slash

    # ---- interface -------------------------------------------------------------------------------
    def job(self, state: State, job: bytes) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self.jobs.get(state, job)
        return value

    def _param(self, state: State, name: str, default: int) -> int:
        try:
            return int(self.rt.system.param(state, name))
        except KeyError:
            return default

    # ---- request -------------------------------------------------------------------------------
    @call(spend=_escrow)
    def request(
        self,
        ctx: CallContext,
        contract: bytes,
        sealed_input: bytes,
        reply_pk: bytes,
        max_fee: int,
        nonce: int,
        replicas: int = 1,
        deadline_blocks: int | None = None,
        value: int = 0,
        distinct: str = "none",
    ) -> None:
        requester = ctx.signer()
        self.ensure(self.rt.contracts.exists(ctx.state, contract), "unknown_contract", "no such contract")
        self.ensure(
            0 < len(sealed_input) <= MAX_SEALED_INPUT, "bad_input", "sealed input is empty or too large"
        )
        self.ensure(len(reply_pk) == 32, "bad_reply_key", "reply_pk is a 32-byte X25519 public key")
        self.ensure(1 <= replicas <= MAX_REPLICAS, "bad_replicas", f"replicas must be 1..{MAX_REPLICAS}")
        self.ensure(distinct in DISTINCT, "bad_distinct", f"distinct is one of {', '.join(DISTINCT)}")
        min_fee = self._param(ctx.state, "job_fee", 10) * replicas
        self.ensure(
            max_fee >= min_fee, "fee_too_low", f"max_fee must be at least {min_fee} for {replicas} replica(s)"
        )
        self.ensure(value >= 0, "bad_value", "value is non-negative")
        default_deadline = self._param(ctx.state, "job_deadline_blocks", 100)
        deadline_blocks = default_deadline if deadline_blocks is None else deadline_blocks
        self.ensure(
            default_deadline <= deadline_blocks <= 10 * default_deadline,
            "bad_deadline",
            f"deadline_blocks must be {default_deadline}..{10 * default_deadline}",
        )
        # The tx nonce is bound into the HPKE info of the sealed input; it must be the real one.
        self.ensure(
            nonce + 1 == self.rt.system.nonce(ctx.state, requester),
            "bad_nonce",
            "nonce must be the tx's nonce",
        )
        assert ctx.tx_hash is not None
        job = codec.sha256(b"umbra/job/" + ctx.tx_hash)
        self.rt.balances.reserve(ctx.state, requester, max_fee + value)
        record = {
            "id": job,
            "contract": contract,
            "requester": requester,
            "nonce": nonce,
            "sealed_input": sealed_input,
            "input_hash": codec.sha256(sealed_input),
            "reply_pk": reply_pk,
            "max_fee": max_fee,
            "fee": min_fee,  # fixed at request: a later job_fee change never exceeds the escrow
            "value": value,
            "replicas": replicas,
            "distinct": distinct,
            "deadline_blocks": deadline_blocks,
            "status": QUEUED,
            "workers": [],
            "results": {},
            "attempts": 0,
            "requested_height": ctx.height,
            "assigned_height": None,
            "deadline_height": None,
            "settled_height": None,
            "outcome": None,
        }
        self.jobs.set(ctx.state, job, record)
        queue = self.queues.get(ctx.state, contract, [])
        self.queues.set(ctx.state, contract, [*queue, job])
        self._mark_waiting(ctx.state, contract)
        self.emit(
            ctx,
            "JobRequested",
            job=job,
            contract=contract,
            requester=requester,
            nonce=nonce,
            input_hash=record["input_hash"],
            reply_pk=reply_pk,
            replicas=replicas,
            value=value,
        )

    def _mark_waiting(self, state: State, contract: bytes) -> None:
        if self.running.contains(state, contract):
            return
        waiting = self.waiting.get(state)
        if contract not in waiting:
            self.waiting.set(state, [*waiting, contract])

    # ---- scheduling ------------------------------------------------------------------------------
    def _candidates(self, block: BlockContext) -> list[dict[str, Any]]:
        registry, keys, staking = self.rt.registry, self.rt.keys, self.rt.staking
        out = []
        for wid in registry.worker_ids(block.state):
            record = registry.worker(block.state, wid)
            if (
                record is not None
                and record["role"] == "worker"
                and registry.is_attested(block.state, wid, block.time_ms)
                and keys.has_current_key(block.state, wid)
                and staking.is_staked(block.state, wid)
            ):
                out.append({**record, "score": staking.score(block.state, wid)})
        return out

    def _pick(self, block: BlockContext, job: dict[str, Any], ranking: _Ranking) -> list[bytes] | None:
        """Workers that missed this job's deadline last (they are eligible again, so the job never
        waits forever for one that is not); then least load; among equals the better reputation;
        then ring order from SHA-256(parent block hash || job), which no one can steer."""
        excluded = set(job.get("excluded", []))
        start = int.from_bytes(codec.sha256(block.parent_hash + job["id"]), "big")
        ordered = ranking.ordered(start)
        if excluded:
            first = [r for r in ordered if r["id"] not in excluded]
            ordered = iter([*first, *(r for r in ranking.ordered(start) if r["id"] in excluded)])
        chosen: list[dict[str, Any]] = []
        for record in ordered:
            if job["distinct"] == "operators" and any(c["operator"] == record["operator"] for c in chosen):
                continue
            if job["distinct"] == "tee_types" and any(c["platform"] == record["platform"] for c in chosen):
                continue
            chosen.append(record)
            if len(chosen) == job["replicas"]:
                return [c["id"] for c in chosen]
        return None

    def on_finalize(self, block: BlockContext) -> None:
        self._expire(block)
        waiting = self.waiting.get(block.state)
        if not waiting:
            return
        candidates = self._candidates(block)
        ranking = _Ranking(candidates, lambda wid: int(self.load.get(block.state, wid, 0)))
        still_waiting = []
        due: dict[int, list[bytes]] = {}  # deadline height -> jobs assigned now, written once below
        for contract in waiting:
            queue = self.queues.get(block.state, contract, [])
            if not queue:
                continue
            job = self.job(block.state, queue[0])
            assert job is not None
            workers = self._pick(block, job, ranking) if candidates else None
            if workers is None:
                still_waiting.append(contract)
                continue
            self.queues.set(block.state, contract, queue[1:])
            self._assign(block, job, workers, due)
            for worker in workers:
                ranking.bump(worker)
        # One write per deadline height, not one per job (each rewrote the whole growing list).
        for height, jobs in due.items():
            self.deadlines.set(block.state, height, [*self.deadlines.get(block.state, height, []), *jobs])
        self.waiting.set(block.state, still_waiting)

    def _assign(
        self, block: BlockContext, job: dict[str, Any], workers: list[bytes], due: dict[int, list[bytes]]
    ) -> None:
        contract_state = self.rt.contracts.current_state(block.state, job["contract"])
        deadline = block.height + int(job["deadline_blocks"])
        job.update(
            status=ASSIGNED,
            workers=workers,
            prev_state_hash=contract_state["state_hash"],
            results={},
            assigned_height=block.height,
            deadline_height=deadline,
            attempts=job["attempts"] + 1,
        )
        self.jobs.set(block.state, job["id"], job)
        self.running.set(block.state, job["contract"], job["id"])
        for worker in workers:
            self.load.set(block.state, worker, self.load.get(block.state, worker, 0) + 1)
        due.setdefault(deadline, []).append(job["id"])
        self.emit(
            block,
            "JobAssigned",
            job=job["id"],
            contract=job["contract"],
            workers=workers,
            deadline_height=deadline,
            state_version=contract_state["version"],
            state_hash=contract_state["state_hash"],
        )

    def _release(self, state: State, job: dict[str, Any]) -> None:
        for worker in job["workers"]:
            self.load.set(state, worker, max(0, self.load.get(state, worker, 0) - 1))
        # The job stays in its deadline bucket: `_expire` skips a job that is no longer assigned
        # with that deadline and drops the whole bucket at its height. (Taking it out here rewrote
        # the bucket, every job assigned in that block, at each settlement.)
        self.running.delete(state, job["contract"])
        if self.queues.get(state, job["contract"], []):
            self._mark_waiting(state, job["contract"])

    def _expire(self, block: BlockContext) -> None:
        """Jobs past their deadline go back to the front of their queue, minus the silent workers."""
        # Every deadline lies in the future when set, and every height is finalized once, so the
        # bucket of this height holds every job that is due: no scan over all jobs in flight.
        for job_id in self.deadlines.get(block.state, block.height, []):
            job = self.job(block.state, job_id)
            if job is None or job["status"] != ASSIGNED or job["deadline_height"] != block.height:
                continue
            silent = [w for w in job["workers"] if w not in job["results"]]
            penalty = int(self.rt.system.param(block.state, "slash_missed_deadline"))
            for worker in silent:
                self.rt.registry.mark_unresponsive(
                    block, worker, f"missed the deadline of job {job['id'].hex()}"
                )
                self.rt.staking.record_outcome(block, worker, "missed")
                evidence = {"job": job["id"], "deadline_height": job["deadline_height"]}
                self.rt.staking.slash(
                    block, worker, penalty, "missed a job deadline", evidence, beneficiary=job["requester"]
                )
            self._release(block.state, job)
            if job["attempts"] >= MAX_ATTEMPTS:
                self._fail(block, job, "no worker completed the job")
                continue
            job.update(
                status=QUEUED,
                workers=[],
                results={},
                excluded=sorted(set(job.get("excluded", [])) | set(silent)),
            )
            self.jobs.set(block.state, job["id"], job)
            queue = self.queues.get(block.state, job["contract"], [])
            self.queues.set(block.state, job["contract"], [job["id"], *queue])
            self._mark_waiting(block.state, job["contract"])
            self.emit(block, "JobReassigned", job=job["id"], silent=silent)
        self.deadlines.delete(block.state, block.height)

    # ---- results -------------------------------------------------------------------------------
    @call()
    def submit_result(
        self,
        ctx: CallContext,
        body: dict[str, Any],
        signature: bytes,
        sealed_output: bytes,
        state_blob: bytes | None = None,
    ) -> None:
        operator = ctx.signer()
        self.ensure(set(body) == _RESULT_FIELDS, "bad_result", "result body fields do not match the protocol")
        worker, job_id = body["worker"], body["job"]
        self.ensure(
            isinstance(worker, bytes) and isinstance(job_id, bytes), "bad_result", "worker and job are bytes"
        )
        job = self.job(ctx.state, job_id)
        self.ensure(job is not None, "unknown_job", "no such job")
        assert job is not None
        self.ensure(
            self.rt.registry.operator_of(ctx.state, worker) == operator,
            "not_operator",
            "sender does not operate this worker",
        )
        late = job["status"] in (SETTLED, FAILED) and worker in job.get("outcome_workers", [])
        if not late and (job["status"] != ASSIGNED or worker not in job["workers"]):
            self._refuse(ctx, worker, job_id)
            return
        self.ensure(
            worker not in job["results"], "duplicate_result", "this worker already submitted a result"
        )
        self.ensure(
            self.rt.registry.is_attested(ctx.state, worker, ctx.time_ms),
            "not_attested",
            "the worker is not attested",
        )
        self.ensure(
            crypto.verify("umbra/result/v1", body, signature, worker),
            "bad_signature",
            "result signature does not verify",
        )
        contract = self.rt.contracts.record(ctx.state, job["contract"])
        assert contract is not None
        self.ensure(body["contract"] == job["contract"], "bad_result", "result names another contract")
        self.ensure(body["code_hash"] == contract["code_hash"], "bad_code_hash", "result ran other code")
        self.ensure(body["input_hash"] == job["input_hash"], "bad_input_hash", "result is for another input")
        self.ensure(
            body["prev_state_hash"] == job["prev_state_hash"],
            "stale_state",
            "result was computed on stale state",
        )
        self.ensure(len(sealed_output) <= MAX_SEALED_OUTPUT, "bad_output", "sealed output too large")
        self.ensure(
            codec.sha256(sealed_output) == body["sealed_output_hash"],
            "bad_output",
            "sealed output hash mismatch",
        )
        if state_blob is not None:
            self.ensure(
                len(state_blob) <= MAX_STATE_BYTES,
                "quota",
                f"the new state is {len(state_blob)} bytes; a contract's state quota is {MAX_STATE_BYTES}",
            )
            self.ensure(
                codec.sha256(state_blob) == body["new_state_hash"], "bad_state", "state blob hash mismatch"
            )
        transfers = body["transfers"]
        self.ensure(
            isinstance(transfers, list)
            and all(
                isinstance(t, list)
                and len(t) == 2
                and isinstance(t[0], bytes)
                and len(t[0]) == 32
                and isinstance(t[1], int)
                and t[1] > 0
                for t in transfers
            ),
            "bad_result",
            "transfers are [[account, amount > 0], ...]",
        )
        events = body["events"]
        self.ensure(
            isinstance(events, list)
            and all(
                isinstance(e, dict) and set(e) == {"name", "data"} and isinstance(e["name"], str)
                for e in events
            ),
            "bad_result",
            "events are [{name, data}, ...]",
        )
        job["results"][worker] = {
            "body": body,
            "signature": signature,
            "sealed_output": sealed_output,
            "state_blob": state_blob,
        }
        self.emit(ctx, "ResultSubmitted", job=job_id, worker=worker)
        if late:
            self._judge_late(ctx, job, worker)
        else:
            self._maybe_settle(ctx, job)

    def _judge_late(self, ctx: CallContext, job: dict[str, Any], worker: bytes) -> None:
        """A replica that reports after the majority settled: agreeing earns reputation, a
        dissent is slashed with its signed result as evidence."""
        body = job["results"][worker]["body"]
        job["results"][worker]["state_blob"] = None
        self.jobs.set(ctx.state, job["id"], job)
        settled = job.get("verdict_key")  # set by _settle, whether the agreed result failed or not
        if settled is None:
            return
        if self._verdict_key(body) != settled:
            self._slash_dissent(ctx, job, worker, job["outcome"]["output_commitment"])
        else:
            self.rt.staking.record_outcome(ctx, worker, "completed")

    def _slash_dissent(self, ctx: CallContext, job: dict[str, Any], worker: bytes, majority: bytes) -> None:
        dissent = job["results"][worker]
        self.rt.staking.record_outcome(ctx, worker, "dissent")
        evidence = {
            "job": job["id"],
            "majority_commitment": majority,
            "dissent_body": dissent["body"],
            "dissent_signature": dissent["signature"],
        }
        penalty = int(self.rt.system.param(ctx.state, "slash_dissent"))
        self.rt.staking.slash(
            ctx, worker, penalty, "dissenting replica", evidence, beneficiary=job["requester"]
        )

    def _refuse(self, ctx: CallContext, worker: bytes, job_id: bytes) -> None:
        """A result for a job the worker does not hold is refused (nothing else changes) and
        counted; repeated refusals are slashed. The tx succeeds so the count persists."""
        count = self.refusals.get(ctx.state, worker, 0) + 1
        self.emit(
            ctx,
            "ResultRefused",
            job=job_id,
            worker=worker,
            reason="this job is not assigned to this worker",
            count=count,
        )
        if count >= int(self.rt.system.param(ctx.state, "refusals_before_slash")):
            self.refusals.delete(ctx.state, worker)
            penalty = int(self.rt.system.param(ctx.state, "slash_refused_results"))
            self.rt.staking.record_outcome(ctx, worker, "refused")
            self.rt.staking.slash(
                ctx, worker, penalty, "repeated results for unassigned jobs", {"job": job_id, "count": count}
            )
        else:
            self.refusals.set(ctx.state, worker, count)

    @staticmethod
    def _verdict_key(body: dict[str, Any]) -> bytes:
        """What replicas must agree on: the commitment, the new state, the transfers, success."""
        return codec.encode(
            [body["output_commitment"], body["new_state_hash"], body["transfers"], body["failed"]]
        )

    def _maybe_settle(self, ctx: CallContext, job: dict[str, Any]) -> None:
        groups: dict[bytes, list[bytes]] = {}
        for worker, result in job["results"].items():
            groups.setdefault(self._verdict_key(result["body"]), []).append(worker)
        majority = job["replicas"] // 2 + 1
        winner = next((workers for workers in groups.values() if len(workers) >= majority), None)
        if winner is None:
            if len(job["results"]) == job["replicas"]:
                self._release(ctx.state, job)
                commitments = {w: r["body"]["output_commitment"] for w, r in job["results"].items()}
                self.emit(ctx, "Dispute", job=job["id"], commitments=commitments)
                self._fail(ctx, job, "replicas disagree: no majority (dispute recorded)")
            else:
                self.jobs.set(ctx.state, job["id"], job)
            return
        self._settle(ctx, job, sorted(winner))

    def _settle(self, ctx: CallContext, job: dict[str, Any], agreeing: list[bytes]) -> None:
        balances, contracts = self.rt.balances, self.rt.contracts
        result = job["results"][agreeing[0]]
        body = result["body"]
        account = contracts.record(ctx.state, job["contract"])["account"]  # type: ignore[index]
        failed = bool(body["failed"])
        reason = None
        if not failed:
            # The value funds the contract, then its transfers are paid, atomically: if the
            # contract's account cannot cover them, nothing moves and the job fails.
            ctx.state.checkpoint()
            try:
                balances.pay_from_reserved(ctx.state, job["requester"], account, job["value"])
                for to, amount in body["transfers"]:
                    balances.transfer_free(ctx.state, account, to, amount)
            except ModuleError:
                ctx.state.rollback()
                failed, reason = True, "the contract's account cannot cover its transfers"
            else:
                ctx.state.discard()
                blob = result["state_blob"]
                contracts.apply_state(ctx, job["contract"], body["new_state_hash"], blob)
                for event in body["events"]:
                    contracts.emit_contract_event(
                        ctx, job["contract"], str(event.get("name")), event.get("data")
                    )
        if failed:
            balances.unreserve(ctx.state, job["requester"], job["value"])
        fee = int(job["fee"])
        cut = fee * int(self.rt.system.param(ctx.state, "treasury_cut_ppm")) // 1_000_000
        share = (fee - cut) // len(agreeing)
        for worker in agreeing:
            operator = self.rt.registry.operator_of(ctx.state, worker)
            assert operator is not None
            balances.pay_from_reserved(ctx.state, job["requester"], operator, share)
            self.rt.staking.record_outcome(ctx, worker, "completed")
        balances.pay_from_reserved(ctx.state, job["requester"], TREASURY, cut)
        balances.unreserve(ctx.state, job["requester"], job["max_fee"] - share * len(agreeing) - cut)
        for worker in job["results"]:
            if worker not in agreeing:
                self._slash_dissent(ctx, job, worker, body["output_commitment"])
        self._release(ctx.state, job)
        job.update(
            status=FAILED if failed else SETTLED,
            settled_height=ctx.height,
            verdict_key=self._verdict_key(body),
            outcome_workers=job["workers"],
            outcome={
                "workers": agreeing,
                "output_commitment": body["output_commitment"],
                "sealed_output": result["sealed_output"],
                "failed": failed,
                "reason": reason,
            },
        )
        for worker_result in job["results"].values():
            worker_result["state_blob"] = None  # the chain keeps the settled state once, in `contracts`
        self.jobs.set(ctx.state, job["id"], job)
        self.emit(
            ctx,
            "JobSettled",
            job=job["id"],
            contract=job["contract"],
            workers=agreeing,
            output_commitment=body["output_commitment"],
            failed=failed,
            reason=reason,
        )

    def _fail(self, ctx: CallContext | BlockContext, job: dict[str, Any], reason: str) -> None:
        """Refund everything and record why (disputes included)."""
        self.rt.balances.unreserve(ctx.state, job["requester"], job["max_fee"] + job["value"])
        job.update(
            status=FAILED,
            settled_height=ctx.height,
            outcome={"workers": [], "failed": True, "reason": reason},
        )
        self.jobs.set(ctx.state, job["id"], job)
        self.emit(ctx, "JobFailed", job=job["id"], contract=job["contract"], reason=reason)
