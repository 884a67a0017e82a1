"""`umbra dev` with TEE workers: ready (registered, attested, keyed) fast, restarts dead workers
with the same identity, resumes after kill -9 of everything, and stops everything on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.node.conftest import UMBRA, child_env, free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError, ValueError):  # a zombie is dead for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


class Dev:
    def __init__(self, data_dir: Path, port: int, workers: int) -> None:
        self.dir, self.port, self.workers = data_dir, port, workers
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Dev:
        log = open(self.dir.parent / f"dev-{self.dir.name}.log", "ab")  # noqa: SIM115 - the child keeps it
        argv = [
            UMBRA,
            "dev",
            "--data-dir",
            str(self.dir),
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        self.popen = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=child_env()
        )
        log.close()
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

    def make(workers: int = 3, data_dir: Path | None = None, port: int | None = None) -> Dev:
        item = Dev(data_dir or tmp_path / "dev", port or free_port(), workers).start()
        started.append(item)
        return item

    yield make
    for item in started:
        if item.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(item.popen.pid, signal.SIGKILL)
            item.popen.wait(timeout=20)


def _info(url: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{url}/info", timeout=5).json()
    return result


def test_dev_network_with_three_workers(dev: Any) -> None:
    started = time.monotonic()
    net = dev(workers=3)
    doc = net.ready(120)
    took = time.monotonic() - started
    assert took < 120, took
    assert len(doc["workers"]) == 3 and len(doc["gatekeepers"]) == 1 and doc["ordering"] == "local"
    for worker in doc["workers"]:
        assert set(worker) >= {"id", "url", "pid", "tee"} and worker["id"].startswith("0x")
        info = _info(worker["url"])
        assert info["id"] == worker["id"] and info["status"] == "active" and 0 in info["epochs_held"]
        assert info["tee"] == worker["tee"] and _alive(worker["pid"])
    assert {w["tee"] for w in doc["workers"]} == {"sgx", "tdx", "sev-snp"}

    # SIGKILL a worker: dev restarts it from its sealed storage, same identity, keyed again.
    victim = doc["workers"][0]
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted() -> bool:
        now = json.loads((net.dir / "dev.json").read_text())["workers"][0]
        if now["pid"] == victim["pid"]:
            return False
        info = _info(now["url"])
        return info["id"] == victim["id"] and info["status"] == "active" and 0 in info["epochs_held"]

    wait_until(restarted, 60, "the worker to come back with its identity", interval=0.3)

    # kill -9 of everything, then resume: same workers, ready again.
    net.kill_all()
    for worker in doc["workers"][1:]:
        wait_until(lambda w=worker: not _alive(w["pid"]), 10, "the workers to die with the group")
    resumed = dev(workers=3, data_dir=net.dir, port=net.port)
    again = resumed.ready(120)
    assert [w["id"] for w in again["workers"]] == [w["id"] for w in doc["workers"]]
    assert again["gatekeepers"][0]["id"] == doc["gatekeepers"][0]["id"]

    # SIGTERM stops every process it started.
    pids = [w["pid"] for w in again["workers"]] + [g["pid"] for g in again["gatekeepers"]]
    pids += [n["pid"] for n in again["nodes"]]
    resumed.terminate()
    for pid in pids:
        wait_until(lambda p=pid: not _alive(p), 15, f"process {pid} to stop")


def test_dev_network_without_workers(dev: Any) -> None:
    doc = dev(workers=0).ready(90)
    assert doc["workers"] == [] and len(doc["gatekeepers"]) == 1
