"""Deriving Umbra blocks from the inbox: agreement between nodes, invalid txs, restart, reorgs.

Every test runs against a real anvil. Nodes here are in-process (`Node` with evm settings) so the
tests can look at their stores directly; tests/evm/test_processes.py drives `umbra node`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from tests.evm.conftest import ENDOWMENT, HTTP, Anvil, Deployment, included, same_chain, serve, wait_until
from umbra import codec, crypto
from umbra.chain.state import State
from umbra.chain.types import Block, Tx
from umbra.node.service import Node
from umbra.ordering.evm import Origin, compress_batch, quorum_attested

StartNode = Callable[..., Node]


def _attestation(evm: dict[str, Any]) -> Origin:
    vote = evm["attestation"]
    return Origin(
        evm["number"], codec.from_hex(evm["hash"]), codec.from_hex(vote["node"]), codec.from_hex(vote["sig"])
    )


def balance(node: Node, dep: Deployment, name: str) -> int:
    return int(node.runtime.balances.free(State(node.view), dep.keys[name].public_key))


def caught_up(node: Node, dep: Deployment, evm_block: int) -> bool:
    return node.store.head().height >= evm_block - dep.inbox.genesis_block()


def test_two_relaying_nodes_reach_identical_roots_at_every_height(
    start_anvil: Callable[..., Anvil], deploy: Callable[[Anvil], Deployment], start_node: StartNode
) -> None:
    dep = deploy(start_anvil(block_time=1))
    a = start_node(dep, "a", relayer=1)
    b = start_node(dep, "b", relayer=2)
    via_a = [dep.transfer("alice", "carol", 10) for _ in range(4)]
    via_b = [dep.transfer("bob", "carol", 7) for _ in range(3)]
    for stx in via_a:
        a.submit(stx.encode())
    for stx in via_b:
        b.submit(stx.encode())
    # The same tx submitted to both nodes (a client retrying elsewhere) is included once.
    both = dep.transfer("dave", "alice", 3)
    a.submit(both.encode())
    b.submit(both.encode())
    everything = [*via_a, *via_b, both]
    wait_until(lambda: all(included(n, s) for n in (a, b) for s in everything), 60, "all txs on both nodes")
    assert balance(a, dep, "carol") == ENDOWMENT + 4 * 10 + 3 * 7
    assert balance(b, dep, "dave") == ENDOWMENT - 3 - 1
    head = dep.anvil.head()
    wait_until(
        lambda: caught_up(a, dep, head - 2) and caught_up(b, dep, head - 2), 20, "both at the EVM head"
    )
    upto = min(a.store.head().height, b.store.head().height)
    same_chain(a, b, upto)
    assert a.halted is None and b.halted is None
    # What a worker core checks: the same block bytes from two nodes, each attested by a node key
    # that genesis names, both naming the same EVM block.
    with serve(a) as url_a, serve(b) as url_b:
        served = [
            HTTP.get(f"{u}/sync/blocks", params={"from": 1, "limit": upto}).json()["blocks"]
            for u in (url_a, url_b)
        ]
        status = HTTP.get(f"{url_a}/status").json()
    assert status["ordering"] == "evm" and status["evm"]["confirmations"] == 2
    assert len(served[0]) == len(served[1]) == upto
    for entry_a, entry_b in zip(*served, strict=True):
        assert (entry_a["block"], entry_a["events"]) == (entry_b["block"], entry_b["events"])
        height = entry_a["height"]
        block_hash = Block.decode(codec.from_hex(entry_a["block"])).header.hash
        votes = [_attestation(entry["evm"]) for entry in (entry_a, entry_b)]
        assert quorum_attested(dep.genesis, height, block_hash, votes), height
        assert not quorum_attested(dep.genesis, height, block_hash, votes[:1])  # one node is not enough
        assert not quorum_attested(dep.genesis, height + 1, block_hash, votes)
        forged = Origin(votes[1].number + 1, votes[1].hash, votes[1].node, votes[1].sig)
        assert not quorum_attested(dep.genesis, height, block_hash, [votes[0], forged])
    # One Umbra block per EVM block: heights are EVM numbers less the genesis block, and the time is
    # the EVM block's.
    block = a.store.block(a.store.head().height)
    assert a.evm is not None and block is not None
    origin = a.evm.origins.get(block.header.height)
    assert origin is not None and origin.number == dep.inbox.genesis_block() + block.header.height
    evm_block = dep.anvil.rpc.block(origin.number)
    assert evm_block is not None and evm_block.hash == origin.hash
    assert block.header.time_ms // 1000 == evm_block.timestamp
    assert block.header.author == bytes(32) and block.signature == bytes(64)


def test_invalid_txs_in_the_inbox_are_dropped_the_same_way_by_every_node(
    start_anvil: Callable[..., Anvil], deploy: Callable[[Anvil], Deployment], start_node: StartNode
) -> None:
    dep = deploy(start_anvil(block_time=None))
    a = start_node(dep, "a")
    b = start_node(dep, "b")
    good = dep.transfer("alice", "bob", 100)
    forged = Tx(dep.genesis.chain_id, dep.keys["carol"].public_key, 0, good.tx.call, 1).sign(
        dep.keys["carol"]
    )
    forged_bytes = bytearray(forged.encode())
    forged_bytes[-1] ^= 0x01  # the last signature byte
    wrong_chain = Tx("another-chain", dep.keys["bob"].public_key, 0, good.tx.call, 1).sign(dep.keys["bob"])
    broke = crypto.SigningKey.generate()
    no_funds = Tx(dep.genesis.chain_id, broke.public_key, 0, good.tx.call, 1).sign(broke)
    bomb = b"\x01" + zlib.compress(b"\x00" * (4 << 20), 9)
    payloads = [
        b"garbage that is no batch at all",
        b"\x00" + codec.encode([b"\xff\xfe not a tx", 42, bytes(forged_bytes), wrong_chain.encode()]),
        bomb,
        compress_batch([no_funds.encode(), good.encode()]),
        compress_batch([good.encode()]),  # the replay, in a later batch
    ]
    receipts = [dep.post(p) for p in payloads]
    # A later batch replays it again, from another EVM block.
    receipts.append(dep.post_txs([good]))
    dep.anvil.mine(3)
    last = receipts[-1].block_number
    wait_until(
        lambda: caught_up(a, dep, last) and caught_up(b, dep, last), 30, "both nodes derive the batches"
    )
    same_chain(a, b, min(a.store.head().height, b.store.head().height))
    record = a.store.tx(good.hash)
    assert record is not None and record.ok
    assert record.height == receipts[3].block_number - dep.inbox.genesis_block()
    assert balance(a, dep, "bob") == balance(b, dep, "bob") == ENDOWMENT + 100
    assert balance(a, dep, "alice") == ENDOWMENT - 101
    for stx in (forged, wrong_chain, no_funds):
        assert not included(a, stx) and not included(b, stx)
    # Blocks that carried only garbage are empty blocks, not missing ones.
    for receipt in receipts[:3] + receipts[4:]:
        block = a.store.block(receipt.block_number - dep.inbox.genesis_block())
        assert block is not None and block.txs == ()
    assert a.halted is None and b.halted is None


def test_a_restarted_node_resumes_from_its_last_derived_block(
    start_anvil: Callable[..., Anvil], deploy: Callable[[Anvil], Deployment], start_node: StartNode
) -> None:
    dep = deploy(start_anvil(block_time=None))
    a = start_node(dep, "a")
    b = start_node(dep, "b")
    first = dep.transfer("alice", "bob", 5)
    dep.post_txs([first])
    dep.anvil.mine(2)
    wait_until(lambda: included(a, first), 20, "the first transfer on node a")
    before = a.store.head()
    a.stop()
    a.store.close()
    # The chain moves on while node a is down.
    later = [dep.transfer("alice", "bob", 5) for _ in range(3)]
    for stx in later:
        dep.post_txs([stx])
    dep.anvil.mine(5)
    commits: list[int] = []
    a2 = start_node(dep, "a")  # the same data dir
    a2.add_listener(lambda notice: commits.append(notice.block.header.height))
    head = dep.anvil.head()
    wait_until(lambda: caught_up(a2, dep, head - 2) and caught_up(b, dep, head - 2), 30, "a catches up")
    assert all(included(a2, stx) for stx in later)
    # Nothing before the restart was derived again: the old head is untouched and the first block
    # derived after the restart is the one after it.
    assert a2.store.block(before.height) is not None
    assert a2.store.block(before.height).header == before  # type: ignore[union-attr]
    assert commits and commits[0] >= before.height + 1
    same_chain(a2, b, min(a2.store.head().height, b.store.head().height))


def test_a_reorg_within_the_confirmations_is_absorbed(
    start_anvil: Callable[..., Anvil], deploy: Callable[[Anvil], Deployment], start_node: StartNode
) -> None:
    dep = deploy(start_anvil(block_time=None))
    a = start_node(dep, "a", confirmations=3)
    b = start_node(dep, "b", confirmations=3)
    dep.anvil.mine(4)
    wait_until(lambda: caught_up(a, dep, dep.anvil.head() - 3), 20, "derivation up to the confirmed head")
    lost = dep.transfer("alice", "bob", 50)
    receipt = dep.post_txs([lost])
    # Replace the last two EVM blocks (the one with the batch among them): shallower than 3.
    dep.anvil.rpc.call("anvil_reorg", 2, [])
    replaced = dep.anvil.rpc.block(receipt.block_number)
    assert replaced is not None and replaced.hash != receipt.block_hash
    kept = dep.transfer("alice", "carol", 9, nonce=lost.tx.nonce)
    dep.post_txs([kept])
    dep.anvil.mine(4)
    head = dep.anvil.head()
    wait_until(
        lambda: caught_up(a, dep, head - 3) and caught_up(b, dep, head - 3), 20, "derivation past the reorg"
    )
    assert a.halted is None and b.halted is None
    assert not included(a, lost) and included(a, kept)
    assert a.evm is not None
    origin = a.evm.origins.get(receipt.block_number - dep.inbox.genesis_block())
    assert origin is not None and origin.hash == replaced.hash  # derived from the new fork only
    same_chain(a, b, min(a.store.head().height, b.store.head().height))


def test_a_reorg_deeper_than_the_confirmations_halts_loudly(
    start_anvil: Callable[..., Anvil], deploy: Callable[[Anvil], Deployment], start_node: StartNode
) -> None:
    dep = deploy(start_anvil(block_time=None))
    snapshot = dep.anvil.rpc.call("evm_snapshot")
    a = start_node(dep, "a", confirmations=1)
    paid = dep.transfer("alice", "bob", 70)
    dep.post_txs([paid])
    dep.anvil.mine(3)
    wait_until(lambda: caught_up(a, dep, dep.anvil.head() - 1), 20, "the transfer derived")
    assert included(a, paid)
    derived_head = a.store.head()
    # Back to before the batch, then a different history, longer than the old one.
    assert dep.anvil.rpc.call("evm_revert", snapshot) is True
    dep.anvil.mine(8)
    wait_until(lambda: a.halted is not None, 20, "the node to halt")
    assert a.halted is not None and "EVM reorg deeper than the 1 confirmations" in a.halted
    # Never applied: the derived chain is exactly what it was, and nothing new is derived or taken.
    assert a.store.head() == derived_head and included(a, paid)
    with serve(a) as url:
        health = HTTP.get(f"{url}/health")
        assert health.status_code == 503 and "EVM reorg" in health.json()["error"]["message"]
        assert HTTP.get(f"{url}/status").json()["halted"] == a.halted
        tx = codec.to_hex(dep.transfer("bob", "alice", 1).encode())
        refused = HTTP.post(f"{url}/tx", json={"tx": tx})
        assert refused.status_code >= 400 and refused.json()["error"]["code"] == "not_accepting"


def test_a_node_restarted_after_a_deep_reorg_halts_again(
    start_anvil: Callable[..., Anvil], deploy: Callable[[Anvil], Deployment], start_node: StartNode
) -> None:
    dep = deploy(start_anvil(block_time=None))
    snapshot = dep.anvil.rpc.call("evm_snapshot")
    a = start_node(dep, "a", confirmations=0)
    dep.anvil.mine(3)
    wait_until(lambda: caught_up(a, dep, dep.anvil.head()), 20, "derivation to the head")
    a.stop()
    a.store.close()
    dep.anvil.rpc.call("evm_revert", snapshot)
    dep.anvil.mine(5)
    again = start_node(dep, "a", confirmations=0)
    wait_until(lambda: again.halted is not None, 20, "the restarted node to halt")
    assert "EVM reorg deeper" in (again.halted or "")
