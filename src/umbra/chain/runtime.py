"""The state transition: plain functions over explicit state, no I/O.

    outcome = runtime.execute_block(backend, root, height=..., time_ms=..., parent_hash=..., txs=...)

Every node that executes the same txs on the same state reaches the same `outcome.root`, events
and receipts. A tx that cannot pay its fee, has the wrong nonce, the wrong chain id or a bad
signature is *dropped* (never included); one that fails in dispatch is *included*, marked failed,
pays its fee, and has its writes rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from umbra import RUNTIME_VERSION, codec
from umbra.chain.module import BlockContext, CallContext, CallSpec, DispatchError, Module, Origin, check_args
from umbra.chain.modules.balances import Balances
from umbra.chain.modules.compute import Compute
from umbra.chain.modules.contracts import Contracts
from umbra.chain.modules.council import Council
from umbra.chain.modules.keys import Keys
from umbra.chain.modules.registry import Registry
from umbra.chain.modules.staking import Staking
from umbra.chain.modules.system import System
from umbra.chain.state import MemoryBackend, State, StateBackend, StateRoot
from umbra.chain.types import Call, Event, GenesisConfig, SignedTx, merkle_root

__all__ = ["AdmissionError", "BlockOutcome", "Receipt", "Runtime"]

# Order matters twice: genesis runs in this order, and so do the end-of-block hooks (registry
# timers before the compute scheduler, so a worker that just expired gets no new job).
MODULES: tuple[type[Module], ...] = (System, Balances, Council, Registry, Keys, Contracts, Staking, Compute)


class AdmissionError(ValueError):
    """A tx refused before it can enter a block. `code` is one of the typed codes below."""

    CODES = frozenset(
        {
            "malformed",
            "too_large",
            "wrong_chain",
            "bad_signature",
            "bad_nonce",
            "insufficient_funds",
            "fee_too_low",
            "unknown_call",
            "bad_origin",
            "duplicate",
            "mempool_full",
            "rate_limited",
            "not_accepting",
            "disk_full",
        }
    )

    def __init__(self, code: str, message: str) -> None:
        assert code in self.CODES, code
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Receipt:
    index: int
    tx_hash: bytes
    ok: bool
    error: str | None = None
    message: str | None = None

    def to_cbor(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "tx_hash": self.tx_hash,
            "ok": self.ok,
            "error": self.error,
            "message": self.message,
        }


@dataclass
class BlockOutcome:
    """The result of executing one block: what the store commits and the header commits to."""

    included: list[SignedTx]
    dropped: list[tuple[SignedTx, AdmissionError]]
    receipts: list[Receipt]
    events: list[Event]
    changes: dict[bytes, bytes | None]
    root: StateRoot
    tx_root: bytes = b""
    events_root: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def state_root(self) -> bytes:
        return self.root.digest()

    @cached_property
    def event_encodings(self) -> list[bytes]:
        """Each event's CBOR, encoded once for the events root and for the store."""
        return [codec.encode(event.to_cbor()) for event in self.events]


SignatureCheck = Callable[[Sequence[SignedTx]], list[bool]]


def check_signatures_serially(txs: Sequence[SignedTx]) -> list[bool]:
    return [stx.verify_signature() for stx in txs]


class Runtime:
    """The modules of one runtime version, wired to each other through small interfaces."""

    def __init__(self, genesis: GenesisConfig) -> None:
        if genesis.runtime_version != RUNTIME_VERSION:
            raise ValueError(
                f"genesis names runtime version {genesis.runtime_version}, this node runs {RUNTIME_VERSION}: refusing to replay"
            )
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.modules: dict[str, Module] = {}
        for module_cls in MODULES:
            self.modules[module_cls.name] = module_cls(self)
        # The interfaces modules reach each other through.
        self.system: System = self.modules["system"]  # type: ignore[assignment]
        self.balances: Balances = self.modules["balances"]  # type: ignore[assignment]
        self.council: Council = self.modules["council"]  # type: ignore[assignment]
        self.registry: Registry = self.modules["registry"]  # type: ignore[assignment]
        self.keys: Keys = self.modules["keys"]  # type: ignore[assignment]
        self.contracts: Contracts = self.modules["contracts"]  # type: ignore[assignment]
        self.staking: Staking = self.modules["staking"]  # type: ignore[assignment]
        self.compute: Compute = self.modules["compute"]  # type: ignore[assignment]

    # ---- genesis ---------------------------------------------------------------------------------
    def genesis_outcome(self) -> BlockOutcome:
        """Block 0: every module writes its genesis section into empty state."""
        backend = MemoryBackend()
        state = State(backend)
        for name, module in self.modules.items():
            module.genesis(state, self.genesis.modules.get(name), self.genesis.params)
        changes = state.changes()
        root = state.updated_root(StateRoot(), changes)
        return BlockOutcome([], [], [], [], changes, root, merkle_root([]), merkle_root([]))

    # ---- call lookup -----------------------------------------------------------------------------
    def lookup_call(self, module: str, method: str) -> CallSpec | None:
        entry = self.modules.get(module)
        if entry is None or method not in entry.calls:
            return None
        return entry.calls[method][0]

    def check_call_args(self, call: Call) -> str | None:
        _spec, _fn, arg_types, required = self.modules[call.module].calls[call.method]
        return check_args(arg_types, required, call.args)

    def dispatch(self, ctx: CallContext, call: Call, *, args_checked: bool = False) -> None:
        """Run one call with origin checks. Raises DispatchError on failure (caller rolls back).

        `args_checked` says the args already passed `check_call_args` (a tx's stateless checks)."""
        module = self.modules.get(call.module)
        if module is None or call.method not in module.calls:
            raise DispatchError("system.unknown_call", f"no call {call.module}.{call.method}")
        spec, fn, arg_types, required = module.calls[call.method]
        if spec.origin is Origin.COUNCIL and ctx.origin is not Origin.COUNCIL:
            raise DispatchError("system.bad_origin", f"{call.module}.{call.method} needs council approval")
        problem = None if args_checked else check_args(arg_types, required, call.args)
        if problem is not None:
            raise DispatchError("system.malformed_call", problem)
        fn(ctx, **call.args)

    # ---- admission -------------------------------------------------------------------------------
    def check_stateless(self, stx: SignedTx, *, signature_ok: bool | None = None) -> None:
        """Checks that need no state: chain id, call shape, fee floor is stateful (below)."""
        tx = stx.tx
        if tx.chain_id != self.chain_id:
            raise AdmissionError("wrong_chain", f"tx is for chain {tx.chain_id!r}, this is {self.chain_id!r}")
        spec = self.lookup_call(tx.call.module, tx.call.method)
        if spec is None:
            raise AdmissionError("unknown_call", f"no call {tx.call.module}.{tx.call.method}")
        if spec.origin is not Origin.SIGNED:
            raise AdmissionError(
                "bad_origin", f"{tx.call.module}.{tx.call.method} can only run through the council"
            )
        problem = self.check_call_args(tx.call)
        if problem is not None:
            raise AdmissionError("malformed", f"{tx.call.module}.{tx.call.method}: {problem}")
        if signature_ok is None:
            signature_ok = stx.verify_signature()
        if not signature_ok:
            raise AdmissionError("bad_signature", "tx signature does not verify for its sender")

    def spend_of(self, stx: SignedTx) -> int:
        """Fee plus the free balance the call may move: what admission reserves for the sender."""
        spec = self.lookup_call(stx.tx.call.module, stx.tx.call.method)
        return stx.tx.fee + (spec.spend(stx.tx.call.args) if spec is not None else 0)

    def check_stateful(
        self, state: State, stx: SignedTx, *, expected_nonce: int, pending_spend: int = 0
    ) -> None:
        """Nonce, fee floor and funds, against `state` plus what the sender already has pending."""
        tx = stx.tx
        if tx.nonce != expected_nonce:
            raise AdmissionError("bad_nonce", f"nonce {tx.nonce} is not the expected {expected_nonce}")
        min_fee = int(self.system.param(state, "tx_fee"))
        if tx.fee < min_fee:
            raise AdmissionError("fee_too_low", f"fee {tx.fee} is below the minimum {min_fee}")
        free = self.balances.free(state, tx.sender)
        need = pending_spend + self.spend_of(stx)
        if free < need:
            raise AdmissionError(
                "insufficient_funds", f"free balance {free} cannot cover {need} (fees and amounts)"
            )

    # ---- execution -------------------------------------------------------------------------------
    def apply_tx(self, block: BlockContext, stx: SignedTx, index: int) -> Receipt:
        """Charge the fee and bump the nonce, then dispatch atomically. `stx` passed `check_stateless`."""
        tx = stx.tx
        block.tx_index = index
        ctx = CallContext(block, Origin.SIGNED, tx.sender, stx.hash)
        self.system.bump_nonce(block.state, tx.sender)
        self.balances.charge_fee(ctx, tx.sender, tx.fee)
        block.state.checkpoint()
        mark = len(block.events)
        try:
            self.dispatch(ctx, tx.call, args_checked=True)
        except DispatchError as exc:
            block.state.rollback()
            del block.events[mark:]
            self.system.emit(
                ctx, "ExtrinsicFailed", index=index, fee=tx.fee, error=exc.code, message=exc.message
            )
            return Receipt(index, stx.hash, False, exc.code, exc.message)
        except Exception as exc:  # a module bug must fail the tx, never the node (and is deterministic)
            block.state.rollback()
            del block.events[mark:]
            message = f"internal error in {tx.call.module}.{tx.call.method}: {type(exc).__name__}"
            self.system.emit(
                ctx, "ExtrinsicFailed", index=index, error="system.internal_error", message=message
            )
            return Receipt(index, stx.hash, False, "system.internal_error", message)
        block.state.discard()
        self.system.emit(ctx, "ExtrinsicSuccess", index=index, fee=tx.fee)
        return Receipt(index, stx.hash, True)

    def execute_block(
        self,
        backend: StateBackend,
        root: StateRoot,
        *,
        height: int,
        time_ms: int,
        parent_hash: bytes,
        txs: Sequence[SignedTx],
        signatures: Sequence[bool] | None = None,
        admitted: bool = False,
    ) -> BlockOutcome:
        """Apply `txs` in order on top of `backend`. Invalid txs are dropped deterministically.

        `signatures[i]` says whether txs[i]'s signature was already verified good (a follower
        verifies in parallel before calling this). `admitted` says every tx passed
        `check_stateless` (signature included) at this node's admission, as a sequencer's own
        mempool txs did: those checks need no state, so only the stateful ones run again.
        """
        state = State(backend)
        block = BlockContext(state, height, time_ms, parent_hash)
        self.system.record_block_hash(state, height - 1, parent_hash)
        included: list[SignedTx] = []
        dropped: list[tuple[SignedTx, AdmissionError]] = []
        receipts: list[Receipt] = []
        max_txs = int(self.system.param(state, "max_block_txs"))
        for i, stx in enumerate(txs):
            try:
                if len(included) >= max_txs:
                    raise AdmissionError("mempool_full", "block is full")
                if not admitted:
                    self.check_stateless(stx, signature_ok=None if signatures is None else signatures[i])
                self.check_stateful(state, stx, expected_nonce=self.system.nonce(state, stx.tx.sender))
            except AdmissionError as exc:
                dropped.append((stx, exc))
                continue
            receipts.append(self.apply_tx(block, stx, len(included)))
            included.append(stx)
        block.tx_index = None
        for module in self.modules.values():
            module.on_finalize(block)
        changes = state.changes()
        new_root = state.updated_root(root, changes)
        outcome = BlockOutcome(
            included=included,
            dropped=dropped,
            receipts=receipts,
            events=block.events,
            changes=changes,
            root=new_root,
            tx_root=merkle_root([stx.hash for stx in included]),
        )
        # The leaves are `Event.hash()`, from the encodings the store keeps as well.
        outcome.events_root = merkle_root([codec.sha256(raw) for raw in outcome.event_encodings])
        return outcome
