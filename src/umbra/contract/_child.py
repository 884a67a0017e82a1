"""Inside a job: run one contract method against one job body and describe the result.

`execute` is pure Python with no sandbox knowledge, so the in-process LocalRunner and the forked
child share every rule about kinds, arguments, state, output and errors. `serve` is the child's
main: it confines itself, waits for its job, executes it, writes one result frame and exits.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.abc
import importlib.machinery
import inspect
import os
import random
import resource
import signal
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from umbra.contract import _sandbox, _values, _wire
from umbra.contract._sdk import Context, Contract, Rpc, ServiceError, command

# Exit codes of a child that could not run its job at all (the runner maps them to messages).
EXIT_SETUP_FAILED = 70


@dataclass(frozen=True, slots=True)
class ArgSpec:
    """What keyword arguments a method accepts after (self, ctx): checked without inspect.bind."""

    names: frozenset[str]
    required: frozenset[str]
    any_keyword: bool  # **kwargs

    @classmethod
    def of(cls, signature: inspect.Signature) -> ArgSpec | None:
        """None when ctx cannot be passed positionally (the slow path will explain)."""
        params = list(signature.parameters.values())
        if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
            return None
        rest = params[1:]
        keyword = [p for p in rest if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if any(p.kind == p.POSITIONAL_ONLY and p.default is p.empty for p in rest):
            return None
        return cls(
            names=frozenset(p.name for p in keyword),
            required=frozenset(p.name for p in keyword if p.default is p.empty),
            any_keyword=any(p.kind == p.VAR_KEYWORD for p in rest),
        )

    def accepts(self, args: Mapping[str, Any]) -> bool:
        keys = args.keys()
        return self.required <= keys and (self.any_keyword or keys <= self.names)


@dataclass(slots=True)
class Loaded:
    """A contract class as loaded in the warm host (or LocalRunner), ready to serve jobs."""

    cls: type[Contract]
    filename: str  # the pseudo file name its code was compiled under, for error locations
    # Per callable method (and init): signature without self, for bad-argument messages.
    signatures: dict[str, inspect.Signature] = field(default_factory=dict)
    specs: dict[str, ArgSpec] = field(default_factory=dict)
    functions: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChildLimits:
    """What the child applies to itself after fork (from Limits, plus the host's footprint)."""

    cpu_seconds: int
    data_bytes: int  # RLIMIT_DATA: the host's data size at fork plus the job's memory budget
    address_bytes: int  # RLIMIT_AS backstop for shared mappings that RLIMIT_DATA does not count
    open_files: int = 64


def _without_self(fn: Any) -> inspect.Signature | None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    parameters = list(signature.parameters.values())
    return signature.replace(parameters=parameters[1:]) if parameters else signature


def prepare(cls: type[Contract], filename: str) -> Loaded:
    """Precompute what dispatch needs, so that a job does as little as possible."""
    names = sorted(cls.__umbra_commands__ | cls.__umbra_queries__)
    if callable(getattr(cls, "init", None)):
        names.append("init")
    loaded = Loaded(cls, filename)
    for name in names:
        function = getattr(cls, name)
        loaded.functions[name] = function
        signature = _without_self(function)
        if signature is not None:
            loaded.signatures[name] = signature
            spec = ArgSpec.of(signature)
            if spec is not None:
                loaded.specs[name] = spec
    return loaded


class _Failure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def describe(exc: BaseException, filename: str, memory_bytes: int | None = None) -> str:
    """One line for a contract's exception: type, message, and where in the contract it arose."""
    if isinstance(exc, SystemExit):
        return f"the contract called sys.exit({exc.code!r}); return a value or raise an exception instead"
    if isinstance(exc, MemoryError):
        limit = f" (the job's memory limit is {memory_bytes >> 20} MiB)" if memory_bytes else ""
        return f"MemoryError: out of memory{limit}"
    text = str(exc)
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, PermissionError) and exc.errno in (errno.EPERM, errno.EACCES):
        message += " (denied by the contract sandbox: jobs have no files, network, processes or signals)"
    where = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    if where:
        message += f" (contract line {where[-1].lineno}, in {where[-1].name})"
    return message[:4000]


def _method(loaded: Loaded, kind: str, name: Any) -> tuple[str, inspect.Signature | None]:
    cls = loaded.cls
    if kind == "init":
        return "init", loaded.signatures.get("init")
    if not isinstance(name, str) or not name:
        raise _Failure("request", f"a {kind} needs a method name")
    if name.startswith("_"):
        raise _Failure("request", f"{name!r} is private: only @command and @query methods can be called")
    own, other = (
        (cls.__umbra_commands__, cls.__umbra_queries__)
        if kind == "command"
        else (cls.__umbra_queries__, cls.__umbra_commands__)
    )
    if name not in own:
        if name in other:
            other_kind = "query" if kind == "command" else "command"
            raise _Failure("request", f"{name!r} is a @{other_kind}; call it as a {other_kind}, not a {kind}")
        listed = ", ".join(sorted(own)) or "none"
        raise _Failure("request", f"{cls.__name__} has no {kind} {name!r} ({kind}s: {listed})")
    return name, loaded.signatures.get(name)


def _reseed_global_generators(seed: bytes) -> None:
    # Fork copies the host's generator state into every child, so without this two callers would
    # draw the same "random" numbers. Seeding from the job seed also keeps replicas in agreement.
    derived = hashlib.sha256(b"umbra/global-random/v1\x00" + seed).digest()
    random.seed(int.from_bytes(derived, "big"))  # an int seeds MT directly, the same everywhere
    # Only if the contract loaded it: numpy imports `random` lazily, and a job cannot import.
    numpy_random = sys.modules.get("numpy.random")
    legacy = getattr(numpy_random, "seed", None)
    if callable(legacy):
        legacy(int.from_bytes(derived[:4], "big"))


def execute(loaded: Loaded, job: Mapping[str, Any], rpc: Rpc) -> dict[str, Any]:
    """Run one job body (see _runner.job_body) and return the result map the runner decodes."""
    try:
        return _execute(loaded, job, rpc)
    except _Failure as failure:
        return {"ok": False, "code": failure.code, "error": str(failure)}


def _execute(loaded: Loaded, job: Mapping[str, Any], rpc: Rpc) -> dict[str, Any]:
    kind = job["kind"]
    limits: Mapping[str, int] = job["limits"]
    name, signature = _method(loaded, kind, job.get("method"))
    if kind == "init" and "init" not in loaded.functions:
        return {
            "ok": True,
            "output": _values.encode(None, what="output"),
            "state": _values.encode({}, what="state"),
            "events": [],
            "transfers": [],
        }
    args = job.get("args") or {}
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise _Failure("request", "arguments must be a map of names to values")
    try:
        state = (
            {} if kind == "init" or job.get("state") is None else _values.decode(job["state"], what="state")
        )
    except _values.ValueRejected as exc:
        raise _Failure("request", str(exc)) from None
    if not isinstance(state, dict):
        raise _Failure("request", "contract state must be a map")
    seed: bytes = job["seed"]
    _reseed_global_generators(seed)
    ctx = Context(
        kind=kind,
        caller=job["caller"],
        contract=job["contract"],
        height=job["height"],
        time_ms=job["time_ms"],
        job=job.get("job"),
        replicated=job["replicated"],
        value=job["value"],
        seed=seed,
        secrets=job.get("secrets") or {},
        blobs=job.get("blobs") or {},
        http_allowlist=job.get("http_allowlist") or (),
        rpc=rpc,
        max_events=limits["events"],
        max_event_bytes=limits["event_bytes"],
        max_transfers=limits["transfers"],
    )
    spec = loaded.specs.get(name)
    if signature is not None and (spec is None or not spec.accepts(args)):
        try:
            signature.bind(ctx, **args)
        except TypeError as exc:
            raise _Failure("request", f"bad arguments for {name}(): {exc}") from None
    instance = loaded.cls.__new__(loaded.cls)
    instance.state = state
    method = getattr(instance, name)
    try:
        output = method(ctx, **args)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt fail the job, not the process
        code = "limit" if isinstance(exc, MemoryError) else "contract"
        raise _Failure(code, describe(exc, loaded.filename, limits.get("memory"))) from None
    return _result(kind, instance, output, ctx, limits)


def _result(
    kind: str, instance: Contract, output: Any, ctx: Context, limits: Mapping[str, int]
) -> dict[str, Any]:
    try:
        output_bytes = _values.encode(output, what="output")
    except _values.ValueRejected as exc:
        raise _Failure("contract", str(exc)) from None
    except MemoryError:
        raise _Failure("limit", "MemoryError: out of memory while encoding the output") from None
    if len(output_bytes) > limits["output_bytes"]:
        raise _Failure(
            "limit", f"the output is {_size(len(output_bytes))}; the limit is {_size(limits['output_bytes'])}"
        )
    result: dict[str, Any] = {"ok": True, "output": output_bytes}
    if kind == "query":
        return result  # a query's changes to state are discarded, as are its (refused) effects
    state = instance.state
    if not isinstance(state, dict):
        raise _Failure("contract", f"self.state must remain a dict, not {type(state).__name__}")
    try:
        state_bytes = _values.encode(state, what="state")
    except _values.ValueRejected as exc:
        raise _Failure("contract", str(exc)) from None
    except MemoryError:
        raise _Failure("limit", "MemoryError: out of memory while encoding the state") from None
    if len(state_bytes) > limits["state_bytes"]:
        raise _Failure(
            "limit", f"the state is {_size(len(state_bytes))}; the limit is {_size(limits['state_bytes'])}"
        )
    result["state"] = state_bytes
    result["events"] = [[name, data] for name, data in ctx._events]
    result["transfers"] = [[to, amount] for to, amount in ctx._transfers]
    return result


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


# ---- the forked child ----------------------------------------------------------------------------


class _NoLazyImports(importlib.abc.MetaPathFinder):
    """A job cannot read files, so importing a module not loaded by the host cannot work: say why."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> None:
        if fullname in sys.builtin_module_names or importlib.machinery.FrozenImporter.find_spec(fullname):
            return None  # these need no file
        raise ModuleNotFoundError(
            f"module {fullname!r} is not loaded: jobs cannot read files, so import every module a "
            "contract needs at the top of its module (the sandbox's warm parent loads it once)",
            name=fullname,
        )


@dataclass(frozen=True, slots=True)
class Confinement:
    """What the host prepared for its children (see _host)."""

    bpf: bytes
    landlock_fd: int  # -1 when Landlock is unavailable
    limits: ChildLimits


class _PipeRpc:
    def __init__(self, reader: _wire.FrameReader, write_fd: int) -> None:
        self._reader = reader
        self._write_fd = write_fd

    def __call__(self, op: str, request: dict[str, Any]) -> Any:
        _wire.write_frame(self._write_fd, _wire.RPC, _values.encode({"op": op, **request}, what="request"))
        frame = self._reader.read()
        if frame is None or frame[0] != _wire.REPLY:
            raise ServiceError(f"ctx.{op}: no reply from the enclave core")
        reply = _values.decode(frame[1], what="reply")
        if not isinstance(reply, dict) or not reply.get("ok"):
            error = reply.get("error") if isinstance(reply, dict) else None
            raise ServiceError(f"ctx.{op} failed: {error or 'malformed reply'}")
        return reply.get("value")


def _confine(confinement: Confinement, keep: Sequence[int], host_pid: int) -> None:
    _sandbox.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != host_pid:
        os._exit(0)  # the host died before PDEATHSIG was armed
    for signum in (signal.SIGPIPE, signal.SIGXCPU, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_DFL)
    limits = confinement.limits
    _sandbox.set_rlimit(resource.RLIMIT_CORE, 0)
    _sandbox.set_rlimit(resource.RLIMIT_FSIZE, 0)
    # Soft limit: SIGXCPU, which kills by default. Hard limit one second later: SIGKILL, in case
    # the contract installed a handler for SIGXCPU.
    _sandbox.set_rlimit(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1)
    _sandbox.set_rlimit(resource.RLIMIT_DATA, limits.data_bytes)
    _sandbox.set_rlimit(resource.RLIMIT_AS, limits.address_bytes)
    if confinement.landlock_fd >= 0:
        _sandbox.landlock_restrict(confinement.landlock_fd)
    # Drop every descriptor but the job pipes and stdio (/dev/null): the host's protocol pipes
    # above all, so that nothing the contract writes can reach the runner except through the host.
    keep_set = sorted({0, 1, 2, *keep})
    low = 0
    for fd in keep_set:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)
    _sandbox.set_rlimit(resource.RLIMIT_NOFILE, limits.open_files)
    _sandbox.load_bpf(confinement.bpf)
    sys.meta_path.insert(0, _NoLazyImports())


class _Rehearsal(Contract):
    """Exercised by each spare child before its job arrives: see _rehearse."""

    @command
    def run(self, ctx: Context, value: Any = None) -> Any:
        self.state["seen"] = [value, ctx.random(8), ctx.caller, ctx.job]
        ctx.emit("Rehearsed", value=value)
        ctx.transfer(bytes(32), 1)
        return value


_REHEARSAL = prepare(_Rehearsal, "<rehearsal>")


def _rehearse(loaded: Loaded, sample: bytes) -> None:
    """Walk the job path once on a built-in contract and dummy data, before the job arrives.

    A fresh fork shares every page with the host; the first write to each (a refcount update is
    enough) costs a copy-on-write fault, about 4 us on this kind of VM and ~200 of them on the
    way through decode, Context, dispatch and encode. Taking them here, while the spare is idle,
    keeps them off the job's latency. No contract code runs: its functions are only referenced.
    """
    job = _values.decode(sample, what="job")
    job.pop("blob_keys", None)
    job["blobs"] = {}
    _report(-1, execute(_REHEARSAL, job, _no_rpc), dry_run=True)
    # Taking a reference writes the object's refcount, which is all a fault needs.
    touched = [
        (f.__code__, f.__globals__, f.__defaults__, f.__kwdefaults__) for f in loaded.functions.values()
    ]
    del touched


def _no_rpc(op: str, request: dict[str, Any]) -> Any:
    raise ServiceError("no services while rehearsing")


def _report(fd: int, result: dict[str, Any], *, dry_run: bool = False) -> None:
    payload = _values.encode(result, what="result")
    if not dry_run:
        _wire.write_frame(fd, _wire.RESULT, payload)


def serve(
    loaded: Loaded,
    confinement: Confinement,
    blobs: Mapping[bytes, bytes],
    job_fd: int,
    result_fd: int,
    host_pid: int,
    rehearsal: bytes,
) -> NoReturn:
    """The spare child: confine, wait for the job, run it, report, exit. Never returns.

    A query whose body carries `again` (a CPU budget in ms) may keep the child for the next query
    of the same caller (the runner pools it under that caller, see ContractRunner): while the child
    has used less CPU than that, its result says `again` and it waits for another JOB."""
    try:
        os.set_blocking(job_fd, True)
        _confine(confinement, (job_fd, result_fd), host_pid)
    except BaseException as exc:
        # Fail closed: a child that is not fully confined never sees a job.
        message = f"the sandbox could not confine the job process: {type(exc).__name__}: {exc}"
        with contextlib.suppress(BaseException):
            _report(result_fd, {"ok": False, "code": "sandbox", "error": message})
        os._exit(EXIT_SETUP_FAILED)
    try:
        _rehearse(loaded, rehearsal)
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            _report(result_fd, _process_failure(exc))
        os._exit(0)
    reader = _wire.FrameReader(job_fd, 1 << 31)
    while _serve_job(loaded, blobs, reader, result_fd):
        pass
    try:
        # Tearing down a forked process (freeing its copied pages) takes about a millisecond here:
        # at the lowest priority it yields to the next job instead of competing with it.
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    finally:
        os._exit(0)


def _serve_job(
    loaded: Loaded, blobs: Mapping[bytes, bytes], reader: _wire.FrameReader, result_fd: int
) -> bool:
    """Wait for one job, run it, report it; True if this child then waits for another."""
    again = False
    try:
        frame = reader.read()
        if frame is None or frame[0] != _wire.JOB:
            os._exit(0)  # the host discarded this spare, or the runner retired it
        job = _values.decode(frame[1], what="job")
        del frame
        keys = job.pop("blob_keys", None) or ()
        reuse_cpu_ms = job.pop("again", None)
        job["blobs"] = {key: blobs[key] for key in keys if key in blobs}
        result = execute(loaded, job, _PipeRpc(reader, result_fd))
        again = job.get("kind") == "query" and type(reuse_cpu_ms) is int and _cpu_ms() < reuse_cpu_ms
    except MemoryError:
        result = {"ok": False, "code": "limit", "error": "MemoryError: out of memory"}
    except BaseException as exc:
        result = _process_failure(exc)
    if again:
        result["again"] = True  # the runner keeps this child for the caller's next query
    try:
        _report(result_fd, result)
    except BaseException:
        os._exit(0)  # the runner is gone
    return again


def _process_failure(exc: BaseException) -> dict[str, Any]:
    return {"ok": False, "code": "sandbox", "error": f"the job process failed: {type(exc).__name__}: {exc}"}


def _cpu_ms() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return int((usage.ru_utime + usage.ru_stime) * 1000)
