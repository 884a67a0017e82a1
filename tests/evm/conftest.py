"""Fixtures for evm ordering: a real anvil per test (free port, own process group, killed at
teardown whatever happens), an inbox deployed on it with a bound genesis, and Umbra nodes that
derive from it, in-process or as `umbra node` subprocesses.

anvil is found as `umbra dev` finds it ($UMBRA_ANVIL, PATH, node_modules/.bin/anvil); `make test`
installs it first. Without it these tests fail, saying how to install it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from umbra import RUNTIME_VERSION, codec, crypto
from umbra.chain.types import Call, GenesisConfig, SignedTx, Tx
from umbra.node._dev_evm import anvil_command, find_anvil, free_port, fund, new_evm_key, wait_rpc
from umbra.node.api import create_app
from umbra.node.service import Node, NodeConfig
from umbra.ordering.evm import EvmSettings, compress_batch, evm_genesis_params
from umbra.ordering.evm_inbox import Inbox, deploy_inbox
from umbra.ordering.evm_rpc import EvmAccount, EvmRpc, Receipt, address_hex

UMBRA = str(Path(sys.executable).with_name("umbra"))
CHAIN_ID = "umbra-evm-test"
ENDOWMENT = 10**12
HTTP = httpx.Client(timeout=30)


@pytest.fixture(scope="session")
def anvil_bin() -> Path:
    # `make test` installs anvil before pytest runs: without it these tests fail, saying how to get it.
    found = find_anvil()
    if found is None:
        pytest.fail("anvil not found: run `make anvil` (npm install @foundry-rs/anvil-linux-amd64@1.7.1)")
    return found


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if predicate():
                return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Anvil:
    url: str
    rpc: EvmRpc
    popen: subprocess.Popen[bytes]

    def mine(self, blocks: int = 1) -> None:
        self.rpc.call("anvil_mine", hex(blocks))

    def head(self) -> int:
        return self.rpc.block_number()


@pytest.fixture
def start_anvil(anvil_bin: Path, tmp_path: Path) -> Iterator[Callable[..., Anvil]]:
    """`start_anvil(block_time=1)` mines on a timer; `block_time=None` mines one block per tx
    (anvil's automine) and more on request (`Anvil.mine`)."""
    started: list[Anvil] = []

    def start(block_time: int | None = 1) -> Anvil:
        port = free_port()
        log = open(tmp_path / f"anvil-{port}.log", "ab")  # noqa: SIM115 - owned by the child
        popen = subprocess.Popen(
            anvil_command(port=port, block_time=block_time),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        url = f"http://127.0.0.1:{port}"
        node = Anvil(url, EvmRpc(url), popen)
        started.append(node)
        wait_rpc(url, alive=lambda: popen.poll() is None, timeout=30)
        return node

    yield start
    for node in started:
        node.rpc.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.popen.pid, signal.SIGKILL)
        node.popen.wait(timeout=10)


@dataclass
class Deployment:
    """An inbox on `anvil` bound to `genesis`, with Umbra accounts and funded EVM keys."""

    anvil: Anvil
    inbox: Inbox
    genesis: GenesisConfig
    genesis_path: Path
    keys: dict[str, crypto.SigningKey]
    evm_key_paths: list[Path]  # [0] deployed the inbox; the others are free for relayers
    poster: EvmAccount  # posts hand-made batches
    root: Path
    node_keys: dict[str, crypto.SigningKey]  # nodes "a" and "b", named in genesis evm_nodes
    nonces: dict[str, int] = field(default_factory=dict)

    def settings(self, *, confirmations: int = 2, relayer: int | None = None, name: str = "") -> EvmSettings:
        key = None if relayer is None else self.evm_key_paths[relayer].read_text().strip()
        return EvmSettings(
            url=self.anvil.url,
            inbox=self.inbox.address,
            confirmations=confirmations,
            relayer_key=None if key is None else bytes.fromhex(key.removeprefix("0x")),
            node_key=self.node_keys.get(name),
            poll_interval=0.05,
        )

    def transfer(self, sender: str, to: str | bytes, amount: int, *, nonce: int | None = None) -> SignedTx:
        """A signed transfer with the sender's next nonce (tracked here, not read from a node)."""
        if nonce is None:
            nonce = self.nonces.get(sender, 0)
            self.nonces[sender] = nonce + 1
        dest = self.keys[to].public_key if isinstance(to, str) else to
        key = self.keys[sender]
        call = Call("balances", "transfer", {"to": dest, "amount": amount})
        return Tx(self.genesis.chain_id, key.public_key, nonce, call, 1).sign(key)

    def post(self, payload: bytes) -> Receipt:
        """Post a raw batch payload to the inbox, as any EVM account may."""
        return self.inbox.submit(self.poster, payload)

    def post_txs(self, txs: list[SignedTx]) -> Receipt:
        return self.post(compress_batch([stx.encode() for stx in txs]))


@pytest.fixture
def deploy(tmp_path: Path) -> Callable[[Anvil], Deployment]:
    def make(anvil: Anvil) -> Deployment:
        root = tmp_path / f"net-{anvil.url.rsplit(':', 1)[1]}"
        key_paths = [root / "keys" / f"evm{i}.key" for i in range(4)]
        accounts = [EvmAccount(anvil.rpc, new_evm_key(p)) for p in key_paths]
        for account in accounts:
            fund(anvil.rpc, account.address)
        inbox = deploy_inbox(accounts[0])
        keys = {name: crypto.SigningKey.generate() for name in ("alice", "bob", "carol", "dave")}
        node_keys = {name: crypto.SigningKey.generate() for name in ("a", "b")}
        binding = evm_genesis_params(
            anvil.rpc.chain_id(), inbox.address, nodes=[k.public_key for k in node_keys.values()]
        )
        genesis = GenesisConfig(
            chain_id=CHAIN_ID,
            time_ms=0,
            sequencer=bytes(32),
            runtime_version=RUNTIME_VERSION,
            params={"tx_fee": 1, **binding},
            modules={"balances": {"allocations": {k.public_key: ENDOWMENT for k in keys.values()}}},
        )
        inbox.publish_genesis(accounts[0], genesis)
        genesis_path = root / "genesis.cbor"
        genesis_path.write_bytes(genesis.encode())
        poster = EvmAccount(anvil.rpc, new_evm_key(root / "keys" / "poster.key"))
        fund(anvil.rpc, poster.address)
        for name, node_key in node_keys.items():
            crypto.save_signing_key(root / "keys" / f"node-{name}.key", node_key)
        return Deployment(anvil, inbox, genesis, genesis_path, keys, key_paths, poster, root, node_keys)

    return make


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """In-process nodes deriving from a deployment; stopped at teardown."""
    started: list[Node] = []

    def start(dep: Deployment, name: str, *, confirmations: int = 2, relayer: int | None = None) -> Node:
        node = Node(
            NodeConfig(
                data_dir=tmp_path / name,
                evm=dep.settings(confirmations=confirmations, relayer=relayer, name=name),
            ),
            dep.genesis,
        )
        node.start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()
        node.store.close()


def same_chain(a: Node, b: Node, upto: int) -> None:
    """Identical headers (so identical state roots) and EVM origins at every height to `upto`."""
    for height in range(upto + 1):
        block_a, block_b = a.store.block(height), b.store.block(height)
        assert block_a is not None and block_b is not None, height
        assert block_a.header == block_b.header, f"headers differ at height {height}"
        assert block_a.txs == block_b.txs, height
    assert a.evm is not None and b.evm is not None
    origins_a, origins_b = a.evm.origins.many(0, upto), b.evm.origins.many(0, upto)
    assert {h: (o.number, o.hash) for h, o in origins_a.items()} == {
        h: (o.number, o.hash) for h, o in origins_b.items()
    }


def included(node: Node, stx: SignedTx) -> bool:
    return node.store.tx(stx.hash) is not None


# ---- subprocess nodes -------------------------------------------------------------------------


@dataclass
class NodeProcess:
    argv: list[str]
    url: str
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("UMBRA_NODE", "UMBRA_KEY")}
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env,
            )  # fmt: skip
        return self

    def wait_healthy(self, timeout: float = 60.0) -> NodeProcess:
        def healthy() -> bool:
            assert self.popen is not None and self.popen.poll() is None, self.log.read_text()[-3000:]
            return HTTP.get(f"{self.url}/health", timeout=2).status_code == 200

        wait_until(healthy, timeout, f"{self.url} to be healthy")
        return self

    def kill(self) -> None:
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=15)

    def get(self, path: str, **params: Any) -> Any:
        reply = HTTP.get(f"{self.url}{path}", params=params or None)
        reply.raise_for_status()
        return reply.json()


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    started: list[NodeProcess] = []

    def spawn(
        dep: Deployment, name: str, *, relayer: int | None, port: int | None = None, genesis: bool = True
    ) -> NodeProcess:
        port = port or free_port()
        argv = [UMBRA, "node", "--ordering", "evm", "--evm-url", dep.anvil.url, "--inbox"]
        argv += [address_hex(dep.inbox.address), "--confirmations", "2", "--data-dir", str(tmp_path / name)]
        argv += ["--port", str(port)]
        if relayer is not None:
            argv += ["--evm-key", str(dep.evm_key_paths[relayer])]
        if genesis:
            argv += ["--genesis", str(dep.genesis_path)]
        if (dep.root / "keys" / f"node-{name}.key").exists():
            argv += ["--node-key", str(dep.root / "keys" / f"node-{name}.key")]
        proc = NodeProcess(argv, f"http://127.0.0.1:{port}", tmp_path / f"{name}.log").start()
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        proc.kill()


def post_tx(url: str, stx: SignedTx, **params: Any) -> httpx.Response:
    return HTTP.post(f"{url}/tx", json={"tx": codec.to_hex(stx.encode())}, params=params or None, timeout=60)


@contextlib.contextmanager
def serve(node: Node) -> Iterator[str]:
    """The node's HTTP API on a free port, from a thread; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(node), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, name=f"api-{port}", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 20, "the in-process API to start", interval=0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
