"""Operator txs from a long-running host: nonces kept locally, so several can be in flight.

A host posts heartbeats, handovers, contract keys and results back to back; asking the chain for
the nonce each time would reuse one that is still in the mempool. The submitter counts locally,
and falls back to the chain's nonce whenever the node says the local count went wrong (a tx that
never made it into a block).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from umbra import codec, crypto
from umbra.chain.types import Call, SignedTx, Tx
from umbra.client._node import NodeClient, UmbraError

__all__ = ["Submitter", "TxFailed"]


class TxFailed(UmbraError):
    """A tx that was included but failed in dispatch; `code` is the module's error code."""


class Submitter:
    def __init__(self, client: NodeClient, key: crypto.SigningKey, chain_id: str) -> None:
        self._client = client
        self._key = key
        self._chain_id = chain_id
        self._lock = threading.Lock()
        self._nonce: int | None = None
        self._fee: int | None = None

    @property
    def account(self) -> bytes:
        return self._key.public_key

    def resync(self) -> None:
        """Forget the local nonce: the next tx asks the chain (after a tx was lost, say)."""
        with self._lock:
            self._nonce = None

    def post(self, module: str, method: str, **args: Any) -> bytes:
        """Admit the call to the node's mempool; return its tx hash (not waiting for a block)."""
        with self._lock:
            for attempt in range(2):
                if self._nonce is None:
                    self._nonce = int(self._client.account(self._key.public_key)["nonce"])
                if self._fee is None:
                    self._fee = self._client.min_fee()
                tx = Tx(
                    self._chain_id, self._key.public_key, self._nonce, Call(module, method, args), self._fee
                )
                stx: SignedTx = tx.sign(self._key)
                try:
                    self._client.submit(stx, wait=False)
                except UmbraError as exc:
                    if exc.code in ("bad_nonce", "duplicate", "fee_too_low") and attempt == 0:
                        self._nonce, self._fee = None, None
                        continue
                    raise
                self._nonce += 1
                return stx.hash
        raise AssertionError("unreachable")

    def wait(self, tx_hash: bytes, timeout: float = 30.0) -> dict[str, Any]:
        """The receipt once the tx is in a block; TxFailed if it failed there."""
        deadline = time.monotonic() + timeout
        while True:
            record = self._client.tx(tx_hash)
            if record.get("status") == "included":
                if not record.get("ok"):
                    raise TxFailed(str(record.get("error")), str(record.get("message")))
                return record
            if time.monotonic() > deadline:
                self.resync()
                raise UmbraError("timeout", f"tx {codec.to_hex(tx_hash)} not included within {timeout:.0f} s")
            time.sleep(0.05)

    def call(self, module: str, method: str, *, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        return self.wait(self.post(module, method, **args), timeout)
