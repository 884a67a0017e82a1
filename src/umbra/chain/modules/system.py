"""`system`: account nonces, chain parameters and recent block hashes (frame_system's role)."""

from __future__ import annotations

from typing import Any

from umbra.chain.module import CallContext, Module, ModuleError, Origin, StorageMap, call
from umbra.chain.state import State

__all__ = ["DEFAULT_PARAMS", "System"]

# Every tunable is a genesis parameter; the council may change them with `system.set_param`.
DEFAULT_PARAMS: dict[str, int] = {
    "block_ms": 100,
    "idle_ms": 1000,
    "tx_fee": 1,  # minimum fee per tx, smallest unit
    "max_tx_bytes": 1 << 20,
    "max_block_txs": 5000,
    "max_future_nonces": 256,
    "proposal_ttl_blocks": 14_400,
    "block_hash_history": 256,
    "job_fee": 10,  # paid to the executing workers per replica
    "job_deadline_blocks": 100,
    "min_stake": 0,  # a worker's pool must hold this much for the worker to get jobs
    "unbonding_blocks": 100,
    "withdraw_grace_blocks": 1000,
    "reward_epoch_blocks": 600,
    "reward_budget": 0,  # paid from the treasury each reward epoch (never minted)
    "treasury_cut_ppm": 100_000,  # share of every job fee kept by the treasury
    "slash_missed_deadline": 10,
    "slash_dissent": 1000,
    "slash_refused_results": 100,
    "refusals_before_slash": 3,
}


class SystemError_(ModuleError):
    pass


class System(Module):
    name = "system"
    events = frozenset({"ExtrinsicSuccess", "ExtrinsicFailed", "ParamSet"})
    Error = SystemError_

    nonces = StorageMap("nonce")
    params = StorageMap("param")
    block_hashes = StorageMap("block_hash")

    def genesis(self, state: State, config: Any, params: dict[str, Any]) -> None:
        for name, value in sorted({**DEFAULT_PARAMS, **params}.items()):
            self.params.set(state, name, value)

    # -- interface for the runtime and other modules ---------------------------------------------
    def nonce(self, state: State, account: bytes) -> int:
        value: int = self.nonces.get(state, account, 0)
        return value

    def bump_nonce(self, state: State, account: bytes) -> None:
        self.nonces.set(state, account, self.nonce(state, account) + 1)

    def param(self, state: State, name: str) -> Any:
        """A chain parameter as of the start of the block (changes apply from the next block)."""
        cache: dict[str, Any] = state.memo.setdefault("system.params", {})
        if name not in cache:
            value = self.params.get(state, name)
            if value is None:
                raise KeyError(f"unknown chain parameter {name}")
            cache[name] = value
        return cache[name]

    def record_block_hash(self, state: State, height: int, block_hash: bytes) -> None:
        self.block_hashes.set(state, height, block_hash)
        keep = int(self.param(state, "block_hash_history"))
        if height >= keep:
            self.block_hashes.delete(state, height - keep)

    def block_hash(self, state: State, height: int) -> bytes | None:
        value: bytes | None = self.block_hashes.get(state, height)
        return value

    # -- calls -----------------------------------------------------------------------------------
    @call(origin=Origin.COUNCIL)
    def set_param(self, ctx: CallContext, name: str, value: int) -> None:
        self.ensure(
            self.params.contains(ctx.state, name), "unknown_param", f"no chain parameter named {name!r}"
        )
        self.ensure(value >= 0, "bad_param", "parameters are non-negative integers")
        self.params.set(ctx.state, name, value)
        self.emit(ctx, "ParamSet", name=name, value=value)
