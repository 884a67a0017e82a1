"""Disk faults against a real `umbra node` process.

- A full disk: the node's data dir on a tiny tmpfs (mounted here; we run as root). Filling it
  makes the node refuse txs with a typed `disk_full` (507) and report it on /health and /status,
  while reads go on; a `kill -9` while full loses nothing acknowledged and corrupts nothing
  (`umbra node --check`); once space is freed the node commits blocks again by itself. Where
  mounting is not allowed, the same checks run against a node whose SQLite quota
  (`NodeConfig(max_pages=...)`) fills instead: never skipped.
- A stored value changed on disk (a flipped byte that leaves SQLite's structure intact, so no
  page check can see it): the node refuses to start with a clear message rather than serve
  that value, and `umbra node --check` names the problem.

In-process variants (quota via max_pages, damaged pages, truncation, a changed accumulator or
head) are in tests/node/test_node_store.py and tests/chain/test_store.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.adversarial.conftest import HTTP, record
from tests.node.conftest import (
    ChainFiles,
    SpawnNode,
    free_port,
    post_tx,
    run_cli,
    sequencer_args,
    serve_app,
    signed_transfer,
    wait_until,
    write_chain_files,
)
from umbra import codec
from umbra.node.api import create_app
from umbra.node.service import Node, NodeConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MIB = 1024 * 1024
SENDERS = ("alice", "bob", "charlie")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path | None]:
    """A 6 MiB tmpfs (None where mounting is not allowed); unmounted at teardown."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(f"cannot mount a tmpfs ({done.stderr.strip()}): using the SQLite page quota instead")
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(path: Path, leave: int) -> int:
    """Write a ballast file so that about `leave` bytes stay free on `path`'s filesystem."""
    free = shutil.disk_usage(path).free
    size = max(0, free - leave)
    with open(path / "ballast", "wb") as out:
        out.write(b"\0" * size)
        out.flush()
        os.fsync(out.fileno())
    return size


class Driver:
    """Transfers from three senders, each waiting for inclusion, until the node refuses."""

    def __init__(self, url: str, files: ChainFiles) -> None:
        self.url = url
        self.files = files
        self.nonces = {s: 0 for s in SENDERS}
        self.acked: list[tuple[str, int]] = []
        self.refusal: dict[str, Any] | None = None

    def send(self, sender: str) -> httpx.Response:
        stx = signed_transfer(self.files, sender, b"\x07" * 32, 1, self.nonces[sender])
        reply = post_tx(self.url, stx.encode(), wait="true", timeout="5")
        if reply.status_code == 200 and reply.json().get("status") == "included":
            self.acked.append((reply.json()["tx_hash"], reply.json()["block"]))
            self.nonces[sender] += 1
        return reply

    def until_refused(self, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for sender in SENDERS:
                reply = self.send(sender)
                if reply.status_code == 507:
                    self.refusal = reply.json()
                    return self.refusal
                assert reply.status_code in (200, 202), reply.text  # 202: its block failed to commit
                if reply.status_code == 202:
                    self.nonces = {s: _nonce(self.url, self.files, s) for s in SENDERS}
        raise AssertionError("the disk never filled")


def _nonce(url: str, files: ChainFiles, sender: str) -> int:
    return int(HTTP.get(f"{url}/accounts/{files.address(sender)}", timeout=10).json()["nonce"])


def _check_full(url: str, refusal: dict[str, Any]) -> dict[str, Any]:
    """The refusal is typed and says what to do; health and status say why; reads still work."""
    assert refusal["error"]["code"] == "disk_full" and "free disk space" in refusal["error"]["message"]
    health = HTTP.get(f"{url}/health", timeout=10)
    assert health.status_code == 503 and health.json()["error"]["code"] == "disk_full"
    status = HTTP.get(f"{url}/status", timeout=10).json()
    assert status["disk_full"] and "disk full" in status["disk_full"]
    assert HTTP.get(f"{url}/blocks/latest", timeout=10).status_code == 200
    return status


def test_a_full_disk_gives_a_typed_error_loses_nothing_and_recovers(
    tmp_path: Path, tiny_disk: Path | None, spawn: SpawnNode
) -> None:
    files = write_chain_files(tmp_path / "files", accounts=SENDERS)
    if tiny_disk is None:
        _quota_variant(tmp_path, files)
        return
    data_dir, port = tiny_disk / "node", free_port()
    url = f"http://127.0.0.1:{port}"
    proc = spawn(*sequencer_args(files, data_dir, port), port=port, log_name="node-full").wait_healthy()
    ballast = _fill(tiny_disk, leave=1 * MIB)
    driver = Driver(url, files)
    refusal = driver.until_refused()
    status = _check_full(url, refusal)
    full_height = status["height"]
    assert "not committed" in proc.log_tail(20_000) and "disk full" in proc.log_tail(20_000)

    # kill -9 while the disk is full, then free space: nothing acknowledged is lost, nothing is damaged.
    proc.kill_group()
    (tiny_disk / "ballast").unlink()
    code, report = run_cli("node", "--check", "--data-dir", str(data_dir))
    assert (code, report) == (0, {"ok": True, "problems": []})
    proc = spawn(*sequencer_args(files, data_dir, port), port=port, log_name="node-after").wait_healthy()
    for tx_hash, block in driver.acked:
        receipt = HTTP.get(f"{url}/tx/{tx_hash}", timeout=10).json()
        assert (receipt["status"], receipt["block"]) == ("included", block)
    assert HTTP.get(f"{url}/status", timeout=10).json()["height"] >= full_height

    # Full again, then freed while running: blocks commit again without a restart.
    _fill(tiny_disk, leave=256 * 1024)
    driver.nonces = {s: _nonce(url, files, s) for s in SENDERS}
    _check_full(url, driver.until_refused())
    (tiny_disk / "ballast").unlink()
    wait_until(lambda: HTTP.get(f"{url}/health", timeout=5).status_code == 200, 30, "the node to resume")
    driver.nonces = {s: _nonce(url, files, s) for s in SENDERS}
    assert driver.send("alice").json()["status"] == "included"
    proc.stop()
    code, report = run_cli("node", "--check", "--data-dir", str(data_dir))
    assert (code, report) == (0, {"ok": True, "problems": []})
    record(
        "disk",
        {
            "full_disk": {
                "medium": "tmpfs 6 MiB, `umbra node` process",
                "ballast_mib": round(ballast / MIB, 1),
                "acknowledged_txs_checked": len(driver.acked),
                "refusal": f"507 {refusal['error']['code']}: {refusal['error']['message']}",
                "kill_9_while_full": "no loss, `umbra node --check` ok",
                "recovers_without_restart": True,
            }
        },
    )


def _quota_variant(tmp_path: Path, files: ChainFiles) -> None:
    """No tmpfs: the same checks with a node whose SQLite quota fills (served over real HTTP)."""
    data_dir = tmp_path / "node"
    node = Node(NodeConfig(data_dir=data_dir, sequencer_key=files.sequencer, max_pages=80), files.genesis)
    node.start()
    try:
        with serve_app(create_app(node)) as url:
            driver = Driver(url, files)
            _check_full(url, driver.until_refused())
    finally:
        node.stop()
        node.store.close()
    code, report = run_cli("node", "--check", "--data-dir", str(data_dir))
    assert (code, report) == (0, {"ok": True, "problems": []})
    record(
        "disk",
        {"full_disk": {"medium": "SQLite max_page_count (no tmpfs here)", "acknowledged": len(driver.acked)}},
    )


def test_a_value_changed_on_disk_makes_the_node_refuse_to_start(tmp_path: Path) -> None:
    files = write_chain_files(tmp_path / "files", accounts=SENDERS)
    data_dir = tmp_path / "node"
    node = Node(NodeConfig(data_dir=data_dir, sequencer_key=files.sequencer), files.genesis)
    for nonce in range(5):
        node.submit(signed_transfer(files, "alice", b"\x09" * 32, 1000, nonce).encode())
        node.produce_block(files.sequencer)
    node.stop()
    node.store.close()
    path = data_dir / "chain.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    key = b"balances/account/" + files.keys["alice"].public_key
    (value,) = db.execute("SELECT v FROM state WHERE k = ?", (key,)).fetchone()
    db.close()
    value = bytes(value)
    decoded = codec.decode(value)
    raw = bytearray(path.read_bytes())
    assert raw.count(value) == 1, "the record must be findable to change it"
    at = raw.index(value) + len(value) - 1  # the last byte of the balance: a valid, different number
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    changed = sqlite3.connect(path)
    (after,) = changed.execute("SELECT v FROM state WHERE k = ?", (key,)).fetchone()
    assert [r[0] for r in changed.execute("PRAGMA integrity_check")] == ["ok"]  # SQLite sees nothing
    changed.close()
    assert codec.decode(bytes(after)) != decoded

    code, out = run_cli(
        "node",
        "--data-dir",
        str(data_dir),
        "--port",
        str(free_port()),
        "--sequencer-key",
        str(files.sequencer_path),
        timeout=60,
    )
    assert code == 1 and out["error"]["code"] == "store_corrupt", out
    message = out["error"]["message"]
    assert "refusing to start" in message and "state table does not match" in message
    code, report = run_cli("node", "--check", "--data-dir", str(data_dir))
    assert code == 1 and any("state table" in p for p in report["problems"]), report
    record(
        "disk",
        {"value_changed_on_disk": {"sqlite_integrity_check": "ok (blind to it)", "node": message[:160]}},
    )
    with contextlib.suppress(OSError):
        os.remove(path)
