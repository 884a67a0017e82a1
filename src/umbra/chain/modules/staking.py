"""`staking`: stake pools behind workers, rewards, slashing with evidence, reputation.

Each worker has one pool. Its operator owns the pool and sets a commission; anyone may delegate.
Pool funds sit in the pool's own account; delegators hold shares, so rewards and slashes change
the share price and reach every delegator pro rata in O(1). A worker is staked (eligible for
jobs) while its pool holds at least `min_stake`.

Withdrawals never get stuck (the failure Phala's stake pools had): an unbond queues shares,
first in first out. They keep backing the worker until paid, at the share price of the day they
are paid, once the unbonding delay has passed and the pool keeps what its active worker must
have locked (`min_stake`). If the head of the queue has waited `withdraw_grace_blocks` past its
unlock, the worker is stopped, which unlocks the pool's whole stake, so the queue always drains.

Rewards come from the treasury, never from minting, so total supply is conserved:
every `reward_epoch_blocks`, min(`reward_budget`, treasury balance) is shared among the online,
attested, staked workers by weight  w = isqrt(stake² + (2 · jobs · reputation)²)  (Phala's
V/P/share scheme with stake as V and completed work weighted by reputation as P). A pool's
reward pays the owner's commission and raises the share price for the rest.
"""

from __future__ import annotations

import math
from typing import Any

from umbra import codec
from umbra.chain.module import (
    BlockContext,
    CallContext,
    Module,
    ModuleError,
    Origin,
    StorageMap,
    StorageValue,
    call,
)
from umbra.chain.modules.balances import TREASURY, module_account
from umbra.chain.state import State

__all__ = ["Staking", "pool_account"]

PPM = 1_000_000
REPUTATION_START = 500
REPUTATION_MAX = 1000
REPUTATION_DELTA = {"completed": 1, "missed": -25, "dissent": -100, "refused": -10}


class StakingError(ModuleError):
    pass


def pool_account(worker: bytes) -> bytes:
    return module_account("pool/" + worker.hex())


def _amount(args: dict[str, Any]) -> int:
    value = args.get("amount", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class Staking(Module):
    name = "staking"
    events = frozenset(
        {
            "PoolCreated",
            "CommissionSet",
            "Delegated",
            "Unbonded",
            "Withdrawn",
            "WithdrawalQueued",
            "WorkerStopped",
            "WorkerStarted",
            "Rewarded",
            "Slashed",
            "ReputationChanged",
        }
    )
    Error = StakingError

    pools = StorageMap("pool")  # worker -> {owner, commission_ppm, stake, shares, stopped}
    shares = StorageMap("share")  # worker || account -> shares
    queue = StorageMap("queue")  # worker -> [{who, amount, unlock_height}]
    reputation = StorageMap("reputation")  # worker -> score
    epoch_jobs = StorageMap("epoch_jobs")  # worker -> jobs completed this reward epoch
    slashes = StorageMap("slash")  # slash id -> record with evidence
    slash_count = StorageValue("slash_count", 0)
    delegations = StorageMap("delegations")  # account -> [workers]

    # ---- interface -------------------------------------------------------------------------------
    def _params(self, state: State) -> dict[str, int]:
        names = (
            "min_stake",
            "unbonding_blocks",
            "withdraw_grace_blocks",
            "reward_epoch_blocks",
            "reward_budget",
        )
        return {name: int(self.rt.system.param(state, name)) for name in names}

    def pool(self, state: State, worker: bytes) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self.pools.get(state, worker)
        return value

    def is_staked(self, state: State, worker: bytes) -> bool:
        pool = self.pool(state, worker)
        min_stake = self._params(state)["min_stake"]
        if pool is None:
            return min_stake == 0
        return not pool["stopped"] and pool["stake"] >= min_stake

    def score(self, state: State, worker: bytes) -> int:
        value: int = self.reputation.get(state, worker, REPUTATION_START)
        return value

    def staked_value(self, state: State, who: bytes) -> int:
        """What `who`'s shares are worth across pools, plus amounts waiting in withdraw queues."""
        total = 0
        for worker in self.delegations.get(state, who, []):
            pool = self.pool(state, worker)
            if pool is None or not pool["shares"]:
                continue
            held = self.shares.get(state, worker + who, 0)
            held += sum(entry["shares"] for entry in self.queue.get(state, worker, []) if entry["who"] == who)
            total += held * pool["stake"] // pool["shares"]
        return total

    def _locked(self, state: State, pool: dict[str, Any], worker: bytes) -> int:
        """Stake the pool must keep while its worker serves."""
        record = self.rt.registry.worker(state, worker)
        if pool["stopped"] or record is None or record["status"] != "active":
            return 0
        # Below min_stake the worker gets no jobs anyway: nothing is worth holding delegators for.
        min_stake = self._params(state)["min_stake"]
        return min_stake if pool["stake"] >= min_stake else 0

    # ---- calls ---------------------------------------------------------------------------------
    @call()
    def create_pool(self, ctx: CallContext, worker: bytes, commission_ppm: int) -> None:
        owner = ctx.signer()
        self.ensure(
            self.rt.registry.operator_of(ctx.state, worker) == owner,
            "not_operator",
            "only the worker's operator opens its pool",
        )
        self.ensure(not self.pools.contains(ctx.state, worker), "exists", "this worker already has a pool")
        self.ensure(
            0 <= commission_ppm <= PPM, "bad_commission", "commission is 0..1,000,000 parts per million"
        )
        self.pools.set(
            ctx.state,
            worker,
            {"owner": owner, "commission_ppm": commission_ppm, "stake": 0, "shares": 0, "stopped": False},
        )
        self.emit(ctx, "PoolCreated", worker=worker, owner=owner, commission_ppm=commission_ppm)

    @call()
    def set_commission(self, ctx: CallContext, worker: bytes, commission_ppm: int) -> None:
        pool = self._owned(ctx, worker)
        self.ensure(
            0 <= commission_ppm <= PPM, "bad_commission", "commission is 0..1,000,000 parts per million"
        )
        pool["commission_ppm"] = commission_ppm
        self.pools.set(ctx.state, worker, pool)
        self.emit(ctx, "CommissionSet", worker=worker, commission_ppm=commission_ppm)

    def _owned(self, ctx: CallContext, worker: bytes) -> dict[str, Any]:
        pool = self.pool(ctx.state, worker)
        self.ensure(pool is not None, "no_pool", "this worker has no pool")
        assert pool is not None
        self.ensure(pool["owner"] == ctx.signer(), "not_owner", "only the pool owner may do this")
        return pool

    @call(spend=_amount)
    def delegate(self, ctx: CallContext, worker: bytes, amount: int) -> None:
        """Stake `amount` into the worker's pool (its operator's own stake is a delegation too)."""
        who = ctx.signer()
        pool = self.pool(ctx.state, worker)
        self.ensure(pool is not None, "no_pool", "this worker has no pool")
        assert pool is not None
        self.ensure(amount >= 1, "bad_amount", "amount must be at least 1")
        # Shares of a pool slashed to nothing are worthless; new stake must not buy into them
        # at a price that hands it to the old holders.
        self.ensure(
            pool["shares"] == 0 or pool["stake"] > 0,
            "pool_wiped",
            "this pool lost its whole stake to slashes and takes no new stake",
        )
        self.rt.balances.transfer_free(ctx.state, who, pool_account(worker), amount)
        minted = amount if pool["shares"] == 0 else amount * pool["shares"] // pool["stake"]
        self.ensure(minted > 0, "bad_amount", "amount is too small to buy a share")
        pool["stake"] += amount
        pool["shares"] += minted
        self.pools.set(ctx.state, worker, pool)
        self.shares.set(ctx.state, worker + who, self.shares.get(ctx.state, worker + who, 0) + minted)
        mine = self.delegations.get(ctx.state, who, [])
        if worker not in mine:
            self.delegations.set(ctx.state, who, [*mine, worker])
        self.emit(ctx, "Delegated", worker=worker, who=who, amount=amount, shares=minted)
        self._serve_queue(ctx, worker)

    @call()
    def unbond(self, ctx: CallContext, worker: bytes, shares: int) -> None:
        """Queue shares for withdrawal. They keep backing the worker (and share its rewards and
        slashes) until paid at the price of the day they are paid."""
        who = ctx.signer()
        pool = self.pool(ctx.state, worker)
        held = self.shares.get(ctx.state, worker + who, 0)
        self.ensure(pool is not None and held > 0, "no_shares", "you hold no shares in this pool")
        self.ensure(1 <= shares <= held, "bad_shares", f"you can unbond 1..{held} shares")
        if held > shares:
            self.shares.set(ctx.state, worker + who, held - shares)
        else:
            self.shares.delete(ctx.state, worker + who)
        unlock = ctx.height + self._params(ctx.state)["unbonding_blocks"]
        entry = {"who": who, "shares": shares, "unlock_height": unlock}
        self.queue.set(ctx.state, worker, [*self.queue.get(ctx.state, worker, []), entry])
        self.emit(ctx, "Unbonded", worker=worker, who=who, shares=shares, unlock_height=unlock)

    @call()
    def withdraw(self, ctx: CallContext, worker: bytes) -> None:
        """Pay out matured queue entries now (the end-of-block hook does the same for everyone)."""
        ctx.signer()
        self.ensure(self.pools.contains(ctx.state, worker), "no_pool", "this worker has no pool")
        self._serve_queue(ctx, worker)

    @call()
    def stop_worker(self, ctx: CallContext, worker: bytes) -> None:
        """The owner takes the worker out of service, unlocking the pool's stake."""
        pool = self._owned(ctx, worker)
        pool["stopped"] = True
        self.pools.set(ctx.state, worker, pool)
        self.emit(ctx, "WorkerStopped", worker=worker, reason="stopped by its owner")
        self._serve_queue(ctx, worker)

    @call()
    def start_worker(self, ctx: CallContext, worker: bytes) -> None:
        pool = self._owned(ctx, worker)
        pool["stopped"] = False
        self.pools.set(ctx.state, worker, pool)
        self.emit(ctx, "WorkerStarted", worker=worker)

    # ---- queue -------------------------------------------------------------------------------
    def _serve_queue(self, ctx: CallContext | BlockContext, worker: bytes) -> None:
        """Pay matured entries in order while the pool keeps its locked stake; stop the worker
        if the head has waited past the grace period, which unlocks everything."""
        entries = self.queue.get(ctx.state, worker, [])
        if not entries:
            return
        pool = self.pool(ctx.state, worker)
        assert pool is not None
        paid = 0
        for entry in entries:
            amount = entry["shares"] * pool["stake"] // pool["shares"] if pool["shares"] else 0
            if entry["unlock_height"] > ctx.height or pool["stake"] - amount < self._locked(
                ctx.state, pool, worker
            ):
                break
            pool["stake"] -= amount
            pool["shares"] -= entry["shares"]
            if amount:
                self.rt.balances.transfer_free(ctx.state, pool_account(worker), entry["who"], amount)
            paid += 1
            self.emit(ctx, "Withdrawn", worker=worker, who=entry["who"], amount=amount)
        if paid:
            self.pools.set(ctx.state, worker, pool)
        rest = entries[paid:]
        if not rest:
            self.queue.delete(ctx.state, worker)
            return
        self.queue.set(ctx.state, worker, rest)
        grace = self._params(ctx.state)["withdraw_grace_blocks"]
        if rest[0]["unlock_height"] + grace <= ctx.height and not pool["stopped"]:
            pool["stopped"] = True
            self.pools.set(ctx.state, worker, pool)
            self.emit(ctx, "WorkerStopped", worker=worker, reason="withdrawals waited past the grace period")
            self._serve_queue(ctx, worker)

    # ---- rewards, slashes, reputation (interface for compute) ------------------------------------
    def record_outcome(self, ctx: CallContext | BlockContext, worker: bytes, outcome: str) -> None:
        old = self.score(ctx.state, worker)
        new = max(0, min(REPUTATION_MAX, old + REPUTATION_DELTA[outcome]))
        if new != old:
            self.reputation.set(ctx.state, worker, new)
        if outcome == "completed":
            self.epoch_jobs.set(ctx.state, worker, self.epoch_jobs.get(ctx.state, worker, 0) + 1)
        self.emit(ctx, "ReputationChanged", worker=worker, outcome=outcome, score=new)

    def slash(
        self,
        ctx: CallContext | BlockContext,
        worker: bytes,
        amount: int,
        reason: str,
        evidence: dict[str, Any],
        beneficiary: bytes | None = None,
    ) -> int:
        """Take up to `amount` from the worker's pool; half to the beneficiary (the delayed
        requester), the rest to the treasury. The evidence is recorded on chain. Returns the amount."""
        pool = self.pool(ctx.state, worker)
        taken = min(amount, pool["stake"]) if pool is not None else 0
        if pool is not None and taken > 0:
            pool["stake"] -= taken
            self.pools.set(ctx.state, worker, pool)
            to_beneficiary = taken // 2 if beneficiary is not None else 0
            if to_beneficiary:
                self.rt.balances.transfer_free(ctx.state, pool_account(worker), beneficiary, to_beneficiary)  # type: ignore[arg-type]
            self.rt.balances.transfer_free(ctx.state, pool_account(worker), TREASURY, taken - to_beneficiary)
        sid = self.slash_count.get(ctx.state)
        self.slash_count.set(ctx.state, sid + 1)
        record = {
            "worker": worker,
            "amount": taken,
            "reason": reason,
            "evidence": evidence,
            "height": ctx.height,
        }
        self.slashes.set(ctx.state, sid, record)
        self.emit(
            ctx,
            "Slashed",
            slash=sid,
            worker=worker,
            amount=taken,
            reason=reason,
            evidence_hash=codec.sha256(codec.encode(evidence)),
        )
        return taken

    def on_finalize(self, block: BlockContext) -> None:
        for key, _entries in list(self.queue.items(block.state)):
            self._serve_queue(block, key)
        params = self._params(block.state)
        every = params["reward_epoch_blocks"]
        if every <= 0 or block.height % every:
            return
        self._distribute(block, params)

    def _distribute(self, block: BlockContext, params: dict[str, int]) -> None:
        budget = min(params["reward_budget"], self.rt.balances.free(block.state, TREASURY))
        weights: list[tuple[bytes, int]] = []
        for worker in self.rt.registry.worker_ids(block.state):
            pool = self.pool(block.state, worker)
            if pool is None or not self.is_staked(block.state, worker):
                continue
            if not self.rt.registry.is_attested(block.state, worker, block.time_ms):
                continue
            work = 2 * self.epoch_jobs.get(block.state, worker, 0) * self.score(block.state, worker)
            weights.append((worker, math.isqrt(pool["stake"] ** 2 + work**2)))
        for key, _jobs in list(self.epoch_jobs.items(block.state)):  # every count is for this epoch only
            self.epoch_jobs.delete(block.state, key)
        total = sum(w for _, w in weights)
        if budget <= 0 or total == 0:
            return
        for worker, weight in weights:
            reward = budget * weight // total
            if reward:
                self._reward_pool(block, worker, reward)

    def _reward_pool(self, block: BlockContext, worker: bytes, reward: int) -> None:
        pool = self.pool(block.state, worker)
        assert pool is not None
        # A pool without shares has no delegators to credit: its owner takes the whole reward
        # (else the next delegator would buy it for nothing).
        commission = reward if pool["shares"] == 0 else reward * pool["commission_ppm"] // PPM
        self.rt.balances.transfer_free(block.state, TREASURY, pool["owner"], commission)
        self.rt.balances.transfer_free(block.state, TREASURY, pool_account(worker), reward - commission)
        pool["stake"] += reward - commission
        self.pools.set(block.state, worker, pool)
        self.emit(block, "Rewarded", worker=worker, reward=reward, commission=commission)

    @call(origin=Origin.COUNCIL)
    def slash_worker(self, ctx: CallContext, worker: bytes, amount: int, reason: str) -> None:
        """Council-decided slash (for misbehaviour proven off-chain), with the reason recorded."""
        self.ensure(self.pools.contains(ctx.state, worker), "no_pool", "this worker has no pool")
        self.slash(ctx, worker, amount, reason, {"council": True})
