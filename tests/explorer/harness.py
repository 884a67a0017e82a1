"""Chain state for the explorer tests: a sim network and a driver that plays its TEE parties.

`SimNet` makes a genesis that accepts simulated TEE evidence (the dev root and the measurement
below on the allowlist), and then does on chain, with real signatures, what a gatekeeper and its
workers do: register with sim evidence, publish the master key, hand it over, publish a contract
key, and answer a job with a signed result. The explorer only reads the chain, so this is all it
needs to show workers, key epochs, contracts and a job's whole lifecycle. The driver talks to the
node through a `ChainIO`: over HTTP to a live node, or in process (one block per tx).

Every ciphertext the driver puts on chain is kept in `SimNet.sealed`, so tests can check that the
explorer never shows any of it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx

from umbra import RUNTIME_VERSION, codec, crypto
from umbra.chain.modules.registry import binding_fields
from umbra.chain.state import State
from umbra.chain.types import Call, GenesisConfig, SignedTx, Tx
from umbra.node.service import Node
from umbra.tee._sim import SimAuthority, SimHardware, SimPlatform
from umbra.tee.policy import Policy, report_data_binding

UMBRA = str(Path(sys.executable).with_name("umbra"))
CHAIN_ID = "umbra-explorer-test"
ENDOWMENT = 10**15
MEASUREMENT = codec.sha256(b"umbra explorer test worker code")

COUNTER = b"""from umbra.contract import Contract, command, query


class Counter(Contract):
    def init(self, ctx, start=0):
        self.state["n"] = start

    @command
    def add(self, ctx, by=1):
        self.state["n"] += by
        return self.state["n"]

    @query
    def get(self, ctx):
        return {"n": self.state["n"], "asked_by": ctx.caller}
"""


class ChainIO(Protocol):
    def nonce(self, who: bytes) -> int: ...

    def submit(self, stx: SignedTx) -> list[dict[str, Any]]:
        """Include `stx`, insist it succeeded, and return its events as JSON (0x-hex bytes)."""
        ...

    def job(self, job_id: bytes) -> dict[str, Any] | None:
        """The job record's status, workers (bytes) and prev_state_hash (bytes or None)."""
        ...


class HttpChain:
    """A live node over its public HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def nonce(self, who: bytes) -> int:
        reply = self.http.get(f"/accounts/{codec.to_hex(who)}")
        reply.raise_for_status()
        return int(reply.json()["nonce"])

    def submit(self, stx: SignedTx) -> list[dict[str, Any]]:
        reply = self.http.post(
            "/tx", params={"wait": "true", "timeout": 30}, json={"tx": codec.to_hex(stx.encode())}
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body.get("status") == "included" and body.get("ok"), body
        receipt = self.http.get(f"/tx/{body['tx_hash']}").json()
        events: list[dict[str, Any]] = receipt["events"]
        return events

    def job(self, job_id: bytes) -> dict[str, Any] | None:
        reply = self.http.get("/state/compute/job", params={"key": codec.to_hex(job_id)})
        if reply.status_code == 404:
            return None
        reply.raise_for_status()
        value = reply.json()["value"]
        prev = value.get("prev_state_hash")
        return {
            "status": value["status"],
            "workers": [codec.from_hex(w) for w in value["workers"]],
            "prev_state_hash": None if prev is None else codec.from_hex(prev),
        }

    def close(self) -> None:
        self.http.close()


class LocalChain:
    """A node in this process that is not running its block loop: each tx gets its own block."""

    def __init__(self, node: Node, sequencer: crypto.SigningKey) -> None:
        self.node = node
        self.sequencer = sequencer

    def nonce(self, who: bytes) -> int:
        return self.node.runtime.system.nonce(State(self.node.view), who)

    def submit(self, stx: SignedTx) -> list[dict[str, Any]]:
        self.node.submit(stx.encode())
        block = self.node.produce_block(self.sequencer)
        record = self.node.store.tx(stx.hash)
        assert record is not None and record.height == block.header.height, "tx was not included"
        assert record.ok, f"{record.error}: {record.message}"
        return [
            codec.jsonable(e.to_cbor())
            for e in self.node.store.block_events(record.height)
            if e.tx_index == record.index
        ]

    def tick(self) -> None:
        self.node.produce_block(self.sequencer)

    def job(self, job_id: bytes) -> dict[str, Any] | None:
        value = self.node.runtime.compute.job(State(self.node.view), job_id)
        if value is None:
            return None
        return {
            "status": value["status"],
            "workers": list(value["workers"]),
            "prev_state_hash": value.get("prev_state_hash"),
        }


def _key(label: str) -> crypto.SigningKey:
    return crypto.SigningKey(codec.sha256(os.urandom(16) + label.encode()))


@dataclass
class SimNet:
    genesis: GenesisConfig
    sequencer: crypto.SigningKey
    accounts: dict[str, crypto.SigningKey]
    operator: crypto.SigningKey
    authority: SimAuthority
    hardware: SimHardware
    gatekeeper: crypto.SigningKey
    workers: list[crypto.SigningKey]
    contract: bytes | None = None
    jobs: list[bytes] = field(default_factory=list)
    sealed: list[bytes] = field(default_factory=list)

    @classmethod
    def create(cls, *, workers: int = 2, block_ms: int = 50, idle_ms: int = 300) -> SimNet:
        now = datetime.now(UTC)
        authority = SimAuthority.create(now=now - timedelta(days=1))
        hardware = authority.issue_hardware(now=now - timedelta(hours=1))
        accounts = {name: _key(name) for name in ("alice", "bob", "charlie")}
        operator = _key("operator")
        sequencer = _key("sequencer")
        policy = Policy(measurements={"sim": [MEASUREMENT.hex()]}, allow_sim=True)
        genesis = GenesisConfig(
            chain_id=CHAIN_ID,
            time_ms=int(time.time() * 1000),
            sequencer=sequencer.public_key,
            runtime_version=RUNTIME_VERSION,
            params={"block_ms": block_ms, "idle_ms": idle_ms, "tx_fee": 1},
            modules={
                "balances": {
                    "allocations": {k.public_key: ENDOWMENT for k in [*accounts.values(), operator]}
                },
                "council": {"members": sorted(k.public_key for k in accounts.values()), "threshold": 2},
                "registry": {
                    "policy": policy.to_dict(),
                    "sim_root": authority.cert_pem,
                    "attestation_ttl_ms": 6 * 3600 * 1000,
                    "heartbeat_blocks": 1_000_000,  # the driver sends no heartbeats
                    "missed_heartbeats": 3,
                },
                "keys": {"gatekeeper_operators": [operator.public_key]},
            },
        )
        return cls(
            genesis=genesis,
            sequencer=sequencer,
            accounts=accounts,
            operator=operator,
            authority=authority,
            hardware=hardware,
            gatekeeper=_key("gatekeeper"),
            workers=[_key(f"worker{i}") for i in range(workers)],
        )

    @property
    def alice(self) -> crypto.SigningKey:
        return self.accounts["alice"]

    def write(self, root: Path) -> tuple[Path, Path, dict[str, Path]]:
        """Genesis, sequencer key and account key files, as `umbra node` and the CLI take them."""
        root.mkdir(parents=True, exist_ok=True)
        genesis_path = root / "genesis.cbor"
        genesis_path.write_bytes(self.genesis.encode())
        sequencer_path = root / "sequencer.key"
        crypto.save_signing_key(sequencer_path, self.sequencer)
        keys = {}
        for name, key in self.accounts.items():
            keys[name] = root / f"{name}.key"
            crypto.save_signing_key(keys[name], key)
        return genesis_path, sequencer_path, keys

    # ---- txs -----------------------------------------------------------------------------------
    def call(
        self, io: ChainIO, signer: crypto.SigningKey, module: str, method: str, **args: Any
    ) -> list[dict[str, Any]]:
        tx = Tx(
            self.genesis.chain_id,
            signer.public_key,
            io.nonce(signer.public_key),
            Call(module, method, args),
            1,
        )
        return io.submit(tx.sign(signer))

    def sealed_bytes(self, size: int) -> bytes:
        """Stand-in ciphertext (the chain only hashes it); remembered for the never-shown checks."""
        data = os.urandom(size)
        self.sealed.append(data)
        return data

    def ecdh_pk(self, identity: crypto.SigningKey) -> bytes:
        return codec.sha256(b"ecdh/" + identity.public_key)

    def register(self, io: ChainIO, identity: crypto.SigningKey, role: str = "worker") -> None:
        chain_id = self.genesis.chain_id
        fields = binding_fields(
            chain_id=chain_id,
            genesis_hash=self.genesis.hash,
            identity_pk=identity.public_key,
            ecdh_pk=self.ecdh_pk(identity),
            tee_type="sim",
        )
        platform = SimPlatform(self.hardware, measurement=MEASUREMENT)
        evidence = platform.evidence(report_data_binding(**fields), at=datetime.now(UTC))
        endpoint = f"http://127.0.0.1:9/{role}/{identity.public_key.hex()[:8]}"
        binding = {"operator": self.operator.public_key, "endpoint": endpoint, "chain_id": chain_id}
        self.call(
            io,
            self.operator,
            "registry",
            "register_worker",
            evidence=evidence,
            tee_type="sim",
            endorsements={},
            identity_pk=identity.public_key,
            ecdh_pk=self.ecdh_pk(identity),
            endpoint=endpoint,
            binding_sig=identity.sign("umbra/worker-binding/v1", binding),
            role=role,
        )

    def setup(self, io: ChainIO) -> None:
        """Gatekeeper and workers registered and keyed, a staking pool, a contract with its key."""
        chain_id = self.genesis.chain_id
        gk = self.gatekeeper
        op = self.operator
        self.register(io, gk, "gatekeeper")
        for worker in self.workers:
            self.register(io, worker)
        master_pk = codec.sha256(b"master/" + gk.public_key)
        body = {"chain_id": chain_id, "epoch": 0, "master_pk": master_pk}
        self.call(
            io, op, "keys", "init_master", gatekeeper=gk.public_key, master_pk=master_pk,
            signature=gk.sign("umbra/master-key/v1", body),
        )  # fmt: skip
        for worker in self.workers:
            ciphertext = self.sealed_bytes(120)
            body = {
                "chain_id": chain_id,
                "epoch": 0,
                "worker": worker.public_key,
                "ciphertext_hash": codec.sha256(ciphertext),
            }
            self.call(
                io, op, "keys", "handover", gatekeeper=gk.public_key, worker=worker.public_key, epoch=0,
                ciphertext=ciphertext, signature=gk.sign("umbra/handover/v1", body),
            )  # fmt: skip
        self.call(io, op, "staking", "create_pool", worker=self.workers[0].public_key, commission_ppm=50_000)
        self.call(io, self.alice, "staking", "delegate", worker=self.workers[0].public_key, amount=5_000)
        events = self.call(io, self.alice, "contracts", "deploy", code=COUNTER, manifest={"name": "counter"})
        deployed = next(e for e in events if e["name"] == "ContractDeployed")
        self.contract = codec.from_hex(deployed["data"]["contract"])
        key_body = {
            "chain_id": chain_id,
            "contract": self.contract,
            "epoch": 0,
            "ecdh_pk": codec.sha256(b"contract-ecdh/" + self.contract),
            "sign_pk": codec.sha256(b"contract-sign/" + self.contract),
            "evm_address": codec.sha256(b"contract-evm/" + self.contract)[:20],
        }
        self.call(
            io, op, "keys", "publish_contract_key", gatekeeper=gk.public_key,
            **{k: v for k, v in key_body.items() if k != "chain_id"},
            signature=gk.sign("umbra/contract-key/v1", key_body),
        )  # fmt: skip
        self.call(
            io, self.alice, "contracts", "upload_secret", contract=self.contract, name="api_key",
            sealed=self.sealed_bytes(80),
        )  # fmt: skip

    def request_job(self, io: ChainIO) -> bytes:
        assert self.contract is not None
        nonce = io.nonce(self.alice.public_key)
        tx = Tx(
            self.genesis.chain_id,
            self.alice.public_key,
            nonce,
            Call(
                "compute",
                "request",
                {
                    "contract": self.contract,
                    "sealed_input": self.sealed_bytes(150),
                    "reply_pk": os.urandom(32),
                    "max_fee": 100,
                    "nonce": nonce,
                    "replicas": 1,
                },
            ),
            1,
        )
        stx = tx.sign(self.alice)
        io.submit(stx)
        job_id = codec.sha256(b"umbra/job/" + stx.hash)
        self.jobs.append(job_id)
        return job_id

    def complete_job(self, io: ChainIO, job_id: bytes, timeout: float = 30.0) -> None:
        """Answer the job as its assigned worker would: a signed result over sealed output."""
        assert self.contract is not None
        deadline = time.monotonic() + timeout
        record = io.job(job_id)
        while record is None or record["status"] != "assigned":
            assert time.monotonic() < deadline, f"job was never assigned: {record}"
            if isinstance(io, LocalChain):
                io.tick()
            else:
                time.sleep(0.05)
            record = io.job(job_id)
        worker = record["workers"][0]
        identity = next(w for w in self.workers if w.public_key == worker)
        sealed_output = self.sealed_bytes(160)
        state_blob = self.sealed_bytes(96)
        job_input = next(s for s in reversed(self.sealed) if len(s) == 150)
        body = {
            "job": job_id,
            "contract": self.contract,
            "worker": worker,
            "code_hash": codec.sha256(COUNTER),
            "input_hash": codec.sha256(job_input),
            "sealed_output_hash": codec.sha256(sealed_output),
            "output_commitment": os.urandom(32),
            "prev_state_hash": record["prev_state_hash"],
            "new_state_hash": codec.sha256(state_blob),
            "failed": False,
            "transfers": [],
            "events": [],
        }
        self.call(
            io, self.operator, "compute", "submit_result", body=body,
            signature=identity.sign("umbra/result/v1", body), sealed_output=sealed_output, state_blob=state_blob,
        )  # fmt: skip

    def run_job(self, io: ChainIO) -> bytes:
        job_id = self.request_job(io)
        self.complete_job(io, job_id)
        return job_id


# ---- processes -------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("UMBRA_NODE", "UMBRA_KEY")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Proc:
    """A process in its own session (so its group is all of it), killed on `stop` however it ends."""

    def __init__(self, argv: list[str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=child_env(),
            )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=wait)
            if not self.alive():
                break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # anything left in the group


def wait_for(predicate: Any, timeout: float, what: str, proc: Proc | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise AssertionError(f"process exited while waiting for {what}:\n{proc.tail()}")
        with contextlib.suppress(httpx.HTTPError, OSError, ValueError):
            value = predicate()
            if value:
                return value
        time.sleep(0.1)
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what}" + (f":\n{proc.tail()}" if proc else "")
    )


class Served:
    """An ASGI app on a free 127.0.0.1 port, in a thread of this process (uvicorn)."""

    def __init__(self, app: Any) -> None:
        import socket
        import threading

        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="explorer-test-server", daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{self.url}/health", timeout=2).status_code == 200, 20, "the test server")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
