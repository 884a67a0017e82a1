"""Property: random valid and invalid tx sequences never crash dispatch, and supply is conserved.

Each example builds a few blocks from a mix of honest transfers, council traffic and hostile
txs (wrong nonce, wrong chain, forged signature, nonsense calls and arguments). After every block:
execution did not raise, no tx hit an internal error, no balance is negative, nonces moved by the
included txs only, and the total supply equals the genesis issuance. At the end a second chain
replays the blocks through `import_block` and reaches the same roots.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.chain.helpers import ALICE, BOB, CHARLIE, DAVE, EVE, TestChain, make_genesis
from umbra.chain.blocks import import_block
from umbra.chain.module import Origin
from umbra.chain.runtime import Runtime
from umbra.chain.types import Call, SignedTx, Tx

pytestmark = pytest.mark.timeout(180)

SIGNERS = (ALICE, BOB, CHARLIE, DAVE, EVE)
ACCOUNTS = tuple(k.public_key for k in SIGNERS)

junk_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from([0, 1, 2, 5, 2**64 - 1, 2**64, -1]),
        st.binary(max_size=33),
        st.sampled_from(ACCOUNTS),
        st.text(max_size=12),
        st.sampled_from(["tx_fee", "max_block_txs", "proposal_ttl_blocks", "block_hash_history", "nope"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
arg_names = st.sampled_from(
    [
        "to",
        "amount",
        "name",
        "value",
        "proposal",
        "aye",
        "module",
        "method",
        "args",
        "members",
        "threshold",
        "x",
    ]
)
# Every dispatchable call of the runtime, read from the modules themselves (new modules are covered
# without touching this test): (module, method, origin, argument annotations, required arguments).
RUNTIME_CALLS = sorted(
    (
        (module_name, method, spec.origin, arg_types, frozenset(required))
        for module_name, module in Runtime(make_genesis()).modules.items()
        for method, (spec, _fn, arg_types, required) in module.calls.items()
    ),
    key=lambda entry: (entry[0], entry[1]),
)


def values_for(annotation: Any) -> st.SearchStrategy[Any]:
    """Values that fit `annotation` (so the call passes admission), biased towards edge cases."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return st.one_of([values_for(a) for a in typing.get_args(annotation)])
    if annotation is type(None):
        return st.none()
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.one_of(
            st.integers(min_value=0, max_value=12),
            st.integers(min_value=-(2**70), max_value=2**70),
            st.sampled_from([2**64 - 1, 2**64, 1_000_000, -1]),
        )
    if annotation is bytes:
        return st.one_of(
            st.sampled_from(ACCOUNTS), st.binary(min_size=32, max_size=32), st.binary(max_size=70)
        )
    if annotation is str:
        return st.one_of(
            st.text(max_size=12), st.sampled_from(["sim", "dcap", "gatekeeper", "worker", "tx_fee", ""])
        )
    if origin is list:
        (inner,) = typing.get_args(annotation) or (Any,)
        return st.lists(values_for(inner), max_size=3)
    if origin is dict:
        return st.dictionaries(st.text(max_size=8), junk_values, max_size=3)
    return junk_values


@st.composite
def typed_call(draw: st.DrawFn, origin: Origin) -> Call:
    """A call to any module's method with arguments of the annotated types."""
    module, method, _origin, arg_types, required = draw(
        st.sampled_from([entry for entry in RUNTIME_CALLS if entry[2] is origin])
    )
    args = {name: draw(values_for(arg_types[name])) for name in sorted(required)}
    for name in sorted(set(arg_types) - required):
        if draw(st.booleans()):
            args[name] = draw(values_for(arg_types[name]))
    return Call(module, method, args)


privileged_calls = st.one_of(
    st.builds(lambda c: {"module": c.module, "method": c.method, "args": c.args}, typed_call(Origin.COUNCIL)),
    st.builds(
        lambda name, value: {
            "module": "system",
            "method": "set_param",
            "args": {"name": name, "value": value},
        },
        st.sampled_from(["tx_fee", "proposal_ttl_blocks", "block_hash_history", "max_future_nonces", "nope"]),
        st.integers(min_value=-1, max_value=6),
    ),
    st.builds(
        lambda to, amount: {
            "module": "balances",
            "method": "treasury_spend",
            "args": {"to": to, "amount": amount},
        },
        st.one_of(st.sampled_from(ACCOUNTS), st.binary(max_size=33)),
        st.integers(min_value=-1, max_value=30),
    ),
    st.builds(
        lambda members, threshold: {
            "module": "council",
            "method": "set_members",
            "args": {"members": members, "threshold": threshold},
        },
        st.lists(st.sampled_from(ACCOUNTS), max_size=4),
        st.integers(min_value=0, max_value=4),
    ),
    st.builds(
        lambda module, method, args: {"module": module, "method": method, "args": args},
        st.sampled_from(["system", "balances", "council", "nope"]),
        st.sampled_from(["set_param", "treasury_spend", "set_members", "transfer", "propose", "zap"]),
        st.dictionaries(arg_names, junk_values, max_size=3),
    ),
)
calls = st.one_of(
    # a well-typed call to any module (passes admission; exercises dispatch)
    typed_call(Origin.SIGNED),
    typed_call(Origin.SIGNED),
    # transfers with edge-case amounts and destinations
    st.builds(
        lambda to, amount: Call("balances", "transfer", {"to": to, "amount": amount}),
        st.one_of(st.sampled_from(ACCOUNTS), st.binary(max_size=40)),
        st.one_of(st.integers(min_value=-5, max_value=2_000_000), st.sampled_from([2**64, 2**128])),
    ),
    # council traffic: proposals, and votes on live, stale and impossible ids
    st.builds(lambda proposal: Call("council", "propose", proposal), privileged_calls),
    st.builds(
        lambda proposal, aye: Call("council", "vote", {"proposal": proposal, "aye": aye}),
        st.one_of(st.integers(min_value=0, max_value=4), st.integers(min_value=-(2**70), max_value=2**70)),
        st.one_of(st.booleans(), st.booleans(), junk_values),
    ),
    # anything at all
    st.builds(
        Call,
        st.sampled_from(["balances", "system", "council", "nope"]),
        st.sampled_from(
            ["transfer", "treasury_spend", "set_param", "propose", "vote", "set_members", "charge_fee"]
        ),
        st.dictionaries(arg_names, junk_values, max_size=4),
    ),
)

# Most txs have a sound envelope so that dispatch is exercised; the rest carry one fault each.
FAULTS = (None, None, None, None, None, None, "nonce", "chain", "signature", "fee", "unfunded")


@st.composite
def tx_for(draw: st.DrawFn, chain: TestChain, pending: dict[bytes, int]) -> SignedTx:
    fault = draw(st.sampled_from(FAULTS))
    signer = EVE if fault == "unfunded" else draw(st.sampled_from((ALICE, BOB, CHARLIE, DAVE)))
    next_nonce = chain.nonce(signer) + pending.get(signer.public_key, 0)
    nonce = next_nonce
    if fault == "nonce":
        nonce = draw(
            st.sampled_from(
                [next_nonce + 1, next_nonce + 7, max(next_nonce - 1, 0) if next_nonce else 2**64 - 1]
            )
        )
    fee = (
        draw(st.sampled_from([0, 2**100])) if fault == "fee" else draw(st.integers(min_value=1, max_value=20))
    )
    chain_id = "umbra-elsewhere" if fault == "chain" else chain.runtime.chain_id
    tx = Tx(chain_id, signer.public_key, nonce, draw(calls), fee)
    stx = tx.sign(signer)
    if fault == "signature":
        forger = draw(st.sampled_from([k for k in SIGNERS if k != signer]))
        stx = SignedTx(tx, draw(st.sampled_from([forger.sign("umbra/tx/v1", tx.to_cbor()), bytes(64)])))
    if fault is None:
        pending[signer.public_key] = pending.get(signer.public_key, 0) + 1
    return stx


def check_invariants(
    chain: TestChain, issuance: int, nonces_before: dict[bytes, int], included: list[SignedTx]
) -> None:
    assert chain.total_supply() == issuance == chain.total_issuance()
    for _, account in chain.runtime.balances.accounts.items(chain.state()):
        assert min(account.values()) >= 0 and sum(account.values()) > 0
    for who in ACCOUNTS:
        sent = sum(1 for stx in included if stx.tx.sender == who)
        assert chain.nonce(who) == nonces_before[who] + sent


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_tx_sequences_never_crash_dispatch_and_conserve_supply(data: st.DataObject) -> None:
    chain = TestChain.start(make_genesis(params={"proposal_ttl_blocks": 3}))
    issuance = chain.total_issuance()
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="blocks")):
        pending: dict[bytes, int] = {}
        txs = [data.draw(tx_for(chain, pending)) for _ in range(data.draw(st.integers(0, 8), label="txs"))]
        nonces_before = {who: chain.nonce(who) for who in ACCOUNTS}
        outcome = chain.produce(*txs)  # raising here is the failure this test hunts for
        assert len(outcome.included) + len(outcome.dropped) == len(txs)
        internal = [r for r in outcome.receipts if r.error == "system.internal_error"]
        assert not internal, f"module bug: {internal[0].message}"
        for receipt in outcome.receipts:
            assert receipt.ok or (receipt.error and receipt.message)
        check_invariants(chain, issuance, nonces_before, outcome.included)

    replay = TestChain.start(chain.runtime.genesis)
    for block in chain.blocks[1:]:
        outcome = import_block(replay.runtime, replay.backend, replay.root, replay.head, block)
        replay.commit(block, outcome)
    assert replay.root == chain.root and replay.backend.data == chain.backend.data
