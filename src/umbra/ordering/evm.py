"""The `evm` block source: Umbra blocks derived from an inbox contract on an EVM chain.

Ethereum orders, Umbra executes. Every node derives Umbra block h from EVM block
`genesis_block + h` (the block the genesis was published in, plus h) once that EVM block has
`confirmations` blocks on top of it:

* time_ms is the EVM block's timestamp (nudged forward by 1 ms when two EVM blocks share a second);
* the txs are those of the inbox's `Batch` logs in that block, in log order; undecodable entries
  are skipped and the runtime drops invalid txs (bad signature, replay, no funds, ...), the same
  way on every node;
* an EVM block without batches gives an empty Umbra block, so that the runtime's timers advance.

There is no sequencer key: headers are unsigned, and nodes never import blocks from each other.
Each keeps, beside its chain, the EVM block (number and hash) every Umbra block was derived from
(`OriginStore`). On every poll it checks that the EVM block behind its head is still canonical. A
reorg shallower than the confirmations never reaches derived blocks; a deeper one is reported by
halting derivation with a message that names both hashes, and is never applied.

The `Relayer` turns a node's mempool into inbox batches: one EVM tx per batch, and it waits for
that receipt before the next, so the EVM node's pending pool stays small. A tx that two relayers
post, or that is posted twice, is included once: the copy with the used nonce is dropped.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from umbra import codec, crypto
from umbra.chain.blocks import build_block
from umbra.chain.runtime import BlockOutcome, Runtime
from umbra.chain.state import State
from umbra.chain.store import ReadView, Store, StoreFull
from umbra.chain.types import Block, GenesisConfig, MalformedError, SignedTx
from umbra.ordering.evm_inbox import MAX_BATCH_BYTES, Inbox, InboxError, decode_batch
from umbra.ordering.evm_rpc import EvmAccount, EvmBlock, EvmError, EvmRpc, address_hex
from umbra.ordering.mempool import Mempool

__all__ = [
    "ATTEST_DOMAIN",
    "DeepReorg",
    "EvmSettings",
    "EvmSource",
    "Origin",
    "OriginStore",
    "Relayer",
    "attestation_body",
    "compress_batch",
    "evm_binding",
    "evm_genesis_params",
    "expand_batch",
    "open_inbox",
    "quorum_attested",
]

log = logging.getLogger("umbra.evm")

# Batch payload formats (first byte). Compression matters: calldata is most of the gas.
_PLAIN = 0x00
_ZLIB = 0x01
# Nodes sign, for every block they derive, which EVM block it came from (see `quorum_attested`).
ATTEST_DOMAIN = "umbra/chain-attest/v1"
# A decompression bomb stops here; honest batches inflate about 3x.
_MAX_EXPANDED = 16 * MAX_BATCH_BYTES


def evm_genesis_params(
    chain_id: int, inbox: bytes, *, nodes: Sequence[bytes] = (), quorum: int = 2
) -> dict[str, Any]:
    """The genesis params that bind an Umbra chain to one inbox on one EVM chain, and name the node
    keys whose attestations worker cores count (`quorum` distinct ones must agree on a block)."""
    params: dict[str, Any] = {"ordering": "evm", "evm_chain_id": chain_id, "evm_inbox": inbox}
    if nodes:
        params["evm_nodes"] = sorted(nodes)
        params["evm_quorum"] = min(quorum, len(nodes))
    return params


def attestation_body(chain_id: str, height: int, block_hash: bytes, origin: Origin) -> dict[str, Any]:
    """What a node signs (domain `umbra/chain-attest/v1`) for each block it derived: this Umbra
    block, at this height, is what EVM block `evm_number` with hash `evm_hash` gives."""
    return {
        "chain_id": chain_id,
        "height": height,
        "block": block_hash,
        "evm_number": origin.number,
        "evm_hash": origin.hash,
    }


def quorum_attested(
    genesis: GenesisConfig, height: int, block_hash: bytes, attestations: Sequence[Origin]
) -> bool:
    """The check a worker core makes before it accepts a block of an evm-ordered chain: at least
    `evm_quorum` distinct node keys from genesis `evm_nodes` signed this block hash at this
    height, and they all name the same EVM block. (The reference for the core's own copy.)"""
    trusted = {bytes(k) for k in genesis.params.get("evm_nodes", [])}
    quorum = max(1, int(genesis.params.get("evm_quorum", 2)))
    if len({(a.number, a.hash) for a in attestations}) != 1:
        return False
    signers: set[bytes] = set()
    for a in attestations:
        if a.node is None or a.sig is None or a.node not in trusted:
            continue
        body = attestation_body(genesis.chain_id, height, block_hash, a)
        if crypto.verify(ATTEST_DOMAIN, body, a.sig, a.node):
            signers.add(a.node)
    return len(signers) >= quorum


def evm_binding(genesis: GenesisConfig) -> tuple[int, bytes] | None:
    """(EVM chain id, inbox address) if `genesis` is ordered by an inbox, else None (local)."""
    if genesis.params.get("ordering") != "evm":
        return None
    chain_id, inbox = genesis.params.get("evm_chain_id"), genesis.params.get("evm_inbox")
    if not isinstance(chain_id, int) or not isinstance(inbox, bytes) or len(inbox) != 20:
        raise InboxError("the genesis says ordering=evm but names no valid evm_chain_id and evm_inbox")
    return chain_id, inbox


def compress_batch(raw_txs: Sequence[bytes]) -> bytes:
    return bytes([_ZLIB]) + zlib.compress(codec.encode(list(raw_txs)), 9)


def expand_batch(payload: bytes) -> tuple[list[bytes], int]:
    """The tx byte strings of one posted payload, and how many entries were rejected on the way.
    Anyone can post anything, so nothing here raises: garbage is skipped, identically everywhere."""
    if not payload:
        return [], 1
    kind, body = payload[0], payload[1:]
    if kind == _ZLIB:
        inflater = zlib.decompressobj()
        try:
            body = inflater.decompress(body, _MAX_EXPANDED)
        except zlib.error:
            return [], 1
        if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
            return [], 1  # truncated, trailing bytes, or past the bomb limit
    elif kind != _PLAIN:
        return [], 1
    decoded = decode_batch(body)
    return decoded.txs, decoded.rejected


@dataclass(frozen=True)
class EvmSettings:
    url: str
    inbox: bytes
    confirmations: int = 2
    relayer_key: bytes | None = None  # secp256k1 secret of a funded account; None: derive only
    node_key: crypto.SigningKey | None = None  # signs an attestation of every derived block
    poll_interval: float = 0.2
    max_blocks_per_poll: int = 64


class DeepReorg(RuntimeError):
    """The EVM chain replaced a block that Umbra blocks were already derived from."""


@dataclass(frozen=True)
class Origin:
    """The EVM block an Umbra block was derived from, with the deriving node's attestation."""

    number: int
    hash: bytes
    node: bytes | None = None
    sig: bytes | None = None


class OriginStore:
    """Umbra height -> the EVM block it was derived from, in `evm.sqlite` beside the chain.

    A row is written before its Umbra block commits, so after a crash every committed block has
    its row; rows above the chain's head are leftovers of an uncommitted block and are dropped.
    """

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS origins (height INTEGER PRIMARY KEY, number INTEGER NOT NULL, "
            "hash BLOB NOT NULL, node BLOB, sig BLOB)"
        )
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def record(self, height: int, origin: Origin) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO origins VALUES (?, ?, ?, ?, ?)",
                (height, origin.number, origin.hash, origin.node, origin.sig),
            )

    @staticmethod
    def _origin(number: Any, hash_: Any, node: Any, sig: Any) -> Origin:
        return Origin(
            int(number),
            bytes(hash_),
            None if node is None else bytes(node),
            None if sig is None else bytes(sig),
        )

    def get(self, height: int) -> Origin | None:
        with self._lock:
            row = self._db.execute(
                "SELECT number, hash, node, sig FROM origins WHERE height = ?", (height,)
            ).fetchone()
        return None if row is None else self._origin(*row)

    def many(self, start: int, end: int) -> dict[int, Origin]:
        with self._lock:
            rows = self._db.execute(
                "SELECT height, number, hash, node, sig FROM origins WHERE height >= ? AND height <= ?",
                (start, end),
            ).fetchall()
        return {int(row[0]): self._origin(*row[1:]) for row in rows}

    def drop_above(self, height: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM origins WHERE height > ?", (height,))


def open_inbox(settings: EvmSettings, genesis: GenesisConfig, rpc: EvmRpc) -> tuple[Inbox, int]:
    """Check that `settings` point at the inbox `genesis` names, on the EVM chain it names, and that
    the inbox holds this very genesis. Returns the inbox and its genesis EVM block."""
    binding = evm_binding(genesis)
    if binding is None:
        raise InboxError(
            "this chain is ordered by its local sequencer, not an EVM inbox (genesis has no ordering=evm)"
        )
    chain_id, address = binding
    if address != settings.inbox:
        raise InboxError(
            f"the genesis names the inbox {address_hex(address)}, not {address_hex(settings.inbox)}"
        )
    actual = rpc.chain_id()
    if actual != chain_id:
        raise InboxError(
            f"{settings.url} is EVM chain {actual}; this Umbra chain is bound to EVM chain {chain_id}"
        )
    inbox = Inbox(rpc, address)
    inbox.check_code()
    if inbox.genesis_hash() != genesis.hash:
        raise InboxError(
            f"the inbox {address_hex(address)} holds genesis 0x{inbox.genesis_hash().hex()}, not this chain's "
            f"0x{genesis.hash.hex()}"
        )
    return inbox, inbox.genesis_block()


class Relayer:
    """Posts the node's mempool to the inbox. One batch = one EVM tx, and its receipt comes before
    the next batch, so the EVM node never holds more than one pending tx of ours."""

    MAX_ATTEMPTS = 5  # a tx that keeps being dropped stops costing gas after this many posts

    def __init__(
        self, inbox: Inbox, account: EvmAccount, mempool: Mempool, max_txs: Callable[[], int]
    ) -> None:
        self.inbox = inbox
        self.account = account
        self.mempool = mempool
        self._max_txs = max_txs
        self._lock = threading.Lock()
        # tx hash -> (tx, EVM block its batch landed in; None while the EVM tx is in flight)
        self._posted: dict[bytes, tuple[SignedTx, int | None]] = {}
        self._attempts: dict[bytes, int] = {}
        self.gas_used = 0
        self.batches = 0
        self.txs_posted = 0

    def _candidates(self) -> list[SignedTx]:
        limit = self._max_txs()
        with self._lock:
            pending = len(self._posted)
        # `take` hands out each sender's run from its next unused nonce, so txs posted but not yet
        # derived come first; skip them, and a sender's later txs ride in the next EVM block.
        ready = self.mempool.take(pending + limit)
        with self._lock:
            fresh = [stx for stx in ready if stx.hash not in self._posted]
        return fresh[:limit]

    @staticmethod
    def pack(txs: list[SignedTx]) -> tuple[list[SignedTx], bytes]:
        """The longest prefix of `txs` (found by shrinking) whose compressed batch fits the inbox."""
        count = len(txs)
        while count:
            payload = compress_batch([stx.encode() for stx in txs[:count]])
            if len(payload) <= MAX_BATCH_BYTES:
                return txs[:count], payload
            count = min(count - 1, count * MAX_BATCH_BYTES * 9 // (10 * len(payload)))
        return [], b""

    def step(self) -> int:
        """Post one batch if anything is waiting; returns how many txs it carried."""
        batch, payload = self.pack(self._candidates())
        if not batch:
            return 0
        with self._lock:
            for stx in batch:
                self._posted[stx.hash] = (stx, None)
                self._attempts[stx.hash] = self._attempts.get(stx.hash, 0) + 1
        try:
            receipt = self.inbox.submit(self.account, payload)
        except (EvmError, ValueError):
            with self._lock:
                for stx in batch:
                    self._posted.pop(stx.hash, None)
            raise
        with self._lock:
            for stx in batch:
                if stx.hash in self._posted:  # absent: already derived before the receipt came
                    self._posted[stx.hash] = (stx, receipt.block_number)
            self.gas_used += receipt.gas_used
            self.batches += 1
            self.txs_posted += len(batch)
        return len(batch)

    def derived(self, evm_number: int, outcome: BlockOutcome) -> list[SignedTx]:
        """Bookkeeping once the Umbra block from EVM block `evm_number` has committed. Returns the
        txs the mempool should forget: those included, and those that can never be."""
        forget = list(outcome.included)
        with self._lock:
            for stx in outcome.included:
                self._posted.pop(stx.hash, None)
                self._attempts.pop(stx.hash, None)
            for stx, why in outcome.dropped:
                # A nonce gap (an earlier batch was lost) or a full block heals on a re-post;
                # nothing else does, so posting again would only burn gas.
                if why.code not in ("bad_nonce", "mempool_full") and stx.hash in self.mempool:
                    forget.append(stx)
                    self._posted.pop(stx.hash, None)
                    self._attempts.pop(stx.hash, None)
            # Landed in a block that is now derived, yet not included (the batch was in an EVM block
            # a shallow reorg replaced, or its nonce came before an earlier one): post it again.
            for tx_hash, (stx, landed) in list(self._posted.items()):
                if landed is not None and landed <= evm_number:
                    del self._posted[tx_hash]
                    if self._attempts.get(tx_hash, 0) >= self.MAX_ATTEMPTS:
                        log.warning("giving up on tx 0x%s after %d posts", tx_hash.hex(), self.MAX_ATTEMPTS)
                        forget.append(stx)
                        self._attempts.pop(tx_hash, None)
            for tx_hash in [h for h in self._attempts if h not in self._posted and h not in self.mempool]:
                del self._attempts[tx_hash]
        return forget


class EvmSource:
    """The node's block source in evm mode: derivation (`run`) and relaying (`run_relayer`)."""

    def __init__(
        self,
        settings: EvmSettings,
        *,
        runtime: Runtime,
        store: Store,
        mempool: Mempool,
        data_dir: Path,
        commit: Callable[[Block, BlockOutcome], None],
        verify: Callable[[Sequence[SignedTx]], list[bool]],
        halt: Callable[[str], None],
    ) -> None:
        if settings.confirmations < 0:
            raise ValueError("confirmations cannot be negative")
        self.settings = settings
        self.runtime = runtime
        self.store = store
        self.mempool = mempool
        self._commit = commit
        self._verify = verify
        self._halt = halt
        self.origins = OriginStore(data_dir / "evm.sqlite")
        self.origins.drop_above(store.head().height)
        self.rpc = EvmRpc(settings.url)
        self.inbox: Inbox | None = None
        self.genesis_block = 0
        self.relayer: Relayer | None = None
        self.evm_head: int | None = None
        self.halted = False
        self._connected = threading.Event()

    def close(self) -> None:
        self.rpc.close()
        if self.relayer is not None:
            self.relayer.account.rpc.close()
        self.origins.close()

    # ---- set-up ----------------------------------------------------------------------------
    def connect(self) -> None:
        """Check the binding (chain id, inbox code, genesis hash); anchor block 0 to its EVM block."""
        inbox, genesis_block = open_inbox(self.settings, self.runtime.genesis, self.rpc)
        anchor = self.origins.get(0)
        if anchor is None:
            block = self.rpc.block(genesis_block)
            if block is None:
                raise EvmError(f"EVM block {genesis_block} (the genesis block) is not available")
            self.origins.record(0, Origin(genesis_block, block.hash))
        elif anchor.number != genesis_block:
            raise InboxError(
                f"this data dir was derived from EVM block {anchor.number}, the inbox says {genesis_block}"
            )
        self.inbox, self.genesis_block = inbox, genesis_block
        trusted = {bytes(k) for k in self.runtime.genesis.params.get("evm_nodes", [])}
        key = self.settings.node_key
        if key is not None and trusted and key.public_key not in trusted:
            log.warning(
                "this node's key %s is not among the genesis evm_nodes: worker cores will not count its attestations",
                codec.to_hex(key.public_key),
            )
        if self.settings.relayer_key is not None:
            relayer_rpc = EvmRpc(self.settings.url)
            self.relayer = Relayer(
                Inbox(relayer_rpc, inbox.address),
                EvmAccount(relayer_rpc, self.settings.relayer_key),
                self.mempool,
                lambda: min(
                    2000, int(self.runtime.system.param(State(ReadView(self.store)), "max_block_txs"))
                ),
            )
        self._connected.set()

    @property
    def accepts_txs(self) -> bool:
        return self.settings.relayer_key is not None

    # ---- derivation ------------------------------------------------------------------------
    def _expected_origin(self, height: int) -> Origin:
        origin = self.origins.get(height)
        if origin is not None:
            return origin
        # Only if evm.sqlite was lost: re-anchor on today's canonical hash (a reorg that happened
        # while the file was gone cannot be detected any more, so say so).
        number = self.genesis_block + height
        block = self.rpc.block(number)
        if block is None:
            raise EvmError(f"EVM block {number} is not available")
        log.warning("no EVM origin recorded for Umbra block %d; re-anchoring on EVM block %d", height, number)
        origin = Origin(number, block.hash)
        self.origins.record(height, origin)
        return origin

    def poll(self) -> int:
        """Derive the confirmed EVM blocks not derived yet (at most `max_blocks_per_poll`).
        Returns how many Umbra blocks were committed. Raises DeepReorg."""
        assert self.inbox is not None
        head = self.store.head()
        last = self._expected_origin(head.height)
        latest = self.rpc.block_number()
        self.evm_head = latest
        check = min(last.number, latest)
        if check < self.genesis_block:
            raise DeepReorg(
                f"the EVM chain now ends at block {latest}, before block {self.genesis_block} that published "
                "this chain's genesis"
            )
        start = last.number + 1
        end = min(latest - self.settings.confirmations, start + self.settings.max_blocks_per_poll - 1)
        fetched = self.rpc.blocks([check, *range(start, end + 1)])
        canonical = fetched[0]
        if canonical is None:
            return 0  # the node is between heads; ask again
        expected = last if check == last.number else self._expected_origin(check - self.genesis_block)
        if canonical.hash != expected.hash:
            raise DeepReorg(
                f"EVM reorg deeper than the {self.settings.confirmations} confirmations: EVM block {check} "
                f"(the source of Umbra block {check - self.genesis_block}) was 0x{expected.hash.hex()} and is "
                f"now 0x{canonical.hash.hex()}. Derived blocks are kept as they are and derivation has "
                "stopped; nothing was rolled back. Re-create this node from a chain that agrees with the "
                "EVM chain (or raise --confirmations for the future)."
            )
        chain: list[EvmBlock] = []
        parent = last.hash
        for block in fetched[1:]:
            if block is None or block.parent != parent:
                break  # the EVM head moved under us; the next poll (and its check) sorts it out
            chain.append(block)
            parent = block.hash
        if not chain:
            return 0
        logs = self.inbox.rpc.logs_by_block_hash(
            self.inbox.address, self.inbox.batch_topic, [b.hash for b in chain]
        )
        for block, block_logs in zip(chain, logs, strict=True):
            if self.halted:
                break
            self.derive(block, self.inbox.batches(block_logs))
        return len(chain)

    def derive(self, evm: EvmBlock, payloads: list[bytes]) -> Block:
        """Build, record and commit the Umbra block for one confirmed EVM block."""
        parent = self.store.head()
        if evm.number != self.genesis_block + parent.height + 1:
            raise ValueError(
                f"EVM block {evm.number} is not the next one to derive after Umbra block {parent.height}"
            )
        max_tx_bytes = int(self.runtime.system.param(State(ReadView(self.store)), "max_tx_bytes"))
        txs: list[SignedTx] = []
        rejected = 0
        for payload in payloads:
            raws, bad = expand_batch(payload)
            rejected += bad
            for raw in raws:
                try:
                    if len(raw) > max_tx_bytes:
                        raise MalformedError("too large")
                    txs.append(SignedTx.decode(raw))
                except MalformedError:
                    rejected += 1
        verdicts = self._verify(txs)
        block, outcome = build_block(
            self.runtime,
            self.store,
            self.store.root(),
            parent,
            txs,
            time_ms=evm.timestamp * 1000,
            author=None,
            signatures=verdicts,
        )
        origin = Origin(evm.number, evm.hash)
        key = self.settings.node_key
        if key is not None:
            body = attestation_body(self.runtime.chain_id, block.header.height, block.header.hash, origin)
            origin = Origin(evm.number, evm.hash, key.public_key, key.sign(ATTEST_DOMAIN, body))
        self.origins.record(block.header.height, origin)
        self._commit(block, outcome)
        if rejected or outcome.dropped:
            log.info(
                "Umbra block %d (EVM %d): %d included, %d dropped by the runtime, %d undecodable",
                block.header.height,
                evm.number,
                len(outcome.included),
                len(outcome.dropped),
                rejected,
            )
        forget = (
            self.relayer.derived(evm.number, outcome) if self.relayer is not None else list(outcome.included)
        )
        self.mempool.remove(forget)
        return block

    # ---- threads ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """The block-source thread: connect, then derive until stopped or halted."""
        while not stop.is_set() and not self.halted:
            try:
                if self.inbox is None:
                    self.connect()
                derived = self.poll()
            except (DeepReorg, InboxError) as exc:
                self.halted = True
                self._halt(str(exc))
                return
            except (EvmError, ValueError, KeyError, codec.CodecError) as exc:
                log.warning("EVM derivation from %s: %s; retrying", self.settings.url, exc)
                stop.wait(1.0)
                continue
            except StoreFull as exc:  # nothing was committed: derive the same block again later
                log.error("block not committed: %s; retrying", exc)
                stop.wait(1.0)
                continue
            if derived < self.settings.max_blocks_per_poll:
                stop.wait(self.settings.poll_interval)

    def run_relayer(self, stop: threading.Event) -> None:
        while not stop.is_set() and not self.halted:
            if self.relayer is None:
                self._connected.wait(0.5)
                if self._connected.is_set() and self.relayer is None:
                    return  # derive-only node
                continue
            try:
                posted = self.relayer.step()
            except (EvmError, ValueError) as exc:
                log.warning("relayer: %s; retrying", exc)
                stop.wait(1.0)
                continue
            if posted == 0:
                stop.wait(0.05)

    def status(self) -> dict[str, Any]:
        head = self.store.head().height
        origin = self.origins.get(head)
        relayer = self.relayer
        return {
            "evm_url": self.settings.url,
            "inbox": address_hex(self.settings.inbox),
            "confirmations": self.settings.confirmations,
            "genesis_block": self.genesis_block,
            "evm_head": self.evm_head,
            "derived_evm_block": None if origin is None else origin.number,
            "node_key": None
            if self.settings.node_key is None
            else codec.to_hex(self.settings.node_key.public_key),
            "relayer": None if relayer is None else address_hex(relayer.account.address),
            "relayer_batches": 0 if relayer is None else relayer.batches,
            "relayer_gas_used": 0 if relayer is None else relayer.gas_used,
        }
