"""A confidential network in this process: the real runtime producing signed blocks over a
MemoryBackend, and a gatekeeper core and a worker core (sim TEE) driven through the in-memory
transport exactly as their hosts drive them over the pipe. For measuring the core itself,
without processes, HTTP or block timing in the way.

    net = InProcessNetwork.start()
    contract = net.deploy(code, init={})
    job, request = net.request(contract, "work", {"n": 1000})   # assigned to the worker
    reply = net.worker.call(request)                              # {"op": "execute", ...}
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from umbra import RUNTIME_VERSION, codec, crypto
from umbra.chain.blocks import build_block, genesis_block
from umbra.chain.runtime import BlockOutcome, Runtime
from umbra.chain.state import MemoryBackend, State, StateRoot
from umbra.chain.types import Block, Call, GenesisConfig, Header, SignedTx, Tx
from umbra.client import _protocol as proto
from umbra.enclave.core import Core
from umbra.enclave.platform import SimTee
from umbra.enclave.transport import InMemoryTransport
from umbra.tee._sim import SimAuthority, code_tree_measurement
from umbra.tee.policy import Policy

__all__ = ["InProcessNetwork", "Member"]

_REGISTER_ARGS = (
    "evidence",
    "tee_type",
    "endorsements",
    "identity_pk",
    "ecdh_pk",
    "endpoint",
    "binding_sig",
    "role",
)


@dataclass
class Member:
    core: Core
    transport: InMemoryTransport
    operator: crypto.SigningKey
    id: bytes
    fed: int = -1

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.transport.call(request)


@dataclass
class InProcessNetwork:
    runtime: Runtime
    backend: MemoryBackend
    root: StateRoot
    head: Header
    sequencer: crypto.SigningKey
    user: crypto.SigningKey
    blocks: list[tuple[Block, BlockOutcome]] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)

    @classmethod
    def start(cls) -> InProcessNetwork:
        now = datetime.now(UTC)
        authority = SimAuthority.create(now=now)
        sequencer, user = crypto.SigningKey.generate(), crypto.SigningKey.generate()
        gk_operator, operator = crypto.SigningKey.generate(), crypto.SigningKey.generate()
        genesis = GenesisConfig(
            chain_id="umbra-bench-inprocess",
            time_ms=int(time.time() * 1000),
            sequencer=sequencer.public_key,
            runtime_version=RUNTIME_VERSION,
            params={"tx_fee": 1},
            modules={
                "balances": {"allocations": {k.public_key: 10**15 for k in (user, gk_operator, operator)}},
                "council": {"members": [user.public_key], "threshold": 1},
                "registry": {
                    "policy": Policy(
                        measurements={"sim": [code_tree_measurement().hex()]}, allow_sim=True
                    ).to_dict(),
                    "sim_root": authority.cert_pem,
                    "attestation_ttl_ms": 3600 * 1000,
                },
                "keys": {"gatekeeper_operators": [gk_operator.public_key]},
            },
        )
        runtime = Runtime(genesis)
        block0, outcome0 = genesis_block(runtime)
        backend = MemoryBackend()
        backend.apply(outcome0.changes)
        net = cls(runtime, backend, outcome0.root, block0.header, sequencer, user, [(block0, outcome0)])
        gatekeeper = net._member(authority, gk_operator, "gatekeeper")
        worker = net._member(authority, operator, "worker")
        net._register(gatekeeper)
        net._register(worker)
        net._gatekeeper_duties()
        return net

    @property
    def gatekeeper(self) -> Member:
        return self.members[0]

    @property
    def worker(self) -> Member:
        return self.members[1]

    def state(self) -> State:
        return State(self.backend)

    # ---- chain -----------------------------------------------------------------------------------
    def tx(
        self, key: crypto.SigningKey, module: str, method: str, *, nonce: int | None = None, **args: Any
    ) -> SignedTx:
        if nonce is None:
            nonce = self.runtime.system.nonce(self.state(), key.public_key)
        return Tx(self.runtime.chain_id, key.public_key, nonce, Call(module, method, args), 1).sign(key)

    def produce(self, *txs: SignedTx) -> BlockOutcome:
        block, outcome = build_block(
            self.runtime,
            self.backend,
            self.root,
            self.head,
            list(txs),
            time_ms=max(self.head.time_ms + 100, int(time.time() * 1000)),
            author=self.sequencer,
        )
        failed = [(r.error, r.message) for r in outcome.receipts if not r.ok]
        if failed or len(outcome.included) != len(txs):
            raise RuntimeError(f"a tx failed: {failed or outcome.dropped}")
        self.backend.apply(outcome.changes)
        self.root, self.head = outcome.root, block.header
        self.blocks.append((block, outcome))
        for member in self.members:
            raw = [
                [b.encode(), codec.encode([e.to_cbor() for e in o.events])]
                for b, o in self.blocks[member.fed + 1 :]
            ]
            member.fed = member.call({"op": "feed", "blocks": raw})["height"]
        return outcome

    # ---- set-up ----------------------------------------------------------------------------------
    def _member(self, authority: SimAuthority, operator: crypto.SigningKey, role: str) -> Member:
        core = Core(SimTee(authority.issue_hardware(now=datetime.now(UTC))), None)
        transport = InMemoryTransport(core.handle)
        init = transport.call({"op": "init", "genesis": self.runtime.genesis.encode(), "role": role})
        member = Member(core, transport, operator, init["identity_pk"])
        self.members.append(member)
        member.fed = member.call(
            {
                "op": "feed",
                "blocks": [
                    [b.encode(), codec.encode([e.to_cbor() for e in o.events])] for b, o in self.blocks
                ],
            }
        )["height"]
        return member

    def _register(self, member: Member) -> None:
        args = member.call(
            {"op": "register", "operator": member.operator.public_key, "endpoint": "http://127.0.0.1:1"}
        )
        self.produce(
            self.tx(member.operator, "registry", "register_worker", **{k: args[k] for k in _REGISTER_ARGS})
        )

    def _gatekeeper_duties(self) -> None:
        gk = self.gatekeeper
        for _ in range(10):
            due = gk.call({"op": "duties"})["gatekeeper"]
            txs: list[SignedTx] = []
            nonce = self.runtime.system.nonce(self.state(), gk.operator.public_key)
            if due["init_master"]:
                signed = gk.call({"op": "generate_master", "epoch": 0})
                args = {k: signed[k] for k in ("gatekeeper", "master_pk", "signature")}
                txs.append(self.tx(gk.operator, "keys", "init_master", nonce=nonce, **args))
            for worker, epoch in due["handovers"]:
                sealed = gk.call({"op": "handover", "worker": worker, "epoch": epoch})
                args = {k: sealed[k] for k in ("gatekeeper", "worker", "epoch", "ciphertext", "signature")}
                txs.append(self.tx(gk.operator, "keys", "handover", nonce=nonce + len(txs), **args))
            for contract, epoch in due["contract_keys"]:
                published = gk.call({"op": "contract_key", "contract": contract, "epoch": epoch})
                names = ("gatekeeper", "contract", "epoch", "ecdh_pk", "sign_pk", "evm_address", "signature")
                args = {k: published[k] for k in names}
                txs.append(
                    self.tx(gk.operator, "keys", "publish_contract_key", nonce=nonce + len(txs), **args)
                )
            if not txs:
                return
            self.produce(*txs)
        raise RuntimeError("the gatekeeper's duties never ran out")

    def close(self) -> None:
        """Stop the cores' sandbox processes (a core owns one warm sandbox per contract)."""
        for member in self.members:
            executor = member.core._executor
            for host in list(executor._hosts.values()) if executor is not None else []:
                host.close()

    # ---- contracts and jobs ----------------------------------------------------------------------
    def contract_key(self, contract: bytes) -> proto.ContractKey:
        record = self.runtime.keys.contract_key(self.state(), contract)
        assert record is not None, "no published key"
        return proto.ContractKey.from_json(codec.jsonable(record))

    def deploy(self, code: bytes, init: dict[str, Any]) -> bytes:
        outcome = self.produce(self.tx(self.user, "contracts", "deploy", code=code, manifest={}))
        contract: bytes = next(e.data["contract"] for e in outcome.events if e.name == "ContractDeployed")
        self._gatekeeper_duties()
        _job, request = self.request(contract, proto.INIT_METHOD, init)
        self.settle(request)
        return contract

    def request(self, contract: bytes, method: str, args: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        """Request a command; returns its job id and the `execute` request the host would send."""
        nonce = self.runtime.system.nonce(self.state(), self.user.public_key)
        reply = crypto.EcdhKey.generate()
        sealed = proto.seal_input(
            self.contract_key(contract),
            sender=self.user.public_key,
            reply_pk=reply.public_key,
            nonce=nonce,
            method=method,
            args=args,
        )
        call = Call(
            "compute",
            "request",
            {
                "contract": contract,
                "sealed_input": sealed,
                "reply_pk": reply.public_key,
                "max_fee": 100,
                "nonce": nonce,
            },
        )
        stx = Tx(self.runtime.chain_id, self.user.public_key, nonce, call, 1).sign(self.user)
        outcome = self.produce(stx)
        job: bytes = next(e.data["job"] for e in outcome.events if e.name == "JobAssigned")
        state = self.runtime.contracts.current_state(self.state(), contract)
        code = self.runtime.contracts.code.get(self.state(), contract)
        request = {
            "op": "execute",
            "job": job,
            "code": code,
            "sealed_input": sealed,
            "state_blob": state["blob"],
            "secrets": {},
            "blobs": {},
        }
        return job, request

    def settle(self, request: dict[str, Any]) -> dict[str, Any]:
        result = self.worker.call(request)
        self.produce(
            self.tx(
                self.worker.operator,
                "compute",
                "submit_result",
                body=result["body"],
                signature=result["signature"],
                sealed_output=result["sealed_output"],
                state_blob=result["state_blob"],
            )
        )
        return result
