"""`umbra dev` with TEE workers: ready (registered, attested, keyed) fast, restarts dead workers
with the same identity, resumes after kill -9 of everything, and stops everything on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import httpx
import pytest

from tests.node.conftest import wait_until
from tests.worker.conftest import alive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


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
        assert info["tee"] == worker["tee"] and alive(worker["pid"])
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
        wait_until(lambda w=worker: not alive(w["pid"]), 10, "the workers to die with the group")
    resumed = dev(workers=3, data_dir=net.dir, port=net.port)
    again = resumed.ready(120)
    assert [w["id"] for w in again["workers"]] == [w["id"] for w in doc["workers"]]
    assert again["gatekeepers"][0]["id"] == doc["gatekeepers"][0]["id"]

    # SIGTERM stops every process it started.
    pids = [w["pid"] for w in again["workers"]] + [g["pid"] for g in again["gatekeepers"]]
    pids += [n["pid"] for n in again["nodes"]]
    resumed.terminate()
    for pid in pids:
        wait_until(lambda p=pid: not alive(p), 15, f"process {pid} to stop")


def test_dev_network_without_workers(dev: Any) -> None:
    doc = dev(workers=0).ready(90)
    assert doc["workers"] == [] and len(doc["gatekeepers"]) == 1
