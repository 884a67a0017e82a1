"""The runtime: admission (typed refusals), dispatch (atomic, fee-paying failures), balances."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.chain.helpers import (
    ALICE,
    BOB,
    DAVE,
    ENDOWMENT,
    EVE,
    TestChain,
    assert_noop,
    assert_refused,
    events_named,
    make_genesis,
)
from umbra import RUNTIME_VERSION, codec
from umbra.chain.module import Origin
from umbra.chain.modules.balances import TREASURY
from umbra.chain.runtime import AdmissionError, Runtime
from umbra.chain.types import Call, SignedTx, Tx

pytestmark = pytest.mark.timeout(60)

# ---- a transfer that works -----------------------------------------------------------------------


def test_a_transfer_moves_the_amount_and_pays_the_fee_to_the_treasury(chain: TestChain) -> None:
    supply = chain.total_supply()
    outcome = chain.apply_ok(chain.transfer(ALICE, EVE, 250, fee=3))
    assert chain.free(ALICE) == ENDOWMENT - 250 - 3
    assert chain.free(EVE) == 250  # any amount >= 1 creates an account
    assert chain.free(TREASURY) == 3
    assert chain.nonce(ALICE) == 1
    assert events_named(outcome, "balances", "Transfer") == [
        {"source": ALICE.public_key, "dest": EVE.public_key, "amount": 250}
    ]
    assert len(events_named(outcome, "system", "ExtrinsicSuccess")) == 1
    assert chain.total_supply() == supply == chain.total_issuance()


def test_spending_everything_removes_the_account(chain: TestChain) -> None:
    chain.apply_ok(chain.transfer(DAVE, EVE, ENDOWMENT - 1))  # the fee of 1 comes on top
    assert chain.account(DAVE) == {"free": 0, "reserved": 0, "staked": 0}
    assert chain.runtime.balances.accounts.get(chain.state(), DAVE.public_key) is None


def test_a_transfer_to_oneself_costs_only_the_fee(chain: TestChain) -> None:
    chain.apply_ok(chain.transfer(ALICE, ALICE, 1000))
    assert chain.free(ALICE) == ENDOWMENT - 1


def test_nonces_order_several_txs_in_one_block(chain: TestChain) -> None:
    txs = [chain.transfer(ALICE, BOB, 1, nonce=n) for n in range(3)]
    outcome = chain.produce(*txs)
    assert outcome.included == txs and all(r.ok for r in outcome.receipts)
    assert chain.nonce(ALICE) == 3


# ---- admission refusals: typed, never included, nothing changes ----------------------------------


def test_replaying_an_included_tx_is_refused(chain: TestChain) -> None:
    stx = chain.transfer(ALICE, BOB, 10)
    chain.apply_ok(stx)
    assert_refused(chain, stx, code="bad_nonce")
    assert chain.free(BOB) == ENDOWMENT + 10  # applied once


def test_a_tx_for_another_chain_is_refused(chain: TestChain) -> None:
    assert_refused(chain, chain.transfer(ALICE, BOB, 10, chain_id="umbra-other"), code="wrong_chain")


def test_a_tx_signed_by_someone_else_is_refused(chain: TestChain) -> None:
    honest = chain.transfer(ALICE, BOB, 10)
    forged = SignedTx(honest.tx, EVE.sign("umbra/tx/v1", honest.tx.to_cbor()))
    assert_refused(chain, forged, code="bad_signature")


def test_a_tx_whose_body_was_changed_after_signing_is_refused(chain: TestChain) -> None:
    honest = chain.transfer(ALICE, BOB, 10)
    raised = replace(honest.tx, call=Call("balances", "transfer", {"to": BOB.public_key, "amount": 10_000}))
    tampered = SignedTx.decode(codec.encode({"tx": raised.to_cbor(), "sig": honest.signature}))
    assert_refused(chain, tampered, code="bad_signature")


def test_a_signature_for_another_domain_is_refused(chain: TestChain) -> None:
    honest = chain.transfer(ALICE, BOB, 10)
    cross_domain = SignedTx(honest.tx, ALICE.sign("umbra/block/v1", honest.tx.to_cbor()))
    assert_refused(chain, cross_domain, code="bad_signature")


@pytest.mark.parametrize("amount", [ENDOWMENT, ENDOWMENT + 1, 2**100])
def test_an_overdraft_is_refused(chain: TestChain, amount: int) -> None:
    assert_refused(chain, chain.transfer(ALICE, BOB, amount), code="insufficient_funds")


def test_an_unfunded_account_cannot_pay_a_fee(chain: TestChain) -> None:
    assert_refused(chain, chain.transfer(EVE, BOB, 1), code="insufficient_funds")


def test_a_fee_below_the_floor_is_refused(chain: TestChain) -> None:
    assert_refused(chain, chain.transfer(ALICE, BOB, 1, fee=0), code="fee_too_low")


@pytest.mark.parametrize("nonce", [1, 5, 2**64 - 1])
def test_a_nonce_from_the_future_is_not_executed(chain: TestChain, nonce: int) -> None:
    assert_refused(chain, chain.transfer(ALICE, BOB, 1, nonce=nonce), code="bad_nonce")


@pytest.mark.parametrize(
    ("module", "method", "args", "code"),
    [
        ("nope", "transfer", {}, "unknown_call"),
        ("balances", "mint", {}, "unknown_call"),
        ("balances", "transfer_free", {}, "unknown_call"),  # a Python method, not a call
        ("balances", "treasury_spend", {"to": BOB.public_key, "amount": 1}, "bad_origin"),
        ("system", "set_param", {"name": "tx_fee", "value": 0}, "bad_origin"),
        ("council", "set_members", {"members": [ALICE.public_key], "threshold": 1}, "bad_origin"),
        ("balances", "transfer", {"to": BOB.public_key}, "malformed"),
        ("balances", "transfer", {"to": BOB.public_key, "amount": "10"}, "malformed"),
        ("balances", "transfer", {"to": BOB.public_key, "amount": True}, "malformed"),
        ("balances", "transfer", {"to": "0xbob", "amount": 10}, "malformed"),
        ("balances", "transfer", {"to": BOB.public_key, "amount": 1, "memo": "hi"}, "malformed"),
        ("balances", "transfer", {"ctx": None, "to": BOB.public_key, "amount": 1}, "malformed"),
    ],
)
def test_calls_that_cannot_run_are_refused_at_admission(
    chain: TestChain, module: str, method: str, args: dict[str, Any], code: str
) -> None:
    assert_refused(chain, chain.tx(ALICE, module, method, **args), code=code)


def test_admission_counts_what_the_sender_already_has_pending() -> None:
    chain = TestChain.start()
    first = chain.transfer(DAVE, BOB, ENDOWMENT // 2)
    second = chain.transfer(DAVE, BOB, ENDOWMENT // 2, nonce=1)
    runtime, state = chain.runtime, chain.state()
    runtime.check_stateful(state, first, expected_nonce=0)
    with pytest.raises(AdmissionError) as refused:
        runtime.check_stateful(state, second, expected_nonce=1, pending_spend=runtime.spend_of(first))
    assert refused.value.code == "insufficient_funds"


# ---- dispatch failures: included, fee paid, writes undone ----------------------------------------


def test_a_call_that_fails_in_dispatch_is_included_and_pays_its_fee_only(chain: TestChain) -> None:
    supply = chain.total_supply()
    stx = chain.transfer(ALICE, b"\x01" * 5, 10)  # bytes, but not an account id
    outcome = chain.apply(stx)
    (receipt,) = outcome.receipts
    assert (receipt.ok, receipt.error) == (False, "balances.bad_account")
    assert receipt.message
    assert chain.free(ALICE) == ENDOWMENT - 1  # the fee, nothing else
    assert chain.nonce(ALICE) == 1  # the nonce is used: the failed tx cannot be replayed
    assert events_named(outcome, "balances", "Transfer") == []
    (failed,) = events_named(outcome, "system", "ExtrinsicFailed")
    assert failed["error"] == "balances.bad_account"
    assert chain.total_supply() == supply
    assert_refused(chain, stx, code="bad_nonce")


def test_a_crashing_module_fails_the_tx_not_the_node(
    chain: TestChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    balances = chain.runtime.balances
    real_transfer_free = balances.transfer_free

    def half_then_crash(state: Any, source: bytes, dest: bytes, amount: int) -> None:
        if dest == TREASURY:  # the fee is charged before dispatch; let it through
            real_transfer_free(state, source, dest, amount)
            return
        state.set(b"balances/account/" + dest, codec.encode({"free": 10**9, "reserved": 0, "staked": 0}))
        raise ZeroDivisionError("module bug")

    monkeypatch.setattr(balances, "transfer_free", half_then_crash)
    before = chain.free(BOB)
    outcome = chain.apply(chain.transfer(ALICE, BOB, 5))
    assert outcome.receipts[0].error == "system.internal_error"
    assert chain.free(BOB) == before  # the half-done write was rolled back
    assert chain.nonce(ALICE) == 1


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (
            Call("balances", "transfer", {"to": BOB.public_key, "amount": ENDOWMENT + 1}),
            "balances.insufficient_balance",
        ),
        (Call("balances", "transfer", {"to": BOB.public_key, "amount": 0}), "balances.bad_amount"),
        (Call("balances", "transfer", {"to": b"\x02" * 31, "amount": 1}), "balances.bad_account"),
        (Call("balances", "transfer", {"to": BOB.public_key}), "system.malformed_call"),
        (Call("balances", "burn", {}), "system.unknown_call"),
        (Call("balances", "treasury_spend", {"to": ALICE.public_key, "amount": 1}), "system.bad_origin"),
        (Call("system", "set_param", {"name": "tx_fee", "value": 0}), "system.bad_origin"),
        (
            Call("council", "set_members", {"members": [ALICE.public_key], "threshold": 1}),
            "system.bad_origin",
        ),
    ],
)
def test_failing_signed_calls_are_noops(chain: TestChain, call: Call, code: str) -> None:
    assert_noop(chain, call, signer=ALICE, code=code)


def test_council_calls_validate_before_they_write(chain: TestChain) -> None:
    assert_noop(
        chain,
        Call("system", "set_param", {"name": "no_such", "value": 1}),
        origin=Origin.COUNCIL,
        code="system.unknown_param",
    )
    assert_noop(
        chain,
        Call("system", "set_param", {"name": "tx_fee", "value": -1}),
        origin=Origin.COUNCIL,
        code="system.bad_param",
    )
    assert_noop(
        chain,
        Call("balances", "treasury_spend", {"to": EVE.public_key, "amount": 1}),
        origin=Origin.COUNCIL,
        code="balances.insufficient_balance",  # the treasury is empty at genesis
    )
    assert_noop(
        chain,
        Call("council", "set_members", {"members": [ALICE.public_key], "threshold": 2}),
        origin=Origin.COUNCIL,
        code="council.bad_threshold",
    )
    assert_noop(
        chain,
        Call("council", "set_members", {"members": [], "threshold": 1}),
        origin=Origin.COUNCIL,
        code="council.bad_member",
    )


def test_a_signed_origin_is_required_for_signed_calls(chain: TestChain) -> None:
    assert_noop(
        chain,
        Call("balances", "transfer", {"to": BOB.public_key, "amount": 1}),
        origin=Origin.COUNCIL,
        code="system.bad_origin",
    )


# ---- blocks --------------------------------------------------------------------------------------


def test_a_block_holds_at_most_max_block_txs() -> None:
    chain = TestChain.start(make_genesis(params={"max_block_txs": 2}))
    txs = [chain.transfer(ALICE, BOB, 1, nonce=n) for n in range(3)]
    outcome = chain.produce(*txs)
    assert outcome.included == txs[:2]
    assert [(stx, exc.code) for stx, exc in outcome.dropped] == [(txs[2], "mempool_full")]


def test_a_dropped_tx_does_not_disturb_the_others_in_its_block(chain: TestChain) -> None:
    good = chain.transfer(ALICE, BOB, 1)
    overdraft = chain.transfer(DAVE, BOB, ENDOWMENT * 2)
    also_good = chain.transfer(ALICE, BOB, 2, nonce=1)
    outcome = chain.produce(good, overdraft, also_good)
    assert outcome.included == [good, also_good]
    assert [exc.code for _, exc in outcome.dropped] == ["insufficient_funds"]
    assert [r.index for r in outcome.receipts] == [0, 1]


def test_empty_blocks_change_only_bookkeeping(chain: TestChain) -> None:
    accounts_before = dict(chain.runtime.balances.accounts.items(chain.state()))
    chain.produce()
    chain.produce()
    assert dict(chain.runtime.balances.accounts.items(chain.state())) == accounts_before
    assert chain.runtime.system.block_hash(chain.state(), 1) == chain.blocks[1].header.hash


def test_a_runtime_refuses_a_genesis_for_another_runtime_version() -> None:
    with pytest.raises(ValueError, match="refusing to replay"):
        Runtime(replace(make_genesis(), runtime_version=RUNTIME_VERSION + 1))


def test_signed_tx_decoding_is_strict(chain: TestChain) -> None:
    stx = chain.transfer(ALICE, BOB, 1)
    raw = stx.encode()
    assert SignedTx.decode(raw) == stx and SignedTx.decode(raw).hash == stx.hash
    body = stx.tx.to_cbor()
    for bad in (
        codec.encode({"tx": body}),  # no signature
        codec.encode({"tx": body, "sig": stx.signature, "extra": 1}),
        codec.encode({"tx": {**body, "nonce": -1}, "sig": stx.signature}),
        codec.encode({"tx": {**body, "sender": b"\x00" * 31}, "sig": stx.signature}),
        codec.encode({"tx": {**body, "fee": 2**128}, "sig": stx.signature}),
        codec.encode(
            {"tx": {**body, "call": {"module": "balances", "method": "transfer"}}, "sig": stx.signature}
        ),
        codec.encode({"tx": {**body, "call": {**body["call"], "args": {1: 2}}}, "sig": stx.signature}),
        codec.encode({"tx": body, "sig": stx.signature[:63]}),
        raw + b"\x00",
        raw[:-1],
    ):
        with pytest.raises(ValueError):
            SignedTx.decode(bad)


def test_tx_sign_insists_on_the_senders_key() -> None:
    tx = Tx("umbra-test", ALICE.public_key, 0, Call("balances", "transfer", {}), 1)
    with pytest.raises(ValueError):
        tx.sign(BOB)
