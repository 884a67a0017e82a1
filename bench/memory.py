"""Node memory after many transfers: `python -m bench.memory DATA_DIR COUNT` runs a sequencer
node in that (fresh) process, the real admission and block path without HTTP: signed transfers
in batches through `Node.submit_many` (decode, parallel signature checks, mempool), blocks through
`Node.produce_block` (execution, state root, SQLite commit). The txs are made in batches as they
go, so what stays in memory is the node's. It prints `{"rss_bytes", "transfers", "seconds"}`.

It measures memory, not speed, so the suite starts it first and lets it run beside the other
benchmarks at the lowest CPU priority (SCHED_IDLE: it gets only CPU time nothing else wants), and
collects its figure at the end.

RSS counts the node process and its signature verifier processes. Target: 1 GiB after 1M transfers (100k in the quick run). The state grows by one account per
recipient (here 1,000), blocks and receipts go to SQLite, and the mempool is bounded: nothing the
node keeps in memory should grow with the number of txs it has processed, so a node must run in
well under the 1 GiB a small VM gives it. A node that holds every tx, block or receipt in memory
grows by about 1 KiB per transfer, that is to about 1 GiB after 1M: the target catches that.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench._harness import Metric
from umbra import RUNTIME_VERSION, crypto
from umbra.node.dev import _die_with_parent

__all__ = ["Running", "rss_after_transfers", "start"]

TARGET_BYTES = 1 << 30
SENDERS = 1000
BATCH = 2000


class Running:
    """The node process of `start`, until `result` collects its figure (or `kill` ends it)."""

    def __init__(self, work: Path, count: int) -> None:
        self.count = count
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.memory", str(work / "memory"), str(count)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
            start_new_session=True,
            preexec_fn=_die_with_parent,  # also when the suite itself is killed
        )

    def result(self, timeout: float = 3600) -> list[Metric]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            self.kill()
        if self.proc.returncode != 0:
            raise RuntimeError(f"bench.memory failed: {err[-2000:]}")
        result = json.loads(out.strip().splitlines()[-1])
        print(f"  {result['transfers']:,} transfers in {result['seconds']:.1f} s (at idle priority)")
        count = self.count
        label = f"{count // 1_000_000}M" if count >= 1_000_000 else f"{count // 1000}k"
        return [
            Metric(
                f"node RSS after {label} transfers",
                result["rss_bytes"] / 2**20,
                "MiB",
                TARGET_BYTES / 2**20,
                "lower",
            )
        ]

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stopped (SIGSTOP to its process group) meanwhile: even at idle priority it shares the
        caches and memory bandwidth of the two cores, which moves in-process microbenchmarks."""
        running = self.proc.poll() is None
        if running:
            os.killpg(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            if running and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start(work: Path, *, count: int) -> Running:
    return Running(work, count)


def rss_after_transfers(work: Path, *, count: int) -> list[Metric]:
    return start(work, count=count).result()


def _drive(data: Path, count: int) -> dict[str, float]:
    import psutil

    from umbra.chain.types import Call, GenesisConfig, Tx
    from umbra.node.service import Node, NodeConfig

    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # threads made from here inherit it
    sequencer = crypto.SigningKey.generate()
    senders = [crypto.SigningKey(os.urandom(32)) for _ in range(SENDERS)]
    recipients = [crypto.SigningKey(os.urandom(32)).public_key for _ in range(SENDERS)]
    genesis = GenesisConfig(
        chain_id="umbra-bench-memory",
        time_ms=int(time.time() * 1000),
        sequencer=sequencer.public_key,
        runtime_version=RUNTIME_VERSION,
        params={"block_ms": 100, "idle_ms": 1000, "tx_fee": 1},
        modules={"balances": {"allocations": {k.public_key: 10**15 for k in senders}}},
    )
    node = Node(NodeConfig(data_dir=data, sequencer_key=sequencer), genesis)
    start = time.perf_counter()
    done = 0
    while done < count:
        size = min(BATCH, count - done)
        raws = []
        for i in range(done, done + size):
            s = i % SENDERS
            call = Call("balances", "transfer", {"to": recipients[(i // SENDERS) % SENDERS], "amount": 1})
            raws.append(
                Tx(genesis.chain_id, senders[s].public_key, i // SENDERS, call, 1).sign(senders[s]).encode()
            )
        refused = [r for r in node.submit_many(raws) if not isinstance(r, bytes)]
        if refused:
            raise RuntimeError(f"{len(refused)} transfers refused, e.g. {refused[0]}")
        node.produce_block(sequencer)
        done += size
    seconds = time.perf_counter() - start
    me = psutil.Process()  # and its signature verifier processes: the node's whole footprint
    rss = sum(p.memory_info().rss for p in [me, *me.children(recursive=True)])
    node.store.close()
    return {"rss_bytes": rss, "transfers": done, "seconds": seconds}


if __name__ == "__main__":
    print(json.dumps(_drive(Path(sys.argv[1]), int(sys.argv[2]))))
