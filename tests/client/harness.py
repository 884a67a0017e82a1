"""An in-process confidential network for client tests: a real node over HTTP, sim-attested
workers registered on chain, and spec-side stand-ins for the gatekeeper and worker cores.

The chain, the node API, attestation, key publication, scheduling and settlement are the real
ones; only the enclave cores are test doubles (`spec_enclave`), which run the conformance
"notes" contract in Python. So the client's flows (deploy, key verification, sealing, job
settlement, the result scan, queries to worker endpoints, evidence re-verification) are
exercised end to end without the worker processes of `umbra dev`.
"""

from __future__ import annotations

import copy
import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.client.spec_enclave import CHAIN_ID, SpecContract
from tests.node.conftest import ChainFiles, serve_node
from umbra import RUNTIME_VERSION, codec, crypto
from umbra.chain.modules.registry import binding_fields
from umbra.chain.state import State
from umbra.chain.types import Call, GenesisConfig, Tx
from umbra.enclave.keytree import MasterKey
from umbra.node.service import BlockNotice, Node
from umbra.tee._sim import SimAuthority, SimPlatform
from umbra.tee.policy import Policy, report_data_binding

ENDOWMENT = 10**12
MEASUREMENT = codec.sha256(b"client-test-measurement")


class ContractError(Exception):
    pass


def run_notes(state: dict[str, Any], caller: str, method: str, args: dict[str, Any]) -> Any:
    """The conformance `notes` contract (../shared/conformance/contracts/notes.py), in Python."""
    if method == "__init__":
        state.update(owner=caller, limit=args.get("limit", 3), notes={})
        return None
    if method == "add":
        mine = state["notes"].setdefault(caller, [])
        if len(mine) >= state["limit"]:
            raise ContractError("ValueError: note limit reached")
        mine.append(args["text"])
        return len(mine)
    if method == "mine":
        return state["notes"].get(caller, [])
    if method == "count":
        if caller != state["owner"]:
            raise ContractError("PermissionError: owner only")
        return sum(len(v) for v in state["notes"].values())
    raise ContractError(f"AttributeError: no method {method!r}")


@dataclass
class Actor:
    """An operator account and the enclave identity it operates."""

    operator: crypto.SigningKey
    identity: crypto.SigningKey
    ecdh: crypto.EcdhKey
    role: str
    endpoint: str = "http://127.0.0.1:9"
    server: ThreadingHTTPServer | None = None
    nonce: int = 0


@dataclass
class Network:
    node: Node
    url: str
    users: dict[str, crypto.SigningKey]
    gatekeeper: Actor
    workers: list[Actor]
    master: MasterKey
    states: dict[tuple[bytes, bytes | None], dict[str, Any]] = field(default_factory=dict)
    current: dict[bytes, bytes | None] = field(default_factory=dict)
    served_queries: list[bytes] = field(default_factory=list)
    evidence: dict[bytes, bytes] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    down: set[bytes] = field(default_factory=set)  # workers that ignore jobs (a dead host)

    def state(self) -> State:
        return State(self.node.view)

    def spec(self, contract: bytes) -> SpecContract:
        return SpecContract.derive(self.master, contract)

    def send(self, actor: Actor, module: str, method: str, **args: Any) -> bytes:
        tx = Tx(CHAIN_ID, actor.operator.public_key, actor.nonce, Call(module, method, args), 1).sign(
            actor.operator
        )
        tx_hash = self.node.submit(tx.encode())
        actor.nonce += 1
        return tx_hash

    def wait_included(self, tx_hash: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while (record := self.node.store.tx(tx_hash)) is None:
            assert time.monotonic() < deadline, "tx not included"
            time.sleep(0.02)
        assert record.ok, f"{record.error}: {record.message}"

    # ---- the cores' stand-ins ---------------------------------------------------------------------
    def on_block(self, notice: BlockNotice) -> None:
        height = notice.block.header.height
        if height % 10 == 0:  # the registry marks silent workers unresponsive (every 20 blocks, 3 missed)
            for actor in [self.gatekeeper, *self.workers]:
                body = {"chain_id": CHAIN_ID, "worker": actor.identity.public_key, "height": height}
                signature = actor.identity.sign("umbra/heartbeat/v1", body)
                try:
                    self.send(
                        actor,
                        "registry",
                        "heartbeat",
                        worker=actor.identity.public_key,
                        height=height,
                        signature=signature,
                    )
                except Exception as exc:
                    self.errors.append(f"heartbeat: {type(exc).__name__}: {exc}")
        for event in notice.outcome.events:
            try:
                self._on_event(event.module, event.name, event.data, notice.block.header.height)
            except Exception as exc:  # surfaced by the tests through `errors`
                self.errors.append(f"{event.module}.{event.name}: {type(exc).__name__}: {exc}")

    def _on_event(self, module: str, name: str, data: dict[str, Any], height: int) -> None:
        if (module, name) == ("contracts", "ContractDeployed"):
            spec = self.spec(data["contract"])
            body = spec.key_body()
            signature = self.gatekeeper.identity.sign("umbra/contract-key/v1", body)
            args = {k: v for k, v in body.items() if k != "chain_id"}
            self.send(
                self.gatekeeper,
                "keys",
                "publish_contract_key",
                gatekeeper=self.gatekeeper.identity.public_key,
                signature=signature,
                **args,
            )
        elif (module, name) == ("contracts", "ContractStateUpdated"):
            self.current[data["contract"]] = data["state_hash"]
        elif (module, name) == ("compute", "JobAssigned"):
            for actor in self.workers:
                if (
                    actor.identity.public_key in data["workers"]
                    and actor.identity.public_key not in self.down
                ):
                    self._execute(actor, data["job"], data["state_hash"])

    def _execute(self, actor: Actor, job_id: bytes, prev: bytes | None) -> None:
        state = self.state()
        job = self.node.runtime.compute.job(state, job_id)
        assert job is not None
        contract = self.node.runtime.contracts.record(state, job["contract"])
        assert contract is not None
        spec = self.spec(job["contract"])
        call = spec.open_input(
            job["sealed_input"], sender=job["requester"], reply_pk=job["reply_pk"], nonce=job["nonce"]
        )
        data = copy.deepcopy(self.states.get((job["contract"], prev), {}))
        try:
            output, ok, error = (
                run_notes(data, codec.to_hex(job["requester"]), call["method"], call["args"]),
                True,
                None,
            )
            new = codec.sha256(codec.encode(data) + job_id)
            self.states[(job["contract"], new)] = data
        except ContractError as exc:
            output, ok, error, new = None, False, str(exc), prev or codec.sha256(b"empty")
        body, signature, sealed = spec.result(
            actor.identity,
            job=job_id,
            code_hash=contract["code_hash"],
            input_hash=job["input_hash"],
            reply_pk=job["reply_pk"],
            ok=ok,
            output=output,
            error=error,
            prev_state_hash=prev,
            new_state_hash=new,
        )
        self.send(actor, "compute", "submit_result", body=body, signature=signature, sealed_output=sealed)

    def answer_query(self, actor: Actor, contract: bytes, raw: bytes, min_height: int) -> dict[str, Any]:
        self.served_queries.append(raw)
        spec = self.spec(contract)
        body, caller = spec.open_query(raw)
        height = self.node.store.head().height
        assert height >= min_height, "the harness never lags: min_height must be <= head"
        data = copy.deepcopy(self.states.get((contract, self.current.get(contract)), {}))
        try:
            output, ok, error = (
                run_notes(data, codec.to_hex(caller), body["method"], body["args"]),
                True,
                None,
            )
        except ContractError as exc:
            output, ok, error = None, False, str(exc)
        return spec.query_reply(actor.identity, raw, height=height, ok=ok, output=output, error=error)


def _serve(network: Network, actor: Actor) -> None:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def _reply(self, status: int, doc: dict[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/info":
                evidence = network.evidence[actor.identity.public_key]
                self._reply(
                    200,
                    {
                        "id": codec.to_hex(actor.identity.public_key),
                        "evidence": codec.to_hex(evidence),
                        "endorsements": {},
                    },
                )
            else:
                self._reply(404, {"error": {"code": "not_found", "message": self.path}})

        def do_POST(self) -> None:
            doc = json.loads(self.rfile.read(int(self.headers["content-length"])))
            try:
                reply = network.answer_query(
                    actor,
                    codec.from_hex(doc["contract"]),
                    codec.from_hex(doc["query"]),
                    doc.get("height") or 0,
                )
            except Exception as exc:
                self._reply(400, {"error": {"code": "bad_query", "message": str(exc)}})
                return
            self._reply(200, reply)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    actor.server = server
    actor.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()


def _actor(role: str) -> Actor:
    return Actor(crypto.SigningKey.generate(), crypto.SigningKey.generate(), crypto.EcdhKey.generate(), role)


@contextmanager
def network(root: Path, *, workers: int = 3) -> Iterator[Network]:
    now = datetime.now(UTC)
    authority = SimAuthority.create(now=now)
    users = {name: crypto.SigningKey.generate() for name in ("alice", "bob", "charlie")}
    gatekeeper = _actor("gatekeeper")
    actors = [_actor("worker") for _ in range(workers)]
    sequencer = crypto.SigningKey.generate()
    funded = [*users.values(), gatekeeper.operator, *(a.operator for a in actors)]
    genesis = GenesisConfig(
        chain_id=CHAIN_ID,
        time_ms=int(time.time() * 1000),
        sequencer=sequencer.public_key,
        runtime_version=RUNTIME_VERSION,
        params={"block_ms": 50, "idle_ms": 300, "tx_fee": 1, "job_deadline_blocks": 20},
        modules={
            "balances": {"allocations": {k.public_key: ENDOWMENT for k in funded}},
            "council": {"members": sorted(k.public_key for k in users.values()), "threshold": 2},
            "registry": {
                "policy": Policy(allow_sim=True, measurements={"sim": [MEASUREMENT.hex()]}).to_dict(),
                "sim_root": authority.cert_pem,
                "attestation_ttl_ms": 3_600_000,
            },
            "keys": {"gatekeeper_operators": [gatekeeper.operator.public_key]},
        },
    )
    root.mkdir(parents=True, exist_ok=True)
    files = ChainFiles(root, genesis, root / "genesis.cbor", sequencer, root / "sequencer.key", users, {})
    with serve_node(files, root / "node") as live:
        net = Network(live.node, live.url, users, gatekeeper, actors, MasterKey(os.urandom(32)))
        for actor in [gatekeeper, *actors]:
            _serve(net, actor)
            platform = SimPlatform(authority.issue_hardware(now=now), measurement=MEASUREMENT)
            fields = binding_fields(
                chain_id=CHAIN_ID,
                genesis_hash=genesis.hash,
                identity_pk=actor.identity.public_key,
                ecdh_pk=actor.ecdh.public_key,
                tee_type="sim",
            )
            evidence = platform.evidence(report_data_binding(**fields), at=datetime.now(UTC))
            net.evidence[actor.identity.public_key] = evidence
            binding = {
                "operator": actor.operator.public_key,
                "endpoint": actor.endpoint,
                "chain_id": CHAIN_ID,
            }
            net.wait_included(
                net.send(
                    actor,
                    "registry",
                    "register_worker",
                    evidence=evidence,
                    tee_type="sim",
                    endorsements={},
                    identity_pk=actor.identity.public_key,
                    ecdh_pk=actor.ecdh.public_key,
                    endpoint=actor.endpoint,
                    binding_sig=actor.identity.sign("umbra/worker-binding/v1", binding),
                    role=actor.role,
                )
            )
        master_body = {"chain_id": CHAIN_ID, "epoch": 0, "master_pk": net.master.public_key}
        gk = gatekeeper.identity
        net.wait_included(
            net.send(
                gatekeeper,
                "keys",
                "init_master",
                gatekeeper=gk.public_key,
                master_pk=net.master.public_key,
                signature=gk.sign("umbra/master-key/v1", master_body),
            )
        )
        for actor in actors:
            info = codec.encode({"chain_id": CHAIN_ID, "worker": actor.identity.public_key, "epoch": 0})
            ciphertext = crypto.hpke_seal(
                actor.ecdh.public_key, codec.encode({"epoch": 0, "master_secret": net.master.secret}), info
            )
            body = {
                "chain_id": CHAIN_ID,
                "epoch": 0,
                "worker": actor.identity.public_key,
                "ciphertext_hash": codec.sha256(ciphertext),
            }
            net.wait_included(
                net.send(
                    gatekeeper,
                    "keys",
                    "handover",
                    gatekeeper=gk.public_key,
                    worker=actor.identity.public_key,
                    epoch=0,
                    ciphertext=ciphertext,
                    signature=gk.sign("umbra/handover/v1", body),
                )
            )
        events: queue.Queue[BlockNotice | None] = queue.Queue()
        live.node.add_listener(events.put)

        def pump() -> None:  # off the block thread: the cores' work submits txs
            while (notice := events.get()) is not None:
                net.on_block(notice)

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        try:
            yield net
        finally:
            events.put(None)
            thread.join(timeout=5)
            for actor in [gatekeeper, *actors]:
                if actor.server is not None:
                    actor.server.shutdown()
