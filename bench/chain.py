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
# Inclusion latency is taken at this offered load, in batches of PACED_BATCH (a busy chain, not a flood).
PACED_TPS = 1000
PACED_BATCH = 50


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


def _signed(
    chain_id: str, senders: list[crypto.SigningKey], dest: bytes, count: int
) -> list[tuple[str, str]]:
    """`count` transfers of 1 to `dest`, round-robin over `senders`: (raw tx, tx hash), 0x-hex."""
    signed: list[tuple[str, str]] = []
    nonces = [0] * len(senders)
    for i in range(count):
        s = i % len(senders)
        call = Call("balances", "transfer", {"to": dest, "amount": 1})
        stx = Tx(chain_id, senders[s].public_key, nonces[s], call, 1).sign(senders[s])
        nonces[s] += 1
        signed.append((codec.to_hex(stx.encode()), codec.to_hex(stx.hash)))
    return signed


def _senders(count: int) -> list[crypto.SigningKey]:
    # At most 100 txs per account: under the node's per-account mempool limit (256 pending).
    return [crypto.SigningKey.generate() for _ in range(max(64, -(-count // 100)))]


def transfers(work: Path, *, count: int, paced_s: float) -> list[Metric]:
    """Throughput: `count` transfers posted as fast as two connections go. Inclusion latency: at an
    offered PACED_TPS, for `paced_s` (at saturation, latency is the queue: it is printed too)."""
    sequencer = crypto.SigningKey.generate()
    paced_count = int(PACED_TPS * paced_s)
    flood_senders, paced_senders = _senders(count), _senders(paced_count)
    genesis = _genesis(flood_senders + paced_senders, sequencer)
    dest = crypto.SigningKey.generate().public_key
    # Sign everything before the timed windows.
    flat = _signed(genesis.chain_id, flood_senders, dest, count)
    paced = _signed(genesis.chain_id, paced_senders, dest, paced_count)
    with node_process(work / "transfers", genesis, sequencer) as url:
        watcher = _BlockWatcher(url)
        watcher.start()
        watcher.ready.wait(10)
        submitted: dict[str, float] = {}

        refused: set[str] = set()

        def post(txs: list[tuple[str, str]]) -> None:
            t = time.perf_counter()
            for _, tx_hash in txs:
                submitted[tx_hash] = t
            reply = httpx.post(f"{url}/txs", json={"txs": [raw for raw, _ in txs]}, timeout=60)
            refused.update(h for (_, h), r in zip(txs, reply.json()["results"], strict=True) if "error" in r)

        def wait_included(txs: list[tuple[str, str]]) -> None:
            deadline = time.monotonic() + 120
            pending = [h for _, h in txs if h not in refused]
            while any(h not in watcher.seen for h in pending) and time.monotonic() < deadline:
                time.sleep(0.02)

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(post, (flat[i : i + BATCH] for i in range(0, count, BATCH))))
        wait_included(flat)
        end = max((watcher.seen[h] for _, h in flat if h in watcher.seen), default=time.perf_counter())
        flood_latencies = [(watcher.seen[h] - submitted[h]) * 1000 for _, h in flat if h in watcher.seen]

        # Paced: PACED_TPS offered in small batches on a fixed schedule, as many clients would send.
        step = PACED_BATCH / PACED_TPS
        paced_start = time.perf_counter()
        for n, i in enumerate(range(0, paced_count, PACED_BATCH)):
            time.sleep(max(0.0, paced_start + n * step - time.perf_counter()))
            post(paced[i : i + PACED_BATCH])
        wait_included(paced)
        watcher.stop.set()
    included = sum(1 for _, h in flat if h in watcher.seen)
    latencies = [(watcher.seen[h] - submitted[h]) * 1000 for _, h in paced if h in watcher.seen]
    tps = included / (end - start) if end > start else 0.0
    if refused:
        print(f"  note: {len(refused)} of {count + paced_count} transfers were refused at admission")
    print(
        f"  inclusion latency while saturated ({-(-count // BATCH)} batches of {BATCH} posted at once): "
        f"p50 {percentile(flood_latencies, 50):.0f} ms, p99 {percentile(flood_latencies, 99):.0f} ms"
    )
    offered = f"({PACED_TPS:,} tx/s offered)"
    return [
        Metric(
            "node transfers tx/s",
            tps,
            "tx/s",
            5000,
            "higher",
            bound_by="Ed25519 verify/s (2 cores)",
            note="The node verifies every signature (in two verifier processes) and decodes, executes, "
            "commits and announces every tx on the same 2 CPUs as the load generator that posts them: "
            "about 0.3 ms of CPU per tx in all, of which verification is the bound column.",
        ),
        Metric(f"inclusion latency p50 {offered}", percentile(latencies, 50), "ms", 250, "lower"),
        Metric(f"inclusion latency p99 {offered}", percentile(latencies, 99), "ms", 1000, "lower"),
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
