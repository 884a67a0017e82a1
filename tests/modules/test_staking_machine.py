"""A stateful property test of staking: random stake, delegate, unbond, withdraw, slash, reward,
fee and job traffic over real blocks.

After every step: total supply equals the genesis issuance (free + reserved + staked over every
account, module accounts included), no balance is negative, and each pool's books hold (its
account covers its stake; its shares are exactly those held plus those queued). At the end the
machine drives the chain to quiescence, past the unbonding delay and the grace period, and every
withdraw queue must have drained: a withdrawal always completes once its stake is free.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.modules.net import OP1, OP2, OP3, USER, USER2, Net, SimWorker, events_named, make_worker
from umbra.chain.modules.staking import pool_account

PARAMS = {
    "unbonding_blocks": 3,
    "withdraw_grace_blocks": 4,
    "reward_epoch_blocks": 5,
    "reward_budget": 150,
    "min_stake": 300,
    "job_fee": 20,
    "slash_missed_deadline": 40,
    "job_deadline_blocks": 4,
}
OPERATORS = (OP1, OP2, OP3)
ACCOUNTS = (OP1, OP2, OP3, USER, USER2)
WORKERS = tuple(make_worker(f"m{i}", op) for i, op in enumerate(OPERATORS, 1))

workers = st.sampled_from(WORKERS)
accounts = st.sampled_from(ACCOUNTS)
amounts = st.integers(min_value=1, max_value=2_000)


class StakingMachine(RuleBasedStateMachine):
    net: Net

    @initialize()
    def start(self) -> None:
        self.net = Net.create(params=PARAMS, registry={"missed_heartbeats": 10**6})
        self.net.bootstrap(*WORKERS)
        self.contract = self.net.deploy()
        self.issuance = self.net.total_issuance()
        self.jobs: list[bytes] = []

    # ---- helpers ------------------------------------------------------------------------------
    def call(self, signer: Any, module: str, method: str, allowed: tuple[str, ...] = (), **args: Any) -> bool:
        outcome = self.net.apply(self.net.tx(signer, module, method, **args))
        (receipt,) = outcome.receipts
        assert receipt.ok or receipt.error in allowed, (module, method, receipt.error, receipt.message)
        return receipt.ok

    def delegate_error(self, worker: SimWorker, amount: int) -> str | None:
        pool = self.net.pool(worker)
        if pool is None:
            return "staking.no_pool"
        if pool["shares"] and not pool["stake"]:
            return "staking.pool_wiped"
        if pool["shares"] and amount * pool["shares"] // pool["stake"] == 0:
            return "staking.bad_amount"
        return None

    # ---- rules --------------------------------------------------------------------------------
    @rule(worker=workers, amount=amounts, commission=st.sampled_from([0, 50_000, 1_000_000]))
    def stake(self, worker: SimWorker, amount: int, commission: int) -> None:
        if self.net.pool(worker) is None:
            self.call(worker.operator, "staking", "create_pool", worker=worker.id, commission_ppm=commission)
        self.delegate(worker.operator, worker, amount)

    @rule(who=accounts, worker=workers, amount=amounts)
    def delegate(self, who: Any, worker: SimWorker, amount: int) -> None:
        expected = self.delegate_error(worker, amount)
        ok = self.call(
            who, "staking", "delegate", (expected,) if expected else (), worker=worker.id, amount=amount
        )
        assert ok == (expected is None)

    @rule(pick=st.integers(min_value=0, max_value=1_000), part=st.integers(min_value=1, max_value=4))
    def unbond(self, pick: int, part: int) -> None:
        state = self.net.state()
        holdings = [
            (who, worker, held)
            for worker in WORKERS
            for who in ACCOUNTS
            if (held := self.net.runtime.staking.shares.get(state, worker.id + who.public_key, 0))
        ]
        if not holdings:
            return
        who, worker, held = holdings[pick % len(holdings)]
        self.call(who, "staking", "unbond", worker=worker.id, shares=max(1, held * part // 4))

    @rule(who=accounts, worker=workers)
    def withdraw(self, who: Any, worker: SimWorker) -> None:
        if self.net.pool(worker) is not None:
            self.call(who, "staking", "withdraw", worker=worker.id)

    @rule(worker=workers, amount=st.integers(min_value=1, max_value=3_000))
    def slash(self, worker: SimWorker, amount: int) -> None:
        if self.net.pool(worker) is not None:
            self.net.council("staking", "slash_worker", worker=worker.id, amount=amount, reason="machine")

    @rule(fee=st.integers(min_value=1, max_value=500))
    def pay_fees(self, fee: int) -> None:
        """Fees fill the treasury that rewards are paid from."""
        self.net.apply_ok(self.net.transfer(USER2, USER, 1, fee=fee))

    @rule()
    def reward(self) -> None:
        every = PARAMS["reward_epoch_blocks"]
        self.net.advance_to((self.net.height // every + 1) * every)

    @rule(blocks=st.integers(min_value=1, max_value=6))
    def advance(self, blocks: int) -> None:
        self.net.advance(blocks)

    @rule(answer=st.booleans())
    def job(self, answer: bool) -> None:
        """A job for whichever worker is eligible; answered (pays fees, counts work) or left to
        miss its deadline (reassigned, slashed)."""
        self.jobs.append(self.net.request(USER, self.contract))
        if not answer:
            return
        for job in self.jobs:
            record = self.net.job(job)
            if record["status"] != "assigned":
                continue
            for wid in record["workers"]:
                worker = next(w for w in WORKERS if w.id == wid)
                if self.net.runtime.registry.is_attested(self.net.state(), wid, self.net.head.time_ms + 100):
                    outcome = self.net.submit(worker, job, new_state=job)
                    assert events_named(outcome, "compute", "ResultRefused") == []

    @rule(worker=workers)
    def heartbeat(self, worker: SimWorker) -> None:
        self.net.heartbeat(worker)

    # ---- invariants ---------------------------------------------------------------------------
    @invariant()
    def supply_is_conserved_and_nothing_is_negative(self) -> None:
        net = self.net
        total = 0
        for _, acct in net.runtime.balances.accounts.items(net.state()):
            assert min(acct.values()) >= 0, acct
            total += acct["free"] + acct["reserved"] + acct["staked"]
        assert total == self.issuance == net.total_issuance()

    @invariant()
    def pool_books_balance(self) -> None:
        net, staking = self.net, self.net.runtime.staking
        state = net.state()
        for worker in WORKERS:
            pool = staking.pool(state, worker.id)
            if pool is None:
                continue
            assert pool["stake"] >= 0 and pool["shares"] >= 0
            assert net.free(pool_account(worker.id)) >= pool["stake"]
            held = sum(shares for _, shares in staking.shares.items_with_prefix(state, worker.id))
            queued = sum(e["shares"] for e in staking.queue.get(state, worker.id, []))
            assert pool["shares"] == held + queued, (pool, held, queued)
        owed = sum(net.staked_value(who) for who in ACCOUNTS)
        assert owed <= sum(p["stake"] for w in WORKERS if (p := staking.pool(state, w.id)) is not None)

    @invariant()
    def no_withdrawal_waits_past_its_grace(self) -> None:
        net = self.net
        for _, entries in net.runtime.staking.queue.items(net.state()):
            for entry in entries:
                assert entry["unlock_height"] + PARAMS["withdraw_grace_blocks"] > net.height, entry

    def teardown(self) -> None:
        if not hasattr(self, "net"):
            return
        net, staking = self.net, self.net.runtime.staking
        net.advance(PARAMS["unbonding_blocks"] + PARAMS["withdraw_grace_blocks"] + 2)
        assert list(staking.queue.items(net.state())) == [], "a withdrawal is stuck"
        self.supply_is_conserved_and_nothing_is_negative()
        self.pool_books_balance()


StakingMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestStakingMachine = StakingMachine.TestCase
