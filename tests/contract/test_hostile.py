"""Hostile contracts fail only their own job, with a clear error, and the next job succeeds.

Each hostile method runs against one shared runner; after each, `ok` must still work on the same
runner, and the worker's own files and processes must be untouched.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.contract.conftest import CONTRACT_ID, RunnerFactory, command, failed, ok
from umbra.contract import ContractLoadError, ContractRunner, Limits

pytestmark = pytest.mark.timeout(90)

HOSTILE = """
import ctypes, os, socket, subprocess, sys, threading, time
from umbra.contract import Contract, command
from umbra.contract import _values, _wire

class Hostile(Contract):
    @command
    def ok(self, ctx):
        return "fine"

    @command
    def open_socket(self, ctx):
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("127.0.0.1", 9944))

    @command
    def raw_socket(self, ctx):
        return ctypes.CDLL(None).socket(2, 1, 0)

    @command
    def unix_socket(self, ctx):
        socket.socket(socket.AF_UNIX).connect("/run/anything.sock")

    @command
    def read_file(self, ctx, path):
        with open(path, "rb") as handle:
            return handle.read()

    @command
    def write_file(self, ctx, path):
        with open(path, "w") as handle:
            handle.write("pwned")

    @command
    def list_dir(self, ctx, path):
        return os.listdir(path)

    @command
    def proc_of_parent(self, ctx):
        with open(f"/proc/{os.getppid()}/environ", "rb") as handle:
            return handle.read()

    @command
    def system(self, ctx, marker):
        return os.system(f"touch {marker}")

    @command
    def libc_system(self, ctx, marker):
        return ctypes.CDLL(None).system(f"touch {marker}".encode())

    @command
    def popen(self, ctx):
        return subprocess.run(["id"], capture_output=True).stdout

    @command
    def fork(self, ctx):
        return os.fork()

    @command
    def raw_fork(self, ctx):
        return ctypes.CDLL(None).fork()

    @command
    def thread(self, ctx):
        out = []
        worker = threading.Thread(target=lambda: out.append(sum(range(1000))))
        worker.start()
        worker.join()
        return out

    @command
    def kill_parent(self, ctx):
        os.kill(os.getppid(), 9)

    @command
    def raw_kill_parent(self, ctx):
        return ctypes.CDLL(None).kill(os.getppid(), 9)

    @command
    def kill_everything(self, ctx):
        return ctypes.CDLL(None).kill(-1, 9)

    @command
    def ptrace_parent(self, ctx):
        return ctypes.CDLL(None).ptrace(16, os.getppid(), 0, 0)

    @command
    def raise_rlimit(self, ctx):
        import resource
        resource.setrlimit(resource.RLIMIT_CPU, (10**6, 10**6))

    @command
    def exit(self, ctx):
        sys.exit(3)

    @command
    def hard_exit(self, ctx):
        os._exit(4)

    @command
    def segfault(self, ctx):
        ctypes.string_at(0)

    @command
    def garbage_on_stdio(self, ctx):
        for fd in (0, 1, 2):
            try:
                os.write(fd, b"\\x00\\x00\\x00\\x05Ogarbage" * 1000)
            except OSError:
                pass
        print("hello", flush=True)
        print("oops", file=sys.stderr, flush=True)
        return "printed"

    @command
    def lazy_import(self, ctx):
        import importlib
        return str(importlib.import_module("xml.dom.minidom"))

    @command
    def forge_result(self, ctx, linger):
        # Contract code can write its own result frame; it only controls what it could return anyway.
        fake = {"ok": True, "output": _values.encode("forged", what="x"), "state": _values.encode({"forged": 1}, what="x"),
                "events": [], "transfers": []}
        _wire.write_frame(ctx._rpc._write_fd, _wire.RESULT, _values.encode(fake, what="x"))
        time.sleep(linger)

    @command
    def forge_bad_result(self, ctx):
        fake = {"ok": True, "output": b"\\xc1\\x00", "state": _values.encode({}, what="x"), "events": [],
                "transfers": [[b"short", -5]]}
        _wire.write_frame(ctx._rpc._write_fd, _wire.RESULT, _values.encode(fake, what="x"))
        time.sleep(5)

    @command
    def oversized_frame(self, ctx):
        os.write(ctx._rpc._write_fd, (2**31).to_bytes(4, "big") + b"O")
        time.sleep(30)

    @command
    def garbage_frames(self, ctx):
        os.write(ctx._rpc._write_fd, b"\\x00\\x00\\x00\\x03Zabc")
        time.sleep(30)

    @command
    def shared_memory_bomb(self, ctx):
        import mmap
        bomb = mmap.mmap(-1, 8 << 30)
        bomb[:] = b"x"

    @command
    def memory_bomb(self, ctx):
        hog = []
        while True:
            hog.append(bytearray(32 << 20))

    @command
    def spin(self, ctx):
        while True:
            pass

    @command
    def spin_ignoring_sigxcpu(self, ctx):
        import signal
        signal.signal(signal.SIGXCPU, signal.SIG_IGN)
        while True:
            pass

    @command
    def sleep(self, ctx):
        time.sleep(1000)

    @command
    def huge_output(self, ctx):
        return "x" * (2 << 20)

    @command
    def huge_state(self, ctx):
        self.state["blob"] = b"x" * (3 << 20)
"""

LIMITS = Limits(
    cpu_seconds=1, wall_seconds=10, memory_bytes=192 << 20, output_bytes=1 << 20, state_bytes=2 << 20
)


@pytest.fixture(scope="module")
def hostile(module_runners: Any) -> ContractRunner:
    runner: ContractRunner = module_runners(HOSTILE, LIMITS)
    return runner


@pytest.fixture
def worker_files(tmp_path: Path) -> Iterator[Path]:
    """Stand-ins for what a worker keeps on disk, e.g. its sealed identity key."""
    key = tmp_path / "identity.sealed"
    key.write_bytes(b"sealed-key-material")
    yield tmp_path


def run(runner: ContractRunner, method: str, **args: Any) -> Any:
    outcome = runner.run(command(method, {}, args=args))
    host = runner._proc
    assert host is not None and host.poll() is None, "the warm host died"
    after = ok(runner.run(command("ok", {})))  # the next job succeeds on the same runner
    assert after.output == "fine"
    return outcome


def test_protections_active_on_this_machine(hostile: ContractRunner) -> None:
    protections = hostile.protections
    assert protections.seccomp and protections.no_new_privs and protections.capabilities_dropped
    if protections.landlock_abi:
        assert protections.landlock_fs
    assert {"cpu", "data", "as", "fsize"} <= set(protections.rlimits)


def test_no_network(hostile: ContractRunner) -> None:
    failed(run(hostile, "open_socket"), "contract", "PermissionError", "sandbox")
    failed(run(hostile, "unix_socket"), "contract", "PermissionError")
    assert ok(run(hostile, "raw_socket")).output == -1  # the kernel refuses below Python too


def test_no_files(hostile: ContractRunner, worker_files: Path) -> None:
    key = worker_files / "identity.sealed"
    failed(run(hostile, "read_file", path=str(key)), "contract", "Permission denied", "sandbox")
    failed(run(hostile, "read_file", path="/etc/passwd"), "contract", "Permission denied")
    failed(run(hostile, "write_file", path=str(worker_files / "dropped")), "contract", "Permission denied")
    failed(run(hostile, "list_dir", path=str(worker_files)), "contract", "Permission denied")
    failed(run(hostile, "proc_of_parent"), "contract", "Permission denied")
    assert sorted(p.name for p in worker_files.iterdir()) == ["identity.sealed"]


def test_no_processes(hostile: ContractRunner, worker_files: Path) -> None:
    failed(run(hostile, "system", marker=str(worker_files / "a")), "contract", "os.system", "cannot start")
    # Bypassing Python's guard reaches the kernel, which refuses: glibc reports exit status 127.
    assert ok(run(hostile, "libc_system", marker=str(worker_files / "b"))).output == 127 << 8
    failed(run(hostile, "popen"), "contract", "PermissionError")
    failed(run(hostile, "fork"), "contract", "PermissionError")
    assert ok(run(hostile, "raw_fork")).output == -1
    assert not (worker_files / "a").exists() and not (worker_files / "b").exists()
    assert ok(run(hostile, "thread")).output == [499500]  # threads stay allowed


def test_no_signals_or_tracing_of_other_processes(hostile: ContractRunner) -> None:
    host = hostile._proc
    assert host is not None
    failed(run(hostile, "kill_parent"), "contract", "PermissionError")
    assert ok(run(hostile, "raw_kill_parent")).output == -1
    assert ok(run(hostile, "kill_everything")).output == -1
    assert ok(run(hostile, "ptrace_parent")).output == -1
    assert hostile._proc is host and host.poll() is None
    failed(run(hostile, "raise_rlimit"), "contract", "ValueError")


def test_exits_and_crashes(hostile: ContractRunner) -> None:
    failed(run(hostile, "exit"), "contract", "sys.exit(3)")
    failed(run(hostile, "hard_exit"), "contract", "exit status 4")
    failed(run(hostile, "segfault"), "contract", "crashed (SIGSEGV)")


def test_stdio_garbage_cannot_corrupt_the_protocol(hostile: ContractRunner) -> None:
    assert ok(run(hostile, "garbage_on_stdio")).output == "printed"


def test_lazy_imports_fail_clearly(hostile: ContractRunner) -> None:
    failed(run(hostile, "lazy_import"), "contract", "ModuleNotFoundError", "import every module")


def test_forged_results_are_checked_and_lingering_children_killed(hostile: ContractRunner) -> None:
    forged = hostile.run(command("forge_result", {}, args={"linger": 30}))
    assert ok(forged).output == "forged" and forged.new_state == {"forged": 1}
    staller = list(hostile._lingering)[-1]  # the newest entry: this job's process
    started = time.monotonic()
    assert ok(hostile.run(command("ok", {}))).output == "fine"
    assert time.monotonic() - started < 2
    time.sleep(0.6)  # past the settle time: the next job's bookkeeping kills the staller
    ok(hostile.run(command("ok", {})))
    deadline = time.monotonic() + 5
    while Path(f"/proc/{staller}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{staller}").exists()
    failed(run(hostile, "forge_bad_result"), "contract", "malformed result")
    failed(run(hostile, "oversized_frame"), "contract", "broke the sandbox protocol")
    failed(run(hostile, "garbage_frames"), "contract", "broke the sandbox protocol")


def test_memory_limits(hostile: ContractRunner) -> None:
    failed(run(hostile, "memory_bomb"), "limit", "MemoryError", "192 MiB")
    failed(run(hostile, "shared_memory_bomb"), "contract", "Cannot allocate memory")


def test_cpu_limit(hostile: ContractRunner) -> None:
    failed(run(hostile, "spin"), "limit", "CPU time limit exceeded (1 s)")
    failed(run(hostile, "spin_ignoring_sigxcpu"), "limit", "CPU time limit exceeded")


def test_wall_time_limit(make_runner: RunnerFactory) -> None:
    runner = make_runner(HOSTILE, Limits(cpu_seconds=5, wall_seconds=1.5))
    started = time.monotonic()
    failed(run(runner, "sleep"), "limit", "wall time limit exceeded (1.5 s)")
    assert time.monotonic() - started < 8


def test_output_and_state_size_limits(hostile: ContractRunner) -> None:
    failed(run(hostile, "huge_output"), "limit", "the output is 2.0 MiB; the limit is 1.0 MiB")
    failed(run(hostile, "huge_state"), "limit", "the state is 3.0 MiB; the limit is 2.0 MiB")


def test_the_runner_replaces_a_dead_host(make_runner: RunnerFactory) -> None:
    runner = make_runner(HOSTILE)
    old = runner._proc
    assert old is not None
    os.kill(old.pid, signal.SIGKILL)
    old.wait()
    assert ok(runner.run(command("ok", {}))).output == "fine"
    assert runner._proc is not None and runner._proc.pid != old.pid


def test_close_stops_every_process(make_runner: RunnerFactory) -> None:
    runner = make_runner(HOSTILE)
    ok(runner.run(command("thread", {})))
    host = runner._proc
    assert host is not None
    children = Path(f"/proc/{host.pid}/task/{host.pid}/children").read_text().split()
    runner.close()
    assert host.poll() is not None
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)


IMPORT_TIME_ATTACKS = {
    "open('/etc/passwd').read()": "Permission denied",
    "import os; os.system('id')": "cannot start",
    "import os; os.kill(os.getppid(), 9)": "PermissionError",
    "import socket; socket.socket()": "PermissionError",
    "raise ValueError('boom')": "ValueError: boom (contract line 1",
    "import os; os._exit(1)": "exited while loading",
    "x = bytearray(16 << 30)": "MemoryError",
    "while True: pass": "did not load within 2",
}


@pytest.mark.parametrize("attack", list(IMPORT_TIME_ATTACKS))
def test_the_contract_module_itself_runs_confined(attack: str) -> None:
    code = f"{attack}\n" + "from umbra.contract import Contract, command\nclass C(Contract):\n    pass\n"
    # A short load limit only where it is the point: start-up alone can take a second on a busy machine.
    limits = Limits(load_seconds=2 if "while True" in attack else 60)
    with pytest.raises(ContractLoadError) as error:
        ContractRunner(code, contract_id=CONTRACT_ID, limits=limits)
    assert IMPORT_TIME_ATTACKS[attack] in str(error.value)


def test_seccomp_fallback_without_landlock(make_runner: RunnerFactory, worker_files: Path) -> None:
    runner = make_runner(HOSTILE, use_landlock=False)
    assert runner.protections.seccomp and not runner.protections.landlock_fs
    failed(
        run(runner, "read_file", path=str(worker_files / "identity.sealed")), "contract", "Permission denied"
    )
    failed(run(runner, "write_file", path=str(worker_files / "dropped")), "contract", "Permission denied")
    failed(run(runner, "open_socket"), "contract", "PermissionError")
    failed(run(runner, "fork"), "contract", "PermissionError")
