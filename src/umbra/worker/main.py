"""Process entry of `umbra worker` and `umbra gatekeeper`: one host, its core process, its HTTP port.

DATA/core/         the core's sealed files (only the core can open them)
DATA/machine.sim   sim only: the simulated CPU (its hardware key and machine secret)
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from umbra import crypto
from umbra.enclave.transport import CoreError, PipeTransport
from umbra.tee._sim import PRESENTED_TYPES
from umbra.worker.api import create_app
from umbra.worker.host import DutyHook, Host, HostConfig, HostError, check_fault

__all__ = ["HostOptions", "core_args", "run_host"]

log = logging.getLogger("umbra.worker")


@dataclass(frozen=True)
class HostOptions:
    node_url: str
    operator: crypto.SigningKey
    data_dir: Path
    role: str = "worker"
    host: str = "127.0.0.1"
    port: int = 0
    endpoint: str | None = None
    tee_type: str | None = None
    sim_root: Path | None = None
    sim_measurement: str | None = None
    sim_debug: bool = False
    on_seal_failure: str = "fail"
    fault: str | None = None
    attest_urls: tuple[str, ...] = ()  # evm ordering: more nodes, for the quorum of attestations


def core_args(options: HostOptions) -> list[str]:
    """The core's command line: the simulated TEE if there is a dev root or a simulated CPU
    already, else the hardware TEE this machine has."""
    data = options.data_dir.resolve()
    args = ["--sealed-dir", str(data / "core")]
    machine = data / "machine.sim"
    if options.sim_root is not None or machine.exists():
        presented = options.tee_type or "sim"
        if presented not in PRESENTED_TYPES:
            raise HostError(
                "usage", f"a sim worker presents one of {', '.join(PRESENTED_TYPES)}, not {presented!r}"
            )
        args += ["--tee", "sim", "--machine-file", str(machine), "--presented-type", presented]
        if options.sim_root is not None:
            args += ["--sim-root", str(options.sim_root.resolve())]
        if options.sim_measurement:
            args += ["--sim-measurement", options.sim_measurement]
        if options.sim_debug:
            args.append("--sim-debug")
        if options.fault == "wrong-output":
            args += ["--fault", "wrong-output"]
        return args
    if options.fault == "wrong-output":
        raise HostError("usage", "--fault wrong-output needs the simulated TEE")
    args += ["--tee", "hardware"]
    if options.tee_type is not None:
        args += ["--presented-type", options.tee_type]
    return args


def run_host(options: HostOptions, *, hooks: tuple[DutyHook, ...] = ()) -> None:
    """Run until SIGINT/SIGTERM; raise HostError on a fatal refusal (bad seal, registration refused)."""
    check_fault(options.fault)
    options.data_dir.mkdir(parents=True, exist_ok=True)
    if options.port == 0:
        raise HostError("usage", "give the HTTP port with --port")
    endpoint = options.endpoint or f"http://{options.host}:{options.port}"
    config = HostConfig(
        node_url=options.node_url,
        operator=options.operator,
        endpoint=endpoint,
        role=options.role,
        on_seal_failure=options.on_seal_failure,
        state_dir=options.data_dir,
        fault=options.fault,
        attest_urls=options.attest_urls,
    )
    transport = PipeTransport(core_args(options))
    host = Host(config, transport, hooks=hooks)
    stop = threading.Event()
    try:
        try:
            host.start()
        except CoreError as exc:
            raise HostError(exc.code, exc.message) from None
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(host), host=options.host, port=options.port, log_level="warning", access_log=False
            )
        )

        def follow() -> None:
            host.run(stop)
            server.should_exit = True  # a fatal refusal ends the process, with its reason

        loop = threading.Thread(target=follow, name="chain-loop", daemon=True)
        loop.start()
        server.run()
        stop.set()
        loop.join(timeout=10)
        if host.fatal is not None:
            raise host.fatal
    finally:
        stop.set()
        host.close()
