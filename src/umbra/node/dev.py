"""`umbra dev`: a whole local network in one foreground command.

The data dir holds keys, the genesis, one sub-directory per process and `dev.json`. An existing
dir is resumed as it is (also after `kill -9` of everything); `--fresh` wipes it. Every process
runs in `umbra dev`'s process group and also gets PR_SET_PDEATHSIG, so it dies with its parent.

The network runs the simulated TEE: `keys/sim-root.pem` is its dev root (the stand-in for a
vendor's root CA; genesis names its certificate), the policy allows sim evidence of exactly this
code tree, and one gatekeeper (whose operator genesis names) holds the master key. Each worker
and the gatekeeper keep their sealed keys and simulated CPU in their own directory, so a
restarted one resumes with the same identity. `dev.json` is written once every worker is
registered, attested and holds the current key epoch.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from umbra import RUNTIME_VERSION, codec, crypto
from umbra.chain.types import GenesisConfig
from umbra.tee._sim import SimAuthority, code_tree_measurement
from umbra.tee.policy import Policy

__all__ = ["DevNetwork", "dev_genesis", "free_port"]

DEV_ACCOUNTS = ("alice", "bob", "charlie")
DEV_ENDOWMENT = 10**15
OPERATOR_FUNDS = 10**12
DEV_STAKE = 10**6  # bonded by each dev worker's operator: well above every slash
DEV_COMMISSION_PPM = 100_000
DEV_PARAMS = {"block_ms": 100, "idle_ms": 1000, "tx_fee": 1, "job_deadline_blocks": 20}
SIM_ATTESTATION_TTL_MS = 3600 * 1000
# Sim workers present these types in turn (`--tee-mix`), so `distinct: tee_types` requests work on a
# dev network.
DEV_TEE_TYPES = ("sgx", "tdx", "sev-snp")
GATEKEEPER = "gatekeeper0"
READY_TIMEOUT_S = 150.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def dev_policy(measurement: bytes) -> Policy:
    """Sim evidence of exactly this code tree, nothing else."""
    return Policy(measurements={"sim": [measurement.hex()]}, allow_sim=True)


def dev_genesis(
    keys: dict[str, crypto.SigningKey],
    sequencer: crypto.SigningKey,
    *,
    chain_id: str,
    sim_root_pem: bytes | None = None,
    gatekeeper_operators: tuple[bytes, ...] = (),
    operators: tuple[bytes, ...] = (),
    measurement: bytes | None = None,
) -> GenesisConfig:
    council = sorted(keys[name].public_key for name in DEV_ACCOUNTS)
    allocations = {keys[name].public_key: DEV_ENDOWMENT for name in DEV_ACCOUNTS}
    allocations.update({account: OPERATOR_FUNDS for account in (*gatekeeper_operators, *operators)})
    registry: dict[str, Any] = {
        "policy": dev_policy(measurement or code_tree_measurement()).to_dict(),
        "attestation_ttl_ms": SIM_ATTESTATION_TTL_MS,
        "heartbeat_blocks": 20,
        "missed_heartbeats": 3,
    }
    if sim_root_pem is not None:
        registry["sim_root"] = sim_root_pem
    return GenesisConfig(
        chain_id=chain_id,
        time_ms=int(time.time() * 1000),
        sequencer=sequencer.public_key,
        runtime_version=RUNTIME_VERSION,
        params=dict(DEV_PARAMS),
        modules={
            "balances": {"allocations": allocations},
            "council": {"members": council, "threshold": 2},
            "registry": registry,
            "keys": {"gatekeeper_operators": sorted(gatekeeper_operators)},
        },
    )


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the parent dies (Linux prctl)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class _Proc:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    retry_at: float | None = None

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.retry_at = None
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        finally:
            out.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class DevNetwork:
    def __init__(
        self,
        data_dir: Path,
        *,
        port: int,
        workers: int,
        fresh: bool,
        ordering: str,
        nodes: int,
        tee_mix: tuple[str, ...] = DEV_TEE_TYPES,
        worker_faults: Mapping[int, str] | None = None,
    ) -> None:
        self.dir = data_dir.resolve()
        self.port = port
        self.workers = workers
        self.ordering = ordering
        self.nodes = nodes
        self.tee_mix = tee_mix
        self.worker_faults = dict(worker_faults or {})
        if fresh and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[_Proc] = []
        self._stopping = False

    # ---- setup -----------------------------------------------------------------------------------
    def _key(self, name: str) -> crypto.SigningKey:
        path = self.dir / "keys" / f"{name}.key"
        if path.exists():
            return crypto.load_signing_key(path)
        key = crypto.SigningKey.generate()
        crypto.save_signing_key(path, key)
        return key

    @property
    def sim_root_path(self) -> Path:
        return self.dir / "keys" / "sim-root.pem"

    def _sim_root(self) -> SimAuthority:
        if self.sim_root_path.exists():
            return SimAuthority.load(self.sim_root_path)
        authority = SimAuthority.create(now=datetime.now(UTC), name="Umbra dev root")
        authority.save(self.sim_root_path)
        return authority

    def _worker_names(self) -> list[str]:
        return [f"worker{i}" for i in range(self.workers)]

    def prepare(self) -> Path:
        """Create keys, the sim dev root and genesis on first start; reuse them afterwards."""
        keys = {name: self._key(name) for name in DEV_ACCOUNTS}
        sequencer = self._key("sequencer")
        gatekeeper_operator = self._key(f"{GATEKEEPER}-operator")
        operators = tuple(self._key(f"{name}-operator").public_key for name in self._worker_names())
        authority = self._sim_root()
        genesis_path = self.dir / "genesis.cbor"
        if not genesis_path.exists():
            genesis = dev_genesis(
                keys,
                sequencer,
                chain_id=f"umbra-dev-{os.urandom(4).hex()}",
                sim_root_pem=authority.cert_pem,
                gatekeeper_operators=(gatekeeper_operator.public_key,),
                operators=operators,
            )
            tmp = genesis_path.with_suffix(".tmp")
            tmp.write_bytes(genesis.encode())
            os.replace(tmp, genesis_path)
        else:
            self._warn_if_code_changed(load_genesis(genesis_path))
        return genesis_path

    @staticmethod
    def _warn_if_code_changed(genesis: GenesisConfig) -> None:
        policy = (genesis.modules.get("registry") or {}).get("policy") or {}
        allowed = (policy.get("measurements") or {}).get("sim", [])
        if allowed and code_tree_measurement().hex() not in allowed:
            print(
                "umbra dev: the code changed since this network was created: its workers' measurement is not "
                "on the network's allowlist and they cannot attest. Start over with --fresh.",
                file=sys.stderr,
                flush=True,
            )

    def _umbra(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "umbra.client.cli", *args]

    # ---- run -----------------------------------------------------------------------------------
    def run(self) -> int:
        # A dev.json left by an earlier run names dead processes: it reappears once this run is ready.
        (self.dir / "dev.json").unlink(missing_ok=True)
        genesis_path = self.prepare()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        node_url = f"http://127.0.0.1:{self.port}"
        node = _Proc(
            "node0",
            self._umbra(
                "node",
                "--data-dir",
                str(self.dir / "node0"),
                "--port",
                str(self.port),
                "--genesis",
                str(genesis_path),
                "--sequencer-key",
                str(self.dir / "keys" / "sequencer.key"),
            ),
            self.dir / "logs" / "node0.log",
        )
        node.info = {"url": node_url}
        nodes = [node]
        try:
            if self.ordering == "evm":
                nodes = self._evm_nodes(genesis_path)
            self.procs.extend(nodes)
            for proc in nodes:
                proc.start()
            for proc in nodes:
                self._wait_healthy(proc, proc.info["url"])
            self._fund_operators(node_url)
            self._start_tee_hosts([node_url, *(p.info["url"] for p in nodes if p.info["url"] != node_url)])
            self._wait_ready()
            self._stake_workers()
            self._write_dev_json()
            print(f"umbra dev: network ready at {node_url}; dev.json at {self.dir / 'dev.json'}", flush=True)
            return self._supervise()
        finally:
            self.stop()

    def _evm_nodes(self, genesis_path: Path) -> list[_Proc]:
        """evm ordering: start anvil, bind the genesis to an inbox on it (deployed on first start),
        and return the --nodes node processes, node0 on --port (umbra.node._dev_evm)."""
        from umbra.node._dev_evm import AnvilNotFound, EvmDev

        evm = EvmDev(self.dir, nodes=self.nodes, first_port=self.port, anvil_port=free_port())
        try:
            anvil = _Proc("anvil", evm.anvil_command(), self.dir / "logs" / "anvil.log")
        except AnvilNotFound as exc:
            raise RuntimeError(str(exc)) from None
        self.procs.append(anvil)
        anvil.start()
        evm.wait_anvil(alive=anvil.alive)
        evm.prepare(genesis_path)
        nodes = []
        for name, argv, url in evm.node_commands(self._umbra(), genesis_path):
            proc = _Proc(name, argv, self.dir / "logs" / f"{name}.log")
            proc.info = {"url": url}
            nodes.append(proc)
        return nodes

    def _wait_healthy(self, proc: _Proc, url: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping:
            if not proc.alive():
                tail = proc.log.read_text(errors="replace")[-2000:] if proc.log.exists() else ""
                raise RuntimeError(f"{proc.name} exited during start-up:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{proc.name} did not become healthy within {timeout:.0f} s")

    # ---- TEE hosts -----------------------------------------------------------------------------
    def _port(self, name: str) -> int:
        """A port kept across restarts, so the endpoint registered on chain stays right."""
        path = self.dir / name / "port"
        if path.exists():
            port = int(path.read_text().strip())
            with contextlib.suppress(OSError), socket.socket() as sock:
                sock.bind(("127.0.0.1", port))
                return port
        port = free_port()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{port}\n")
        return port

    def _fund_operators(self, node_url: str) -> None:
        """Operators added on a resumed network (more --workers) get funds from alice."""
        from umbra.client._node import NodeClient, UmbraError

        alice = self._key("alice")
        with NodeClient(node_url) as client:
            for name in [GATEKEEPER, *self._worker_names()]:
                operator = self._key(f"{name}-operator").public_key
                try:
                    if int(client.account(operator)["free"]) > 0:
                        continue
                    client.call(alice, "balances", "transfer", to=operator, amount=OPERATOR_FUNDS)
                except UmbraError as exc:
                    raise RuntimeError(f"cannot fund the operator of {name}: {exc.message}") from None

    def _stake_workers(self) -> None:
        """Each worker's operator opens its pool and bonds DEV_STAKE once, as a production operator
        would: slashes then cost something on a dev network too."""
        from concurrent.futures import ThreadPoolExecutor

        from umbra.client._node import NodeClient, UmbraError

        def stake(proc: _Proc) -> None:
            operator = self._key(f"{proc.name}-operator")
            worker = codec.from_hex(proc.info["id"])
            # Through the node the worker's host sends its own txs to: its mempool sees both.
            with NodeClient(proc.info["node"]) as client:
                try:
                    try:
                        client.get("/state/staking/pool", key=proc.info["id"])
                        return  # opened on an earlier run of this network
                    except UmbraError as exc:
                        if exc.code != "not_found":
                            raise
                    client.call(
                        operator, "staking", "create_pool", worker=worker, commission_ppm=DEV_COMMISSION_PPM
                    )
                    client.call(operator, "staking", "delegate", worker=worker, amount=DEV_STAKE)
                except UmbraError as exc:
                    raise RuntimeError(f"cannot stake {proc.name}: {exc.message}") from None

        workers = [p for p in self._tee_procs() if p.info["role"] == "worker"]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(stake, workers))

    def _tee_host(
        self, role: str, name: str, node_urls: list[str], tee_type: str, fault: str | None = None
    ) -> _Proc:
        port = self._port(name)
        argv = self._umbra(
            role,
            "--data-dir",
            str(self.dir / name),
            "--port",
            str(port),
            "--node",
            ",".join(node_urls),
            "--key",
            str(self.dir / "keys" / f"{name}-operator.key"),
            "--sim-root",
            str(self.sim_root_path),
            "--tee-type",
            tee_type,
            "--on-seal-failure",
            "new-identity",
            *(("--fault", fault) if fault else ()),
        )
        proc = _Proc(name, argv, self.dir / "logs" / f"{name}.log")
        proc.info = {"url": f"http://127.0.0.1:{port}", "tee": tee_type, "role": role, "node": node_urls[0]}
        return proc

    def _start_tee_hosts(self, node_urls: list[str]) -> None:
        """Every host follows every node (on an evm-ordered chain a worker's core needs the
        attestations of several nodes before it believes a block) but talks first to one of them:
        the gatekeeper to the first node, worker i to node (i + 1) mod n, so that workers sit on
        other nodes than the one clients send their txs to."""

        def starting_at(index: int) -> list[str]:
            index %= len(node_urls)
            return node_urls[index:] + node_urls[:index]

        hosts = [self._tee_host("gatekeeper", GATEKEEPER, node_urls, "sim")]
        hosts += [
            self._tee_host(
                "worker",
                name,
                starting_at(i + 1),
                self.tee_mix[i % len(self.tee_mix)],
                self.worker_faults.get(i),
            )
            for i, name in enumerate(self._worker_names())
        ]
        for proc in hosts:
            proc.start()
            self.procs.append(proc)

    def _tee_procs(self) -> list[_Proc]:
        return [p for p in self.procs if p.info.get("role") in ("worker", "gatekeeper")]

    def _wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until every worker and the gatekeeper is registered, attested and holds the current epoch."""
        deadline = time.monotonic() + timeout
        pending = self._tee_procs()
        while pending:
            if self._stopping:
                raise RuntimeError("stopped while starting")
            for proc in list(pending):
                if not proc.alive():
                    proc.restarts += 1
                    if proc.restarts > 3:
                        tail = proc.log.read_text(errors="replace")[-3000:] if proc.log.exists() else ""
                        raise RuntimeError(f"{proc.name} keeps exiting during start-up:\n{tail}")
                    proc.start()
                    continue
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    info = httpx.get(f"{proc.info['url']}/info", timeout=2).json()
                    if (
                        info.get("status") == "active"
                        and info.get("epoch", -1) >= 0
                        and info["epoch"] in info.get("epochs_held", [])
                    ):
                        proc.info["id"] = info["id"]
                        pending.remove(proc)
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(p.name for p in pending)
                raise RuntimeError(f"not ready within {timeout:.0f} s: {names} (see {self.dir / 'logs'})")
            time.sleep(0.2)

    def _write_dev_json(self) -> None:
        tee = self._tee_procs()
        doc = {
            "nodes": [
                {"url": p.info["url"], "pid": p.popen.pid if p.popen else None}
                for p in self.procs
                if p.name.startswith("node")
            ],
            "workers": [
                {
                    "id": p.info.get("id"),
                    "url": p.info["url"],
                    "pid": p.popen.pid if p.popen else None,
                    "tee": p.info["tee"],
                    "node": p.info["node"],
                }
                for p in tee
                if p.info["role"] == "worker"
            ],
            "gatekeepers": [
                {"id": p.info.get("id"), "url": p.info["url"], "pid": p.popen.pid if p.popen else None}
                for p in tee
                if p.info["role"] == "gatekeeper"
            ],
            "keys": {name: str(self.dir / "keys" / f"{name}.key") for name in DEV_ACCOUNTS},
            "ordering": self.ordering,
        }
        tmp = self.dir / "dev.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, self.dir / "dev.json")

    def _supervise(self) -> int:
        """Restart crashed processes (a node resumes from its store, a worker from its sealed
        keys) until told to stop. One that keeps dying is restarted ever more slowly."""
        while not self._stopping:
            time.sleep(0.5)
            for proc in self.procs:
                if proc.alive() or self._stopping:
                    continue
                now = time.monotonic()
                if proc.retry_at is None:
                    if now - proc.started_at > 60:
                        proc.restarts = 0  # it ran fine for a while: this is a fresh failure
                    proc.retry_at = now + min(30.0, 0.25 * 2**proc.restarts)
                    code = proc.popen.returncode if proc.popen is not None else None
                    print(f"umbra dev: {proc.name} exited (status {code}); restarting", flush=True)
                if now < proc.retry_at:
                    continue
                proc.restarts += 1
                proc.start()
                self._write_dev_json()
        return 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stopping = True

    def stop(self) -> None:
        self._stopping = True
        for proc in self.procs:
            if proc.alive() and proc.popen is not None:
                proc.popen.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            if proc.popen is not None:
                try:
                    proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.popen.kill()


def load_genesis(path: Path) -> GenesisConfig:
    return GenesisConfig.from_cbor(codec.decode(path.read_bytes()))
