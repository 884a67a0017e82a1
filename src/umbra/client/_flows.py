"""Every client operation, written once as a sans-IO flow (see `_transport`).

A flow reads chain state over the node API, builds and signs txs, talks to workers and checks
everything with `_protocol`. `Session` is the per-client memory the flows share: the chain's id,
verified contract keys, workers whose evidence was re-verified, and the height of the caller's
last settled call (read-your-writes).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from umbra import codec, crypto
from umbra.chain.types import Call, SignedTx, Tx
from umbra.client import _protocol as proto
from umbra.client._errors import UmbraError, VerificationError
from umbra.client._evidence import verify_worker_evidence
from umbra.client._transport import Flow, Http, Sleep
from umbra.client._types import CallResult, ContractEvent, Deployment, QueryResult, Settings

__all__ = ["Session"]

_NONCE_ATTEMPTS = 8
_DISTINCT = ("none", "operators", "tee_types")
_MAX_REPLICAS = 7
_JOB_FEE_DEFAULT = 10  # compute's own default when the chain has no job_fee parameter
_QUERY_LIFETIME_MS = 5 * 60 * 1000  # within the core's 15 min limit, with room for clock skew
_FAST_POLL_S = 2.0  # a settling job is polled at a quarter of the poll interval for this long


@dataclass
class Session:
    settings: Settings = field(default_factory=Settings)
    chain_id: str | None = None
    genesis_hash: bytes | None = None
    last_height: int = 0
    keys: dict[tuple[bytes, int], proto.ContractKey] = field(default_factory=dict)
    attested: set[bytes] = field(default_factory=set)  # workers whose evidence we re-verified
    contracts: dict[bytes, proto.ContractRecord] = field(default_factory=dict)  # immutable once deployed


# ---- node reads -------------------------------------------------------------------------------------
def status(s: Session) -> Flow[dict[str, Any]]:
    doc: dict[str, Any] = yield Http("GET", "/status")
    if s.chain_id is None:
        s.chain_id = str(doc["chain_id"])
        s.genesis_hash = codec.from_hex(str(doc["genesis_hash"]), length=32, what="genesis hash")
    return doc


def chain_id(s: Session) -> Flow[str]:
    if s.chain_id is None:
        yield from status(s)
    assert s.chain_id is not None
    return s.chain_id


def state(module: str, item: str, key: bytes | str | None = None) -> Flow[Any]:
    """A storage value as the node's JSON (bytes as 0x-hex), or None when absent."""
    params = None
    if key is not None:
        params = {"key": codec.to_hex(key) if isinstance(key, bytes) else key}
    doc = yield Http("GET", f"/state/{module}/{item}", params=params, missing_ok=True)
    return None if doc is None else doc["value"]


def account(address: bytes) -> Flow[dict[str, Any]]:
    """An account's balances (free, reserved, staked) and nonce."""
    doc: dict[str, Any] = yield Http("GET", f"/accounts/{codec.to_hex(address)}")
    return doc


def nonce_of(address: bytes) -> Flow[int]:
    """The next free nonce: after the account's txs already waiting in the node's mempool."""
    doc = yield from account(address)
    return int(doc.get("pending_nonce", doc["nonce"]))


def param(name: str, default: int) -> Flow[int]:
    value = yield from state("system", "param", name)
    return default if value is None else int(value)


def build_tx(
    s: Session, key: crypto.SigningKey, call: Call, *, nonce: int | None = None, fee: int | None = None
) -> Flow[SignedTx]:
    cid = yield from chain_id(s)
    if nonce is None:
        nonce = yield from nonce_of(key.public_key)
    if fee is None:
        fee = yield from param("tx_fee", 1)
    return Tx(cid, key.public_key, nonce, call, fee).sign(key)


def fetch(step: Http) -> Flow[Any]:
    """One exchange as a flow (for callers that need nothing more)."""
    return (yield step)


def submit(stx: SignedTx, *, wait: bool = True, timeout: float = 60.0) -> Flow[dict[str, Any]]:
    """Post a tx; with `wait`, return its receipt once included (ok or failed in dispatch)."""
    if not wait:
        reply: dict[str, Any] = yield Http("POST", "/tx", json={"tx": codec.to_hex(stx.encode())})
        return reply
    # The node holds a waiting request up to `timeout`: the HTTP read must outlast that.
    receipt: dict[str, Any] = yield Http(
        "POST",
        "/tx",
        params={"wait": "true", "timeout": str(timeout)},
        json={"tx": codec.to_hex(stx.encode())},
        timeout=timeout + 10,
    )
    if receipt.get("status") != "included":
        raise UmbraError(
            "timeout",
            f"tx {receipt.get('tx_hash')} was not included within {timeout:.0f} s; resubmitting is safe",
        )
    receipt["tx"] = codec.to_hex(stx.encode())
    return receipt


def _raise_failed(receipt: Mapping[str, Any]) -> None:
    if not receipt.get("ok"):
        raise UmbraError(
            str(receipt.get("error") or "tx_failed"), str(receipt.get("message") or "the tx failed")
        )


def transact(s: Session, key: crypto.SigningKey, call: Call) -> Flow[tuple[dict[str, Any], SignedTx]]:
    """Build, sign, submit and wait for one tx; raise if it failed in dispatch.

    A nonce taken by a concurrent tx of the same account is retried with a fresh one.
    """
    for attempt in range(_NONCE_ATTEMPTS):
        stx = yield from build_tx(s, key, call)
        try:
            receipt = yield from submit(stx, timeout=s.settings.tx_timeout)
        except UmbraError as exc:
            if exc.code in ("bad_nonce", "duplicate") and attempt + 1 < _NONCE_ATTEMPTS:
                yield Sleep(0.1 * (attempt + 1))
                continue
            raise
        _raise_failed(receipt)
        return receipt, stx
    raise AssertionError("unreachable")


def worker(worker_id: bytes) -> Flow[proto.WorkerRecord | None]:
    doc = yield from state("registry", "worker", worker_id)
    return None if doc is None else proto.WorkerRecord.from_json(doc)


def workers() -> Flow[list[proto.WorkerRecord]]:
    ids = (yield from state("registry", "all")) or []
    out = []
    for text in ids:
        record = yield from worker(codec.from_hex(text, length=32, what="worker id"))
        if record is not None:
            out.append(record)
    return out


def _contract_doc(contract_id: bytes) -> Flow[dict[str, Any]]:
    doc: dict[str, Any] | None = yield from state("contracts", "contract", contract_id)
    if doc is None:
        raise UmbraError("unknown_contract", f"no contract {codec.to_hex(contract_id)} on this chain")
    return doc


def contract(contract_id: bytes) -> Flow[proto.ContractRecord]:
    doc = yield from _contract_doc(contract_id)
    return proto.ContractRecord.from_json(doc)


def contract_record(s: Session, contract_id: bytes) -> Flow[proto.ContractRecord]:
    """`contract`, kept per session: a deployed contract's id, owner and code hash never change."""
    cached = s.contracts.get(contract_id)
    if cached is None:
        cached = s.contracts[contract_id] = yield from contract(contract_id)
    return cached


def current_epoch() -> Flow[int]:
    epoch = yield from state("keys", "epoch")
    if epoch is None or int(epoch) < 0:
        raise UmbraError(
            "no_master_key", "no gatekeeper has published a master key yet; wait for the network"
        )
    return int(epoch)


def _epoch_key(contract_id: bytes, epoch: int) -> bytes:
    return contract_id + epoch.to_bytes(8, "big")


def contract_key(s: Session, contract_id: bytes, *, wait: float = 0.0) -> Flow[proto.ContractKey]:
    """The contract's current key, accepted only once its gatekeeper signature and registration check."""
    epoch = yield from current_epoch()
    cached = s.keys.get((contract_id, epoch))
    if cached is not None:
        return cached
    deadline = time.monotonic() + wait
    while True:
        doc = yield from state("keys", "contract_key", _epoch_key(contract_id, epoch))
        if doc is not None:
            break
        if time.monotonic() >= deadline:
            raise UmbraError(
                "no_contract_key",
                f"no gatekeeper has published a key for {codec.to_hex(contract_id)} (epoch {epoch}) "
                f"within {wait:.0f} s; is a gatekeeper running?",
            )
        yield Sleep(s.settings.poll_interval * 2)
    key = proto.ContractKey.from_json(doc)
    head = yield from status(s)
    gatekeeper = yield from worker(key.gatekeeper)
    holders = [
        codec.from_hex(t, length=32, what="gatekeeper id")
        for t in (yield from state("keys", "gatekeepers")) or []
    ]
    proto.verify_contract_key(
        key,
        chain_id=str(head["chain_id"]),
        contract=contract_id,
        epoch=epoch,
        gatekeeper=gatekeeper,
        gatekeepers=holders,
        now_ms=int(head["time_ms"]),
    )
    if s.settings.verify_evidence:
        assert gatekeeper is not None
        yield from check_evidence(s, gatekeeper)
    s.keys[(contract_id, epoch)] = key
    return key


def check_evidence(s: Session, record: proto.WorkerRecord) -> Flow[None]:
    """Re-verify a worker's registered evidence here (once per worker and session)."""
    if record.id in s.attested:
        return
    try:
        info = yield Http("GET", record.endpoint.rstrip("/") + "/info", timeout=s.settings.timeout)
        evidence = codec.from_hex(info["evidence"], what="evidence")
        endorsements = {
            str(k): codec.from_hex(v, what=str(k)) for k, v in (info.get("endorsements") or {}).items()
        }
    except UmbraError as exc:
        raise VerificationError(
            "bad_evidence", f"cannot fetch the evidence of {codec.to_hex(record.id)}: {exc.message}"
        ) from None
    except (KeyError, TypeError, AttributeError, codec.CodecError):
        raise VerificationError(
            "bad_evidence", f"{codec.to_hex(record.id)} serves no evidence at GET /info"
        ) from None
    policy_doc = yield from state("registry", "policy")
    settings = (yield from state("registry", "settings")) or {}
    head = yield from status(s)
    root = settings.get("sim_root")
    assert s.genesis_hash is not None
    verify_worker_evidence(
        record,
        evidence=evidence,
        endorsements=endorsements,
        policy_doc=policy_doc or {},
        sim_root=codec.from_hex(root, what="sim root") if root else None,
        chain_id=str(head["chain_id"]),
        genesis_hash=s.genesis_hash,
    )
    s.attested.add(record.id)


# ---- jobs ---------------------------------------------------------------------------------------------
def _check_call_args(method: str, args: Any, replicas: int, value: int, distinct: str) -> None:
    if not isinstance(method, str) or not method:
        raise UmbraError("bad_args", "method must be a non-empty string")
    if not isinstance(args, Mapping) or not all(isinstance(k, str) for k in args):
        raise UmbraError("bad_args", "args must be a mapping of keyword arguments (a JSON object)")
    if not isinstance(replicas, int) or not 1 <= replicas <= _MAX_REPLICAS:
        raise UmbraError("bad_replicas", f"replicas must be 1..{_MAX_REPLICAS}")
    if not isinstance(value, int) or value < 0:
        raise UmbraError("bad_value", "value must be a non-negative integer")
    if distinct not in _DISTINCT:
        raise UmbraError("bad_distinct", f"distinct is one of {', '.join(_DISTINCT)}")


def _request(
    s: Session,
    key: crypto.SigningKey,
    ckey: proto.ContractKey,
    *,
    method: str,
    args: Mapping[str, Any],
    replicas: int,
    value: int,
    distinct: str,
) -> Flow[tuple[SignedTx, bytes, crypto.EcdhKey]]:
    """Seal the input to this request's exact nonce and post `compute.request`.

    The nonce is inside the HPKE info, so a nonce lost to a concurrent tx means sealing again.
    """
    job_fee = yield from param("job_fee", _JOB_FEE_DEFAULT)
    for attempt in range(_NONCE_ATTEMPTS):
        nonce = yield from nonce_of(key.public_key)
        reply_key = crypto.EcdhKey.generate()
        sealed = proto.seal_input(
            ckey, sender=key.public_key, reply_pk=reply_key.public_key, nonce=nonce, method=method, args=args
        )
        call = Call(
            "compute",
            "request",
            {
                "contract": ckey.contract,
                "sealed_input": sealed,
                "reply_pk": reply_key.public_key,
                "max_fee": job_fee * replicas,
                "nonce": nonce,
                "replicas": replicas,
                "value": value,
                "distinct": distinct,
            },
        )
        stx = yield from build_tx(s, key, call, nonce=nonce)
        try:
            receipt = yield from submit(stx, timeout=s.settings.tx_timeout)
        except UmbraError as exc:
            if exc.code in ("bad_nonce", "duplicate") and attempt + 1 < _NONCE_ATTEMPTS:
                yield Sleep(0.1 * (attempt + 1))
                continue
            raise
        _raise_failed(receipt)
        return stx, sealed, reply_key
    raise AssertionError("unreachable")


def wait_job(s: Session, job: bytes) -> Flow[dict[str, Any]]:
    """The job's record as stored (CBOR: signed fields come back exactly) once it settled or failed.

    A command settles a block after its request's block at the earliest: the first look is a poll
    interval after the request was included, then every quarter interval for a while (each look
    that comes late costs the caller that much latency), then less and less often.
    """
    start = time.monotonic()
    deadline = start + s.settings.job_timeout
    interval = s.settings.poll_interval
    yield Sleep(interval)
    while True:
        doc = yield from raw_state("compute", "job", job)
        if isinstance(doc, dict) and doc.get("status") in ("settled", "failed"):
            return doc
        if time.monotonic() >= deadline:
            raise UmbraError(
                "timeout",
                f"job {codec.to_hex(job)} did not settle within {s.settings.job_timeout:.0f} s; "
                "it may still settle (its record is at /state/compute/job)",
            )
        if time.monotonic() - start < _FAST_POLL_S:
            yield Sleep(s.settings.poll_interval / 4)
        else:
            yield Sleep(interval)
            interval = min(interval * 1.5, 0.5)


def raw_state(module: str, item: str, key: bytes) -> Flow[Any]:
    """A storage value exactly as stored (CBOR), for values whose signatures the client re-checks:
    the JSON form turns bytes into hex and cannot round-trip every signed field."""
    doc = yield Http(
        "GET",
        f"/state/{module}/{item}",
        params={"key": codec.to_hex(key), "encoding": "cbor"},
        missing_ok=True,
    )
    if doc is None:
        return None
    try:
        return codec.decode(codec.from_hex(doc["value"], what="state value"))
    except (KeyError, TypeError, codec.CodecError) as exc:
        raise UmbraError("bad_response", f"the node sent a malformed {module}/{item} value: {exc}") from None


def _results_of(job: Mapping[str, Any]) -> dict[bytes, proto.SubmittedResult]:
    """Each worker's submitted result as the chain stored it (body, signature, sealed output)."""
    out: dict[bytes, proto.SubmittedResult] = {}
    results = job.get("results")
    if not isinstance(results, dict):
        raise UmbraError("bad_response", "the job record has no results map")
    for worker_id, result in results.items():
        body = result.get("body") if isinstance(result, dict) else None
        signature = result.get("signature") if isinstance(result, dict) else None
        sealed = result.get("sealed_output") if isinstance(result, dict) else None
        if (
            not isinstance(worker_id, bytes)
            or not isinstance(body, dict)
            or not isinstance(signature, bytes)
            or not isinstance(sealed, bytes)
        ):
            raise UmbraError("bad_response", "the job record holds a malformed result")
        out[worker_id] = proto.SubmittedResult(body, signature, sealed)
    return out


def run_job(
    s: Session,
    key: crypto.SigningKey,
    contract_id: bytes,
    method: str,
    args: Mapping[str, Any],
    *,
    replicas: int = 1,
    value: int = 0,
    distinct: str = "none",
) -> Flow[CallResult]:
    """Request a job, wait for it to settle, verify every agreeing worker and open the output."""
    _check_call_args(method, args, replicas, value, distinct)
    cid = yield from chain_id(s)
    record = yield from contract_record(s, contract_id)
    ckey = yield from contract_key(s, contract_id)
    stx, sealed, reply_key = yield from _request(
        s, key, ckey, method=method, args=args, replicas=replicas, value=value, distinct=distinct
    )
    job = proto.job_id(stx.hash)
    doc = yield from wait_job(s, job)
    if not isinstance(doc, dict):
        raise UmbraError("bad_response", f"the node lost the record of job {codec.to_hex(job)}")
    outcome = doc.get("outcome") or {}
    agreeing = list(outcome.get("workers") or [])
    if not agreeing:  # failed before any majority: no output exists
        reason = outcome.get("reason") or "no reason given"
        raise UmbraError("job_failed", f"job {codec.to_hex(job)} failed: {reason}")
    settled_height = int(doc["settled_height"])
    settled_block = yield Http("GET", f"/blocks/{settled_height}")
    records = {}
    for wid in agreeing:
        records[wid] = yield from worker(wid)
        if s.settings.verify_evidence and records[wid] is not None:
            yield from check_evidence(s, records[wid])  # type: ignore[arg-type]
    try:
        settled = proto.JobOutcome(
            job=job,
            contract=contract_id,
            input_hash=bytes(doc["input_hash"]),
            workers=agreeing,
            output_commitment=bytes(outcome["output_commitment"]),
            failed=bool(outcome.get("failed")),
            reason=outcome.get("reason"),
            settled_height=settled_height,
            settled_time_ms=int(settled_block["time_ms"]),
        )
    except (KeyError, TypeError, ValueError):
        raise UmbraError(
            "bad_response", f"the node sent a malformed record of job {codec.to_hex(job)}"
        ) from None
    results = _results_of(doc)
    opened = proto.verify_job(
        settled,
        chain_id=cid,
        code_hash=record.code_hash,
        sealed_input=sealed,
        reply_key=reply_key,
        results=results,
        records=records,
    )
    s.last_height = max(s.last_height, settled_height)
    if not opened.ok:
        raise UmbraError("contract_error", opened.error or "the contract raised an exception")
    if settled.failed:  # the contract succeeded, but the chain could not apply its effects
        raise UmbraError("job_failed", f"job {codec.to_hex(job)} failed on chain: {settled.reason}")
    return CallResult(
        output=opened.output,
        job_id=codec.to_hex(job),
        workers=[codec.to_hex(w) for w in agreeing],
        height=settled_height,
    )


def deploy(
    s: Session,
    key: crypto.SigningKey,
    code: bytes,
    *,
    init: Mapping[str, Any] | None = None,
    manifest: Mapping[str, Any] | None = None,
) -> Flow[Deployment]:
    """Deploy, wait for the contract key (verified), then run and verify the init job."""
    if init is not None and (not isinstance(init, Mapping) or not all(isinstance(k, str) for k in init)):
        raise UmbraError("bad_args", "init must be a mapping of keyword arguments (a JSON object)")
    code_hash = codec.sha256(code)
    receipt, stx = yield from transact(
        s, key, Call("contracts", "deploy", {"code": code, "manifest": dict(manifest or {})})
    )
    contract_id = proto.contract_id(key.public_key, stx.hash, code_hash)
    record = yield from contract(contract_id)
    if record.code_hash != code_hash or record.owner != key.public_key:
        raise VerificationError(
            "bad_reply", "the chain's record of the new contract does not match the deploy"
        )
    yield from contract_key(s, contract_id, wait=s.settings.key_timeout)
    try:
        init_job = yield from run_job(s, key, contract_id, proto.INIT_METHOD, dict(init or {}))
    except UmbraError as exc:
        raise UmbraError(
            exc.code, f"contract {codec.to_hex(contract_id)} was deployed but its init failed: {exc.message}"
        ) from None
    return Deployment(
        contract_id=codec.to_hex(contract_id),
        code_hash=codec.to_hex(code_hash),
        tx_hash=str(receipt["tx_hash"]),
        height=int(receipt["block"]),
        init_job=init_job.job_id,
    )


# ---- queries --------------------------------------------------------------------------------------------
def _holds_key(worker_id: bytes, epoch: int) -> Flow[bool]:
    handover = yield from state("keys", "handover", worker_id + epoch.to_bytes(8, "big"))
    return handover is not None


def query(
    s: Session,
    key: crypto.SigningKey,
    contract_id: bytes,
    method: str,
    args: Mapping[str, Any],
    *,
    worker_id: bytes | None = None,
    min_height: int | None = None,
) -> Flow[QueryResult]:
    """Send a sealed, signed query straight to a worker and verify its signed, sealed reply.

    By default the query asks for the chain's current height (or the caller's last settled call,
    if later), so it reads everything acknowledged before it was sent, from any process.
    """
    _check_call_args(method, args, 1, 0, "none")
    head = yield from status(s)
    ckey = yield from contract_key(s, contract_id)
    need = max(s.last_height, int(head["height"])) if min_height is None else min_height
    now_ms = int(head["time_ms"])
    if worker_id is not None:
        pinned = yield from worker(worker_id)
        candidates = [proto.check_worker(pinned, worker_id, at_ms=now_ms)]
    else:
        candidates = [w for w in (yield from workers()) if w.serves(now_ms)]
        random.shuffle(candidates)  # spread the read load; the chain's choice is not needed here
    last_error: UmbraError | None = None
    for record in candidates:
        if worker_id is None and not (yield from _holds_key(record.id, ckey.epoch)):
            continue
        if s.settings.verify_evidence:
            yield from check_evidence(s, record)
        request = proto.build_query(
            ckey,
            caller=key,
            method=method,
            args=args,
            # Block time: the core checks expiry against its latest verified block.
            expiry_ms=now_ms + _QUERY_LIFETIME_MS,
            min_height=need,
            reply_key=crypto.EcdhKey.generate(),
        )
        try:
            doc = yield Http(
                "POST",
                record.endpoint.rstrip("/") + "/query",
                json={
                    "contract": codec.to_hex(contract_id),
                    "query": codec.to_hex(request.raw),
                    "height": need,
                },
                timeout=s.settings.query_timeout,
            )
        except UmbraError as exc:
            # A worker that is down, behind or refusing is not the last word: ask another.
            if worker_id is not None:
                raise
            last_error = exc
            continue
        verified = proto.verify_query_reply(request, doc, worker=record, worker_id=record.id, now_ms=now_ms)
        if not verified.outcome.ok:
            raise UmbraError("contract_error", verified.outcome.error or "the contract raised an exception")
        return QueryResult(
            output=verified.outcome.output, worker=codec.to_hex(verified.worker), height=verified.height
        )
    if last_error is not None:
        raise UmbraError(
            last_error.code, f"no worker answered the query; the last said: {last_error.message}"
        )
    raise UmbraError("no_workers", "no attested worker holding the contract's key serves queries right now")


# ---- owner data ------------------------------------------------------------------------------------------
def upload_secret(
    s: Session, key: crypto.SigningKey, contract_id: bytes, name: str, plaintext: bytes
) -> Flow[dict[str, Any]]:
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        raise UmbraError("bad_name", "secret names are 1..64 characters")
    ckey = yield from contract_key(s, contract_id)
    sealed = proto.seal_secret(ckey, name=name, plaintext=plaintext)
    receipt, _ = yield from transact(
        s, key, Call("contracts", "upload_secret", {"contract": contract_id, "name": name, "sealed": sealed})
    )
    return {
        "tx_hash": receipt["tx_hash"],
        "block": receipt["block"],
        "hash": codec.to_hex(codec.sha256(sealed)),
    }


def upload_blob(s: Session, key: crypto.SigningKey, contract_id: bytes, data: bytes) -> Flow[dict[str, Any]]:
    ckey = yield from contract_key(s, contract_id)
    sealed = proto.seal_blob(ckey, plaintext=data)
    digest = codec.sha256(sealed)
    yield Http("PUT", f"/blobs/{codec.to_hex(digest)}", content=sealed, timeout=s.settings.tx_timeout)
    receipt, _ = yield from transact(
        s,
        key,
        Call(
            "contracts", "register_blob", {"contract": contract_id, "blob_hash": digest, "size": len(sealed)}
        ),
    )
    return {
        "tx_hash": receipt["tx_hash"],
        "block": receipt["block"],
        "hash": codec.to_hex(digest),
        "size": len(sealed),
    }


# ---- funds and public contract data ----------------------------------------------------------------------
def balance(address: bytes) -> Flow[int]:
    doc = yield from account(address)
    return int(doc["free"])


def transfer(s: Session, key: crypto.SigningKey, to: bytes, amount: int) -> Flow[dict[str, Any]]:
    """A signed `balances.transfer`, once included; a refusal (e.g. `insufficient_funds`) raises."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
        raise UmbraError("bad_amount", "a transfer moves a whole amount of at least 1")
    receipt, stx = yield from transact(s, key, Call("balances", "transfer", {"to": to, "amount": amount}))
    return {"tx_hash": receipt["tx_hash"], "block": receipt["block"], "fee": stx.tx.fee}


def contract_account(contract_id: bytes) -> Flow[str]:
    doc = yield from _contract_doc(contract_id)
    return str(doc["account"])


def contract_events(s: Session, contract_id: bytes, since: int) -> Flow[list[ContractEvent]]:
    """The contract's public events from height `since` on, oldest first.

    /history/events scans a bounded range of blocks per call and names where to go on (`next`).
    """
    if isinstance(since, bool) or not isinstance(since, int) or since < 0:
        raise UmbraError("bad_args", "since is a block height (an integer >= 0)")
    yield from contract_record(s, contract_id)  # an unknown contract is an error, not "no events"
    wanted = codec.to_hex(contract_id)
    found: list[ContractEvent] = []
    start: int | None = since
    while start is not None:
        page = yield Http(
            "GET",
            "/history/events",
            params={"module": "contracts", "names": "ContractEvent", "from": str(start)},
        )
        found += [
            ContractEvent(int(e["height"]), str(e["data"]["name"]), e["data"]["data"])
            for e in page["events"]
            if e["data"]["contract"] == wanted
        ]
        following = page["next"]
        if following is not None and int(following) <= start:
            raise UmbraError("bad_response", "/history/events did not move on to later blocks")
        start = None if following is None else int(following)
    return found
