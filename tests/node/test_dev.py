"""`umbra dev --workers 0`: dev.json in its fixed shape, and a resume after `kill -9` of the whole
process group with every balance intact (as /work/shared/conformance/checks/core-chain does)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.node.conftest import HTTP, SpawnNode, UmbraProcess, free_port, post_tx, run_cli, wait_until
from umbra import crypto

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def read_dev_json(path: Path) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = json.loads(path.read_text())
        return result
    except (OSError, ValueError):
        return None


def wait_for_dev_json(
    proc: UmbraProcess, path: Path, *, not_pid: int | None = None, timeout: float = 90
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.alive(), f"umbra dev exited early:\n{proc.log_tail()}"
        doc = read_dev_json(path)
        if doc is not None and doc["nodes"] and doc["nodes"][0]["pid"] != not_pid:
            return doc
        time.sleep(0.1)
    raise AssertionError(f"no dev.json after {timeout:.0f} s:\n{proc.log_tail()}")


def pid_alive(pid: int) -> bool:
    """True while `pid` runs. A zombie (dead, not yet reaped: a container's init may never reap
    orphans) counts as dead."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def assert_dev_json_shape(doc: dict[str, Any], port: int) -> None:
    assert set(doc) >= {"nodes", "workers", "gatekeepers", "keys", "ordering"}
    assert doc["ordering"] == "local"
    assert doc["workers"] == []  # --workers 0
    assert isinstance(doc["gatekeepers"], list)
    for gatekeeper in doc["gatekeepers"]:
        assert set(gatekeeper) >= {"id", "pid"}
    (node,) = doc["nodes"]
    assert set(node) >= {"url", "pid"}
    assert node["url"] == f"http://127.0.0.1:{port}"
    assert isinstance(node["pid"], int) and pid_alive(node["pid"])
    assert set(doc["keys"]) >= {"alice", "bob", "charlie"}
    for path in doc["keys"].values():
        assert os.path.isabs(path)
        crypto.load_signing_key(path)  # a real, loadable key file


def test_umbra_dev_writes_dev_json_and_resumes_after_kill_9(tmp_path: Path, spawn: SpawnNode) -> None:
    data_dir, port = tmp_path / "net", free_port()
    url = f"http://127.0.0.1:{port}"
    dev_args = ("dev", "--data-dir", str(data_dir), "--workers", "0", "--port", str(port))
    dev = spawn(*dev_args, log_name="dev-0")
    doc = wait_for_dev_json(dev, data_dir / "dev.json")
    assert_dev_json_shape(doc, port)
    assert not (data_dir / "dev.json.tmp").exists()  # written atomically
    alice = doc["keys"]["alice"]

    code, made = run_cli("keygen", "--out", str(tmp_path / "receiver.key"))
    assert code == 0
    receiver = made["address"]
    code, first = run_cli("transfer", receiver, "1234", "--key", alice, "--node", url)
    assert code == 0, first
    for _ in range(3):
        assert run_cli("transfer", receiver, "1", "--key", alice, "--node", url)[0] == 0
    height_before = run_cli("status", "--node", url)[1]["height"]
    old_node_pid = doc["nodes"][0]["pid"]

    dev.kill_group()  # kill -9 of umbra dev and everything in its group
    wait_until(lambda: not pid_alive(old_node_pid), 10, "the node to die with its group")

    dev = spawn(*dev_args, log_name="dev-1")
    doc = wait_for_dev_json(dev, data_dir / "dev.json", not_pid=old_node_pid)
    assert_dev_json_shape(doc, port)
    wait_until(lambda: HTTP.get(f"{url}/health").status_code == 200, 60, "the resumed node")
    code, balance = run_cli("balance", receiver, "--node", url)
    assert (code, balance["free"]) == (0, 1237)
    assert run_cli("status", "--node", url)[1]["height"] >= height_before

    replay = post_tx(url, bytes.fromhex(first["tx"][2:]))
    assert 400 <= replay.status_code < 500
    garbage = HTTP.post(f"{url}/tx", json={"tx": "0xdeadbeef"})
    assert 400 <= garbage.status_code < 500
    start = run_cli("status", "--node", url)[1]["height"]
    wait_until(lambda: run_cli("status", "--node", url)[1]["height"] >= start + 2, 20, "two more blocks")
    assert run_cli("balance", receiver, "--node", url)[1]["free"] == 1237

    # SIGTERM to `umbra dev` alone stops every process it started.
    node_pid = doc["nodes"][0]["pid"]
    os.kill(dev.pid, signal.SIGTERM)
    assert dev.popen is not None
    dev.popen.wait(timeout=30)
    wait_until(lambda: not pid_alive(node_pid), 15, "the node to stop with umbra dev")
