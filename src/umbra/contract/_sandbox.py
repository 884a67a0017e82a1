"""Kernel-enforced confinement for the warm host and its job children (Linux only).

Two layers, applied in this order:

host (before the contract module's code runs; it may fork):
  no_new_privs, non-dumpable, all capabilities dropped (root without CAP_SYS_RESOURCE cannot raise
  a hard rlimit back up, without CAP_DAC_OVERRIDE it cannot read other users' files);
  Landlock: read-only access to the Python import path and a few harmless /sys and /proc files,
  nothing else; signals only within the sandbox (ABI >= 6);
  seccomp: no sockets, no exec, no ptrace, no signals to any process, no namespaces, mounts,
  keyrings, io_uring (it would bypass seccomp), SysV/POSIX IPC, BPF, perf, module or clock changes,
  and no rlimit changes for other processes.

job child (added after fork, before it reads the job):
  rlimits (CPU, data, address space, file size 0, open files, no core dumps);
  Landlock: no file access at all (the job's inputs are already in memory);
  seccomp: additionally no fork/vfork/clone of processes (threads stay allowed) and no setrlimit.

Without Landlock (kernel < 5.13 or disabled), seccomp argument filters stand in: the host may not
open files for writing or change the file system, and the child may not open anything. Seccomp
is required: without it `load_host_filter` raises and the runner refuses to run contracts.

Denials return EPERM (clone3: ENOSYS, so glibc falls back to clone, which can be inspected), so
contract code sees a PermissionError it can report, and well-behaved libraries degrade cleanly.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Protections"]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int

# prctl options (linux/prctl.h)
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_SECCOMP = 22
_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_NO_NEW_PRIVS = 39
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_SECCOMP_MODE_FILTER = 2

# Landlock (linux/landlock.h). The syscall numbers are the same on every architecture.
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_ABI1 = (1 << 13) - 1  # execute .. make_sym
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_NET_ALL = 0b11  # bind_tcp, connect_tcp: ABI 4
_SCOPE_ALL = 0b11  # abstract unix sockets, signals: ABI 6

# clone(2) flags
_CLONE_THREAD = 0x00010000
_CLONE_NAMESPACES = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET

# Read-only for everyone: CPU topology that BLAS and onnxruntime probe when they size thread pools.
HARMLESS_READ_PATHS = ("/proc/cpuinfo", "/sys/devices/system/cpu")


@dataclass(frozen=True, slots=True)
class Protections:
    """Which confinement is active for a contract's jobs on this machine."""

    seccomp: bool
    landlock_abi: int  # 0: unavailable
    landlock_fs: bool  # file access confined by Landlock (else by the seccomp fallback)
    landlock_signals: bool  # signals scoped to the sandbox by Landlock (besides seccomp's denial)
    no_new_privs: bool
    capabilities_dropped: bool
    rlimits: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "seccomp": self.seccomp,
            "landlock_abi": self.landlock_abi,
            "landlock_fs": self.landlock_fs,
            "landlock_signals": self.landlock_signals,
            "no_new_privs": self.no_new_privs,
            "capabilities_dropped": self.capabilities_dropped,
            "rlimits": list(self.rlimits),
        }


def _fail(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


# ---- process attributes ------------------------------------------------------------------------


def set_no_new_privs() -> None:
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _fail("prctl(PR_SET_NO_NEW_PRIVS)")


def no_new_privs() -> bool:
    return bool(_libc.prctl(_PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1)


def set_nondumpable() -> None:
    """Other same-uid processes (other sandboxes) cannot ptrace us or read /proc/<pid>/mem."""
    _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def set_parent_death_signal(signal: int) -> None:
    if _libc.prctl(_PR_SET_PDEATHSIG, signal, 0, 0, 0) != 0:
        raise _fail("prctl(PR_SET_PDEATHSIG)")


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def drop_capabilities(syscall_number: int) -> bool:
    """Clear the effective, permitted, inheritable and ambient sets. True if it worked."""
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words
    data = (_CapData * 2)()
    return bool(_libc.syscall(syscall_number, ctypes.byref(header), ctypes.byref(data)) == 0)


def set_rlimit(which: int, soft: int, hard: int | None = None) -> None:
    """Lower a limit (never raise the hard limit above its current value)."""
    _, current_hard = resource.getrlimit(which)
    hard = soft if hard is None else hard
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
    resource.setrlimit(which, (min(soft, hard), hard))


def _refuse_processes(name: str) -> Any:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EPERM, f"{name}: contracts cannot start or signal processes")

    refused.__name__ = refused.__qualname__ = name.rpartition(".")[2]
    return refused


def guard_process_functions() -> None:
    """Make Python's process APIs fail loudly in contract code.

    The kernel already refuses (seccomp), but glibc's system() turns a refused spawn into exit
    status 127, which a contract would return as if it had run a command. These replacements
    raise PermissionError instead. Installed before the contract module runs, so that
    `from os import system` binds them too; they are for clear errors, not for enforcement.
    """
    import subprocess

    for name in (
        "system",
        "popen",
        "fork",
        "forkpty",
        "posix_spawn",
        "posix_spawnp",
        "kill",
        "killpg",
        *(f"exec{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")),
        *(f"spawn{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")),
    ):
        if hasattr(os, name):
            setattr(os, name, _refuse_processes(f"os.{name}"))
    subprocess.Popen._execute_child = _refuse_processes("subprocess")  # type: ignore[attr-defined]


# ---- Landlock ----------------------------------------------------------------------------------


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 if unsupported or disabled."""
    version = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    return max(int(version), 0)


class _RulesetAttr(ctypes.Structure):
    _fields_ = (("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64))


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is __attribute__((packed))
    _fields_ = (("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def _fs_rights(abi: int) -> int:
    rights = _FS_ABI1
    if abi >= 2:
        rights |= _FS_REFER
    if abi >= 3:
        rights |= _FS_TRUNCATE
    if abi >= 5:
        rights |= _FS_IOCTL_DEV
    return rights


def landlock_ruleset(abi: int, read_paths: Iterable[str]) -> int:
    """A ruleset fd that handles every access right of `abi` and grants only reading `read_paths`.

    Restricting with it confines file access (to those paths, read-only), TCP bind/connect
    (ABI >= 4: none) and signals and abstract unix sockets (ABI >= 6: within the domain only).
    """
    attr = _RulesetAttr(_fs_rights(abi), _NET_ALL if abi >= 4 else 0, _SCOPE_ALL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    fd = int(_libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0))
    if fd < 0:
        raise _fail("landlock_create_ruleset")
    try:
        for path in read_paths:
            try:
                target = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # absent paths need no rule
            try:
                allowed = _FS_READ_FILE | (_FS_READ_DIR if os.path.isdir(path) else 0)
                rule = _PathBeneath(allowed, target)
                if (
                    _libc.syscall(
                        _SYS_LANDLOCK_ADD_RULE, fd, _LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0
                    )
                    != 0
                ):
                    raise _fail(f"landlock_add_rule({path})")
            finally:
                os.close(target)
    except BaseException:
        os.close(fd)
        raise
    return fd


def landlock_restrict(ruleset_fd: int) -> None:
    """Confine the calling thread (and its future children) by the ruleset. Needs no_new_privs."""
    if _libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, 0) != 0:
        raise _fail("landlock_restrict_self")


# ---- seccomp -------------------------------------------------------------------------------------

# Denied in the host and so in every child (they inherit the filter).
_HOST_DENY = (
    "socket",
    "socketpair",
    "execve",
    "execveat",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "kill",
    "tkill",
    "tgkill",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "pidfd_open",
    "pidfd_getfd",
    "pidfd_send_signal",
    "process_madvise",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "add_key",
    "request_key",
    "keyctl",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "clock_adjtime",
    "sethostname",
    "setdomainname",
    "iopl",
    "ioperm",
    "name_to_handle_at",
    "open_by_handle_at",
    "fanotify_init",
    "quotactl",
    "syslog",
    "vhangup",
    "migrate_pages",
    "move_pages",
    "shmget",
    "shmat",
    "shmctl",
    "semget",
    "semop",
    "semtimedop",
    "semctl",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedreceive",
    "mq_notify",
    "mq_getsetattr",
)
# Calls that may act on another process: allowed only with pid 0 (the caller itself).
_SELF_ONLY_ARG0 = ("prlimit64", "sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr")
# File-system changes, denied when Landlock is unavailable.
_FS_MUTATIONS = (
    "creat",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "rmdir",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "truncate",
    "chmod",
    "fchmodat",
    "fchmodat2",
    "chown",
    "lchown",
    "fchownat",
    "setxattr",
    "lsetxattr",
    "removexattr",
    "lremovexattr",
    "utimes",
    "utimensat",
    "futimesat",
)
_OPEN_WRITE_FLAGS = (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND)


def _seccomp() -> Any:
    try:
        import pyseccomp
    except (ImportError, OSError) as exc:
        raise OSError(
            errno.ENOSYS,
            f"seccomp is unavailable ({exc}); install libseccomp (Debian: apt-get install libseccomp2) "
            "and the pyseccomp package. Contracts are not run without it.",
        ) from None
    return pyseccomp


def syscall_number(name: str) -> int:
    sc = _seccomp()
    number = int(sc.resolve_syscall(sc.Arch.NATIVE, name))
    if number < 0:
        raise OSError(errno.ENOSYS, f"unknown syscall {name}")
    return number


def _add(flt: Any, action: int, name: str, *args: Any) -> None:
    sc = _seccomp()
    if sc.resolve_syscall(sc.Arch.NATIVE, name) < 0:
        return  # not on this architecture (e.g. legacy calls on aarch64) or unknown to libseccomp
    flt.add_rule(action, name, *args)


def _host_filter(*, landlock_fs: bool) -> Any:
    sc = _seccomp()
    flt = sc.SyscallFilter(sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in _HOST_DENY:
        _add(flt, deny, name)
    for name in _SELF_ONLY_ARG0:
        _add(flt, deny, name, sc.Arg(0, sc.NE, 0))
    _add(flt, deny, "setpriority", sc.Arg(1, sc.NE, 0))
    _add(flt, deny, "ioprio_set", sc.Arg(1, sc.NE, 0))
    # One rule per namespace flag: seccomp rules for one syscall are OR'ed, a rule's args AND'ed.
    for bit in range(32):
        flag = 1 << bit
        if _CLONE_NAMESPACES & flag:
            _add(flt, deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 takes its flags in memory seccomp cannot read: make glibc fall back to clone.
    _add(flt, sc.ERRNO(errno.ENOSYS), "clone3")
    if not landlock_fs:
        for name in _FS_MUTATIONS:
            _add(flt, deny, name)
        for flag in _OPEN_WRITE_FLAGS:
            _add(flt, sc.ERRNO(errno.EACCES), "open", sc.Arg(1, sc.MASKED_EQ, flag, flag))
            _add(flt, sc.ERRNO(errno.EACCES), "openat", sc.Arg(2, sc.MASKED_EQ, flag, flag))
        _add(flt, sc.ERRNO(errno.EACCES), "openat2")  # flags live in a struct: refuse outright
    return flt


def load_host_filter(*, landlock_fs: bool) -> None:
    sc = _seccomp()
    flt = _host_filter(landlock_fs=landlock_fs)
    flt.set_attr(sc.Attr.CTL_TSYNC, 1)  # every thread of the host, not just this one
    flt.load()


class _FdFile:
    """The object with fileno() that pyseccomp's export_bpf wants."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


def child_filter_bpf(*, landlock_fs: bool) -> bytes:
    """The child's extra filter as raw BPF, compiled once in the host: loading it costs one prctl."""
    sc = _seccomp()
    flt = sc.SyscallFilter(sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in ("fork", "vfork", "setrlimit"):
        _add(flt, deny, name)
    _add(flt, deny, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0))
    _add(flt, deny, "prlimit64", sc.Arg(2, sc.NE, 0))  # reading limits is fine, setting is not
    if not landlock_fs:
        for name in ("open", "openat", "openat2", "creat"):
            _add(flt, sc.ERRNO(errno.EACCES), name)
    read_fd, write_fd = os.pipe()
    try:
        flt.export_bpf(_FdFile(write_fd))
        os.close(write_fd)
        write_fd = -1
        chunks = []
        while chunk := os.read(read_fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def load_bpf(program: bytes) -> None:
    """Install a raw seccomp BPF program on the calling thread (no_new_privs must be set)."""
    if not program or len(program) % 8:
        raise ValueError("not a BPF program")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise _fail("prctl(PR_SET_SECCOMP)")
