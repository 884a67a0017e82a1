"""Crash faults: `kill -9` of the node, a worker and the gatekeeper at random points under load,
repeated. Afterwards nothing acknowledged is lost, every completed job is intact, every pending
job completes exactly once, and a clean replay of the stored blocks reaches the same roots at
every height.

Load while the kills happen: transfer senders that wait for inclusion (acknowledged = the API
said "included" at height h), a caller of confidential commands on a counter contract (completed
= the client verified the result), and now and then a new contract deployed (which needs the
gatekeeper to publish its key). `UMBRA_ADV_CHAOS_S` sets how long the kills go on (default 30 s)
and `UMBRA_ADV_SEED` the random schedule (printed, and recorded in crash.json).
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.adversarial.conftest import (
    COUNTER,
    HTTP,
    AdvNet,
    chain_events,
    height,
    nonce_of,
    record,
    replay_chain,
    signed,
    state_value,
    tx_receipt,
    wait_ready,
)
from tests.node.conftest import run_cli, wait_until
from umbra import codec
from umbra.client import Client, Settings, UmbraError, VerificationError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

CHAOS_S = float(os.environ.get("UMBRA_ADV_CHAOS_S", "30"))
SENDERS = ("s0", "s1", "s2")
AMOUNT = 7


@dataclass
class Ack:
    tx_hash: str
    block: int
    sender: str


@dataclass
class Completed:
    job_id: str
    output: Any
    workers: list[str]
    height: int


@dataclass
class Load:
    net: AdvNet
    receivers: dict[str, bytes]
    counter: str
    stop: threading.Event = field(default_factory=threading.Event)
    acks: list[Ack] = field(default_factory=list)
    completed: list[Completed] = field(default_factory=list)
    deployed: list[str] = field(default_factory=list)
    interrupted: int = 0  # client operations cut short by a crash (retried by design)
    wrong: list[str] = field(default_factory=list)  # anything a crash must never cause
    threads: list[threading.Thread] = field(default_factory=list)

    def transfers(self, sender: str) -> None:
        url = self.net.node_url
        pk = self.net.key(sender).public_key
        nonce: int | None = None
        while not self.stop.is_set():
            try:
                if nonce is None:
                    nonce = nonce_of(url, pk)
                stx = signed(
                    self.net, sender, "balances", "transfer", nonce, to=self.receivers[sender], amount=AMOUNT
                )
                reply = HTTP.post(
                    f"{url}/tx",
                    json={"tx": codec.to_hex(stx.encode())},
                    params={"wait": "true", "timeout": "10"},
                    timeout=20,
                )
            except httpx.HTTPError:
                self.interrupted += 1
                nonce = None  # the node is down: ask again for the nonce once it is back
                self.stop.wait(0.3)
                continue
            body = reply.json()
            if reply.status_code == 200 and body.get("status") == "included":
                if body.get("ok") is not True:
                    self.wrong.append(f"{sender}: transfer failed in its block: {body}")
                self.acks.append(Ack(body["tx_hash"], body["block"], sender))
                nonce += 1
            elif reply.status_code in (202, 409):  # pending when the node died, or already used
                nonce = None
            elif reply.status_code >= 500:
                self.wrong.append(f"{sender}: {reply.status_code} {body}")
                nonce = None
            else:
                nonce = None
                self.stop.wait(0.2)

    def commands(self) -> None:
        settings = Settings(timeout=10, tx_timeout=20, key_timeout=60, job_timeout=90, poll_interval=0.2)
        calls = 0
        with Client(self.net.node_url, self.net.key("caller"), settings=settings) as client:
            while not self.stop.is_set():
                try:
                    if calls % 10 == 9:
                        self.deployed.append(client.deploy(COUNTER, init={"start": 0}).contract_id)
                    else:
                        result = client.call(self.counter, "add", {"by": 1})
                        self.completed.append(
                            Completed(result.job_id, result.output, list(result.workers), result.height)
                        )
                except UmbraError as exc:
                    if isinstance(exc, VerificationError):  # a crash must never yield a bad result
                        self.wrong.append(f"call: {exc.code}: {exc.message}")
                    self.interrupted += 1
                    self.stop.wait(0.5)
                calls += 1

    def start(self) -> None:
        self.threads = [threading.Thread(target=self.transfers, args=(s,), daemon=True) for s in SENDERS]
        self.threads.append(threading.Thread(target=self.commands, daemon=True))
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)


def _jobs_done(net: AdvNet) -> tuple[int, list[str]]:
    """(number of jobs requested, ids of those not settled yet)."""
    requested = [e["data"]["job"] for e in chain_events(net.node_url, "JobRequested")]
    open_jobs = []
    for job in requested:
        record_ = state_value(net.node_url, "compute", "job", job)
        if record_ is None or record_["status"] not in ("settled", "failed"):
            open_jobs.append(codec.to_hex(job))
    return len(requested), open_jobs


def test_kill_9_of_node_workers_and_gatekeeper_under_load_loses_nothing(adv_network: Any) -> None:
    seed = int(os.environ.get("UMBRA_ADV_SEED", str(int(time.time()))))
    print(f"chaos seed {seed} (UMBRA_ADV_SEED={seed} repeats this schedule)")
    rng = random.Random(seed)
    net: AdvNet = adv_network(operators=("w0", "w1"), accounts=(*SENDERS, "caller"))
    net.start_node()
    net.start_host("gatekeeper", "gatekeeper")
    net.start_host("worker", "w0")
    net.start_host("worker", "w1")
    wait_ready(net, "gatekeeper", "w0", "w1")
    with Client(net.node_url, net.key("caller")) as client:
        counter = client.deploy(COUNTER, init={"start": 0}).contract_id

    load = Load(net, {s: os.urandom(32) for s in SENDERS}, counter)
    load.start()
    kills: list[dict[str, Any]] = []
    recovery: list[float] = []
    victims = ["node", "w0", "gatekeeper", "w1"]
    try:
        started = time.monotonic()
        while time.monotonic() - started < CHAOS_S:
            time.sleep(rng.uniform(1.5, 4.0))
            if not victims:
                victims = ["node", "w0", "gatekeeper", "w1"]
            victim = victims.pop(rng.randrange(len(victims)))
            at = height(net.node_url)
            net.by_name[victim].kill_group()  # SIGKILL to the whole group: host and core alike
            down = rng.uniform(0.1, 1.5)
            time.sleep(down)
            t = time.monotonic()
            net.restart(victim)
            if victim == "node":
                recovery.append(time.monotonic() - t)
            kills.append({"victim": victim, "height": at, "down_s": round(down, 2)})
    finally:
        load.join()
    assert not load.wrong, load.wrong[:5]
    assert len(load.acks) >= 30 and len(load.completed) >= 3, (len(load.acks), len(load.completed))

    # Every process is back; the workers and the gatekeeper resumed their sealed identities.
    wait_ready(net, "gatekeeper", "w0", "w1", timeout=120)

    # Every pending job completes (a dead worker's job moves on after its deadline).
    def all_settled() -> bool:
        return not _jobs_done(net)[1]

    wait_until(all_settled, 150, "every requested job to settle", interval=1.0)
    requested, _ = _jobs_done(net)
    jobs = {e["data"]["job"]: e for e in chain_events(net.node_url, "JobSettled", "JobFailed")}
    failed = [codec.to_hex(j) for j, e in jobs.items() if e["name"] == "JobFailed" or e["data"].get("failed")]
    assert not failed, f"jobs failed instead of completing: {failed}"
    settled_once = [e["data"]["job"] for e in chain_events(net.node_url, "JobSettled")]
    assert len(settled_once) == len(set(settled_once)) == requested, "a job settled twice, or not at all"

    # Every acknowledged tx is still included, in the block reported, and succeeded.
    for ack in load.acks:
        receipt = tx_receipt(net.node_url, ack.tx_hash)
        assert (receipt["status"], receipt["block"], receipt["ok"]) == ("included", ack.block, True), ack
    # Whole blocks only: each receiver holds exactly what its sender's used nonces paid.
    for sender in SENDERS:
        account = HTTP.get(f"{net.node_url}/accounts/{codec.to_hex(net.key(sender).public_key)}").json()
        received = HTTP.get(f"{net.node_url}/accounts/{codec.to_hex(load.receivers[sender])}").json()
        assert received["free"] == AMOUNT * account["nonce"]
        assert account["nonce"] >= sum(1 for a in load.acks if a.sender == sender)

    # Every completed job is intact: settled, by the workers the client verified, and the counter
    # holds exactly one increment per settled `add` (none lost, none applied twice).
    for done in load.completed:
        job = state_value(net.node_url, "compute", "job", codec.from_hex(done.job_id))
        assert job["status"] == "settled" and not job["outcome"]["failed"], done
        assert sorted(codec.to_hex(w) for w in job["outcome"]["workers"]) == sorted(done.workers)
        assert job["settled_height"] == done.height
    outputs = [c.output for c in load.completed]
    assert len(outputs) == len(set(outputs)), "two calls saw the same counter value"
    counter_id = codec.from_hex(counter)
    adds = [
        e for e in chain_events(net.node_url, "JobSettled") if e["data"]["contract"] == counter_id
    ]  # init + every add
    with Client(net.node_url, net.key("caller")) as client:
        final = client.query(counter, "get", min_height=height(net.node_url)).output
    assert final == len(adds) - 1 >= max(outputs)
    for contract in load.deployed:
        with Client(net.node_url, net.key("caller")) as client:
            assert client.query(contract, "get").output == 0

    # A clean replay of every stored block reaches the same roots at every height, and the same
    # state as the node's database.
    assert net.genesis is not None
    replay = replay_chain(net.node_url, net.genesis)
    head = height(net.node_url)
    net.by_name["node"].stop()
    db = sqlite3.connect(net.root / "node" / "chain.sqlite")
    try:
        stored_head = int(db.execute("SELECT max(height) FROM blocks").fetchone()[0])
        stored = {bytes(k): bytes(v) for k, v in db.execute("SELECT k, v FROM state")}
    finally:
        db.close()
    if stored_head == replay.heights - 1:
        assert stored == replay.backend.data, "the node's state differs from the clean replay"
    code, report = run_cli("node", "--check", "--data-dir", str(net.root / "node"))
    assert (code, report) == (0, {"ok": True, "problems": []})

    counts = {v: sum(1 for k in kills if k["victim"] == v) for v in ("node", "w0", "w1", "gatekeeper")}
    record(
        "crash",
        {
            "seed": seed,
            "chaos_seconds": CHAOS_S,
            "kills": len(kills),
            "kills_by_process": counts,
            "kill_schedule": kills,
            "acknowledged_txs_checked": len(load.acks),
            "completed_jobs_checked": len(load.completed),
            "jobs_requested_all_settled": requested,
            "contracts_deployed_under_chaos": len(load.deployed),
            "client_operations_interrupted_and_retried": load.interrupted,
            "node_restart_to_healthy_s_max": round(max(recovery), 2) if recovery else None,
            "blocks_replayed": replay.heights,
            "replay_seconds": round(replay.seconds, 2),
            "head_height": head,
            "lost": 0,
        },
    )
