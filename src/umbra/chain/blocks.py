"""Building and importing blocks: the header commitments, checked one by one.

`build_block` is the author's side (a sequencer, or an EVM-inbox deriver). `import_block` is every
other node's: it re-executes the block and compares each commitment in the header with its own,
refusing with `ImportError_` naming the first one that differs.
"""

from __future__ import annotations

from collections.abc import Sequence

from umbra import RUNTIME_VERSION, crypto
from umbra.chain.runtime import BlockOutcome, Runtime
from umbra.chain.state import StateBackend, StateRoot
from umbra.chain.types import BLOCK_DOMAIN, Block, Header, MalformedError, SignedTx

__all__ = ["BlockImportError", "build_block", "genesis_block", "import_block"]


class BlockImportError(RuntimeError):
    """A block that does not follow from our state. `commitment` names what differed."""

    def __init__(self, commitment: str, message: str) -> None:
        super().__init__(f"{commitment}: {message}")
        self.commitment = commitment


def genesis_block(runtime: Runtime) -> tuple[Block, BlockOutcome]:
    """Block 0. It is unsigned (all-zero signature): its hash is fixed by the genesis config."""
    outcome = runtime.genesis_outcome()
    genesis = runtime.genesis
    header = Header(
        height=0,
        parent=genesis.hash,
        time_ms=genesis.time_ms,
        tx_root=outcome.tx_root,
        state_root=outcome.state_root,
        events_root=outcome.events_root,
        author=genesis.sequencer,
        runtime_version=genesis.runtime_version,
    )
    return Block(header, bytes(64), ()), outcome


def build_block(
    runtime: Runtime,
    backend: StateBackend,
    root: StateRoot,
    parent: Header,
    txs: Sequence[SignedTx],
    *,
    time_ms: int,
    author: crypto.SigningKey | None,
    signatures: Sequence[bool] | None = None,
    admitted: bool = False,
) -> tuple[Block, BlockOutcome]:
    """Execute `txs` on top of `parent` and seal the header (signed when `author` is given).
    `signatures` and `admitted` are `Runtime.execute_block`'s."""
    time_ms = max(time_ms, parent.time_ms + 1)
    outcome = runtime.execute_block(
        backend,
        root,
        height=parent.height + 1,
        time_ms=time_ms,
        parent_hash=parent.hash,
        txs=txs,
        signatures=signatures,
        admitted=admitted,
    )
    header = Header(
        height=parent.height + 1,
        parent=parent.hash,
        time_ms=time_ms,
        tx_root=outcome.tx_root,
        state_root=outcome.state_root,
        events_root=outcome.events_root,
        author=author.public_key if author is not None else runtime.genesis.sequencer,
        runtime_version=RUNTIME_VERSION,
    )
    signature = author.sign(BLOCK_DOMAIN, header.to_cbor()) if author is not None else bytes(64)
    return Block(header, signature, tuple(stx.encode() for stx in outcome.included)), outcome


def import_block(
    runtime: Runtime,
    backend: StateBackend,
    root: StateRoot,
    parent: Header,
    block: Block,
    *,
    signatures: Sequence[bool] | None = None,
) -> BlockOutcome:
    """Re-execute `block` and check every header commitment against our own result."""
    header = block.header
    if header.runtime_version != RUNTIME_VERSION:
        raise BlockImportError(
            "runtime_version", f"block uses runtime {header.runtime_version}, we run {RUNTIME_VERSION}"
        )
    if header.height != parent.height + 1:
        raise BlockImportError("height", f"expected height {parent.height + 1}, got {header.height}")
    if header.parent != parent.hash:
        raise BlockImportError("parent", "block does not extend our head")
    if header.author != runtime.genesis.sequencer:
        raise BlockImportError("author", "block is not authored by the genesis sequencer")
    if not block.verify_signature():
        raise BlockImportError("signature", "block signature does not verify")
    if header.time_ms <= parent.time_ms:
        raise BlockImportError("time_ms", "block time does not advance")
    try:
        txs = [SignedTx.decode(raw) for raw in block.txs]
    except MalformedError as exc:
        raise BlockImportError("txs", f"block carries a malformed tx: {exc}") from None
    outcome = runtime.execute_block(
        backend,
        root,
        height=header.height,
        time_ms=header.time_ms,
        parent_hash=header.parent,
        txs=txs,
        signatures=signatures,
    )
    if outcome.dropped:
        stx, why = outcome.dropped[0]
        raise BlockImportError("txs", f"block includes an invalid tx {stx.hash.hex()}: {why.code}")
    for name, ours, theirs in (
        ("tx_root", outcome.tx_root, header.tx_root),
        ("state_root", outcome.state_root, header.state_root),
        ("events_root", outcome.events_root, header.events_root),
    ):
        if ours != theirs:
            raise BlockImportError(name, f"ours 0x{ours.hex()} != header 0x{theirs.hex()}")
    return outcome
