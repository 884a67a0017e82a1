"""The pure half of the confidential path: sealing, opening and verification, with no IO.

Everything here follows docs/protocol.md ("compute", "keys") and, for the sealed formats, the
enclave core as implemented (see the note at "sealing"). The sync and async clients share it
unchanged; tests drive it directly. Functions take what the chain says (parsed into the small
records below) and either return a verified value or raise `VerificationError`: a caller never
gets content out of something that failed a check.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from umbra import codec, crypto
from umbra.client._errors import UmbraError, VerificationError

__all__ = [
    "ContractKey",
    "ContractRecord",
    "JobOutcome",
    "Outcome",
    "QueryRequest",
    "SubmittedResult",
    "VerifiedQuery",
    "WorkerRecord",
    "build_query",
    "check_worker",
    "contract_id",
    "job_id",
    "open_output",
    "output_commitment",
    "seal_blob",
    "seal_input",
    "seal_secret",
    "verify_contract_key",
    "verify_job",
    "verify_query_reply",
]

RESULT_DOMAIN = "umbra/result/v1"
QUERY_DOMAIN = "umbra/query/v1"
QUERY_REPLY_DOMAIN = "umbra/query-reply/v1"
CONTRACT_KEY_DOMAIN = "umbra/contract-key/v1"
INIT_METHOD = "__init__"


# ---- ids ------------------------------------------------------------------------------------------
def contract_id(owner: bytes, deploy_tx_hash: bytes, code_hash: bytes) -> bytes:
    """The id `contracts.deploy` gives a contract, computed before the chain says it."""
    return codec.sha256(codec.encode({"owner": owner, "tx": deploy_tx_hash, "code_hash": code_hash}))


def job_id(request_tx_hash: bytes) -> bytes:
    return codec.sha256(b"umbra/job/" + request_tx_hash)


# ---- chain records (parsed from the node's JSON at the edge) --------------------------------------
def _hex(value: Any, what: str, length: int | None = None) -> bytes:
    try:
        return codec.from_hex(value, length=length, what=what)
    except codec.CodecError as exc:
        raise UmbraError("bad_response", f"the node sent a malformed {what}: {exc}") from None


def _field(doc: Mapping[str, Any], name: str, what: str) -> Any:
    if not isinstance(doc, Mapping) or name not in doc:
        raise UmbraError("bad_response", f"the node's {what} record has no {name!r}")
    return doc[name]


@dataclass(frozen=True)
class WorkerRecord:
    """A registry entry (`registry/worker`): who a worker is and whether it is attested."""

    id: bytes
    operator: bytes
    ecdh_pk: bytes
    tee_type: str
    platform: str
    measurement: str
    endpoint: str
    role: str
    status: str
    attested_at_ms: int
    expires_at_ms: int
    evidence_hash: bytes

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> WorkerRecord:
        what = "worker"
        return cls(
            id=_hex(_field(doc, "id", what), "worker id", 32),
            operator=_hex(_field(doc, "operator", what), "operator", 32),
            ecdh_pk=_hex(_field(doc, "ecdh_pk", what), "worker ECDH key", 32),
            tee_type=str(_field(doc, "tee_type", what)),
            platform=str(_field(doc, "platform", what)),
            measurement=str(_field(doc, "measurement", what)),
            endpoint=str(_field(doc, "endpoint", what)),
            role=str(_field(doc, "role", what)),
            status=str(_field(doc, "status", what)),
            attested_at_ms=int(_field(doc, "attested_at_ms", what)),
            expires_at_ms=int(_field(doc, "expires_at_ms", what)),
            evidence_hash=_hex(_field(doc, "evidence_hash", what), "evidence hash", 32),
        )

    def serves(self, now_ms: int) -> bool:
        """Can take queries now: an attested, unexpired, active worker (not a gatekeeper)."""
        return self.role == "worker" and self.status == "active" and self.expires_at_ms > now_ms


@dataclass(frozen=True)
class ContractRecord:
    id: bytes
    owner: bytes
    code_hash: bytes

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ContractRecord:
        return cls(
            id=_hex(_field(doc, "id", "contract"), "contract id", 32),
            owner=_hex(_field(doc, "owner", "contract"), "owner", 32),
            code_hash=_hex(_field(doc, "code_hash", "contract"), "code hash", 32),
        )


@dataclass(frozen=True)
class ContractKey:
    """A contract's published key for one epoch (`keys/contract_key`), as a gatekeeper signed it."""

    chain_id: str
    contract: bytes
    epoch: int
    ecdh_pk: bytes
    sign_pk: bytes
    evm_address: bytes
    gatekeeper: bytes
    signature: bytes

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ContractKey:
        what = "contract key"
        return cls(
            chain_id=str(_field(doc, "chain_id", what)),
            contract=_hex(_field(doc, "contract", what), "contract id", 32),
            epoch=int(_field(doc, "epoch", what)),
            ecdh_pk=_hex(_field(doc, "ecdh_pk", what), "contract ECDH key", 32),
            sign_pk=_hex(_field(doc, "sign_pk", what), "contract signing key", 32),
            evm_address=_hex(_field(doc, "evm_address", what), "EVM address", 20),
            gatekeeper=_hex(_field(doc, "gatekeeper", what), "gatekeeper id", 32),
            signature=_hex(_field(doc, "signature", what), "signature", 64),
        )

    def body(self) -> dict[str, Any]:
        """What the gatekeeper signed (`umbra/contract-key/v1`)."""
        return {
            "chain_id": self.chain_id,
            "contract": self.contract,
            "epoch": self.epoch,
            "ecdh_pk": self.ecdh_pk,
            "sign_pk": self.sign_pk,
            "evm_address": self.evm_address,
        }


def check_worker(
    record: WorkerRecord | None, worker: bytes, *, at_ms: int, role: str = "worker"
) -> WorkerRecord:
    """The worker was registered with `role` and its attestation held at `at_ms` (not revoked since)."""
    name = codec.to_hex(worker)
    if record is None or record.id != worker:
        raise VerificationError("unregistered_worker", f"{name} is not a registered {role}")
    if record.role != role:
        raise VerificationError(
            "unregistered_worker", f"{name} is registered as a {record.role}, not a {role}"
        )
    if record.status == "revoked":
        raise VerificationError("worker_not_attested", f"{name} has been revoked by the council")
    if record.expires_at_ms <= at_ms:
        raise VerificationError("worker_not_attested", f"{name}'s attestation had expired at that time")
    return record


def verify_contract_key(
    key: ContractKey,
    *,
    chain_id: str,
    contract: bytes,
    epoch: int,
    gatekeeper: WorkerRecord | None,
    gatekeepers: list[bytes],
    now_ms: int,
) -> ContractKey:
    """Accept a contract key only if a registered, attested gatekeeper holding the epoch signed it."""
    if (key.chain_id, key.contract, key.epoch) != (chain_id, contract, epoch):
        raise VerificationError(
            "bad_contract_key", "the published key names another chain, contract or epoch than asked"
        )
    check_worker(gatekeeper, key.gatekeeper, at_ms=now_ms, role="gatekeeper")
    if key.gatekeeper not in gatekeepers:
        raise VerificationError(
            "bad_contract_key", f"{codec.to_hex(key.gatekeeper)} holds no master key on this chain"
        )
    if not crypto.verify(CONTRACT_KEY_DOMAIN, key.body(), key.signature, key.gatekeeper):
        raise VerificationError("bad_signature", "the contract key's gatekeeper signature does not verify")
    return key


# ---- sealing ----------------------------------------------------------------------------------------
# Formats as the enclave core implements them (src/umbra/enclave/execution.py), which differ from
# docs/protocol.md "Exact sealed formats": sealed data is the bare HPKE ciphertext (no {epoch, ct}
# wrapper; the core tries each epoch it holds) and the HPKE info carries no epoch.
SECRET_PURPOSE = "umbra/secret/v1"
BLOB_PURPOSE = "umbra/blob/v1"


def _encode(value: Any, what: str) -> bytes:
    try:
        return codec.encode(value)
    except codec.CodecError as exc:
        raise UmbraError("bad_args", f"{what} cannot be encoded (use CBOR/JSON values): {exc}") from None


def seal_input(
    key: ContractKey, *, sender: bytes, reply_pk: bytes, nonce: int, method: str, args: Mapping[str, Any]
) -> bytes:
    """`cbor{method, args}` sealed to the contract key with the request's context in the HPKE info:
    copied into another sender's, reply key's or nonce's request it does not open."""
    plaintext = _encode({"method": method, "args": dict(args)}, "the call's arguments")
    info = codec.encode(
        {
            "chain_id": key.chain_id,
            "contract": key.contract,
            "sender": sender,
            "reply_pk": reply_pk,
            "nonce": nonce,
        }
    )
    return crypto.hpke_seal(key.ecdh_pk, plaintext, info)


def seal_secret(key: ContractKey, *, name: str, plaintext: bytes) -> bytes:
    """An owner secret for `contracts.upload_secret`; the name is bound so secrets cannot be swapped."""
    info = codec.encode(
        {"chain_id": key.chain_id, "contract": key.contract, "purpose": SECRET_PURPOSE, "name": name}
    )
    return crypto.hpke_seal(key.ecdh_pk, bytes(plaintext), info)


def seal_blob(key: ContractKey, *, plaintext: bytes) -> bytes:
    """A large owner artifact for the blob store; its SHA-256 (of these sealed bytes) names it."""
    info = codec.encode({"chain_id": key.chain_id, "contract": key.contract, "purpose": BLOB_PURPOSE})
    return crypto.hpke_seal(key.ecdh_pk, bytes(plaintext), info)


# ---- outputs ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What a contract produced: an output, or the error text of the exception it raised."""

    ok: bool
    output: Any
    error: str | None

    def committed(self) -> bytes:
        """What `output_commitment` is the HMAC of: the output, or `{error}` for a failure."""
        return codec.encode(self.output if self.ok else {"error": self.error})


def output_commitment(k_job: bytes, outcome: Outcome) -> bytes:
    return crypto.commitment(k_job, outcome.committed())


def _decode_map(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = codec.decode(data)
    except codec.CodecError as exc:
        raise VerificationError("bad_reply", f"{what} is not CBOR: {exc}") from None
    if not isinstance(value, dict):
        raise VerificationError("bad_reply", f"{what} is not a map")
    return value


def _outcome(value: Mapping[str, Any], what: str, extra: frozenset[str] = frozenset()) -> Outcome:
    """`{ok: true, output}` or `{ok: false, error}` (plus `extra` fields).

    The core sends only the field that applies; docs/protocol.md lists both, the other one null.
    Either form means the same, so both are accepted, and nothing else is.
    """
    ok = value.get("ok")
    fields = set(value) - extra
    if ok is True and {"ok", "output"} <= fields <= {"ok", "output", "error"} and value.get("error") is None:
        return Outcome(True, value["output"], None)
    if (
        ok is False
        and {"ok", "error"} <= fields <= {"ok", "output", "error"}
        and isinstance(value["error"], str)
        and value.get("output") is None
    ):
        return Outcome(False, None, value["error"])
    raise VerificationError("bad_reply", f"{what} is neither {{ok: true, output}} nor {{ok: false, error}}")


def open_output(
    reply_key: crypto.EcdhKey, sealed_output: bytes, *, chain_id: str, job: bytes
) -> tuple[Outcome, bytes]:
    """Open a job's sealed output; returns the outcome and k_job."""
    info = codec.encode({"chain_id": chain_id, "job": job})
    try:
        plaintext = reply_key.open(sealed_output, info)
    except crypto.DecryptError:
        raise VerificationError(
            "cannot_open", "the sealed output does not open with this request's reply key"
        ) from None
    value = _decode_map(plaintext, "the sealed output")
    k_job = value.get("k_job")
    if not isinstance(k_job, bytes) or len(k_job) != 32:
        raise VerificationError("bad_reply", "the sealed output carries no well-formed k_job")
    return _outcome(value, "the sealed output", frozenset({"k_job"})), k_job


@dataclass(frozen=True)
class SubmittedResult:
    """One worker's `compute.submit_result`, exactly as it was signed and included."""

    body: dict[str, Any]
    signature: bytes
    sealed_output: bytes


@dataclass(frozen=True)
class JobOutcome:
    """What the chain settled a job on (`compute/job` outcome plus the block it settled in)."""

    job: bytes
    contract: bytes
    input_hash: bytes
    workers: list[bytes]
    output_commitment: bytes
    failed: bool
    reason: str | None
    settled_height: int
    settled_time_ms: int


def verify_job(
    outcome: JobOutcome,
    *,
    chain_id: str,
    code_hash: bytes,
    sealed_input: bytes,
    reply_key: crypto.EcdhKey,
    results: Mapping[bytes, SubmittedResult],
    records: Mapping[bytes, WorkerRecord | None],
) -> Outcome:
    """Check every agreeing worker's result as docs/protocol.md step 9 asks, then open the output.

    For each worker the chain counted: it was a registered, attested worker when the job settled;
    its signature holds over the result body; the body is for this job, contract, code and input;
    it committed to what the chain settled on; and its own sealed output opens with our reply key
    to an outcome whose HMAC under k_job is that commitment. So a replica that agreed on chain but
    sealed something else to us is caught, not averaged away.
    """
    if not outcome.workers:
        raise VerificationError("bad_reply", "the chain settled the job on no worker")
    if outcome.input_hash != codec.sha256(sealed_input):
        raise VerificationError("bad_reply", "the job on chain is not for the input this client sealed")
    opened: Outcome | None = None
    for worker in outcome.workers:
        name = codec.to_hex(worker)
        check_worker(records.get(worker), worker, at_ms=outcome.settled_time_ms)
        result = results.get(worker)
        if result is None:
            raise VerificationError("bad_reply", f"no submitted result of {name} was found on chain")
        body = result.body
        if not crypto.verify(RESULT_DOMAIN, body, result.signature, worker):
            raise VerificationError("bad_signature", f"the result signature of {name} does not verify")
        if (
            body.get("worker") != worker
            or body.get("job") != outcome.job
            or body.get("contract") != outcome.contract
        ):
            raise VerificationError(
                "bad_reply", f"the result of {name} names another worker, job or contract"
            )
        if body.get("code_hash") != code_hash:
            raise VerificationError("code_hash_mismatch", f"{name} ran other code than the contract's")
        if body.get("input_hash") != outcome.input_hash:
            raise VerificationError("bad_reply", f"the result of {name} is for another input")
        if body.get("output_commitment") != outcome.output_commitment:
            raise VerificationError(
                "commitment_mismatch", f"{name} committed to another output than the chain settled on"
            )
        if body.get("sealed_output_hash") != codec.sha256(result.sealed_output):
            raise VerificationError("bad_reply", f"the sealed output of {name} is not the one it signed")
        mine, k_job = open_output(reply_key, result.sealed_output, chain_id=chain_id, job=outcome.job)
        if not hmac.compare_digest(output_commitment(k_job, mine), outcome.output_commitment):
            raise VerificationError(
                "commitment_mismatch", f"the output {name} sealed to us is not the one it committed to"
            )
        if body.get("failed") is not (not mine.ok):
            raise VerificationError("bad_reply", f"{name}'s failed flag contradicts its sealed outcome")
        opened = mine
    assert opened is not None
    return opened


# ---- queries ------------------------------------------------------------------------------------------
QUERY_PURPOSE = "umbra/query/v1"
_REPLY_FIELDS = ("contract", "height", "state_hash", "sealed_reply_hash", "query_hash")


@dataclass(frozen=True)
class QueryRequest:
    """A sealed, signed query and what is needed to check and open its reply."""

    raw: bytes
    reply_key: crypto.EcdhKey
    contract: bytes
    chain_id: str
    min_height: int

    @property
    def query_hash(self) -> bytes:
        return codec.sha256(self.raw)


def build_query(
    key: ContractKey,
    *,
    caller: crypto.SigningKey,
    method: str,
    args: Mapping[str, Any],
    expiry_ms: int,
    min_height: int,
    reply_key: crypto.EcdhKey,
) -> QueryRequest:
    """The caller signs the query inside the seal: that signature, not the host, names ctx.caller.

    `expiry_ms` is in block time (the core compares it with its latest verified block). The
    height to wait for travels beside the seal (the worker host does the waiting).
    """
    body = {
        "contract": key.contract,
        "method": method,
        "args": dict(args),
        "reply_pk": reply_key.public_key,
        "expiry_ms": expiry_ms,
    }
    _encode(body, "the query's arguments")
    signature = caller.sign(QUERY_DOMAIN, body)
    info = codec.encode({"chain_id": key.chain_id, "contract": key.contract, "purpose": QUERY_PURPOSE})
    inner = codec.encode({"body": body, "caller": caller.public_key, "signature": signature})
    raw = crypto.hpke_seal(key.ecdh_pk, inner, info)
    return QueryRequest(raw, reply_key, key.contract, key.chain_id, min_height)


@dataclass(frozen=True)
class VerifiedQuery:
    outcome: Outcome
    worker: bytes
    height: int
    state_hash: bytes


def verify_query_reply(
    request: QueryRequest,
    reply: Mapping[str, Any],
    *,
    worker: WorkerRecord | None,
    worker_id: bytes,
    now_ms: int,
) -> VerifiedQuery:
    """Check the worker's signed reply to exactly this query, then open it with the reply key.

    `reply` is the worker's JSON answer `{worker, height, reply: {signed body}, signature,
    sealed_reply}`; the signed body's fields all have fixed types, so it is rebuilt exactly.
    """
    name = codec.to_hex(worker_id)
    check_worker(worker, worker_id, at_ms=now_ms)
    try:
        doc = reply["reply"]
        body = {
            "contract": codec.from_hex(doc["contract"], length=32),
            "height": doc["height"],
            "state_hash": codec.from_hex(doc["state_hash"], length=32),
            "sealed_reply_hash": codec.from_hex(doc["sealed_reply_hash"], length=32),
            "query_hash": codec.from_hex(doc["query_hash"], length=32),
        }
        signature = codec.from_hex(reply["signature"], length=64)
        sealed_reply = codec.from_hex(reply["sealed_reply"])
        claimed = codec.from_hex(reply["worker"], length=32)
    except (KeyError, TypeError, codec.CodecError):
        raise VerificationError("bad_reply", f"the query reply of {name} is malformed") from None
    if set(doc) != set(_REPLY_FIELDS):
        raise VerificationError(
            "bad_reply", f"the signed reply does not have the fields {list(_REPLY_FIELDS)}"
        )
    if claimed != worker_id:
        raise VerificationError("bad_reply", f"the reply names another worker than {name}")
    if not crypto.verify(QUERY_REPLY_DOMAIN, body, signature, worker_id):
        raise VerificationError("bad_signature", f"the query reply signature of {name} does not verify")
    if body["contract"] != request.contract or body["query_hash"] != request.query_hash:
        raise VerificationError("bad_reply", "the reply answers another query or contract")
    if body["sealed_reply_hash"] != codec.sha256(sealed_reply):
        raise VerificationError("bad_reply", "the sealed reply is not the one the worker signed")
    height = body["height"]
    if not isinstance(height, int) or isinstance(height, bool) or height < request.min_height:
        raise VerificationError(
            "bad_reply",
            f"the reply read state at height {height}, older than the {request.min_height} asked for",
        )
    info = codec.encode(
        {"chain_id": request.chain_id, "contract": request.contract, "query_hash": request.query_hash}
    )
    try:
        plaintext = request.reply_key.open(sealed_reply, info)
    except crypto.DecryptError:
        raise VerificationError(
            "cannot_open", "the sealed reply does not open with this query's reply key"
        ) from None
    outcome = _outcome(_decode_map(plaintext, "the sealed reply"), "the sealed reply")
    return VerifiedQuery(outcome, worker_id, height, body["state_hash"])
