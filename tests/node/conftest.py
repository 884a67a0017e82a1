"""Fixtures for node tests: chain files, subprocess nodes (own process group, always killed) and
an in-process node served over real HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
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
from umbra.node.api import create_app
from umbra.node.service import Node, NodeConfig

UMBRA = str(Path(sys.executable).with_name("umbra"))
# One pooled client for every test request (a fresh `httpx.get` costs ~50 ms of TLS set-up).
HTTP = httpx.Client(timeout=30)
ENDOWMENT = 10**12
CHAIN_ID = "umbra-node-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env() -> dict[str, str]:
    """The environment for `umbra` subprocesses: no inherited node or key defaults."""
    env = {k: v for k, v in os.environ.items() if k not in ("UMBRA_NODE", "UMBRA_KEY")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class ChainFiles:
    """Keys and a genesis on disk, as an operator would hold them."""

    root: Path
    genesis: GenesisConfig
    genesis_path: Path
    sequencer: crypto.SigningKey
    sequencer_path: Path
    keys: dict[str, crypto.SigningKey]
    key_paths: dict[str, Path]

    def address(self, name: str) -> str:
        return codec.to_hex(self.keys[name].public_key)


def write_chain_files(
    root: Path,
    *,
    accounts: tuple[str, ...] = ("alice", "bob", "charlie"),
    params: dict[str, int] | None = None,
) -> ChainFiles:
    root.mkdir(parents=True, exist_ok=True)
    keys = {name: crypto.SigningKey.generate() for name in accounts}
    key_paths = {name: root / f"{name}.key" for name in accounts}
    for name, key in keys.items():
        crypto.save_signing_key(key_paths[name], key)
    sequencer = crypto.SigningKey.generate()
    sequencer_path = root / "sequencer.key"
    crypto.save_signing_key(sequencer_path, sequencer)
    council = sorted(keys[n].public_key for n in accounts[:3])
    genesis = GenesisConfig(
        chain_id=CHAIN_ID,
        time_ms=int(time.time() * 1000),
        sequencer=sequencer.public_key,
        runtime_version=RUNTIME_VERSION,
        params={"block_ms": 50, "idle_ms": 500, "tx_fee": 1, **(params or {})},
        modules={
            "balances": {"allocations": {k.public_key: ENDOWMENT for k in keys.values()}},
            "council": {"members": council, "threshold": 2},
        },
    )
    genesis_path = root / "genesis.cbor"
    genesis_path.write_bytes(genesis.encode())
    return ChainFiles(root, genesis, genesis_path, sequencer, sequencer_path, keys, key_paths)


def signed_transfer(
    files: ChainFiles,
    sender: str,
    to: bytes,
    amount: int,
    nonce: int,
    *,
    fee: int = 1,
    chain_id: str = CHAIN_ID,
) -> SignedTx:
    key = files.keys[sender]
    tx = Tx(chain_id, key.public_key, nonce, Call("balances", "transfer", {"to": to, "amount": amount}), fee)
    return tx.sign(key)


def post_tx(url: str, raw: bytes, **params: Any) -> httpx.Response:
    return HTTP.post(f"{url}/tx", json={"tx": codec.to_hex(raw)}, params=params or None, timeout=30)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if predicate():
                return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ---- subprocess nodes ---------------------------------------------------------------------------


@dataclass
class UmbraProcess:
    """An `umbra ...` process in its own session (process group), logging to a file."""

    argv: list[str]
    log: Path
    url: str | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> UmbraProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=child_env(),
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def wait_healthy(self, timeout: float = 30.0) -> UmbraProcess:
        assert self.url is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"{self.argv[1:3]} exited early:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if HTTP.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.05)
        raise AssertionError(f"{self.url} not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the process and anything it started)."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=15)

    def stop(self) -> None:
        """SIGTERM the group, then SIGKILL whatever is left."""
        if self.popen is None:
            return
        self.kill_group(signal.SIGTERM)
        if self.alive():
            self.kill_group(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # stragglers in the group


SpawnNode = Callable[..., UmbraProcess]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[SpawnNode]:
    """Start `umbra` subcommands; every one is killed with its whole group at teardown."""
    started: list[UmbraProcess] = []

    def start(*args: str, port: int | None = None, log_name: str | None = None) -> UmbraProcess:
        name = log_name or f"{args[0]}-{len(started)}"
        url = f"http://127.0.0.1:{port}" if port is not None else None
        proc = UmbraProcess([UMBRA, *args], tmp_path / "logs" / f"{name}.log", url).start()
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:  # every one, even if stopping another failed
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                proc.stop()


def sequencer_args(files: ChainFiles, data_dir: Path, port: int) -> list[str]:
    return [
        "node",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--genesis",
        str(files.genesis_path),
        "--sequencer-key",
        str(files.sequencer_path),
    ]


def run_cli(*args: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    """Run `umbra ARGS --json` in its own process group; return the exit code and the one JSON
    object it printed. On a timeout the whole group is killed."""
    proc = subprocess.Popen(
        [UMBRA, *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env=child_env(),
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind, or all of it on timeout
        proc.wait()
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"want exactly one JSON line, got stdout={stdout!r} stderr={stderr[-2000:]!r}"
    return proc.returncode, json.loads(lines[0])


# ---- in-process node over real HTTP -------------------------------------------------------------


@dataclass
class LiveNode:
    node: Node
    url: str
    files: ChainFiles

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = HTTP.get(f"{self.url}/status", timeout=10).json()
        return result

    def account(self, who: bytes) -> dict[str, Any]:
        result: dict[str, Any] = HTTP.get(f"{self.url}/accounts/{codec.to_hex(who)}", timeout=10).json()
        return result


@contextlib.contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Serve an ASGI app over real HTTP on 127.0.0.1 from a thread; yields its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "in-process HTTP server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def serve_node(
    files: ChainFiles,
    data_dir: Path,
    *,
    rate: float = 5000.0,
    burst: float = 10000.0,
    produce: bool = True,
    **config: Any,
) -> Iterator[LiveNode]:
    """A node on real HTTP; `config` holds further NodeConfig fields."""
    node = Node(NodeConfig(data_dir=data_dir, sequencer_key=files.sequencer, **config), files.genesis)
    if produce:
        node.start()
    try:
        with serve_app(create_app(node, rate=rate, burst=burst)) as url:
            yield LiveNode(node, url, files)
    finally:
        node.stop()
        node.store.close()


@pytest.fixture(scope="module")
def live_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNode]:
    """One producing node per test module (tests use fresh accounts or read-only calls)."""
    root = tmp_path_factory.mktemp("live")
    files = write_chain_files(root / "files", accounts=("alice", "bob", "charlie", "dave", "erin"))
    with serve_node(files, root / "node") as live:
        yield live
