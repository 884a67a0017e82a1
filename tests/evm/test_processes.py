"""`umbra node --ordering evm` as real processes: joining a deployment, a node killed with
SIGKILL while the other keeps serving, and the restarted node catching up to the same root."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.evm.conftest import (
    ENDOWMENT,
    UMBRA,
    Anvil,
    Deployment,
    NodeProcess,
    post_tx,
    wait_until,
)
from umbra import codec

SpawnNode = Callable[..., NodeProcess]


def head(proc: NodeProcess) -> tuple[int, str]:
    status = proc.get("/status")
    return int(status["height"]), str(status["state_root"])


def same_roots(a: NodeProcess, b: NodeProcess, upto: int) -> None:
    for height in range(upto + 1):
        block_a, block_b = a.get(f"/blocks/{height}"), b.get(f"/blocks/{height}")
        assert block_a["hash"] == block_b["hash"], f"block {height} differs"
        assert block_a["state_root"] == block_b["state_root"]
        origin_a, origin_b = block_a["evm"], block_b["evm"]
        assert (origin_a["number"], origin_a["hash"]) == (origin_b["number"], origin_b["hash"])
        if height:  # each node attests with its own key (block 0 is fixed by the genesis itself)
            assert origin_a["attestation"]["node"] != origin_b["attestation"]["node"]


def test_kill_one_node_the_other_serves_and_the_restarted_one_catches_up(
    start_anvil: Callable[..., Anvil], deploy: Callable[[Anvil], Deployment], node_process: SpawnNode
) -> None:
    dep = deploy(start_anvil(block_time=1))
    a = node_process(dep, "a", relayer=1).wait_healthy()
    # Node b joins with nothing but the EVM URL and the inbox address: the genesis comes from the inbox.
    b = node_process(dep, "b", relayer=2, genesis=False).wait_healthy()
    assert a.get("/genesis") == b.get("/genesis")

    first = dep.transfer("alice", "bob", 11)
    reply = post_tx(a.url, first, wait="true", timeout="60")
    assert reply.status_code == 200 and reply.json()["status"] == "included", reply.text
    # Every node reflects an acknowledged tx within 5 s (INTERFACES.md).
    bob = codec.to_hex(dep.keys["bob"].public_key)
    wait_until(lambda: b.get(f"/accounts/{bob}")["free"] == ENDOWMENT + 11, 5, "node b to show the transfer")

    a.kill()
    second = dep.transfer("alice", "bob", 13)
    reply = post_tx(b.url, second, wait="true", timeout="60")
    assert reply.status_code == 200 and reply.json()["status"] == "included", reply.text
    assert b.get(f"/accounts/{bob}")["free"] == ENDOWMENT + 24

    port = a.url.rsplit(":", 1)[1]
    a2 = node_process(dep, "a", relayer=1, port=int(port)).wait_healthy()
    target, _ = head(b)
    wait_until(lambda: head(a2)[0] >= target, 30, "the restarted node to catch up")
    assert a2.get(f"/accounts/{bob}")["free"] == ENDOWMENT + 24
    same_roots(a2, b, target)
    assert a2.get(f"/blocks/{target}")["state_root"] == b.get(f"/blocks/{target}")["state_root"]


def test_wrong_bindings_are_refused_before_serving(
    start_anvil: Callable[..., Anvil], deploy: Callable[[Anvil], Deployment], tmp_path: Path
) -> None:
    dep = deploy(start_anvil(block_time=None))
    base = [UMBRA, "node", "--ordering", "evm", "--evm-url", dep.anvil.url, "--json", "--port", "1"]

    def refused(*extra: str) -> dict[str, str]:
        out = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=60)
        assert out.returncode != 0, out
        error: dict[str, str] = json.loads(out.stdout)["error"]
        return error

    not_inbox = "0x" + dep.poster.address.hex()
    assert refused("--inbox", not_inbox, "--data-dir", str(tmp_path / "x"))["code"] == "no_genesis"
    error = refused(
        "--inbox", not_inbox, "--data-dir", str(tmp_path / "y"), "--genesis", str(dep.genesis_path)
    )
    assert error["code"] == "bad_inbox" and "names the inbox" in error["message"]
    assert refused("--data-dir", str(tmp_path / "z"))["code"] == "usage"  # no --inbox
