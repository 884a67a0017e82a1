"""The node over its store: restart without replay, refusing damaged databases, `umbra node
--check`, and a full disk."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.node.conftest import ChainFiles, free_port, run_cli, write_chain_files
from umbra import codec
from umbra.chain.runtime import AdmissionError, Runtime
from umbra.chain.store import Store, StoreCorrupt, StoreFull
from umbra.chain.types import Call, Tx
from umbra.node.service import Node, NodeConfig

pytestmark = pytest.mark.timeout(120)


def transfer_raw(files: ChainFiles, nonce: int, amount: int = 3) -> bytes:
    key = files.keys["alice"]
    call = Call("balances", "transfer", {"to": os.urandom(32), "amount": amount})
    return Tx(files.genesis.chain_id, key.public_key, nonce, call, 1).sign(key).encode()


def build_chain(files: ChainFiles, data_dir: Path, blocks: int, txs_per_block: int) -> Node:
    """A node (not started: blocks are produced synchronously) with `blocks` blocks of transfers."""
    node = Node(NodeConfig(data_dir=data_dir, sequencer_key=files.sequencer), files.genesis)
    nonce = 0
    for _ in range(blocks):
        for _ in range(txs_per_block):
            node.submit(transfer_raw(files, nonce))
            nonce += 1
        node.produce_block(files.sequencer)
    return node


def close(node: Node) -> None:
    node.stop()
    node.store.close()


def checkpoint(path: Path) -> None:
    """Fold the WAL into the main file, so damage to the file is damage to the data."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChainFiles, Path]]:
    """A healthy data dir with some history. Tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("store")
    files = write_chain_files(root / "files")
    node = build_chain(files, root / "pristine", blocks=40, txs_per_block=5)
    close(node)
    checkpoint(root / "pristine" / "chain.sqlite")
    yield files, root / "pristine"


@pytest.fixture
def data_dir(chain_dir: tuple[ChainFiles, Path], tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(chain_dir[1], target)
    return target


def test_a_restart_reads_the_head_without_replaying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = write_chain_files(tmp_path / "files")
    node = build_chain(files, tmp_path / "data", blocks=150, txs_per_block=4)
    head, root = node.store.head(), node.store.root()
    close(node)

    executions: list[int] = []
    real_execute = Runtime.execute_block

    def counting(self: Runtime, *args: Any, **kwargs: Any) -> Any:
        executions.append(kwargs.get("height", -1))
        return real_execute(self, *args, **kwargs)

    monkeypatch.setattr(Runtime, "execute_block", counting)
    reopened = Node(NodeConfig(data_dir=tmp_path / "data", sequencer_key=files.sequencer))
    try:
        assert executions == []  # nothing was re-executed to find the head
        assert reopened.store.head() == head and reopened.store.root() == root
        block = reopened.produce_block(files.sequencer)
        assert executions == [head.height + 1]
        assert block.header.parent == head.hash
    finally:
        close(reopened)


def zero_pages(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(4096)
        fh.write(b"\x00" * (size - 8192))


def random_pages(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        for offset in range(4096, size, 3 * 4096):
            fh.seek(offset)
            fh.write(os.urandom(4096))


def truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def overwrite_header(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.write(b"definitely not SQLite" * 5)


def run_sql(statement: str) -> Callable[[Path], None]:
    def tamper(path: Path) -> None:
        db = sqlite3.connect(path)
        db.execute(statement)
        db.commit()
        db.close()

    return tamper


DAMAGE: list[tuple[str, Callable[[Path], None], str]] = [
    ("header overwritten", overwrite_header, "not a usable Umbra database"),
    ("file truncated", truncate, "chain.sqlite"),
    ("pages zeroed", zero_pages, "chain.sqlite"),
    ("random pages", random_pages, "chain.sqlite"),
    (
        "accumulator changed",
        run_sql("UPDATE meta SET v = zeroblob(1024) WHERE k = 'accumulator'"),
        "accumulator",
    ),
    ("head row deleted", run_sql("DELETE FROM meta WHERE k = 'head'"), "head"),
    (
        "head block deleted",
        run_sql("DELETE FROM blocks WHERE height = (SELECT max(height) FROM blocks)"),
        "head block",
    ),
]


@pytest.mark.parametrize(("damage", "message"), [(d[1], d[2]) for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_a_damaged_database_makes_the_node_refuse_to_start(
    chain_dir: tuple[ChainFiles, Path], data_dir: Path, damage: Callable[[Path], None], message: str
) -> None:
    files, _ = chain_dir
    damage(data_dir / "chain.sqlite")
    with pytest.raises(StoreCorrupt) as refused:
        Node(NodeConfig(data_dir=data_dir, sequencer_key=files.sequencer))
    assert message in str(refused.value)


@pytest.mark.slow
def test_umbra_node_refuses_a_damaged_database_with_a_typed_error(
    chain_dir: tuple[ChainFiles, Path], data_dir: Path
) -> None:
    files, _ = chain_dir
    zero_pages(data_dir / "chain.sqlite")
    code, output = run_cli(
        "node",
        "--data-dir",
        str(data_dir),
        "--port",
        str(free_port()),
        "--sequencer-key",
        str(files.sequencer_path),
        timeout=60,
    )
    assert code == 1
    assert output["error"]["code"] == "store_corrupt"
    assert "refusing to start" in output["error"]["message"] and "chain.sqlite" in output["error"]["message"]


@pytest.mark.slow
def test_umbra_node_check_reports_health_and_a_tampered_state_row(data_dir: Path) -> None:
    code, report = run_cli("node", "--check", "--data-dir", str(data_dir))
    assert (code, report) == (0, {"ok": True, "problems": []})

    db = sqlite3.connect(data_dir / "chain.sqlite")
    key = db.execute(
        "SELECT k FROM state WHERE k >= ? ORDER BY k LIMIT 1", (b"balances/account/",)
    ).fetchone()[0]
    db.execute(
        "UPDATE state SET v = ? WHERE k = ?",
        (codec.encode({"free": 10**18, "reserved": 0, "staked": 0}), key),
    )
    db.commit()
    db.close()

    code, report = run_cli("node", "--check", "--data-dir", str(data_dir))
    assert code == 1 and report["ok"] is False
    assert any("accumulator" in problem for problem in report["problems"]), report


@pytest.mark.slow
def test_umbra_node_check_on_a_missing_database(tmp_path: Path) -> None:
    code, report = run_cli("node", "--check", "--data-dir", str(tmp_path / "nothing"))
    assert code == 1 and report["ok"] is False and report["problems"]


def test_a_full_disk_stops_blocks_without_half_writing_them(tmp_path: Path) -> None:
    files = write_chain_files(tmp_path / "files")
    data_dir = tmp_path / "data"
    node = Node(NodeConfig(data_dir=data_dir, sequencer_key=files.sequencer, max_pages=60), files.genesis)
    node.start()  # the real producer thread: it must survive StoreFull and keep retrying
    nonce = 0
    try:
        deadline = time.monotonic() + 60
        stalled_at: int | None = None
        stalled_since = 0.0
        while True:
            assert time.monotonic() < deadline, "the quota never filled"
            if len(node.mempool) < 20 and node.disk_full is None:
                for _ in range(20):
                    try:
                        node.submit(transfer_raw(files, nonce))
                    except AdmissionError as exc:  # the producer just found the disk full
                        assert exc.code == "disk_full", exc
                        break
                    nonce += 1
            height = node.store.head().height
            if height != stalled_at:
                stalled_at, stalled_since = height, time.monotonic()
            elif time.monotonic() - stalled_since > 2.5:
                break  # no block for 2.5 s (block_ms is 50) while txs wait: the disk is full
            time.sleep(0.05)
        head = node.store.head()
        with pytest.raises(StoreFull):
            node.produce_block(files.sequencer)
        assert node.store.head() == head
        assert node._thread is not None and node._thread.is_alive()
        assert len(node.mempool) > 0 and node.halted is None
        # Until a block commits again, new txs get a clear, typed refusal instead of waiting forever.
        assert node.disk_full is not None and "disk full" in node.disk_full
        with pytest.raises(AdmissionError) as refused:
            node.submit(transfer_raw(files, nonce))
        assert refused.value.code == "disk_full" and "free disk space" in refused.value.message
    finally:
        close(node)

    store = Store(data_dir / "chain.sqlite")
    try:
        assert store.head() == head
        assert store.full_check() == []
        assert store._db.execute("SELECT max(height) FROM blocks").fetchone()[0] == head.height
    finally:
        store.close()
    reopened = Node(NodeConfig(data_dir=data_dir, sequencer_key=files.sequencer))
    try:
        reopened.submit(
            transfer_raw(
                files,
                int(reopened.runtime.system.nonce(reopened.mempool.view(), files.keys["alice"].public_key)),
            )
        )
        block = reopened.produce_block(files.sequencer)
        assert block.header.parent == head.hash and len(block.txs) == 1
    finally:
        close(reopened)
