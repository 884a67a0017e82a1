"""The node: store + runtime + a block source, and the hooks the HTTP API needs.

Block sources (ARCHITECTURE.md "Block sources"): the embedded local sequencer authors blocks
from the mempool; a follower pulls blocks from another node and imports them; in evm mode the
node derives blocks from an inbox contract (umbra.ordering.evm) and relays its mempool there.
Every block passes through `_commit`, which persists it in one transaction and notifies waiters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from umbra import codec, crypto
from umbra.chain.blocks import BlockImportError, build_block, genesis_block, import_block
from umbra.chain.runtime import AdmissionError, BlockOutcome, Runtime
from umbra.chain.state import State
from umbra.chain.store import ReadView, Store, StoreCorrupt, StoreFull
from umbra.chain.types import Block, GenesisConfig, MalformedError, SignedTx
from umbra.node._verify import Verifier
from umbra.ordering.evm import EvmSettings, EvmSource
from umbra.ordering.mempool import Mempool

__all__ = ["Node", "NodeConfig", "NodeHalted"]

log = logging.getLogger("umbra.node")


class NodeHalted(RuntimeError):
    """The node stopped following because a block did not match its own execution."""


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    sequencer_key: crypto.SigningKey | None = None  # local sequencer mode
    follow_url: str | None = None  # follower mode
    evm: EvmSettings | None = None  # evm mode: derive from an inbox contract
    mempool_capacity: int = 100_000
    max_pending_per_sender: int = 256  # per-account admission limit (429 rate_limited beyond it)
    # While this many txs wait for a block, a producing sequencer admits a batch only after the next
    # block (or `admission_wait_s`): the backlog stays in the clients, so a tx admitted is in the
    # next block or the one after, instead of behind seconds of queued txs.
    admission_backlog: int = 500
    admission_wait_s: float = 5.0
    max_pages: int | None = None  # SQLite quota (tests of disk-full behaviour)
    blob_quota_bytes: int | None = 1 << 30  # what `PUT /blobs` may store in all


@dataclass(frozen=True)
class BlockNotice:
    """What subscribers (SSE, waiters) learn about each committed block."""

    block: Block
    outcome: BlockOutcome


class Node:
    def __init__(self, config: NodeConfig, genesis: GenesisConfig | None = None) -> None:
        self.config = config
        self.store = Store(
            config.data_dir / "chain.sqlite",
            max_pages=config.max_pages,
            blob_quota_bytes=config.blob_quota_bytes,
        )
        if self.store.is_empty:
            if genesis is None:
                raise StoreCorrupt(f"{config.data_dir} holds no chain and no genesis was given")
            runtime = Runtime(genesis)
            block0, outcome0 = genesis_block(runtime)
            self.store.init_genesis(genesis, block0, outcome0)
        else:
            self.store.open_check()
            if genesis is not None and genesis.hash != self.store.genesis().hash:
                raise StoreCorrupt("the data dir holds a different chain than the genesis given")
        self.genesis = self.store.genesis()
        self.runtime = Runtime(self.genesis)
        self.view = ReadView(self.store)
        self.mempool = Mempool(
            self.runtime,
            self.view,
            capacity=config.mempool_capacity,
            per_sender=config.max_pending_per_sender,
        )
        self._verifier = Verifier()
        self._block_done = threading.Condition()  # notified when a produced block left the mempool
        self._producing = False  # the local sequencer loop runs (admission then waits for blocks)
        self._in_block = 0  # txs of the mempool that the block being built took
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[BlockNotice], None]] = []
        self.halted: str | None = None
        # Why the last block could not be committed (the disk is full), until one commits again.
        self.disk_full: str | None = None
        self.started_at = time.time()
        self.evm: EvmSource | None = None
        if config.evm is not None:
            self.evm = EvmSource(
                config.evm,
                runtime=self.runtime,
                store=self.store,
                mempool=self.mempool,
                data_dir=config.data_dir,
                commit=self._commit,
                verify=self.verify_signatures,
                halt=self._halt,
            )
        self._relayer_thread: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    @property
    def is_sequencer(self) -> bool:
        return self.config.sequencer_key is not None

    @property
    def ordering(self) -> str:
        return "evm" if self.evm is not None else "local"

    def start(self) -> None:
        self._verifier.warm()
        if self.evm is not None:
            evm = self.evm
            self._thread = threading.Thread(
                target=evm.run, args=(self._stop,), name="block-source", daemon=True
            )
            self._relayer_thread = threading.Thread(
                target=evm.run_relayer, args=(self._stop,), name="relayer", daemon=True
            )
            self._thread.start()
            self._relayer_thread.start()
            return
        target = self._produce_loop if self.is_sequencer else self._follow_loop
        if not self.is_sequencer and self.config.follow_url is None:
            raise ValueError("a node needs a sequencer key, a URL to follow, or an EVM inbox")
        self._producing = self.is_sequencer
        self._thread = threading.Thread(target=target, name="block-source", daemon=True)
        self._thread.start()

    def _halt(self, why: str) -> None:
        self.halted = why
        log.critical("HALTING: %s", why)

    def stop(self) -> None:
        self._stop.set()
        self.mempool.ready.set()
        with self._block_done:
            self._block_done.notify_all()
        for thread in (self._thread, self._relayer_thread):
            if thread is not None:
                thread.join(timeout=10)
        if self.evm is not None:
            self.evm.close()
        self._verifier.close()

    def add_listener(self, listener: Callable[[BlockNotice], None]) -> None:
        self._listeners.append(listener)

    # ---- submission ----------------------------------------------------------------------------
    @staticmethod
    def _decode_tx(raw: bytes, max_bytes: int) -> SignedTx | AdmissionError:
        if len(raw) > max_bytes:
            return AdmissionError("too_large", f"tx is {len(raw)} bytes; the limit is {max_bytes}")
        try:
            return SignedTx.decode(raw)
        except MalformedError as exc:
            return AdmissionError("malformed", f"tx does not decode: {exc}")

    def verify_signatures(self, txs: Sequence[SignedTx]) -> list[bool]:
        """One verdict per tx; large batches are checked in worker processes, in parallel."""
        return self._verifier.verify(txs)

    def submit(self, raw: bytes, *, paced: bool = True) -> bytes:
        """Admit one encoded tx (blocking; call from a worker thread). Returns its hash."""
        (result,) = self.submit_many([raw], paced=paced)
        if isinstance(result, AdmissionError):
            raise result
        return result

    def submit_many(self, raws: Sequence[bytes], *, paced: bool = True) -> list[bytes | AdmissionError]:
        """Admit a batch. Each entry is the tx hash, or the AdmissionError that refused it.

        `paced`: with a deep backlog, first wait for the next block (see `backlog_full`). The API
        waits on its event loop instead, holding no thread, and passes False."""
        accepting = self.is_sequencer or (self.evm is not None and self.evm.accepts_txs)
        if self.halted or not accepting:
            if self.halted:
                why = f"node halted: {self.halted}"
            elif self.evm is not None:
                why = "this node derives from the EVM inbox but relays nothing (no --evm-key); submit to a relaying node"
            else:
                why = "this node follows another; submit to the sequencer"
            return [AdmissionError("not_accepting", why) for _ in raws]
        if self.disk_full is not None:
            why = f"the node cannot store blocks ({self.disk_full}); free disk space, then retry"
            return [AdmissionError("disk_full", why) for _ in raws]
        if paced:
            with self._block_done:  # a block that ends meanwhile notifies under this lock
                if self.backlog_full():
                    self._block_done.wait(self.config.admission_wait_s)
        view = self.mempool.view()  # one read view of committed state for the whole batch
        max_bytes = int(self.runtime.system.param(view, "max_tx_bytes"))
        decoded = [self._decode_tx(raw, max_bytes) for raw in raws]
        good = [d for d in decoded if isinstance(d, SignedTx)]
        verdicts = iter(self.verify_signatures(good))
        included = self.store.included(stx.hash for stx in good)
        results: list[bytes | AdmissionError] = []
        for item in decoded:
            if isinstance(item, AdmissionError):
                results.append(item)
                continue
            try:
                self.runtime.check_stateless(item, signature_ok=next(verdicts))
                if item.hash in included:
                    raise AdmissionError("duplicate", "this tx is already included in a block")
                self.mempool.admit(item, view)
                results.append(item.hash)
            except AdmissionError as exc:
                results.append(exc)
        return results

    def backlog_full(self) -> bool:
        """Whether a submission should wait for the next block: this producing sequencer already has
        `admission_backlog` txs waiting beyond the block being built. One block's wait, not until
        the backlog shrinks: it may be txs no block can take yet (nonces after a gap that the very
        submission fills)."""
        waiting = len(self.mempool) - self._in_block
        return self._producing and waiting >= self.config.admission_backlog and not self._stop.is_set()

    # ---- block production (local sequencer) ----------------------------------------------------
    def _produce_loop(self) -> None:
        key = self.config.sequencer_key
        assert key is not None
        last = time.monotonic()
        while not self._stop.is_set():
            state = _state(self)
            block_ms = int(self.runtime.system.param(state, "block_ms")) / 1000
            idle_ms = int(self.runtime.system.param(state, "idle_ms")) / 1000
            now = time.monotonic()
            since = now - last
            if since < block_ms:
                self._stop.wait(block_ms - since)
                continue
            if len(self.mempool) == 0 and since < idle_ms:
                self.mempool.ready.wait(timeout=idle_ms - since)
                continue
            last = time.monotonic()
            try:
                self.produce_block(key)
            except StoreFull as exc:
                if self.disk_full is None:
                    log.error("block not committed: %s; refusing txs until a block commits again", exc)
                self.disk_full = str(exc)
                time.sleep(1)
            except Exception:
                log.exception("block production failed; retrying")
                time.sleep(1)

    def produce_block(self, key: crypto.SigningKey) -> Block:
        limit = int(self.runtime.system.param(_state(self), "max_block_txs"))
        txs = self.mempool.take(limit)
        self._in_block = len(txs)
        try:
            parent = self.store.head()
            block, outcome = build_block(
                self.runtime,
                self.store,
                self.store.root(),
                parent,
                txs,
                time_ms=int(time.time() * 1000),
                author=key,
                admitted=True,  # each passed the stateless checks, signature included, at admission
            )
            self._commit(block, outcome)
            self.mempool.remove(txs)
        finally:
            with self._block_done:
                self._in_block = 0
                self._block_done.notify_all()
        return block

    # ---- following -----------------------------------------------------------------------------
    def _follow_loop(self) -> None:
        url = self.config.follow_url
        assert url is not None
        with httpx.Client(base_url=url, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    imported = self.follow_once(client)
                except BlockImportError as exc:
                    self.halted = f"block import failed at {exc.commitment}: {exc}"
                    log.critical("HALTING: %s", self.halted)
                    return
                except (httpx.HTTPError, ValueError, codec.CodecError) as exc:
                    log.warning("cannot pull blocks from %s: %s", url, exc)
                    imported = 0
                    self._stop.wait(1.0)
                except StoreFull as exc:  # keep following once there is space again
                    if self.disk_full is None:
                        log.error("block not committed: %s; retrying until it commits", exc)
                    self.disk_full = str(exc)
                    imported = 0
                    self._stop.wait(1.0)
                if imported == 0:
                    self._stop.wait(0.05)

    def follow_once(self, client: httpx.Client, batch: int = 200) -> int:
        head = self.store.head()
        reply = client.get("/sync/blocks", params={"from": head.height + 1, "limit": batch})
        reply.raise_for_status()
        raws = [codec.from_hex(b["block"]) for b in reply.json()["blocks"]]
        for raw in raws:
            self.import_block(Block.decode(raw))
        return len(raws)

    def import_block(self, block: Block) -> BlockOutcome:
        txs = [SignedTx.decode(raw) for raw in block.txs]
        signatures = self.verify_signatures(txs)
        outcome = import_block(
            self.runtime, self.store, self.store.root(), self.store.head(), block, signatures=signatures
        )
        self._commit(block, outcome)
        return outcome

    # ---- commit + notify -----------------------------------------------------------------------
    def _commit(self, block: Block, outcome: BlockOutcome) -> None:
        self.store.commit_block(block, outcome)
        if self.disk_full is not None:
            log.warning("blocks commit again (height %d): accepting txs", block.header.height)
            self.disk_full = None
        notice = BlockNotice(block, outcome)
        for listener in list(self._listeners):
            try:
                listener(notice)
            except Exception:
                log.exception("block listener failed")


def _state(node: Node) -> State:
    """A read-only view of the committed state (for parameter reads outside block execution)."""
    return State(node.view)
