"""A live `umbra dev --workers 3` for example privacy tests, and the scan that proves a marker
planted in private inputs never reached anything public or persisted outside the enclaves.

    with dev_network(tmp) as net:               # its own process group, killed at the end
        net.run_example("game", marker)         # examples/game/run.py; asserts that it passes
        assert net.public_leaks(marker) == []   # blocks, receipts, events, raw txs
        net.stop()
        assert net.file_leaks(marker) == []     # chain data (SQLite), worker state, all logs

Leaks are searched as raw bytes (UTF-8) and as hex (how the API and logs print bytes) in every
file under the data dir (the node's SQLite database and its WAL, worker and gatekeeper state,
DIR/logs/*), in `umbra dev`'s own log, and in every block the node serves: headers, receipts,
events (`GET /blocks/N`) and the raw txs (`GET /sync/blocks`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.node.conftest import UMBRA, child_env, free_port

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 240.0
EXAMPLE_TIMEOUT = 300.0


def new_marker(name: str) -> str:
    return f"privacy-marker-{name}-{os.urandom(8).hex()}"


@dataclass
class DevNetwork:
    root: Path
    data_dir: Path
    log: Path
    url: str
    doc: dict[str, Any]
    popen: subprocess.Popen[bytes]

    def run_example(self, name: str, marker: str) -> str:
        """Run examples/<name>/run.py as the conformance check does; returns its output."""
        env = {
            **child_env(),
            "UMBRA_NODE": self.url,
            "UMBRA_DEV_JSON": str(self.data_dir / "dev.json"),
            "UMBRA_KEY": self.doc["keys"]["alice"],
            "UMBRA_EXAMPLE_MARKER": marker,
        }
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(REPO / "examples" / name / "run.py")],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT,
        )
        output = done.stdout + done.stderr
        print(f"examples/{name}/run.py: {time.monotonic() - started:.1f} s\n{output}")
        assert done.returncode == 0 and "all checks pass" in done.stdout, output[-5000:]
        return output

    def public_texts(self) -> Iterator[tuple[str, str]]:
        """(where, text) of everything the node serves about its blocks."""
        with httpx.Client(base_url=self.url, timeout=30) as http:
            head = int(http.get("/status").json()["height"])
            for height in range(head + 1):
                yield f"GET /blocks/{height}", http.get(f"/blocks/{height}").text
            for start in range(0, head + 1, 100):
                reply = http.get("/sync/blocks", params={"from": start, "limit": 100})
                yield f"GET /sync/blocks?from={start}", reply.text

    def files(self) -> list[Path]:
        found = [p for p in self.data_dir.rglob("*") if p.is_file()]
        return [*found, self.log]

    def public_leaks(self, marker: str) -> list[str]:
        """Where the node's API shows the marker, raw or hex-encoded (needs the network up)."""
        needles = (marker, marker.encode().hex())
        return [where for where, text in self.public_texts() if any(n in text for n in needles)]

    def file_leaks(self, marker: str) -> list[str]:
        """Which files hold the marker, raw or hex-encoded (best after `stop`, logs flushed)."""
        needles = (marker.encode(), marker.encode().hex().encode())
        return [str(p) for p in self.files() if any(n in p.read_bytes() for n in needles)]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # whatever is left in the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)


@contextlib.contextmanager
def dev_network(root: Path) -> Iterator[DevNetwork]:
    """`umbra dev --workers 3` on a free port, in its own process group; stopped whatever happens."""
    data_dir, log = root / "net", root / "dev.log"
    port = free_port()
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            [UMBRA, "dev", "--data-dir", str(data_dir), "--port", str(port), "--workers", "3"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=child_env(),
        )
    net = DevNetwork(root, data_dir, log, f"http://127.0.0.1:{port}", {}, popen)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not (data_dir / "dev.json").exists():
            if popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"umbra dev did not come up:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        net.doc = json.loads((data_dir / "dev.json").read_text())
        yield net
    finally:
        net.stop()
