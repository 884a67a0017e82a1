"""Crash test: a node under load takes `kill -9` and restarts. Nothing acknowledged is lost, and
height and state root continue from where they were."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.node.conftest import (
    HTTP,
    ChainFiles,
    SpawnNode,
    UmbraProcess,
    free_port,
    post_tx,
    run_cli,
    sequencer_args,
    signed_transfer,
    wait_until,
    write_chain_files,
)
from umbra import codec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SENDERS = tuple(f"sender{i}" for i in range(4))
AMOUNT = 3


@dataclass
class Acknowledged:
    tx_hash: str
    block: int
    sender: str
    raw: bytes


@dataclass
class Load:
    """Threads that send transfers and wait for inclusion until the node stops answering."""

    url: str
    files: ChainFiles
    receivers: dict[str, bytes]
    acknowledged: list[Acknowledged] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def run_sender(self, name: str) -> None:
        pk = self.files.keys[name].public_key
        try:
            nonce = int(HTTP.get(f"{self.url}/accounts/{codec.to_hex(pk)}", timeout=10).json()["nonce"])
            while not self.stop.is_set():
                stx = signed_transfer(self.files, name, self.receivers[name], AMOUNT, nonce)
                reply = post_tx(self.url, stx.encode(), wait="true", timeout="10")
                body = reply.json()
                if reply.status_code == 200 and body.get("status") == "included":
                    assert body["ok"] is True, body
                    self.acknowledged.append(Acknowledged(body["tx_hash"], body["block"], name, stx.encode()))
                    nonce += 1
                else:
                    self.errors.append(f"{name}: {reply.status_code} {body}")
                    return
        except httpx.HTTPError:
            return  # the node was killed under us: expected

    def start(self) -> None:
        self.threads = [threading.Thread(target=self.run_sender, args=(n,), daemon=True) for n in SENDERS]
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def header(url: str, height: int) -> dict[str, Any]:
    result: dict[str, Any] = HTTP.get(f"{url}/blocks/{height}", timeout=10).json()
    return result


def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path, spawn: SpawnNode) -> None:
    files = write_chain_files(tmp_path / "files", accounts=("alice", "bob", "charlie", *SENDERS))
    receivers = {name: os.urandom(32) for name in SENDERS}
    data_dir, port = tmp_path / "node", free_port()
    url = f"http://127.0.0.1:{port}"
    all_acknowledged: list[Acknowledged] = []
    observed: dict[int, dict[str, Any]] = {}  # headers seen before each crash

    proc: UmbraProcess = spawn(
        *sequencer_args(files, data_dir, port), port=port, log_name="node-0"
    ).wait_healthy()
    for cycle in range(2):
        load = Load(url, files, receivers)
        load.start()
        started = time.monotonic()
        while len(load.acknowledged) < 40 and time.monotonic() - started < 20:
            status = HTTP.get(f"{url}/status", timeout=10).json()
            observed[status["height"]] = header(url, status["height"])
            time.sleep(0.05)
        assert len(load.acknowledged) >= 40, f"too little load: {load.errors[:3]}"
        proc.kill_group()  # kill -9, no warning, mid-load
        assert not proc.alive()
        load.join()
        assert not load.errors, load.errors[:3]
        all_acknowledged += load.acknowledged

        proc = spawn(
            *sequencer_args(files, data_dir, port), port=port, log_name=f"node-{cycle + 1}"
        ).wait_healthy()

        # Every acknowledged tx is still included, in the block that was reported.
        for ack in all_acknowledged:
            receipt = HTTP.get(f"{url}/tx/{ack.tx_hash}", timeout=10).json()
            assert (receipt["status"], receipt["block"], receipt["ok"]) == ("included", ack.block, True), ack
        # Whole blocks only: each receiver holds exactly what its sender's used nonces paid.
        for name in SENDERS:
            account = HTTP.get(
                f"{url}/accounts/{codec.to_hex(files.keys[name].public_key)}", timeout=10
            ).json()
            received = HTTP.get(f"{url}/accounts/{codec.to_hex(receivers[name])}", timeout=10).json()["free"]
            assert received == AMOUNT * account["nonce"]
            assert account["nonce"] >= sum(1 for a in all_acknowledged if a.sender == name)
        # Height and root continue: nothing seen before the crash was rewritten.
        restart_height = HTTP.get(f"{url}/status", timeout=10).json()["height"]
        assert restart_height >= max(max(observed), max(a.block for a in all_acknowledged))
        for height, seen in observed.items():
            assert header(url, height) == seen, f"block {height} changed across the crash"

        def advanced(since: int = restart_height) -> bool:
            return bool(HTTP.get(f"{url}/status").json()["height"] >= since + 2)

        wait_until(
            advanced,
            15,
            "blocks after restart",
        )

    # The chain links up across both crashes, and replays of acknowledged txs are refused.
    head = HTTP.get(f"{url}/status", timeout=10).json()["height"]
    blocks = [header(url, h) for h in range(head + 1)]
    assert all(blocks[h]["parent"] == blocks[h - 1]["hash"] for h in range(1, head + 1))
    for ack in (all_acknowledged[0], all_acknowledged[-1]):
        assert ack.tx_hash in header(url, ack.block)["txs"]
        replay = post_tx(url, ack.raw)
        assert replay.status_code == 409 and replay.json()["error"]["code"] in ("duplicate", "bad_nonce")
    proc.stop()
    code, report = run_cli("node", "--check", "--data-dir", str(data_dir))
    assert (code, report) == (0, {"ok": True, "problems": []})
