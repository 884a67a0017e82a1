"""Fixtures for the explorer's browser tests: a live `umbra dev`, a network with workers, and
Debian's chromium driven by Playwright (never a downloaded browser).

Worker views need registered workers. They run against every network that has them: always a
second live node, `umbra node` with a genesis that accepts simulated TEE evidence, whose
gatekeeper and workers `harness.SimNet` plays on chain (deterministic, and it knows every
ciphertext it posted); and `umbra dev --workers 2` itself whenever its dev.json lists workers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.explorer.harness import COUNTER, UMBRA, HttpChain, Proc, SimNet, child_env, wait_for
from umbra import codec, crypto

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "explorer"
CHROMIUM = os.environ.get("UMBRA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class DevNet:
    """A live `umbra dev` network, as dev.json describes it."""

    url: str
    doc: dict[str, Any]
    data_dir: Path

    def key(self, name: str) -> crypto.SigningKey:
        return crypto.load_signing_key(self.doc["keys"][name])


@dataclass
class WorkerNet:
    """A live network with registered workers: `umbra dev`'s own, or the sim network."""

    mode: str  # "dev" (umbra dev's workers) or "sim" (harness.SimNet on `umbra node`)
    url: str
    workers: list[str]
    gatekeepers: list[str]
    run_job: Callable[[], str]
    sealed: list[bytes] = field(default_factory=list)
    contract: str | None = None


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevNet]:
    data_dir = tmp_path_factory.mktemp("umbra-dev")
    port = free_port()
    proc = Proc(
        [UMBRA, "dev", "--data-dir", str(data_dir), "--port", str(port), "--workers", "2", "--fresh"],
        data_dir.parent / f"{data_dir.name}.log",
    )
    try:
        dev_json = data_dir / "dev.json"
        doc = wait_for(
            lambda: json.loads(dev_json.read_text()) if dev_json.exists() else None, 180, "dev.json", proc
        )
        url = doc["nodes"][0]["url"]
        wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 30, "the dev node", proc)
        yield DevNet(url, doc, data_dir)
    finally:
        proc.stop()


def _dev_workers(dev: DevNet) -> WorkerNet:
    """`umbra dev`'s own workers. Jobs go through the CLI, as a user runs them; the contract is
    deployed on first use (deploying runs its init job on the workers)."""
    alice = dev.doc["keys"]["alice"]
    source = dev.data_dir / "counter.py"
    source.write_bytes(COUNTER)

    def umbra(*args: str) -> dict[str, Any]:
        out = subprocess.run(
            [UMBRA, *args, "--json", "--key", alice, "--node", dev.url],
            capture_output=True,
            text=True,
            timeout=150,
            env=child_env(),
            check=False,
        )
        assert out.returncode == 0, f"umbra {' '.join(args)}: {out.stdout}{out.stderr}"
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    net = WorkerNet(
        mode="dev",
        url=dev.url,
        workers=[w["id"] for w in dev.doc["workers"]],
        gatekeepers=[g["id"] for g in dev.doc.get("gatekeepers", [])],
        run_job=lambda: "",
    )

    def run_job() -> str:
        if net.contract is None:
            net.contract = str(umbra("deploy", str(source))["contract_id"])
        return str(umbra("call", net.contract, "add", "--args", '{"by": 1}')["job_id"])

    net.run_job = run_job
    return net


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerNet]:
    """A live `umbra node` whose gatekeeper and workers the harness plays (always available)."""
    root = tmp_path_factory.mktemp("sim-node")
    net = SimNet.create(block_ms=50, idle_ms=500)
    genesis, sequencer, _ = net.write(root)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc(
        [UMBRA, "node", "--data-dir", str(root / "node"), "--port", str(port), "--genesis", str(genesis),
         "--sequencer-key", str(sequencer)],
        root / "node.log",
    )  # fmt: skip
    io = HttpChain(url)
    try:
        wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 60, "the sim node", proc)
        net.setup(io)
        net.run_job(io)
        yield WorkerNet(
            mode="sim",
            url=url,
            workers=[codec.to_hex(w.public_key) for w in net.workers],
            gatekeepers=[codec.to_hex(net.gatekeeper.public_key)],
            run_job=lambda: codec.to_hex(net.run_job(io)),
            sealed=net.sealed,
            contract=codec.to_hex(net.contract or b""),
        )
    finally:
        io.close()
        proc.stop()


@pytest.fixture(scope="session")
def worker_nets(dev: DevNet, sim: WorkerNet) -> list[WorkerNet]:
    """Every live network with workers: the sim network, and `umbra dev`'s once it has workers."""
    return [sim, _dev_workers(dev)] if dev.doc.get("workers") else [sim]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        found = shutil.which("chromium")
        assert found, "chromium is missing: `make test` installs it (apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


class UI:
    """One browser page that records every console error and uncaught exception."""

    def __init__(self, browser: Any, artifacts: Path) -> None:
        self.context = browser.new_context(viewport={"width": 1440, "height": 1000})
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.artifacts = artifacts
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console.error: {message.text} ({message.location})")

    def open(self, url: str) -> Any:
        reply = self.page.goto(url, wait_until="load")
        assert reply is not None and reply.ok, f"{url}: {reply.status if reply else 'no response'}"
        self.page.wait_for_selector("body[data-ready='1']")
        return reply

    def shot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        self.page.evaluate("window.scrollTo(0, 0)")  # else the sticky header lands mid-capture
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_clean(self) -> None:
        assert not self.errors, "browser console errors:\n" + "\n".join(self.errors)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def ui(browser: Any, artifacts: Path) -> Iterator[UI]:
    page = UI(browser, artifacts)
    try:
        yield page
        page.assert_clean()
    finally:
        page.close()
