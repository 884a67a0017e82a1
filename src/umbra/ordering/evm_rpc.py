"""A small EVM client: JSON-RPC over httpx, keccak, and locally signed EIP-1559 transactions.

Only what the inbox needs: blocks, logs, receipts, chain id, and sending one contract call at a
time from a funded account. Keys are secp256k1 (libsecp256k1 through coincurve, which gives the
recovery id that Ethereum signatures carry); keccak-256 is pycryptodome's.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import coincurve
import httpx
from Crypto.Hash import keccak as _keccak

__all__ = [
    "EvmAccount",
    "EvmBlock",
    "EvmError",
    "EvmLog",
    "EvmRpc",
    "Receipt",
    "address_hex",
    "keccak256",
    "load_evm_key",
    "parse_address",
    "rlp_encode",
]


class EvmError(RuntimeError):
    """The EVM node refused a request, answered nonsense, or could not be reached."""


def keccak256(data: bytes) -> bytes:
    return _keccak.new(digest_bits=256, data=data).digest()


def parse_address(text: str) -> bytes:
    """A 20-byte address from 0x-hex (checksum case is accepted, not required)."""
    body = text[2:] if text.startswith(("0x", "0X")) else text
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        raise ValueError(f"{text!r} is not a hex EVM address") from None
    if len(raw) != 20:
        raise ValueError(f"{text!r} is not a 20-byte EVM address")
    return raw


def address_hex(address: bytes) -> str:
    """EIP-55 mixed-case checksum form, as EVM tools print addresses."""
    plain = address.hex()
    digest = keccak256(plain.encode()).hex()
    return "0x" + "".join(
        c.upper() if int(h, 16) >= 8 else c for c, h in zip(plain, digest[:40], strict=True)
    )


def _int(value: Any, what: str) -> int:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise EvmError(f"EVM node sent a malformed {what}: {value!r}")
    return int(value, 16)


def _data(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise EvmError(f"EVM node sent malformed {what}: {str(value)[:80]!r}")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise EvmError(f"EVM node sent malformed {what}") from None


# ---- RLP (the Ethereum yellow paper, appendix B): only what typed transactions need --------------
def _rlp_length(length: int, offset: int) -> bytes:
    if length < 56:
        return bytes([offset + length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([offset + 55 + len(encoded)]) + encoded


def rlp_encode(item: bytes | int | Sequence[Any]) -> bytes:
    if isinstance(item, int):
        if item < 0:
            raise ValueError("RLP encodes non-negative integers only")
        item = item.to_bytes((item.bit_length() + 7) // 8, "big")  # 0 is the empty string
    if isinstance(item, bytes):
        if len(item) == 1 and item[0] < 0x80:
            return item
        return _rlp_length(len(item), 0x80) + item
    payload = b"".join(rlp_encode(x) for x in item)
    return _rlp_length(len(payload), 0xC0) + payload


# ---- chain data --------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvmBlock:
    number: int
    hash: bytes
    parent: bytes
    timestamp: int  # seconds

    @classmethod
    def from_json(cls, value: Any) -> EvmBlock:
        if not isinstance(value, dict):
            raise EvmError("EVM node sent a malformed block")
        return cls(
            number=_int(value.get("number"), "block number"),
            hash=_data(value.get("hash"), "block hash"),
            parent=_data(value.get("parentHash"), "parent hash"),
            timestamp=_int(value.get("timestamp"), "block timestamp"),
        )


@dataclass(frozen=True)
class EvmLog:
    address: bytes
    topics: tuple[bytes, ...]
    data: bytes
    block_number: int
    block_hash: bytes
    log_index: int
    removed: bool

    @classmethod
    def from_json(cls, value: Any) -> EvmLog:
        if not isinstance(value, dict) or not isinstance(value.get("topics"), list):
            raise EvmError("EVM node sent a malformed log")
        return cls(
            address=_data(value.get("address"), "log address"),
            topics=tuple(_data(t, "log topic") for t in value["topics"]),
            data=_data(value.get("data"), "log data"),
            block_number=_int(value.get("blockNumber"), "log block number"),
            block_hash=_data(value.get("blockHash"), "log block hash"),
            log_index=_int(value.get("logIndex"), "log index"),
            removed=bool(value.get("removed", False)),
        )


@dataclass(frozen=True)
class Receipt:
    tx_hash: bytes
    block_number: int
    block_hash: bytes
    status: int
    gas_used: int
    contract_address: bytes | None
    logs: tuple[EvmLog, ...]

    @classmethod
    def from_json(cls, value: Any) -> Receipt:
        if not isinstance(value, dict):
            raise EvmError("EVM node sent a malformed receipt")
        created = value.get("contractAddress")
        return cls(
            tx_hash=_data(value.get("transactionHash"), "tx hash"),
            block_number=_int(value.get("blockNumber"), "receipt block number"),
            block_hash=_data(value.get("blockHash"), "receipt block hash"),
            status=_int(value.get("status"), "receipt status"),
            gas_used=_int(value.get("gasUsed"), "gas used"),
            contract_address=_data(created, "contract address") if created else None,
            logs=tuple(EvmLog.from_json(x) for x in value.get("logs") or ()),
        )


class EvmRpc:
    """JSON-RPC 2.0 over HTTP. Thread-safe for use from one thread at a time per instance."""

    def __init__(self, url: str, *, timeout: float = 15.0) -> None:
        self.url = url
        self._http = httpx.Client(timeout=timeout)
        self._ids = itertools.count(1)

    def close(self) -> None:
        self._http.close()

    def _post(self, body: Any) -> Any:
        try:
            reply = self._http.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise EvmError(f"cannot reach the EVM node at {self.url}: {exc}") from None
        if reply.status_code >= 400:
            raise EvmError(f"EVM node at {self.url} answered HTTP {reply.status_code}: {reply.text[:200]}")
        try:
            return reply.json()
        except ValueError:
            raise EvmError(f"EVM node at {self.url} answered non-JSON") from None

    @staticmethod
    def _result(method: str, reply: Any) -> Any:
        if not isinstance(reply, dict):
            raise EvmError(f"{method}: malformed JSON-RPC reply")
        if reply.get("error") is not None:
            err = reply["error"]
            message = err.get("message") if isinstance(err, dict) else err
            raise EvmError(f"{method}: {message}")
        if "result" not in reply:
            raise EvmError(f"{method}: JSON-RPC reply without a result")
        return reply["result"]

    def call(self, method: str, *params: Any) -> Any:
        reply = self._post(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        )
        return self._result(method, reply)

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in one HTTP round trip; results in call order."""
        if not calls:
            return []
        first = next(self._ids)
        body = [
            {"jsonrpc": "2.0", "id": first + i, "method": m, "params": list(p)}
            for i, (m, p) in enumerate(calls)
        ]
        for _ in range(len(calls) - 1):
            next(self._ids)
        replies = self._post(body)
        if not isinstance(replies, list):
            # A node that refuses batches answers one error object for the whole request.
            raise EvmError(f"batch of {calls[0][0]}: {self._result(calls[0][0], replies)!r}")
        by_id = {r.get("id"): r for r in replies if isinstance(r, dict)}
        return [self._result(m, by_id.get(first + i)) for i, (m, _) in enumerate(calls)]

    # ---- typed helpers -------------------------------------------------------------------------
    def chain_id(self) -> int:
        return _int(self.call("eth_chainId"), "chain id")

    def block_number(self) -> int:
        return _int(self.call("eth_blockNumber"), "block number")

    def block(self, number: int) -> EvmBlock | None:
        value = self.call("eth_getBlockByNumber", hex(number), False)
        return None if value is None else EvmBlock.from_json(value)

    def blocks(self, numbers: Sequence[int]) -> list[EvmBlock | None]:
        values = self.batch([("eth_getBlockByNumber", (hex(n), False)) for n in numbers])
        return [None if v is None else EvmBlock.from_json(v) for v in values]

    def logs_by_block_hash(
        self, address: bytes, topic: bytes, block_hashes: Sequence[bytes]
    ) -> list[list[EvmLog]]:
        """Each block's logs of `address` with first topic `topic`. Querying by block hash (EIP-234)
        pins the answer to exactly that block, so a reorg between calls cannot mix two forks."""
        calls = [
            (
                "eth_getLogs",
                (
                    {
                        "address": "0x" + address.hex(),
                        "topics": ["0x" + topic.hex()],
                        "blockHash": "0x" + h.hex(),
                    },
                ),
            )
            for h in block_hashes
        ]
        results = self.batch(calls)
        out: list[list[EvmLog]] = []
        for value in results:
            if not isinstance(value, list):
                raise EvmError("eth_getLogs: malformed reply")
            out.append([EvmLog.from_json(x) for x in value])
        return out

    def logs(self, address: bytes, topic: bytes, from_block: int, to_block: int) -> list[EvmLog]:
        value = self.call(
            "eth_getLogs",
            {
                "address": "0x" + address.hex(),
                "topics": ["0x" + topic.hex()],
                "fromBlock": hex(from_block),
                "toBlock": hex(to_block),
            },
        )
        if not isinstance(value, list):
            raise EvmError("eth_getLogs: malformed reply")
        return [EvmLog.from_json(x) for x in value]

    def eth_call(self, to: bytes, data: bytes) -> bytes:
        return _data(
            self.call("eth_call", {"to": "0x" + to.hex(), "data": "0x" + data.hex()}, "latest"), "call result"
        )

    def code(self, address: bytes) -> bytes:
        return _data(self.call("eth_getCode", "0x" + address.hex(), "latest"), "code")

    def receipt(self, tx_hash: bytes) -> Receipt | None:
        value = self.call("eth_getTransactionReceipt", "0x" + tx_hash.hex())
        return None if value is None else Receipt.from_json(value)


def load_evm_key(path: str | Path) -> bytes:
    """A secp256k1 private key from a file holding it as (0x-)hex, as `cast wallet` prints it."""
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read EVM key file {path}: {exc.strerror}") from None
    body = text[2:] if text.startswith("0x") else text
    try:
        secret = bytes.fromhex(body)
    except ValueError:
        raise ValueError(f"EVM key file {path} does not hold a hex private key") from None
    if len(secret) != 32:
        raise ValueError(f"EVM key file {path} does not hold a 32-byte private key")
    return secret


class EvmAccount:
    """A funded EVM account that sends contract calls one at a time and waits for each receipt."""

    def __init__(self, rpc: EvmRpc, secret: bytes) -> None:
        self.rpc = rpc
        self._key = coincurve.PrivateKey(secret)
        self.address = keccak256(self._key.public_key.format(compressed=False)[1:])[12:]
        self._chain_id: int | None = None

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = self.rpc.chain_id()
        return self._chain_id

    def sign_tx(
        self, *, nonce: int, to: bytes | None, data: bytes, gas: int, max_fee: int, tip: int
    ) -> bytes:
        """The raw EIP-1559 (type 2) transaction: 0x02 || rlp([chain_id, nonce, tip, max_fee, gas,
        to, value, data, access_list, y_parity, r, s]), signed over keccak(0x02 || rlp(unsigned))."""
        body = [self.chain_id, nonce, tip, max_fee, gas, to or b"", 0, data, []]
        digest = keccak256(b"\x02" + rlp_encode(body))
        signature = self._key.sign_recoverable(digest, hasher=None)  # r || s || recovery id; low-s
        r, s, y_parity = signature[:32], signature[32:64], signature[64]
        return b"\x02" + rlp_encode([*body, y_parity, int.from_bytes(r, "big"), int.from_bytes(s, "big")])

    def send(self, to: bytes | None, data: bytes, *, gas: int | None = None) -> bytes:
        """Sign and broadcast one call (or a contract creation with `to=None`). Returns its hash."""
        call: dict[str, Any] = {"from": "0x" + self.address.hex(), "data": "0x" + data.hex()}
        if to is not None:
            call["to"] = "0x" + to.hex()
        nonce_raw, base_raw, tip_raw = self.rpc.batch(
            [
                ("eth_getTransactionCount", ("0x" + self.address.hex(), "pending")),
                ("eth_gasPrice", ()),
                ("eth_maxPriorityFeePerGas", ()),
            ]
        )
        if gas is None:
            estimate = _int(self.rpc.call("eth_estimateGas", call), "gas estimate")
            gas = estimate + estimate // 5  # headroom: the estimate is for the state it ran on
        tip = _int(tip_raw, "priority fee")
        # Twice the current price: the tx stays valid while the base fee climbs for a few blocks.
        max_fee = 2 * _int(base_raw, "gas price") + tip
        raw = self.sign_tx(
            nonce=_int(nonce_raw, "nonce"), to=to, data=data, gas=gas, max_fee=max_fee, tip=tip
        )
        return _data(self.rpc.call("eth_sendRawTransaction", "0x" + raw.hex()), "tx hash")

    def wait(self, tx_hash: bytes, *, timeout: float = 120.0, poll: float = 0.1) -> Receipt:
        deadline = time.monotonic() + timeout
        while True:
            found = self.rpc.receipt(tx_hash)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise EvmError(f"EVM tx 0x{tx_hash.hex()} has no receipt after {timeout:.0f} s")
            time.sleep(poll)

    def transact(
        self, to: bytes | None, data: bytes, *, gas: int | None = None, timeout: float = 120.0
    ) -> Receipt:
        receipt = self.wait(self.send(to, data, gas=gas), timeout=timeout)
        if receipt.status != 1:
            raise EvmError(f"EVM tx 0x{receipt.tx_hash.hex()} reverted (block {receipt.block_number})")
        return receipt
