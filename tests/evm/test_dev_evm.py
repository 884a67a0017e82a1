"""`umbra dev --ordering evm` orchestration (umbra.node._dev_evm) against a real anvil: the inbox is
deployed and the dev genesis bound to it once, the nodes it starts agree, and after everything is
killed with SIGKILL the network resumes from anvil's state file and the nodes' stores. On a whole
`umbra dev --ordering evm --nodes 2`, a confidential call sent to one node runs on a worker attached
to the other."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import COUNTER_CONTRACT
from tests.evm.conftest import HTTP, UMBRA, wait_until
from tests.worker.conftest import Dev
from umbra import RUNTIME_VERSION, codec, crypto
from umbra.chain.types import GenesisConfig
from umbra.client import Client
from umbra.node import _dev_evm as dev_evm
from umbra.node._dev_evm import ANVIL_NPM_PACKAGE, AnvilNotFound, EvmDev, anvil_command, free_port
from umbra.ordering.evm import evm_binding


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Callable[[list[str], str], subprocess.Popen[bytes]]]:
    """Processes in their own process groups, all SIGKILLed at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], name: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def status(url: str) -> dict[str, object]:
    reply = HTTP.get(f"{url}/status", timeout=5)
    reply.raise_for_status()
    result: dict[str, object] = reply.json()
    return result


def test_dev_deploys_once_starts_agreeing_nodes_and_resumes_after_kill_9(
    anvil_bin: Path, tmp_path: Path, group: Callable[[list[str], str], subprocess.Popen[bytes]]
) -> None:
    net = tmp_path / "net"
    net.mkdir()
    alice = crypto.SigningKey.generate()
    base = GenesisConfig(
        chain_id="umbra-dev-evm-test",
        time_ms=int(time.time() * 1000),
        sequencer=crypto.SigningKey.generate().public_key,
        runtime_version=RUNTIME_VERSION,
        params={"tx_fee": 1},
        modules={"balances": {"allocations": {alice.public_key: 10**12}}},
    )
    genesis_path = net / "genesis.cbor"
    genesis_path.write_bytes(base.encode())

    def up(first_port: int) -> tuple[EvmDev, list[subprocess.Popen[bytes]], list[str]]:
        evm = EvmDev(net, nodes=2, first_port=first_port, anvil_port=free_port())
        anvil = group(evm.anvil_command(), "anvil")
        evm.wait_anvil(alive=lambda: anvil.poll() is None)
        evm.prepare(genesis_path)
        procs, urls = [anvil], []
        for name, argv, url in evm.node_commands([UMBRA], genesis_path):
            procs.append(group(argv, name))
            urls.append(url)
        return evm, procs, urls

    port = free_port()
    evm, procs, urls = up(port)
    bound = GenesisConfig.from_cbor(codec.decode(genesis_path.read_bytes()))
    assert urls[0] == f"http://127.0.0.1:{port}"
    binding = evm_binding(bound)
    assert binding is not None and binding[1] == evm.inbox
    assert bound.sequencer == bytes(32) and len(bound.params["evm_nodes"]) == 2
    assert bound.params["evm_quorum"] == 2 and bound.modules == base.modules
    wait_until(lambda: all(int(status(u)["height"]) >= 3 for u in urls), 60, "both nodes to derive")

    # kill -9 everything, then resume: same inbox, same genesis, the chain continues.
    height_before = min(int(status(u)["height"]) for u in urls)
    time.sleep(1.5)  # anvil dumps its state every second
    for proc in procs:
        kill(proc)
    evm2, _, urls2 = up(port)
    assert evm2.inbox == evm.inbox and genesis_path.read_bytes() == bound.encode()
    wait_until(
        lambda: all(int(status(u)["height"]) > height_before + 2 for u in urls2),
        60,
        "the resumed nodes to derive",
    )
    assert all(status(u)["halted"] is None for u in urls2)
    for height in range(int(min(int(status(u)["height"]) for u in urls2)) + 1):
        roots = {HTTP.get(f"{u}/blocks/{height}").json()["state_root"] for u in urls2}
        assert len(roots) == 1, height


def test_without_anvil_dev_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UMBRA_ANVIL", str(tmp_path / "nope"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(dev_evm, "_repo_root", lambda: tmp_path)
    with pytest.raises(AnvilNotFound, match=re.escape(f"npm install --no-save {ANVIL_NPM_PACKAGE}")):
        anvil_command(port=1)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_call_through_node_a_completes_on_a_worker_attached_to_node_b(
    anvil_bin: Path, tmp_path: Path
) -> None:
    dev = Dev(tmp_path / "dev", free_port(), 1, ("--ordering", "evm", "--nodes", "2")).start()
    try:
        doc = dev.ready(180)
        node_a, node_b = (n["url"] for n in doc["nodes"])
        (worker,) = doc["workers"]
        # The worker talks to node B first (its txs go there), and follows node A only for the
        # quorum its core needs before it believes a block.
        argv = Path(f"/proc/{worker['pid']}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"--node") + 1].decode().split(",") == [node_b, node_a]
        assert worker["node"] == node_b

        with Client(node_a, crypto.load_signing_key(doc["keys"]["alice"])) as client:
            counter = client.deploy(COUNTER_CONTRACT, init={"start": 1}).contract_id
            result = client.call(counter, "add", {"by": 2})
        assert result.output == 3 and result.verified and result.workers == [worker["id"]]

        # Both nodes derived the settlement from the inbox, at the same height with the same root.
        def job_on(url: str) -> dict[str, object]:
            reply = HTTP.get(f"{url}/state/compute/job", params={"key": result.job_id}, timeout=10)
            value: dict[str, object] = reply.json().get("value") or {}
            return value

        wait_until(
            lambda: job_on(node_a).get("status") == job_on(node_b).get("status") == "settled", 30, "both"
        )
        settled = int(str(job_on(node_a)["settled_height"]))
        roots = {HTTP.get(f"{u}/blocks/{settled}").json()["state_root"] for u in (node_a, node_b)}
        assert len(roots) == 1
    finally:
        dev.kill_all()
