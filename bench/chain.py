"""Chain benchmarks: transfer throughput over HTTP, inclusion latency, restart time."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench._harness import Metric, node_process, percentile, wait_healthy
from umbra import RUNTIME_VERSION, codec, crypto
from umbra.chain.types import Call, GenesisConfig, Tx
from umbra.node.dev import free_port

BATCH = 500


def _genesis(senders: list[crypto.SigningKey], sequencer: crypto.SigningKey) -> GenesisConfig:
    return GenesisConfig(
        chain_id="umbra-bench",
        time_ms=int(time.time() * 1000),
        sequencer=sequencer.public_key,
        runtime_version=RUNTIME_VERSION,
        params={"block_ms": 100, "idle_ms": 1000, "tx_fee": 1},
        modules={"balances": {"allocations": {k.public_key: 10**15 for k in senders}}},
    )


class _BlockWatcher(threading.Thread):
    """Follows the node's SSE stream and records when each tx hash was seen included."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seen: dict[str, float] = {}
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with httpx.Client(timeout=None) as client, client.stream("GET", f"{self.url}/events") as stream:
                self.ready.set()
                for line in stream.iter_lines():
                    if self.stop.is_set():
                        return
                    if line.startswith("data: "):
                        now = time.perf_counter()
                        for tx_hash in json.loads(line[6:])["txs"]:
                            self.seen[tx_hash] = now
        except httpx.HTTPError:
            if not self.stop.is_set():  # the node going away at the end of the run is expected
                raise


def transfers(work: Path, *, count: int) -> list[Metric]:
    sequencer = crypto.SigningKey.generate()
    # At most 100 txs per account: under the node's per-account mempool limit (256 pending).
    senders = [crypto.SigningKey.generate() for _ in range(max(64, -(-count // 100)))]
    genesis = _genesis(senders, sequencer)
    dest = crypto.SigningKey.generate().public_key
    # Sign everything before the timed window.
    batches: list[list[str]] = []
    flat: list[tuple[str, str]] = []
    nonces = [0] * len(senders)
    for i in range(count):
        s = i % len(senders)
        tx = Tx(
            genesis.chain_id,
            senders[s].public_key,
            nonces[s],
            Call("balances", "transfer", {"to": dest, "amount": 1}),
            1,
        )
        nonces[s] += 1
        stx = tx.sign(senders[s])
        flat.append((codec.to_hex(stx.encode()), codec.to_hex(stx.hash)))
    for i in range(0, count, BATCH):
        batches.append([raw for raw, _ in flat[i : i + BATCH]])
    with node_process(work / "transfers", genesis, sequencer) as url:
        watcher = _BlockWatcher(url)
        watcher.start()
        watcher.ready.wait(10)
        submitted: dict[str, float] = {}
        refused = 0

        def post(index: int) -> int:
            batch = batches[index]
            t = time.perf_counter()
            for raw in flat[index * BATCH : index * BATCH + len(batch)]:
                submitted[raw[1]] = t
            reply = httpx.post(f"{url}/txs", json={"txs": batch}, timeout=60)
            return sum(1 for r in reply.json()["results"] if "error" in r)

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=2) as pool:
            refused = sum(pool.map(post, range(len(batches))))
        deadline = time.monotonic() + 120
        while len(watcher.seen) < count - refused and time.monotonic() < deadline:
            time.sleep(0.02)
        end = max(watcher.seen.values()) if watcher.seen else time.perf_counter()
        watcher.stop.set()
    included = len(watcher.seen)
    latencies = [(watcher.seen[h] - submitted[h]) * 1000 for h in watcher.seen if h in submitted]
    tps = included / (end - start) if end > start else 0.0
    if refused:
        print(f"  note: {refused} of {count} transfers were refused at admission")
    return [
        Metric("node transfers tx/s", tps, "tx/s", 5000, "higher", bound_by="Ed25519 verify/s (2 cores)"),
        Metric("inclusion latency p50", percentile(latencies, 50), "ms", 250, "lower"),
        Metric("inclusion latency p99", percentile(latencies, 99), "ms", 1000, "lower"),
    ]


def restart(work: Path, *, blocks: int) -> list[Metric]:
    """Fill a store with `blocks` real blocks, then time `umbra node` from exec to healthy."""
    import subprocess
    import sys

    from umbra.node.service import Node, NodeConfig

    sequencer = crypto.SigningKey.generate()
    alice = crypto.SigningKey.generate()
    genesis = _genesis([alice], sequencer)
    data = work / "restart"
    node = Node(NodeConfig(data_dir=data / "node", sequencer_key=sequencer), genesis)
    for _ in range(blocks):
        node.produce_block(sequencer)
    node.store.close()
    (data / "genesis.cbor").write_bytes(genesis.encode())
    crypto.save_signing_key(data / "sequencer.key", sequencer)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "umbra.client.cli",
        "node",
        "--data-dir",
        str(data / "node"),
        "--port",
        str(port),
        "--genesis",
        str(data / "genesis.cbor"),
        "--sequencer-key",
        str(data / "sequencer.key"),
    ]
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        elapsed = time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
    return [Metric(f"node restart time at {blocks // 1000}k blocks", elapsed, "s", 3.0, "lower")]
