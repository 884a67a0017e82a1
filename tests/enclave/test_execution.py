"""Confidential jobs and queries through the core, checked the way a client checks them.

The contract runs in the real sandbox; the inputs are sealed and the outputs opened with the
client's own protocol code (umbra.client._protocol), so both sides of every format meet here."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.chain.helpers import ALICE, BOB, events_named
from tests.enclave.helpers import GK_OPERATOR, OPERATORS, Member, SimNet
from umbra import codec, crypto
from umbra.chain.types import Call, Tx
from umbra.client import _protocol as proto

pytestmark = pytest.mark.timeout(180)

COUNTER = b"""
from umbra.contract import Contract, command, query


class Counter(Contract):
    def init(self, ctx, start=0):
        self.state["n"] = start
        self.state["log"] = []

    @command
    def add(self, ctx, by=1):
        self.state["n"] += by
        self.state["log"].append(ctx.caller)
        return self.state["n"]

    @command
    def boom(self, ctx):
        self.state["n"] = -1
        raise ValueError("no such luck")

    @command
    def secret_len(self, ctx):
        return len(ctx.secret("api-key"))

    @query
    def get(self, ctx):
        return {"n": self.state["n"], "asked_by": ctx.caller}
"""


class Client:
    """What `umbra call` does, against the in-memory chain."""

    def __init__(self, net: SimNet, worker: Member, contract: bytes) -> None:
        self.net, self.worker, self.contract = net, worker, contract

    def key(self) -> proto.ContractKey:
        record = self.net.chain.runtime.keys.contract_key(self.net.chain.state(), self.contract)
        assert record is not None
        return proto.ContractKey.from_json(codec.jsonable(record))

    def call(
        self, signer: crypto.SigningKey, method: str, *, bare: bool = False, **args: Any
    ) -> proto.Outcome:
        """`bare`: send only the job id, as a host does when the core holds the rest."""
        reply_key = crypto.EcdhKey.generate()
        nonce = self.net.chain.nonce(signer)
        sealed = proto.seal_input(
            self.key(),
            sender=signer.public_key,
            reply_pk=reply_key.public_key,
            nonce=nonce,
            method=method,
            args=args,
        )
        # (`nonce` is both the tx's and the call's: build the tx by hand.)
        call = Call(
            "compute",
            "request",
            {
                "contract": self.contract,
                "sealed_input": sealed,
                "reply_pk": reply_key.public_key,
                "max_fee": 100,
                "nonce": nonce,
            },
        )
        stx = Tx(self.net.genesis.chain_id, signer.public_key, nonce, call, 1).sign(signer)
        outcome = self.net.block(stx)
        assert outcome.receipts[0].ok, outcome.receipts[0].message
        (assigned,) = events_named(outcome, "compute", "JobAssigned")
        job = assigned["job"]
        assert self.worker.id in assigned["workers"]
        code = self.net.chain.runtime.contracts.code.get(self.net.chain.state(), self.contract)
        state = self.net.chain.runtime.contracts.current_state(self.net.chain.state(), self.contract)
        secrets = {
            name.decode(): record["sealed"]
            for name, record in (
                (k[32:], v) for k, v in self.net.chain.runtime.contracts.secrets.items(self.net.chain.state())
            )
        }
        inputs = {"code": code, "sealed_input": sealed, "state_blob": state["blob"], "secrets": secrets}
        result = self.worker.call("execute", job=job, **({} if bare else {**inputs, "blobs": {}}))
        submitted = self.net.submit(
            self.worker,
            "compute",
            "submit_result",
            body=result["body"],
            signature=result["signature"],
            sealed_output=result["sealed_output"],
            state_blob=result["state_blob"],
        )
        (settled,) = events_named(submitted, "compute", "JobSettled")
        contract = self.net.chain.runtime.contracts.record(self.net.chain.state(), self.contract)
        assert contract is not None
        workers = {
            self.worker.id: proto.WorkerRecord.from_json(
                codec.jsonable(self.net.chain.runtime.registry.worker(self.net.chain.state(), self.worker.id))
            )
        }
        return proto.verify_job(
            proto.JobOutcome(
                job=job,
                contract=self.contract,
                input_hash=codec.sha256(sealed),
                workers=settled["workers"],
                output_commitment=settled["output_commitment"],
                failed=settled["failed"],
                reason=settled["reason"],
                settled_height=self.net.chain.head.height,
                settled_time_ms=self.net.chain.head.time_ms,
            ),
            chain_id=self.net.genesis.chain_id,
            code_hash=contract["code_hash"],
            sealed_input=sealed,
            reply_key=reply_key,
            results={
                self.worker.id: proto.SubmittedResult(
                    result["body"], result["signature"], result["sealed_output"]
                )
            },
            records=workers,
        )

    def query(
        self, signer: crypto.SigningKey, method: str, *, bare: bool = False, **args: Any
    ) -> proto.VerifiedQuery:
        """`bare`: send only the sealed query, as a host does when the core holds the rest."""
        request = proto.build_query(
            self.key(),
            caller=signer,
            method=method,
            args=args,
            expiry_ms=self.net.chain.head.time_ms + 60_000,
            min_height=self.net.chain.head.height,
            reply_key=crypto.EcdhKey.generate(),
        )
        state = self.net.chain.runtime.contracts.current_state(self.net.chain.state(), self.contract)
        code = self.net.chain.runtime.contracts.code.get(self.net.chain.state(), self.contract)
        material = {} if bare else {"state_blob": state["blob"], "code": code}
        answer = self.worker.call("query", contract=self.contract, query=request.raw, **material)
        reply = {
            "worker": codec.to_hex(answer["worker"]),
            "reply": codec.jsonable(answer["reply"]),
            "signature": codec.to_hex(answer["signature"]),
            "sealed_reply": codec.to_hex(answer["sealed_reply"]),
        }
        record = proto.WorkerRecord.from_json(
            codec.jsonable(self.net.chain.runtime.registry.worker(self.net.chain.state(), self.worker.id))
        )
        return proto.verify_query_reply(
            request, reply, worker=record, worker_id=self.worker.id, now_ms=int(time.time() * 1000)
        )


@pytest.fixture
def deployed(tmp_path: Path) -> Client:
    net = SimNet.start(tmp_path)
    gatekeeper = net.core("gk", GK_OPERATOR, role="gatekeeper")
    net.register(gatekeeper)
    net.run_gatekeeper(gatekeeper)
    worker = net.core("w0", OPERATORS[0])
    net.register(worker)
    net.run_gatekeeper(gatekeeper)
    outcome = net.block(net.chain.tx(ALICE, "contracts", "deploy", code=COUNTER, manifest={}))
    (event,) = events_named(outcome, "contracts", "ContractDeployed")
    net.run_gatekeeper(gatekeeper)  # publishes the contract key
    return Client(net, worker, event["contract"])


def test_init_command_and_query_round_trip(deployed: Client) -> None:
    init = deployed.call(ALICE, "__init__", start=5)
    assert init.ok and init.output is None
    added = deployed.call(BOB, "add", by=2)
    assert added.ok and added.output == 7
    answer = deployed.query(BOB, "get")
    assert answer.outcome.ok and answer.outcome.output == {"n": 7, "asked_by": codec.to_hex(BOB.public_key)}
    state = deployed.net.chain.runtime.contracts.current_state(deployed.net.chain.state(), deployed.contract)
    assert state["version"] == 2 and answer.state_hash == state["state_hash"]
    assert b"asked_by" not in state["blob"] and BOB.public_key not in state["blob"]  # encrypted at rest


def test_a_raising_command_fails_and_leaves_state_unchanged(deployed: Client) -> None:
    deployed.call(ALICE, "__init__", start=1)
    before = deployed.net.chain.runtime.contracts.current_state(deployed.net.chain.state(), deployed.contract)
    failed = deployed.call(ALICE, "boom")
    assert not failed.ok and "no such luck" in (failed.error or "")
    after = deployed.net.chain.runtime.contracts.current_state(deployed.net.chain.state(), deployed.contract)
    assert after == before
    assert deployed.query(ALICE, "get").outcome.output["n"] == 1


def test_the_first_job_must_be_the_owners_init(deployed: Client) -> None:
    not_init = deployed.call(ALICE, "add", by=1)
    assert not not_init.ok and "__init__" in (not_init.error or "")
    by_stranger = deployed.call(BOB, "__init__", start=1)
    assert not by_stranger.ok and "owner" in (by_stranger.error or "")
    assert deployed.call(ALICE, "__init__", start=3).ok
    again = deployed.call(ALICE, "__init__", start=9)
    assert not again.ok and "already initialized" in (again.error or "")


def test_owner_secrets_reach_the_contract_and_only_the_core_opens_them(deployed: Client) -> None:
    deployed.call(ALICE, "__init__")
    sealed = proto.seal_secret(deployed.key(), name="api-key", plaintext=b"s3cr3t-value")
    deployed.net.block(
        deployed.net.chain.tx(
            ALICE, "contracts", "upload_secret", contract=deployed.contract, name="api-key", sealed=sealed
        )
    )
    assert deployed.call(ALICE, "secret_len").output == len(b"s3cr3t-value")


def test_a_bare_query_runs_on_what_the_core_holds_and_asks_for_the_rest(deployed: Client) -> None:
    from umbra.enclave.transport import CoreError

    with pytest.raises(CoreError) as caught:  # no sandbox for this code yet: the host must send it
        deployed.query(BOB, "get", bare=True)
    assert caught.value.code == "needs_input"
    deployed.call(ALICE, "__init__", start=5)
    assert deployed.query(BOB, "get", bare=True).outcome.output["n"] == 5
    deployed.call(BOB, "add", by=2)  # the core sealed this state itself: it needs no blob for it
    answer = deployed.query(BOB, "get", bare=True)
    state = deployed.net.chain.runtime.contracts.current_state(deployed.net.chain.state(), deployed.contract)
    assert answer.outcome.output["n"] == 7 and answer.state_hash == state["state_hash"]
    with pytest.raises(CoreError) as caught:  # what the host does send is still checked
        deployed.worker.call("query", contract=deployed.contract, query=b"x", code=b"print(1)")
    assert caught.value.code == "bad_code"


def test_a_bare_execute_runs_on_what_the_core_holds_and_asks_for_the_rest(deployed: Client) -> None:
    from umbra.enclave.transport import CoreError

    deployed.call(ALICE, "__init__", start=5)  # with everything: the core starts the code's sandbox
    # The input from the verified request tx, the state the core sealed itself, the warm code.
    added = deployed.call(BOB, "add", bare=True, by=2)
    assert added.ok and added.output == 7
    assert deployed.call(BOB, "add", bare=True, by=1).output == 8
    state = deployed.net.chain.runtime.contracts.current_state(deployed.net.chain.state(), deployed.contract)
    assert state["version"] == 3
    # Another contract: no sandbox for its code yet, so the host must send what the core lacks.
    outcome = deployed.net.block(
        deployed.net.chain.tx(ALICE, "contracts", "deploy", code=COUNTER, manifest={})
    )
    (event,) = events_named(outcome, "contracts", "ContractDeployed")
    (gatekeeper,) = (m for m in deployed.net.members if m.name == "gk")
    deployed.net.run_gatekeeper(gatekeeper)  # publishes the new contract's key
    with pytest.raises(CoreError) as caught:
        Client(deployed.net, deployed.worker, event["contract"]).call(ALICE, "__init__", bare=True)
    assert caught.value.code == "needs_input"


def test_the_core_refuses_inputs_code_and_state_that_do_not_match_the_chain(deployed: Client) -> None:
    from umbra.enclave.transport import CoreError

    worker = deployed.worker
    with pytest.raises(CoreError) as caught:
        worker.call("execute", job=bytes(32), code=COUNTER, sealed_input=b"x", state_blob=None)
    assert caught.value.code == "unknown_job"
    with pytest.raises(CoreError) as caught:
        worker.call("query", contract=deployed.contract, query=b"x", state_blob=b"y", code=b"print(1)")
    assert caught.value.code == "bad_code"
