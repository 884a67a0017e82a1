"""The enclave core's handle on a contract: `ContractRunner` (sandboxed) and `LocalRunner` (not).

    runner = ContractRunner(code, contract_id=cid, limits=Limits())   # starts the warm host
    outcome = runner.run(JobSpec(kind="command", method="add", args={"by": 2}, state=state,
                                 caller=sender, job=job_id, random_seed=seed), services)
    runner.close()

A runner serves one job at a time (calls are serialized); run several runners for parallel
queries. Everything the host or a job child sends is treated as hostile: frames are bounded, CBOR
is decoded without tags, and every field of a result is checked before it becomes a JobOutcome.
`run` never raises for anything a contract or a caller can cause: it returns a failed outcome.
"""

from __future__ import annotations

import array
import collections
import contextlib
import math
import os
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from umbra.contract import _values, _wire
from umbra.contract._child import execute
from umbra.contract._loader import LoadError, load_contract
from umbra.contract._sandbox import Protections
from umbra.contract._sdk import ServiceError
from umbra.contract._services import Services, handle_rpc
from umbra.contract._validate import ContractInfo

__all__ = [
    "ContractLoadError",
    "ContractRunner",
    "ErrorCode",
    "JobOutcome",
    "JobSpec",
    "Limits",
    "LocalRunner",
    "SandboxError",
]

ErrorCode = Literal["request", "contract", "limit", "sandbox"]
_ERROR_CODES = ("request", "contract", "limit", "sandbox")
_EVENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
# Threaded math libraries read these before they start: one thread per job (ARCHITECTURE.md).
_THREAD_PINS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "RAYON_NUM_THREADS",
)
_FD_SIZE = array.array("i").itemsize
_SETTLE_S = 0.5  # how long a finished child may take to exit before the runner kills it
_GRACE_S = 5.0  # how long the host may take to report a killed child before it is replaced
# Callers whose last query child is kept for their next query (see _kept_child), and the share of
# a job's CPU budget a kept child may have used before it is retired instead.
_KEPT_CALLERS = 8
_KEPT_CPU_SHARE = 50


class SandboxError(Exception):
    """The sandbox cannot serve jobs (not: a job failed; that is a failed JobOutcome)."""


class ContractLoadError(SandboxError):
    """The contract module could not be loaded: bad code, an import error, or no confinement."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-job resource limits. Memory is on top of what the warm host already holds."""

    cpu_seconds: int = 10
    wall_seconds: float = 30.0
    memory_bytes: int = 1 << 30
    output_bytes: int = 1 << 20
    state_bytes: int = 64 << 20
    events: int = 256
    event_bytes: int = 64 << 10
    transfers: int = 256
    rpc_calls: int = 1024
    http_body_bytes: int = 8 << 20
    load_seconds: float = 120.0  # importing the contract module in the warm host
    blob_cache_bytes: int = 2 << 30  # blobs kept in the host so that children inherit them

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"Limits.{item.name} must be a positive number")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"Limits.{item.name} must be finite")
        if not isinstance(self.cpu_seconds, int):
            raise ValueError("Limits.cpu_seconds must be an int (RLIMIT_CPU counts whole seconds)")


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job. `kind="init"` starts from empty state and runs `init(ctx, **args)` if defined."""

    kind: Literal["init", "command", "query"]
    method: str | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    state: Mapping[str, Any] | None = None
    caller: bytes = bytes(32)
    height: int = 0
    time_ms: int = 0
    job: bytes | None = None  # None for queries
    replicated: bool = False
    value: int = 0
    # Replicas of one job must get the same seed, and nobody else may know it (e.g. HKDF of the
    # contract's commit key and the job id; for queries, of the query id).
    random_seed: bytes = b""
    secrets: Mapping[str, bytes] = field(default_factory=dict)
    blobs: Mapping[bytes, bytes] = field(default_factory=dict)
    http_allowlist: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """The result of a job. On failure, state, events and transfers are empty: nothing applies.

    error_code: "request" (no such method, bad arguments), "contract" (it raised, returned data
    that cannot be stored, crashed or exited), "limit" (CPU, wall time, memory, sizes) or
    "sandbox" (the sandbox itself failed; another worker may succeed).
    """

    ok: bool
    output: Any = None
    error: str | None = None
    error_code: ErrorCode | None = None
    new_state: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    transfers: list[tuple[bytes, int]] = field(default_factory=list)


def _failure(code: ErrorCode, message: str) -> JobOutcome:
    return JobOutcome(ok=False, error=message, error_code=code)


def _check_job(job: JobSpec) -> str | None:
    if not isinstance(job, JobSpec):
        return "run() takes a JobSpec"
    if job.kind not in ("init", "command", "query"):
        return f"unknown job kind {job.kind!r}"
    if job.kind != "init" and (not isinstance(job.method, str) or not job.method):
        return f"a {job.kind} needs a method name"
    if not isinstance(job.args, Mapping) or not all(isinstance(k, str) for k in job.args):
        return "args must be a map of argument names to values"
    if job.state is not None and not isinstance(job.state, Mapping):
        return "state must be a map or None"
    if not isinstance(job.caller, bytes) or not isinstance(job.job, bytes | None):
        return "caller and job must be bytes"
    for name in ("height", "time_ms", "value"):
        value = getattr(job, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{name} must be a non-negative int"
    if not isinstance(job.random_seed, bytes) or len(job.random_seed) < 16:
        return "random_seed must be at least 16 bytes, equal on every replica of the job"
    if not all(isinstance(k, str) and isinstance(v, bytes) for k, v in job.secrets.items()):
        return "secrets must map names to bytes"
    if not all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in job.blobs.items()):
        return "blobs must map hashes (bytes) to bytes"
    if isinstance(job.http_allowlist, str) or not all(isinstance(h, str) for h in job.http_allowlist):
        return "http_allowlist must be a list of host names"
    return None


def job_body(job: JobSpec, contract: bytes, limits: Limits) -> dict[str, Any]:
    """The job as the child sees it (blobs travel separately, by key; see ContractRunner)."""
    return {
        "kind": job.kind,
        "method": job.method,
        "args": dict(job.args),
        "state": None
        if job.state is None or job.kind == "init"
        else _values.encode(dict(job.state), what="state"),
        "caller": job.caller,
        "contract": contract,
        "height": job.height,
        "time_ms": job.time_ms,
        "job": job.job,
        "replicated": bool(job.replicated),
        "value": job.value,
        "seed": job.random_seed,
        "secrets": dict(job.secrets),
        "blob_keys": list(job.blobs),
        "http_allowlist": list(job.http_allowlist),
        "limits": {
            "events": limits.events,
            "event_bytes": limits.event_bytes,
            "transfers": limits.transfers,
            "output_bytes": limits.output_bytes,
            "state_bytes": limits.state_bytes,
            "memory": limits.memory_bytes,
        },
    }


def _outcome(job: JobSpec, payload: bytes, limits: Limits) -> JobOutcome:
    """Check a child's result frame field by field: contract code could have written it."""
    try:
        result = _values.decode(payload, what="the result")
    except _values.ValueRejected as exc:
        return _malformed(exc)
    return _result_outcome(job, result, limits)


def _malformed(exc: _values.ValueRejected) -> JobOutcome:
    return _failure("contract", f"the job process returned a malformed result: {exc}")


def _result_outcome(job: JobSpec, result: Any, limits: Limits) -> JobOutcome:
    try:
        if not isinstance(result, dict) or not isinstance(result.get("ok"), bool):
            raise _values.ValueRejected("the result is not a map with a boolean 'ok'")
        if not result["ok"]:
            code = result.get("code")
            error = result.get("error")
            return _failure(
                code if code in _ERROR_CODES else "contract",
                error[:4000] if isinstance(error, str) and error else "the job failed without a message",
            )
        output = _decode_bounded(result.get("output"), limits.output_bytes, "output")
        if job.kind == "query":
            return JobOutcome(ok=True, output=output)
        state = _decode_bounded(result.get("state"), limits.state_bytes, "state")
        if not isinstance(state, dict):
            raise _values.ValueRejected("the new state is not a map")
        return JobOutcome(
            ok=True,
            output=output,
            new_state=state,
            events=_events(result.get("events"), limits),
            transfers=_transfers(result.get("transfers"), limits),
        )
    except _values.ValueRejected as exc:
        return _malformed(exc)


def _decode_bounded(data: Any, limit: int, what: str) -> Any:
    if not isinstance(data, bytes):
        raise _values.ValueRejected(f"{what} is missing")
    if len(data) > limit:
        raise _values.ValueRejected(f"{what} exceeds {limit} bytes")
    return _values.decode(data, what=what)


def _events(value: Any, limits: Limits) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > limits.events:
        raise _values.ValueRejected("events must be a list within the limit")
    events, total = [], 0
    for item in value:
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str):
            raise _values.ValueRejected("an event is not [name, data]")
        name, data = item
        if not _EVENT_NAME.fullmatch(name) or not isinstance(data, bytes):
            raise _values.ValueRejected("an event has a bad name or data")
        total += len(data)
        decoded = _values.decode(data, what=f"event {name}")
        if total > limits.event_bytes or not isinstance(decoded, dict):
            raise _values.ValueRejected("events exceed their size limit or carry no map")
        events.append({"name": name, "data": decoded})
    return events


def _transfers(value: Any, limits: Limits) -> list[tuple[bytes, int]]:
    if not isinstance(value, list) or len(value) > limits.transfers:
        raise _values.ValueRejected("transfers must be a list within the limit")
    out = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], bytes)
            or len(item[0]) != 32
            or type(item[1]) is not int
            or not 0 < item[1] < 1 << 128
        ):
            raise _values.ValueRejected("a transfer is not [32-byte account, positive amount]")
        out.append((item[0], item[1]))
    return out


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _exit_outcome(info: Any, limits: Limits) -> JobOutcome:
    """A child that ended without a result: say what most likely happened."""
    if not isinstance(info, dict):
        return _failure("sandbox", "the job process ended without a result")
    sig, code, cpu_ms = info.get("signal"), info.get("exit"), info.get("cpu_ms")
    cpu_ms = cpu_ms if isinstance(cpu_ms, int) else 0
    memory = f"{limits.memory_bytes >> 20} MiB"
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_ms >= limits.cpu_seconds * 1000):
        return _failure("limit", f"CPU time limit exceeded ({limits.cpu_seconds} s)")
    if sig == signal.SIGKILL:
        return _failure(
            "limit", f"the job process was killed (SIGKILL): most likely out of memory (limit {memory})"
        )
    if sig == signal.SIGSYS:
        return _failure("contract", "the job process made a forbidden system call (SIGSYS)")
    if isinstance(sig, int):
        return _failure("contract", f"the job process crashed ({_signal_name(sig)})")
    if code == 70:
        return _failure("sandbox", "the job process could not be confined")
    return _failure(
        "contract",
        f"the contract ended its process (exit status {code}) before returning; return a value or raise instead",
    )


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields_after_name = stat[stat.rfind(b")") + 2 :].split()
    return int(fields_after_name[1]) if len(fields_after_name) > 1 else None


def _host_env() -> dict[str, str]:
    """A minimal environment: the core's own (keys, tokens, paths) never reaches contract code."""
    package_root = str(Path(__file__).resolve().parents[2])  # the directory holding `umbra`
    python_path = [package_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(python_path)),
        # Fixed str hashing: set iteration order must agree across replicas of a command.
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LC_ALL": "C.UTF-8",
        "PATH": "/usr/bin:/bin",
    }
    env.update(dict.fromkeys(_THREAD_PINS, "1"))
    return env


class _Spare:
    """A confined child, forked ahead of time, whose pipes the host handed to us (see _host)."""

    __slots__ = ("again", "generation", "job_w", "pid", "reader")

    def __init__(self, pid: int, generation: int, job_w: int, result_r: int, frame_limit: int) -> None:
        self.pid = pid
        self.generation = generation
        self.job_w = job_w  # non-blocking (the host made it so): writes are bounded by the deadline
        self.reader = _wire.FrameReader(result_r, frame_limit)
        self.again = False  # it answered a query and waits for its caller's next one

    def idle(self) -> bool:
        """Nothing to read from it: a kept child that exited or wrote out of turn is not idle."""
        return not self.reader.pending() and not select.select([self.reader.fd], [], [], 0)[0]

    def close(self) -> None:
        """Drop our ends: an unused spare reads EOF and exits."""
        for fd in (self.job_w, self.reader.fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class ContractRunner:
    """A warm sandbox for one contract; each job runs in a fresh, confined child process, except
    that a caller's next query may run in the child of its previous query (never another's)."""

    def __init__(
        self,
        code: str,
        *,
        contract_id: bytes,
        limits: Limits | None = None,
        python: str | None = None,
        use_landlock: bool = True,  # False only to exercise the seccomp fallback in tests
    ) -> None:
        if not isinstance(code, str):
            raise TypeError("code must be the contract's Python source")
        if not isinstance(contract_id, bytes):
            raise TypeError("contract_id must be bytes")
        self._code = code
        self._contract = contract_id
        self._limits = limits or Limits()
        self._python = python or sys.executable
        self._use_landlock = use_landlock
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: _wire.FrameReader | None = None  # the host's control frames
        self._socket: socket.socket | None = None  # spares arrive here, with their pipes
        self._spares: collections.deque[_Spare] = collections.deque()
        # Query children kept for their caller's next query, least recently used first.
        self._kept: collections.OrderedDict[bytes, _Spare] = collections.OrderedDict()
        self._generation = 0  # blob cache changes sent to the host; spares older than this are stale
        self._host_blobs: dict[bytes, int] = {}
        # Job processes that returned a result but have not been reported exited yet: pid ->
        # (deadline, already killed). See _collect_exits.
        self._lingering: dict[int, tuple[float, bool]] = {}
        self._exits: dict[int, dict[str, Any]] = {}  # EXITED reports read during the current job
        self._closed = False
        self._procs: list[subprocess.Popen[bytes]] = []  # for the finalizer: kill on garbage collection
        self._finalizer = weakref.finalize(self, _kill_all, self._procs)
        self._info, self._protections = self._start()

    @property
    def info(self) -> ContractInfo:
        """The contract as loaded: class name, commands, queries, whether it has init."""
        return self._info

    @property
    def protections(self) -> Protections:
        """Which confinement is active on this machine."""
        return self._protections

    def __enter__(self) -> ContractRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- host lifecycle --------------------------------------------------------------------------

    def _frame_limit(self) -> int:
        limits = self._limits
        largest = max(limits.output_bytes + limits.state_bytes + limits.event_bytes, limits.http_body_bytes)
        return largest + (2 << 20)

    def _start(self) -> tuple[ContractInfo, Protections]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spare_fd = theirs.fileno()  # the same number in the host (pass_fds keeps it)
        try:
            proc = subprocess.Popen(
                [self._python, "-P", "-s", "-B", "-m", "umbra.contract._host"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                # Only the interpreter's own start-up errors can arrive here: the host points fd 2
                # at /dev/null before any contract code runs. Read on a failed load, for the message.
                stderr=subprocess.PIPE,
                env=_host_env(),
                cwd="/",
                close_fds=True,
                pass_fds=(theirs.fileno(),),
                bufsize=0,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        self._procs.append(proc)
        self._socket = ours
        self._reader = _wire.FrameReader(proc.stdout.fileno(), 1 << 20)
        self._spares.clear()
        self._generation = 0
        self._host_blobs = {}
        self._lingering = {}
        limits = self._limits
        request = {
            "code": self._code,
            "contract": self._contract,
            "landlock": self._use_landlock,
            "spare_fd": spare_fd,
            "limits": {
                "cpu_seconds": limits.cpu_seconds,
                "memory": limits.memory_bytes,
                "blob_cache": limits.blob_cache_bytes,
            },
        }
        try:
            self._write(_wire.LOAD, _values.encode(request, what="load request"))
            frame = self._reader.read(time.monotonic() + limits.load_seconds)
        except TimeoutError:
            self._kill_host()
            raise ContractLoadError(
                f"the contract module did not load within {limits.load_seconds} s"
            ) from None
        except (OSError, _wire.ProtocolError) as exc:
            self._kill_host()
            raise ContractLoadError(f"the sandbox host failed while loading the contract: {exc}") from None
        if frame is None or frame[0] not in (_wire.READY, _wire.LOAD_ERROR):
            early = self._early_stderr()
            status = self._kill_host()
            detail = f": {early}" if early else ""
            raise ContractLoadError(
                f"the sandbox host exited while loading the contract (status {status}){detail}"
            )
        if frame[0] == _wire.LOAD_ERROR:
            self._kill_host()
            raise ContractLoadError(frame[1].decode("utf-8", "replace"))
        try:
            ready = _values.decode(frame[1], what="ready")
            info = ContractInfo(
                class_name=str(ready["info"]["class_name"]),
                commands=tuple(str(n) for n in ready["info"]["commands"]),
                queries=tuple(str(n) for n in ready["info"]["queries"]),
                has_init=bool(ready["info"]["has_init"]),
            )
            raw = ready["protections"]
            protections = Protections(
                seccomp=bool(raw["seccomp"]),
                landlock_abi=int(raw["landlock_abi"]),
                landlock_fs=bool(raw["landlock_fs"]),
                landlock_signals=bool(raw["landlock_signals"]),
                no_new_privs=bool(raw["no_new_privs"]),
                capabilities_dropped=bool(raw["capabilities_dropped"]),
                rlimits=tuple(str(r) for r in raw["rlimits"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            self._kill_host()
            raise ContractLoadError(f"the sandbox host sent a malformed READY: {exc}") from None
        assert proc.stderr is not None
        proc.stderr.close()
        return info, protections

    def _early_stderr(self) -> str:
        proc = self._proc
        if proc is None or proc.stderr is None or proc.stderr.closed:
            return ""
        fd = proc.stderr.fileno()
        chunks: list[bytes] = []
        total = 0
        while total < 1 << 20 and select.select([fd], [], [], 0.2)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        text = b"".join(chunks).decode("utf-8", "replace").strip()
        return text[-2000:]

    def _kill_host(self) -> int | None:
        proc, self._proc, self._reader = self._proc, None, None
        self._lingering = {}
        while self._spares:
            self._spares.popleft().close()
        while self._kept:
            self._kept.popitem()[1].close()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if proc is None:
            return None
        proc.kill()  # its children follow by PDEATHSIG
        status = proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()
        if proc in self._procs:
            self._procs.remove(proc)
        return status

    def _ensure_host(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            self._kill_host()
            self._start()

    def _write(self, kind: int, payload: bytes = b"") -> None:
        assert self._proc is not None and self._proc.stdin is not None
        _wire.write_frame(self._proc.stdin.fileno(), kind, payload)

    def close(self) -> None:
        """Stop the warm host and every job process. Idempotent."""
        with self._lock:
            self._closed = True
            proc = self._proc
            if proc is not None and proc.poll() is None:
                try:
                    self._write(_wire.EXIT)
                    proc.wait(timeout=2)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self._kill_host()

    # ---- jobs ------------------------------------------------------------------------------------

    def run(self, job: JobSpec, services: Services | None = None) -> JobOutcome:
        """Run one job in a fresh sandboxed process. Never raises for a contract's or caller's fault."""
        problem = _check_job(job)
        if problem is not None:
            return _failure("request", problem)
        if job.kind != "init":
            problem = self._check_method(job.kind, job.method or "")
            if problem is not None:
                return _failure("request", problem)
        body_map = job_body(job, self._contract, self._limits)
        if job.kind == "query":
            body_map["again"] = self._limits.cpu_seconds * 1000 // _KEPT_CPU_SHARE
        try:
            body = _values.encode(body_map, what="the job")
        except _values.ValueRejected as exc:
            return _failure("request", str(exc))
        with self._lock:
            if self._closed:
                raise SandboxError("the runner is closed")
            for _ in range(2):
                try:
                    self._ensure_host()
                except ContractLoadError as exc:
                    return _failure("sandbox", f"the contract could not be reloaded: {exc}")
                deadline = time.monotonic() + self._limits.wall_seconds
                try:
                    self._collect_exits()
                    self._send_blobs(job.blobs)
                    kept = self._kept_child(job.caller) if job.kind == "query" else None
                    child = kept or self._take_spare(deadline)
                except (OSError, _wire.ProtocolError, _values.ValueRejected, TimeoutError):
                    self._kill_host()
                    continue  # no job process had the job yet: safe to try on a fresh host
                try:
                    return self._drive(job, child, body, services, deadline)
                except (OSError, _wire.ProtocolError, _values.ValueRejected) as exc:
                    # The job may have run (and made RPCs): never run it twice.
                    self._kill_host()
                    return _failure("sandbox", f"the sandbox failed during the job: {exc}")
                finally:
                    if kept is None:
                        self._taken(child)
                    if child.again and self._proc is not None:
                        self._keep(job.caller, child)
                    else:
                        child.close()
            return _failure("sandbox", "the sandbox host failed twice in a row; see the worker's logs")

    def _kept_child(self, caller: bytes) -> _Spare | None:
        """The child kept from this caller's last query, if it still waits idle for the next one.

        Only ever the same caller's: a child's globals may carry what one query saw into the next,
        so no child serves two callers (ARCHITECTURE.md: nothing leaks from one caller to the
        next). Kept children are confined like every job child, and each query still gets its own
        body, state, seed and wall-time deadline; a child that has used a 1/_KEPT_CPU_SHARE share
        of the CPU budget, or was forked before the latest blob change, is retired."""
        child = self._kept.pop(caller, None)
        if child is None:
            return None
        child.again = False
        if child.generation == self._generation and child.idle():
            return child
        self._retire(child)
        return None

    def _keep(self, caller: bytes, child: _Spare) -> None:
        self._kept[caller] = child
        while len(self._kept) > _KEPT_CALLERS:
            self._retire(self._kept.popitem(last=False)[1])

    def _retire(self, child: _Spare) -> None:
        """Close a kept child's pipes: it reads EOF and exits (or is killed after _SETTLE_S)."""
        child.close()
        self._lingering[child.pid] = (time.monotonic() + _SETTLE_S, False)

    def _check_method(self, kind: str, method: str) -> str | None:
        """Refuse bad method names here, without a job process (the child checks again)."""
        own, other = (
            (self._info.commands, self._info.queries)
            if kind == "command"
            else (self._info.queries, self._info.commands)
        )
        if method.startswith("_"):
            return f"{method!r} is private: only @command and @query methods can be called"
        if method in own:
            return None
        if method in other:
            other_kind = "query" if kind == "command" else "command"
            return f"{method!r} is a @{other_kind}; call it as a {other_kind}, not a {kind}"
        return f"{self._info.class_name} has no {kind} {method!r} ({kind}s: {', '.join(own) or 'none'})"

    def _send_blobs(self, blobs: Mapping[bytes, bytes]) -> None:
        missing = [key for key in blobs if key not in self._host_blobs]
        if not missing:
            return
        incoming = sum(len(blobs[key]) for key in missing)
        if sum(self._host_blobs.values()) + incoming > self._limits.blob_cache_bytes:
            stale = [key for key in self._host_blobs if key not in blobs]
            if stale:
                self._write(_wire.DROP, _values.encode(stale, what="blob keys"))
                self._generation += 1
                for key in stale:
                    del self._host_blobs[key]
        for key in missing:
            self._write(_wire.BLOB, _values.encode({"key": key, "data": blobs[key]}, what="blob"))
            self._generation += 1
            self._host_blobs[key] = len(blobs[key])

    def _take_spare(self, deadline: float) -> _Spare:
        """The next spare forked after the latest blob change, waiting for one if need be."""
        while True:
            while self._spares:
                spare = self._spares.popleft()
                if spare.generation == self._generation:
                    return spare
                spare.close()  # it lacks a blob this job may read
            self._receive_spare(deadline)

    def _taken(self, spare: _Spare) -> None:
        """Tell the host a spare was used, so that it forks a replacement: after the job, so that
        the new child's set-up (fork, confinement, rehearsal) does not compete with the job for a
        CPU. The other spare serves a job that comes meanwhile."""
        if self._proc is None:
            return  # the host is gone (a new one forks its own spares)
        try:
            self._write(_wire.TAKEN, _values.encode(spare.pid, what="taken"))
        except OSError:
            self._kill_host()  # the next job starts a new host

    def _receive_spare(self, deadline: float) -> None:
        """Take one spare the host sent, waiting until the deadline if none is queued yet."""
        assert self._socket is not None and self._reader is not None
        while True:
            try:
                # (socket.recv_fds ignores its flags in Python 3.11: hence recvmsg.)
                message, ancillary, flags, _ = self._socket.recvmsg(
                    4096, socket.CMSG_SPACE(2 * _FD_SIZE), socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT
                )
                break
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError from None
                readable, _, _ = select.select([self._socket.fileno(), self._reader.fd], [], [], remaining)
                if self._reader.fd in readable:
                    self._read_control()
        fds = array.array("i")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % _FD_SIZE])
        try:
            if not message:
                raise _wire.ProtocolError("the sandbox host closed its spare channel")
            info = _values.decode(message, what="spare")
            if (
                len(fds) != 2
                or flags & socket.MSG_CTRUNC
                or not all(stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in fds)
                or not isinstance(info, dict)
                or type(info.get("pid")) is not int
                or type(info.get("generation")) is not int
                or info["pid"] <= 1
            ):
                raise _wire.ProtocolError("the sandbox host sent a malformed spare")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        self._spares.append(_Spare(info["pid"], info["generation"], fds[0], fds[1], self._frame_limit()))

    def _read_control(self) -> None:
        """Take what the host reported (only EXITED is expected once it is running)."""
        reader = self._reader
        assert reader is not None
        reader.fill()
        while (frame := reader.next()) is not None:
            if frame[0] == _wire.FATAL:
                raise _wire.ProtocolError(f"the sandbox host failed: {frame[1].decode('utf-8', 'replace')}")
            if frame[0] != _wire.EXITED:
                raise _wire.ProtocolError(f"unexpected frame kind {frame[0]} from the sandbox host")
            info = _values.decode(frame[1], what="exited")
            if not isinstance(info, dict) or type(info.get("pid")) is not int:
                raise _wire.ProtocolError("bad EXITED frame")
            self._lingering.pop(info["pid"], None)
            self._exits[info["pid"]] = info
        if reader.eof:
            raise _wire.ProtocolError("the sandbox host exited")

    def _collect_exits(self) -> None:
        """Kill job processes that outlive their result by _SETTLE_S (a finished child exits within
        a millisecond; contract code could stall it). EXITED reports are read when a deadline has
        passed or a few have piled up, not before every job: that would cost syscalls each time."""
        self._exits.clear()
        if not self._lingering:
            return
        now = time.monotonic()
        if len(self._lingering) < 8 and all(now < deadline for deadline, _ in self._lingering.values()):
            return
        assert self._reader is not None
        while select.select([self._reader.fd], [], [], 0)[0]:
            self._read_control()
        for pid, (deadline, killed) in list(self._lingering.items()):
            if now < deadline:
                continue
            if killed:
                raise _wire.ProtocolError(f"job process {pid} survived SIGKILL")
            self._kill_child(pid)
            self._lingering[pid] = (now + _GRACE_S, True)

    def _wait_exit(self, pid: int) -> dict[str, Any] | None:
        """The host's report on `pid`, which closed its result pipe without a result."""
        assert self._reader is not None
        deadline = time.monotonic() + _GRACE_S
        while pid not in self._exits:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._reader.fd], [], [], remaining)[0]:
                return None
            self._read_control()
        return self._exits.pop(pid)

    def _kill_child(self, pid: int) -> None:
        """SIGKILL one of the host's job processes (the host itself may not signal anything)."""
        if self._proc is None:
            return
        try:
            handle = os.pidfd_open(pid)
        except OSError:
            return  # already gone
        try:
            # A pidfd pins the process; the parent check makes sure it is still our host's child.
            if _parent_pid(pid) == self._proc.pid:
                signal.pidfd_send_signal(handle, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(handle)

    def _drive(
        self, job: JobSpec, spare: _Spare, body: bytes, services: Services | None, deadline: float
    ) -> JobOutcome:
        """Give the job to the spare and serve it until its result, its death or the deadline."""
        pid, reader = spare.pid, spare.reader
        timed_out = _failure("limit", f"wall time limit exceeded ({self._limits.wall_seconds:g} s)")
        try:
            _wire.write_frame_until(spare.job_w, _wire.JOB, body, deadline)
        except BrokenPipeError:
            pass  # it died before reading (e.g. could not confine itself): its result pipe says why
        except TimeoutError:
            self._abandon(pid)
            return timed_out
        rpc_calls = 0
        while True:
            try:
                frame = reader.read(deadline)
            except TimeoutError:
                self._abandon(pid)
                return timed_out
            except _wire.ProtocolError as exc:
                self._abandon(pid)
                return _failure("contract", f"the job process broke the sandbox protocol: {exc}")
            if frame is None:
                info = self._wait_exit(pid)
                if info is None:
                    raise _wire.ProtocolError(f"no exit report for job process {pid}")
                return _exit_outcome(info, self._limits)
            kind, payload = frame
            if kind == _wire.RESULT:
                try:
                    result = _values.decode(payload, what="the result")
                except _values.ValueRejected as exc:
                    self._lingering[pid] = (time.monotonic() + _SETTLE_S, False)
                    return _malformed(exc)
                # A query child that says it waits for its caller's next query is kept (see run).
                spare.again = job.kind == "query" and isinstance(result, dict) and result.get("again") is True
                if not spare.again:
                    self._lingering[pid] = (time.monotonic() + _SETTLE_S, False)
                return _result_outcome(job, result, self._limits)
            if kind != _wire.RPC:
                self._abandon(pid)
                return _failure("contract", f"the job process broke the sandbox protocol: frame kind {kind}")
            rpc_calls += 1
            reply = self._serve_rpc(job, services, payload, rpc_calls, deadline)
            try:
                _wire.write_frame_until(spare.job_w, _wire.REPLY, reply, deadline)
            except BrokenPipeError:
                pass  # it died: the next read says so
            except TimeoutError:
                self._abandon(pid)
                return timed_out

    def _abandon(self, pid: int) -> None:
        """Kill a job process we are done with; the host's EXITED report settles it later."""
        self._kill_child(pid)
        self._lingering[pid] = (time.monotonic() + _GRACE_S, True)

    def _serve_rpc(
        self, job: JobSpec, services: Services | None, payload: bytes, count: int, deadline: float
    ) -> bytes:
        if count > self._limits.rpc_calls:
            reply: dict[str, Any] = {
                "ok": False,
                "error": f"a job may make at most {self._limits.rpc_calls} service calls",
            }
        else:
            try:
                request = _values.decode(payload, what="service request")
            except _values.ValueRejected as exc:
                request = None
                reply = {"ok": False, "error": str(exc)}
            if request is not None:
                reply = handle_rpc(
                    request,
                    kind=job.kind,
                    replicated=job.replicated,
                    allowlist=job.http_allowlist,
                    services=services,
                    body_limit=self._limits.http_body_bytes,
                    remaining_s=deadline - time.monotonic(),
                )
        try:
            return _values.encode(reply, what="reply")
        except _values.ValueRejected:
            return _values.encode(
                {"ok": False, "error": "the service returned an unencodable value"}, what="reply"
            )


def _kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class LocalRunner:
    """Runs jobs in this process with the same semantics and checks as ContractRunner but NO
    isolation: no sandbox, and module globals persist between jobs. For contract authors' unit
    tests and for measuring the sandbox's overhead, never for untrusted code."""

    _count = 0

    def __init__(self, code: str, *, contract_id: bytes, limits: Limits | None = None) -> None:
        self._contract = contract_id
        self._limits = limits or Limits()
        LocalRunner._count += 1
        try:
            self._loaded, self.info = load_contract(
                code, contract_id, f"umbra_local_contract_{LocalRunner._count}"
            )
        except LoadError as exc:
            raise ContractLoadError(str(exc)) from None

    def run(self, job: JobSpec, services: Services | None = None) -> JobOutcome:
        problem = _check_job(job)
        if problem is not None:
            return _failure("request", problem)
        try:
            # Through CBOR and back, as in the sandbox: same checks, and no aliasing of the caller's objects.
            body = _values.decode(
                _values.encode(job_body(job, self._contract, self._limits), what="the job"), what="job"
            )
        except _values.ValueRejected as exc:
            return _failure("request", str(exc))
        del body["blob_keys"]
        body["blobs"] = dict(job.blobs)
        deadline = time.monotonic() + self._limits.wall_seconds

        def rpc(op: str, request: dict[str, Any]) -> Any:
            reply = handle_rpc(
                {"op": op, **request},
                kind=job.kind,
                replicated=job.replicated,
                allowlist=job.http_allowlist,
                services=services,
                body_limit=self._limits.http_body_bytes,
                remaining_s=deadline - time.monotonic(),
            )
            if not reply["ok"]:
                raise ServiceError(f"ctx.{op} failed: {reply['error']}")
            return reply["value"]

        result = execute(self._loaded, body, rpc)
        return _outcome(job, _values.encode(result, what="result"), self._limits)

    def close(self) -> None:
        """Nothing to release; present so LocalRunner and ContractRunner are interchangeable."""
