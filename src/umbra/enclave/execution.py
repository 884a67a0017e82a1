"""Confidential execution inside the core: decrypt, check, run, re-encrypt, commit, seal, sign.

A job (docs/protocol.md "compute"): the input was sealed by the requester to the contract's ECDH
key with HPKE info `cbor{chain_id, contract, sender, reply_pk, nonce}`; the chain verified and
recorded who sent it, its hash, and the state it must run on. The core checks all of that against
its own verified view (never the host's word), runs the contract in the sandbox, encrypts the new
state under the contract's state key, commits to the output with `k_job`, seals `(output, k_job)`
to the requester's reply key and signs the result body.

Determinism across replicas: everything the body commits to is a function of the verified chain
and the input, so honest replicas agree. In particular the state ciphertext uses a synthetic
nonce (HMAC of the plaintext and its binding under a key derived from the state key): the same
state at the same version encrypts to the same bytes, and different states never share a nonce.

State blob: `cbor{v: 1, epoch, ct}`, `ct = ChaCha20-Poly1305(state key[epoch], cbor(state),
aad=cbor{contract, version})`. Old epochs stay readable; a write uses the epoch of the input.

Queries travel straight from a client to a worker: `HPKE(contract ecdh_pk, cbor{body, caller,
signature}, info=cbor{chain_id, contract, purpose: "umbra/query/v1"})`, `body = {contract, method,
args, reply_pk, expiry_ms}` signed by the caller's account key (`umbra/query/v1`). The reply is
`HPKE(reply_pk, cbor{ok, output | error}, info=cbor{chain_id, contract, query_hash})` with
`query_hash = SHA-256(sealed query)`, and the worker signs `{contract, height, state_hash,
sealed_reply_hash, query_hash}` (`umbra/query-reply/v1`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from umbra import codec, crypto
from umbra.chain.modules.contracts import MAX_STATE_BYTES
from umbra.enclave.chainview import ChainView
from umbra.enclave.keytree import ContractKeys, MasterKey
from umbra.enclave.sandbox import ContractHost, RunResult, SandboxFault

__all__ = ["ExecutionFault", "Executor", "open_state", "seal_state"]

log = logging.getLogger("umbra.enclave")

_STATE_VERSION = 1
_QUERY_PURPOSE = "umbra/query/v1"
_SECRET_PURPOSE = "umbra/secret/v1"
_BLOB_PURPOSE = "umbra/blob/v1"
# A query that says it stays valid longer than this is refused: expiry bounds replay.
_MAX_QUERY_LIFETIME_MS = 15 * 60 * 1000
# Opened states kept for queries, counted in sealed bytes (the opened objects take a few times more).
_OPENED_STATES_BYTES = 16 * 1024 * 1024


class ExecutionFault(Exception):
    """A request the core refuses to execute (not a contract failure, which is a result)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _state_aad(contract: bytes, version: int) -> bytes:
    return codec.encode({"contract": contract, "version": version})


def seal_state(keys: ContractKeys, epoch: int, version: int, state: Any) -> bytes:
    plaintext = codec.encode(state)
    aad = _state_aad(keys.contract, version)
    nonce_key = crypto.derive_key(keys.state_key.key, "umbra/contract/state-nonce")
    nonce = crypto.commitment(nonce_key, aad + plaintext)[:12]
    ciphertext = keys.state_key.seal(plaintext, aad, rng=lambda n: nonce[:n])
    return codec.encode({"v": _STATE_VERSION, "epoch": epoch, "ct": ciphertext})


def open_state(masters: dict[int, MasterKey], contract: bytes, version: int, blob: bytes) -> Any:
    try:
        envelope = codec.decode(blob)
        if not isinstance(envelope, dict) or envelope.get("v") != _STATE_VERSION:
            raise ValueError("unknown state format")
        epoch, ciphertext = int(envelope["epoch"]), envelope["ct"]
    except (codec.CodecError, ValueError, KeyError, TypeError) as exc:
        raise ExecutionFault("bad_state", f"state blob does not parse: {exc}") from None
    master = masters.get(epoch)
    if master is None:
        raise ExecutionFault(
            "no_key", f"the state is sealed under epoch {epoch}, which this core does not hold"
        )
    try:
        return codec.decode(
            master.contract(contract).state_key.open(ciphertext, _state_aad(contract, version))
        )
    except (crypto.DecryptError, codec.CodecError) as exc:
        raise ExecutionFault("bad_state", f"state does not open: {exc}") from None


def _open_with_any(
    masters: dict[int, MasterKey], contract: bytes, sealed: bytes, info: bytes
) -> tuple[int, ContractKeys, bytes] | None:
    """Try the held epochs, newest first: the sender sealed to one epoch's contract key."""
    for epoch in sorted(masters, reverse=True):
        keys = masters[epoch].contract(contract)
        try:
            return epoch, keys, crypto.hpke_open(keys.ecdh, sealed, info)
        except crypto.DecryptError:
            continue
    return None


class _OpenedStates:
    """Opened contract states by the hash of the sealed blob they came from (or were sealed to),
    with the version that blob binds; the least recently used go past a budget of sealed bytes.
    Only a state whose hash the verified chain names is ever looked up, so none goes stale."""

    def __init__(self, budget: int) -> None:
        self._items: OrderedDict[bytes, tuple[int, Any, int]] = OrderedDict()
        self._size = 0
        self._budget = budget

    def get(self, state_hash: bytes, version: int) -> Any:
        """The opened state, or None (a contract's state is always a map once it has one)."""
        item = self._items.get(state_hash)
        if item is None or item[0] != version:
            return None
        self._items.move_to_end(state_hash)
        return item[1]

    def put(self, state_hash: bytes, version: int, state: Any, sealed_size: int) -> None:
        if state_hash in self._items or sealed_size > self._budget // 4:
            return
        self._items[state_hash] = (version, state, sealed_size)
        self._size += sealed_size
        while self._size > self._budget:
            _, (_, _, dropped) = self._items.popitem(last=False)
            self._size -= dropped


class Executor:
    """Runs jobs and queries for one core. Holds the warm sandboxes, one per contract."""

    def __init__(self, chain_id: str, identity: crypto.SigningKey, *, lie: bool = False) -> None:
        self._chain_id = chain_id
        self._identity = identity
        self._lie = lie
        self._hosts: dict[bytes, ContractHost] = {}
        # Opened owner material, by contract: secrets by name (with the hash they opened from)
        # and blobs by hash. Kept in the core, so the host sends each ciphertext once.
        self._secrets: dict[bytes, dict[str, tuple[bytes, bytes]]] = {}
        self._blobs: dict[bytes, dict[bytes, bytes]] = {}
        # Never handed to contract code to change: a job's state is encoded into its job body.
        self._opened = _OpenedStates(_OPENED_STATES_BYTES)

    def missing(self, view: ChainView, contract_id: bytes) -> dict[str, Any]:
        """Which registered secrets and blobs the host should send with the next job or query."""
        contract = view.contracts.get(contract_id)
        if contract is None:
            return {"secrets": [], "blobs": []}
        have_secrets = self._secrets.get(contract_id, {})
        have_blobs = self._blobs.get(contract_id, {})
        return {
            "secrets": [n for n, h in contract["secrets"].items() if have_secrets.get(n, (b"", b""))[0] != h],
            "blobs": [h for h in contract["blobs"] if h not in have_blobs],
        }

    def _material(
        self, view: ChainView, masters: dict[int, MasterKey], contract_id: bytes, request: dict[str, Any]
    ) -> tuple[dict[str, bytes], dict[bytes, bytes]]:
        """The contract's secrets and blobs, opened: new ciphertexts from the host are checked
        against the hashes the chain registered, then opened with the contract's key."""
        contract = view.contracts[contract_id]
        secrets = self._secrets.setdefault(contract_id, {})
        sent = request.get("secrets") or {}
        for name, sealed in sent.items() if isinstance(sent, dict) else ():
            expected = contract["secrets"].get(name)
            if expected is None or not isinstance(sealed, bytes) or codec.sha256(sealed) != expected:
                raise ExecutionFault("bad_secret", f"secret {name!r} is not the one registered on chain")
            info = codec.encode(
                {
                    "chain_id": self._chain_id,
                    "contract": contract_id,
                    "purpose": _SECRET_PURPOSE,
                    "name": name,
                }
            )
            opened = _open_with_any(masters, contract_id, sealed, info)
            if opened is not None:
                secrets[name] = (expected, opened[2])
        blobs = self._blobs.setdefault(contract_id, {})
        sent = request.get("blobs") or {}
        for digest, sealed in sent.items() if isinstance(sent, dict) else ():
            if (
                digest not in contract["blobs"]
                or not isinstance(sealed, bytes)
                or codec.sha256(sealed) != digest
            ):
                raise ExecutionFault("bad_blob", "a blob sent is not one registered for this contract")
            info = codec.encode(
                {"chain_id": self._chain_id, "contract": contract_id, "purpose": _BLOB_PURPOSE}
            )
            opened = _open_with_any(masters, contract_id, sealed, info)
            if opened is not None:
                blobs[digest] = opened[2]
        current = {n: plain for n, (h, plain) in secrets.items() if contract["secrets"].get(n) == h}
        return current, {h: plain for h, plain in blobs.items() if h in contract["blobs"]}

    def _host(self, contract: bytes, code: bytes | None, code_hash: bytes) -> ContractHost:
        """The warm sandbox of `contract` at `code_hash`, started from `code` if there is none yet
        (the callers ask the host for the code when there is neither)."""
        host = self._hosts.get(contract)
        if host is None or host.code_hash != code_hash:
            if host is not None:
                host.close()
            assert code is not None
            host = self._hosts[contract] = ContractHost(contract, code, code_hash)
        return host

    # ---- jobs ----------------------------------------------------------------------------------
    def execute(
        self, view: ChainView, masters: dict[int, MasterKey], request: dict[str, Any]
    ) -> dict[str, Any]:
        me = self._identity.public_key
        job_id = request.get("job")
        job = view.jobs.get(job_id) if isinstance(job_id, bytes) else None
        if job is None or not isinstance(job_id, bytes):
            raise ExecutionFault("unknown_job", "no verified pending job with this id")
        if me not in job["workers"]:
            raise ExecutionFault("not_assigned", "the verified chain does not assign this job to this worker")
        contract_id: bytes = job["contract"]
        contract = view.contracts.get(contract_id)
        if contract is None:
            raise ExecutionFault("unknown_contract", "no verified deployment of the job's contract")
        code, sealed_input, prev_state, state_blob = self._job_inputs(
            view, masters, job_id, job, contract, request
        )
        prev_hash: bytes | None = job["state_hash"]
        prev_version = int(job["state_version"] or 0)
        if not masters:
            raise ExecutionFault("no_key", "this core holds no master key yet")

        info = codec.encode(
            {
                "chain_id": self._chain_id,
                "contract": contract_id,
                "sender": job["requester"],
                "reply_pk": job["reply_pk"],
                "nonce": job["nonce"],
            }
        )
        opened = _open_with_any(masters, contract_id, sealed_input, info)
        newest = max(masters)
        epoch, keys = (
            (opened[0], opened[1]) if opened is not None else (newest, masters[newest].contract(contract_id))
        )
        secrets, blobs = self._material(view, masters, contract_id, request)
        try:
            result = self._run_job(
                masters,
                job_id,
                job,
                contract,
                code,
                opened,
                prev_hash,
                prev_version,
                prev_state,
                state_blob,
                secrets,
                blobs,
            )
        except SandboxFault as exc:
            raise ExecutionFault("sandbox", f"the sandbox could not run the job: {exc}") from None
        if self._lie and result.ok:
            result = RunResult(
                True, ["wrong", result.output], None, result.state, result.transfers, result.events
            )
        new_blob = seal_state(keys, epoch, prev_version + 1, result.state) if result.ok else None
        if new_blob is not None and len(new_blob) > MAX_STATE_BYTES:
            # Settlement would refuse it: fail the job instead, as every honest replica does.
            result = RunResult.failure(
                f"the contract's new state is {len(new_blob)} bytes sealed; its quota is {MAX_STATE_BYTES}"
            )
            new_blob = None
        if new_blob is not None:  # once settled, queries read it without the host sending it
            self._opened.put(codec.sha256(new_blob), prev_version + 1, result.state, len(new_blob))
        value = result.output if result.ok else {"error": result.error}
        k_job = keys.k_job(job_id)
        opened_output = (
            {"ok": True, "output": result.output} if result.ok else {"ok": False, "error": result.error}
        )
        sealed_output = crypto.hpke_seal(
            job["reply_pk"],
            codec.encode({**opened_output, "k_job": k_job}),
            codec.encode({"chain_id": self._chain_id, "job": job_id}),
        )
        body = {
            "job": job_id,
            "contract": contract_id,
            "worker": me,
            "code_hash": contract["code_hash"],
            "input_hash": job["input_hash"],
            "sealed_output_hash": codec.sha256(sealed_output),
            "output_commitment": crypto.commitment(k_job, codec.encode(value)),
            "prev_state_hash": prev_hash,
            "new_state_hash": codec.sha256(new_blob) if new_blob is not None else prev_hash,
            "failed": not result.ok,
            "transfers": result.transfers if result.ok else [],
            "events": result.events if result.ok else [],
        }
        return {
            "body": body,
            "signature": self._identity.sign("umbra/result/v1", body),
            "sealed_output": sealed_output,
            "state_blob": new_blob,
            "replicas": int(job["replicas"]),  # the host publishes the state for late replicas
        }

    def _held_state(
        self, view: ChainView, masters: dict[int, MasterKey], contract: bytes, state_hash: bytes, version: int
    ) -> Any:
        """The opened state `state_hash` (at `version`) if the core holds it: opened already, or
        sealed in the verified tx that settled it. None if the host must send it."""
        state = self._opened.get(state_hash, version)
        if state is None:
            blob = view.states.get(state_hash)
            if blob is not None:
                state = open_state(masters, contract, version, blob)
                self._opened.put(state_hash, version, state, len(blob))
        return state

    def _job_inputs(
        self,
        view: ChainView,
        masters: dict[int, MasterKey],
        job_id: bytes,
        job: dict[str, Any],
        contract: dict[str, Any],
        request: dict[str, Any],
    ) -> tuple[bytes | None, bytes, Any, bytes | None]:
        """(code, sealed input, opened previous state, state blob) for a job, each from the request
        if the host sent it (checked against the chain) or else from what the core already holds:
        the warm sandbox of the deployed code, the input of the verified request tx, the state it
        sealed or opened itself. `needs_input` when the host must send what the core lacks."""
        code, sealed_input = request.get("code"), request.get("sealed_input")
        if code is not None and (not isinstance(code, bytes) or codec.sha256(code) != contract["code_hash"]):
            raise ExecutionFault("bad_code", "the code given does not hash to the deployed code_hash")
        warm = self._hosts.get(job["contract"])
        if code is None and (warm is None or warm.code_hash != contract["code_hash"]):
            raise ExecutionFault("needs_input", "send the contract's code with the job")
        if sealed_input is None:
            sealed_input = view.inputs.get(job_id)
            if sealed_input is None:
                raise ExecutionFault("needs_input", "send the job's sealed input")
        if not isinstance(sealed_input, bytes) or codec.sha256(sealed_input) != job["input_hash"]:
            raise ExecutionFault("bad_input", "the sealed input does not hash to the requested input_hash")
        prev_hash: bytes | None = job["state_hash"]
        prev_state, state_blob = None, None
        if "state_blob" in request:
            state_blob = request["state_blob"]
            if prev_hash is None:
                if state_blob is not None:
                    raise ExecutionFault(
                        "bad_state", "the job runs on no state yet, but a state blob was given"
                    )
            elif not isinstance(state_blob, bytes) or codec.sha256(state_blob) != prev_hash:
                raise ExecutionFault(
                    "bad_state", "the state blob does not hash to the state the job was assigned"
                )
        elif prev_hash is not None:
            prev_state = self._held_state(
                view, masters, job["contract"], prev_hash, int(job["state_version"])
            )
            if prev_state is None:
                raise ExecutionFault("needs_input", "send the state the job was assigned")
        if "secrets" not in request and any(self.missing(view, job["contract"]).values()):
            raise ExecutionFault("needs_input", "send the contract's owner secrets and blobs with the job")
        return code, sealed_input, prev_state, state_blob

    def _run_job(
        self,
        masters: dict[int, MasterKey],
        job_id: bytes,
        job: dict[str, Any],
        contract: dict[str, Any],
        code: bytes | None,
        opened: tuple[int, ContractKeys, bytes] | None,
        prev_hash: bytes | None,
        prev_version: int,
        prev_state: Any,
        state_blob: bytes | None,
        secrets: dict[str, bytes],
        blobs: dict[bytes, bytes],
    ) -> RunResult:
        """The contract's outcome; every refusal from here on is a failed job, which replicas agree on."""
        if opened is None:
            return RunResult.failure(
                "the sealed input does not open with this contract's key (wrong key or binding)"
            )
        _epoch, keys, plaintext = opened
        try:
            payload = codec.decode(plaintext)
        except codec.CodecError:
            return RunResult.failure("the input is not CBOR")
        if not (
            isinstance(payload, dict)
            and isinstance(payload.get("method"), str)
            and isinstance(payload.get("args", {}), dict)
        ):
            return RunResult.failure("the input must be {method, args}")
        method, args = payload["method"], payload.get("args", {})
        is_init = method == "__init__"
        if prev_hash is None and not is_init:
            return RunResult.failure("the contract is not initialized: its first job must be __init__")
        if is_init and prev_hash is not None:
            return RunResult.failure("the contract is already initialized")
        if is_init and job["requester"] != contract["owner"]:
            return RunResult.failure("only the contract's owner may run __init__")
        state = prev_state
        if state_blob is not None:
            state = open_state(masters, job["contract"], prev_version, state_blob)
            self._opened.put(codec.sha256(state_blob), prev_version, state, len(state_blob))
        host = self._host(job["contract"], code, contract["code_hash"])
        return host.run(
            kind="init" if is_init else "command",
            method=method,
            args=args,
            caller=job["requester"],
            state=state,
            height=int(job["assigned_height"]),
            time_ms=int(job["assigned_time_ms"]),
            job=job_id,
            keys=keys,
            replicated=int(job["replicas"]) > 1,
            value=int(job["value"]),
            secrets=secrets,
            blobs=blobs,
            http_allowlist=contract["http_allowlist"],
        )

    # ---- queries -------------------------------------------------------------------------------
    def query(
        self, view: ChainView, masters: dict[int, MasterKey], request: dict[str, Any]
    ) -> dict[str, Any]:
        contract_id, sealed = request.get("contract"), request.get("query")
        if not isinstance(contract_id, bytes) or not isinstance(sealed, bytes):
            raise ExecutionFault("bad_request", "contract and query are bytes")
        contract = view.contracts.get(contract_id)
        if contract is None:
            raise ExecutionFault("unknown_contract", "no verified deployment of this contract")
        # What the core already holds (the warm sandbox of the deployed code, the opened latest
        # state, the owner's material) the host need not send; the rest it must, checked here.
        code = request.get("code")
        if code is not None and (not isinstance(code, bytes) or codec.sha256(code) != contract["code_hash"]):
            raise ExecutionFault("bad_code", "the code given does not hash to the deployed code_hash")
        warm = self._hosts.get(contract_id)
        if warm is None or warm.code_hash != contract["code_hash"]:
            if code is None:
                raise ExecutionFault("needs_input", "send the contract's code with the query")
            warm = None
        state_hash = contract["state_hash"]
        if state_hash is None:
            raise ExecutionFault(
                "not_initialized", "the contract has no state yet (its init job has not settled)"
            )
        version = int(contract["version"])
        state = self._held_state(view, masters, contract_id, state_hash, version)
        if state is None:
            state_blob = request.get("state_blob")
            if state_blob is None:
                raise ExecutionFault("needs_input", "send the contract's latest state with the query")
            if not isinstance(state_blob, bytes) or codec.sha256(state_blob) != state_hash:
                raise ExecutionFault(
                    "stale_state", f"the state given is not the verified latest 0x{state_hash.hex()}"
                )
            state = open_state(masters, contract_id, version, state_blob)
            self._opened.put(state_hash, version, state, len(state_blob))
        if "secrets" not in request and any(self.missing(view, contract_id).values()):
            raise ExecutionFault("needs_input", "send the contract's owner secrets and blobs with the query")
        info = codec.encode({"chain_id": self._chain_id, "contract": contract_id, "purpose": _QUERY_PURPOSE})
        opened = _open_with_any(masters, contract_id, sealed, info)
        if opened is None:
            raise ExecutionFault("cannot_open", "the query does not open with this contract's key")
        _epoch, keys, plaintext = opened
        try:
            inner = codec.decode(plaintext)
            body, caller, signature = inner["body"], inner["caller"], inner["signature"]
            if not (
                isinstance(body, dict)
                and set(body) == {"contract", "method", "args", "reply_pk", "expiry_ms"}
            ):
                raise ValueError("body must be {contract, method, args, reply_pk, expiry_ms}")
        except (codec.CodecError, KeyError, TypeError, ValueError) as exc:
            raise ExecutionFault("bad_query", f"the query is malformed: {exc}") from None
        if body["contract"] != contract_id:
            raise ExecutionFault("bad_query", "the query names another contract")
        if not (isinstance(caller, bytes) and isinstance(signature, bytes)) or not crypto.verify(
            _QUERY_PURPOSE, body, signature, caller
        ):
            raise ExecutionFault("bad_signature", "the caller's signature over the query does not verify")
        expiry = body["expiry_ms"]
        if not isinstance(expiry, int) or expiry < view.time_ms:
            raise ExecutionFault("query_expired", "the query expired (by the latest verified block time)")
        if expiry > view.time_ms + _MAX_QUERY_LIFETIME_MS:
            raise ExecutionFault("bad_query", "the query's expiry is too far in the future")
        reply_pk = body["reply_pk"]
        if not (
            isinstance(reply_pk, bytes)
            and len(reply_pk) == 32
            and isinstance(body["method"], str)
            and isinstance(body["args"], dict)
        ):
            raise ExecutionFault("bad_query", "method is text, args a map, reply_pk 32 bytes")
        secrets, blobs = self._material(view, masters, contract_id, request)
        query_hash = codec.sha256(sealed)
        if warm is None:  # started only now, for a query that opened and verified
            assert isinstance(code, bytes)  # else needs_input above
            warm = self._host(contract_id, code, contract["code_hash"])
        try:
            result = warm.run(
                kind="query",
                method=body["method"],
                args=body["args"],
                caller=caller,
                state=state,
                height=view.height,
                time_ms=view.time_ms,
                job=query_hash,
                keys=keys,
                secrets=secrets,
                blobs=blobs,
                http_allowlist=contract["http_allowlist"],
            )
        except SandboxFault as exc:
            raise ExecutionFault("sandbox", f"the sandbox could not run the query: {exc}") from None
        reply = {"ok": result.ok, **({"output": result.output} if result.ok else {"error": result.error})}
        sealed_reply = crypto.hpke_seal(
            reply_pk,
            codec.encode(reply),
            codec.encode({"chain_id": self._chain_id, "contract": contract_id, "query_hash": query_hash}),
        )
        signed = {
            "contract": contract_id,
            "height": view.height,
            "state_hash": state_hash,
            "sealed_reply_hash": codec.sha256(sealed_reply),
            "query_hash": query_hash,
        }
        return {
            "reply": signed,
            "signature": self._identity.sign("umbra/query-reply/v1", signed),
            "sealed_reply": sealed_reply,
            "worker": self._identity.public_key,
        }
