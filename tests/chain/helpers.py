"""An in-memory chain for runtime tests, and pallet-style assertions (`assert_noop`).

`TestChain` drives the pure runtime exactly as a node does (`build_block` over a backend), but
keeps committed state in a `MemoryBackend`, so tests can snapshot and compare all of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from umbra import RUNTIME_VERSION, codec, crypto
from umbra.chain.blocks import build_block, genesis_block
from umbra.chain.module import BlockContext, CallContext, DispatchError, Origin
from umbra.chain.modules.balances import TREASURY
from umbra.chain.runtime import AdmissionError, BlockOutcome, Runtime
from umbra.chain.state import MemoryBackend, State, StateRoot
from umbra.chain.types import Block, Call, GenesisConfig, Header, SignedTx, Tx

CHAIN_ID = "umbra-test"
ENDOWMENT = 1_000_000
GENESIS_TIME_MS = 1_700_000_000_000
BLOCK_INTERVAL_MS = 100


def fixed_key(label: str) -> crypto.SigningKey:
    """A deterministic key per label, so failures reproduce byte for byte."""
    return crypto.SigningKey(codec.sha256(b"umbra-test-key/" + label.encode()))


ALICE = fixed_key("alice")
BOB = fixed_key("bob")
CHARLIE = fixed_key("charlie")
DAVE = fixed_key("dave")  # funded, not on the council
EVE = fixed_key("eve")  # never funded
SEQUENCER = fixed_key("sequencer")
COUNCIL_KEYS = (ALICE, BOB, CHARLIE)


def make_genesis(
    *,
    params: dict[str, int] | None = None,
    allocations: dict[bytes, int] | None = None,
    council: tuple[crypto.SigningKey, ...] = COUNCIL_KEYS,
    threshold: int = 2,
    chain_id: str = CHAIN_ID,
) -> GenesisConfig:
    if allocations is None:
        allocations = {key.public_key: ENDOWMENT for key in (ALICE, BOB, CHARLIE, DAVE)}
    return GenesisConfig(
        chain_id=chain_id,
        time_ms=GENESIS_TIME_MS,
        sequencer=SEQUENCER.public_key,
        runtime_version=RUNTIME_VERSION,
        params={"tx_fee": 1, **(params or {})},
        modules={
            "balances": {"allocations": allocations},
            "council": {"members": sorted(k.public_key for k in council), "threshold": threshold},
        },
    )


@dataclass(frozen=True)
class Snapshot:
    """Everything committed: every state entry, the accumulator and the head."""

    entries: dict[bytes, bytes]
    root: StateRoot
    head: Header


@dataclass
class TestChain:
    __test__ = False  # not a pytest test class

    runtime: Runtime
    backend: MemoryBackend
    root: StateRoot
    head: Header
    blocks: list[Block] = field(default_factory=list)
    outcomes: list[BlockOutcome] = field(default_factory=list)

    @classmethod
    def start(cls, genesis: GenesisConfig | None = None) -> TestChain:
        runtime = Runtime(genesis or make_genesis())
        block0, outcome0 = genesis_block(runtime)
        backend = MemoryBackend()
        backend.apply(outcome0.changes)
        return cls(runtime, backend, outcome0.root, block0.header, [block0], [outcome0])

    # ---- reads ----------------------------------------------------------------------------------
    def state(self) -> State:
        return State(self.backend)

    def account(self, who: crypto.SigningKey | bytes) -> dict[str, int]:
        return self.runtime.balances.account(self.state(), _account_id(who))

    def free(self, who: crypto.SigningKey | bytes) -> int:
        return self.account(who)["free"]

    def nonce(self, who: crypto.SigningKey | bytes) -> int:
        return self.runtime.system.nonce(self.state(), _account_id(who))

    def param(self, name: str) -> Any:
        return self.runtime.system.param(self.state(), name)

    def total_supply(self) -> int:
        """The sum of every account's free, reserved and staked balance (treasury included)."""
        return sum(
            acct["free"] + acct["reserved"] + acct["staked"]
            for _, acct in self.runtime.balances.accounts.items(self.state())
        )

    def total_issuance(self) -> int:
        value: int = self.runtime.balances.total_issuance.get(self.state())
        return value

    def snapshot(self) -> Snapshot:
        return Snapshot(dict(self.backend.data), self.root.copy(), self.head)

    # ---- txs ------------------------------------------------------------------------------------
    def tx(
        self,
        signer: crypto.SigningKey,
        module: str,
        method: str,
        /,
        *,
        nonce: int | None = None,
        fee: int = 1,
        chain_id: str | None = None,
        **args: Any,
    ) -> SignedTx:
        tx = Tx(
            chain_id=self.runtime.chain_id if chain_id is None else chain_id,
            sender=signer.public_key,
            nonce=self.nonce(signer) if nonce is None else nonce,
            call=Call(module, method, args),
            fee=fee,
        )
        return tx.sign(signer)

    def transfer(
        self, signer: crypto.SigningKey, to: crypto.SigningKey | bytes, amount: int, **kw: Any
    ) -> SignedTx:
        return self.tx(signer, "balances", "transfer", to=_account_id(to), amount=amount, **kw)

    # ---- blocks ---------------------------------------------------------------------------------
    def build(
        self, txs: list[SignedTx], *, author: crypto.SigningKey | None = SEQUENCER
    ) -> tuple[Block, BlockOutcome]:
        """Execute `txs` on the head without committing (for tampering tests)."""
        return build_block(
            self.runtime,
            self.backend,
            self.root,
            self.head,
            txs,
            time_ms=self.head.time_ms + BLOCK_INTERVAL_MS,
            author=author,
        )

    def commit(self, block: Block, outcome: BlockOutcome) -> None:
        self.backend.apply(outcome.changes)
        self.root = outcome.root
        self.head = block.header
        self.blocks.append(block)
        self.outcomes.append(outcome)

    def produce(self, *txs: SignedTx) -> BlockOutcome:
        block, outcome = self.build(list(txs))
        self.commit(block, outcome)
        return outcome

    def apply(self, stx: SignedTx) -> BlockOutcome:
        """Produce a block holding `stx` and insist that it was included."""
        outcome = self.produce(stx)
        assert outcome.included == [stx], (
            f"tx was dropped: {[(e.code, e.message) for _, e in outcome.dropped]}"
        )
        return outcome

    def apply_ok(self, stx: SignedTx) -> BlockOutcome:
        outcome = self.apply(stx)
        receipt = outcome.receipts[0]
        assert receipt.ok, f"tx failed in dispatch: {receipt.error}: {receipt.message}"
        return outcome

    def admit(self, stx: SignedTx) -> None:
        """The admission checks a node runs before a tx enters its mempool."""
        self.runtime.check_stateless(stx)
        self.runtime.check_stateful(self.state(), stx, expected_nonce=self.nonce(stx.tx.sender))

    def block_context(self) -> BlockContext:
        return BlockContext(
            self.state(), self.head.height + 1, self.head.time_ms + BLOCK_INTERVAL_MS, self.head.hash
        )


def _account_id(who: crypto.SigningKey | bytes) -> bytes:
    return who.public_key if isinstance(who, crypto.SigningKey) else who


def events_named(outcome: BlockOutcome, module: str, name: str) -> list[dict[str, Any]]:
    return [e.data for e in outcome.events if e.module == module and e.name == name]


# ---- pallet-style assertions ------------------------------------------------------------------


def assert_noop(
    chain: TestChain,
    call: Call,
    *,
    code: str,
    signer: crypto.SigningKey | None = None,
    origin: Origin = Origin.SIGNED,
) -> DispatchError:
    """Dispatch `call` directly (as `apply_tx` does, atomically) and insist that it fails with
    the typed error `code` and leaves everything as it was: no net writes, an equal state root,
    no events and the committed snapshot untouched.

    `signer` is the signed origin; leave it None with `origin=Origin.COUNCIL`.
    """
    before = chain.snapshot()
    block = chain.block_context()
    ctx = CallContext(block, origin, None if signer is None else signer.public_key, codec.sha256(b"noop"))
    block.state.checkpoint()
    try:
        chain.runtime.dispatch(ctx, call)
    except DispatchError as exc:
        error = exc
    else:
        raise AssertionError(f"{call.module}.{call.method} succeeded; expected it to fail with {code}")
    finally:
        block.state.rollback()
    assert error.code == code, f"expected error {code}, got {error.code}: {error.message}"
    assert error.message, "a refusal must say what was wrong"
    changes = block.state.changes()
    assert changes == {}, f"a failed call left writes behind: {sorted(changes)}"
    assert block.state.updated_root(chain.root, changes) == chain.root
    assert block.events == [], f"a failed call left events behind: {block.events}"
    assert chain.snapshot() == before
    return error


def assert_refused(chain: TestChain, stx: SignedTx, *, code: str) -> AdmissionError:
    """A tx that admission refuses with `code`: it is also dropped (never included) by block
    execution, and no account it names changes (sender's balances and nonce, treasury)."""
    try:
        chain.admit(stx)
    except AdmissionError as exc:
        refusal = exc
    else:
        raise AssertionError(f"tx was admitted; expected refusal {code}")
    assert refusal.code == code, f"expected refusal {code}, got {refusal.code}: {refusal.message}"
    watched = [stx.tx.sender, TREASURY]
    to = stx.tx.call.args.get("to")
    if isinstance(to, bytes):
        watched.append(to)
    before = {who: (chain.account(who), chain.nonce(who)) for who in watched}
    supply = chain.total_supply()
    outcome = chain.produce(stx)
    assert outcome.included == [] and outcome.receipts == []
    assert [(dropped, exc.code) for dropped, exc in outcome.dropped] == [(stx, code)]
    assert {who: (chain.account(who), chain.nonce(who)) for who in watched} == before
    assert chain.total_supply() == supply
    return refusal
