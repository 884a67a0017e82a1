"""The core follows the chain itself: a forged block is refused with a clear error and changes nothing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.chain.helpers import SEQUENCER, fixed_key
from tests.enclave.helpers import OPERATORS, SimNet, raw_events, tampered
from umbra import codec
from umbra.chain.types import BLOCK_DOMAIN, Block, Event
from umbra.enclave.transport import CoreError

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def net(tmp_path: Path) -> SimNet:
    return SimNet.start(tmp_path)


def _resign(block: Block, key: object = SEQUENCER) -> Block:
    return replace(block, signature=key.sign(BLOCK_DOMAIN, block.header.to_cbor()))  # type: ignore[attr-defined]


def test_the_core_follows_genuine_blocks(net: SimNet) -> None:
    worker = net.core("w", OPERATORS[0])
    net.chain.produce(net.chain.transfer(OPERATORS[0], OPERATORS[1], 5))
    net.chain.produce()
    reply = net.feed(worker)
    assert reply["height"] == 2 and reply["head_hash"] == net.chain.head.hash
    net.register(worker)
    status = worker.call("status")
    assert status["registered"] and status["worker"]["status"] == "active"


def _forgeries(net: SimNet) -> dict[str, tuple[bytes, bytes]]:
    """Block 1 forged in each way the core must notice."""
    stx = net.chain.transfer(OPERATORS[0], OPERATORS[1], 5)
    block, outcome = net.chain.build([stx])
    events = raw_events(outcome)
    other_key = fixed_key("not-the-sequencer")
    fake_event = Event("registry", "WorkerRevoked", {"worker": bytes(32), "reason": "forged"}, None).to_cbor()
    return {
        "signature": (tampered(block, time_ms=block.header.time_ms + 1).encode(), events),
        "author": (_resign(tampered(block, author=other_key.public_key), other_key).encode(), events),
        "parent": (_resign(tampered(block, parent=bytes(32))).encode(), events),
        "height": (_resign(tampered(block, height=2)).encode(), events),
        "events_root": (block.encode(), codec.encode([*codec.decode(events), fake_event])),
        "events dropped": (block.encode(), codec.encode([])),
        "tx_root": (replace(block, txs=()).encode(), events),
        "malformed": (b"\xa1\x00", events),
    }


@pytest.mark.parametrize(
    "forgery",
    ["signature", "author", "parent", "height", "events_root", "events dropped", "tx_root", "malformed"],
)
def test_a_forged_block_is_refused_and_changes_nothing(net: SimNet, forgery: str) -> None:
    worker = net.core("w", OPERATORS[0])
    net.feed(worker)
    before = worker.call("status")
    forged = _forgeries(net)[forgery]
    with pytest.raises(CoreError) as caught:
        worker.call("feed", blocks=[list(forged)])
    assert caught.value.code == "forged_block"
    assert "block" in caught.value.message and "stays at height 0" in caught.value.message
    assert worker.call("status") == before
    # The genuine block is still accepted afterwards.
    net.chain.produce(net.chain.transfer(OPERATORS[0], OPERATORS[1], 5))
    assert net.feed(worker)["height"] == 1


def test_a_block_of_another_chain_is_refused_at_block_zero(net: SimNet, tmp_path: Path) -> None:
    other = SimNet.start(tmp_path / "other")
    worker = net.core("w", OPERATORS[0])
    with pytest.raises(CoreError, match="genesis"):
        worker.call("feed", blocks=[other.raw(0)])


def test_genuine_blocks_before_a_forged_one_in_a_batch_are_kept(net: SimNet) -> None:
    worker = net.core("w", OPERATORS[0])
    net.chain.produce()
    good = [net.raw(0), net.raw(1)]
    forged = _forgeries(net)["signature"]  # built on block 1
    with pytest.raises(CoreError, match="block 2 refused"):
        worker.call("feed", blocks=[*good, list(forged)])
    assert worker.call("status")["height"] == 1


def test_a_checkpoint_resumes_the_view(net: SimNet) -> None:
    worker = net.core("w", OPERATORS[0])
    net.register(worker)
    height = worker.call("status")["height"]
    again = SimNet(net.chain, net.authority, net.root)
    resumed = again.core("w", OPERATORS[0])
    assert resumed.init["resumed"] and resumed.id == worker.id
    assert resumed.init["height"] == height
    assert resumed.call("status")["registered"]


def test_an_evm_ordered_chain_needs_a_quorum_of_node_attestations(tmp_path: Path) -> None:
    from tests.chain.helpers import TestChain
    from tests.enclave.helpers import GK_OPERATOR
    from umbra.chain.types import GenesisConfig

    nodes = [fixed_key(f"node-{i}") for i in range(3)]
    base = SimNet.start(tmp_path)
    genesis = GenesisConfig.from_cbor(
        {
            **base.genesis.to_cbor(),
            "sequencer": bytes(32),
            "params": {
                **base.genesis.params,
                "ordering": "evm",
                "evm_chain_id": 31337,
                "evm_inbox": bytes(20),
                "evm_nodes": sorted(k.public_key for k in nodes[:2]),
                "evm_quorum": 2,
            },
        }
    )
    net = SimNet(TestChain.start(genesis), base.authority, tmp_path / "evm")
    worker = net.core("w", GK_OPERATOR)
    net.feed(worker)
    block, outcome = net.chain.build([], author=None)
    raw = [block.encode(), raw_events(outcome)]

    def attest(key: object, number: int = 7, digest: bytes = b"\x07" * 32) -> dict[str, object]:
        body = {
            "chain_id": genesis.chain_id,
            "height": 1,
            "block": block.header.hash,
            "evm_number": number,
            "evm_hash": digest,
        }
        return {
            "number": number,
            "hash": digest,
            "node": key.public_key,
            "sig": key.sign("umbra/chain-attest/v1", body),
        }  # type: ignore[attr-defined]

    for attestations, why in [
        ([attest(nodes[0])], "1 of the genesis nodes"),
        ([attest(nodes[0]), attest(nodes[2])], "1 of the genesis nodes"),  # node 2 is not in genesis
        ([attest(nodes[0]), attest(nodes[1], number=8)], "different EVM blocks"),
        ([attest(nodes[0]), {**attest(nodes[1]), "sig": bytes(64)}], "1 of the genesis nodes"),
    ]:
        with pytest.raises(CoreError, match=why):
            worker.call("feed", blocks=[[*raw, attestations]])
    assert worker.call("feed", blocks=[[*raw, [attest(nodes[0]), attest(nodes[1])]]])["height"] == 1
