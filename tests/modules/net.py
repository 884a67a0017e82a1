"""An in-process network for the confidential-path module tests.

`Net` is the chain test harness (`tests.chain.helpers.TestChain`: real blocks built with
`build_block` over a `MemoryBackend`) with a genesis that has a registry policy, a sim dev root,
gatekeeper operators and funded accounts, plus the moves of every role: operators register sim
workers (real sim evidence, checked by the runtime at block time), the gatekeeper publishes and
hands over keys, owners deploy, users request, workers submit signed results, the council rules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.chain.helpers import GENESIS_TIME_MS, SEQUENCER, TestChain, fixed_key
from umbra import RUNTIME_VERSION, codec, crypto
from umbra.chain.module import CallContext, DispatchError, Origin
from umbra.chain.modules.balances import TREASURY
from umbra.chain.modules.registry import binding_fields
from umbra.chain.runtime import BlockOutcome, Receipt
from umbra.chain.types import Call, GenesisConfig, SignedTx, Tx
from umbra.tee._sim import SimAuthority, SimHardware, SimPlatform
from umbra.tee.policy import Policy, report_data_binding

CHAIN_ID = "umbra-modules-test"
ENDOWMENT = 10**9
GENESIS_AT = datetime.fromtimestamp(GENESIS_TIME_MS / 1000, UTC)
AUTHORITY = SimAuthority.create(now=GENESIS_AT - timedelta(days=30))
MEASUREMENT = codec.sha256(b"umbra-modules-test/code-tree")
OTHER_MEASUREMENT = codec.sha256(b"umbra-modules-test/other-code-tree")

COUNCIL = fixed_key("council")
GK_OP = fixed_key("gatekeeper-operator")  # in keys.gatekeeper_operators
OP1, OP2, OP3, OP4 = (fixed_key(f"operator-{i}") for i in range(1, 5))
USER = fixed_key("user")
USER2 = fixed_key("user-2")
FUNDED = (COUNCIL, GK_OP, OP1, OP2, OP3, OP4, USER, USER2)

CODE = b"from umbra.contract import Contract, command\n\nclass C(Contract):\n    pass\n"


def default_policy(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"measurements": {"sim": [MEASUREMENT.hex()]}, "allow_sim": True, **overrides}
    return Policy(**fields).to_dict()


def make_genesis(
    *,
    params: dict[str, int] | None = None,
    policy: dict[str, Any] | None = None,
    registry: dict[str, Any] | None = None,
    allocations: dict[bytes, int] | None = None,
) -> GenesisConfig:
    if allocations is None:
        allocations = {k.public_key: ENDOWMENT for k in FUNDED}
    return GenesisConfig(
        chain_id=CHAIN_ID,
        time_ms=GENESIS_TIME_MS,
        sequencer=SEQUENCER.public_key,
        runtime_version=RUNTIME_VERSION,
        params={"tx_fee": 1, **(params or {})},
        modules={
            "balances": {"allocations": allocations},
            "council": {"members": [COUNCIL.public_key], "threshold": 1},
            "registry": {
                "policy": default_policy() if policy is None else policy,
                "sim_root": AUTHORITY.cert_pem,
                **(registry or {}),
            },
            "keys": {"gatekeeper_operators": [GK_OP.public_key]},
        },
    )


@dataclass
class SimWorker:
    """A simulated TEE worker: its enclave keys, its CPU, and the account that operates it."""

    name: str
    operator: crypto.SigningKey
    identity: crypto.SigningKey
    ecdh: crypto.EcdhKey
    platform: SimPlatform
    role: str = "worker"
    endpoint: str = ""

    @property
    def id(self) -> bytes:
        return self.identity.public_key


_HARDWARE: dict[str, SimHardware] = {}


def hardware(name: str) -> SimHardware:
    """One simulated CPU per name, issued once per test session (issuing costs a signature)."""
    if name not in _HARDWARE:
        _HARDWARE[name] = AUTHORITY.issue_hardware(now=GENESIS_AT - timedelta(days=1))
    return _HARDWARE[name]


def make_worker(
    name: str,
    operator: crypto.SigningKey,
    *,
    role: str = "worker",
    presented_type: str = "sim",
    measurement: bytes = MEASUREMENT,
    debug: bool = False,
    cpu: SimHardware | None = None,
) -> SimWorker:
    platform = SimPlatform(
        cpu or hardware(name), presented_type=presented_type, measurement=measurement, debug=debug
    )
    return SimWorker(
        name=name,
        operator=operator,
        identity=fixed_key(f"worker-identity/{name}"),
        ecdh=crypto.EcdhKey(codec.sha256(b"worker-ecdh/" + name.encode())),
        platform=platform,
        role=role,
        endpoint=f"http://{name}.test:8000",
    )


@dataclass
class Net(TestChain):
    """The chain plus every role's moves. Each helper builds one block and checks it went through."""

    __test__ = False

    contracts_deployed: list[bytes] = field(default_factory=list)

    @classmethod
    def create(cls, **genesis: Any) -> Net:
        chain = TestChain.start(make_genesis(**genesis))
        return cls(chain.runtime, chain.backend, chain.root, chain.head, chain.blocks, chain.outcomes)

    # ---- time ---------------------------------------------------------------------------------
    @property
    def height(self) -> int:
        return self.head.height

    def next_time(self) -> datetime:
        """The time of the next block (evidence made "now" is dated this)."""
        return datetime.fromtimestamp((self.head.time_ms + 100) / 1000, UTC)

    def advance(self, blocks: int = 1) -> list[BlockOutcome]:
        return [self.produce() for _ in range(blocks)]

    def advance_to(self, height: int) -> list[BlockOutcome]:
        return self.advance(max(0, height - self.height))

    # ---- reads ----------------------------------------------------------------------------------
    def worker(self, worker: SimWorker | bytes) -> dict[str, Any]:
        wid = worker.id if isinstance(worker, SimWorker) else worker
        record = self.runtime.registry.worker(self.state(), wid)
        assert record is not None, "no such worker"
        return record

    def job(self, job: bytes) -> dict[str, Any]:
        record = self.runtime.compute.job(self.state(), job)
        assert record is not None, "no such job"
        return record

    def pool(self, worker: SimWorker | bytes) -> dict[str, Any] | None:
        wid = worker.id if isinstance(worker, SimWorker) else worker
        return self.runtime.staking.pool(self.state(), wid)

    def eligible(self, worker: SimWorker) -> bool:
        """What the scheduler asks of a worker (attested, keyed, staked)."""
        state, rt = self.state(), self.runtime
        return (
            rt.registry.is_attested(state, worker.id, self.head.time_ms + 100)
            and rt.keys.has_current_key(state, worker.id)
            and rt.staking.is_staked(state, worker.id)
        )

    # ---- txs ------------------------------------------------------------------------------------
    def ok(self, signer: crypto.SigningKey, module: str, method: str, /, **args: Any) -> BlockOutcome:
        return self.apply_ok(self.tx(signer, module, method, **args))

    def failed(
        self, signer: crypto.SigningKey, module: str, method: str, /, *, code: str, **args: Any
    ) -> Receipt:
        """The call is included and fails in dispatch with `code` (the fee is paid)."""
        outcome = self.apply(self.tx(signer, module, method, **args))
        (receipt,) = outcome.receipts
        assert not receipt.ok, f"{module}.{method} succeeded; expected {code}"
        assert receipt.error == code, f"expected {code}, got {receipt.error}: {receipt.message}"
        return receipt

    def council(self, module: str, method: str, /, **args: Any) -> BlockOutcome:
        """A council motion (one member, threshold 1: proposing executes it). It must succeed."""
        outcome = self.ok(COUNCIL, "council", "propose", module=module, method=method, args=args)
        (executed,) = events_named(outcome, "council", "Executed")
        assert executed["ok"], f"council {module}.{method} failed: {executed['error']}: {executed['message']}"
        return outcome

    # ---- registry -------------------------------------------------------------------------------
    def register_args(
        self,
        worker: SimWorker,
        *,
        at: datetime | None = None,
        report_data: bytes | None = None,
        binding_sig: bytes | None = None,
        binding_operator: bytes | None = None,
        tee_type: str = "sim",
    ) -> dict[str, Any]:
        if report_data is None:
            report_data = report_data_binding(
                **binding_fields(
                    chain_id=self.runtime.chain_id,
                    genesis_hash=self.runtime.genesis.hash,
                    identity_pk=worker.id,
                    ecdh_pk=worker.ecdh.public_key,
                    tee_type=tee_type,
                )
            )
        evidence = worker.platform.evidence(report_data, at=self.next_time() if at is None else at)
        if binding_sig is None:
            binding = {
                "operator": worker.operator.public_key if binding_operator is None else binding_operator,
                "endpoint": worker.endpoint,
                "chain_id": self.runtime.chain_id,
            }
            binding_sig = worker.identity.sign("umbra/worker-binding/v1", binding)
        return {
            "evidence": evidence,
            "tee_type": tee_type,
            "endorsements": {},
            "identity_pk": worker.id,
            "ecdh_pk": worker.ecdh.public_key,
            "endpoint": worker.endpoint,
            "binding_sig": binding_sig,
            "role": worker.role,
        }

    def register(self, worker: SimWorker, **kw: Any) -> BlockOutcome:
        return self.ok(worker.operator, "registry", "register_worker", **self.register_args(worker, **kw))

    def heartbeat(self, worker: SimWorker, height: int | None = None) -> BlockOutcome:
        height = self.height if height is None else height
        body = {"chain_id": self.runtime.chain_id, "worker": worker.id, "height": height}
        signature = worker.identity.sign("umbra/heartbeat/v1", body)
        return self.ok(
            worker.operator, "registry", "heartbeat", worker=worker.id, height=height, signature=signature
        )

    # ---- keys -----------------------------------------------------------------------------------
    @staticmethod
    def master_pk(epoch: int) -> bytes:
        return crypto.EcdhKey(codec.sha256(b"master/" + epoch.to_bytes(8, "big"))).public_key

    def init_master_args(self, gatekeeper: SimWorker) -> dict[str, Any]:
        master_pk = self.master_pk(0)
        body = {"chain_id": self.runtime.chain_id, "epoch": 0, "master_pk": master_pk}
        signature = gatekeeper.identity.sign("umbra/master-key/v1", body)
        return {"gatekeeper": gatekeeper.id, "master_pk": master_pk, "signature": signature}

    def init_master(self, gatekeeper: SimWorker) -> BlockOutcome:
        return self.ok(gatekeeper.operator, "keys", "init_master", **self.init_master_args(gatekeeper))

    def publish_master_args(self, gatekeeper: SimWorker, epoch: int) -> dict[str, Any]:
        master_pk = self.master_pk(epoch)
        body = {"chain_id": self.runtime.chain_id, "epoch": epoch, "master_pk": master_pk}
        signature = gatekeeper.identity.sign("umbra/master-key/v1", body)
        return {"gatekeeper": gatekeeper.id, "epoch": epoch, "master_pk": master_pk, "signature": signature}

    def handover_args(
        self, gatekeeper: SimWorker, worker: SimWorker, epoch: int | None = None
    ) -> dict[str, Any]:
        epoch = self.runtime.keys.current_epoch(self.state()) if epoch is None else epoch
        info = codec.encode({"chain_id": self.runtime.chain_id, "worker": worker.id, "epoch": epoch})
        secret = codec.sha256(b"master-secret/" + epoch.to_bytes(8, "big"))
        ciphertext = crypto.hpke_seal(
            worker.ecdh.public_key, codec.encode({"epoch": epoch, "master_secret": secret}), info
        )
        body = {
            "chain_id": self.runtime.chain_id,
            "epoch": epoch,
            "worker": worker.id,
            "ciphertext_hash": codec.sha256(ciphertext),
        }
        signature = gatekeeper.identity.sign("umbra/handover/v1", body)
        return {
            "gatekeeper": gatekeeper.id,
            "worker": worker.id,
            "epoch": epoch,
            "ciphertext": ciphertext,
            "signature": signature,
        }

    def handover(self, gatekeeper: SimWorker, worker: SimWorker, epoch: int | None = None) -> BlockOutcome:
        return self.ok(
            gatekeeper.operator, "keys", "handover", **self.handover_args(gatekeeper, worker, epoch)
        )

    def contract_key_args(
        self, gatekeeper: SimWorker, contract: bytes, epoch: int | None = None
    ) -> dict[str, Any]:
        epoch = self.runtime.keys.current_epoch(self.state()) if epoch is None else epoch
        seed = codec.sha256(b"contract-key/" + contract + epoch.to_bytes(8, "big"))
        body = {
            "chain_id": self.runtime.chain_id,
            "contract": contract,
            "epoch": epoch,
            "ecdh_pk": crypto.EcdhKey(seed).public_key,
            "sign_pk": crypto.SigningKey(seed).public_key,
            "evm_address": seed[:20],
        }
        signature = gatekeeper.identity.sign("umbra/contract-key/v1", body)
        return {
            **{k: v for k, v in body.items() if k != "chain_id"},
            "gatekeeper": gatekeeper.id,
            "signature": signature,
        }

    # ---- whole set-ups --------------------------------------------------------------------------
    def bootstrap(self, *workers: SimWorker) -> SimWorker:
        """A registered gatekeeper holding epoch 0, and `workers` registered and keyed."""
        gatekeeper = make_worker("gatekeeper", GK_OP, role="gatekeeper")
        self.register(gatekeeper)
        self.init_master(gatekeeper)
        for worker in workers:
            self.register(worker)
            self.handover(gatekeeper, worker)
        return gatekeeper

    # ---- staking --------------------------------------------------------------------------------
    def stake(self, worker: SimWorker, amount: int, *, commission_ppm: int = 0) -> None:
        """The operator opens the worker's pool (if needed) and delegates `amount` to it."""
        if self.pool(worker) is None:
            self.ok(
                worker.operator, "staking", "create_pool", worker=worker.id, commission_ppm=commission_ppm
            )
        self.ok(worker.operator, "staking", "delegate", worker=worker.id, amount=amount)

    def staked_value(self, who: crypto.SigningKey | bytes) -> int:
        account = who.public_key if isinstance(who, crypto.SigningKey) else who
        return self.runtime.staking.staked_value(self.state(), account)

    def score(self, worker: SimWorker) -> int:
        return self.runtime.staking.score(self.state(), worker.id)

    # ---- contracts and compute ------------------------------------------------------------------
    def deploy(self, owner: crypto.SigningKey = USER, code: bytes = CODE) -> bytes:
        outcome = self.ok(owner, "contracts", "deploy", code=code, manifest={})
        (deployed,) = events_named(outcome, "contracts", "ContractDeployed")
        contract: bytes = deployed["contract"]
        self.contracts_deployed.append(contract)
        return contract

    def request_tx(
        self,
        user: crypto.SigningKey,
        contract: bytes,
        *,
        max_fee: int | None = None,
        replicas: int = 1,
        value: int = 0,
        distinct: str = "none",
        deadline_blocks: int | None = None,
        payload: bytes = b"sealed input",
        nonce: int | None = None,
    ) -> SignedTx:
        nonce = self.nonce(user) if nonce is None else nonce
        args: dict[str, Any] = {
            "contract": contract,
            "sealed_input": payload + nonce.to_bytes(8, "big"),
            "reply_pk": crypto.EcdhKey(codec.sha256(b"reply/" + user.public_key)).public_key,
            "max_fee": self.param("job_fee") * replicas if max_fee is None else max_fee,
            "nonce": nonce,
            "replicas": replicas,
            "value": value,
            "distinct": distinct,
        }
        if deadline_blocks is not None:
            args["deadline_blocks"] = deadline_blocks
        tx = Tx(self.runtime.chain_id, user.public_key, self.nonce(user), Call("compute", "request", args), 1)
        return tx.sign(user)

    def request(self, user: crypto.SigningKey, contract: bytes, **kw: Any) -> bytes:
        outcome = self.apply_ok(self.request_tx(user, contract, **kw))
        (requested,) = events_named(outcome, "compute", "JobRequested")
        job: bytes = requested["job"]
        return job

    def result(
        self,
        worker: SimWorker,
        job: bytes,
        *,
        output: bytes = b"output",
        new_state: bytes = b"state-1",
        failed: bool = False,
        transfers: list[list[Any]] | None = None,
        events: list[dict[str, Any]] | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """submit_result args: a result body as an honest enclave signs it (`overrides` tamper)."""
        record = self.job(job)
        contract = self.runtime.contracts.record(self.state(), record["contract"])
        assert contract is not None
        sealed_output = b"sealed:" + output + b":" + worker.id
        body = {
            "job": job,
            "contract": record["contract"],
            "worker": worker.id,
            "code_hash": contract["code_hash"],
            "input_hash": record["input_hash"],
            "sealed_output_hash": codec.sha256(sealed_output),
            "output_commitment": codec.sha256(b"commit/" + job + output),
            "prev_state_hash": record.get("prev_state_hash"),
            "new_state_hash": codec.sha256(new_state),
            "failed": failed,
            "transfers": transfers or [],
            "events": events or [],
        }
        body.update({k: v for k, v in overrides.items() if k in body})
        signature = overrides.get("signature") or worker.identity.sign("umbra/result/v1", body)
        return {
            "body": body,
            "signature": signature,
            "sealed_output": overrides.get("sealed_output", sealed_output),
            "state_blob": overrides.get("state_blob", new_state),
        }

    def submit(self, worker: SimWorker, job: bytes, **kw: Any) -> BlockOutcome:
        return self.ok(worker.operator, "compute", "submit_result", **self.result(worker, job, **kw))

    def assigned(self, outcome: BlockOutcome, job: bytes) -> list[bytes]:
        for event in events_named(outcome, "compute", "JobAssigned"):
            if event["job"] == job:
                workers: list[bytes] = event["workers"]
                return workers
        raise AssertionError("the job was not assigned in this block")


def events_named(outcome: BlockOutcome, module: str, name: str) -> list[dict[str, Any]]:
    return [e.data for e in outcome.events if e.module == module and e.name == name]


def all_events(outcomes: list[BlockOutcome], module: str, name: str) -> list[dict[str, Any]]:
    return [data for outcome in outcomes for data in events_named(outcome, module, name)]


# ---- pallet-style assertions ------------------------------------------------------------------


def _nonce_and_fee_keys(net: Net, sender: bytes) -> set[bytes]:
    rt = net.runtime
    return {
        rt.system.nonces.key(sender),
        rt.balances.accounts.key(sender),
        rt.balances.accounts.key(TREASURY),
    }


def assert_noop(
    net: Net,
    signer: crypto.SigningKey,
    module: str,
    method: str,
    /,
    *,
    code: str,
    call_args: dict[str, Any] | None = None,
    **args: Any,
) -> Receipt:
    """A refused call changes nothing but the sender's nonce and fee.

    First the call is dispatched directly, as `apply_tx` does: it must raise the typed error
    `code` with a message and leave no writes, no events and an unchanged state root. Then it goes
    into a real block: it is included, its receipt is failed with `code`, and the block's state
    changes and events equal those of an empty block at the same height, apart from the nonce, the
    fee and the ExtrinsicFailed event. (`call_args` carries arguments named like our own.)
    """
    args = {**(call_args or {}), **args}
    rt = net.runtime
    tx = Tx(rt.chain_id, signer.public_key, net.nonce(signer), Call(module, method, args), 1)
    stx = tx.sign(signer)
    before = net.snapshot()
    block = net.block_context()
    ctx = CallContext(block, Origin.SIGNED, signer.public_key, stx.hash)
    rt.system.bump_nonce(block.state, signer.public_key)  # as apply_tx does before dispatch
    rt.balances.charge_fee(ctx, signer.public_key, tx.fee)
    charged = block.state.changes()
    block.state.checkpoint()
    try:
        rt.dispatch(ctx, tx.call)
    except DispatchError as exc:
        error = exc
    else:
        raise AssertionError(f"{module}.{method} succeeded; expected it to fail with {code}")
    finally:
        block.state.rollback()
    assert error.code == code, f"expected {code}, got {error.code}: {error.message}"
    assert error.message, "a refusal must say what was wrong"
    assert block.state.changes() == charged and block.events == [], "a failed call left writes behind"
    assert set(charged) == _nonce_and_fee_keys(net, signer.public_key)
    assert net.snapshot() == before

    _, empty = net.build([])
    built, outcome = net.build([stx])
    assert outcome.included == [stx], "a dispatch failure is still included"
    (receipt,) = outcome.receipts
    assert (receipt.ok, receipt.error) == (False, code), receipt
    skip = _nonce_and_fee_keys(net, signer.public_key)
    assert {k: v for k, v in outcome.changes.items() if k not in skip} == {
        k: v for k, v in empty.changes.items() if k not in skip
    }, "a failed call left writes behind"
    assert [e for e in outcome.events if e.tx_index is None] == [
        e for e in empty.events if e.tx_index is None
    ]
    assert [(e.module, e.name) for e in outcome.events if e.tx_index is not None] == [
        ("system", "ExtrinsicFailed")
    ]
    net.commit(built, outcome)
    return receipt


def assert_council_noop(net: Net, module: str, method: str, /, *, code: str, **args: Any) -> None:
    """A council call that fails: direct dispatch is a no-op, and through a motion the
    proposal's Executed event records the error while nothing else changes."""
    before = net.snapshot()
    block = net.block_context()
    ctx = CallContext(block, Origin.COUNCIL, None, codec.sha256(b"noop"))
    block.state.checkpoint()
    try:
        net.runtime.dispatch(ctx, Call(module, method, args))
    except DispatchError as exc:
        assert exc.code == code, f"expected {code}, got {exc.code}: {exc.message}"
    else:
        raise AssertionError(f"{module}.{method} succeeded; expected {code}")
    finally:
        block.state.rollback()
    assert block.state.changes() == {} and block.events == []
    assert net.snapshot() == before
    outcome = net.ok(COUNCIL, "council", "propose", module=module, method=method, args=args)
    (executed,) = events_named(outcome, "council", "Executed")
    assert (executed["ok"], executed["error"]) == (False, code)


@contextlib.contextmanager
def supply_conserved(net: Net) -> Iterator[None]:
    before = net.total_supply()
    yield
    assert net.total_supply() == before == net.total_issuance()
