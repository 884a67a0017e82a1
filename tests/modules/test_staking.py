"""staking: pools and shares, commission, the unbonding queue with its min_stake lock and grace
stop, treasury-funded epoch rewards by the documented weight, and slashes through the share price."""

from __future__ import annotations

import math

import pytest

from tests.modules.net import (
    COUNCIL,
    OP1,
    OP2,
    OP3,
    USER,
    USER2,
    Net,
    SimWorker,
    all_events,
    assert_noop,
    events_named,
    make_worker,
    supply_conserved,
)
from umbra.chain.modules.balances import TREASURY
from umbra.chain.modules.staking import pool_account

QUEUE_PARAMS = {"unbonding_blocks": 10, "withdraw_grace_blocks": 20, "min_stake": 1_000}


def pooled(net: Net, *workers: SimWorker) -> SimWorker:
    gatekeeper = net.bootstrap(*workers)
    return gatekeeper


def slash(net: Net, worker: SimWorker, amount: int) -> None:
    net.council("staking", "slash_worker", worker=worker.id, amount=amount, reason="test")


def next_epoch(net: Net) -> int:
    every = int(net.param("reward_epoch_blocks"))
    return (net.height // every + 1) * every


def test_pools_and_commission(net: Net) -> None:
    w1 = make_worker("w1", OP1)
    pooled(net, w1)
    assert_noop(
        net, USER, "staking", "create_pool", code="staking.not_operator", worker=w1.id, commission_ppm=0
    )
    assert_noop(
        net,
        OP1,
        "staking",
        "create_pool",
        code="staking.bad_commission",
        worker=w1.id,
        commission_ppm=1_000_001,
    )
    assert_noop(net, USER, "staking", "delegate", code="staking.no_pool", worker=w1.id, amount=5)
    outcome = net.ok(OP1, "staking", "create_pool", worker=w1.id, commission_ppm=50_000)
    assert events_named(outcome, "staking", "PoolCreated") == [
        {"worker": w1.id, "owner": OP1.public_key, "commission_ppm": 50_000}
    ]
    assert_noop(net, OP1, "staking", "create_pool", code="staking.exists", worker=w1.id, commission_ppm=0)
    assert_noop(
        net, USER, "staking", "set_commission", code="staking.not_owner", worker=w1.id, commission_ppm=0
    )
    net.ok(OP1, "staking", "set_commission", worker=w1.id, commission_ppm=100_000)
    assert net.pool(w1) == {
        "owner": OP1.public_key,
        "commission_ppm": 100_000,
        "stake": 0,
        "shares": 0,
        "stopped": False,
    }
    assert_noop(net, USER, "staking", "delegate", code="staking.bad_amount", worker=w1.id, amount=0)


def test_delegate_mints_shares_at_the_pool_price(net: Net) -> None:
    w1 = make_worker("w1", OP1)
    pooled(net, w1)
    with supply_conserved(net):
        net.stake(w1, 1_000)
        outcome = net.ok(USER, "staking", "delegate", worker=w1.id, amount=500)
        assert events_named(outcome, "staking", "Delegated") == [
            {"worker": w1.id, "who": USER.public_key, "amount": 500, "shares": 500}
        ]
        slash(net, w1, 300)  # price 1200 / 1500
        outcome = net.ok(USER2, "staking", "delegate", worker=w1.id, amount=400)
        assert events_named(outcome, "staking", "Delegated")[0]["shares"] == 500
        assert net.pool(w1) == {**net.pool(w1), "stake": 1_600, "shares": 2_000}  # type: ignore[dict-item]
        assert net.free(pool_account(w1.id)) == 1_600
        assert (net.staked_value(OP1), net.staked_value(USER), net.staked_value(USER2)) == (800, 400, 400)
        assert net.runtime.staking.delegations.get(net.state(), USER.public_key) == [w1.id]


def test_unbond_waits_for_the_unbonding_delay_then_pays() -> None:
    net = Net.create(params={"unbonding_blocks": 10})
    w1 = make_worker("w1", OP1)
    pooled(net, w1)
    net.stake(w1, 1_000)
    net.ok(USER, "staking", "delegate", worker=w1.id, amount=1_000)
    assert_noop(net, USER2, "staking", "unbond", code="staking.no_shares", worker=w1.id, shares=1)
    assert_noop(net, USER, "staking", "unbond", code="staking.bad_shares", worker=w1.id, shares=1_001)
    with supply_conserved(net):
        free = net.free(USER)
        outcome = net.ok(USER, "staking", "unbond", worker=w1.id, shares=400)
        (unbonded,) = events_named(outcome, "staking", "Unbonded")
        assert unbonded == {
            "worker": w1.id,
            "who": USER.public_key,
            "shares": 400,
            "unlock_height": net.height + 10,
        }
        assert net.staked_value(USER) == 1_000  # queued shares still count (and still back the worker)
        outcomes = [net.produce()]
        net.ok(USER, "staking", "withdraw", worker=w1.id)  # too early: nothing moves
        while net.height < unbonded["unlock_height"] - 1:
            outcomes.append(net.produce())
        assert all_events(outcomes, "staking", "Withdrawn") == []
        assert net.free(USER) == free - 2
        outcome = net.produce()  # the end-of-block hook pays matured entries for everyone
        assert events_named(outcome, "staking", "Withdrawn") == [
            {"worker": w1.id, "who": USER.public_key, "amount": 400}
        ]
        assert net.free(USER) == free - 2 + 400
        assert net.staked_value(USER) == 600
        assert net.runtime.staking.queue.get(net.state(), w1.id) is None
        assert net.pool(w1)["stake"] == 1_600  # type: ignore[index]


def test_the_min_stake_lock_holds_until_the_grace_period_stops_the_worker() -> None:
    net = Net.create(params=QUEUE_PARAMS)
    w1 = make_worker("w1", OP1)
    pooled(net, w1)
    net.stake(w1, 1_000)
    net.ok(USER, "staking", "delegate", worker=w1.id, amount=500)
    assert net.eligible(w1)
    with supply_conserved(net):
        net.ok(USER, "staking", "unbond", worker=w1.id, shares=500)  # leaves 1000: fine
        net.ok(OP1, "staking", "unbond", worker=w1.id, shares=600)  # would leave 400 < min_stake
        entries = net.runtime.staking.queue.get(net.state(), w1.id)
        user_unlock, owner_unlock = (e["unlock_height"] for e in entries)
        outcomes = net.advance_to(user_unlock)
        assert [e["who"] for e in all_events(outcomes, "staking", "Withdrawn")] == [USER.public_key]
        outcomes = net.advance_to(owner_unlock + 19)
        assert all_events(outcomes, "staking", "Withdrawn") == []  # locked while the worker serves
        assert net.eligible(w1)
        outcome = net.produce()  # the head has waited the whole grace period
        assert events_named(outcome, "staking", "WorkerStopped") == [
            {"worker": w1.id, "reason": "withdrawals waited past the grace period"}
        ]
        assert events_named(outcome, "staking", "Withdrawn") == [
            {"worker": w1.id, "who": OP1.public_key, "amount": 600}
        ]
        assert net.pool(w1)["stopped"] is True  # type: ignore[index]
        assert not net.eligible(w1)
        job = net.request(USER, net.deploy())
        assert net.job(job)["status"] == "queued"  # a stopped worker gets no jobs


def test_the_queue_is_served_in_order() -> None:
    net = Net.create(params=QUEUE_PARAMS)
    w1 = make_worker("w1", OP1)
    pooled(net, w1)
    net.stake(w1, 1_000)
    net.ok(USER, "staking", "delegate", worker=w1.id, amount=200)
    net.ok(USER2, "staking", "delegate", worker=w1.id, amount=100)
    net.ok(OP1, "staking", "unbond", worker=w1.id, shares=400)  # 1300 - 400 < 1000: blocked
    net.ok(USER, "staking", "unbond", worker=w1.id, shares=200)  # would fit, but waits its turn
    head_unlock = net.runtime.staking.queue.get(net.state(), w1.id)[0]["unlock_height"]
    outcomes = net.advance_to(head_unlock + 5)
    assert all_events(outcomes, "staking", "Withdrawn") == []
    net.ok(USER, "staking", "withdraw", worker=w1.id)
    assert len(net.runtime.staking.queue.get(net.state(), w1.id)) == 2
    outcomes = net.advance_to(head_unlock + 20)
    assert [(e["who"], e["amount"]) for e in all_events(outcomes, "staking", "Withdrawn")] == [
        (OP1.public_key, 400),
        (USER.public_key, 200),
    ]
    # the owner can put the worker back once it is backed again
    net.ok(OP1, "staking", "start_worker", worker=w1.id)
    assert net.eligible(w1) is False  # 700 < min_stake
    net.ok(OP1, "staking", "delegate", worker=w1.id, amount=300)
    assert net.eligible(w1)


def test_rewards_follow_the_weight_formula_and_commission() -> None:
    net = Net.create(params={"reward_epoch_blocks": 30, "reward_budget": 10_000, "job_fee": 10})
    w1, w2, w3 = make_worker("w1", OP1), make_worker("w2", OP2), make_worker("w3", OP3)
    pooled(net, w1, w2, w3)
    net.stake(w1, 3_000, commission_ppm=100_000)
    net.stake(w2, 4_000)
    net.stake(w3, 5_000)
    net.ok(USER, "staking", "delegate", worker=w1.id, amount=1_000)
    net.council("registry", "revoke_worker", worker=w3.id)  # not attested: no reward
    net.advance_to(next_epoch(net))  # start from a clean epoch
    contract = net.deploy()
    for i in range(2):
        job = net.request(USER, contract)
        worker = w1 if w1.id in net.job(job)["workers"] else w2
        net.submit(worker, job, new_state=f"s{i}".encode())
    jobs = {w.id: net.runtime.staking.epoch_jobs.get(net.state(), w.id, 0) for w in (w1, w2)}
    assert sum(jobs.values()) == 2
    net.apply_ok(net.transfer(USER2, USER2, 1, fee=50_000))  # a fat fee fills the treasury
    with supply_conserved(net):
        treasury = net.free(TREASURY)
        stakes = {w.id: net.pool(w)["stake"] for w in (w1, w2)}  # type: ignore[index]
        weights = {
            wid: math.isqrt(
                stakes[wid] ** 2 + (2 * jobs[wid] * net.runtime.staking.score(net.state(), wid)) ** 2
            )
            for wid in stakes
        }
        op1 = net.free(OP1)
        outcomes = net.advance_to(next_epoch(net))
        rewarded = {e["worker"]: e for e in all_events(outcomes, "staking", "Rewarded")}
        assert set(rewarded) == {w1.id, w2.id}
        total = sum(weights.values())
        for wid, weight in weights.items():
            assert rewarded[wid]["reward"] == 10_000 * weight // total
        assert rewarded[w1.id]["commission"] == rewarded[w1.id]["reward"] // 10
        assert rewarded[w2.id]["commission"] == 0
        paid = sum(e["reward"] for e in rewarded.values())
        assert net.free(TREASURY) == treasury - paid
        assert net.free(OP1) == op1 + rewarded[w1.id]["commission"]
        assert (
            net.pool(w1)["stake"] == stakes[w1.id] + rewarded[w1.id]["reward"] - rewarded[w1.id]["commission"]
        )  # type: ignore[index]
        assert net.free(pool_account(w1.id)) == net.pool(w1)["stake"]  # type: ignore[index]
        # delegators share pro rata through the price: USER holds a quarter of w1's pool
        assert net.staked_value(USER) == net.pool(w1)["stake"] // 4  # type: ignore[index]
        assert list(net.runtime.staking.epoch_jobs.items(net.state())) == []


def test_rewards_never_exceed_the_treasury() -> None:
    net = Net.create(params={"reward_epoch_blocks": 10, "reward_budget": 10**12})
    w1 = make_worker("w1", OP1)
    pooled(net, w1)
    net.stake(w1, 1_000)
    net.advance_to(next_epoch(net) - 1)
    treasury = net.free(TREASURY)
    outcome = net.produce()
    (rewarded,) = events_named(outcome, "staking", "Rewarded")
    assert rewarded["reward"] == treasury and net.free(TREASURY) == 0


def test_a_pool_without_shares_pays_its_reward_to_the_owner() -> None:
    net = Net.create(params={"reward_epoch_blocks": 10, "reward_budget": 100})
    w1 = make_worker("w1", OP1)
    pooled(net, w1)
    net.ok(OP1, "staking", "create_pool", worker=w1.id, commission_ppm=0)
    contract = net.deploy()
    net.submit(w1, net.request(USER, contract))  # some work, so the weight is not zero
    net.apply_ok(net.transfer(USER2, USER2, 1, fee=1_000))
    before = net.free(OP1)
    outcomes = net.advance_to(next_epoch(net))
    (rewarded,) = all_events(outcomes, "staking", "Rewarded")
    assert rewarded["commission"] == rewarded["reward"] == 100
    assert net.free(OP1) == before + 100
    assert net.pool(w1)["stake"] == 0  # type: ignore[index]
    net.ok(USER, "staking", "delegate", worker=w1.id, amount=10)
    assert net.staked_value(USER) == 10  # nothing to capture


def test_slashes_reach_every_holder_pro_rata_queued_shares_included() -> None:
    net = Net.create(params={"unbonding_blocks": 5})
    w1 = make_worker("w1", OP1)
    pooled(net, w1)
    net.stake(w1, 1_000)
    net.ok(USER, "staking", "delegate", worker=w1.id, amount=3_000)
    net.ok(USER, "staking", "unbond", worker=w1.id, shares=1_000)
    with supply_conserved(net):
        treasury = net.free(TREASURY)
        outcome = net.council(
            "staking", "slash_worker", worker=w1.id, amount=400, reason="proven misbehaviour"
        )
        (slashed,) = events_named(outcome, "staking", "Slashed")
        assert (slashed["amount"], slashed["reason"]) == (400, "proven misbehaviour")
        assert net.runtime.staking.slashes.get(net.state(), slashed["slash"])["evidence"] == {"council": True}
        assert net.free(TREASURY) == treasury + 400 + 1
        assert (net.staked_value(OP1), net.staked_value(USER)) == (900, 2_700)
        outcomes = net.advance(6)
        assert [e["amount"] for e in all_events(outcomes, "staking", "Withdrawn")] == [900]
    # a slash bigger than the pool takes what there is
    outcome = net.council("staking", "slash_worker", worker=w1.id, amount=10**9, reason="all of it")
    assert events_named(outcome, "staking", "Slashed")[0]["amount"] == 2_700
    assert net.pool(w1)["stake"] == 0 and net.staked_value(USER) == 0  # type: ignore[index]
    # the wiped pool's shares are worthless: new stake would be handed to their holders
    assert_noop(net, USER2, "staking", "delegate", code="staking.pool_wiped", worker=w1.id, amount=1_000)


@pytest.mark.parametrize("who", ["owner", "stranger"])
def test_stop_and_start_are_for_the_owner(net: Net, who: str) -> None:
    w1 = make_worker("w1", OP1)
    pooled(net, w1)
    net.stake(w1, 10)
    signer = OP1 if who == "owner" else COUNCIL
    if who == "owner":
        net.ok(signer, "staking", "stop_worker", worker=w1.id)
        assert not net.eligible(w1)
        net.ok(signer, "staking", "start_worker", worker=w1.id)
        assert net.eligible(w1)
    else:
        assert_noop(net, signer, "staking", "stop_worker", code="staking.not_owner", worker=w1.id)


def test_a_pool_already_below_min_stake_locks_nothing() -> None:
    net = Net.create(params=QUEUE_PARAMS)
    w1 = make_worker("w1", OP1)
    pooled(net, w1)
    net.stake(w1, 1_000)
    net.ok(USER, "staking", "delegate", worker=w1.id, amount=200)
    slash(net, w1, 600)  # 600 left: the worker is out of service
    assert not net.eligible(w1)
    net.ok(USER, "staking", "unbond", worker=w1.id, shares=200)
    unlock = net.runtime.staking.queue.get(net.state(), w1.id)[0]["unlock_height"]
    outcomes = net.advance_to(unlock)
    assert [(e["who"], e["amount"]) for e in all_events(outcomes, "staking", "Withdrawn")] == [
        (USER.public_key, 100)
    ]
    assert all_events(outcomes, "staking", "WorkerStopped") == []  # no grace period needed
