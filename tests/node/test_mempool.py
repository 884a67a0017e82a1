"""The mempool: stateful admission (nonce window, pending spend, capacity) and block selection."""

from __future__ import annotations

import pytest

from tests.chain.helpers import ALICE, BOB, DAVE, ENDOWMENT, EVE, TestChain
from umbra.chain.runtime import AdmissionError
from umbra.ordering.mempool import Mempool


def refusal(pool: Mempool, stx: object) -> str:
    with pytest.raises(AdmissionError) as refused:
        pool.admit(stx)  # type: ignore[arg-type]
    assert refused.value.message
    return refused.value.code


@pytest.fixture
def chain() -> TestChain:
    return TestChain.start()


@pytest.fixture
def pool(chain: TestChain) -> Mempool:
    return Mempool(chain.runtime, chain.backend, capacity=10)


def test_admitted_txs_come_out_in_nonce_order(chain: TestChain, pool: Mempool) -> None:
    txs = [chain.transfer(ALICE, BOB, 1, nonce=n) for n in range(3)]
    for stx in txs:
        pool.admit(stx)
    assert len(pool) == 3 and txs[1].hash in pool and pool.ready.is_set()
    assert pool.take(10) == txs
    assert pool.take(2) == txs[:2]


def test_txs_arriving_out_of_order_are_all_admitted(chain: TestChain, pool: Mempool) -> None:
    """Clients that submit concurrently race: nonce 1 may reach the node before nonce 0."""
    later, first = chain.transfer(ALICE, BOB, 1, nonce=1), chain.transfer(ALICE, BOB, 1, nonce=0)
    pool.admit(later)
    assert pool.take(10) == []  # nothing ready: nonce 0 is missing
    pool.admit(first)
    assert pool.take(10) == [first, later]


def test_a_gap_holds_back_only_the_txs_after_it(chain: TestChain, pool: Mempool) -> None:
    zero, two = chain.transfer(ALICE, BOB, 1, nonce=0), chain.transfer(ALICE, BOB, 1, nonce=2)
    dave = chain.transfer(DAVE, BOB, 1)
    for stx in (two, zero, dave):
        pool.admit(stx)
    assert pool.take(10) == [zero, dave]
    pool.admit(chain.transfer(ALICE, BOB, 1, nonce=1))
    assert [stx.tx.nonce for stx in pool.take(10) if stx.tx.sender == ALICE.public_key] == [0, 1, 2]


def test_nonces_outside_the_window_are_refused(chain: TestChain, pool: Mempool) -> None:
    window = int(chain.param("max_future_nonces"))
    assert refusal(pool, chain.transfer(ALICE, BOB, 1, nonce=window)) == "bad_nonce"
    pool.admit(chain.transfer(ALICE, BOB, 1, nonce=window - 1))
    chain.apply_ok(chain.transfer(DAVE, BOB, 1))
    assert refusal(pool, chain.transfer(DAVE, BOB, 1, nonce=0)) == "bad_nonce"  # already used


def test_duplicates_are_refused(chain: TestChain, pool: Mempool) -> None:
    stx = chain.transfer(ALICE, BOB, 1)
    pool.admit(stx)
    assert refusal(pool, stx) == "duplicate"
    assert refusal(pool, chain.transfer(ALICE, BOB, 2)) == "duplicate"  # another tx, same nonce


def test_pending_spend_counts_against_the_balance(chain: TestChain, pool: Mempool) -> None:
    pool.admit(chain.transfer(DAVE, BOB, ENDOWMENT // 2))
    assert refusal(pool, chain.transfer(DAVE, BOB, ENDOWMENT // 2, nonce=1)) == "insufficient_funds"
    pool.admit(chain.transfer(DAVE, BOB, ENDOWMENT // 2 - 2, nonce=1))  # exactly what is left after fees
    assert refusal(pool, chain.transfer(EVE, BOB, 1)) == "insufficient_funds"


def test_a_full_pool_refuses_with_a_retryable_code(chain: TestChain) -> None:
    pool = Mempool(chain.runtime, chain.backend, capacity=2)
    pool.admit(chain.transfer(ALICE, BOB, 1, nonce=0))
    pool.admit(chain.transfer(ALICE, BOB, 1, nonce=1))
    assert refusal(pool, chain.transfer(DAVE, BOB, 1)) == "mempool_full"


def test_remove_forgets_included_and_stale_txs(chain: TestChain, pool: Mempool) -> None:
    txs = [chain.transfer(ALICE, BOB, 1, nonce=n) for n in range(3)]
    for stx in txs:
        pool.admit(stx)
    chain.apply_ok(txs[0])
    chain.apply_ok(txs[1])
    pool.remove([txs[0]])  # txs[1] was included too, but the pool is told only of txs[0]
    assert pool.take(10) == [txs[2]]
    assert len(pool) == 1 and pool.ready.is_set()
    chain.apply_ok(txs[2])
    pool.remove([txs[2]])
    assert len(pool) == 0 and not pool.ready.is_set()


def test_the_next_nonce_is_admitted_while_an_included_tx_is_still_pooled(
    chain: TestChain, pool: Mempool
) -> None:
    """Between a block's commit and `remove`, the committed nonce moved but the pool still holds
    the included tx. A client sending its next tx in that window must not be refused."""
    first = chain.transfer(ALICE, BOB, 1, nonce=0)
    pool.admit(first)
    chain.apply_ok(first)  # committed; the pool has not been told yet
    pool.admit(chain.transfer(ALICE, BOB, 1, nonce=1))
    pool.remove([first])
    assert [stx.tx.nonce for stx in pool.take(10)] == [1]


def test_removing_included_txs_releases_exactly_their_pending_spend(chain: TestChain, pool: Mempool) -> None:
    quarter = ENDOWMENT // 4
    first, second = (chain.transfer(DAVE, BOB, quarter, nonce=n) for n in range(2))
    pool.admit(first)
    pool.admit(second)
    chain.apply_ok(first)
    pool.remove([first])  # DAVE now holds ENDOWMENT - quarter - 1, of which `second` reserves quarter + 1
    rest = ENDOWMENT - 2 * (quarter + 1) - 1
    assert refusal(pool, chain.transfer(DAVE, BOB, rest + 1, nonce=2)) == "insufficient_funds"
    pool.admit(chain.transfer(DAVE, BOB, rest, nonce=2))
