"""Limits, each refusal typed: per-account and whole-mempool bounds on the node (429 with
Retry-After), the worker API's body-size and per-IP limits, and the per-contract quotas (state,
secrets, blobs) on a running network.

The node's own per-IP rate limit and 2 MiB body limit are tested in tests/node/test_api.py
(`test_rate_limits_answer_429_with_retry_after_but_never_limit_health`, `..._413_...`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.adversarial.conftest import (
    HTTP,
    Shared,
    chain_events,
    height,
    nonce_of,
    record,
    signed,
    submit,
    tx_receipt,
)
from tests.node.conftest import serve_app, wait_until, write_chain_files
from umbra import codec
from umbra.chain.modules.contracts import MAX_BLOBS, MAX_SECRETS, MAX_STATE_BYTES
from umbra.chain.types import Call, Tx
from umbra.client import Client, UmbraError
from umbra.enclave.transport import CoreError
from umbra.node.api import create_app as node_app
from umbra.node.service import Node, NodeConfig
from umbra.worker.api import MAX_BODY
from umbra.worker.api import create_app as worker_app

pytestmark = [pytest.mark.timeout(240)]

FIGURES: dict[str, Any] = {}


def _typed(reply: httpx.Response, status: int, code: str, label: str | None = None) -> dict[str, Any]:
    assert reply.status_code == status, (reply.status_code, reply.text[:300])
    error: dict[str, Any] = reply.json()["error"]
    assert error["code"] == code and error["message"], error
    if status == 429:
        assert int(reply.headers["retry-after"]) >= 1
    if label is not None:
        FIGURES[label] = f"{status} {code}: {error['message']}"
    return error


def test_the_node_bounds_each_account_and_the_whole_mempool(tmp_path: Path) -> None:
    files = write_chain_files(tmp_path / "files", accounts=("alice", "bob", *(f"a{i}" for i in range(4))))
    config = NodeConfig(
        data_dir=tmp_path / "node",
        sequencer_key=files.sequencer,
        max_pending_per_sender=4,
        mempool_capacity=10,
    )
    node = Node(config, files.genesis)  # not started: nothing leaves the mempool

    def raw(sender: str, nonce: int) -> str:
        key = files.keys[sender]
        call = Call("balances", "transfer", {"to": os.urandom(32), "amount": 1})
        return codec.to_hex(Tx(files.genesis.chain_id, key.public_key, nonce, call, 1).sign(key).encode())

    try:
        with serve_app(node_app(node)) as url:
            for nonce in range(4):
                assert HTTP.post(f"{url}/tx", json={"tx": raw("alice", nonce)}).status_code == 200
            error = _typed(
                HTTP.post(f"{url}/tx", json={"tx": raw("alice", 4)}),
                429,
                "rate_limited",
                "node: pending txs per account",
            )
            assert "per account" in error["message"]
            # The limit is per account: another sender is still admitted, up to the pool's size.
            admitted = 4
            for sender in ("bob", "a0", "a1"):
                for nonce in range(2):
                    reply = HTTP.post(f"{url}/tx", json={"tx": raw(sender, nonce)})
                    if admitted < 10:
                        assert reply.status_code == 200, reply.text
                        admitted += 1
                    else:
                        _typed(reply, 429, "mempool_full", "node: mempool size")
            assert len(node.mempool) == 10
            # A batch reports the same typed refusals entry by entry.
            batch = HTTP.post(f"{url}/txs", json={"txs": [raw("a2", 0), raw("alice", 4)]}).json()["results"]
            assert [r["error"]["code"] for r in batch] == ["mempool_full", "mempool_full"]
            # Once a block takes them, the same txs are admitted.
            node.produce_block(files.sequencer)
            assert HTTP.post(f"{url}/tx", json={"tx": raw("alice", 4)}).status_code == 200
    finally:
        node.stop()
        node.store.close()


class _StubHost:
    """What the worker API reads from its host; answers instantly."""

    fatal = None
    height = 7

    def info(self) -> dict[str, Any]:
        return {"id": "0x" + "00" * 32, "height": self.height}

    def contract_public(self, contract: bytes, epoch: int | None = None) -> dict[str, Any]:
        return {"contract": contract, "epoch": 0}

    def query(self, contract: bytes, sealed: bytes, min_height: int | None) -> dict[str, Any]:
        raise CoreError("cannot_open", "the query does not open with this contract's key")


def test_the_worker_api_limits_body_size_and_each_ip() -> None:
    app = worker_app(_StubHost(), rate=1.0, burst=5.0)  # type: ignore[arg-type]
    with serve_app(app) as url, httpx.Client(timeout=30) as client:
        body = {"contract": "0x" + "11" * 32, "query": "0x" + "00" * 16}
        _typed(client.post(f"{url}/query", json=body), 400, "cannot_open")  # the stub core's refusal
        too_big = b'{"query": "' + b"a" * (MAX_BODY + 1024) + b'"}'
        _typed(client.post(f"{url}/query", content=too_big), 413, "too_large", "worker: body size")
        codes = [client.get(f"{url}/info").status_code for _ in range(6)]
        assert codes.count(429) >= 1, codes
        _typed(client.get(f"{url}/info"), 429, "rate_limited", "worker: requests per IP")
        assert client.get(f"{url}/health").status_code == 200  # never rate limited


@pytest.mark.slow
def test_a_real_worker_refuses_an_oversized_body(shared: Shared) -> None:
    url = shared.worker_urls()[0]
    too_big = b'{"contract": "0x00", "query": "' + b"ab" * (MAX_BODY // 2 + 1024) + b'"}'
    _typed(HTTP.post(f"{url}/query", content=too_big, timeout=30), 413, "too_large")
    assert HTTP.get(f"{url}/health", timeout=5).status_code == 200


GROWER = """
from umbra.contract import Contract, command, query


class Grower(Contract):
    def init(self, ctx):
        self.state["pad"] = ""

    @command
    def grow(self, ctx, size):
        self.state["pad"] = "x" * size
        return len(self.state["pad"])

    @query
    def size(self, ctx):
        return len(self.state["pad"])
"""


@pytest.mark.slow
def test_a_contracts_state_quota_fails_the_job_cleanly(shared: Shared) -> None:
    """A state larger than the quota fails the job with a clear message on every honest replica
    (nobody is slashed, nothing changes); before the quota, such a result could never settle and
    every worker assigned to it was slashed in turn for a missed deadline."""
    since = height(shared.url)
    with Client(shared.url, shared.net.key("owner")) as client:
        grower = client.deploy(GROWER).contract_id
        assert client.call(grower, "grow", {"size": 1000}).output == 1000
        with pytest.raises(UmbraError) as refused:
            client.call(grower, "grow", {"size": MAX_STATE_BYTES + 10_000}, replicas=2)
        assert "quota" in refused.value.message and str(MAX_STATE_BYTES) in refused.value.message
        assert client.query(grower, "size", min_height=height(shared.url)).output == 1000  # unchanged
        assert client.call(grower, "grow", {"size": 2000}).output == 2000  # the contract goes on
    assert not chain_events(shared.url, "Slashed", "JobReassigned", "Dispute", start=since)
    FIGURES["contract: state quota"] = f"job fails: {refused.value.message}"


def _post_batch(shared: Shared, txs: list[str]) -> None:
    """Post a batch of txs and wait until every one is included and succeeded."""
    results = HTTP.post(f"{shared.url}/txs", json={"txs": txs}, timeout=60).json()["results"]
    assert all("tx_hash" in r for r in results), results[:3]
    for result in results:
        wait_until(
            lambda r=result: tx_receipt(shared.url, r["tx_hash"])["status"] == "included", 30, "the batch"
        )
        assert tx_receipt(shared.url, result["tx_hash"])["ok"] is True


@pytest.mark.slow
def test_secret_and_blob_quotas_are_typed_refusals(shared: Shared) -> None:
    with Client(shared.url, shared.net.key("owner")) as client:
        contract = client.deploy(GROWER).contract_id
    contract_id = codec.from_hex(contract)
    owner = shared.net.key("owner").public_key
    # Secrets: MAX_SECRETS distinct names fit; one more is refused (sizes are checked too).
    nonce = nonce_of(shared.url, owner)
    txs = [
        codec.to_hex(
            signed(
                shared.net,
                "owner",
                "contracts",
                "upload_secret",
                nonce + i,
                contract=contract_id,
                name=f"s{i}",
                sealed=b"\x01" * 48,
            ).encode()
        )
        for i in range(MAX_SECRETS)
    ]
    _post_batch(shared, txs)
    over = submit(
        shared.net, "owner", "contracts", "upload_secret", contract=contract_id, name="extra", sealed=b"\x01"
    )
    assert (over["ok"], over["error"]) == (False, "contracts.quota"), over
    FIGURES["contract: secrets quota"] = f"{over['error']}: {over['message']}"
    big = submit(
        shared.net,
        "owner",
        "contracts",
        "upload_secret",
        contract=contract_id,
        name="s0",
        sealed=b"\x01" * (65 * 1024),
    )
    assert (big["ok"], big["error"]) == (False, "contracts.bad_secret"), big
    # Blobs: MAX_BLOBS registrations fit; one more is refused.
    nonce = nonce_of(shared.url, owner)
    txs = [
        codec.to_hex(
            signed(
                shared.net,
                "owner",
                "contracts",
                "register_blob",
                nonce + i,
                contract=contract_id,
                blob_hash=codec.sha256(i.to_bytes(4, "big")),
                size=10,
            ).encode()
        )
        for i in range(MAX_BLOBS)
    ]
    _post_batch(shared, txs)
    over = submit(
        shared.net, "owner", "contracts", "register_blob", contract=contract_id, blob_hash=bytes(32), size=1
    )
    assert (over["ok"], over["error"]) == (False, "contracts.quota"), over
    FIGURES["contract: blobs quota"] = f"{over['error']}: {over['message']}"
    # Someone else than the owner cannot use the contract's quota at all.
    stranger = submit(
        shared.net, "other", "contracts", "upload_secret", contract=contract_id, name="x", sealed=b"\x01"
    )
    assert (stranger["ok"], stranger["error"]) == (False, "contracts.not_owner")
    record("limits", {"refusals": dict(sorted(FIGURES.items()))})
