"""A dev network the benchmarks grow: the processes of `umbra dev`, started one by one.

`umbra dev --workers N` starts everything at once and reports only when all of it is ready. The
benchmarks need more control: when each worker process started and when it was attested and keyed,
and workers added to a running network (which grows the scheduler's choice 1 -> 2 -> 4 -> 8).
So this uses `umbra.node.dev.DevNetwork` for what `umbra dev` prepares (keys, the sim dev root, a
genesis that funds every operator, the exact command lines) and starts the processes itself, each in
its own process group (the worker host, its enclave core and the core's sandboxes share it), all
killed on exit, also on error.

    with BenchNetwork(work / "net", max_workers=20) as net:
        net.start_node()
        new = net.start_workers(3)              # gatekeeper + 3 workers, until attested and keyed
        print(max(t.ready_s for t in new))     # seconds from process start
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._harness import wait_healthy
from umbra import codec, crypto
from umbra.node.dev import GATEKEEPER, DevNetwork, _die_with_parent, free_port
from umbra.tee._sim import code_tree_measurement

__all__ = ["BenchNetwork", "Tee"]

DEV_TEE_TYPES = ("sgx", "tdx", "sev-snp")


@dataclass
class Tee:
    """A worker or gatekeeper process: its name, endpoint, operator key and, once keyed, its id."""

    name: str
    role: str
    url: str
    operator: crypto.SigningKey
    popen: subprocess.Popen[bytes]
    started: float
    log: Path
    id: bytes = b""
    ready_at: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ready_s(self) -> float:
        assert self.ready_at is not None
        return self.ready_at - self.started


class BenchNetwork:
    def __init__(self, data_dir: Path, *, max_workers: int) -> None:
        self.dir = data_dir
        self.dev = DevNetwork(
            data_dir, port=free_port(), workers=max_workers, fresh=True, ordering="local", nodes=1
        )
        self.genesis_path = self.dev.prepare()
        # The sim measurement is a hash of the code tree, taken now for the genesis allowlist. Workers
        # present exactly it, so an edit to the tree while the suite runs cannot lock them out.
        self.measurement = code_tree_measurement().hex()
        self.url = f"http://127.0.0.1:{self.dev.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.gatekeeper: Tee | None = None
        self.workers: list[Tee] = []

    def __enter__(self) -> BenchNetwork:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- processes -------------------------------------------------------------------------------
    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # also when the suite itself is killed
            )
        self.procs.append(proc)
        return proc

    def start_node(self) -> float:
        """Start the node; seconds until it answers /health."""
        argv = self.dev._umbra(
            "node",
            "--data-dir",
            str(self.dev.dir / "node0"),
            "--port",
            str(self.dev.port),
            "--genesis",
            str(self.genesis_path),
            "--sequencer-key",
            str(self.dev.dir / "keys" / "sequencer.key"),
        )
        proc = self._spawn(argv, self.dev.dir / "logs" / "node0.log")
        return wait_healthy(self.url, proc, timeout=90)

    def _start_tee(self, role: str, name: str, tee_type: str) -> Tee:
        spec = self.dev._tee_host(role, name, [self.url], tee_type)
        spec.argv += ["--sim-measurement", self.measurement]
        operator = crypto.load_signing_key(self.dev.dir / "keys" / f"{name}-operator.key")
        started = time.monotonic()
        proc = self._spawn(spec.argv, spec.log)
        return Tee(name, role, spec.info["url"], operator, proc, started, spec.log)

    def start_workers(self, count: int, timeout: float = 180.0) -> list[Tee]:
        """Start `count` more workers at once (and the gatekeeper, the first time); wait until each
        is registered, attested and holds the current key epoch. Returns the new workers."""
        new: list[Tee] = []
        if self.gatekeeper is None:
            self.gatekeeper = self._start_tee("gatekeeper", GATEKEEPER, "sim")
            new.append(self.gatekeeper)
        first = len(self.workers)
        for i in range(first, first + count):
            worker = self._start_tee("worker", f"worker{i}", DEV_TEE_TYPES[i % len(DEV_TEE_TYPES)])
            self.workers.append(worker)
            new.append(worker)
        self._wait_keyed(new, timeout)
        return [t for t in new if t.role == "worker"]

    def _wait_keyed(self, tees: list[Tee], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(tees)
        with httpx.Client(timeout=2) as http:
            while pending:
                for tee in list(pending):
                    if tee.popen.poll() is not None:
                        tail = tee.log.read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"{tee.name} exited during start-up:\n{tail}")
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        info = http.get(f"{tee.url}/info").json()
                        if (
                            info.get("status") == "active"
                            and info.get("epoch", -1) >= 0
                            and info["epoch"] in info.get("epochs_held", [])
                        ):
                            tee.ready_at = time.monotonic()
                            tee.id = codec.from_hex(info["id"], length=32)
                            tee.info = info
                            pending.remove(tee)
                if pending and time.monotonic() > deadline:
                    names = ", ".join(t.name for t in pending)
                    raise RuntimeError(f"not attested and keyed within {timeout:.0f} s: {names}")
                time.sleep(0.05)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time so far by role: node, worker hosts, enclave cores, contract sandboxes (their
        warm hosts and, once reaped, the job children)."""
        import psutil

        out = {"node": 0.0, "worker hosts": 0.0, "enclave cores": 0.0, "contract sandboxes": 0.0}

        def used(proc: psutil.Process, children: bool = False) -> float:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                own: float = t.user + t.system
                return own + ((t.children_user + t.children_system) if children else 0.0)
            return 0.0

        for popen in self.procs:
            if popen.poll() is not None:
                continue
            with contextlib.suppress(psutil.Error):
                top = psutil.Process(popen.pid)
                if self.gatekeeper is None or all(
                    t.popen is not popen for t in [self.gatekeeper, *self.workers]
                ):
                    out["node"] += used(top)
                    continue
                out["worker hosts"] += used(top)
                for child in top.children(recursive=True):
                    cmd = " ".join(child.cmdline())
                    if "umbra.enclave" in cmd:
                        out["enclave cores"] += used(child)
                    elif "umbra.contract._host" in cmd:
                        out["contract sandboxes"] += used(child, children=True)
        return out

    def kill(self, tee: Tee) -> None:
        _kill_group(tee.popen)

    def close(self) -> None:
        for proc in reversed(self.procs):
            _kill_group(proc)
        self.procs.clear()

    def account_keys(self) -> dict[str, crypto.SigningKey]:
        return {
            name: crypto.load_signing_key(self.dev.dir / "keys" / f"{name}.key")
            for name in ("alice", "bob", "charlie")
        }


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
