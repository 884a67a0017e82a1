"""Operator txs from a long-running host: nonces kept locally, so several can be in flight.

A host posts heartbeats, handovers, contract keys and results back to back; asking the chain for
the nonce each time would reuse one that is still in the mempool. The submitter counts locally,
and falls back to the chain's nonce whenever the node says the local count went wrong (a tx that
never made it into a block).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from umbra import codec, crypto
from umbra.chain.types import Call, Tx
from umbra.client._node import NodeClient, UmbraError

__all__ = ["Submitter", "TxFailed"]

# Refusals that mean the local nonce or fee went wrong: resync both and try once more.
_RESYNC = ("bad_nonce", "duplicate", "fee_too_low")


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
                self._sync()
                assert self._nonce is not None and self._fee is not None
                stx = Tx(
                    self._chain_id, self._key.public_key, self._nonce, Call(module, method, args), self._fee
                ).sign(self._key)
                try:
                    self._client.submit(stx, wait=False)
                except UmbraError as exc:
                    if exc.code in _RESYNC and attempt == 0:
                        self._nonce, self._fee = None, None
                        continue
                    raise
                self._nonce += 1
                return stx.hash
        raise AssertionError("unreachable")

    def post_many(self, calls: Sequence[Call]) -> list[bytes | UmbraError]:
        """Admit several calls in one POST /txs, with consecutive nonces; for each its tx hash or
        the node's refusal. Calls refused for a nonce or fee the node did not expect are signed
        again after a resync, once."""
        results: list[bytes | UmbraError] = [UmbraError("not_posted", "not posted")] * len(calls)
        with self._lock:
            todo = list(range(len(calls)))
            for attempt in range(2):
                self._sync()
                assert self._nonce is not None and self._fee is not None
                base = self._nonce
                signed = [
                    Tx(self._chain_id, self._key.public_key, base + k, calls[i], self._fee).sign(self._key)
                    for k, i in enumerate(todo)
                ]
                reply = self._client.request(
                    "POST", "/txs", json={"txs": [codec.to_hex(stx.encode()) for stx in signed]}
                )
                entries = reply.get("results") if isinstance(reply, dict) else None
                if not isinstance(entries, list) or len(entries) != len(signed):
                    self._nonce = None  # which were admitted is unknown: ask the chain next time
                    raise UmbraError("bad_reply", "the node's answer to POST /txs has no result per tx")
                refused: list[int] = []  # positions in `todo`
                retry: list[int] = []
                for k, (i, stx, entry) in enumerate(zip(todo, signed, entries, strict=True)):
                    error = entry.get("error") if isinstance(entry, dict) else {"code": "bad_reply"}
                    if error is None:
                        results[i] = stx.hash
                        continue
                    code = str(error.get("code"))
                    results[i] = UmbraError(code, str(error.get("message")))
                    refused.append(k)
                    if code in _RESYNC:
                        retry.append(i)
                if not refused:
                    self._nonce = base + len(todo)
                    return results
                # Refusals that end the batch leave no gap: the next nonce is the first refused one's.
                tail = refused == list(range(refused[0], len(todo)))
                self._nonce = base + refused[0] if tail else None
                if not retry or attempt == 1:
                    return results
                self._nonce, self._fee = None, None
                todo = retry
        return results

    def _sync(self) -> None:
        """The next nonce and the fee from the chain, unless counted locally already (lock held)."""
        if self._nonce is None:
            account = self._client.account(self._key.public_key)
            self._nonce = int(account.get("pending_nonce", account["nonce"]))  # after what waits
        if self._fee is None:
            self._fee = self._client.min_fee()

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
