"""What contract authors import: `Contract`, `@command`, `@query`, and the per-job `Context`.

Everything a method can reach outside its own process goes through `ctx`. In the sandbox, `ctx`
services that need the enclave core (signing keys, TLS egress) are RPCs over the child's pipe;
all others are served from data the core put into the job before it started.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from umbra.contract import _values
from umbra.contract._services import SIGN_SCHEMES, host_allowed

__all__ = ["Context", "Contract", "ServiceError", "command", "query"]

F = TypeVar("F", bound=Callable[..., Any])
Kind = Literal["init", "command", "query"]

_KIND_ATTR = "__umbra_kind__"
_EVENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
MAX_RANDOM_PER_CALL = 1 << 20


class ServiceError(RuntimeError):
    """A `ctx` service refused or failed (http not allowed here, signing failed, ...)."""


class _Missing(KeyError):
    """KeyError whose str() is the message itself, not its repr."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _mark(fn: F, kind: Literal["command", "query"]) -> F:
    if not inspect.isfunction(fn):
        raise TypeError(f"@{kind} applies to a method defined with def, not {type(fn).__name__}")
    previous = getattr(fn, _KIND_ATTR, None)
    if previous not in (None, kind):
        raise TypeError(f"{fn.__name__} cannot be both @{previous} and @{kind}")
    if fn.__name__.startswith("_"):
        raise TypeError(f"@{kind} {fn.__name__!r}: callable methods must not start with '_'")
    if inspect.iscoroutinefunction(fn) or inspect.isgeneratorfunction(fn):
        raise TypeError(f"@{kind} {fn.__name__!r} must be a plain function (not async, not a generator)")
    setattr(fn, _KIND_ATTR, kind)
    return fn


def command(fn: F) -> F:
    """Mark a method as a command: it may change `self.state`, runs on chain, may be replicated."""
    return _mark(fn, "command")


def query(fn: F) -> F:
    """Mark a method as a query: read-only and off-chain; changes it makes to state are dropped."""
    return _mark(fn, "query")


class Contract:
    """Base class of every contract. Exactly one subclass per contract module.

    `self.state` is a dict of plain values (None, bool, int, float, str, bytes, lists, dicts). Any
    change inside it persists after a successful command, in-place changes to nested values
    included. Per-deploy setup goes in `init(self, ctx, **kwargs)`, never in `__init__`: each job
    runs in a fresh process, so nothing but `self.state` survives from one job to the next.

    Replicated commands must be deterministic: no wall clock, no `os.urandom`, no floats whose
    rounding may differ across hardware. Use `ctx.random`, `ctx.time_ms` and `umbra.contract.fixed`.
    """

    __umbra_commands__: ClassVar[frozenset[str]] = frozenset()
    __umbra_queries__: ClassVar[frozenset[str]] = frozenset()
    state: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kinds: dict[str, str] = {}
        # Walk the MRO base-first, so an override without a decorator un-marks the method.
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                kind = getattr(attr, _KIND_ATTR, None) if inspect.isfunction(attr) else None
                if kind in ("command", "query"):
                    kinds[name] = kind
                else:
                    kinds.pop(name, None)
        if "init" in kinds:
            raise TypeError("init runs once at deploy; it must not be marked @command or @query")
        cls.__umbra_commands__ = frozenset(n for n, k in kinds.items() if k == "command")
        cls.__umbra_queries__ = frozenset(n for n, k in kinds.items() if k == "query")


class Rpc(Protocol):
    """How a Context reaches the enclave core: `call("sign"|"http", request) -> result`."""

    def __call__(self, op: str, request: dict[str, Any]) -> Any: ...


class _RandomStream:
    """SHA-256 in counter mode over a per-job seed: equal seeds give equal bytes on every replica."""

    __slots__ = ("_buffer", "_counter", "_key")

    def __init__(self, seed: bytes) -> None:
        self._key = hashlib.sha256(b"umbra/ctx.random/v1\x00" + seed).digest()
        self._counter = 0
        self._buffer = b""

    def take(self, n: int) -> bytes:
        chunks = [self._buffer]
        have = len(self._buffer)
        while have < n:
            block = hashlib.sha256(self._key + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
            chunks.append(block)
            have += len(block)
        data = b"".join(chunks)
        self._buffer = data[n:]
        return data[:n]


def _account(value: Any, what: str) -> bytes:
    if isinstance(value, str):
        body = value[2:] if value[:2] in ("0x", "0X") else value
        try:
            value = bytes.fromhex(body)
        except ValueError:
            raise ValueError(f"{what} must be 0x-hex or 32 bytes") from None
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise ValueError(f"{what} must be a 32-byte account id (bytes or 0x-hex)")
    return bytes(value)


def _bytes_arg(value: Any, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


class Context:
    """What a contract method knows about its call, and the services it may use. Read-only."""

    __slots__ = (
        "_allowlist",
        "_blobs",
        "_caller",
        "_contract",
        "_events",
        "_height",
        "_job",
        "_kind",
        "_limits",
        "_random",
        "_replicated",
        "_rpc",
        "_secrets",
        "_time_ms",
        "_transfers",
        "_value",
    )

    def __init__(
        self,
        *,
        kind: Kind,
        caller: bytes,
        contract: bytes,
        height: int,
        time_ms: int,
        job: bytes | None,
        replicated: bool,
        value: int,
        seed: bytes,
        secrets: Mapping[str, bytes],
        blobs: Mapping[bytes, bytes],
        http_allowlist: Sequence[str],
        rpc: Rpc,
        max_events: int,
        max_event_bytes: int,
        max_transfers: int,
    ) -> None:
        self._kind = kind
        self._caller = "0x" + caller.hex()
        self._contract = "0x" + contract.hex()
        self._height = height
        self._time_ms = time_ms
        self._job = None if job is None else "0x" + job.hex()
        self._replicated = replicated
        self._value = value
        self._random = _RandomStream(seed)
        self._secrets = secrets
        self._blobs = blobs
        self._allowlist = tuple(http_allowlist)
        self._rpc = rpc
        self._limits = (max_events, max_event_bytes, max_transfers)
        self._events: list[tuple[str, bytes]] = []
        self._transfers: list[tuple[bytes, int]] = []

    # ---- facts about the call ----------------------------------------------------------------

    @property
    def caller(self) -> str:
        """The signer of the request (a tx for commands, a signed query for queries), 0x-hex."""
        return self._caller

    @property
    def contract(self) -> str:
        return self._contract

    @property
    def height(self) -> int:
        """Block height: of the job's block for commands, of the state read for queries."""
        return self._height

    @property
    def time_ms(self) -> int:
        """Block time in ms. Use it instead of the wall clock: replicas agree on it."""
        return self._time_ms

    @property
    def job(self) -> str | None:
        """The job id, 0x-hex; None for queries."""
        return self._job

    @property
    def replicated(self) -> bool:
        """True when other workers run the same job and must reach the same result."""
        return self._replicated

    @property
    def value(self) -> int:
        """Funds the caller moved into the contract's account with this call (`--value`)."""
        return self._value

    # ---- services --------------------------------------------------------------------------------

    def random(self, n: int) -> bytes:
        """n bytes, deterministic per job (replicas agree) and unpredictable to outsiders."""
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_RANDOM_PER_CALL:
            raise ValueError(f"ctx.random(n) takes an int n between 0 and {MAX_RANDOM_PER_CALL}")
        return self._random.take(n)

    def secret(self, name: str) -> bytes:
        """A secret the contract owner uploaded (decrypted by the enclave core)."""
        try:
            return self._secrets[name]
        except (KeyError, TypeError):
            raise _Missing(f"no secret named {name!r} was uploaded for this contract") from None

    def blob(self, hash: bytes | str) -> bytes:
        """The bytes of a blob registered for this contract, by its hash (bytes or 0x-hex)."""
        key = hash
        if isinstance(hash, str):
            try:
                key = bytes.fromhex(hash[2:] if hash[:2] in ("0x", "0X") else hash)
            except ValueError:
                raise ValueError("ctx.blob(hash): hash must be bytes or 0x-hex") from None
        try:
            return self._blobs[bytes(key)]  # type: ignore[arg-type]
        except (KeyError, TypeError):
            raise _Missing(f"no blob {hash!r} is available to this contract") from None

    def http(
        self,
        method: str,
        url: str,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """An HTTP(S) request through the enclave core, which terminates TLS.

        Only in queries and unreplicated jobs (replicas could see different responses), and only
        to hosts on the contract manifest's `http_allowlist`. Returns {status, headers, body}.
        """
        if self._replicated and self._kind != "query":
            raise ServiceError(
                "ctx.http is only available in queries and unreplicated jobs: replicas could see "
                "different responses and disagree"
            )
        if not isinstance(method, str) or not isinstance(url, str):
            raise TypeError("ctx.http(method, url, ...): method and url must be str")
        if not host_allowed(url, self._allowlist):
            allowed = ", ".join(self._allowlist) or "nothing"
            raise ServiceError(f"{url!r} is not on this contract's http_allowlist (allowed: {allowed})")
        request: dict[str, Any] = {
            "method": method.upper(),
            "url": url,
            "headers": {str(k): str(v) for k, v in (headers or {}).items()},
            "body": None if body is None else _bytes_arg(body, "ctx.http body"),
        }
        response: dict[str, Any] = self._rpc("http", request)
        return response

    def sign(self, scheme: str, message: bytes) -> bytes:
        """Sign with the contract's own key ("ed25519" or "secp256k1"); the key stays in the core."""
        if scheme not in SIGN_SCHEMES:
            raise ValueError(f"ctx.sign: scheme must be one of {', '.join(SIGN_SCHEMES)}")
        signature: bytes = self._rpc("sign", {"scheme": scheme, "message": _bytes_arg(message, "message")})
        return signature

    def emit(self, name: str, **data: Any) -> None:
        """Publish an event on chain when the job settles. Events are public: emit nothing secret."""
        if self._kind == "query":
            raise ServiceError("ctx.emit is not available in queries: only settled jobs publish events")
        if not isinstance(name, str) or not _EVENT_NAME.fullmatch(name):
            raise ValueError("event names are 1-64 characters: a letter, then letters, digits, _ . -")
        max_events, max_bytes, _ = self._limits
        if len(self._events) >= max_events:
            raise ServiceError(f"a job may emit at most {max_events} events")
        encoded = _values.encode(data, what=f"event {name!r}")  # snapshot now: data may change later
        if sum(len(e) for _, e in self._events) + len(encoded) > max_bytes:
            raise ServiceError(f"events of one job may total at most {max_bytes} bytes")
        self._events.append((name, encoded))

    def transfer(self, to: bytes | str, amount: int) -> None:
        """Pay `amount` from the contract's own account to `to`, applied when the job settles."""
        if self._kind == "query":
            raise ServiceError("ctx.transfer is not available in queries: only settled jobs move funds")
        account = _account(to, "transfer recipient")
        if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount < 1 << 128:
            raise ValueError("transfer amount must be a positive int (smallest units)")
        if len(self._transfers) >= self._limits[2]:
            raise ServiceError(f"a job may make at most {self._limits[2]} transfers")
        self._transfers.append((account, amount))
