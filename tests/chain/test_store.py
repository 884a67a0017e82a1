"""umbra.chain.store: whole blocks or nothing, a restart that reads the head, checks that find damage."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chain.helpers import ALICE, BLOCK_INTERVAL_MS, CHAIN_ID, SEQUENCER, make_genesis
from umbra import codec, crypto
from umbra.chain.blocks import build_block, genesis_block
from umbra.chain.runtime import Runtime
from umbra.chain.state import MemoryBackend
from umbra.chain.store import ReadView, Store, StoreCorrupt, StoreFull
from umbra.chain.types import Block, Call, SignedTx, Tx

pytestmark = pytest.mark.timeout(60)


class StoreChain:
    """A runtime writing through a real SQLite store, as the node does."""

    def __init__(self, path: Path, *, max_pages: int | None = None, create: bool = True) -> None:
        self.store = Store(path, max_pages=max_pages)
        self.runtime = Runtime(make_genesis())
        if create and self.store.is_empty:
            block0, outcome0 = genesis_block(self.runtime)
            self.store.init_genesis(self.runtime.genesis, block0, outcome0)

    def transfer(self, amount: int, nonce: int, to: bytes | None = None) -> SignedTx:
        call = Call("balances", "transfer", {"to": to or os.urandom(32), "amount": amount})
        return Tx(CHAIN_ID, ALICE.public_key, nonce, call, 1).sign(ALICE)

    def produce(self, *txs: SignedTx) -> Block:
        head = self.store.head()
        block, outcome = build_block(
            self.runtime,
            self.store,
            self.store.root(),
            head,
            list(txs),
            time_ms=head.time_ms + BLOCK_INTERVAL_MS,
            author=SEQUENCER,
        )
        self.store.commit_block(block, outcome)
        return block


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "chain.sqlite"


@pytest.fixture
def filled(db_path: Path) -> Iterator[tuple[StoreChain, list[Block], list[SignedTx]]]:
    chain = StoreChain(db_path)
    txs = [chain.transfer(10 + n, n) for n in range(6)]
    blocks = [chain.produce(*txs[i : i + 2]) for i in range(0, 6, 2)]
    blocks.append(chain.produce())
    yield chain, blocks, txs
    chain.store.close()


def sql(path: Path, statement: str, *args: object) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute(statement, args)
        db.commit()
    finally:
        db.close()


def test_blocks_txs_and_state_survive_a_reopen(
    filled: tuple[StoreChain, list[Block], list[SignedTx]], db_path: Path
) -> None:
    chain, blocks, txs = filled
    head, root = chain.store.head(), chain.store.root()
    chain.store.close()
    store = Store(db_path)
    store.open_check()
    assert store.head() == head == blocks[-1].header
    assert store.root() == root and root.digest() == head.state_root
    assert store.genesis() == chain.runtime.genesis
    for block in blocks:
        assert store.block(block.header.height) == block
        assert store.height_of(block.header.hash) == block.header.height
    record = store.tx(txs[3].hash)
    assert record is not None and (record.height, record.index, record.ok, record.sender) == (
        2,
        1,
        True,
        ALICE.public_key,
    )
    assert [r.tx_hash for r in store.txs_of(ALICE.public_key)] == [t.hash for t in reversed(txs)]
    assert [e.name for e in store.block_events(1) if e.module == "balances"] == ["Transfer", "Transfer"]
    assert [r["ok"] for r in store.block_receipts(1)] == [True, True]
    assert store.block(99) is None and store.block(-1) is None and store.block(2**70) is None
    assert [h for h, *_ in store.raw_blocks(2, 10)] == [2, 3, 4]
    store.close()


def test_the_store_is_a_state_backend_like_any_other(
    filled: tuple[StoreChain, list[Block], list[SignedTx]],
) -> None:
    chain, _, _ = filled
    rows = dict(chain.store._db.execute("SELECT k, v FROM state").fetchall())
    memory = MemoryBackend({bytes(k): bytes(v) for k, v in rows.items()})
    for prefix in (b"balances/account/", b"system/", b"", b"\xff", b"system/param/\xff"):
        assert list(chain.store.iter_prefix(prefix)) == list(memory.iter_prefix(prefix))
        assert list(ReadView(chain.store).iter_prefix(prefix)) == list(memory.iter_prefix(prefix))
    key = b"system/nonce/" + ALICE.public_key
    assert chain.store.get(key) == chain.store.read(key) == memory.get(key)


def test_a_healthy_store_passes_both_checks(filled: tuple[StoreChain, list[Block], list[SignedTx]]) -> None:
    chain, _, _ = filled
    chain.store.open_check()
    assert chain.store.full_check() == []


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (
            "UPDATE state SET v = ? WHERE k = (SELECT k FROM state ORDER BY k LIMIT 1)",
            "does not match the stored accumulator",
        ),
        (
            "DELETE FROM state WHERE k = (SELECT k FROM state ORDER BY k DESC LIMIT 1)",
            "does not match the stored accumulator",
        ),
        ("INSERT INTO state VALUES (x'00', ?)", "does not match the stored accumulator"),
        (
            "UPDATE blocks SET header = (SELECT header FROM blocks WHERE height = 1) WHERE height = 2",
            "block 2",
        ),
        ("DELETE FROM blocks WHERE height = 4", "not the recorded head"),
        ("DELETE FROM meta WHERE k = 'head'", "no head"),
    ],
)
def test_full_check_reports_tampering_instead_of_crashing(
    filled: tuple[StoreChain, list[Block], list[SignedTx]], db_path: Path, tamper: str, problem: str
) -> None:
    chain, _, _ = filled
    chain.store.close()
    sql(
        db_path,
        tamper,
        *([codec.encode({"free": 10**30, "reserved": 0, "staked": 0})] if "?" in tamper else []),
    )
    store = Store(db_path)
    problems = store.full_check()
    assert any(problem in p for p in problems), problems
    store.close()


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("UPDATE meta SET v = zeroblob(1024) WHERE k = 'accumulator'", "accumulator does not match"),
        ("DELETE FROM meta WHERE k = 'head'", "no head"),
        ("DELETE FROM blocks WHERE height = 4", "head block is missing"),
        ("UPDATE meta SET v = x'02' WHERE k = 'schema_version'", "schema"),
    ],
)
def test_open_check_refuses_an_inconsistent_head(
    filled: tuple[StoreChain, list[Block], list[SignedTx]], db_path: Path, tamper: str, message: str
) -> None:
    chain, _, _ = filled
    chain.store.close()
    sql(db_path, tamper)
    store = Store(db_path)
    with pytest.raises(StoreCorrupt, match=message):
        store.open_check()
    store.close()


def test_a_failed_commit_leaves_no_trace(
    filled: tuple[StoreChain, list[Block], list[SignedTx]], db_path: Path
) -> None:
    chain, blocks, _ = filled
    head = chain.store.head()
    runtime = chain.runtime
    parent = blocks[-2].header  # build on the block below the head: its height is taken
    block, outcome = build_block(
        runtime,
        chain.store,
        chain.store.root(),
        parent,
        [chain.transfer(1, 6)],
        time_ms=head.time_ms + 1,
        author=SEQUENCER,
    )
    with pytest.raises(sqlite3.IntegrityError):
        chain.store.commit_block(block, outcome)
    assert chain.store.head() == head
    assert chain.store.tx(outcome.included[0].hash) is None
    assert chain.store.full_check() == []
    reopened = Store(db_path)
    for key in outcome.changes:  # the failed block's writes never reach the cached reads either
        assert chain.store.read(key) == chain.store.get(key) == reopened.read(key)
    reopened.close()


def test_cached_state_reads_follow_every_commit_deletions_included(db_path: Path) -> None:
    chain = StoreChain(db_path)
    carol = crypto.SigningKey.generate()
    account = b"balances/account/" + carol.public_key
    assert chain.store.read(account) is None and chain.store.get(account) is None  # now cached
    chain.produce(chain.transfer(10, 0, to=carol.public_key))
    assert codec.decode(chain.store.read(account) or b"")["free"] == 10
    assert chain.store.get(account) == chain.store.read(account)
    give_back = Call("balances", "transfer", {"to": ALICE.public_key, "amount": 9})
    chain.produce(Tx(CHAIN_ID, carol.public_key, 0, give_back, 1).sign(carol))  # empties the account
    assert chain.store.read(account) is None and chain.store.get(account) is None
    chain.store.close()


def test_disk_full_commits_nothing_and_the_store_reopens(tmp_path: Path) -> None:
    path = tmp_path / "chain.sqlite"
    chain = StoreChain(path, max_pages=40)
    nonce = 0
    committed = None
    txs: list[SignedTx] = []
    with pytest.raises(StoreFull, match="not committed"):
        for _ in range(500):
            txs = [chain.transfer(1, nonce + i) for i in range(25)]
            committed = chain.store.head()
            chain.produce(*txs)
            nonce += 25
    assert committed is not None and committed.height >= 1
    assert chain.store.head() == committed  # the head did not move
    rows = chain.store._db.execute("SELECT count(*), max(height) FROM blocks").fetchone()
    assert rows == (committed.height + 1, committed.height)  # no half-written block
    with pytest.raises(StoreFull):  # retrying the same block is refused again, not half-applied
        chain.produce(*txs)
    assert chain.store.head() == committed
    chain.store.close()

    reopened = StoreChain(path, create=False)
    reopened.store.open_check()
    assert reopened.store.head() == committed
    assert reopened.store.full_check() == []
    block = reopened.produce(reopened.transfer(1, nonce))
    assert block.header.parent == committed.hash
    reopened.store.close()


def test_garbage_is_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "chain.sqlite"
    path.write_bytes(b"this is not sqlite" * 1000)
    with pytest.raises(StoreCorrupt, match="not a usable Umbra database"):
        Store(path)


def test_a_store_without_a_chain_says_so(db_path: Path) -> None:
    store = Store(db_path)
    assert store.is_empty
    with pytest.raises(StoreCorrupt):
        store.head()
    assert store.full_check() != []
    store.close()
