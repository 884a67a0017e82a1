"""`python -m umbra.enclave`: the enclave core as its own process, spawned by a worker host.

It speaks length-prefixed CBOR frames on stdin/stdout (`umbra.enclave.transport`) until the host
closes stdin, and logs to stderr. It asks the kernel to kill it when its parent dies, so a core
never outlives the host that fed it (and never serves a stale view to anyone).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from umbra.enclave.core import Core
from umbra.enclave.platform import Platform, PlatformError, SimTee, detect_hardware
from umbra.enclave.transport import CoreError, detach_stdio, serve

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _platform(args: argparse.Namespace) -> Platform:
    if args.tee == "sim":
        return SimTee.for_machine(
            args.machine_file,
            args.sim_root,
            presented_type=args.presented_type,
            measurement=bytes.fromhex(args.sim_measurement) if args.sim_measurement else None,
            debug=args.sim_debug,
        )
    hardware = detect_hardware()
    if args.presented_type not in (None, "sim", hardware.platform):
        raise PlatformError(
            f"asked for {args.presented_type!r} but this machine's TEE is {hardware.platform}"
        )
    return hardware


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m umbra.enclave", description=__doc__)
    parser.add_argument("--sealed-dir", type=Path, required=True, help="where sealed secrets live")
    parser.add_argument("--tee", choices=("sim", "hardware"), default="hardware")
    parser.add_argument("--machine-file", type=Path, help="sim: the simulated CPU's secret file")
    parser.add_argument("--sim-root", type=Path, help="sim: the dev root that issues a new simulated CPU")
    parser.add_argument("--presented-type", default=None, help="sim: the TEE type to present")
    parser.add_argument("--sim-measurement", default=None, help="sim: present this measurement (hex)")
    parser.add_argument("--sim-debug", action="store_true", help="sim: produce debug-mode evidence")
    parser.add_argument(
        "--fault",
        choices=("wrong-output",),
        default=None,
        help="sim only: act as a compromised enclave (chaos tests)",
    )
    args = parser.parse_args(argv)
    if args.tee == "sim" and args.machine_file is None:
        parser.error("--tee sim needs --machine-file")
    if args.tee == "sim" and args.presented_type is None:
        args.presented_type = "sim"
    if args.fault is not None and args.tee != "sim":
        parser.error("--fault is for the simulated TEE only")
    _die_with_parent()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s core: %(message)s", stream=sys.stderr
    )
    frames_in, frames_out = detach_stdio()
    handler: Callable[[dict[str, Any]], dict[str, Any]]
    try:
        handler = Core(_platform(args), args.sealed_dir, lie=args.fault == "wrong-output").handle
    except PlatformError as exc:
        # Answer every request with the reason, so the host reports it rather than a dead pipe.
        failure = {"error": {"code": "platform", "message": str(exc)}}
        handler = lambda _request: failure  # noqa: E731
    try:
        serve(handler, frames_in, frames_out)
    except CoreError as exc:
        print(f"enclave core: host link failed: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
