"""A simulated-TEE network in memory: the real runtime (registry, keys, ...) producing real signed
blocks, and enclave cores driven through the in-memory transport exactly as a host drives them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.chain.helpers import ALICE, BOB, CHARLIE, SEQUENCER, TestChain, fixed_key
from umbra import RUNTIME_VERSION, codec, crypto
from umbra.chain.runtime import BlockOutcome
from umbra.chain.types import Block, GenesisConfig, SignedTx
from umbra.enclave.core import Core
from umbra.enclave.platform import SimTee
from umbra.enclave.transport import InMemoryTransport
from umbra.tee._sim import SimAuthority, SimHardware, code_tree_measurement
from umbra.tee.policy import Policy

GK_OPERATOR = fixed_key("gatekeeper-operator")
OPERATORS = [fixed_key(f"operator-{i}") for i in range(4)]
FUNDS = 10**12
OTHER_MEASUREMENT = bytes.fromhex("ab" * 32)


def raw_events(outcome: BlockOutcome) -> bytes:
    """The event list exactly as the node's store serves it (GET /sync/blocks)."""
    return codec.encode([event.to_cbor() for event in outcome.events])


@dataclass
class Member:
    """One core (worker or gatekeeper) and its operator account."""

    name: str
    core: Core
    transport: InMemoryTransport
    operator: crypto.SigningKey
    init: dict[str, Any]
    fed: int = -1

    @property
    def id(self) -> bytes:
        value: bytes = self.init["identity_pk"]
        return value

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        return self.transport.call({"op": op, **args})


@dataclass
class SimNet:
    """The chain plus the dev root that issues simulated CPUs."""

    chain: TestChain
    authority: SimAuthority
    root: Path
    members: list[Member] = field(default_factory=list)

    @classmethod
    def start(cls, root: Path, *, extra_measurements: tuple[bytes, ...] = ()) -> SimNet:
        authority = SimAuthority.create(now=datetime.now(UTC))
        measurements = [code_tree_measurement().hex(), *(m.hex() for m in extra_measurements)]
        accounts = [ALICE, BOB, CHARLIE, GK_OPERATOR, *OPERATORS]
        genesis = GenesisConfig(
            chain_id="umbra-enclave-test",
            time_ms=int(time.time() * 1000),
            sequencer=SEQUENCER.public_key,
            runtime_version=RUNTIME_VERSION,
            params={"tx_fee": 1},
            modules={
                "balances": {"allocations": {key.public_key: FUNDS for key in accounts}},
                "council": {"members": sorted(k.public_key for k in (ALICE, BOB, CHARLIE)), "threshold": 2},
                "registry": {
                    "policy": Policy(measurements={"sim": measurements}, allow_sim=True).to_dict(),
                    "sim_root": authority.cert_pem,
                    "attestation_ttl_ms": 3600 * 1000,
                },
                "keys": {"gatekeeper_operators": [GK_OPERATOR.public_key]},
            },
        )
        return cls(TestChain.start(genesis), authority, root)

    @property
    def genesis(self) -> GenesisConfig:
        return self.chain.runtime.genesis

    def raw(self, height: int) -> list[bytes]:
        return [self.chain.blocks[height].encode(), raw_events(self.chain.outcomes[height])]

    def platform(self, name: str, **options: Any) -> SimTee:
        path = self.root / name / "machine.sim"
        path.parent.mkdir(parents=True, exist_ok=True)
        hardware = SimHardware.load_or_issue(path, self.authority, now=datetime.now(UTC))
        return SimTee(hardware, **options)

    def core(self, name: str, operator: crypto.SigningKey, *, role: str = "worker", **options: Any) -> Member:
        core = Core(self.platform(name, **options), self.root / name / "core")
        transport = InMemoryTransport(core.handle)
        init = transport.call({"op": "init", "genesis": self.genesis.encode(), "role": role})
        member = Member(name, core, transport, operator, init)
        self.members.append(member)
        return member

    # ---- chain -----------------------------------------------------------------------------------
    def block(self, *txs: SignedTx) -> BlockOutcome:
        """Produce one block holding `txs`, then feed every core up to it."""
        outcome = self.chain.produce(*txs)
        self.sync()
        return outcome

    def sync(self) -> None:
        for member in self.members:
            self.feed(member)

    def feed(self, member: Member) -> dict[str, Any]:
        head = self.chain.head.height
        blocks = [self.raw(h) for h in range(member.fed + 1, head + 1)]
        reply = member.call("feed", blocks=blocks)
        member.fed = reply["height"]
        return reply

    def tx(self, member: Member, module: str, method: str, **args: Any) -> SignedTx:
        return self.chain.tx(member.operator, module, method, **args)

    def submit(self, member: Member, module: str, method: str, **args: Any) -> BlockOutcome:
        """One block with the member's operator tx; the tx must succeed."""
        outcome = self.block(self.tx(member, module, method, **args))
        receipt = outcome.receipts[0]
        assert receipt.ok, f"{module}.{method} failed: {receipt.error}: {receipt.message}"
        return outcome

    def register(self, member: Member, endpoint: str = "http://127.0.0.1:1") -> BlockOutcome:
        args = member.call("register", operator=member.operator.public_key, endpoint=endpoint)
        call_args = {
            k: args[k]
            for k in (
                "evidence",
                "tee_type",
                "endorsements",
                "identity_pk",
                "ecdh_pk",
                "endpoint",
                "binding_sig",
                "role",
            )
        }
        return self.block(self.tx(member, "registry", "register_worker", **call_args))

    def run_gatekeeper(self, gatekeeper: Member) -> None:
        """Carry out every duty the gatekeeper's core reports, block by block, until none is left."""
        for _ in range(20):
            due = gatekeeper.call("duties")["gatekeeper"]
            assert due is not None
            txs: list[SignedTx] = []
            nonce = self.chain.nonce(gatekeeper.operator)
            if due["init_master"] or due["publish_master"] is not None:
                epoch = 0 if due["init_master"] else due["publish_master"]
                signed = gatekeeper.call("generate_master", epoch=epoch)
                args = {k: signed[k] for k in ("gatekeeper", "master_pk", "signature")}
                if epoch == 0:
                    txs.append(self.chain.tx(gatekeeper.operator, "keys", "init_master", nonce=nonce, **args))
                else:
                    txs.append(
                        self.chain.tx(
                            gatekeeper.operator, "keys", "publish_master", nonce=nonce, epoch=epoch, **args
                        )
                    )
            else:
                for worker, epoch in due["handovers"]:
                    sealed = gatekeeper.call("handover", worker=worker, epoch=epoch)
                    args = {
                        k: sealed[k] for k in ("gatekeeper", "worker", "epoch", "ciphertext", "signature")
                    }
                    txs.append(
                        self.chain.tx(gatekeeper.operator, "keys", "handover", nonce=nonce + len(txs), **args)
                    )
                for contract, epoch in due["contract_keys"]:
                    published = gatekeeper.call("contract_key", contract=contract, epoch=epoch)
                    names = (
                        "gatekeeper",
                        "contract",
                        "epoch",
                        "ecdh_pk",
                        "sign_pk",
                        "evm_address",
                        "signature",
                    )
                    args = {k: published[k] for k in names}
                    txs.append(
                        self.chain.tx(
                            gatekeeper.operator,
                            "keys",
                            "publish_contract_key",
                            nonce=nonce + len(txs),
                            **args,
                        )
                    )
            if not txs:
                return
            outcome = self.block(*txs)
            failed = [(r.error, r.message) for r in outcome.receipts if not r.ok]
            assert not failed, failed
        raise AssertionError("the gatekeeper's duties never ran out")


def tampered(block: Block, **header_changes: Any) -> Block:
    from dataclasses import replace

    return replace(block, header=replace(block.header, **header_changes))
