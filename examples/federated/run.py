"""Federated learning: alice, bob and charlie each train a logistic regression on their own data,
send the weights sealed to the contract, and get back only the sample-weighted average (FedAvg).

Checks that the aggregate equals FedAvg computed here exactly (after quantization), that a round
cannot close below the participant threshold, that no one (the owner included) can read another
party's update, and that nothing but the round number and participant count is ever public.

Runs against the network named by UMBRA_NODE with the dev accounts of UMBRA_DEV_JSON.
Exits 0 iff every check passes. UMBRA_EXAMPLE_MARKER, if set, goes into each party's private tag.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from umbra.client import Client, UmbraError, dev_keys
from umbra.contract import fixed

CONTRACT = Path(__file__).with_name("contract.py")
PARTIES = ("alice", "bob", "charlie")
SAMPLES = {"alice": 240, "bob": 130, "charlie": 410}  # each party's private data set size
DIM = 4  # three features and a bias
SCALE = 10**6  # fixed point: weights travel as round(w * 1e6)
TRUE_W = np.array([1.5, -2.0, 0.8, 0.3])


def party_data(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic private data: same task, different feature distributions per party (non-IID)."""
    rng = np.random.default_rng(sum(map(ord, name)))
    n = SAMPLES[name]
    x = rng.normal(loc=rng.uniform(-0.5, 0.5, 3), scale=1.0, size=(n, 3))
    x = np.column_stack([x, np.ones(n)])
    y = (rng.random(n) < 1 / (1 + np.exp(-x @ TRUE_W))).astype(float)
    return x, y


def train_locally(
    start: np.ndarray, x: np.ndarray, y: np.ndarray, steps: int = 60, lr: float = 0.5
) -> np.ndarray:
    """A few epochs of full-batch gradient descent on the logistic loss, from the global model."""
    w = start.copy()
    for _ in range(steps):
        w -= lr * x.T @ (1 / (1 + np.exp(-x @ w)) - y) / len(y)
    return w


def fedavg_exact(updates: dict[str, list[int]], samples: dict[str, int]) -> list[int]:
    """Reference FedAvg over the quantized updates, with exact fractions (round half to even)."""
    total = sum(samples[p] for p in updates)
    return [round(Fraction(sum(updates[p][i] * samples[p] for p in updates), total)) for i in range(DIM)]


def accuracy(w: np.ndarray, data: list[tuple[np.ndarray, np.ndarray]]) -> float:
    x = np.vstack([d[0] for d in data])
    y = np.concatenate([d[1] for d in data])
    return float(np.mean((x @ w > 0) == (y > 0.5)))


def submit_update(
    client: Client, cid: str, name: str, start: np.ndarray, marker: str, rnd: int
) -> tuple[np.ndarray, list[int]]:
    """Train on this party's own data from the global model, quantize, and submit sealed."""
    weights = train_locally(start, *party_data(name))
    quantized = fixed.quantize_all(weights, SCALE)
    args = {"weights": quantized, "samples": SAMPLES[name], "tag": f"{marker}/{name}/round{rnd}"}
    out = client.call(cid, "submit", args).output
    print(f"round {rnd}: {name} sent {DIM} weights from {SAMPLES[name]} samples -> {out}")
    return weights, quantized


def replicas_of(node: str, job: str, wait: float = 5.0) -> tuple[list[str], list[tuple[str, str]]]:
    """The workers a job was assigned to, and the (commitment, new state) each one signed.

    A job settles as soon as a majority agrees; a late replica's result may land a moment later.
    """
    deadline = time.monotonic() + wait
    while True:
        record = httpx.get(f"{node}/state/compute/job", params={"key": job}, timeout=30).json()["value"]
        results = record["results"]
        if len(results) == record["replicas"] or time.monotonic() > deadline:
            signed = [(r["body"]["output_commitment"], r["body"]["new_state_hash"]) for r in results.values()]
            return record["workers"], signed
        time.sleep(0.2)


def main() -> int:
    keys = dev_keys()
    node = os.environ.get("UMBRA_NODE", "http://127.0.0.1:9944").rstrip("/")
    marker = os.environ.get("UMBRA_EXAMPLE_MARKER", "local-dataset-v1")
    tee_of = {
        w["id"]: w["tee"] for w in json.loads(Path(os.environ["UMBRA_DEV_JSON"]).read_text())["workers"]
    }
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    def refused(action: Callable[[], Any], reason: str, what: str) -> None:
        try:
            action()
        except UmbraError as exc:
            check(exc.code == "contract_error" and reason in exc.message, f"{what}: refused ({exc.message})")
        else:
            check(False, f"{what}: was allowed")

    data = {name: party_data(name) for name in PARTIES}
    clients = {name: Client(key=keys[name]) for name in PARTIES}
    try:
        alice, bob, charlie = (clients[name] for name in PARTIES)
        addresses = {name: clients[name].address for name in PARTIES}
        deployed = alice.deploy(
            CONTRACT, init={"parties": list(addresses.values()), "dim": DIM, "min_participants": 3}
        )
        cid = deployed.contract_id
        print(f"deployed federated averaging {cid}; parties: {', '.join(PARTIES)}")
        refused(
            lambda: bob.query(cid, "model"), "no round has closed", "reading a model before any round closes"
        )

        global_w = np.zeros(DIM)
        for rnd in (1, 2):
            sent: dict[str, list[int]] = {}
            trained: dict[str, np.ndarray] = {}

            for name in ("alice", "bob"):
                trained[name], sent[name] = submit_update(clients[name], cid, name, global_w, marker, rnd)
            if rnd == 1:  # the round is open with two of three updates in
                refused(
                    lambda: alice.call(cid, "aggregate"), "needs at least 3", "closing with 2 of 3 updates"
                )
                check(
                    alice.query(cid, "update").output
                    == {
                        "weights": sent["alice"],
                        "samples": SAMPLES["alice"],
                        "tag": f"{marker}/alice/round1",
                    },
                    "alice reads back her own pending update",
                )
                refused(
                    lambda: bob.query(cid, "update", {"party": addresses["alice"]}),
                    "private",
                    "bob reads alice's update",
                )
                refused(
                    lambda: alice.query(cid, "update", {"party": addresses["bob"]}),
                    "private",
                    "alice (the owner) reads bob's update",
                )
                refused(
                    lambda: charlie.query(cid, "model"),
                    "no round has closed",
                    "reading the model while the round is open",
                )
            trained["charlie"], sent["charlie"] = submit_update(
                charlie, cid, "charlie", global_w, marker, rnd
            )

            closed = charlie.call(cid, "aggregate", replicas=3, distinct="tee_types")
            expected = fedavg_exact(sent, SAMPLES)
            check(
                closed.output["weights"] == expected,
                f"round {rnd}: the aggregate equals local FedAvg exactly",
            )
            assigned, signed = replicas_of(node, closed.job_id)
            tees = sorted(tee_of.get(w, "?") for w in assigned)
            check(
                len(set(tees)) == 3 and len(signed) >= 2 and len(set(signed)) == 1,
                f"round {rnd}: replicas on {', '.join(tees)}; {len(signed)} of 3 signed the same result",
            )
            as_float = np.average(
                [trained[p] for p in PARTIES], axis=0, weights=[SAMPLES[p] for p in PARTIES]
            )
            check(
                max(abs(a - b * SCALE) for a, b in zip(expected, as_float, strict=True)) <= 1,
                f"round {rnd}: within one fixed-point unit of float FedAvg",
            )
            released = bob.query(cid, "model").output
            check(
                released == closed.output
                and set(released) == {"round", "participants", "weights"}
                and released["participants"] == 3
                and released["round"] == rnd,
                f"round {rnd}: the release is only the aggregate and the participant count",
            )
            check(alice.query(cid, "update").output is None, f"round {rnd}: individual updates were erased")
            global_w = np.array([fixed.dequantize(v, SCALE) for v in released["weights"]])
            print(
                f"round {rnd}: global weights {np.round(global_w, 3).tolist()}, "
                f"accuracy on all parties' data {accuracy(global_w, list(data.values())):.3f}"
            )

        check(accuracy(global_w, list(data.values())) > 0.7, "the federated model learned the task")
        check(bob.query(cid, "model", {"round": 1}).output["round"] == 1, "earlier rounds stay readable")
        public = [(e.name, e.data) for e in bob.contract_events(cid, deployed.height)]
        check(
            public == [("RoundClosed", {"round": r, "participants": 3}) for r in (1, 2)],
            f"public events are only round closings: {public}",
        )
    finally:
        for client in clients.values():
            client.close()
    print(f"{'all checks pass' if not failures else f'{len(failures)} check(s) failed'}")
    return 0 if not failures else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UmbraError as exc:
        print(f"FAIL {exc.code}: {exc.message}")
        sys.exit(1)
