"""umbra.chain.state: the journal (checkpoint / rollback) and the AdHash state root."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.chain.helpers import ALICE, BOB, TestChain
from umbra.chain.state import MemoryBackend, State, StateRoot

pytestmark = pytest.mark.timeout(60)


def root_from_scratch(entries: Mapping[bytes, bytes]) -> StateRoot:
    root = StateRoot()
    for key, value in entries.items():
        root.apply(key, None, value)
    return root


def commit(backend: MemoryBackend, root: StateRoot, state: State) -> StateRoot:
    changes = state.changes()
    new_root = state.updated_root(root, changes)
    backend.apply(changes)
    return new_root


BASE = {b"a/1": b"one", b"a/2": b"two", b"b/1": b"three"}


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend(BASE)


# ---- the root changes iff the state changes ------------------------------------------------------


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.set(b"a/1", b"ONE"),  # change a value
        lambda s: s.set(b"c/1", b"new"),  # add an entry
        lambda s: s.delete(b"a/2"),  # remove an entry
        lambda s: s.set(b"a/1", b""),  # empty value is still a value
    ],
)
def test_every_real_change_moves_the_root(backend: MemoryBackend, write: object) -> None:
    root = root_from_scratch(BASE)
    state = State(backend)
    write(state)  # type: ignore[operator]
    changes = state.changes()
    assert changes
    new_root = state.updated_root(root, changes)
    assert new_root.digest() != root.digest()
    backend.apply(changes)
    assert new_root == root_from_scratch(backend.data)


@pytest.mark.parametrize(
    "writes",
    [
        [("set", b"a/1", b"one")],  # rewrite the same value
        [("delete", b"zz", None)],  # delete what is not there
        [("set", b"c/1", b"x"), ("delete", b"c/1", None)],  # add then remove
        [("set", b"a/1", b"other"), ("set", b"a/1", b"one")],  # change then restore
    ],
)
def test_writes_that_net_to_nothing_leave_the_root_alone(
    backend: MemoryBackend, writes: list[tuple[str, bytes, bytes | None]]
) -> None:
    root = root_from_scratch(BASE)
    state = State(backend)
    for op, key, value in writes:
        if op == "set":
            assert value is not None
            state.set(key, value)
        else:
            state.delete(key)
    assert state.changes() == {}
    assert state.updated_root(root, {}) == root


def test_the_root_separates_key_from_value() -> None:
    # (k="ab", v="c") and (k="a", v="bc") must not collide.
    assert root_from_scratch({b"ab": b"c"}).digest() != root_from_scratch({b"a": b"bc"}).digest()


def test_state_root_serialises_to_its_accumulator() -> None:
    root = root_from_scratch(BASE)
    assert StateRoot.from_bytes(root.to_bytes()) == root
    assert len(root.to_bytes()) == 1024
    with pytest.raises(ValueError):
        StateRoot.from_bytes(b"\x00" * 32)


# ---- order independence and replays --------------------------------------------------------------

entries = st.dictionaries(st.binary(min_size=1, max_size=6), st.binary(max_size=6), max_size=12)


@settings(max_examples=60, deadline=None)
@given(entries, st.randoms(use_true_random=False), st.integers(min_value=1, max_value=4))
def test_equal_states_have_equal_roots_whatever_the_order_and_batching(
    target: dict[bytes, bytes], rnd: object, batches: int
) -> None:
    """Write the same final state in a shuffled order, split into several blocks, with noise."""
    items = list(target.items())
    rnd.shuffle(items)  # type: ignore[attr-defined]
    backend, root = MemoryBackend(), StateRoot()
    for i in range(batches):
        state = State(backend)
        for key, value in items[i::batches]:
            state.set(key, b"noise" + value)  # overwritten below: only the final value counts
            state.set(key, value)
        root = commit(backend, root, state)
    assert backend.data == target
    assert root == root_from_scratch(target)
    assert root.digest() == root_from_scratch(dict(reversed(list(target.items())))).digest()


def test_two_chains_replaying_the_same_blocks_reach_the_same_roots() -> None:
    first, second = TestChain.start(), TestChain.start()
    assert first.root == second.root
    for amount in (5, 6, 7):
        stx = first.transfer(ALICE, BOB, amount)
        block, outcome = first.build([stx])
        first.commit(block, outcome)
        second.produce(stx)  # re-executes the same tx on the second chain
        assert second.head.state_root == block.header.state_root
        assert second.root == first.root
    assert second.backend.data == first.backend.data


# ---- journal: checkpoint / rollback / discard ----------------------------------------------------


def test_rollback_drops_only_the_writes_since_the_last_checkpoint(backend: MemoryBackend) -> None:
    state = State(backend)
    state.set(b"a/1", b"block-level")
    state.checkpoint()
    state.set(b"a/2", b"tx-level")
    state.checkpoint()
    state.delete(b"b/1")
    assert state.get(b"b/1") is None
    state.rollback()
    assert state.get(b"b/1") == b"three"
    assert state.get(b"a/2") == b"tx-level"
    state.rollback()
    assert state.get(b"a/2") == b"two"
    assert state.changes() == {b"a/1": b"block-level"}
    assert backend.data == BASE  # the backend is never written by the journal


def test_discard_keeps_writes_in_the_layer_below(backend: MemoryBackend) -> None:
    state = State(backend)
    state.checkpoint()
    state.set(b"c/1", b"kept")
    state.discard()
    assert state.changes() == {b"c/1": b"kept"}


def test_unbalanced_journal_operations_are_errors(backend: MemoryBackend) -> None:
    state = State(backend)
    with pytest.raises(RuntimeError):
        state.rollback()
    with pytest.raises(RuntimeError):
        state.discard()
    state.checkpoint()
    with pytest.raises(RuntimeError):
        state.changes()


def test_iter_prefix_merges_journal_and_backend_in_key_order(backend: MemoryBackend) -> None:
    state = State(backend)
    state.set(b"a/0", b"zero")
    state.delete(b"a/2")
    state.checkpoint()
    state.set(b"a/3", b"three")
    assert list(state.iter_prefix(b"a/")) == [(b"a/0", b"zero"), (b"a/1", b"one"), (b"a/3", b"three")]
    state.rollback()
    assert [k for k, _ in state.iter_prefix(b"a/")] == [b"a/0", b"a/1"]


operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from([b"k1", b"k2", b"k3", b"x/1"]), st.binary(max_size=3)),
        st.tuples(st.just("delete"), st.sampled_from([b"k1", b"k2", b"k3", b"x/1"]), st.none()),
        st.tuples(st.sampled_from(["checkpoint", "rollback", "discard"]), st.none(), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_the_journal_behaves_like_a_stack_of_dicts(ops: list[tuple[str, bytes | None, bytes | None]]) -> None:
    start = {b"k1": b"1", b"k2": b"2"}
    backend = MemoryBackend(start)
    state = State(backend)
    model: list[dict[bytes, bytes]] = [dict(start)]  # one full copy per open checkpoint
    for op, key, value in ops:
        if op == "set":
            assert key is not None and value is not None
            state.set(key, value)
            model[-1][key] = value
        elif op == "delete":
            assert key is not None
            state.delete(key)
            model[-1].pop(key, None)
        elif op == "checkpoint":
            state.checkpoint()
            model.append(dict(model[-1]))
        elif len(model) > 1:
            if op == "rollback":
                state.rollback()
                model.pop()
            else:
                state.discard()
                top = model.pop()
                model[-1] = top
        for k in (b"k1", b"k2", b"k3", b"x/1"):
            assert state.get(k) == model[-1].get(k)
        assert list(state.iter_prefix(b"k")) == sorted(
            (k, v) for k, v in model[-1].items() if k.startswith(b"k")
        )
    while len(model) > 1:
        state.discard()
        top = model.pop()
        model[-1] = top
    root = state.updated_root(root_from_scratch(start), state.changes())
    assert root == root_from_scratch(model[0])
