"""Fault handling on a whole `umbra dev` network, with its workers' pools staked as dev stakes them.

- replicas=3 on three distinct TEE types, one of them a lying enclave (`--worker-fault 2=wrong-output`):
  the output is the honest one, the liar is slashed with evidence, the honest operators are paid
  their share of the fee to the unit (and the liar nothing);
- a stalling worker (`--worker-fault 1=stall`): the job it sat on is reassigned at its deadline and
  completes on the other worker, the staller is slashed and half of the slash goes to the requester.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import pytest

from tests.adversarial.conftest import chain_events, height, raw_blocks, state_value
from tests.node.conftest import wait_until
from tests.worker.conftest import run_json
from umbra import codec, crypto
from umbra.chain.types import Block, SignedTx
from umbra.client import CallResult, Client
from umbra.node.dev import DEV_STAKE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

T = TypeVar("T")

COUNTER = """
from umbra.contract import Contract, command


class Counter(Contract):
    def init(self, ctx, start=0):
        self.state["n"] = start

    @command
    def add(self, ctx, by=1, spin=0):
        for _ in range(spin):
            pass
        self.state["n"] += by
        return self.state["n"]
"""
# `add` busy for a second or two: long enough for a second job to be assigned meanwhile.
SPIN = 15_000_000


def consistent(url: str, read: Callable[[], T]) -> tuple[int, T]:
    """`read()` together with the height it saw: retried until no block landed in between."""
    while True:
        before = height(url)
        value = read()
        if height(url) == before:
            return before, value


def free(url: str, account: bytes) -> int:
    return int(httpx.get(f"{url}/accounts/{codec.to_hex(account)}", timeout=10).json()["free"])


def fees_paid(url: str, account: bytes, after: int, until: int) -> int:
    """Tx fees `account` paid in blocks after..until (included)."""
    paid = 0
    for h, raw, _ in raw_blocks(url, after + 1):
        if h > until:
            break
        for tx in Block.decode(raw).txs:
            stx = SignedTx.decode(tx)
            if stx.tx.sender == account:
                paid += stx.tx.fee
    return paid


def param(url: str, name: str) -> int:
    return int(httpx.get(f"{url}/state/system/param", params={"key": name}, timeout=10).json()["value"])


def slashes_of(url: str, worker: bytes, since: int) -> list[dict[str, Any]]:
    return [e["data"] for e in chain_events(url, "Slashed", start=since) if e["data"]["worker"] == worker]


def test_three_tee_types_outvote_a_lying_enclave_which_is_slashed_while_the_honest_are_paid(dev: Any) -> None:
    doc = dev(workers=3, extra=("--tee-mix", "sgx,tdx,sev-snp", "--worker-fault", "2=wrong-output")).ready(
        150
    )
    url = doc["nodes"][0]["url"]
    assert [w["tee"] for w in doc["workers"]] == ["sgx", "tdx", "sev-snp"]
    ids = [codec.from_hex(w["id"]) for w in doc["workers"]]
    liar, honest = ids[2], ids[:2]
    operators = {w: state_value(url, "staking", "pool", w)["owner"] for w in ids}
    assert all(state_value(url, "staking", "pool", w)["stake"] == DEV_STAKE for w in ids)

    with Client(url, crypto.load_signing_key(doc["keys"]["alice"])) as client:
        counter = client.deploy(COUNTER, init={"start": 1}).contract_id
        start, balances = consistent(url, lambda: {w: free(url, operators[w]) for w in ids})
        result = client.call(counter, "add", {"by": 2}, replicas=3, distinct="tee_types")

    assert result.output == 3 and result.verified
    assert sorted(result.workers) == sorted(codec.to_hex(w) for w in honest)
    job = state_value(url, "compute", "job", codec.from_hex(result.job_id))
    assert sorted(job["outcome_workers"]) == sorted(ids)
    platforms = {state_value(url, "registry", "worker", w)["platform"] for w in job["outcome_workers"]}
    assert platforms == {"sgx", "tdx", "sev-snp"}

    wait_until(lambda: bool(slashes_of(url, liar, start)), 60, "the dissenting replica to be slashed")
    (slash,) = slashes_of(url, liar, start)
    assert slash["reason"] == "dissenting replica" and slash["amount"] == param(url, "slash_dissent")
    assert state_value(url, "staking", "pool", liar)["stake"] == DEV_STAKE - slash["amount"]
    record = state_value(url, "staking", "slash", slash["slash"].to_bytes(8, "big"))
    assert record["evidence"]["job"] == job["id"] and record["evidence"]["dissent_body"]["worker"] == liar
    assert codec.sha256(codec.encode(record["evidence"])) == slash["evidence_hash"]

    # `umbra status` shows the reputation the chain keeps: the liar's fell below the honest ones'.
    code, shown = run_json("status", "--node", url)
    assert code == 0
    score = {w["id"]: w["reputation"] for w in shown["workers"]}
    assert all(score[codec.to_hex(liar)] < score[codec.to_hex(w)] for w in honest)
    assert score == {codec.to_hex(w): state_value(url, "staking", "reputation", w) for w in ids} | {
        gatekeeper["id"]: score[gatekeeper["id"]] for gatekeeper in doc["gatekeepers"]
    }

    # Paid to the unit: the fee less the treasury's cut, split between the two agreeing workers'
    # operators; every operator also paid its own txs' fees in the meantime (results, heartbeats).
    end, after = consistent(url, lambda: {w: free(url, operators[w]) for w in ids})
    share = (job["fee"] - job["fee"] * param(url, "treasury_cut_ppm") // 1_000_000) // 2
    for worker in ids:
        earned = share if worker in honest else 0
        spent = fees_paid(url, operators[worker], start, end)
        assert after[worker] - balances[worker] == earned - spent, codec.to_hex(worker)


def test_a_stalling_worker_is_slashed_and_its_job_completes_elsewhere(dev: Any) -> None:
    doc = dev(workers=2, extra=("--worker-fault", "1=stall")).ready(150)
    url = doc["nodes"][0]["url"]
    honest, staller = (codec.from_hex(w["id"]) for w in doc["workers"])
    alice, bob = (crypto.load_signing_key(doc["keys"][name]) for name in ("alice", "bob"))
    with Client(url, alice) as client:
        slow, other = (client.deploy(COUNTER, init={"start": 0}).contract_id for _ in range(2))
    # A deploy's init job may have gone to the staller: wait until its heartbeat brings it back.
    wait_until(lambda: state_value(url, "registry", "worker", staller)["status"] == "active", 60, "staller")
    since, before = consistent(url, lambda: {k: free(url, k.public_key) for k in (alice, bob)})

    def call(requester: crypto.SigningKey, contract: str, spin: int) -> CallResult:
        with Client(url, requester) as own:
            return own.call(contract, "add", {"by": 1, "spin": spin})

    def assigned(contract: str) -> list[bytes]:
        found = [
            e["data"]["workers"]
            for e in chain_events(url, "JobAssigned", start=since)
            if e["data"]["contract"] == codec.from_hex(contract)
        ]
        return found[0] if found else []

    # The scheduler gives a job to the least loaded worker. If the slow job goes to the staller,
    # that is the stalled job; if it keeps the honest worker busy, the next job goes to the staller.
    with ThreadPoolExecutor(max_workers=2) as pool:
        calls = [pool.submit(call, alice, slow, SPIN)]
        wait_until(lambda: bool(assigned(slow)), 60, "the slow job assigned")
        if assigned(slow) == [honest]:
            calls.append(pool.submit(call, bob, other, 0))
        results = [c.result() for c in calls]
    (reassigned,) = [
        e["data"] for e in chain_events(url, "JobReassigned", start=since) if staller in e["data"]["silent"]
    ]
    stalled_job = reassigned["job"]

    # The job the staller sat on completed on the honest worker, with the right output.
    (done,) = [r for r in results if codec.from_hex(r.job_id) == stalled_job]
    assert done.workers == [codec.to_hex(honest)] and done.verified
    assert [r.output for r in results] == [1] * len(results)
    job = state_value(url, "compute", "job", stalled_job)
    assert job["status"] == "settled" and job["excluded"] == [staller]

    # Slashed with evidence; half of the slash compensates the requester for the delay.
    (slash,) = slashes_of(url, staller, since)
    assert slash["reason"] == "missed a job deadline" and slash["amount"] == param(
        url, "slash_missed_deadline"
    )
    every_slash = sum(s["amount"] for s in slashes_of(url, staller, 0))  # the deploys' jobs too
    assert state_value(url, "staking", "pool", staller)["stake"] == DEV_STAKE - every_slash
    record = state_value(url, "staking", "slash", slash["slash"].to_bytes(8, "big"))
    assert record["evidence"]["job"] == stalled_job
    assert state_value(url, "staking", "pool", honest)["stake"] == DEV_STAKE
    assert not slashes_of(url, honest, since)
    refund = slash["amount"] // 2
    end, after = consistent(url, lambda: {k: free(url, k.public_key) for k in (alice, bob)})
    for index, requester in enumerate((alice, bob)):
        mine = results[index : index + 1]
        paid = sum(state_value(url, "compute", "job", codec.from_hex(r.job_id))["fee"] for r in mine)
        paid += fees_paid(url, requester.public_key, since, end)
        delayed = any(codec.from_hex(r.job_id) == stalled_job for r in mine)
        assert after[requester] - before[requester] == (refund if delayed else 0) - paid
