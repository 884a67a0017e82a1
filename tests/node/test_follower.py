"""A follower (`umbra node --follow URL`) re-executes the sequencer's blocks and reaches the same
state root at every height, also across its own `kill -9`."""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.node.conftest import (
    HTTP,
    SpawnNode,
    free_port,
    post_tx,
    run_cli,
    sequencer_args,
    serve_app,
    serve_node,
    signed_transfer,
    wait_until,
    write_chain_files,
)
from umbra import codec
from umbra.chain.types import BLOCK_DOMAIN, Block
from umbra.node.api import create_app
from umbra.node.service import Node, NodeConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SENDERS = ("alice", "bob", "charlie", "dave")


def status(url: str) -> dict[str, Any]:
    result: dict[str, Any] = HTTP.get(f"{url}/status").json()
    return result


def test_a_follower_reaches_the_sequencers_root_at_every_height(tmp_path: Path, spawn: SpawnNode) -> None:
    files = write_chain_files(tmp_path / "files", accounts=SENDERS)
    seq_port, fol_port = free_port(), free_port()
    seq_url, fol_url = f"http://127.0.0.1:{seq_port}", f"http://127.0.0.1:{fol_port}"
    spawn(
        *sequencer_args(files, tmp_path / "sequencer", seq_port), port=seq_port, log_name="sequencer"
    ).wait_healthy()
    receivers = [os.urandom(32) for _ in range(8)]
    nonces = dict.fromkeys(SENDERS, 0)
    stop_load = threading.Event()

    def send_batch(count: int) -> None:
        txs = []
        for i in range(count):
            sender = SENDERS[i % len(SENDERS)]
            stx = signed_transfer(files, sender, receivers[i % len(receivers)], 1 + i % 5, nonces[sender])
            nonces[sender] += 1
            txs.append(codec.to_hex(stx.encode()))
        results = HTTP.post(f"{seq_url}/txs", json={"txs": txs}).json()["results"]
        assert all("tx_hash" in r for r in results), results

    def load() -> None:
        while not stop_load.wait(0.05):
            send_batch(8)

    send_batch(40)  # history the follower must catch up on
    wait_until(lambda: status(seq_url)["mempool"] == 0, 20, "the first batch to be included")
    follower_args = [
        "node",
        "--follow",
        seq_url,
        "--data-dir",
        str(tmp_path / "follower"),
        "--port",
        str(fol_port),
    ]
    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        follower = spawn(*follower_args, port=fol_port, log_name="follower-0").wait_healthy()
        wait_until(lambda: status(fol_url)["height"] >= 5, 20, "the follower to import blocks")
        follower.kill_group()  # kill -9 the follower mid-sync; it resumes from its own store
        spawn(*follower_args, port=fol_port, log_name="follower-1").wait_healthy()
        wait_until(
            lambda: status(fol_url)["height"] >= status(seq_url)["height"] - 1,
            30,
            "the follower to catch up under load",
        )
    finally:
        stop_load.set()
        loader.join(timeout=30)
    wait_until(lambda: status(seq_url)["mempool"] == 0, 20, "the sequencer to include everything")
    target = status(seq_url)["height"]
    wait_until(lambda: status(fol_url)["height"] >= target, 30, f"the follower to reach height {target}")

    follower_status = status(fol_url)
    assert follower_status["role"] == "follower" and follower_status["halted"] is None
    assert follower_status["genesis_hash"] == status(seq_url)["genesis_hash"]
    for height in range(target + 1):
        theirs = HTTP.get(f"{seq_url}/blocks/{height}").json()
        ours = HTTP.get(f"{fol_url}/blocks/{height}").json()
        assert ours["state_root"] == theirs["state_root"], f"state roots differ at height {height}"
        assert ours["hash"] == theirs["hash"] and ours["receipts"] == theirs["receipts"], height
    assert sum(len(HTTP.get(f"{fol_url}/blocks/{h}").json()["txs"]) for h in range(target + 1)) == sum(
        nonces.values()
    )

    # The follower's own state (what it executed) answers like the sequencer's.
    for who in [files.keys[name].public_key for name in SENDERS] + receivers:
        address = codec.to_hex(who)
        assert (
            HTTP.get(f"{fol_url}/accounts/{address}").json()
            == HTTP.get(f"{seq_url}/accounts/{address}").json()
        )

    # A follower takes no txs: they go to the sequencer.
    stx = signed_transfer(files, "alice", receivers[0], 1, nonces["alice"])
    refused = post_tx(fol_url, stx.encode())
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "not_accepting"


def test_the_followers_database_holds_its_own_execution(tmp_path: Path, spawn: SpawnNode) -> None:
    """After following, `umbra node --check` on the follower's store finds the state it computed
    matching the sequencer's state roots (it did not just copy headers)."""
    files = write_chain_files(tmp_path / "files")
    seq_port, fol_port = free_port(), free_port()
    seq_url, fol_url = f"http://127.0.0.1:{seq_port}", f"http://127.0.0.1:{fol_port}"
    spawn(*sequencer_args(files, tmp_path / "sequencer", seq_port), port=seq_port).wait_healthy()
    for nonce in range(10):
        stx = signed_transfer(files, "alice", os.urandom(32), 10, nonce)
        assert post_tx(seq_url, stx.encode()).status_code == 200
    wait_until(lambda: status(seq_url)["mempool"] == 0, 20, "inclusion")
    follower = spawn(
        "node",
        "--follow",
        seq_url,
        "--data-dir",
        str(tmp_path / "follower"),
        "--port",
        str(fol_port),
        port=fol_port,
    )
    follower.wait_healthy()
    target = status(seq_url)["height"]
    wait_until(lambda: status(fol_url)["height"] >= target, 30, "the follower to catch up")
    follower.stop()
    code, report = run_cli("node", "--check", "--data-dir", str(tmp_path / "follower"))
    assert (code, report) == (0, {"ok": True, "problems": []})


def test_a_follower_halts_on_a_forged_block_instead_of_importing_it(tmp_path: Path) -> None:
    """A proxy in front of the sequencer re-signs block 2 with a wrong state root (it has the key:
    the worst case). The follower re-executes, refuses, halts, and says why."""
    files = write_chain_files(tmp_path / "files")
    with serve_node(files, tmp_path / "sequencer") as sequencer:
        for nonce in range(3):
            stx = signed_transfer(files, "alice", os.urandom(32), 5, nonce)
            assert post_tx(sequencer.url, stx.encode(), wait="true", timeout="10").status_code == 200
        wait_until(lambda: status(sequencer.url)["height"] >= 3, 10, "three blocks")

        def honest_block(height: int) -> Block:
            item = HTTP.get(f"{sequencer.url}/sync/blocks", params={"from": height, "limit": 1}).json()[
                "blocks"
            ][0]
            return Block.decode(codec.from_hex(item["block"]))

        def forged_sync(request: Request) -> JSONResponse:
            body = HTTP.get(f"{sequencer.url}/sync/blocks", params=dict(request.query_params)).json()
            for item in body["blocks"]:
                if item["height"] == 2:
                    block = Block.decode(codec.from_hex(item["block"]))
                    forged = replace(block.header, state_root=codec.sha256(b"forged"))
                    signature = files.sequencer.sign(BLOCK_DOMAIN, forged.to_cbor())
                    item["block"] = codec.to_hex(Block(forged, signature, block.txs).encode())
            return JSONResponse(body)

        with serve_app(Starlette(routes=[Route("/sync/blocks", forged_sync)])) as proxy_url:
            follower = Node(NodeConfig(data_dir=tmp_path / "follower", follow_url=proxy_url), files.genesis)
            try:
                follower.start()
                wait_until(lambda: follower.halted is not None, 20, "the follower to halt")
                assert follower.halted is not None and "state_root" in follower.halted
                assert follower.store.head() == honest_block(1).header  # block 1 imported, block 2 refused
                with serve_app(create_app(follower)) as follower_url:
                    health = HTTP.get(f"{follower_url}/health")
                    assert health.status_code == 503 and health.json()["error"]["code"] == "halted"
                    refused = HTTP.post(f"{follower_url}/tx", json={"tx": "0x00"})
                    assert refused.json()["error"]["code"] == "not_accepting"
            finally:
                follower.stop()
                follower.store.close()
