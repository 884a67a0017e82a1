"""council: M-of-N proposals reach privileged calls; nothing else does."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chain.helpers import (
    ALICE,
    BOB,
    CHARLIE,
    DAVE,
    ENDOWMENT,
    EVE,
    TestChain,
    assert_noop,
    assert_refused,
    events_named,
    make_genesis,
)
from umbra.chain.modules.balances import TREASURY
from umbra.chain.runtime import BlockOutcome
from umbra.chain.types import Call

pytestmark = pytest.mark.timeout(60)

SET_FEE = {"module": "system", "method": "set_param", "args": {"name": "tx_fee", "value": 5}}


def propose(chain: TestChain, who: Any, proposal: dict[str, Any] = SET_FEE) -> tuple[int, BlockOutcome]:
    outcome = chain.apply_ok(chain.tx(who, "council", "propose", **proposal))
    (proposed,) = events_named(outcome, "council", "Proposed")
    return int(proposed["proposal"]), outcome


def vote(chain: TestChain, who: Any, proposal: int, aye: bool) -> BlockOutcome:
    return chain.apply_ok(chain.tx(who, "council", "vote", proposal=proposal, aye=aye))


def open_proposals(chain: TestChain) -> list[int]:
    return [int.from_bytes(k, "big") for k, _ in chain.runtime.council.proposals.items(chain.state())]


def test_two_of_three_ayes_execute_a_privileged_call(chain: TestChain) -> None:
    pid, outcome = propose(chain, ALICE)
    assert events_named(outcome, "council", "Voted") == [
        {"proposal": pid, "who": ALICE.public_key, "aye": True}
    ]
    assert chain.param("tx_fee") == 1  # one aye of two needed
    outcome = vote(chain, BOB, pid, True)
    assert events_named(outcome, "council", "Executed") == [
        {"proposal": pid, "ok": True, "error": None, "message": None}
    ]
    assert events_named(outcome, "system", "ParamSet") == [{"name": "tx_fee", "value": 5}]
    assert chain.param("tx_fee") == 5
    assert open_proposals(chain) == []
    assert_refused(chain, chain.transfer(ALICE, BOB, 1, fee=4), code="fee_too_low")
    chain.apply_ok(chain.transfer(ALICE, BOB, 1, fee=5))


def test_the_council_spends_from_the_treasury(chain: TestChain) -> None:
    for _ in range(4):  # fees fill the treasury
        chain.apply_ok(chain.transfer(DAVE, BOB, 1, fee=10))
    assert chain.free(TREASURY) == 40
    supply = chain.total_supply()
    spend = {"module": "balances", "method": "treasury_spend", "args": {"to": EVE.public_key, "amount": 25}}
    pid, _ = propose(chain, CHARLIE, spend)
    vote(chain, ALICE, pid, True)
    assert chain.free(EVE) == 25
    assert chain.free(TREASURY) == 40 - 25 + 2  # the two council txs paid fees too
    assert chain.total_supply() == supply


def test_an_approved_call_that_fails_is_recorded_and_changes_nothing(chain: TestChain) -> None:
    spend = {
        "module": "balances",
        "method": "treasury_spend",
        "args": {"to": EVE.public_key, "amount": 10**9},
    }
    pid, _ = propose(chain, ALICE, spend)
    outcome = vote(chain, BOB, pid, True)  # the vote tx itself succeeds
    (executed,) = events_named(outcome, "council", "Executed")
    assert (executed["ok"], executed["error"]) == (False, "balances.insufficient_balance")
    assert chain.free(EVE) == 0
    assert open_proposals(chain) == []


def test_nays_that_make_the_threshold_impossible_reject_the_proposal(chain: TestChain) -> None:
    pid, _ = propose(chain, ALICE)
    vote(chain, BOB, pid, False)  # 3 members - 1 nay = 2: still reachable
    assert open_proposals(chain) == [pid]
    outcome = vote(chain, CHARLIE, pid, False)  # 3 - 2 = 1 < 2: impossible
    assert events_named(outcome, "council", "Rejected") == [{"proposal": pid}]
    assert events_named(outcome, "council", "Executed") == []
    assert open_proposals(chain) == []
    assert chain.param("tx_fee") == 1
    assert_noop(
        chain,
        Call("council", "vote", {"proposal": pid, "aye": True}),
        signer=BOB,
        code="council.unknown_proposal",
    )


def test_proposals_expire_after_their_ttl() -> None:
    chain = TestChain.start(make_genesis(params={"proposal_ttl_blocks": 3}))
    pid, _ = propose(chain, ALICE)
    created = chain.head.height
    expired: list[dict[str, Any]] = []
    while chain.head.height < created + 3:
        assert open_proposals(chain) == [pid]
        expired = events_named(chain.produce(), "council", "Expired")
    assert chain.head.height == created + 3
    assert expired == [{"proposal": pid}]
    assert open_proposals(chain) == []
    assert_noop(
        chain,
        Call("council", "vote", {"proposal": pid, "aye": True}),
        signer=BOB,
        code="council.unknown_proposal",
    )
    assert chain.param("tx_fee") == 1


def test_non_members_can_neither_propose_nor_vote(chain: TestChain) -> None:
    assert_noop(chain, Call("council", "propose", SET_FEE), signer=DAVE, code="council.not_member")
    pid, _ = propose(chain, ALICE)
    assert_noop(
        chain, Call("council", "vote", {"proposal": pid, "aye": True}), signer=DAVE, code="council.not_member"
    )
    # Through a real tx: included, fee paid, nothing else.
    outcome = chain.apply(chain.tx(DAVE, "council", "vote", proposal=pid, aye=True))
    assert outcome.receipts[0].error == "council.not_member"
    assert chain.param("tx_fee") == 1
    assert open_proposals(chain) == [pid]


def test_a_member_votes_once(chain: TestChain) -> None:
    pid, _ = propose(chain, ALICE)
    assert_noop(
        chain,
        Call("council", "vote", {"proposal": pid, "aye": True}),
        signer=ALICE,
        code="council.already_voted",
    )
    assert_noop(
        chain,
        Call("council", "vote", {"proposal": pid, "aye": False}),
        signer=ALICE,
        code="council.already_voted",
    )


@pytest.mark.parametrize(
    ("proposal", "code"),
    [
        (
            {"module": "balances", "method": "transfer", "args": {"to": BOB.public_key, "amount": 1}},
            "council.not_privileged",
        ),
        ({"module": "council", "method": "propose", "args": SET_FEE}, "council.not_privileged"),
        ({"module": "balances", "method": "print_money", "args": {}}, "council.unknown_call"),
        ({"module": "system", "method": "set_param", "args": {"name": "tx_fee"}}, "council.bad_args"),
        (
            {"module": "system", "method": "set_param", "args": {"name": "tx_fee", "value": "5"}},
            "council.bad_args",
        ),
    ],
)
def test_only_well_formed_privileged_calls_can_be_proposed(
    chain: TestChain, proposal: dict[str, Any], code: str
) -> None:
    assert_noop(chain, Call("council", "propose", proposal), signer=ALICE, code=code)


@pytest.mark.parametrize("proposal", [7, -1, 2**64, 2**200])
def test_voting_on_a_proposal_that_does_not_exist_is_a_typed_refusal(chain: TestChain, proposal: int) -> None:
    assert_noop(
        chain,
        Call("council", "vote", {"proposal": proposal, "aye": True}),
        signer=ALICE,
        code="council.unknown_proposal",
    )


def test_privileged_calls_sent_directly_are_refused(chain: TestChain) -> None:
    direct_calls: list[tuple[str, str, dict[str, Any]]] = [
        ("system", "set_param", {"name": "tx_fee", "value": 0}),
        ("balances", "treasury_spend", {"to": ALICE.public_key, "amount": 1}),
        ("council", "set_members", {"members": [ALICE.public_key], "threshold": 1}),
    ]
    for module, method, args in direct_calls:
        assert_refused(chain, chain.tx(ALICE, module, method, **args), code="bad_origin")  # admission
        assert_noop(chain, Call(module, method, args), signer=ALICE, code="system.bad_origin")  # dispatch


def test_the_council_can_replace_itself(chain: TestChain) -> None:
    new_council = {
        "module": "council",
        "method": "set_members",
        "args": {"members": [DAVE.public_key], "threshold": 1},
    }
    pid, _ = propose(chain, ALICE, new_council)
    outcome = vote(chain, CHARLIE, pid, True)
    assert events_named(outcome, "council", "MembersSet") == [{"members": [DAVE.public_key], "threshold": 1}]
    assert_noop(chain, Call("council", "propose", SET_FEE), signer=ALICE, code="council.not_member")
    propose(chain, DAVE)  # 1 of 1: executes at once
    assert chain.param("tx_fee") == 5
    assert chain.free(DAVE) == ENDOWMENT - 1  # one tx, one fee


def test_an_approved_spend_comes_from_the_treasury_not_from_the_voters(chain: TestChain) -> None:
    spend = {"module": "balances", "method": "treasury_spend", "args": {"to": BOB.public_key, "amount": 2}}
    chain.apply_ok(chain.transfer(DAVE, EVE, 1, fee=3))
    bob_before, treasury_before = chain.free(BOB), chain.free(TREASURY)
    pid, _ = propose(chain, ALICE, spend)
    vote(chain, BOB, pid, True)
    assert chain.free(BOB) == bob_before - 1 + 2  # paid its vote fee, received the spend
    assert chain.free(TREASURY) == treasury_before + 2 - 2  # two fees in, the spend out
