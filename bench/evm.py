"""EVM-inbox ordering benchmark: Umbra tx/s through the inbox against the local sequencer, measured
in one run on the same signed workload, and the EVM gas each Umbra tx costs.

Both sides are real `umbra node` processes fed over HTTP (`POST /txs`, 500 txs per request); a
side's clock stops when the last transfer is reflected in the node's state. The evm side runs
against a local anvil mining a block a second (as `umbra dev --ordering evm` does) with 2
confirmations, and its relayer batches the mempool into one compressed EVM tx per block.

    from bench import evm
    metrics = evm.inbox_vs_sequencer(work, count=5000)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench._harness import Metric, node_process, wait_healthy
from umbra import RUNTIME_VERSION, codec, crypto
from umbra.chain.types import Call, GenesisConfig, Tx
from umbra.node._dev_evm import anvil_command, free_port, fund, new_evm_key, wait_rpc
from umbra.ordering.evm import evm_genesis_params
from umbra.ordering.evm_inbox import deploy_inbox
from umbra.ordering.evm_rpc import EvmAccount, EvmRpc, address_hex

__all__ = ["inbox_vs_sequencer"]

SENDERS = 64
PER_SENDER = 100  # under the node's per-account mempool limit (256 pending), with room
BATCH = 500
CONFIRMATIONS = 2


def _genesis(
    chain_id: str, senders: list[crypto.SigningKey], sequencer: bytes, params: dict[str, object]
) -> GenesisConfig:
    return GenesisConfig(
        chain_id=chain_id,
        time_ms=0,
        sequencer=sequencer,
        runtime_version=RUNTIME_VERSION,
        params={"block_ms": 100, "idle_ms": 1000, "tx_fee": 1, **params},
        modules={"balances": {"allocations": {k.public_key: 10**15 for k in senders}}},
    )


def _workload(chain_id: str, senders: list[crypto.SigningKey], dest: bytes, count: int) -> list[list[str]]:
    """`count` signed transfers of 1 to `dest`, round-robin over senders, in /txs-sized batches."""
    nonces = [0] * len(senders)
    raws: list[str] = []
    for i in range(count):
        s = i % len(senders)
        call = Call("balances", "transfer", {"to": dest, "amount": 1})
        raws.append(
            codec.to_hex(Tx(chain_id, senders[s].public_key, nonces[s], call, 1).sign(senders[s]).encode())
        )
        nonces[s] += 1
    return [raws[i : i + BATCH] for i in range(0, count, BATCH)]


def _drive(url: str, batches: list[list[str]], dest: bytes, count: int, timeout: float) -> float:
    """Post every batch, then wait until `dest` holds `count`; returns the elapsed seconds."""
    with httpx.Client(base_url=url, timeout=60) as client:
        start = time.perf_counter()
        refused = 0
        for batch in batches:
            results = client.post("/txs", json={"txs": batch}).json()["results"]
            refused += sum(1 for r in results if "error" in r)
        if refused:
            raise RuntimeError(f"{refused} of {count} transfers were refused at admission by {url}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if int(client.get(f"/accounts/{codec.to_hex(dest)}").json()["free"]) >= count:
                return time.perf_counter() - start
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not include {count} transfers within {timeout:.0f} s")


@contextlib.contextmanager
def _process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    out = open(log, "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    out.close()
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def inbox_vs_sequencer(work: Path, *, count: int) -> list[Metric]:
    work.mkdir(parents=True, exist_ok=True)
    senders = [crypto.SigningKey.generate() for _ in range(max(SENDERS, -(-count // PER_SENDER)))]
    timeout = 60 + count / 50

    # -- the local sequencer, same workload shape --
    sequencer = crypto.SigningKey.generate()
    local = _genesis("umbra-bench-local", senders, sequencer.public_key, {})
    dest_local = crypto.SigningKey.generate().public_key
    local_batches = _workload(local.chain_id, senders, dest_local, count)
    with node_process(work / "evm-bench-local", local, sequencer) as url:
        local_s = _drive(url, local_batches, dest_local, count, timeout)

    # -- the EVM inbox --
    anvil_port = free_port()
    with _process(anvil_command(port=anvil_port, block_time=1), work / "anvil.log") as anvil:
        rpc_url = f"http://127.0.0.1:{anvil_port}"
        wait_rpc(rpc_url, alive=lambda: anvil.poll() is None)
        rpc = EvmRpc(rpc_url)
        deployer = EvmAccount(rpc, new_evm_key(work / "evm-deployer.key"))
        relayer_key = work / "evm-relayer.key"
        relayer = EvmAccount(rpc, new_evm_key(relayer_key))
        for account in (deployer, relayer):
            fund(rpc, account.address)
        inbox = deploy_inbox(deployer)
        bound = _genesis(
            "umbra-bench-evm", senders, bytes(32), evm_genesis_params(rpc.chain_id(), inbox.address)
        )
        inbox.publish_genesis(deployer, bound)
        genesis_path = work / "evm-genesis.cbor"
        genesis_path.write_bytes(bound.encode())
        rpc.close()
        dest_evm = crypto.SigningKey.generate().public_key
        evm_batches = _workload(bound.chain_id, senders, dest_evm, count)
        port = free_port()
        argv = [sys.executable, "-m", "umbra.client.cli", "node", "--ordering", "evm", "--evm-url", rpc_url]
        argv += ["--inbox", address_hex(inbox.address), "--confirmations", str(CONFIRMATIONS)]
        argv += ["--evm-key", str(relayer_key), "--genesis", str(genesis_path)]
        argv += ["--data-dir", str(work / "evm-node"), "--port", str(port)]
        with _process(argv, work / "evm-node.log") as node:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, node)
            evm_s = _drive(url, evm_batches, dest_evm, count, timeout)
            status = httpx.get(f"{url}/status", timeout=10).json()["evm"]
    local_tps, evm_tps = count / local_s, count / evm_s
    gas_per_tx = status["relayer_gas_used"] / count
    print(
        f"  evm inbox: {count} transfers in {evm_s:.1f} s ({evm_tps:,.0f} tx/s, {status['relayer_batches']} EVM txs); "
        f"local sequencer: {local_s:.1f} s ({local_tps:,.0f} tx/s)"
    )
    return [
        Metric("evm inbox tx/s vs local sequencer", evm_tps / local_tps, "ratio", 0.1, "higher"),
        Metric("evm inbox tx/s", evm_tps, "tx/s", 500, "higher"),
        Metric("evm inbox gas per Umbra tx", gas_per_tx, "gas", 5000, "lower"),
    ]
