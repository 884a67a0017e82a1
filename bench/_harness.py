"""Shared pieces of the benchmark suite: metric records, processes, percentiles."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from umbra import crypto
from umbra.chain.types import GenesisConfig
from umbra.node.dev import _die_with_parent, free_port


@dataclass
class Metric:
    name: str
    value: float
    unit: str
    target: float
    better: Literal["higher", "lower"]
    date: str = ""
    bound_by: str | None = None  # the `limits` entry this metric is compared with
    note: str | None = None  # why a target is not met (the README names the gap with it)

    def __post_init__(self) -> None:
        self.date = self.date or datetime.now(UTC).strftime("%Y-%m-%d")
        self.value = round(float(self.value), 3)

    @property
    def met(self) -> bool:
        return self.value >= self.target if self.better == "higher" else self.value <= self.target

    def to_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in asdict(self).items() if v is not None and k != "note"}
        if math.isnan(self.value):
            doc["value"] = None  # not measured: an outside check must not read it as met
        return doc


@dataclass
class Limit:
    name: str
    value: float
    unit: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": round(self.value, 3), "unit": self.unit}


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@contextlib.contextmanager
def node_process(data_dir: Path, genesis: GenesisConfig, sequencer: crypto.SigningKey) -> Iterator[str]:
    """A real `umbra node` subprocess in its own process group; killed with its group on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    genesis_path = data_dir / "genesis.cbor"
    genesis_path.write_bytes(genesis.encode())
    key_path = data_dir / "sequencer.key"
    crypto.save_signing_key(key_path, sequencer)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "umbra.client.cli",
        "node",
        "--data-dir",
        str(data_dir / "node"),
        "--port",
        str(port),
        "--genesis",
        str(genesis_path),
        "--sequencer-key",
        str(key_path),
    ]
    log = open(data_dir / "node.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return time.monotonic() - start
        time.sleep(0.02)
    raise RuntimeError(f"{url} not healthy after {timeout} s")
