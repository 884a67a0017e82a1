"""A small synchronous client for the node API. httpx errors are translated to `UmbraError`."""

from __future__ import annotations

from typing import Any

import httpx

from umbra import codec, crypto
from umbra.chain.types import Call, SignedTx, Tx

__all__ = ["NodeClient", "UmbraError"]


class UmbraError(Exception):
    """A refusal or failure, with a stable `code` (the node's error code where there is one)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NodeClient:
    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- transport -----------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            reply = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise UmbraError("timeout", f"{self.url} did not answer {method} {path} in time") from None
        except httpx.HTTPError as exc:
            raise UmbraError("unreachable", f"cannot reach the node at {self.url}: {exc}") from None
        try:
            body = reply.json()
        except ValueError:
            body = None
        if reply.status_code >= 400:
            err = body.get("error") if isinstance(body, dict) else None
            if isinstance(err, dict):
                raise UmbraError(str(err.get("code", "error")), str(err.get("message", "")))
            raise UmbraError(f"http_{reply.status_code}", reply.text[:200])
        return body

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

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
        return int(self.get("/state/system/param", key="tx_fee")["value"])

    def build_tx(
        self, key: crypto.SigningKey, call: Call, *, fee: int | None = None, nonce: int | None = None
    ) -> SignedTx:
        status = self.status()
        if nonce is None:
            nonce = int(self.account(key.public_key)["nonce"])
        tx = Tx(status["chain_id"], key.public_key, nonce, call, self.min_fee() if fee is None else fee)
        return tx.sign(key)

    def submit(self, stx: SignedTx, *, wait: bool = True, timeout: float = 60.0) -> dict[str, Any]:
        """Post a tx; with `wait`, return once it is included (the receipt says ok or not)."""
        params = {"wait": "true", "timeout": str(timeout)} if wait else None
        result: dict[str, Any] = self.request(
            "POST", "/tx", json={"tx": codec.to_hex(stx.encode())}, params=params
        )
        if wait and result.get("status") != "included":
            raise UmbraError(
                "timeout",
                f"tx {result.get('tx_hash')} was not included within {timeout} s; resubmitting is safe",
            )
        return result

    def call(self, key: crypto.SigningKey, module: str, method: str, **args: Any) -> dict[str, Any]:
        """Build, sign, submit and wait; raise if the tx failed in dispatch."""
        stx = self.build_tx(key, Call(module, method, args))
        receipt = self.submit(stx)
        if not receipt.get("ok"):
            raise UmbraError(str(receipt.get("error")), str(receipt.get("message")))
        receipt["tx"] = codec.to_hex(stx.encode())
        return receipt
