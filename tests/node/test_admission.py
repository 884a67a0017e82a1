"""The admission path under load: signature checks in worker processes, and admission paced to
block production (a sequencer's backlog stays with the clients, not in the mempool)."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from tests.node.conftest import HTTP, post_tx, serve_node, signed_transfer, write_chain_files
from umbra import codec
from umbra.chain.types import SignedTx
from umbra.node._verify import Verifier
from umbra.node.service import Node, NodeConfig

pytestmark = pytest.mark.timeout(120)


def verify_workers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children() if "umbra.node._verify" in " ".join(p.cmdline())]


def mixed_batch(tmp_path: Path, count: int) -> tuple[list[SignedTx], list[bool]]:
    """`count` transfers; every third carries another tx's signature, every fifth a zero one."""
    files = write_chain_files(tmp_path)
    txs = [signed_transfer(files, "alice", os.urandom(32), 1, n) for n in range(count)]
    expected = []
    for n, stx in enumerate(txs):
        if n % 3 == 1:
            txs[n] = SignedTx(stx.tx, txs[n - 1].signature)
        elif n % 5 == 4:
            txs[n] = SignedTx(stx.tx, bytes(64))
        expected.append(n % 3 != 1 and n % 5 != 4)
    return txs, expected


def test_worker_processes_give_the_in_process_verdicts(tmp_path: Path) -> None:
    txs, expected = mixed_batch(tmp_path, 700)
    verifier = Verifier(processes=2)
    try:
        assert verifier.verify(txs) == expected
        assert len(verify_workers()) == 2  # the batch went to the processes, not the fallback
        assert verifier.verify(txs[:10]) == expected[:10]  # a small batch is checked in place
    finally:
        verifier.close()
    psutil.wait_procs(verify_workers(), timeout=10)
    assert verify_workers() == []  # closing stdin ends them


def test_a_killed_worker_costs_no_verdict(tmp_path: Path) -> None:
    txs, expected = mixed_batch(tmp_path, 300)
    verifier = Verifier(processes=2)
    try:
        verifier.warm()
        deadline = time.monotonic() + 30
        while len(verify_workers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = verify_workers()
        for worker in killed:
            worker.send_signal(signal.SIGKILL)
        psutil.wait_procs(killed, timeout=10)
        assert verifier.verify(txs) == expected  # by fresh workers, or in place where one failed
        assert verifier.verify(txs) == expected
        assert {p.pid for p in verify_workers()}.isdisjoint(p.pid for p in killed)
    finally:
        verifier.close()


def test_a_producing_sequencer_admits_once_its_backlog_is_in_a_block(tmp_path: Path) -> None:
    """With a backlog at the limit, a submission waits for the next block instead of queueing
    behind it: blocks come every second here, so without the wait it would return at height 0."""
    files = write_chain_files(tmp_path / "files", params={"block_ms": 1000, "idle_ms": 1000})
    config = NodeConfig(data_dir=tmp_path / "node", sequencer_key=files.sequencer, admission_backlog=5)
    node = Node(config, files.genesis)
    node.start()
    try:
        backlog = [signed_transfer(files, "alice", os.urandom(32), 1, n).encode() for n in range(5)]
        assert all(isinstance(r, bytes) for r in node.submit_many(backlog))
        assert node.store.head().height == 0
        started = time.monotonic()
        (admitted,) = node.submit_many([signed_transfer(files, "bob", os.urandom(32), 1, 0).encode()])
        assert isinstance(admitted, bytes)
        assert node.store.head().height >= 1, "admitted behind a full backlog without waiting"
        assert time.monotonic() - started < config.admission_wait_s
        assert all(node.store.tx(SignedTx.decode(raw).hash) is not None for raw in backlog)
    finally:
        node.stop()
        node.store.close()


def test_a_stopping_node_releases_waiting_submissions(tmp_path: Path) -> None:
    files = write_chain_files(tmp_path / "files", params={"block_ms": 60_000, "idle_ms": 60_000})
    config = NodeConfig(
        data_dir=tmp_path / "node", sequencer_key=files.sequencer, admission_backlog=1, admission_wait_s=60
    )
    node = Node(config, files.genesis)
    node.start()
    node.submit_many([signed_transfer(files, "alice", os.urandom(32), 1, 0).encode()])
    waiter = threading.Thread(
        target=node.submit_many, args=([signed_transfer(files, "bob", os.urandom(32), 1, 0).encode()],)
    )
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()  # waiting for a block that is a minute away
    node.stop()
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    node.store.close()


def test_submissions_waiting_for_a_block_leave_the_api_answering(tmp_path: Path) -> None:
    """More submissions wait out a deep backlog than the API has worker threads: they wait on the
    event loop, so a query still gets a thread and answers at once."""
    files = write_chain_files(tmp_path / "files", params={"block_ms": 3000, "idle_ms": 3000})
    waiting = 60  # the API's thread pool holds 40
    with serve_node(files, tmp_path / "node", admission_backlog=1) as live:
        assert (
            post_tx(live.url, signed_transfer(files, "alice", os.urandom(32), 1, 0).encode()).status_code
            == 200
        )
        txs = [signed_transfer(files, "alice", os.urandom(32), 1, n).encode() for n in range(1, waiting + 1)]
        with ThreadPoolExecutor(max_workers=waiting) as pool:
            replies = pool.map(lambda raw: post_tx(live.url, raw), txs)
            time.sleep(0.5)  # every submission is in, waiting for the block
            started = time.monotonic()
            account = HTTP.get(f"{live.url}/accounts/{codec.to_hex(files.keys['bob'].public_key)}")
            answered_in = time.monotonic() - started
            assert live.node.store.head().height == 0  # the block they wait for is still to come
            assert [r.status_code for r in replies] == [200] * waiting
    assert account.status_code == 200
    assert answered_in < 1.0, f"a query waited {answered_in:.1f} s behind waiting submissions"
