"""The inbox contract: generated artifact, deployment on a real anvil, the genesis binding, and
the batch and RLP encodings it is driven with."""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable

import pytest

from tests.evm.conftest import Anvil, Deployment
from umbra import codec
from umbra.ordering import evm_build
from umbra.ordering.evm import compress_batch, expand_batch, open_inbox
from umbra.ordering.evm_inbox import MAX_BATCH_BYTES, Inbox, InboxError, artifact
from umbra.ordering.evm_rpc import EvmError, address_hex, keccak256, parse_address, rlp_encode


def test_the_artifact_is_generated_from_the_shipped_source() -> None:
    art = artifact()
    source = evm_build.source_path().read_bytes()
    assert art.source_sha256 == hashlib.sha256(source).hexdigest()
    assert art.compiler.startswith("vyper 0.4.3")
    doc = json.loads((evm_build.source_path().parents[1] / evm_build.ARTIFACT_NAME).read_text())
    assert doc["_note"].startswith("GENERATED")
    names = {(e["type"], e.get("name")) for e in art.abi}
    assert {
        ("function", "submit"),
        ("function", "publish_genesis"),
        ("event", "Batch"),
        ("event", "Genesis"),
    } <= names
    assert art.signature("function", "submit") == "submit(bytes)"
    # The selectors vyper itself reports (method_identifiers), so our keccak and ABI agree with it.
    assert art.selector("submit") == bytes.fromhex("ef7fa71b")
    assert art.selector("publish_genesis") == bytes.fromhex("32ce5b5d")
    assert art.topic("Batch") == keccak256(b"Batch(address,bytes)")


def test_deploy_publish_and_fetch_the_genesis(
    start_anvil: Callable[..., Anvil], deploy: Callable[[Anvil], Deployment]
) -> None:
    dep = deploy(start_anvil(block_time=None))
    inbox = Inbox(dep.anvil.rpc, dep.inbox.address)
    inbox.check_code()
    genesis, block = inbox.fetch_genesis()
    assert genesis == dep.genesis and block == inbox.genesis_block() > 0
    settings = dep.settings()
    assert open_inbox(settings, dep.genesis, dep.anvil.rpc)[1] == block
    # Once only: a second genesis, from anyone, is refused by the contract.
    with pytest.raises(EvmError, match="revert"):
        dep.inbox.publish_genesis(dep.poster, dep.genesis)
    # A node cannot be pointed at the wrong inbox, EVM chain or genesis.
    with pytest.raises(InboxError, match="does not hold the Umbra inbox"):
        Inbox(dep.anvil.rpc, dep.poster.address).check_code()
    other = type(settings)(url=settings.url, inbox=dep.poster.address)
    with pytest.raises(InboxError, match="names the inbox"):
        open_inbox(other, dep.genesis, dep.anvil.rpc)
    foreign = type(dep.genesis)(**{**dep.genesis.__dict__, "chain_id": "another-chain"})
    with pytest.raises(InboxError, match="holds genesis"):
        open_inbox(settings, foreign, dep.anvil.rpc)
    wrong_evm = type(dep.genesis)(
        **{**dep.genesis.__dict__, "params": {**dep.genesis.params, "evm_chain_id": 1}}
    )
    with pytest.raises(InboxError, match="is EVM chain 31337"):
        open_inbox(settings, wrong_evm, dep.anvil.rpc)


def test_a_posted_batch_comes_back_from_the_logs(
    start_anvil: Callable[..., Anvil], deploy: Callable[[Anvil], Deployment]
) -> None:
    dep = deploy(start_anvil(block_time=None))
    txs = [dep.transfer("alice", "bob", 1) for _ in range(3)]
    receipt = dep.post_txs(txs)
    assert receipt.status == 1
    (logs,) = dep.anvil.rpc.logs_by_block_hash(dep.inbox.address, dep.inbox.batch_topic, [receipt.block_hash])
    (payload,) = dep.inbox.batches(logs)
    assert expand_batch(payload) == ([stx.encode() for stx in txs], 0)
    # The biggest batch the contract takes is accepted; one byte more is refused before sending.
    assert dep.post(bytes(MAX_BATCH_BYTES)).status == 1
    with pytest.raises(ValueError, match="at most"):
        dep.post(bytes(MAX_BATCH_BYTES + 1))


def test_batch_payloads_decode_strictly() -> None:
    raws = [b"\x01" * 10, b"tx-two"]
    assert expand_batch(compress_batch(raws)) == (raws, 0)
    assert expand_batch(b"\x00" + codec.encode(raws)) == (raws, 0)
    assert expand_batch(b"\x00" + codec.encode([b"ok", 7, "text", [b"x"]])) == ([b"ok"], 3)
    assert expand_batch(b"") == ([], 1)
    assert expand_batch(b"\x02" + codec.encode(raws)) == ([], 1)  # unknown format
    assert expand_batch(b"\x00" + b"\xff\x00garbage") == ([], 1)
    assert expand_batch(b"\x00" + codec.encode({"not": "a list"})) == ([], 1)
    assert expand_batch(compress_batch(raws)[:-3]) == ([], 1)  # truncated stream
    assert expand_batch(compress_batch(raws) + b"x") == ([], 1)  # trailing bytes
    bomb = b"\x01" + zlib.compress(b"\x00" * (64 * MAX_BATCH_BYTES), 9)
    assert len(bomb) < MAX_BATCH_BYTES and expand_batch(bomb) == ([], 1)


def test_rlp_and_addresses_match_the_published_examples() -> None:
    # Examples from the RLP section of the Ethereum yellow paper / ethereum.org docs.
    assert rlp_encode(b"dog") == bytes.fromhex("83646f67")
    assert rlp_encode([b"cat", b"dog"]) == bytes.fromhex("c88363617483646f67")
    assert rlp_encode(b"") == b"\x80" and rlp_encode([]) == b"\xc0" and rlp_encode(0) == b"\x80"
    assert rlp_encode(15) == b"\x0f" and rlp_encode(1024) == bytes.fromhex("820400")
    assert rlp_encode([[], [[]], [[], [[]]]]) == bytes.fromhex("c7c0c1c0c3c0c1c0")
    lorem = b"Lorem ipsum dolor sit amet, consectetur adipisicing elit"
    assert rlp_encode(lorem) == b"\xb8\x38" + lorem
    # EIP-55's own test vector.
    mixed = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    assert address_hex(parse_address(mixed.lower())) == mixed
    with pytest.raises(ValueError):
        parse_address("0x1234")
