"""Block import: every header commitment is checked, and a tampered block is refused by name."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.chain.helpers import ALICE, BOB, CHARLIE, EVE, SEQUENCER, TestChain
from umbra import codec
from umbra.chain.blocks import BlockImportError, build_block, import_block
from umbra.chain.types import BLOCK_DOMAIN, Block, SignedTx, merkle_proof, merkle_root, verify_merkle_proof

pytestmark = pytest.mark.timeout(60)


def resign(block: Block, key: Any = SEQUENCER, **changes: Any) -> Block:
    """The block with header fields changed and a valid signature by `key` over the new header."""
    header = replace(block.header, **changes)
    return Block(header, key.sign(BLOCK_DOMAIN, header.to_cbor()), block.txs)


@pytest.fixture
def pair() -> tuple[TestChain, TestChain]:
    """A sequencer chain with a few blocks and a follower that imported them all."""
    sequencer, follower = TestChain.start(), TestChain.start()
    for amount in (10, 20):
        block, outcome = sequencer.build(
            [sequencer.transfer(ALICE, BOB, amount), sequencer.transfer(CHARLIE, EVE, amount)]
        )
        sequencer.commit(block, outcome)
        follower.commit(
            block, import_block(follower.runtime, follower.backend, follower.root, follower.head, block)
        )
    return sequencer, follower


def next_block(sequencer: TestChain) -> Block:
    block, _ = sequencer.build([sequencer.transfer(ALICE, BOB, 5), sequencer.transfer(BOB, CHARLIE, 7)])
    return block


def try_import(follower: TestChain, block: Block) -> None:
    import_block(follower.runtime, follower.backend, follower.root, follower.head, block)


def test_an_honest_block_imports_to_the_same_state(pair: tuple[TestChain, TestChain]) -> None:
    sequencer, follower = pair
    assert follower.head == sequencer.head
    assert follower.root == sequencer.root and follower.backend.data == sequencer.backend.data
    block = next_block(sequencer)
    outcome = import_block(follower.runtime, follower.backend, follower.root, follower.head, block)
    assert outcome.state_root == block.header.state_root
    assert [stx.encode() for stx in outcome.included] == list(block.txs)


@pytest.mark.parametrize(
    ("commitment", "tamper"),
    [
        ("state_root", lambda b: resign(b, state_root=codec.sha256(b"forged state"))),
        ("tx_root", lambda b: resign(b, tx_root=codec.sha256(b"forged txs"))),
        ("events_root", lambda b: resign(b, events_root=codec.sha256(b"forged events"))),
        ("signature", lambda b: Block(b.header, bytes([b.signature[0] ^ 1]) + b.signature[1:], b.txs)),
        ("signature", lambda b: Block(replace(b.header, state_root=codec.sha256(b"x")), b.signature, b.txs)),
        ("signature", lambda b: resign(b, key=EVE)),  # claims the sequencer as author, signed by another
        ("author", lambda b: resign(b, key=EVE, author=EVE.public_key)),
        ("parent", lambda b: resign(b, parent=codec.sha256(b"another fork"))),
        ("height", lambda b: resign(b, height=b.header.height + 1)),
        ("height", lambda b: resign(b, height=b.header.height - 1)),
        ("time_ms", lambda b: resign(b, time_ms=b.header.time_ms - 10_000)),
        ("runtime_version", lambda b: resign(b, runtime_version=b.header.runtime_version + 1)),
        ("tx_root", lambda b: Block(b.header, b.signature, b.txs[:1])),  # a tx withheld
        ("tx_root", lambda b: Block(b.header, b.signature, b.txs[::-1])),  # txs reordered
        ("txs", lambda b: Block(b.header, b.signature, (*b.txs, b"\xa0"))),  # a malformed tx
        ("txs", lambda b: Block(b.header, b.signature, (*b.txs, b.txs[0]))),  # a replayed tx
    ],
)
def test_a_tampered_block_is_refused_naming_what_differs(
    pair: tuple[TestChain, TestChain], commitment: str, tamper: Any
) -> None:
    sequencer, follower = pair
    before = follower.snapshot()
    honest = next_block(sequencer)
    with pytest.raises(BlockImportError) as refused:
        try_import(follower, tamper(honest))
    assert refused.value.commitment == commitment, str(refused.value)
    assert follower.snapshot() == before  # import computes; nothing was committed
    try_import(follower, honest)  # and the honest block still imports


def test_a_block_with_a_tx_that_fails_admission_is_refused(pair: tuple[TestChain, TestChain]) -> None:
    sequencer, follower = pair
    overdraft = sequencer.transfer(EVE, ALICE, 10**12)  # EVE has only what CHARLIE sent
    honest, _ = sequencer.build([])
    forged = Block(honest.header, honest.signature, (overdraft.encode(),))
    with pytest.raises(BlockImportError) as refused:
        try_import(follower, forged)
    assert refused.value.commitment == "txs"
    assert "insufficient_funds" in str(refused.value)


def test_a_tx_admitted_unchecked_by_its_author_is_still_checked_at_import(
    pair: tuple[TestChain, TestChain],
) -> None:
    """`admitted=True` spares a sequencer re-checking its own mempool's txs; an importer checks
    every signature whatever the author did."""
    sequencer, follower = pair
    honest = sequencer.transfer(ALICE, BOB, 1)
    forged = SignedTx(honest.tx, bytes(64))
    block, outcome = build_block(
        sequencer.runtime,
        sequencer.backend,
        sequencer.root,
        sequencer.head,
        [forged],
        time_ms=sequencer.head.time_ms + 1,
        author=SEQUENCER,
        admitted=True,
    )
    assert outcome.included == [forged]  # the author trusted its admission
    with pytest.raises(BlockImportError) as refused:
        try_import(follower, block)
    assert refused.value.commitment == "txs" and "bad_signature" in str(refused.value)


def test_blocks_round_trip_through_their_encoding(pair: tuple[TestChain, TestChain]) -> None:
    sequencer, _ = pair
    block = sequencer.blocks[-1]
    decoded = Block.decode(block.encode())
    assert decoded == block and decoded.verify_signature()
    assert decoded.header.hash == block.header.hash
    for bad in (b"", block.encode() + b"\x00", codec.encode({"header": {}, "sig": b"", "txs": []})):
        with pytest.raises(ValueError):
            Block.decode(bad)


def test_the_genesis_block_is_fixed_by_the_genesis_config() -> None:
    first, second = TestChain.start(), TestChain.start()
    assert first.head == second.head
    assert first.head.parent == first.runtime.genesis.hash
    assert first.head.height == 0


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 13])
def test_merkle_proofs_verify_every_leaf_and_nothing_else(count: int) -> None:
    leaves = [codec.sha256(bytes([i])) for i in range(count)]
    root = merkle_root(leaves)
    for index, leaf in enumerate(leaves):
        path = merkle_proof(leaves, index)
        assert verify_merkle_proof(leaf, path, root)
        assert not verify_merkle_proof(codec.sha256(b"other"), path, root)
    assert merkle_root(leaves) != merkle_root(leaves[::-1]) or count == 1
    assert merkle_root([]) != merkle_root([b""])
