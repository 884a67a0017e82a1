"""Wire types of the chain: transactions, blocks, events, genesis. All encode to deterministic CBOR.

    SignedTx  = cbor {"tx": Tx, "sig": bytes}
    Tx        = {chain_id, sender, nonce, call: {module, method, args}, fee}
    Header    = {height, parent, time_ms, tx_root, state_root, events_root, author, runtime_version}
    Block     = cbor {"header": Header, "sig": bytes, "txs": [SignedTx bytes]}

Hashes are SHA-256 of the encoding; signatures are over SHA-256(domain || cbor(body)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from umbra import codec, crypto

__all__ = [
    "Block",
    "Call",
    "Event",
    "GenesisConfig",
    "Header",
    "MalformedError",
    "SignedTx",
    "Tx",
    "merkle_root",
]

TX_DOMAIN = "umbra/tx/v1"
BLOCK_DOMAIN = "umbra/block/v1"

U64_MAX = (1 << 64) - 1
U128_MAX = (1 << 128) - 1


class MalformedError(ValueError):
    """Bytes that do not decode to a well-formed chain object."""


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise MalformedError(what)


def _uint(value: Any, what: str, limit: int = U64_MAX) -> int:
    _expect(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit,
        f"{what} must be an unsigned integer",
    )
    return int(value)


def _bytes(value: Any, what: str, length: int | None = None) -> bytes:
    _expect(isinstance(value, bytes), f"{what} must be bytes")
    if length is not None:
        _expect(len(value) == length, f"{what} must be {length} bytes")
    return bytes(value)


def _str(value: Any, what: str, max_len: int = 64) -> str:
    _expect(isinstance(value, str) and 0 < len(value) <= max_len, f"{what} must be a short string")
    return str(value)


@dataclass(frozen=True)
class Call:
    module: str
    method: str
    args: dict[str, Any]

    def to_cbor(self) -> dict[str, Any]:
        return {"module": self.module, "method": self.method, "args": self.args}

    @classmethod
    def from_cbor(cls, value: Any) -> Call:
        _expect(
            isinstance(value, dict) and set(value) == {"module", "method", "args"},
            "call must be {module, method, args}",
        )
        args = value["args"]
        _expect(
            isinstance(args, dict) and all(isinstance(k, str) for k in args),
            "call args must be a map with text keys",
        )
        return cls(_str(value["module"], "call module"), _str(value["method"], "call method"), dict(args))


@dataclass(frozen=True)
class Tx:
    chain_id: str
    sender: bytes
    nonce: int
    call: Call
    fee: int

    def to_cbor(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "sender": self.sender,
            "nonce": self.nonce,
            "call": self.call.to_cbor(),
            "fee": self.fee,
        }

    @classmethod
    def from_cbor(cls, value: Any) -> Tx:
        _expect(
            isinstance(value, dict) and set(value) == {"chain_id", "sender", "nonce", "call", "fee"},
            "tx must be {chain_id, sender, nonce, call, fee}",
        )
        return cls(
            chain_id=_str(value["chain_id"], "chain_id"),
            sender=_bytes(value["sender"], "sender", 32),
            nonce=_uint(value["nonce"], "nonce"),
            call=Call.from_cbor(value["call"]),
            fee=_uint(value["fee"], "fee", U128_MAX),
        )

    def sign(self, key: crypto.SigningKey) -> SignedTx:
        if key.public_key != self.sender:
            raise ValueError("signing key does not match the tx sender")
        return SignedTx(self, key.sign(TX_DOMAIN, self.to_cbor()))


# A canonical signed tx is the map {"tx": body, "sig": bstr(64)}; "tx" sorts first. So the body's
# encoding is a slice of the raw bytes, and hashing it needs no re-encoding.
_SIGNED_HEAD = b"\xa2\x62tx"
_SIGNED_TAIL = b"\x63sig\x58\x40"


@dataclass(frozen=True)
class SignedTx:
    tx: Tx
    signature: bytes
    raw: bytes = field(default=b"", compare=False, repr=False)

    def encode(self) -> bytes:
        return self.raw or codec.encode({"tx": self.tx.to_cbor(), "sig": self.signature})

    @cached_property
    def hash(self) -> bytes:
        return codec.sha256(self.encode())

    def signing_digest(self) -> bytes:
        raw = self.encode()
        if raw.startswith(_SIGNED_HEAD) and raw[-70:-64] == _SIGNED_TAIL:
            return codec.sha256(TX_DOMAIN.encode() + raw[4:-70])
        return crypto.signing_digest(TX_DOMAIN, self.tx.to_cbor())

    def verify_signature(self) -> bool:
        return crypto.verify_digest(self.signing_digest(), self.signature, self.tx.sender)

    @classmethod
    def decode(cls, data: bytes) -> SignedTx:
        try:
            value = codec.decode_canonical(data)
        except codec.CodecError as exc:
            raise MalformedError(str(exc)) from None
        _expect(isinstance(value, dict) and set(value) == {"tx", "sig"}, "signed tx must be {tx, sig}")
        return cls(Tx.from_cbor(value["tx"]), _bytes(value["sig"], "signature", 64), bytes(data))


@dataclass(frozen=True)
class Event:
    """A public event. `tx_index` is None for events raised outside any tx (block hooks)."""

    module: str
    name: str
    data: dict[str, Any]
    tx_index: int | None = None

    def to_cbor(self) -> dict[str, Any]:
        return {"module": self.module, "name": self.name, "data": self.data, "tx": self.tx_index}

    @classmethod
    def from_cbor(cls, value: dict[str, Any]) -> Event:
        return cls(value["module"], value["name"], value["data"], value["tx"])

    def hash(self) -> bytes:
        return codec.sha256(codec.encode(self.to_cbor()))


@dataclass(frozen=True)
class Header:
    height: int
    parent: bytes
    time_ms: int
    tx_root: bytes
    state_root: bytes
    events_root: bytes
    author: bytes
    runtime_version: int

    def to_cbor(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "parent": self.parent,
            "time_ms": self.time_ms,
            "tx_root": self.tx_root,
            "state_root": self.state_root,
            "events_root": self.events_root,
            "author": self.author,
            "runtime_version": self.runtime_version,
        }

    @classmethod
    def from_cbor(cls, value: Any) -> Header:
        _expect(isinstance(value, dict) and set(value) == set(_HEADER_FIELDS), "header fields")
        return cls(
            height=_uint(value["height"], "height"),
            parent=_bytes(value["parent"], "parent", 32),
            time_ms=_uint(value["time_ms"], "time_ms"),
            tx_root=_bytes(value["tx_root"], "tx_root", 32),
            state_root=_bytes(value["state_root"], "state_root", 32),
            events_root=_bytes(value["events_root"], "events_root", 32),
            author=_bytes(value["author"], "author", 32),
            runtime_version=_uint(value["runtime_version"], "runtime_version"),
        )

    @property
    def hash(self) -> bytes:
        return codec.sha256(codec.encode(self.to_cbor()))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hash": codec.to_hex(self.hash)}
        for key, value in self.to_cbor().items():
            out[key] = codec.to_hex(value) if isinstance(value, bytes) else value
        return out


_HEADER_FIELDS = (
    "height",
    "parent",
    "time_ms",
    "tx_root",
    "state_root",
    "events_root",
    "author",
    "runtime_version",
)


@dataclass(frozen=True)
class Block:
    header: Header
    signature: bytes
    txs: tuple[bytes, ...]

    def encode(self) -> bytes:
        return codec.encode({"header": self.header.to_cbor(), "sig": self.signature, "txs": list(self.txs)})

    @classmethod
    def decode(cls, data: bytes) -> Block:
        try:
            value = codec.decode(data)
        except codec.CodecError as exc:
            raise MalformedError(str(exc)) from None
        _expect(
            isinstance(value, dict) and set(value) == {"header", "sig", "txs"},
            "block must be {header, sig, txs}",
        )
        txs = value["txs"]
        _expect(
            isinstance(txs, list) and all(isinstance(t, bytes) for t in txs),
            "block txs must be a list of bytes",
        )
        return cls(Header.from_cbor(value["header"]), _bytes(value["sig"], "block signature", 64), tuple(txs))

    def verify_signature(self) -> bool:
        return crypto.verify(BLOCK_DOMAIN, self.header.to_cbor(), self.signature, self.header.author)


def merkle_root(leaves: list[bytes]) -> bytes:
    """Binary SHA-256 Merkle root with leaf/node domain separation; odd nodes are promoted."""
    if not leaves:
        return codec.sha256(b"umbra/merkle/empty")
    level = [codec.sha256(b"\x00" + leaf) for leaf in leaves]
    while len(level) > 1:
        nxt = [codec.sha256(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def merkle_proof(leaves: list[bytes], index: int) -> list[tuple[bool, bytes]]:
    """Sibling path for `leaves[index]`: (sibling_is_left, sibling_hash) from leaf to root."""
    level = [codec.sha256(b"\x00" + leaf) for leaf in leaves]
    path: list[tuple[bool, bytes]] = []
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            path.append((sibling < index, level[sibling]))
        nxt = [codec.sha256(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level, index = nxt, index // 2
    return path


def verify_merkle_proof(leaf: bytes, path: list[tuple[bool, bytes]], root: bytes) -> bool:
    node = codec.sha256(b"\x00" + leaf)
    for sibling_is_left, sibling in path:
        node = (
            codec.sha256(b"\x01" + sibling + node)
            if sibling_is_left
            else codec.sha256(b"\x01" + node + sibling)
        )
    return node == root


@dataclass(frozen=True)
class GenesisConfig:
    """Everything a node needs to derive block 0. Its hash names the chain.

    `params` holds the tunables (block_ms, idle_ms, tx_fee, ...); `modules` holds each module's
    genesis section, keyed by module name, as the module defines it.
    """

    chain_id: str
    time_ms: int
    sequencer: bytes
    runtime_version: int
    params: dict[str, Any]
    modules: dict[str, Any]

    def to_cbor(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "time_ms": self.time_ms,
            "sequencer": self.sequencer,
            "runtime_version": self.runtime_version,
            "params": self.params,
            "modules": self.modules,
        }

    @classmethod
    def from_cbor(cls, value: Any) -> GenesisConfig:
        _expect(isinstance(value, dict), "genesis must be a map")
        return cls(
            chain_id=_str(value["chain_id"], "chain_id"),
            time_ms=_uint(value["time_ms"], "time_ms"),
            sequencer=_bytes(value["sequencer"], "sequencer", 32),
            runtime_version=_uint(value["runtime_version"], "runtime_version"),
            params=dict(value["params"]),
            modules=dict(value["modules"]),
        )

    def encode(self) -> bytes:
        return codec.encode(self.to_cbor())

    @property
    def hash(self) -> bytes:
        return codec.sha256(self.encode())
