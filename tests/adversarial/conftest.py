"""Shared pieces of the adversarial suite: multi-process networks, chain readers, a clean replay,
marker scans and the figures file.

Every process runs in its own session (process group) and is killed with its group at teardown,
also when a test fails. Figures go to `test-artifacts/adversarial/<name>.json`; the README's
"Adversarial testing" section quotes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.node.conftest import HTTP, UmbraProcess, free_port, wait_until
from tests.node.conftest import spawn as spawn  # the fixture: `umbra` processes, killed with their group
from tests.worker.conftest import Net, write_network
from umbra import codec, crypto
from umbra.chain.blocks import genesis_block, import_block
from umbra.chain.runtime import Runtime
from umbra.chain.state import MemoryBackend
from umbra.chain.types import Block, Call, GenesisConfig, SignedTx, Tx
from umbra.node.dev import DEV_ENDOWMENT

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "adversarial"

COUNTER = """
from umbra.contract import Contract, command, query


class Counter(Contract):
    def init(self, ctx, start=0):
        self.state["n"] = start

    @command
    def add(self, ctx, by=1):
        self.state["n"] += by
        return self.state["n"]

    @query
    def get(self, ctx):
        return self.state["n"]
"""


def record(name: str, figures: dict[str, Any]) -> None:
    """Merge `figures` into test-artifacts/adversarial/<name>.json, stamped with the date."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.json"
    doc: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads(path.read_text())
    doc.update(figures)
    doc["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# ---- networks -----------------------------------------------------------------------------------


@dataclass
class AdvNet(Net):
    """A `tests.worker` network whose node keeps one port across restarts, and whose processes
    are remembered by name so a test can kill and restart any of them."""

    node_port: int = 0
    by_name: dict[str, UmbraProcess] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    genesis: GenesisConfig | None = None

    def node_args(self) -> list[str]:
        return [
            "node",
            "--data-dir",
            str(self.root / "node"),
            "--port",
            str(self.node_port),
            "--genesis",
            str(self.genesis_path),
            "--sequencer-key",
            str(self.keys["sequencer"]),
        ]

    def start_node(self) -> UmbraProcess:
        if not self.node_port:
            self.node_port = free_port()
        self.node_url = f"http://127.0.0.1:{self.node_port}"
        proc = self.start(*self.node_args(), name="node", port=self.node_port)
        self.by_name["node"] = proc
        return proc.wait_healthy(60)

    def start_host(self, role: str, name: str, *extra: str, port: int | None = None) -> UmbraProcess:
        port = port or self.ports.get(name) or free_port()
        self.ports[name] = port
        proc = super().start_host(role, name, *extra, port=port)
        self.by_name[name] = proc
        return proc

    def restart(self, name: str, *extra: str) -> UmbraProcess:
        """Start `name` again (same data dir, same port): a node resumes its store, a worker or
        gatekeeper its sealed identity."""
        if name == "node":
            return self.start_node()
        role = "gatekeeper" if name == "gatekeeper" else "worker"
        return self.start_host(role, name, *extra)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(OSError):
                proc.stop()


def make_network(
    root: Path,
    *,
    operators: tuple[str, ...] = ("w0", "w1"),
    accounts: tuple[str, ...] = (),
    params: dict[str, int] | None = None,
) -> AdvNet:
    """Keys, sim dev root and a dev-style genesis on disk (tests.worker.conftest.write_network),
    plus extra funded accounts and chain parameters."""
    base = write_network(root, operators=operators)
    genesis = GenesisConfig.from_cbor(codec.decode(base.genesis_path.read_bytes()))
    keys = dict(base.keys)
    allocations = genesis.modules["balances"]["allocations"]
    for name in accounts:
        key = crypto.SigningKey.generate()
        keys[name] = root / "keys" / f"{name}.key"
        crypto.save_signing_key(keys[name], key)
        allocations[key.public_key] = DEV_ENDOWMENT
    genesis.params.update(params or {})
    genesis = GenesisConfig.from_cbor(genesis.to_cbor())  # recompute the hash
    base.genesis_path.write_bytes(genesis.encode())
    return AdvNet(root, keys, base.sim_root, base.genesis_path, genesis=genesis)


@pytest.fixture
def adv_network(tmp_path: Path) -> Iterator[Any]:
    """A factory of AdvNets; every process of every one is killed at teardown."""
    nets: list[AdvNet] = []

    def make(**kwargs: Any) -> AdvNet:
        net = make_network(tmp_path / f"net{len(nets)}", **kwargs)
        nets.append(net)
        return net

    try:
        yield make
    finally:
        for net in nets:
            net.stop_all()


def worker_info(url: str) -> dict[str, Any]:
    result: dict[str, Any] = HTTP.get(f"{url}/info", timeout=5).json()
    return result


def wait_ready(net: AdvNet, *names: str, epoch: int = 0, timeout: float = 120) -> None:
    """Until each named host is registered, active and holds `epoch`."""

    def ready(name: str) -> bool:
        proc = net.by_name[name]
        if not proc.alive():
            raise AssertionError(f"{name} exited:\n{proc.log_tail()}")
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            assert proc.url is not None
            doc = worker_info(proc.url)
            return doc["status"] == "active" and epoch in doc["epochs_held"]
        return False

    wait_until(lambda: all(ready(n) for n in names), timeout, f"{', '.join(names)} keyed", interval=0.2)


# ---- reading the chain --------------------------------------------------------------------------


def raw_blocks(url: str, start: int = 0) -> list[tuple[int, bytes, bytes]]:
    """Every stored block from `start`: (height, encoded block, encoded events)."""
    out: list[tuple[int, bytes, bytes]] = []
    while True:
        reply = HTTP.get(f"{url}/sync/blocks", params={"from": start, "limit": 500}, timeout=30)
        reply.raise_for_status()
        rows = reply.json()["blocks"]
        if not rows:
            return out
        for row in rows:
            out.append((row["height"], codec.from_hex(row["block"]), codec.from_hex(row["events"])))
        start = rows[-1]["height"] + 1


def chain_events(url: str, *names: str, start: int = 0) -> list[dict[str, Any]]:
    """Events (CBOR-decoded: bytes stay bytes) named `names` (all when none), with their height."""
    found = []
    for height, _, events in raw_blocks(url, start):
        for event in codec.decode(events):
            if not names or event["name"] in names:
                found.append({**event, "height": height})
    return found


def state_value(url: str, module: str, item: str, key: bytes | None = None) -> Any:
    """A state value decoded from its exact CBOR bytes (None when absent)."""
    params: dict[str, str] = {"encoding": "cbor"}
    if key is not None:
        params["key"] = codec.to_hex(key)
    reply = HTTP.get(f"{url}/state/{module}/{item}", params=params, timeout=10)
    if reply.status_code == 404:
        return None
    reply.raise_for_status()
    return codec.decode(codec.from_hex(reply.json()["value"]))


def tx_receipt(url: str, tx_hash: bytes | str) -> dict[str, Any]:
    ref = tx_hash if isinstance(tx_hash, str) else codec.to_hex(tx_hash)
    result: dict[str, Any] = HTTP.get(f"{url}/tx/{ref}", timeout=10).json()
    return result


def height(url: str) -> int:
    return int(HTTP.get(f"{url}/status", timeout=10).json()["height"])


def signed(net: AdvNet, sender: str, module: str, method: str, nonce: int, /, **args: Any) -> SignedTx:
    key = net.key(sender)
    assert net.genesis is not None
    return Tx(net.genesis.chain_id, key.public_key, nonce, Call(module, method, args), 1).sign(key)


def nonce_of(url: str, who: bytes) -> int:
    return int(HTTP.get(f"{url}/accounts/{codec.to_hex(who)}", timeout=10).json()["nonce"])


def submit(net: AdvNet, sender: str, module: str, method: str, /, **args: Any) -> dict[str, Any]:
    """Sign and post a tx with the sender's next nonce; wait for its block. Returns the receipt
    (`status` included, `ok`, `error`) or the admission refusal (`error: {code, message}`)."""
    nonce = nonce_of(net.node_url, net.key(sender).public_key)
    stx = signed(net, sender, module, method, nonce, **args)
    reply = HTTP.post(
        f"{net.node_url}/tx", json={"tx": codec.to_hex(stx.encode())}, params={"wait": "true"}, timeout=60
    )
    body: dict[str, Any] = reply.json()
    if reply.status_code == 202:  # still pending after the node's wait: keep waiting for its block
        tx_hash = body["tx_hash"]
        wait_until(lambda: tx_receipt(net.node_url, tx_hash)["status"] == "included", 60, f"tx {tx_hash}")
        body = tx_receipt(net.node_url, tx_hash)
    body["http_status"] = reply.status_code
    return body


# ---- a clean replay -----------------------------------------------------------------------------


@dataclass
class Replay:
    heights: int
    backend: MemoryBackend
    seconds: float


def replay_chain(url: str, genesis: GenesisConfig) -> Replay:
    """Replay every stored block into a fresh in-memory runtime, checking at every height that
    the header's state, tx and events roots are the ones the replay computes, and that the block
    hash chain links up. Raises on the first difference."""
    started = time.monotonic()
    runtime = Runtime(genesis)
    block0, outcome0 = genesis_block(runtime)
    backend = MemoryBackend()
    backend.apply(outcome0.changes)
    root = outcome0.root
    rows = raw_blocks(url)
    assert rows and rows[0][0] == 0, "the node serves no block 0"
    stored0 = Block.decode(rows[0][1])
    assert stored0.header == block0.header, "block 0 is not the genesis block"
    parent = stored0.header
    for h, raw, _events in rows[1:]:
        block = Block.decode(raw)
        assert block.header.height == h == parent.height + 1
        outcome = import_block(runtime, backend, root, parent, block)  # checks every root
        backend.apply(outcome.changes)
        root = outcome.root
        assert root.digest() == block.header.state_root, f"state root differs at height {h}"
        parent = block.header
    return Replay(len(rows), backend, time.monotonic() - started)


# ---- secrets --------------------------------------------------------------------------------------


def files_under(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


def files_with(needle: bytes, paths: list[Path]) -> list[str]:
    """The files whose bytes contain `needle` (as is, or as lowercase hex)."""
    hexed = needle.hex().encode()
    hits = []
    for path in paths:
        with contextlib.suppress(OSError):
            data = path.read_bytes()
            if needle in data or hexed in data:
                hits.append(str(path))
    return hits


# ---- one honest network shared by the modules that do not kill or corrupt anything -------------

LOAD_SENDERS = tuple(f"load{i}" for i in range(6))


@dataclass
class Shared:
    """node + gatekeeper + 2 honest workers, funded accounts, and a deployed counter."""

    net: AdvNet
    counter: str

    @property
    def url(self) -> str:
        return self.net.node_url

    def worker_urls(self) -> list[str]:
        return [self.net.by_name[n].url or "" for n in ("w0", "w1")]


@pytest.fixture(scope="package")  # stopped when tests/adversarial is done, not at the end of the run
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    from umbra.client import Client

    net = make_network(
        tmp_path_factory.mktemp("shared"),
        operators=("w0", "w1"),
        accounts=("user", "owner", "other", *LOAD_SENDERS),
    )
    try:
        net.start_node()
        for name, role in (("gatekeeper", "gatekeeper"), ("w0", "worker"), ("w1", "worker")):
            net.start_host(role, name)
        wait_ready(net, "gatekeeper", "w0", "w1")
        with Client(net.node_url, net.key("user")) as client:
            counter = client.deploy(COUNTER, init={"start": 0}).contract_id
        yield Shared(net, counter)
    finally:
        net.stop_all()
