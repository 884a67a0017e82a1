"""The pallet framework: how a runtime module declares its storage, calls, events and errors.

    class Balances(Module):
        name = "balances"                          # also the storage prefix
        events = {"Transfer", ...}
        class Error(ModuleError): ...              # codes "balances.<code>"
        accounts = StorageMap("account")           # balances/account/<key>

        @call()
        def transfer(self, ctx: CallContext, to: bytes, amount: int) -> None:
            ...                                    # authorize -> validate -> mutate and emit

A module reads and writes only its own prefix; it reaches other modules through the small
interfaces the runtime hands it (`self.rt.<interface>`), never through their storage.
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, Union

from umbra import codec
from umbra.chain.state import State
from umbra.chain.types import Event

if TYPE_CHECKING:
    from umbra.chain.runtime import Runtime

__all__ = [
    "BlockContext",
    "CallContext",
    "DispatchError",
    "Module",
    "ModuleError",
    "Origin",
    "StorageMap",
    "StorageValue",
    "call",
]


class Origin(enum.Enum):
    SIGNED = "signed"  # any account, the tx signer
    COUNCIL = "council"  # only through an approved council proposal


class DispatchError(Exception):
    """A call that failed in dispatch: the tx is included, marked failed, and its writes undone."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ModuleError(DispatchError):
    """Base of each module's `Error`. `code` is "<module>.<code>"."""


@dataclass
class BlockContext:
    """What every call and hook in one block sees: height, time, the block's events."""

    state: State
    height: int
    time_ms: int
    parent_hash: bytes
    events: list[Event] = field(default_factory=list)
    tx_index: int | None = None


@dataclass
class CallContext:
    """One dispatch. `sender` is the tx signer (None for council-origin calls)."""

    block: BlockContext
    origin: Origin
    sender: bytes | None
    tx_hash: bytes | None = None

    @property
    def state(self) -> State:
        return self.block.state

    @property
    def height(self) -> int:
        return self.block.height

    @property
    def time_ms(self) -> int:
        return self.block.time_ms

    def signer(self) -> bytes:
        if self.sender is None:
            raise DispatchError("system.bad_origin", "this call needs a signed origin")
        return self.sender


_F = TypeVar("_F", bound=Callable[..., Any])


def call(
    origin: Origin = Origin.SIGNED, spend: Callable[[dict[str, Any]], int] | None = None
) -> Callable[[_F], _F]:
    """Mark a module method as a dispatchable call.

    `spend(args)` is how much of the sender's free balance the call may move besides the fee;
    admission refuses a tx whose sender cannot cover fee + spend, before it reaches a block.
    """

    def mark(fn: _F) -> _F:
        fn.__umbra_call__ = CallSpec(fn.__name__, origin, spend or (lambda _args: 0))  # type: ignore[attr-defined]
        return fn

    return mark


@dataclass(frozen=True)
class CallSpec:
    name: str
    origin: Origin
    spend: Callable[[dict[str, Any]], int]


class StorageMap:
    """A typed map under the owning module's prefix: `<module>/<name>/<key bytes>` -> CBOR value."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.prefix = b""

    def __set_name__(self, owner: type, attr: str) -> None:
        self.prefix = f"{owner.name}/{self.name}/".encode()  # type: ignore[attr-defined]

    def key(self, key: bytes | str | int) -> bytes:
        if isinstance(key, str):
            raw = key.encode()
        elif isinstance(key, int):
            raw = key.to_bytes(8, "big")
        else:
            raw = key
        return self.prefix + raw

    def get(self, state: State, key: bytes | str | int, default: Any = None) -> Any:
        return state.get_value(self.key(key), default)

    def set(self, state: State, key: bytes | str | int, value: Any) -> None:
        state.set_value(self.key(key), value)

    def delete(self, state: State, key: bytes | str | int) -> None:
        state.delete(self.key(key))

    def contains(self, state: State, key: bytes | str | int) -> bool:
        return state.get(self.key(key)) is not None

    def items(self, state: State) -> Iterator[tuple[bytes, Any]]:
        """Entries in key order (deterministic)."""
        return self.items_with_prefix(state, b"")

    def items_with_prefix(self, state: State, key_prefix: bytes) -> Iterator[tuple[bytes, Any]]:
        """Entries whose key starts with `key_prefix`, in key order."""
        cut = len(self.prefix)
        for key, raw in state.iter_prefix(self.prefix + key_prefix):
            yield key[cut:], codec.decode_stored(raw)


class StorageValue:
    """A single typed value: `<module>/<name>`."""

    def __init__(self, name: str, default: Any = None) -> None:
        self.name = name
        self.default = default
        self.key = b""

    def __set_name__(self, owner: type, attr: str) -> None:
        self.key = f"{owner.name}/{self.name}".encode()  # type: ignore[attr-defined]

    def get(self, state: State) -> Any:
        return state.get_value(self.key, self.default)

    def set(self, state: State, value: Any) -> None:
        state.set_value(self.key, value)


class Module:
    """Base of runtime modules. Subclasses set `name`, `events` and an `Error` class."""

    name: ClassVar[str]
    events: ClassVar[frozenset[str]] = frozenset()
    Error: ClassVar[type[ModuleError]] = ModuleError

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.calls: dict[str, tuple[CallSpec, Callable[..., Any], dict[str, Any], set[str]]] = {}
        for attr in dir(type(self)):
            fn = getattr(type(self), attr)
            spec = getattr(fn, "__umbra_call__", None)
            if spec is not None:
                hints = typing.get_type_hints(fn)
                params = inspect.signature(fn).parameters
                required = {
                    n
                    for n, p in params.items()
                    if n not in ("self", "ctx") and p.default is inspect.Parameter.empty
                }
                arg_types = {n: hints[n] for n in params if n not in ("self", "ctx")}
                self.calls[spec.name] = (spec, getattr(self, attr), arg_types, required)

    # -- hooks (override as needed) --------------------------------------------------------------
    def genesis(self, state: State, config: Any, params: dict[str, Any]) -> None:
        """Write this module's genesis storage from its section of the genesis config."""

    def on_finalize(self, block: BlockContext) -> None:
        """End-of-block work (timers, scheduling). Runs after every tx of the block."""

    # -- helpers -------------------------------------------------------------------------------
    def emit(self, ctx: CallContext | BlockContext, event: str, /, **data: Any) -> None:
        if event not in self.events:
            raise RuntimeError(f"{self.name} emits undeclared event {event}")
        block = ctx.block if isinstance(ctx, CallContext) else ctx
        block.events.append(Event(self.name, event, data, block.tx_index))

    def fail(self, code: str, message: str) -> typing.NoReturn:
        raise self.Error(f"{self.name}.{code}", message)

    def ensure(self, cond: bool, code: str, message: str) -> None:
        if not cond:
            self.fail(code, message)


def check_args(arg_types: dict[str, Any], required: set[str], args: dict[str, Any]) -> str | None:
    """None if `args` fit the call's annotations, else what is wrong (a malformed call)."""
    unknown = set(args) - set(arg_types)
    if unknown:
        return f"unknown argument(s): {', '.join(sorted(unknown))}"
    missing = required - set(args)
    if missing:
        return f"missing argument(s): {', '.join(sorted(missing))}"
    for name, value in args.items():
        if not _fits(value, arg_types[name]):
            return f"argument {name!r} has the wrong type"
    return None


def _fits(value: Any, annotation: Any) -> bool:
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if type(annotation) is type:  # a plain class (bytes, str, dict, None's type): no typing machinery
        return isinstance(value, annotation)
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(annotation))
    if annotation is Any:
        return True
    if origin is list:
        (inner,) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_fits(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return False
