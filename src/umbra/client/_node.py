"""A small synchronous client for the node API (txs, accounts, blocks), over the shared flows.

Transport failures become `UmbraError` at the edge, exactly as for `umbra.client.Client`.
"""

from __future__ import annotations

from typing import Any

import httpx

from umbra import codec, crypto
from umbra.chain.types import Call, SignedTx
from umbra.client import _flows as flows
from umbra.client._errors import UmbraError
from umbra.client._transport import Http, run_sync
from umbra.client._types import Settings

__all__ = ["NodeClient", "UmbraError"]


class NodeClient:
    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)
        self._session = flows.Session(Settings(timeout=timeout))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- transport -----------------------------------------------------------------------------
    def request(
        self, method: str, path: str, *, params: Any = None, json: Any = None, timeout: float | None = None
    ) -> Any:
        return run_sync(
            flows.fetch(Http(method, path, params=params, json=json, timeout=timeout)), self._http
        )

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: str(v) for k, v in params.items()} or None)

    # ---- chain ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/status")
        return result

    def account(self, address: bytes) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/accounts/{codec.to_hex(address)}")
        return result

    def block(self, ref: int | str = "latest") -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/blocks/{ref}")
        return result

    def tx(self, tx_hash: bytes) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/tx/{codec.to_hex(tx_hash)}")
        return result

    def min_fee(self) -> int:
        return run_sync(flows.param("tx_fee", 1), self._http)

    def build_tx(
        self, key: crypto.SigningKey, call: Call, *, fee: int | None = None, nonce: int | None = None
    ) -> SignedTx:
        return run_sync(flows.build_tx(self._session, key, call, nonce=nonce, fee=fee), self._http)

    def submit(self, stx: SignedTx, *, wait: bool = True, timeout: float = 60.0) -> dict[str, Any]:
        """Post a tx; with `wait`, return once it is included (the receipt says ok or not)."""
        return run_sync(flows.submit(stx, wait=wait, timeout=timeout), self._http)

    def call(self, key: crypto.SigningKey, module: str, method: str, **args: Any) -> dict[str, Any]:
        """Build, sign, submit and wait; raise if the tx failed in dispatch."""
        receipt, _ = run_sync(flows.transact(self._session, key, Call(module, method, args)), self._http)
        return receipt
