"""Multi-process networks for worker tests: a node, a gatekeeper and workers, each an `umbra`
process in its own process group, all killed at teardown (also when a test fails)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

import umbra
from tests.node.conftest import UMBRA, UmbraProcess, child_env, free_port, wait_until
from umbra import codec, crypto
from umbra.client._node import NodeClient
from umbra.node.dev import DEV_ACCOUNTS, dev_genesis
from umbra.tee._sim import SimAuthority, code_tree_measurement

OTHER_MEASUREMENT = "cd" * 32


@dataclass
class Net:
    """Keys, dev root and genesis on disk, and the processes started on them."""

    root: Path
    keys: dict[str, Path]
    sim_root: Path
    genesis_path: Path
    node_url: str = ""
    procs: list[UmbraProcess] = field(default_factory=list)

    def key(self, name: str) -> crypto.SigningKey:
        return crypto.load_signing_key(self.keys[name])

    def start(self, *args: str, name: str, port: int | None = None) -> UmbraProcess:
        url = f"http://127.0.0.1:{port}" if port is not None else None
        proc = UmbraProcess([UMBRA, *args], self.root / "logs" / f"{name}.log", url).start()
        self.procs.append(proc)
        return proc

    def start_node(self) -> UmbraProcess:
        port = free_port()
        self.node_url = f"http://127.0.0.1:{port}"
        args = [
            "node",
            "--data-dir",
            str(self.root / "node"),
            "--port",
            str(port),
            "--genesis",
            str(self.genesis_path),
        ]
        args += ["--sequencer-key", str(self.keys["sequencer"])]
        return self.start(*args, name="node", port=port).wait_healthy()

    def host_args(self, role: str, name: str, port: int, *extra: str) -> list[str]:
        return [
            role,
            "--data-dir",
            str(self.root / name),
            "--port",
            str(port),
            "--node",
            self.node_url,
            "--key",
            str(self.keys[f"{name}-operator"]),
            "--sim-root",
            str(self.sim_root),
            *extra,
        ]

    def start_host(self, role: str, name: str, *extra: str, port: int | None = None) -> UmbraProcess:
        port = port or free_port()
        return self.start(*self.host_args(role, name, port, *extra), name=name, port=port)

    def client(self) -> NodeClient:
        return NodeClient(self.node_url)

    def state(self, module: str, item: str, key: bytes | None = None) -> Any:
        params = {"key": codec.to_hex(key)} if key is not None else None
        reply = httpx.get(f"{self.node_url}/state/{module}/{item}", params=params, timeout=10)
        return reply.json().get("value") if reply.status_code == 200 else None


def info(proc: UmbraProcess) -> dict[str, Any]:
    assert proc.url is not None
    result: dict[str, Any] = httpx.get(f"{proc.url}/info", timeout=5).json()
    return result


def keyed(proc: UmbraProcess, epoch: int = 0) -> bool:
    if not proc.alive():
        raise AssertionError(f"{proc.argv[1]} exited:\n{proc.log_tail()}")
    with contextlib.suppress(httpx.HTTPError, ValueError):
        doc = info(proc)
        return doc["status"] == "active" and epoch in doc["epochs_held"]
    return False


def wait_keyed(*procs: UmbraProcess, epoch: int = 0, timeout: float = 90) -> None:
    wait_until(
        lambda: all(keyed(p, epoch) for p in procs), timeout, f"workers holding epoch {epoch}", interval=0.2
    )


def write_network(
    root: Path,
    *,
    operators: tuple[str, ...],
    extra_measurements: tuple[str, ...] = (),
    ttl_ms: int | None = None,
) -> Net:
    """Dev-style genesis: sim root, a policy allowing this code tree, one gatekeeper operator."""
    root.mkdir(parents=True, exist_ok=True)
    names = (*DEV_ACCOUNTS, "sequencer", "gatekeeper-operator", *(f"{o}-operator" for o in operators))
    keys = {name: crypto.SigningKey.generate() for name in names}
    paths = {name: root / "keys" / f"{name}.key" for name in names}
    for name, key in keys.items():
        crypto.save_signing_key(paths[name], key)
    authority = SimAuthority.create(now=datetime.now(UTC))
    sim_root = root / "keys" / "sim-root.pem"
    authority.save(sim_root)
    # Measured afresh (not the per-process cache): the workers measure the code as it is now.
    measurement = code_tree_measurement(Path(umbra.__file__).parent)
    genesis = dev_genesis(
        {n: keys[n] for n in DEV_ACCOUNTS},
        keys["sequencer"],
        chain_id="umbra-worker-test",
        sim_root_pem=authority.cert_pem,
        gatekeeper_operators=(keys["gatekeeper-operator"].public_key,),
        operators=tuple(keys[f"{o}-operator"].public_key for o in operators),
        measurement=measurement,
    )
    if ttl_ms is not None:
        genesis.modules["registry"]["attestation_ttl_ms"] = ttl_ms
    if extra_measurements:
        registry = genesis.modules["registry"]
        registry["policy"]["measurements"]["sim"] = sorted([measurement.hex(), *extra_measurements])
    genesis_path = root / "genesis.cbor"
    genesis_path.write_bytes(genesis.encode())
    return Net(root, paths, sim_root, genesis_path)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Any]:
    """A factory: `network(operators=(...))` writes the files and starts the node."""
    nets: list[Net] = []

    def make(
        *,
        operators: tuple[str, ...] = ("w0", "w1", "w2"),
        extra_measurements: tuple[str, ...] = (),
        ttl_ms: int | None = None,
    ) -> Net:
        net = write_network(
            tmp_path / f"net{len(nets)}",
            operators=operators,
            extra_measurements=extra_measurements,
            ttl_ms=ttl_ms,
        )
        nets.append(net)
        net.start_node()
        return net

    try:
        yield make
    finally:
        for net in nets:
            for proc in reversed(net.procs):
                proc.stop()


def run_json(*args: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    import subprocess

    from tests.node.conftest import child_env

    done = subprocess.run(
        [UMBRA, *args, "--json"], capture_output=True, text=True, timeout=timeout, env=child_env()
    )
    lines = [line for line in done.stdout.splitlines() if line.strip().startswith("{")]
    assert lines, f"no JSON on stdout: {done.stdout!r} {done.stderr[-2000:]!r}"
    return done.returncode, json.loads(lines[-1])


# ---- `umbra dev` as a whole -----------------------------------------------------------------------
def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError, ValueError):  # a zombie is dead for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


class Dev:
    def __init__(self, data_dir: Path, port: int, workers: int, extra: tuple[str, ...] = ()) -> None:
        self.dir, self.port, self.workers, self.extra = data_dir, port, workers, extra
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Dev:
        argv = [
            UMBRA,
            "dev",
            "--data-dir",
            str(self.dir),
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            *self.extra,
        ]
        # The child holds its own copy of the log's descriptor: ours closes with the block.
        with open(self.dir.parent / f"dev-{self.dir.name}.log", "ab") as log:
            self.popen = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=child_env()
            )
        return self

    def ready(self, timeout: float) -> dict[str, Any]:
        path = self.dir / "dev.json"
        wait_until(lambda: path.exists() or not self._running(), timeout, "dev.json")
        assert self._running(), (self.dir.parent / f"dev-{self.dir.name}.log").read_text()[-3000:]
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc

    def _running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill_all(self) -> None:
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=20)

    def terminate(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)


@pytest.fixture
def dev(tmp_path: Path) -> Any:
    started: list[Dev] = []

    def make(
        workers: int = 3, data_dir: Path | None = None, port: int | None = None, extra: tuple[str, ...] = ()
    ) -> Dev:
        item = Dev(data_dir or tmp_path / "dev", port or free_port(), workers, extra).start()
        started.append(item)
        return item

    yield make
    for item in started:
        if item.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(item.popen.pid, signal.SIGKILL)
            item.popen.wait(timeout=20)
