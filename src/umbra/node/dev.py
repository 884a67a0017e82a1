"""`umbra dev`: a whole local network in one foreground command.

The data dir holds keys, the genesis, one sub-directory per process and `dev.json`. An existing
dir is resumed as it is (also after `kill -9` of everything); `--fresh` wipes it. Every process
runs in `umbra dev`'s process group and also gets PR_SET_PDEATHSIG, so it dies with its parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from umbra import RUNTIME_VERSION, codec, crypto
from umbra.chain.types import GenesisConfig

__all__ = ["DevNetwork", "dev_genesis", "free_port"]

DEV_ACCOUNTS = ("alice", "bob", "charlie")
DEV_ENDOWMENT = 10**15
DEV_PARAMS = {"block_ms": 100, "idle_ms": 1000, "tx_fee": 1}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def dev_genesis(
    keys: dict[str, crypto.SigningKey], sequencer: crypto.SigningKey, *, chain_id: str
) -> GenesisConfig:
    council = sorted(keys[name].public_key for name in DEV_ACCOUNTS)
    return GenesisConfig(
        chain_id=chain_id,
        time_ms=int(time.time() * 1000),
        sequencer=sequencer.public_key,
        runtime_version=RUNTIME_VERSION,
        params=dict(DEV_PARAMS),
        modules={
            "balances": {"allocations": {keys[name].public_key: DEV_ENDOWMENT for name in DEV_ACCOUNTS}},
            "council": {"members": council, "threshold": 2},
        },
    )


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the parent dies (Linux prctl)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class _Proc:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        finally:
            out.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class DevNetwork:
    def __init__(
        self, data_dir: Path, *, port: int, workers: int, fresh: bool, ordering: str, nodes: int
    ) -> None:
        self.dir = data_dir.resolve()
        self.port = port
        self.workers = workers
        self.ordering = ordering
        self.nodes = nodes
        if fresh and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[_Proc] = []
        self._stopping = False

    # ---- setup -----------------------------------------------------------------------------------
    def _key(self, name: str) -> crypto.SigningKey:
        path = self.dir / "keys" / f"{name}.key"
        if path.exists():
            return crypto.load_signing_key(path)
        key = crypto.SigningKey.generate()
        crypto.save_signing_key(path, key)
        return key

    def prepare(self) -> Path:
        """Create keys and genesis on first start; reuse them afterwards."""
        keys = {name: self._key(name) for name in DEV_ACCOUNTS}
        sequencer = self._key("sequencer")
        genesis_path = self.dir / "genesis.cbor"
        if not genesis_path.exists():
            genesis = dev_genesis(keys, sequencer, chain_id=f"umbra-dev-{os.urandom(4).hex()}")
            tmp = genesis_path.with_suffix(".tmp")
            tmp.write_bytes(genesis.encode())
            os.replace(tmp, genesis_path)
        return genesis_path

    def _umbra(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "umbra.client.cli", *args]

    # ---- run -----------------------------------------------------------------------------------
    def run(self) -> int:
        genesis_path = self.prepare()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        node_url = f"http://127.0.0.1:{self.port}"
        node = _Proc(
            "node0",
            self._umbra(
                "node",
                "--data-dir",
                str(self.dir / "node0"),
                "--port",
                str(self.port),
                "--genesis",
                str(genesis_path),
                "--sequencer-key",
                str(self.dir / "keys" / "sequencer.key"),
            ),
            self.dir / "logs" / "node0.log",
        )
        node.info = {"url": node_url}
        self.procs.append(node)
        try:
            node.start()
            self._wait_healthy(node, node_url)
            self._write_dev_json()
            print(f"umbra dev: network ready at {node_url}; dev.json at {self.dir / 'dev.json'}", flush=True)
            return self._supervise()
        finally:
            self.stop()

    def _wait_healthy(self, proc: _Proc, url: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping:
            if not proc.alive():
                tail = proc.log.read_text(errors="replace")[-2000:] if proc.log.exists() else ""
                raise RuntimeError(f"{proc.name} exited during start-up:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{proc.name} did not become healthy within {timeout:.0f} s")

    def _write_dev_json(self) -> None:
        doc = {
            "nodes": [
                {"url": p.info["url"], "pid": p.popen.pid if p.popen else None}
                for p in self.procs
                if p.name.startswith("node")
            ],
            "workers": [],
            "gatekeepers": [],
            "keys": {name: str(self.dir / "keys" / f"{name}.key") for name in DEV_ACCOUNTS},
            "ordering": self.ordering,
        }
        tmp = self.dir / "dev.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, self.dir / "dev.json")

    def _supervise(self) -> int:
        """Restart crashed processes (a node resumes from its store) until told to stop."""
        while not self._stopping:
            time.sleep(0.5)
            for proc in self.procs:
                if not proc.alive() and not self._stopping:
                    proc.restarts += 1
                    print(f"umbra dev: {proc.name} exited; restarting (restart {proc.restarts})", flush=True)
                    proc.start()
                    self._write_dev_json()
        return 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stopping = True

    def stop(self) -> None:
        self._stopping = True
        for proc in self.procs:
            if proc.alive() and proc.popen is not None:
                proc.popen.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            if proc.popen is not None:
                try:
                    proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.popen.kill()


def load_genesis(path: Path) -> GenesisConfig:
    return GenesisConfig.from_cbor(codec.decode(path.read_bytes()))
