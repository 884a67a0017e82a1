"""The enclave core: key custody, chain following, and every operation that touches a secret.

    core = Core(platform, sealed_dir)
    reply = core.handle({"op": "init", "genesis": genesis_bytes, "role": "worker"})

`handle` is the whole interface: a request map in, a reply map out (`{ok: true, ...}` or
`{error: {code, message}}`), never an exception. The host reaches it through a `CoreTransport`.
What leaves the core is public or encrypted: public keys, signatures, evidence, ciphertexts
sealed to someone's key, and facts read from the verified chain. Identity, ECDH, master and
contract keys, decrypted inputs, states and outputs never do.

Ops (docs/protocol.md "Host and enclave core"):
  init {genesis, role, reset?}           identity_pk, ecdh_pk, ... (resumes from sealed storage)
  status {}                              public summary of the verified view
  feed {blocks: [[block, events, attestations?], ...]}   verify and follow; a forged block -> error
                                         (attestations: evm ordering's node signatures per block)
  duties {}                              what the host should do next (register, jobs, handovers)
  register {operator, endpoint}          registry.register_worker args (evidence, binding_sig, ...)
  heartbeat {height}                     registry.heartbeat args
  generate_master {epoch}                keys.init_master / publish_master args   (gatekeeper)
  handover {worker, epoch}               keys.handover args                       (gatekeeper)
  contract_key {contract, epoch}         keys.publish_contract_key args           (gatekeeper)
  contract_public {contract, epoch}      the derived public keys (proves holding the epoch key)
  contract {contract}, job {job}         verified public facts (state hash, secrets/blobs needed)
  execute {job, code?, sealed_input?, state_blob?, secrets?, blobs?}   compute.submit_result args
                                         and the job's replicas; error needs_input when the core
                                         lacks what was left out (as for query)
  query {contract, query, state_blob?, code?, secrets?, blobs?}   signed reply, sealed to reply_pk;
                                         error needs_input when the core lacks what was left out
                                         (the code, the latest state, the owner's material)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from umbra import codec, crypto
from umbra.chain.modules.registry import binding_fields
from umbra.chain.types import GenesisConfig, MalformedError
from umbra.crypto import RandomSource
from umbra.enclave.chainview import ChainView, ForgedBlock, Note
from umbra.enclave.execution import ExecutionFault, Executor
from umbra.enclave.keytree import MasterKey
from umbra.enclave.platform import Platform, PlatformError
from umbra.enclave.sealing import MemoryStore, SealedStorageError, SealedStore, Store
from umbra.tee.policy import report_data_binding

__all__ = ["Core", "CoreFault"]

log = logging.getLogger("umbra.enclave")

ROLES = ("worker", "gatekeeper")
_IDENTITY_VERSION = 1
# The checkpoint is rewritten when something the core acts on changed, and at least this often.
_CHECKPOINT_EVERY = 256
# Notes that alone do not call for a checkpoint: a job assignment changes nothing the core keeps
# apart from its view, which a restart rebuilds by replaying the blocks after the checkpoint. (Under
# load one comes nearly every block, and a checkpoint encodes, seals and fsyncs the whole view.)
_NO_CHECKPOINT = frozenset({"job_assigned"})
_MAX_ALERTS = 32


class CoreFault(Exception):
    """A refused request: becomes `{error: {code, message}}` on the wire."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _bytes(request: dict[str, Any], name: str, length: int | None = None) -> bytes:
    value = request.get(name)
    if not isinstance(value, bytes) or (length is not None and len(value) != length):
        size = f" of {length} bytes" if length is not None else ""
        raise CoreFault("bad_request", f"{name} must be bytes{size}")
    return value


def _int(request: dict[str, Any], name: str) -> int:
    value = request.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CoreFault("bad_request", f"{name} must be a non-negative integer")
    return value


def _str(request: dict[str, Any], name: str, max_len: int = 256) -> str:
    value = request.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise CoreFault("bad_request", f"{name} must be a non-empty string of at most {max_len} characters")
    return value


class Core:
    def __init__(
        self,
        platform: Platform,
        sealed_dir: Path | None,
        *,
        rng: RandomSource = os.urandom,
        lie: bool = False,
    ) -> None:
        """`lie` makes a compromised enclave for chaos tests (sim only): results carry a wrong,
        validly signed output, as replicas must be able to outvote."""
        self._platform = platform
        self._sealed_dir = sealed_dir
        self._rng = rng
        self._lie = lie
        self._store: Store | None = None
        self._identity: crypto.SigningKey | None = None
        self._ecdh: crypto.EcdhKey | None = None
        self._view: ChainView | None = None
        self._role = "worker"
        self._masters: dict[int, MasterKey] = {}
        self._pending_masters: dict[int, MasterKey] = {}
        self._alerts: list[str] = []
        self._checkpoint_height = -1
        self._executor: Executor | None = None
        self._ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "init": self._op_init,
            "status": self._op_status,
            "feed": self._op_feed,
            "duties": self._op_duties,
            "register": self._op_register,
            "heartbeat": self._op_heartbeat,
            "generate_master": self._op_generate_master,
            "handover": self._op_handover,
            "contract_key": self._op_contract_key,
            "contract_public": self._op_contract_public,
            "contract": self._op_contract,
            "job": self._op_job,
            "execute": self._op_execute,
            "query": self._op_query,
        }

    # ---- dispatch ------------------------------------------------------------------------------
    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            return _error("unknown_op", f"no such op {op!r}; known: {', '.join(sorted(self._ops))}")
        if op != "init" and self._identity is None:
            return _error("not_initialized", "send init first")
        try:
            return {"ok": True, **handler(request)}
        except CoreFault as exc:
            return _error(exc.code, exc.message)
        except ExecutionFault as exc:
            return _error(exc.code, exc.message)
        except SealedStorageError as exc:
            return _error("sealed_unopenable", str(exc))
        except PlatformError as exc:
            return _error("platform", str(exc))
        except Exception as exc:  # a bug must not take secrets or the core down with it
            log.exception("op %s failed", op)
            return _error("internal", f"internal error in {op}: {type(exc).__name__}")

    # ---- helpers -------------------------------------------------------------------------------
    @property
    def _me(self) -> bytes:
        assert self._identity is not None
        return self._identity.public_key

    @property
    def view(self) -> ChainView:
        assert self._view is not None
        return self._view

    def _require_gatekeeper(self) -> None:
        if self._role != "gatekeeper":
            raise CoreFault("not_gatekeeper", "this core runs in the worker role")
        record = self.view.workers.get(self._me)
        if record is None or record["role"] != "gatekeeper":
            raise CoreFault("not_gatekeeper", "this core is not registered as a gatekeeper on chain")

    def _master(self, epoch: int) -> MasterKey:
        master = self._masters.get(epoch)
        if master is None:
            raise CoreFault("no_key", f"this core does not hold the master key of epoch {epoch}")
        return master

    def _alert(self, message: str) -> None:
        log.warning("%s", message)
        self._alerts = [*self._alerts[-(_MAX_ALERTS - 1) :], message]

    def _save_master(self, epoch: int, master: MasterKey, *, confirmed: bool) -> None:
        assert self._store is not None
        self._store.put(f"master-{epoch}", {"epoch": epoch, "secret": master.secret, "confirmed": confirmed})

    def _save_checkpoint(self) -> None:
        assert self._store is not None
        self._store.put("checkpoint", self.view.to_cbor())
        self._checkpoint_height = self.view.height

    # ---- init ----------------------------------------------------------------------------------
    def _op_init(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._identity is not None:
            raise CoreFault("already_initialized", "the core is already initialized")
        try:
            genesis = GenesisConfig.from_cbor(codec.decode(_bytes(request, "genesis")))
        except (codec.CodecError, MalformedError, KeyError, TypeError, ValueError) as exc:
            raise CoreFault("bad_genesis", f"genesis does not decode: {exc}") from None
        role = request.get("role", "worker")
        if role not in ROLES:
            raise CoreFault("bad_request", f"role is one of {', '.join(ROLES)}")
        seal_key = self._platform.seal_key()
        store: Store
        quarantined = None
        if seal_key is None or self._sealed_dir is None:
            store = MemoryStore()
        else:
            sealed = SealedStore(self._sealed_dir, seal_key)
            if request.get("reset") is True and sealed.purposes():
                quarantined = str(sealed.quarantine())
                log.warning("sealed storage moved aside to %s; starting as a new identity", quarantined)
            store = sealed
        identity = store.get("identity")
        resumed = identity is not None
        if identity is None:
            identity = {
                "version": _IDENTITY_VERSION,
                "identity_seed": self._rng(32),
                "ecdh_secret": self._rng(32),
                "chain_id": genesis.chain_id,
                "genesis_hash": genesis.hash,
            }
            store.put("identity", identity)
        elif identity.get("genesis_hash") != genesis.hash:
            raise CoreFault(
                "wrong_chain",
                f"the sealed identity belongs to chain {identity.get('chain_id')!r}, not {genesis.chain_id!r} "
                "(use another data dir for another chain)",
            )
        masters: dict[int, MasterKey] = {}
        pending: dict[int, MasterKey] = {}
        for purpose in store.purposes():
            if purpose.startswith("master-"):
                entry = store.get(purpose)
                (masters if entry["confirmed"] else pending)[int(entry["epoch"])] = MasterKey(entry["secret"])
        checkpoint = store.get("checkpoint")
        view = ChainView.from_cbor(checkpoint) if checkpoint is not None else ChainView.from_genesis(genesis)
        if view.genesis_hash != genesis.hash:
            raise CoreFault("wrong_chain", "the sealed checkpoint belongs to another chain")
        # Everything opened: only now does the core take it on.
        self._store = store
        self._identity = crypto.SigningKey(identity["identity_seed"])
        self._ecdh = crypto.EcdhKey(identity["ecdh_secret"])
        self._masters, self._pending_masters = masters, pending
        self._view = view
        self._checkpoint_height = view.height
        self._role = role
        self._executor = Executor(genesis.chain_id, self._identity, lie=self._lie)
        return {
            "identity_pk": self._identity.public_key,
            "ecdh_pk": self._ecdh.public_key,
            "tee_type": self._platform.tee_type,
            "platform": self._platform.platform,
            "measurement": self._platform.measurement,
            "persistent": store.persistent,
            "resumed": resumed,
            "quarantined": quarantined,
            "height": view.height,
            "chain_id": genesis.chain_id,
            "genesis_hash": genesis.hash,
        }

    # ---- chain following -----------------------------------------------------------------------
    def _op_feed(self, request: dict[str, Any]) -> dict[str, Any]:
        blocks = request.get("blocks")
        if not isinstance(blocks, list):
            raise CoreFault("bad_request", "blocks is a list of [block, events] pairs")
        view = self.view
        notes: list[Note] = []
        refused: ForgedBlock | None = None
        for item in blocks:
            if not (
                isinstance(item, list)
                and len(item) in (2, 3)
                and isinstance(item[0], bytes)
                and isinstance(item[1], bytes)
                and (len(item) == 2 or isinstance(item[2], list))
            ):
                refused = ForgedBlock(
                    "malformed", view.height + 1, "each entry is [block bytes, events bytes, attestations?]"
                )
                break
            try:
                block, events = view.verify(item[0], item[1], item[2] if len(item) == 3 else None)
            except ForgedBlock as exc:
                refused = exc
                break
            block_notes = view.apply(block, events, self._me)
            view.advance(block)
            for note in block_notes:
                self._act(note)
            notes.extend(block_notes)
        if (
            any(n.kind not in _NO_CHECKPOINT for n in notes)
            or view.height - self._checkpoint_height >= _CHECKPOINT_EVERY
        ):
            self._save_checkpoint()
        if refused is not None:
            raise CoreFault("forged_block", f"{refused} (the core stays at height {view.height})")
        return {
            "height": view.height,
            "head_hash": view.head_hash,
            "time_ms": view.time_ms,
            "notes": [
                {"kind": n.kind, **{k: v for k, v in n.data.items() if k != "ciphertext"}} for n in notes
            ],
        }

    def _act(self, note: Note) -> None:
        if note.kind == "handover":
            self._receive_handover(note.data["epoch"], note.data["ciphertext"])
        elif note.kind == "handover_unreadable":
            self._alert(f"a handover of epoch {note.data['epoch']} to this core has no readable tx")
        elif note.kind == "master_published":
            self._on_master_published(note.data["epoch"], note.data["master_pk"], note.data["gatekeeper"])
        elif note.kind == "contract_key":
            self._check_contract_key(note.data["contract"], note.data["epoch"])

    def _receive_handover(self, epoch: int, ciphertext: bytes) -> None:
        """Open a handover addressed to this core; keep the key only if it is the published one."""
        assert self._ecdh is not None
        view = self.view
        info = codec.encode({"chain_id": view.chain_id, "worker": self._me, "epoch": epoch})
        try:
            payload = codec.decode(crypto.hpke_open(self._ecdh, ciphertext, info))
            if not isinstance(payload, dict) or payload.get("epoch") != epoch:
                raise ValueError("payload names another epoch")
            master = MasterKey(payload["master_secret"])
        except (crypto.DecryptError, codec.CodecError, ValueError, KeyError, TypeError) as exc:
            self._alert(f"handover of epoch {epoch} does not open: {exc}")
            return
        published = view.masters.get(epoch)
        if published is None or published["master_pk"] != master.public_key:
            self._alert(
                f"handover of epoch {epoch} carries a key that is not the published master_pk; ignored"
            )
            return
        if epoch not in self._masters:
            self._masters[epoch] = master
            self._save_master(epoch, master, confirmed=True)
            log.info("received the master key of epoch %d", epoch)

    def _on_master_published(self, epoch: int, master_pk: bytes, gatekeeper: bytes) -> None:
        mine = self._pending_masters.pop(epoch, None)
        if mine is None:
            return
        assert self._store is not None
        if gatekeeper == self._me and mine.public_key == master_pk:
            self._masters[epoch] = mine
            self._save_master(epoch, mine, confirmed=True)
            log.info("the master key of epoch %d is published", epoch)
        else:
            # Another gatekeeper's key won the epoch: ours was never used; drop it.
            self._store.delete(f"master-{epoch}")

    def _check_contract_key(self, contract: bytes, epoch: int) -> None:
        master = self._masters.get(epoch)
        published = self.view.contracts.get(contract, {}).get("keys", {}).get(epoch)
        if master is None or published is None:
            return
        keys = master.contract(contract)
        if (keys.ecdh.public_key, keys.signing.public_key, keys.evm_address) != (
            published["ecdh_pk"],
            published["sign_pk"],
            published["evm_address"],
        ):
            self._alert(
                f"contract key of 0x{contract.hex()} (epoch {epoch}) is not the one the master derives"
            )

    # ---- status and duties ---------------------------------------------------------------------
    def _op_status(self, request: dict[str, Any]) -> dict[str, Any]:
        view = self.view
        record = view.workers.get(self._me)
        return {
            "identity_pk": self._me,
            "role": self._role,
            "tee_type": self._platform.tee_type,
            "platform": self._platform.platform,
            "height": view.height,
            "head_hash": view.head_hash,
            "time_ms": view.time_ms,
            "registered": record is not None,
            "worker": record,
            "epoch": view.epoch,
            "epochs_held": sorted(self._masters),
            "alerts": list(self._alerts),
        }

    def _op_duties(self, request: dict[str, Any]) -> dict[str, Any]:
        view = self.view
        me = self._me
        record = view.workers.get(me)
        jobs = [
            {"job": job_id, "contract": job["contract"]}
            for job_id, job in view.jobs.items()
            if me in job["workers"] and me not in job["submitted"]
        ]
        duties: dict[str, Any] = {
            "height": view.height,
            "time_ms": view.time_ms,
            "registered": record is not None,
            "status": None if record is None else record["status"],
            "expires_at_ms": None if record is None else record["expires_at_ms"],
            "endpoint": None if record is None else record.get("endpoint"),
            "epoch": view.epoch,
            "holds_current": view.epoch >= 0 and view.epoch in self._masters,
            "heartbeat_blocks": view.heartbeat_blocks,
            "attestation_ttl_ms": view.attestation_ttl_ms,
            "jobs": jobs,
            "gatekeeper": None,
        }
        if self._role == "gatekeeper" and record is not None and record["role"] == "gatekeeper":
            duties["gatekeeper"] = self._gatekeeper_duties(record)
        return duties

    def _gatekeeper_duties(self, record: dict[str, Any]) -> dict[str, Any]:
        view = self.view
        me = self._me
        active = view.worker_eligible_for_key(me)
        init_master = active and view.epoch < 0 and record["operator"] in view.gatekeeper_operators
        publish_master = (
            view.pending_epoch
            if active and view.pending_epoch is not None and view.holds(me, view.epoch)
            else None
        )
        handovers: list[list[Any]] = []
        contract_keys: list[list[Any]] = []
        # Only a holder of the current epoch may post (the chain's gatekeeper set); current
        # epoch first, so a new worker becomes eligible before it receives the older ones.
        if active and view.epoch in self._masters and view.holds(me, view.epoch):
            held = sorted((e for e in self._masters if e <= view.epoch), reverse=True)
            for worker in view.workers:
                if worker == me or not view.worker_eligible_for_key(worker):
                    continue
                handovers.extend([worker, epoch] for epoch in held if not view.holds(worker, epoch))
            contract_keys = [
                [contract, view.epoch]
                for contract, info in view.contracts.items()
                if view.epoch not in info["keys"]
            ]
        return {
            "init_master": init_master,
            "publish_master": publish_master,
            "handovers": handovers,
            "contract_keys": contract_keys,
        }

    def _op_contract(self, request: dict[str, Any]) -> dict[str, Any]:
        """Public facts about a contract, and which of its secrets and blobs the core still needs."""
        assert self._executor is not None
        contract = _bytes(request, "contract", 32)
        info = self.view.contracts.get(contract)
        if info is None:
            raise CoreFault("unknown_contract", "no verified deployment of this contract")
        return {
            "contract": contract,
            "code_hash": info["code_hash"],
            "version": info["version"],
            "state_hash": info["state_hash"],
            "needs": self._executor.missing(self.view, contract),
        }

    def _op_job(self, request: dict[str, Any]) -> dict[str, Any]:
        job_id = _bytes(request, "job", 32)
        job = self.view.jobs.get(job_id)
        if job is None:
            raise CoreFault("unknown_job", "no verified pending job with this id")
        public = (
            "contract",
            "requester",
            "input_hash",
            "workers",
            "state_version",
            "state_hash",
            "deadline_height",
        )
        return {"job": job_id, **{name: job[name] for name in public}}

    # ---- registration and liveness -------------------------------------------------------------
    def _op_register(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._ecdh is not None and self._identity is not None
        operator = _bytes(request, "operator", 32)
        endpoint = _str(request, "endpoint")
        view = self.view
        tee_type = self._platform.tee_type
        fields = binding_fields(
            chain_id=view.chain_id,
            genesis_hash=view.genesis_hash,
            identity_pk=self._me,
            ecdh_pk=self._ecdh.public_key,
            tee_type=tee_type,
        )
        report_data = report_data_binding(**fields)
        attestation = self._platform.attest(report_data)
        endorsements = {
            name: value
            for name in ("collateral", "vek", "chain", "anchor")
            if (value := getattr(attestation.endorsements, name)) is not None
        }
        binding = {"operator": operator, "endpoint": endpoint, "chain_id": view.chain_id}
        return {
            "evidence": attestation.evidence,
            "tee_type": tee_type,
            "endorsements": endorsements,
            "identity_pk": self._me,
            "ecdh_pk": self._ecdh.public_key,
            "endpoint": endpoint,
            "binding_sig": self._identity.sign("umbra/worker-binding/v1", binding),
            "role": self._role,
            "report_data": report_data,
        }

    def _op_heartbeat(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._identity is not None
        height = _int(request, "height")
        if height > self.view.height:
            raise CoreFault(
                "future_height", f"height {height} is beyond the verified head {self.view.height}"
            )
        body = {"chain_id": self.view.chain_id, "worker": self._me, "height": height}
        return {
            "worker": self._me,
            "height": height,
            "signature": self._identity.sign("umbra/heartbeat/v1", body),
        }

    # ---- gatekeeper ----------------------------------------------------------------------------
    def _op_generate_master(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._identity is not None
        self._require_gatekeeper()
        epoch = _int(request, "epoch")
        view = self.view
        if epoch in view.masters:
            raise CoreFault("master_exists", f"epoch {epoch} already has a published master key")
        if not ((epoch == 0 and view.epoch < 0) or epoch == view.pending_epoch):
            raise CoreFault("no_rotation", f"epoch {epoch} is neither the first nor a pending rotation")
        # Idempotent until published: a host that lost the reply gets the same key again, so the
        # chain never sees two masters from this core for one epoch.
        master = self._pending_masters.get(epoch)
        if master is None:
            master = MasterKey(self._rng(32))
            self._save_master(epoch, master, confirmed=False)  # sealed before anyone learns master_pk
            self._pending_masters[epoch] = master
        body = {"chain_id": view.chain_id, "epoch": epoch, "master_pk": master.public_key}
        return {
            "gatekeeper": self._me,
            "epoch": epoch,
            "master_pk": master.public_key,
            "signature": self._identity.sign("umbra/master-key/v1", body),
        }

    def _op_handover(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._identity is not None
        self._require_gatekeeper()
        worker = _bytes(request, "worker", 32)
        epoch = _int(request, "epoch")
        master = self._master(epoch)
        view = self.view
        record = view.workers.get(worker)
        if record is None:
            raise CoreFault("not_registered", "no verified registration of this worker: no key for it")
        if not view.worker_eligible_for_key(worker):
            why = "expired" if record["status"] == "active" else record["status"]
            raise CoreFault("worker_ineligible", f"the worker is {why}: no key for it")
        info = codec.encode({"chain_id": view.chain_id, "worker": worker, "epoch": epoch})
        ciphertext = crypto.hpke_seal(
            record["ecdh_pk"], codec.encode({"epoch": epoch, "master_secret": master.secret}), info
        )
        body = {
            "chain_id": view.chain_id,
            "epoch": epoch,
            "worker": worker,
            "ciphertext_hash": codec.sha256(ciphertext),
        }
        return {
            "gatekeeper": self._me,
            "worker": worker,
            "epoch": epoch,
            "ciphertext": ciphertext,
            "signature": self._identity.sign("umbra/handover/v1", body),
        }

    def _op_contract_key(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._identity is not None
        self._require_gatekeeper()
        contract = _bytes(request, "contract", 32)
        epoch = _int(request, "epoch")
        if contract not in self.view.contracts:
            raise CoreFault("unknown_contract", "no verified deployment of this contract")
        public = self._contract_public(contract, epoch)
        body = {"chain_id": self.view.chain_id, "contract": contract, "epoch": epoch, **public}
        return {
            "gatekeeper": self._me,
            "contract": contract,
            "epoch": epoch,
            **public,
            "signature": self._identity.sign("umbra/contract-key/v1", body),
        }

    def _op_contract_public(self, request: dict[str, Any]) -> dict[str, Any]:
        contract = _bytes(request, "contract", 32)
        epoch = _int(request, "epoch")
        return {"contract": contract, "epoch": epoch, **self._contract_public(contract, epoch)}

    def _contract_public(self, contract: bytes, epoch: int) -> dict[str, bytes]:
        keys = self._master(epoch).contract(contract)
        return {
            "ecdh_pk": keys.ecdh.public_key,
            "sign_pk": keys.signing.public_key,
            "evm_address": keys.evm_address,
        }

    # ---- confidential execution ----------------------------------------------------------------
    def _op_execute(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._executor is not None
        return self._executor.execute(self.view, self._masters, request)

    def _op_query(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._executor is not None
        return self._executor.query(self.view, self._masters, request)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
