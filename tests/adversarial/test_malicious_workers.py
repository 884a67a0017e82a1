"""Malicious workers, each a real `umbra worker` process: the chain or the worker's own enclave
core refuses every cheat, or slashes it, and the contract's state moves only by honest results.

One network: a node, a gatekeeper, two honest workers (h0, h1) and one worker `m` that is
restarted (same sealed identity, same port) with a different `--fault` for each attack. Each
command asks for 3 replicas, so all three workers are assigned and the honest majority settles
at once; the counter must then read exactly one increment per call. The host faults live in
umbra.worker._faults (test-only code paths of the *host*, outside the core's trust boundary).

The same attacks against the runtime alone, in one process, are in tests/modules/test_compute.py
(result_checks, refusals counted then slashed, dissent slashed) and tests/modules/test_registry.py;
a forged block fed to a core in-process is in tests/enclave/test_follow.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.adversarial.conftest import (
    COUNTER,
    HTTP,
    AdvNet,
    chain_events,
    height,
    make_network,
    raw_blocks,
    record,
    state_value,
    submit,
    tx_receipt,
    wait_ready,
    worker_info,
)
from tests.node.conftest import UMBRA, child_env, free_port, wait_until
from umbra import codec, crypto
from umbra.chain.types import Block, SignedTx
from umbra.client import CallResult, Client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# `add` spins a little: honest replicas then take long enough (a few hundred ms) that `m` sees each
# assignment and fetches its state before the honest majority settles it, so every attack is
# actually attempted (a replica that comes late is refused as late, which would prove less).
SPIN = 4_000_000
SLOW_COUNTER = COUNTER.replace(
    '        self.state["n"] += by\n',
    '        for _ in range(spin):\n            pass\n        self.state["n"] += by\n',
).replace("def add(self, ctx, by=1):", "def add(self, ctx, by=1, spin=0):")


@dataclass
class Env:
    net: AdvNet
    counter: str
    expected: int = 0
    ids: dict[str, str] = field(default_factory=dict)
    refusals: dict[str, list[str]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.net.node_url

    def call(self, replicas: int = 3) -> CallResult:
        with Client(self.url, self.net.key("user")) as client:
            result = client.call(self.counter, "add", {"by": 1, "spin": SPIN}, replicas=replicas)
        self.expected += 1
        assert result.output == self.expected, "the counter moved by something else than honest results"
        return result

    def counter_value(self) -> Any:
        with Client(self.url, self.net.key("user")) as client:
            return client.query(self.counter, "get", min_height=height(self.url)).output

    def as_malicious(self, fault: str | None) -> None:
        """Restart `m` with `--fault fault` (None: honest), same identity, and wait until it is active."""
        self.net.by_name["m"].stop()
        extra = ("--fault", fault) if fault else ()
        self.net.start_host("worker", "m", *extra)
        wait_ready(self.net, "m", timeout=60)
        assert self.m_info()["id"] == self.ids["m"]  # the same identity
        if fault == "forge-blocks":
            return  # it stops at the first block that assigns a job, even one it had seen before
        head = height(self.url)
        wait_until(lambda: self.m_info()["height"] >= head, 60, "m's core caught up with the chain")

    def m_info(self) -> dict[str, Any]:
        return worker_info(self.net.by_name["m"].url or "")

    def m_log(self) -> str:
        return self.net.by_name["m"].log.read_text(errors="replace")

    def m_submissions(self, since: int) -> list[dict[str, Any]]:
        """m's operator's submit_result txs from height `since`, with their receipts."""
        operator = self.net.key("m-operator").public_key
        found = []
        for h, raw, _ in raw_blocks(self.url, since):
            for tx_raw in Block.decode(raw).txs:
                stx = SignedTx.decode(tx_raw)
                if stx.tx.sender == operator and stx.tx.call.method == "submit_result":
                    found.append(
                        {"height": h, "body": stx.tx.call.args["body"], **tx_receipt(self.url, stx.hash)}
                    )
        return found

    def results_of(self, job_id: str) -> list[str]:
        job = state_value(self.url, "compute", "job", codec.from_hex(job_id))
        return [codec.to_hex(w) for w in job["results"]]

    def refused(self, attack: str, code: str) -> None:
        self.refusals.setdefault(attack, []).append(code)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    net = make_network(
        tmp_path_factory.mktemp("malicious"), operators=("h0", "h1", "m", "u"), accounts=("user", "thief")
    )
    try:
        net.start_node()
        for name in ("gatekeeper", "h0", "h1", "m"):
            net.start_host("gatekeeper" if name == "gatekeeper" else "worker", name)
        wait_ready(net, "gatekeeper", "h0", "h1", "m")
        with Client(net.node_url, net.key("user")) as client:
            counter = client.deploy(SLOW_COUNTER, init={"start": 0}).contract_id
        ids = {name: worker_info(net.by_name[name].url or "")["id"] for name in ("h0", "h1", "m")}
        yield Env(net, counter, ids=ids)
    finally:
        net.stop_all()


@pytest.fixture(scope="module", autouse=True)
def figures(env: Env) -> Iterator[None]:
    yield
    record(
        "malicious",
        {
            "attacks": {attack: sorted(set(codes)) for attack, codes in env.refusals.items()},
            "attacks_refused_or_slashed": len(env.refusals),
            "honest_calls_settled": env.expected,
        },
    )


def test_a_forged_result_signature_is_refused(env: Env) -> None:
    env.as_malicious("forge-signature")
    since = height(env.url)
    result = env.call()
    assert env.ids["m"] not in result.workers and len(result.workers) == 2

    def refused() -> bool:
        return any(s["body"]["job"] == codec.from_hex(result.job_id) for s in env.m_submissions(since))

    wait_until(refused, 60, "m's forged submission")
    (sub,) = [s for s in env.m_submissions(since) if s["body"]["job"] == codec.from_hex(result.job_id)]
    assert (sub["status"], sub["ok"], sub["error"]) == ("included", False, "compute.bad_signature")
    assert env.ids["m"] not in env.results_of(result.job_id)
    env.refused("forged signature", sub["error"])


def test_a_host_cannot_make_its_core_compute_on_stale_state(env: Env) -> None:
    env.as_malicious("stale-state")
    first = env.call()  # m remembers the state this job ran on
    wait_until(lambda: env.ids["m"] in env.results_of(first.job_id), 60, "m's honest first result")
    since = height(env.url)
    result = env.call()  # m feeds its core that old state instead of the current one
    wait_until(
        lambda: "does not hash to the state the job was assigned" in env.m_log(), 60, "m's core refusal"
    )
    assert "feeding the core a stale state" in env.m_log()
    assert env.ids["m"] not in env.results_of(result.job_id)
    assert not [s for s in env.m_submissions(since) if s["body"]["job"] == codec.from_hex(result.job_id)]
    env.refused("stale state", "core: bad_state")


def test_a_replayed_old_result_is_refused(env: Env) -> None:
    env.as_malicious("replay-result")
    first = env.call()  # m executes honestly and keeps its result
    wait_until(lambda: env.ids["m"] in env.results_of(first.job_id), 60, "m's honest first result")
    since = height(env.url) + 1  # blocks after the one with m's honest first result
    second = env.call()  # m submits the first result again instead
    first_job = codec.from_hex(first.job_id)

    def replayed() -> list[dict[str, Any]]:
        return [s for s in env.m_submissions(since) if s["body"]["job"] == first_job]

    wait_until(lambda: bool(replayed()), 60, "m's replayed result")
    assert all((s["ok"], s["error"]) == (False, "compute.duplicate_result") for s in replayed()), replayed()
    assert env.ids["m"] not in env.results_of(second.job_id)
    job = state_value(env.url, "compute", "job", first_job)
    assert job["status"] == "settled" and job["settled_height"] == first.height
    env.refused("replayed result", "compute.duplicate_result")


def test_a_lying_enclave_is_outvoted_and_slashed(env: Env) -> None:
    env.as_malicious("wrong-output")
    since = height(env.url)
    result = env.call()
    assert env.ids["m"] not in result.workers
    m = codec.from_hex(env.ids["m"])

    def slashed() -> list[dict[str, Any]]:
        return [e for e in chain_events(env.url, "Slashed", start=since) if e["data"]["worker"] == m]

    wait_until(lambda: bool(slashed()), 60, "the dissenting replica slashed")
    assert slashed()[0]["data"]["reason"] == "dissenting replica"
    env.refused("wrong output", "slashed: dissenting replica")


def test_results_for_other_workers_jobs_are_refused_then_slashed(env: Env) -> None:
    env.as_malicious("steal-job")
    m = codec.from_hex(env.ids["m"])
    since = height(env.url)
    for _ in range(8):  # 2 replicas of 3 workers: most jobs go to the two with the better record
        env.call(replicas=2)
        if len(chain_events(env.url, "ResultRefused", start=since)) >= 3:
            break

    def slashed() -> list[dict[str, Any]]:
        return [e for e in chain_events(env.url, "Slashed", start=since) if e["data"]["worker"] == m]

    wait_until(lambda: bool(slashed()), 60, "m slashed for repeated claims")
    assert slashed()[0]["data"]["reason"] == "repeated results for unassigned jobs"
    refused = [e for e in chain_events(env.url, "ResultRefused", start=since) if e["data"]["worker"] == m]
    assert len(refused) >= 3
    impersonations = [s for s in env.m_submissions(since) if s["body"]["worker"] != m]
    assert impersonations and all(s["error"] == "compute.not_operator" for s in impersonations)
    for event in refused:  # the claimed jobs settled with their assigned workers' results only
        assert env.ids["m"] not in env.results_of(codec.to_hex(event["data"]["job"]))
    env.refused("result for someone else's job", "refused, counted, then slashed")
    env.refused("result in another worker's name", "compute.not_operator")


def test_a_host_feeding_its_core_forged_blocks_gets_nothing_executed(env: Env) -> None:
    env.as_malicious("forge-blocks")
    since = height(env.url)
    result = env.call()
    log_has = env.m_log
    wait_until(lambda: "refused to execute forged job" in log_has(), 60, "m's core refusing the forged job")
    assert "refused the forged block" in log_has() and "EXECUTED forged job" not in log_has()
    assert "events_root" in log_has()  # the core named the commitment the forgery broke
    assert env.ids["m"] not in env.results_of(result.job_id)
    assert not env.m_submissions(since)
    stuck = env.m_info()["height"]
    assert stuck < height(env.url)
    env.refused("forged blocks", "core: forged_block (events_root)")

    # The same identity, honest again, follows the genuine chain and is an agreeing replica.
    env.as_malicious(None)
    wait_until(
        lambda: env.m_info()["height"] >= height(env.url) - 1,
        60,
        "m caught up",
    )
    with Client(env.url, env.net.key("user")) as client:
        client.call(env.counter, "add", {"by": 0}, replicas=3)  # any replica may have been slow
    assert env.counter_value() == env.expected


def test_registering_with_another_workers_evidence_is_refused(env: Env) -> None:
    h0 = worker_info(env.net.by_name["h0"].url or "")
    h0_id = codec.from_hex(h0["id"])
    record_before = state_value(env.url, "registry", "worker", h0_id)
    evidence = codec.from_hex(h0["evidence"])
    endorsements = {k: codec.from_hex(v) for k, v in h0["endorsements"].items()}
    # h0's own registration tx (public): its binding signature is over h0's operator.
    register = next(
        SignedTx.decode(tx)
        for _, raw, _ in raw_blocks(env.url)
        for tx in Block.decode(raw).txs
        if SignedTx.decode(tx).tx.call.method == "register_worker"
        and SignedTx.decode(tx).tx.call.args["identity_pk"] == h0_id
    )
    args = dict(register.tx.call.args)
    mine = crypto.SigningKey.generate()
    endpoint = f"http://127.0.0.1:{free_port()}"
    assert env.net.genesis is not None
    binding = {
        "operator": env.net.key("thief").public_key,
        "endpoint": endpoint,
        "chain_id": env.net.genesis.chain_id,
    }
    attempts = {
        # h0's identity, evidence and binding signature, posted by another operator.
        "copy of h0's registration": dict(args),
        # h0's evidence with the thief's own identity key (a binding it can sign).
        "h0's evidence, own identity": {
            **args,
            "identity_pk": mine.public_key,
            "endpoint": endpoint,
            "binding_sig": mine.sign("umbra/worker-binding/v1", binding),
        },
    }
    for what, attempt in attempts.items():
        attempt.update(evidence=evidence, endorsements=endorsements)
        receipt = submit(env.net, "thief", "registry", "register_worker", **attempt)
        assert receipt["status"] == "included" and receipt["ok"] is False, (what, receipt)
        assert receipt["error"] in ("registry.not_operator", "registry.policy_binding"), (what, receipt)
        env.refused(f"register with another worker's evidence ({what})", receipt["error"])
    fields = ("operator", "ecdh_pk", "endpoint", "role", "evidence_hash", "registered_height", "measurement")
    after = state_value(env.url, "registry", "worker", h0_id)
    assert {f: after[f] for f in fields} == {f: record_before[f] for f in fields}  # h0 is still h0's
    assert state_value(env.url, "registry", "worker", mine.public_key) is None


def test_no_key_without_attestation(env: Env, tmp_path: Path) -> None:
    # A real worker whose evidence the policy refuses (debug enclave): refused, and never keyed.
    port = free_port()
    proc = subprocess.Popen(
        [UMBRA, *env.net.host_args("worker", "u", port, "--sim-debug")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env=child_env(),
    )
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1 and "refused" in out, out[-2000:]
    found = re.search(r"worker (0x[0-9a-f]{64}) ", out)
    assert found, out[-2000:]
    unattested = codec.from_hex(found.group(1))
    assert state_value(env.url, "registry", "worker", unattested) is None
    assert state_value(env.url, "keys", "handover", unattested + (0).to_bytes(8, "big")) is None
    assert not [e for e in chain_events(env.url, "KeyHandedOver") if e["data"]["worker"] == unattested]
    env.refused("unattested worker asks for keys", "registry.attestation_refused")

    # A worker's operator posting a key handover itself: refused whichever gatekeeper it names.
    gatekeeper = codec.from_hex(worker_info(env.net.by_name["gatekeeper"].url or "")["id"])
    for named in (gatekeeper, codec.from_hex(env.ids["m"])):
        receipt = submit(
            env.net,
            "m-operator",
            "keys",
            "handover",
            gatekeeper=named,
            worker=codec.from_hex(env.ids["m"]),
            epoch=0,
            ciphertext=b"\x01" * 64,
            signature=bytes(64),
        )
        assert receipt["ok"] is False and receipt["error"] in (
            "keys.not_operator",
            "keys.not_gatekeeper_operator",
        ), receipt
        env.refused("a worker hands itself a key", receipt["error"])
    assert HTTP.get(f"{env.url}/health", timeout=5).status_code == 200
