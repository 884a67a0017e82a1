"""The inbox contract from Python: its generated artifact, ABI encoding, deployment, batches.

The artifact (`_inbox_artifact.json`) is written by `umbra.ordering.evm_build` when the package
is built or installed; nothing here edits it. Loading refuses an artifact whose recorded source
hash differs from the shipped `contracts/Inbox.vy`, so bytecode and source cannot drift apart.

A batch, as posted to `submit(bytes)`, is the deterministic CBOR array of encoded signed txs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from umbra import codec
from umbra.chain.types import GenesisConfig
from umbra.ordering.evm_build import ARTIFACT_NAME, source_path
from umbra.ordering.evm_rpc import EvmAccount, EvmError, EvmLog, EvmRpc, Receipt, keccak256

__all__ = [
    "MAX_BATCH_BYTES",
    "Artifact",
    "BatchDecode",
    "Inbox",
    "InboxError",
    "artifact",
    "decode_batch",
    "deploy_inbox",
    "encode_batch",
]

# The contract's own bounds (Inbox.vy MAX_BATCH, MAX_GENESIS); the ABI does not carry them.
MAX_BATCH_BYTES = 122_880
MAX_GENESIS_BYTES = 65_536

_ARTIFACT_PATH = Path(__file__).resolve().parent / ARTIFACT_NAME


class InboxError(RuntimeError):
    """The inbox is missing, not ours, or bound to another Umbra chain."""


@dataclass(frozen=True)
class Artifact:
    abi: list[dict[str, Any]]
    bytecode: bytes
    runtime_bytecode: bytes
    compiler: str
    source_sha256: str

    def _entry(self, kind: str, name: str) -> dict[str, Any]:
        for entry in self.abi:
            if entry.get("type") == kind and entry.get("name") == name:
                return entry
        raise InboxError(f"the inbox ABI has no {kind} {name}")

    def signature(self, kind: str, name: str) -> str:
        entry = self._entry(kind, name)
        return f"{name}({','.join(str(i['type']) for i in entry['inputs'])})"

    def selector(self, name: str) -> bytes:
        return keccak256(self.signature("function", name).encode())[:4]

    def topic(self, name: str) -> bytes:
        return keccak256(self.signature("event", name).encode())


@cache
def artifact() -> Artifact:
    """The compiled inbox, checked against the source it claims to come from."""
    if not _ARTIFACT_PATH.is_file():
        raise InboxError(
            f"the compiled inbox contract is missing ({_ARTIFACT_PATH}); it is generated at install "
            "time: run `pip install -e .` (or `make install`) in the repo"
        )
    doc = json.loads(_ARTIFACT_PATH.read_text())
    source = source_path()
    if source.is_file() and hashlib.sha256(source.read_bytes()).hexdigest() != doc["source_sha256"]:
        raise InboxError(
            f"{_ARTIFACT_PATH.name} was compiled from another version of {source.name}; "
            "re-run `pip install -e .` to regenerate it"
        )
    return Artifact(
        abi=list(doc["abi"]),
        bytecode=bytes.fromhex(doc["bytecode"].removeprefix("0x")),
        runtime_bytecode=bytes.fromhex(doc["runtime_bytecode"].removeprefix("0x")),
        compiler=str(doc["compiler"]),
        source_sha256=str(doc["source_sha256"]),
    )


# ---- ABI: every call and event here carries exactly one dynamic `bytes` ----------------------
def _abi_bytes(data: bytes) -> bytes:
    """ABI encoding of a lone `bytes` argument: head (offset 32), length, data zero-padded."""
    padded = data + bytes(-len(data) % 32)
    return (32).to_bytes(32, "big") + len(data).to_bytes(32, "big") + padded


def _abi_unbytes(blob: bytes) -> bytes:
    """Inverse of `_abi_bytes`, strict: anything else is malformed."""
    if len(blob) < 64 or int.from_bytes(blob[:32], "big") != 32:
        raise ValueError("not an ABI-encoded bytes value")
    length = int.from_bytes(blob[32:64], "big")
    if length > len(blob) - 64:
        raise ValueError("ABI bytes length overruns the data")
    return blob[64 : 64 + length]


def encode_batch(raw_txs: list[bytes]) -> bytes:
    return codec.encode(list(raw_txs))


@dataclass(frozen=True)
class BatchDecode:
    txs: list[bytes]
    rejected: int  # entries that are not byte strings, or the whole batch if it is not an array


def decode_batch(data: bytes) -> BatchDecode:
    """The tx byte strings in a posted batch. Anyone can post anything: garbage is counted, not
    raised, and every node counts the same way."""
    try:
        value = codec.decode(data)
    except codec.CodecError:
        return BatchDecode([], 1)
    if not isinstance(value, list):
        return BatchDecode([], 1)
    txs = [bytes(item) for item in value if isinstance(item, bytes)]
    return BatchDecode(txs, len(value) - len(txs))


class Inbox:
    """One deployed inbox, reached through `rpc`."""

    def __init__(self, rpc: EvmRpc, address: bytes) -> None:
        self.rpc = rpc
        self.address = address
        self.art = artifact()
        self.batch_topic = self.art.topic("Batch")
        self.genesis_topic = self.art.topic("Genesis")

    # ---- reads -----------------------------------------------------------------------------
    def _view_word(self, name: str) -> bytes:
        out = self.rpc.eth_call(self.address, self.art.selector(name))
        if len(out) != 32:
            raise InboxError(
                f"{name}() at 0x{self.address.hex()} answered {len(out)} bytes; is this the inbox?"
            )
        return out

    def check_code(self) -> None:
        if self.rpc.code(self.address) != self.art.runtime_bytecode:
            raise InboxError(
                f"0x{self.address.hex()} does not hold the Umbra inbox (its code differs from {self.art.compiler}'s build)"
            )

    def genesis_block(self) -> int:
        """The EVM block the genesis was published in (0: not yet published)."""
        return int.from_bytes(self._view_word("genesis_block"), "big")

    def genesis_hash(self) -> bytes:
        return self._view_word("genesis_hash")

    def fetch_genesis(self) -> tuple[GenesisConfig, int]:
        """The genesis published to this inbox, checked against the hash it stored, and its block."""
        block = self.genesis_block()
        if block == 0:
            raise InboxError(f"the inbox at 0x{self.address.hex()} has no genesis published yet")
        stored = self.genesis_hash()
        for log in self.rpc.logs(self.address, self.genesis_topic, block, block):
            try:
                raw = _abi_unbytes(log.data)
                genesis = GenesisConfig.from_cbor(codec.decode(raw))
            except (ValueError, KeyError, codec.CodecError):
                continue
            if hashlib.sha256(raw).digest() == stored and genesis.hash == stored:
                return genesis, block
        raise InboxError(f"no genesis log matching the stored hash at EVM block {block}")

    def batches(self, logs: list[EvmLog]) -> list[bytes]:
        """The batch payloads of an EVM block's logs, in log order; foreign logs are ignored."""
        out: list[tuple[int, bytes]] = []
        for log in logs:
            if (
                log.removed
                or log.address != self.address
                or not log.topics
                or log.topics[0] != self.batch_topic
            ):
                continue
            try:
                out.append((log.log_index, _abi_unbytes(log.data)))
            except ValueError:
                continue  # our contract never emits this; a broken RPC might
        return [data for _, data in sorted(out)]

    # ---- writes ----------------------------------------------------------------------------
    def submit_data(self, batch: bytes) -> bytes:
        if len(batch) > MAX_BATCH_BYTES:
            raise ValueError(f"a batch is at most {MAX_BATCH_BYTES} bytes, not {len(batch)}")
        return self.art.selector("submit") + _abi_bytes(batch)

    def submit(self, account: EvmAccount, batch: bytes) -> Receipt:
        return account.transact(self.address, self.submit_data(batch))

    def publish_genesis(self, account: EvmAccount, genesis: GenesisConfig) -> Receipt:
        raw = genesis.encode()
        if len(raw) > MAX_GENESIS_BYTES:
            raise InboxError(f"the genesis is {len(raw)} bytes; the inbox takes at most {MAX_GENESIS_BYTES}")
        return account.transact(self.address, self.art.selector("publish_genesis") + _abi_bytes(raw))


def deploy_inbox(account: EvmAccount) -> Inbox:
    """Deploy a fresh inbox from `account` (which becomes the one allowed to publish the genesis)."""
    receipt = account.transact(None, artifact().bytecode)
    if receipt.contract_address is None:
        raise EvmError("the deployment receipt names no contract address")
    inbox = Inbox(account.rpc, receipt.contract_address)
    inbox.check_code()
    return inbox
