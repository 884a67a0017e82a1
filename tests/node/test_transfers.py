"""Signed transfers end to end over HTTP, through the CLI and the client API, against a real
`umbra node` process; and every refusal typed, with nothing changed."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest

from tests.node.conftest import (
    HTTP,
    UMBRA,
    ChainFiles,
    UmbraProcess,
    free_port,
    post_tx,
    run_cli,
    sequencer_args,
    serve_node,
    signed_transfer,
    write_chain_files,
)
from umbra import codec
from umbra.chain.types import Call, Tx
from umbra.client._node import NodeClient, UmbraError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@dataclass
class RunningNode:
    proc: UmbraProcess
    files: ChainFiles
    url: str

    def account(self, who: bytes) -> dict[str, Any]:
        result: dict[str, Any] = HTTP.get(f"{self.url}/accounts/{codec.to_hex(who)}", timeout=10).json()
        return result

    def nonce(self, name: str) -> int:
        return int(self.account(self.files.keys[name].public_key)["nonce"])

    def height(self) -> int:
        return int(HTTP.get(f"{self.url}/status", timeout=10).json()["height"])


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    root = tmp_path_factory.mktemp("transfers")
    files = write_chain_files(root / "files", accounts=("alice", "bob", "charlie", "dave", "poor"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = UmbraProcess([UMBRA, *sequencer_args(files, root / "node", port)], root / "node.log", url).start()
    try:
        proc.wait_healthy()
        yield RunningNode(proc, files, url)
    finally:
        proc.stop()


# ---- through the CLI -----------------------------------------------------------------------------


def test_a_transfer_through_the_cli(node: RunningNode, tmp_path: Path) -> None:
    code, made = run_cli("keygen", "--out", str(tmp_path / "new.key"))
    assert code == 0 and set(made) >= {"address"}
    receiver = made["address"]
    code, sent = run_cli(
        "transfer", receiver, "1234", "--key", str(node.files.key_paths["alice"]), "--node", node.url
    )
    assert code == 0, sent
    assert set(sent) == {"tx_hash", "tx", "block"}
    assert isinstance(sent["block"], int) and sent["block"] >= 1
    assert (
        codec.to_hex(codec.sha256(codec.from_hex(sent["tx"]))) == sent["tx_hash"]
    )  # tx is exactly what was posted

    code, balance = run_cli("balance", receiver, "--node", node.url)
    assert (code, balance) == (0, {"address": receiver, "free": 1234, "reserved": 0, "staked": 0})

    code, status = run_cli("status", "--node", node.url)
    assert code == 0 and {"chain_id", "height", "block_hash", "state_root", "workers_attested"} <= set(status)
    assert status["chain_id"] == node.files.genesis.chain_id and status["height"] >= sent["block"]

    code, block = run_cli("block", str(sent["block"]), "--node", node.url)
    assert code == 0 and block["height"] == sent["block"]
    assert {"hash", "parent", "time_ms", "tx_root", "state_root"} <= set(block)
    assert sent["tx_hash"] in block["txs"]

    # Resubmitting the CLI's signed tx is refused and changes nothing.
    replay = post_tx(node.url, codec.from_hex(sent["tx"]))
    assert replay.status_code == 409 and replay.json()["error"]["code"] in ("duplicate", "bad_nonce")
    height = node.height()
    deadline = time.monotonic() + 10
    while node.height() < height + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run_cli("balance", receiver, "--node", node.url)[1]["free"] == 1234


@pytest.mark.parametrize(
    ("args", "exit_code", "error_code"),
    [
        (["transfer", "0x" + "11" * 32, str(10**20), "--key", "{alice}"], 1, "insufficient_funds"),
        (["transfer", "0x" + "11" * 32, "0", "--key", "{alice}"], 1, "bad_amount"),
        (["transfer", "0x1234", "5", "--key", "{alice}"], 1, "bad_address"),
        (["transfer", "0x" + "11" * 32, "5", "--key", "{missing}"], 1, "bad_key"),
        (["transfer", "0x" + "11" * 32, "5"], 1, "no_key"),
        (["balance", "0x" + "11" * 32, "--node", "http://127.0.0.1:9"], 1, "unreachable"),
    ],
)
def test_cli_failures_exit_non_zero_with_a_typed_json_error(
    node: RunningNode, tmp_path: Path, args: list[str], exit_code: int, error_code: str
) -> None:
    filled = [a.format(alice=node.files.key_paths["alice"], missing=tmp_path / "absent.key") for a in args]
    if "--node" not in filled:
        filled += ["--node", node.url]
    code, output = run_cli(*filled)
    assert code == exit_code
    assert output["error"]["code"] == error_code and output["error"]["message"]


def test_cli_usage_errors_exit_2(node: RunningNode) -> None:
    import subprocess

    from tests.node.conftest import child_env

    done = subprocess.run(
        [UMBRA, "transfer", "--json"], capture_output=True, text=True, timeout=30, env=child_env()
    )
    assert done.returncode == 2


def test_keygen_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    assert run_cli("keygen", "--out", str(path))[0] == 0
    first = path.read_text()
    code, output = run_cli("keygen", "--out", str(path))
    assert (code, output["error"]["code"]) == (1, "exists")
    assert path.read_text() == first


# ---- through the client API ----------------------------------------------------------------------


def test_a_transfer_through_the_client_api(node: RunningNode) -> None:
    bob = node.files.keys["bob"]
    to = os.urandom(32)
    with NodeClient(node.url) as client:
        receipt = client.call(bob, "balances", "transfer", to=to, amount=42)
        assert receipt["status"] == "included" and receipt["ok"] is True
        assert client.account(to)["free"] == 42
        assert client.tx(codec.from_hex(receipt["tx_hash"]))["block"] == receipt["block"]
        with pytest.raises(UmbraError) as failed:  # included, failed in dispatch: the SDK raises
            client.call(bob, "balances", "transfer", to=b"\x01" * 5, amount=1)
        assert failed.value.code == "balances.bad_account"


@dataclass
class Refusal:
    name: str
    status: int
    code: str


def test_refusals_are_typed_and_change_nothing(node: RunningNode) -> None:
    files = node.files
    alice, dave = files.keys["alice"].public_key, files.keys["dave"].public_key
    to = os.urandom(32)
    included = signed_transfer(files, "dave", to, 5, node.nonce("dave"))
    assert post_tx(node.url, included.encode(), wait="true", timeout="20").json()["status"] == "included"
    nonce = node.nonce("dave")
    good = signed_transfer(files, "dave", to, 7, nonce)

    forged = Tx(good.tx.chain_id, dave, nonce, good.tx.call, good.tx.fee)
    bad_signature = codec.encode(
        {"tx": forged.to_cbor(), "sig": files.keys["alice"].sign("umbra/tx/v1", forged.to_cbor())}
    )
    privileged = Tx(
        good.tx.chain_id, dave, nonce, Call("balances", "treasury_spend", {"to": dave, "amount": 1}), 1
    )
    cases: list[tuple[Refusal, bytes]] = [
        (Refusal("replay", 409, "duplicate"), included.encode()),
        (
            Refusal("wrong chain", 400, "wrong_chain"),
            signed_transfer(files, "dave", to, 7, nonce, chain_id="umbra-elsewhere").encode(),
        ),
        (Refusal("bad signature", 400, "bad_signature"), bad_signature),
        (Refusal("malformed CBOR", 400, "malformed"), good.encode()[:-3]),
        (Refusal("not CBOR at all", 400, "malformed"), b"\xde\xad\xbe\xef"),
        (
            Refusal("non-canonical CBOR", 400, "malformed"),
            cbor2.dumps({"sig": good.signature, "tx": good.tx.to_cbor()}),
        ),
        (
            Refusal("overdraft", 400, "insufficient_funds"),
            signed_transfer(files, "dave", to, 10**15, nonce).encode(),
        ),
        (
            Refusal("fee too low", 400, "fee_too_low"),
            signed_transfer(files, "dave", to, 7, nonce, fee=0).encode(),
        ),
        (
            Refusal("nonce far ahead", 409, "bad_nonce"),
            signed_transfer(files, "dave", to, 7, nonce + 10_000).encode(),
        ),
        (Refusal("privileged call", 400, "bad_origin"), privileged.sign(files.keys["dave"]).encode()),
    ]

    def snapshot() -> tuple[Any, ...]:
        return (node.account(dave), node.account(alice), node.account(to))

    before = snapshot()
    for refusal, raw in cases:
        reply = post_tx(node.url, raw, wait="true", timeout="2")
        assert (reply.status_code, reply.json()["error"]["code"]) == (refusal.status, refusal.code), (
            refusal.name
        )
        assert reply.json()["error"]["message"], refusal.name
        assert HTTP.get(f"{node.url}/tx/{codec.to_hex(codec.sha256(raw))}").json()["status"] in (
            "unknown",
            "included",
        ), refusal.name

    oversized = HTTP.post(f"{node.url}/tx", json={"tx": "0x" + "ab" * (1024 * 1024 + 1)}, timeout=30)
    assert (oversized.status_code, oversized.json()["error"]["code"]) == (413, "too_large")

    height = node.height()
    deadline = time.monotonic() + 10
    while node.height() < height + 2 and time.monotonic() < deadline:  # let blocks pass
        time.sleep(0.1)
    assert snapshot() == before
    assert HTTP.get(f"{node.url}/status").json()["mempool"] == 0
    # The honest tx with that nonce is still accepted: the refusals did not burn it.
    assert post_tx(node.url, good.encode(), wait="true", timeout="20").json()["ok"] is True


def test_the_client_waits_as_long_as_it_asked_the_node_to(tmp_path: Path) -> None:
    """A waiting submit must not time out on the HTTP read while the node still waits."""
    files = write_chain_files(tmp_path / "files")
    with serve_node(files, tmp_path / "node", produce=False) as live:
        stx = signed_transfer(files, "alice", os.urandom(32), 1, 0)
        timer = threading.Timer(2.0, live.node.produce_block, args=(files.sequencer,))
        timer.start()
        try:
            with NodeClient(live.url, timeout=1.0) as client:
                receipt = client.submit(stx, wait=True, timeout=15)
        finally:
            timer.cancel()
        assert receipt["status"] == "included" and receipt["block"] == 1
