"""The warm parent: one process per contract, started by ContractRunner as
`python -P -s -B -m umbra.contract._host`, speaking _wire frames on stdin/stdout.

Lifecycle: read LOAD; import the SDK and common modules; confine itself (_sandbox: the host
layer); only then run the contract module's code; report READY. From then on it keeps two *spare*
children ready: forked from this process, which never runs a job, so nothing leaks from one caller
to the next. For each spare it makes the job pipes, forks, and hands the runner's ends to the runner
over an inherited unix socket (SCM_RIGHTS), keeping no copy. The runner then talks to the child
directly: the host is never on a job's path (no relay hop, no wakeup, and its forks cannot stall
a job), and never holds a job's bytes. It reaps children and reports their exits (EXITED), and
forks a replacement whenever a spare is used up. It cannot signal any process (seccomp), so
wall-time kills come from the runner.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import resource
import select
import signal
import socket
import sys
import traceback
from typing import Any, NoReturn

from umbra.contract import _sandbox, _values, _wire
from umbra.contract._child import ChildLimits, Confinement, serve
from umbra.contract._loader import LoadError, load_contract
from umbra.contract._validate import imported_modules

# Imported before confinement so that jobs, which cannot read files, find them loaded. The list
# covers what contracts commonly use lazily; a contract's own imports are loaded on top of it.
PRELOAD = (
    "abc",
    "array",
    "base64",
    "binascii",
    "bisect",
    "calendar",
    "cmath",
    "collections",
    "collections.abc",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "encodings.ascii",
    "encodings.base64_codec",
    "encodings.cp1252",
    "encodings.hex_codec",
    "encodings.idna",
    "encodings.latin_1",
    "encodings.utf_16",
    "encodings.utf_32",
    "enum",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "math",
    "numbers",
    "operator",
    "pprint",
    "random",
    "re",
    "secrets",
    "statistics",
    "string",
    "struct",
    "textwrap",
    "time",
    "typing",
    "unicodedata",
    "urllib.parse",
    "uuid",
    "weakref",
    "zlib",
)
MODULE_NAME = "umbra_contract_module"
SPARES = 2  # children kept ready: one for the next job while the one before may still be running
_fork = os.fork  # the host's own; contract code sees a guard instead (_sandbox.guard_process_functions)


def _import_roots() -> list[str]:
    """Directories Python imports from: the host may read (never write) these and nothing else."""
    roots: dict[str, None] = {}
    for entry in sys.path:
        if not entry or not os.path.isabs(entry) or not os.path.exists(entry):
            continue
        real = os.path.realpath(entry)
        if real != "/":  # never the whole file system, whatever PYTHONPATH says
            roots[real] = None
    return list(roots)


def _loader_paths() -> list[str]:
    """What the dynamic loader reads when a contract imports a native extension (numpy's
    libstdc++, onnxruntime's libgomp): its cache and the system library directories. Read-only,
    like the import path, and only for the warm host, which imports the contract module."""
    candidates = ("/etc/ld.so.cache", "/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib")
    return [os.path.realpath(p) for p in candidates if os.path.exists(p)]


def _rehearsal_body() -> bytes:
    """A job body shaped like real ones, for the spare's rehearsal (see _child._rehearse)."""
    from umbra.contract._runner import JobSpec, Limits, job_body

    spec = JobSpec(
        kind="command",
        method="run",
        args={"value": {"text": "x" * 40, "n": [1, 2.5, None, True], "raw": b"\x00" * 40}},
        state={"seen": None, "notes": {"k": ["v"]}},
        caller=bytes(32),
        job=bytes(32),
        random_seed=bytes(32),
    )
    return _values.encode(job_body(spec, bytes(32), Limits()), what="rehearsal")


def _pin_threads() -> None:
    """One thread per job for onnxruntime and torch, whose pool sizes no environment variable sets
    (the BLAS libraries read OMP_NUM_THREADS and friends, which the runner sets before Python starts)."""
    torch = sys.modules.get("torch")
    if torch is not None and callable(getattr(torch, "set_num_threads", None)):
        torch.set_num_threads(1)
    ort = sys.modules.get("onnxruntime")
    session_cls = getattr(ort, "InferenceSession", None)
    options_cls = getattr(ort, "SessionOptions", None)
    if session_cls is None or options_cls is None or getattr(session_cls, "_umbra_pinned", False):
        return
    original = session_cls.__init__

    def __init__(self: Any, path_or_bytes: Any, sess_options: Any = None, *args: Any, **kwargs: Any) -> None:
        if sess_options is None:
            sess_options = options_cls()
            sess_options.intra_op_num_threads = 1
            sess_options.inter_op_num_threads = 1
        original(self, path_or_bytes, sess_options, *args, **kwargs)

    session_cls.__init__ = __init__
    session_cls._umbra_pinned = True


def _vm_kib(status_fd: int) -> tuple[int, int]:
    """(VmData, VmSize) of this process in KiB, from a /proc/self/status fd opened before Landlock."""
    text = os.pread(status_fd, 8192, 0).decode("ascii", "replace")
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmData", "VmSize"):
            values[key] = int(rest.split()[0])
    return values.get("VmData", 0), values.get("VmSize", 0)


class Host:
    def __init__(self, proto_in: int, proto_out: int) -> None:
        self.reader = _wire.FrameReader(proto_in, 1 << 31)
        self.out = proto_out
        self.blobs: dict[bytes, bytes] = {}
        self.generation = 0  # of the blob cache; the runner counts the same changes
        self.spares: dict[int, int] = {}  # spares not yet taken by the runner -> blob generation
        # SIGCHLD wakes the select loops through this pipe, so children are reaped without blocking.
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    # ---- load ------------------------------------------------------------------------------------

    def load(self) -> None:
        frame = self.reader.read()
        if frame is None or frame[0] != _wire.LOAD:
            raise LoadError("the runner sent no LOAD frame")
        request = _values.decode(frame[1], what="load request")
        code: str = request["code"]
        contract: bytes = request["contract"]
        limits: dict[str, int] = request["limits"]
        self.limits = limits
        self.spare_socket = socket.socket(fileno=request["spare_fd"])
        for name in PRELOAD:
            importlib.import_module(name)
        self.status_fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        self.protections = self._confine(limits, use_landlock=bool(request.get("landlock", True)))
        # From here on, code the contract author controls runs under the host's confinement.
        for name in imported_modules(code):
            if name not in sys.modules:
                try:
                    importlib.import_module(name)
                except BaseException:  # the contract's own import statement reports it below
                    continue
        _pin_threads()
        _sandbox.guard_process_functions()
        self.loaded, info = load_contract(code, contract, MODULE_NAME)
        self.rehearsal = _rehearsal_body()
        self.info = {
            "class_name": info.class_name,
            "commands": list(info.commands),
            "queries": list(info.queries),
            "has_init": info.has_init,
        }
        # Objects alive now are shared by every child: freezing them keeps the children's garbage
        # collector from touching (and so copying) their pages.
        gc.collect()
        gc.freeze()

    def _confine(self, limits: dict[str, int], *, use_landlock: bool) -> _sandbox.Protections:
        try:
            data_kib, _ = _vm_kib(self.status_fd)
            _sandbox.set_rlimit(resource.RLIMIT_CORE, 0)
            # The contract's import code and the blob cache live here; jobs get their own budget.
            _sandbox.set_rlimit(
                resource.RLIMIT_DATA, (data_kib << 10) + limits["memory"] + limits["blob_cache"]
            )
            _sandbox.set_no_new_privs()
            _sandbox.set_nondumpable()
            caps = _sandbox.drop_capabilities(_sandbox.syscall_number("capset"))
            abi = _sandbox.landlock_abi() if use_landlock else 0
            self.child_landlock = -1
            if abi:
                host_rules = _sandbox.landlock_ruleset(
                    abi, [*_import_roots(), *_loader_paths(), *_sandbox.HARMLESS_READ_PATHS]
                )
                _sandbox.landlock_restrict(host_rules)
                os.close(host_rules)
                self.child_landlock = _sandbox.landlock_ruleset(abi, _sandbox.HARMLESS_READ_PATHS)
            _sandbox.load_host_filter(landlock_fs=abi > 0)
            self.child_bpf = _sandbox.child_filter_bpf(landlock_fs=abi > 0)
        except OSError as exc:
            raise LoadError(f"cannot confine the contract sandbox: {exc.strerror or exc}") from None
        return _sandbox.Protections(
            seccomp=True,
            landlock_abi=abi,
            landlock_fs=abi > 0,
            landlock_signals=abi >= 6,
            no_new_privs=_sandbox.no_new_privs(),
            capabilities_dropped=caps,
            rlimits=("cpu", "data", "as", "fsize", "nofile", "core"),
        )

    # ---- spares ----------------------------------------------------------------------------------

    def _fork_spare(self) -> None:
        data_kib, size_kib = _vm_kib(self.status_fd)
        memory = self.limits["memory"]
        limits = ChildLimits(
            cpu_seconds=self.limits["cpu_seconds"],
            data_bytes=(data_kib << 10) + memory,
            # Shared anonymous mappings escape RLIMIT_DATA; this catches them, with room for the
            # address space (not memory) that thread stacks and malloc arenas reserve.
            address_bytes=(size_kib << 10) + 2 * memory + (256 << 20),
        )
        confinement = Confinement(self.child_bpf, self.child_landlock, limits)
        # O_NONBLOCK for the runner's end, which must never block past a deadline; the child
        # makes its own end (a separate open file description) blocking again.
        job_r, job_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        result_r, result_w = os.pipe()
        host_pid = os.getpid()
        pid = _fork()
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                serve(self.loaded, confinement, self.blobs, job_r, result_w, host_pid, self.rehearsal)
            finally:
                os._exit(70)
        os.close(job_r)
        os.close(result_w)
        self.spares[pid] = self.generation
        try:
            message = _values.encode({"pid": pid, "generation": self.generation}, what="spare")
            socket.send_fds(self.spare_socket, [message], [job_w, result_r])
        finally:
            # The runner now holds the only other ends: the host can neither read a job nor write
            # a result.
            os.close(job_w)
            os.close(result_r)

    def _top_up(self) -> None:
        """Keep SPARES untaken children of the current blob generation ready."""
        while sum(1 for generation in self.spares.values() if generation == self.generation) < SPARES:
            self._fork_spare()

    def _send(self, kind: int, message: Any) -> None:
        _wire.write_frame(self.out, kind, _values.encode(message, what="message"))

    def _reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.spares.pop(pid, None)
            self._send(
                _wire.EXITED,
                {
                    "pid": pid,
                    "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                    "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                    "cpu_ms": int((usage.ru_utime + usage.ru_stime) * 1000),
                },
            )

    def loop(self) -> NoReturn:
        while True:
            self._top_up()
            frame = self.reader.next()
            if frame is None:
                if self.reader.eof:
                    os._exit(0)  # the runner is gone; PDEATHSIG takes the children with us
                readable, _, _ = select.select([self.reader.fd, self.wake_r], [], [])
                if self.wake_r in readable:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self.wake_r, 4096):
                            pass
                    self._reap()
                if self.reader.fd in readable:
                    self.reader.fill()
                continue
            kind, payload = frame
            if kind == _wire.TAKEN:
                self.spares.pop(_values.decode(payload, what="taken"), None)
                continue
            if kind == _wire.BLOB:
                item = _values.decode(payload, what="blob")
                self.blobs[item["key"]] = item["data"]
            elif kind == _wire.DROP:
                for key in _values.decode(payload, what="blob keys"):
                    self.blobs.pop(key, None)
            else:
                os._exit(0)  # EXIT, or anything unexpected
            # Spares forked before this change lack it: the runner discards them, we fork anew.
            self.generation += 1


def main() -> NoReturn:
    # The protocol moves off fds 0 and 1 and /dev/null takes their place (and 2's), so nothing the
    # contract prints, here or in a child, can corrupt a frame.
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the core to handle
    host = Host(proto_in, proto_out)
    try:
        host.load()
    except LoadError as exc:
        _wire.write_frame(proto_out, _wire.LOAD_ERROR, str(exc).encode()[:8000])
        os._exit(0)
    except BaseException as exc:
        _wire.write_frame(
            proto_out, _wire.LOAD_ERROR, f"sandbox host failed: {type(exc).__name__}: {exc}".encode()[:8000]
        )
        os._exit(0)
    host._send(_wire.READY, {"info": host.info, "protections": host.protections.to_dict()})
    try:
        host.loop()
    except BaseException as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        report = f"{type(exc).__name__}: {exc} (at {os.path.basename(where.filename)}:{where.lineno})"
        with contextlib.suppress(BaseException):
            _wire.write_frame(proto_out, _wire.FATAL, report.encode()[:2000])
        os._exit(1)  # the runner starts a new host


if __name__ == "__main__":
    main()
