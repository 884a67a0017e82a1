"""The bounded mempool: admitted txs waiting for a block, per sender in nonce order.

Admission here is the stateful half (nonce, fee floor, funds including what the sender already
has pending); the stateless half (decode, size, chain id, call shape, signature) runs before,
outside the lock, so signature checks can proceed in parallel. Two bounds keep it finite: the
whole pool (`capacity`, refused as `mempool_full`) and each sender's queue (`per_sender`, refused
as `rate_limited`); both are back-pressure, answered 429 with Retry-After.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from umbra.chain.runtime import AdmissionError, Runtime
from umbra.chain.state import State, StateBackend
from umbra.chain.types import SignedTx

__all__ = ["Mempool"]


@dataclass
class _SenderQueue:
    txs: dict[int, SignedTx] = field(default_factory=dict)  # nonce -> tx
    spend: int = 0


class Mempool:
    def __init__(
        self, runtime: Runtime, backend: StateBackend, *, capacity: int = 100_000, per_sender: int = 256
    ) -> None:
        self._runtime = runtime
        self._backend = backend
        self._capacity = capacity
        self._per_sender = per_sender
        self._lock = threading.Lock()
        self._senders: OrderedDict[bytes, _SenderQueue] = OrderedDict()
        self._by_hash: dict[bytes, SignedTx] = {}
        self.ready = threading.Event()

    def __len__(self) -> int:
        return len(self._by_hash)

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._by_hash

    def view(self) -> State:
        """A read view of committed state; one view may serve a whole batch of admissions."""
        return State(self._backend)

    def admit(self, stx: SignedTx, state: State | None = None) -> None:
        """Admit a tx whose stateless checks (signature included) already passed."""
        tx = stx.tx
        tx_hash = stx.hash
        with self._lock:
            if tx_hash in self._by_hash:
                raise AdmissionError("duplicate", "this tx is already waiting in the mempool")
            if len(self._by_hash) >= self._capacity:
                raise AdmissionError("mempool_full", "mempool is full; retry later")
            state = state or State(self._backend)
            base = self._runtime.system.nonce(state, tx.sender)
            queue = self._senders.get(tx.sender) or _SenderQueue()
            if tx.nonce < base:
                raise AdmissionError(
                    "bad_nonce",
                    f"nonce {tx.nonce} is already used (next is {base}); this tx or its replay was included",
                )
            if tx.nonce in queue.txs:
                raise AdmissionError("duplicate", f"another tx with nonce {tx.nonce} is already pending")
            if len(queue.txs) >= self._per_sender:
                raise AdmissionError(
                    "rate_limited",
                    f"this account already has {len(queue.txs)} txs waiting (the limit per account); "
                    "retry once some are included",
                )
            # Any unused nonce in the window is fine: concurrent clients' txs arrive out of order, and
            # the queue may still hold txs a just-committed block included (until `remove`).
            limit = int(self._runtime.system.param(state, "max_future_nonces"))
            if tx.nonce >= base + limit:
                raise AdmissionError(
                    "bad_nonce", f"nonce {tx.nonce} is too far ahead: next is {base}, the window is {limit}"
                )
            self._runtime.check_stateful(state, stx, expected_nonce=tx.nonce, pending_spend=queue.spend)
            queue.txs[tx.nonce] = stx
            queue.spend += self._runtime.spend_of(stx)
            self._senders[tx.sender] = queue
            self._by_hash[tx_hash] = stx
            self.ready.set()

    def next_nonce(self, sender: bytes, base: int) -> int:
        """The nonce after `sender`'s contiguous pending run from `base` (its committed nonce): what
        a new tx should carry so it neither collides with nor waits behind a gap."""
        with self._lock:
            queue = self._senders.get(sender)
            nonce = base
            while queue is not None and nonce in queue.txs:
                nonce += 1
            return nonce

    def take(self, limit: int) -> list[SignedTx]:
        """Up to `limit` ready txs: each sender's contiguous run from its next nonce, senders FIFO."""
        out: list[SignedTx] = []
        with self._lock:
            state = State(self._backend)
            for sender, queue in self._senders.items():
                nonce = self._runtime.system.nonce(state, sender)
                while nonce in queue.txs and len(out) < limit:
                    out.append(queue.txs[nonce])
                    nonce += 1
                if len(out) >= limit:
                    break
        return out

    def remove(self, txs: list[SignedTx]) -> None:
        """Forget txs that were included or dropped, and any whose nonce is now stale."""
        with self._lock:
            touched: set[bytes] = set()
            for stx in txs:
                if self._by_hash.pop(stx.hash, None) is not None:
                    self._forget(stx)
                touched.add(stx.tx.sender)
            state = State(self._backend)
            for sender in touched:
                queue = self._senders.get(sender)
                if queue is None:
                    continue
                base = self._runtime.system.nonce(state, sender)
                for nonce in [n for n in queue.txs if n < base]:
                    stale = queue.txs[nonce]
                    self._by_hash.pop(stale.hash, None)
                    self._forget(stale)
            if not self._by_hash:
                self.ready.clear()

    def _forget(self, stx: SignedTx) -> None:
        """Drop a tx (already gone from `_by_hash`) from its sender's queue and pending spend."""
        queue = self._senders.get(stx.tx.sender)
        held = None if queue is None else queue.txs.get(stx.tx.nonce)
        if queue is None or held is None or held.hash != stx.hash:
            return
        del queue.txs[stx.tx.nonce]
        queue.spend -= self._runtime.spend_of(held)
        if not queue.txs:
            del self._senders[stx.tx.sender]
