"""End to end against a real `umbra dev --workers 3`: separate node, gatekeeper and worker
processes with sim TEEs, driven through the `umbra` CLI and the SDK as a user would.

The network runs in its own process group and is killed with it at teardown, even on failure.
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
import pytest

from tests.node.conftest import UMBRA, child_env, free_port
from umbra import codec
from umbra.client import Client, UmbraError, dev_keys

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

READY_TIMEOUT = 240.0
MARK = "plaintext-marker-e2e-" + os.urandom(6).hex()
JOBS: list[str] = []  # jobs that carried the marker: their public records are scanned at the end

NOTES = """
import hashlib

from umbra.contract import Contract, command, query


class Notes(Contract):
    def init(self, ctx, limit=3):
        self.state["owner"] = ctx.caller
        self.state["limit"] = limit
        self.state["notes"] = {}

    @command
    def add(self, ctx, text):
        mine = self.state["notes"].setdefault(ctx.caller, [])
        if len(mine) >= self.state["limit"]:
            raise ValueError("note limit reached")
        mine.append(text)
        return len(mine)

    @query
    def mine(self, ctx):
        return self.state["notes"].get(ctx.caller, [])

    @query
    def count(self, ctx):
        if ctx.caller != self.state["owner"]:
            raise PermissionError("owner only")
        return sum(len(v) for v in self.state["notes"].values())

    @query
    def secret_digest(self, ctx, name):
        return hashlib.sha256(ctx.secret(name)).hexdigest()
"""


@dataclass
class DevNet:
    data_dir: Path
    log: Path
    url: str
    doc: dict[str, Any]
    popen: subprocess.Popen[bytes]

    @property
    def keys(self) -> dict[str, str]:
        keys: dict[str, str] = self.doc["keys"]
        return keys

    def umbra(self, *args: str, key: str = "alice", timeout: float = 180) -> tuple[int, dict[str, Any]]:
        done = subprocess.run(
            [UMBRA, *args, "--json", "--node", self.url, "--key", self.keys[key]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
        )
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"want one JSON line: {done.stdout!r} {done.stderr[-2000:]!r}"
        return done.returncode, json.loads(lines[0])

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # whatever is left in the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevNet]:
    root = tmp_path_factory.mktemp("umbra-dev")
    data_dir, log = root / "net", root / "dev.log"
    port = free_port()
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            [UMBRA, "dev", "--data-dir", str(data_dir), "--port", str(port), "--workers", "3"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: killed as one at teardown
            env=child_env(),
        )
    net = DevNet(data_dir, log, f"http://127.0.0.1:{port}", {}, popen)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not (data_dir / "dev.json").exists():
            if popen.poll() is not None:
                pytest.fail(f"umbra dev exited early:\n{log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"umbra dev not ready in {READY_TIMEOUT:.0f} s:\n{log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.5)
        net.doc = json.loads((data_dir / "dev.json").read_text())
        yield net
    finally:
        net.stop()


def test_a_contract_through_the_cli_from_two_accounts(devnet: DevNet, tmp_path: Path) -> None:
    source = tmp_path / "notes.py"
    source.write_text(NOTES)
    code, deployed = devnet.umbra("deploy", str(source), "--init", '{"limit": 2}')
    assert code == 0, deployed
    cid = deployed["contract_id"]

    code, added = devnet.umbra("call", cid, "add", "--args", json.dumps({"text": MARK}), key="bob")
    assert code == 0 and added["output"] == 1 and added["verified"] is True, added
    JOBS.append(added["job_id"])
    code, mine = devnet.umbra("query", cid, "mine", key="bob")
    assert code == 0 and mine["output"] == [MARK] and mine["verified"] is True, mine
    assert devnet.umbra("query", cid, "mine", key="alice")[1]["output"] == []

    code, denied = devnet.umbra("query", cid, "count", key="bob")
    assert code == 1 and "owner only" in denied["error"]["message"], denied

    assert devnet.umbra("call", cid, "add", "--args", '{"text": "two"}', key="bob")[0] == 0
    code, over = devnet.umbra("call", cid, "add", "--args", '{"text": "three"}', key="bob")
    assert code == 1 and "note limit reached" in over["error"]["message"], over
    assert devnet.umbra("query", cid, "count", key="alice")[1]["output"] == 2  # the failure changed nothing

    code, replicated = devnet.umbra("call", cid, "add", "--args", '{"text": "alice"}', "--replicas", "2")
    assert code == 0 and replicated["output"] == 1 and len(set(replicated["workers"])) == 2, replicated
    worker_ids = {w["id"] for w in devnet.doc["workers"]}
    assert set(replicated["workers"]) <= worker_ids


def test_secrets_and_the_sdk(devnet: DevNet) -> None:
    keys = dev_keys(devnet.data_dir / "dev.json")
    with Client(devnet.url, keys["alice"]) as alice, Client(devnet.url, keys["bob"]) as bob:
        cid = alice.deploy(NOTES, init={"limit": 5}).contract_id
        secret = b"api-token-" + MARK.encode()
        alice.upload_secret(cid, "token", secret)
        assert alice.query(cid, "secret_digest", {"name": "token"}).output == codec.sha256(secret).hex()
        with pytest.raises(UmbraError) as not_owner:
            bob.upload_secret(cid, "token", b"x")
        assert not_owner.value.code == "contracts.not_owner"
        result = bob.call(cid, "add", {"text": "via sdk"})
        assert bob.query(cid, "mine", min_height=result.height).output == ["via sdk"]


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    "example",
    [
        "counter",
        "vault",
        "inference",
    ],
)
def test_an_example_passes_its_own_checks(devnet: DevNet, example: str) -> None:
    env = {
        **child_env(),
        "UMBRA_NODE": devnet.url,
        "UMBRA_DEV_JSON": str(devnet.data_dir / "dev.json"),
        "UMBRA_KEY": devnet.keys["alice"],
    }
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / example / "run.py")],
        cwd=EXAMPLES.parent,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_no_plaintext_input_at_rest_or_in_public_replies(devnet: DevNet) -> None:
    """Runs last in this module: it scans the node's public API, then stops the network and scans
    every file under its data dir and every byte it logged."""
    head = httpx.get(f"{devnet.url}/status", timeout=10).json()["height"]
    for height in range(head + 1):
        reply = httpx.get(f"{devnet.url}/blocks/{height}", timeout=10)
        assert MARK not in reply.text, f"block {height} shows the plaintext"
    for job in JOBS:
        for encoding in ("json", "cbor"):
            reply = httpx.get(
                f"{devnet.url}/state/compute/job", params={"key": job, "encoding": encoding}, timeout=10
            )
            assert (
                reply.status_code == 200 and MARK not in reply.text and MARK.encode().hex() not in reply.text
            )
    for worker in devnet.doc["workers"]:
        assert MARK not in httpx.get(f"{worker['url']}/info", timeout=10).text
    devnet.stop()
    hits = [
        path
        for path in [devnet.log, *devnet.data_dir.rglob("*")]
        if path.is_file() and MARK.encode() in path.read_bytes()
    ]
    assert not hits, f"plaintext input found at rest: {hits[:3]}"
