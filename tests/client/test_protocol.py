"""The client's pure protocol half against a spec-side enclave: sealing, opening, verification."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest

from tests.client.spec_enclave import CHAIN_ID, SpecContract
from umbra import codec, crypto
from umbra.client import VerificationError
from umbra.client import _protocol as proto
from umbra.enclave.keytree import MasterKey

ALICE = crypto.SigningKey(codec.sha256(b"client-test/alice"))
BOB = crypto.SigningKey(codec.sha256(b"client-test/bob"))
GATEKEEPER = crypto.SigningKey(codec.sha256(b"client-test/gatekeeper"))
W1 = crypto.SigningKey(codec.sha256(b"client-test/w1"))
W2 = crypto.SigningKey(codec.sha256(b"client-test/w2"))
CODE_HASH = codec.sha256(b"class C(Contract): ...")
SETTLED_AT = 1_700_000_000_000
MARKER = "plaintext-marker-unit"


@pytest.fixture
def spec() -> SpecContract:
    return SpecContract.derive(MasterKey(os.urandom(32)), os.urandom(32))


def contract_key(spec: SpecContract) -> proto.ContractKey:
    return proto.ContractKey.from_json(spec.key_record(GATEKEEPER))


def record(key: crypto.SigningKey, **changes: Any) -> proto.WorkerRecord:
    base = proto.WorkerRecord(
        id=key.public_key,
        operator=os.urandom(32),
        ecdh_pk=os.urandom(32),
        tee_type="sim",
        platform="sim",
        measurement="00" * 32,
        endpoint="http://127.0.0.1:1",
        role="worker",
        status="active",
        attested_at_ms=SETTLED_AT - 1000,
        expires_at_ms=SETTLED_AT + 3_600_000,
        evidence_hash=os.urandom(32),
    )
    return replace(base, **changes)


# ---- contract keys ------------------------------------------------------------------------------
def verify_key(spec: SpecContract, key: proto.ContractKey, **changes: Any) -> proto.ContractKey:
    kwargs: dict[str, Any] = {
        "chain_id": CHAIN_ID,
        "contract": spec.contract,
        "epoch": 0,
        "gatekeeper": record(GATEKEEPER, role="gatekeeper"),
        "gatekeepers": [GATEKEEPER.public_key],
        "now_ms": SETTLED_AT,
    }
    kwargs.update(changes)
    return proto.verify_contract_key(key, **kwargs)


def test_a_contract_key_signed_by_a_registered_gatekeeper_is_accepted(spec: SpecContract) -> None:
    key = contract_key(spec)
    assert verify_key(spec, key).ecdh_pk == spec.keys.ecdh.public_key


@pytest.mark.parametrize(
    ("why", "changes", "code"),
    [
        ("unregistered gatekeeper", {"gatekeeper": None}, "unregistered_worker"),
        ("a plain worker signed it", {"gatekeeper": record(GATEKEEPER)}, "unregistered_worker"),
        (
            "revoked gatekeeper",
            {"gatekeeper": record(GATEKEEPER, role="gatekeeper", status="revoked")},
            "worker_not_attested",
        ),
        ("holds no master key", {"gatekeepers": []}, "bad_contract_key"),
        ("for another contract", {"contract": os.urandom(32)}, "bad_contract_key"),
        ("for another chain", {"chain_id": "umbra-elsewhere"}, "bad_contract_key"),
    ],
)
def test_a_contract_key_is_refused_unless_everything_holds(
    spec: SpecContract, why: str, changes: dict[str, Any], code: str
) -> None:
    with pytest.raises(VerificationError) as refused:
        verify_key(spec, contract_key(spec), **changes)
    assert refused.value.code == code, why


def test_a_contract_key_with_a_forged_signature_is_refused(spec: SpecContract) -> None:
    forged = replace(contract_key(spec), ecdh_pk=crypto.EcdhKey.generate().public_key)  # a MITM's key
    with pytest.raises(VerificationError) as refused:
        verify_key(spec, forged)
    assert refused.value.code == "bad_signature"


# ---- sealed inputs ------------------------------------------------------------------------------
def test_a_sealed_input_opens_for_its_own_request_only(spec: SpecContract) -> None:
    key = contract_key(spec)
    reply = crypto.EcdhKey.generate().public_key
    sealed = proto.seal_input(
        key, sender=ALICE.public_key, reply_pk=reply, nonce=7, method="add", args={"text": MARKER}
    )
    assert MARKER.encode() not in sealed
    opened = spec.open_input(sealed, sender=ALICE.public_key, reply_pk=reply, nonce=7)
    assert opened == {"method": "add", "args": {"text": MARKER}}
    # Copied into someone else's request (sender), or replayed under another nonce or reply key:
    for context in (
        {"sender": BOB.public_key, "reply_pk": reply, "nonce": 7},
        {"sender": ALICE.public_key, "reply_pk": reply, "nonce": 8},
        {"sender": ALICE.public_key, "reply_pk": crypto.EcdhKey.generate().public_key, "nonce": 7},
    ):
        with pytest.raises(crypto.DecryptError):
            spec.open_input(sealed, **context)


def test_a_caller_field_inside_the_payload_carries_no_authority(spec: SpecContract) -> None:
    """Bob cannot act as Alice by writing her id into his args: the sealed payload is only
    {method, args}; ctx.caller comes from the request tx's signer, which the HPKE info binds."""
    key = contract_key(spec)
    reply = crypto.EcdhKey.generate().public_key
    forged = {"caller": codec.to_hex(ALICE.public_key), "text": "hi"}
    sealed = proto.seal_input(key, sender=BOB.public_key, reply_pk=reply, nonce=0, method="add", args=forged)
    opened = spec.open_input(sealed, sender=BOB.public_key, reply_pk=reply, nonce=0)
    assert set(opened) == {"method", "args"}  # nothing outside args: the core takes the caller from the tx
    with pytest.raises(crypto.DecryptError):  # and it does not open as a request signed by Alice
        spec.open_input(sealed, sender=ALICE.public_key, reply_pk=reply, nonce=0)


def test_a_secret_opens_only_under_its_own_name(spec: SpecContract) -> None:
    sealed = proto.seal_secret(contract_key(spec), name="model", plaintext=b"weights")
    assert spec.open_secret(sealed, name="model") == b"weights"
    with pytest.raises(crypto.DecryptError):
        spec.open_secret(sealed, name="other")


# ---- job results --------------------------------------------------------------------------------
class Job:
    """A settled job with honest results from `workers`, and the knobs to break one."""

    def __init__(
        self, spec: SpecContract, workers: tuple[crypto.SigningKey, ...] = (W1,), **outcome: Any
    ) -> None:
        self.spec = spec
        self.reply = crypto.EcdhKey.generate()
        self.job = os.urandom(32)
        self.sealed_input = proto.seal_input(
            contract_key(spec),
            sender=ALICE.public_key,
            reply_pk=self.reply.public_key,
            nonce=1,
            method="m",
            args={},
        )
        self.outcome = {"ok": True, "output": {"n": 3}, "error": None, **outcome}
        self.workers = workers
        self.results: dict[bytes, proto.SubmittedResult] = {}
        self.records: dict[bytes, proto.WorkerRecord | None] = {w.public_key: record(w) for w in workers}
        for worker in workers:
            self.submit(worker)

    def submit(self, worker: crypto.SigningKey, **overrides: Any) -> None:
        kwargs = {
            "job": self.job,
            "code_hash": CODE_HASH,
            "input_hash": codec.sha256(self.sealed_input),
            "reply_pk": self.reply.public_key,
            **self.outcome,
            **overrides,
        }
        body, signature, sealed = self.spec.result(worker, **kwargs)
        self.results[worker.public_key] = proto.SubmittedResult(body, signature, sealed)

    def verify(self, *, code_hash: bytes = CODE_HASH, reply: crypto.EcdhKey | None = None) -> proto.Outcome:
        first = self.results[self.workers[0].public_key].body
        settled = proto.JobOutcome(
            job=self.job,
            contract=self.spec.contract,
            input_hash=codec.sha256(self.sealed_input),
            workers=[w.public_key for w in self.workers],
            output_commitment=first["output_commitment"],
            failed=bool(first["failed"]),
            reason=None,
            settled_height=10,
            settled_time_ms=SETTLED_AT,
        )
        return proto.verify_job(
            settled,
            chain_id=CHAIN_ID,
            code_hash=code_hash,
            sealed_input=self.sealed_input,
            reply_key=reply or self.reply,
            results=self.results,
            records=self.records,
        )


def test_an_honest_result_verifies_and_opens(spec: SpecContract) -> None:
    assert Job(spec, (W1, W2)).verify() == proto.Outcome(True, {"n": 3}, None)


def test_a_contract_error_verifies_and_opens_to_its_message(spec: SpecContract) -> None:
    outcome = Job(spec, ok=False, output=None, error="ValueError: note limit reached").verify()
    assert outcome == proto.Outcome(False, None, "ValueError: note limit reached")


def refused(job: Job, **kwargs: Any) -> str:
    with pytest.raises(VerificationError) as failure:
        job.verify(**kwargs)
    return failure.value.code


def test_a_bad_signature_is_refused(spec: SpecContract) -> None:
    job = Job(spec)
    result = job.results[W1.public_key]
    job.results[W1.public_key] = replace(result, signature=W2.sign("umbra/result/v1", result.body))
    assert refused(job) == "bad_signature"


def test_an_unregistered_worker_is_refused(spec: SpecContract) -> None:
    job = Job(spec)
    job.records[W1.public_key] = None
    assert refused(job) == "unregistered_worker"


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"status": "revoked"}, "worker_not_attested"),
        ({"expires_at_ms": SETTLED_AT}, "worker_not_attested"),
        ({"role": "gatekeeper"}, "unregistered_worker"),
    ],
)
def test_a_worker_that_was_not_attested_then_is_refused(
    spec: SpecContract, changes: dict[str, Any], code: str
) -> None:
    job = Job(spec)
    job.records[W1.public_key] = record(W1, **changes)
    assert refused(job) == code


def test_a_wrong_code_hash_is_refused(spec: SpecContract) -> None:
    assert refused(Job(spec), code_hash=codec.sha256(b"other code")) == "code_hash_mismatch"


def test_a_replica_that_sealed_another_output_than_it_committed_to_is_caught(spec: SpecContract) -> None:
    job = Job(spec, (W1, W2))
    lie = crypto.hpke_seal(
        job.reply.public_key,
        codec.encode({"ok": True, "output": {"n": 999}, "k_job": spec.keys.k_job(job.job)}),
        codec.encode({"chain_id": CHAIN_ID, "job": job.job}),
    )
    job.submit(W2, sealed_output=lie)  # signs the honest commitment, seals a different output to us
    assert refused(job) == "commitment_mismatch"


def test_a_result_committed_to_another_output_than_settled_is_refused(spec: SpecContract) -> None:
    job = Job(spec, (W1, W2))
    job.submit(W2, output={"n": 4})
    assert refused(job) == "commitment_mismatch"


def test_a_reply_sealed_to_someone_else_does_not_open(spec: SpecContract) -> None:
    assert refused(Job(spec), reply=crypto.EcdhKey.generate()) == "cannot_open"


def test_a_result_for_another_input_is_refused(spec: SpecContract) -> None:
    job = Job(spec)
    job.submit(W1, input_hash=codec.sha256(b"someone else's input"))
    assert refused(job) == "bad_reply"


# ---- queries ------------------------------------------------------------------------------------
def query(spec: SpecContract, min_height: int = 5) -> proto.QueryRequest:
    return proto.build_query(
        contract_key(spec),
        caller=BOB,
        method="mine",
        args={"text": MARKER},
        expiry_ms=SETTLED_AT + 60_000,
        min_height=min_height,
        reply_key=crypto.EcdhKey.generate(),
    )


def test_a_query_is_signed_by_its_caller_inside_the_seal_and_its_reply_verifies(spec: SpecContract) -> None:
    request = query(spec)
    assert MARKER.encode() not in request.raw
    body, caller = spec.open_query(request.raw)
    assert caller == BOB.public_key and body["method"] == "mine" and body["args"] == {"text": MARKER}
    reply = spec.query_reply(W1, request.raw, height=6, ok=True, output=[MARKER], error=None)
    verified = proto.verify_query_reply(
        request, reply, worker=record(W1), worker_id=W1.public_key, now_ms=SETTLED_AT
    )
    assert (verified.outcome.output, verified.height, verified.worker) == ([MARKER], 6, W1.public_key)


@pytest.mark.parametrize("fault", ["signature", "other_query", "stale", "other_reply_key", "unregistered"])
def test_a_bad_query_reply_is_refused(spec: SpecContract, fault: str) -> None:
    request = query(spec)
    raw_query = query(spec).raw if fault == "other_query" else request.raw
    reply_pk = crypto.EcdhKey.generate().public_key if fault == "other_reply_key" else None
    height = 4 if fault == "stale" else 6
    reply = spec.query_reply(W1, raw_query, height=height, ok=True, output=1, error=None, reply_pk=reply_pk)
    if fault == "signature":
        reply["signature"] = codec.to_hex(W2.sign("umbra/query-reply/v1", {"forged": True}))
    worker = None if fault == "unregistered" else record(W1)
    with pytest.raises(VerificationError) as failure:
        proto.verify_query_reply(request, reply, worker=worker, worker_id=W1.public_key, now_ms=SETTLED_AT)
    expected = {
        "signature": "bad_signature",
        "other_query": "bad_reply",
        "stale": "bad_reply",
        "other_reply_key": "cannot_open",
        "unregistered": "unregistered_worker",
    }
    assert failure.value.code == expected[fault]


def test_garbage_replies_are_refused_cleanly(spec: SpecContract) -> None:
    request = query(spec)
    good = spec.query_reply(W1, request.raw, height=6, ok=True, output=1, error=None)
    garbage: list[Any] = [
        {},
        {**good, "reply": {**good["reply"], "height": "6"}},
        {**good, "signature": "0x1234"},
        {**good, "sealed_reply": "0x" + "00" * 40},
        {**good, "reply": {**good["reply"], "extra": 1}},
        {**good, "worker": codec.to_hex(W2.public_key)},
    ]
    for junk in garbage:
        with pytest.raises(VerificationError):
            proto.verify_query_reply(
                request, junk, worker=record(W1), worker_id=W1.public_key, now_ms=SETTLED_AT
            )


def test_ids_follow_the_chain() -> None:
    tx = os.urandom(32)
    assert proto.job_id(tx) == codec.sha256(b"umbra/job/" + tx)
    assert proto.contract_id(ALICE.public_key, tx, CODE_HASH) == codec.sha256(
        codec.encode({"owner": ALICE.public_key, "tx": tx, "code_hash": CODE_HASH})
    )


@pytest.mark.parametrize(
    ("plaintext", "expected"),
    [
        ({"ok": True, "output": 5}, proto.Outcome(True, 5, None)),
        ({"ok": True, "output": 5, "error": None}, proto.Outcome(True, 5, None)),  # the doc's full form
        ({"ok": False, "error": "boom"}, proto.Outcome(False, None, "boom")),
        ({"ok": False, "output": None, "error": "boom"}, proto.Outcome(False, None, "boom")),
        ({"ok": True, "output": 5, "error": "boom"}, None),
        ({"ok": False, "output": 5, "error": "boom"}, None),
        ({"ok": False, "error": 7}, None),
        ({"ok": 1, "output": 5}, None),
        ({"ok": True}, None),
        ({"ok": True, "output": 5, "extra": 1}, None),
    ],
)
def test_sealed_outputs_open_only_in_their_two_forms(
    plaintext: dict[str, Any], expected: proto.Outcome | None
) -> None:
    reply, job = crypto.EcdhKey.generate(), os.urandom(32)
    sealed = crypto.hpke_seal(
        reply.public_key,
        codec.encode({**plaintext, "k_job": os.urandom(32)}),
        codec.encode({"chain_id": CHAIN_ID, "job": job}),
    )
    if expected is None:
        with pytest.raises(VerificationError):
            proto.open_output(reply, sealed, chain_id=CHAIN_ID, job=job)
    else:
        assert proto.open_output(reply, sealed, chain_id=CHAIN_ID, job=job)[0] == expected
