"""The core's own view of the chain: a light client that believes only what it has verified.

The host feeds every block with its events. Before any event counts, `ChainView.verify` checks
that the block extends the head the core already trusts (height and parent hash), that the
genesis sequencer signed the header, that the txs hash to `tx_root` and the events to
`events_root`. The view then keeps the few public facts a core acts on: workers and their
status, master key publications and who holds which epoch, contracts (code hash, settled state,
published keys) and pending jobs. Tx arguments the core needs (a handover's ciphertext, a job
request's reply key) are read from the verified txs themselves, found through the event's index.
Two kinds of ciphertext are kept as well, in memory only and within a budget: a job request's
sealed input (until the job is assigned elsewhere or closes) and each contract's latest sealed
state (from the result tx that settled it), so that the host need not fetch and resend what the
core has already verified.

Everything here is public chain data; the view is checkpointed in sealed storage only so that
the host cannot feed a restarted core a rolled-back or forged history as its starting point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from umbra import RUNTIME_VERSION, codec, crypto
from umbra.chain.types import Block, Event, GenesisConfig, MalformedError, SignedTx, merkle_root

__all__ = ["ChainView", "ForgedBlock", "KeptCiphertexts", "Note"]

_ATTEST_DOMAIN = "umbra/chain-attest/v1"  # what evm-ordering nodes sign per derived block
# Ciphertexts kept from verified txs (see KeptCiphertexts); past these the host sends them.
_INPUTS_BYTES = 32 * 1024 * 1024
_STATES_BYTES = 64 * 1024 * 1024


class ForgedBlock(Exception):
    """A block the core refuses: `check` names the commitment that failed."""

    def __init__(self, check: str, height: int, message: str) -> None:
        super().__init__(f"block {height} refused ({check}): {message}")
        self.check = check
        self.height = height


@dataclass(frozen=True)
class Note:
    """Something a verified block says that the core must act on (or tell its host)."""

    kind: str
    data: dict[str, Any]


def _genesis_setting(genesis: GenesisConfig, module: str, name: str, default: int) -> int:
    section = genesis.modules.get(module) or {}
    value = section.get(name, default) if isinstance(section, dict) else default
    return int(value)


class KeptCiphertexts:
    """Ciphertexts from verified txs by a key (sealed inputs by job id, sealed states by their
    hash), within a byte budget. Not checkpointed: after a restart, or past the budget, the host
    sends what is missing, checked against the hash the chain recorded."""

    def __init__(self, budget: int) -> None:
        self._items: dict[bytes, bytes] = {}
        self._size = 0
        self._budget = budget

    def get(self, key: bytes) -> bytes | None:
        return self._items.get(key)

    def put(self, key: bytes, sealed: bytes) -> None:
        if key in self._items or self._size + len(sealed) > self._budget:
            return
        self._items[key] = sealed
        self._size += len(sealed)

    def drop(self, key: bytes) -> None:
        sealed = self._items.pop(key, None)
        if sealed is not None:
            self._size -= len(sealed)


@dataclass
class ChainView:
    chain_id: str
    genesis_hash: bytes
    sequencer: bytes
    heartbeat_blocks: int
    attestation_ttl_ms: int
    gatekeeper_operators: list[bytes]
    height: int = -1  # -1: not even block 0 seen
    head_hash: bytes = b""
    time_ms: int = 0
    workers: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    epoch: int = -1
    pending_epoch: int | None = None
    masters: dict[int, dict[str, Any]] = field(default_factory=dict)
    holders: dict[int, list[bytes]] = field(default_factory=dict)
    contracts: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    # evm ordering (no sequencer key): the node keys genesis names, and how many must attest a block.
    evm_nodes: list[bytes] = field(default_factory=list)
    evm_quorum: int = 0
    # The block being applied (not persisted): handlers stamp records with its height and time.
    applying: tuple[int, int] = (0, 0)
    # Not persisted: sealed inputs of pending jobs by job id, contracts' latest sealed states by hash.
    inputs: KeptCiphertexts = field(
        default_factory=lambda: KeptCiphertexts(_INPUTS_BYTES), compare=False, repr=False
    )
    states: KeptCiphertexts = field(
        default_factory=lambda: KeptCiphertexts(_STATES_BYTES), compare=False, repr=False
    )

    @classmethod
    def from_genesis(cls, genesis: GenesisConfig) -> ChainView:
        evm = genesis.params.get("ordering") == "evm"
        return cls(
            chain_id=genesis.chain_id,
            genesis_hash=genesis.hash,
            sequencer=genesis.sequencer,
            heartbeat_blocks=_genesis_setting(genesis, "registry", "heartbeat_blocks", 20),
            attestation_ttl_ms=_genesis_setting(genesis, "registry", "attestation_ttl_ms", 24 * 3600 * 1000),
            gatekeeper_operators=list((genesis.modules.get("keys") or {}).get("gatekeeper_operators", [])),
            evm_nodes=[bytes(k) for k in genesis.params.get("evm_nodes", [])] if evm else [],
            evm_quorum=max(1, int(genesis.params.get("evm_quorum", 2))) if evm else 0,
        )

    # ---- persistence (public data; sealed only against rollback and forgery by the host) ---------
    def to_cbor(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "genesis_hash": self.genesis_hash,
            "sequencer": self.sequencer,
            "heartbeat_blocks": self.heartbeat_blocks,
            "attestation_ttl_ms": self.attestation_ttl_ms,
            "gatekeeper_operators": self.gatekeeper_operators,
            "height": self.height,
            "head_hash": self.head_hash,
            "time_ms": self.time_ms,
            "workers": self.workers,
            "epoch": self.epoch,
            "pending_epoch": self.pending_epoch,
            "masters": self.masters,
            "holders": self.holders,
            "contracts": self.contracts,
            "jobs": self.jobs,
            "evm_nodes": self.evm_nodes,
            "evm_quorum": self.evm_quorum,
        }

    @classmethod
    def from_cbor(cls, value: dict[str, Any]) -> ChainView:
        return cls(**value)

    # ---- verification ------------------------------------------------------------------------
    def verify(
        self, raw_block: bytes, raw_events: bytes, attestations: list[Any] | None = None
    ) -> tuple[Block, list[Event]]:
        """The block and its events, once every commitment holds; ForgedBlock otherwise.

        A chain ordered by an EVM inbox has no sequencer: its blocks are unsigned, and a block
        counts only when `evm_quorum` distinct node keys named in genesis attest its hash."""
        expected = self.height + 1
        try:
            block = Block.decode(raw_block)
        except MalformedError as exc:
            raise ForgedBlock("malformed", expected, f"block does not decode: {exc}") from None
        header = block.header
        if header.height != expected:
            raise ForgedBlock("height", header.height, f"expected block {expected}, got {header.height}")
        if header.runtime_version != RUNTIME_VERSION:
            raise ForgedBlock(
                "runtime_version",
                expected,
                f"block uses runtime {header.runtime_version}, this core runs {RUNTIME_VERSION}",
            )
        if header.author != self.sequencer:
            raise ForgedBlock("author", expected, "block is not authored by the genesis sequencer")
        if expected == 0:
            # Block 0 is unsigned; its parent field is the genesis hash, which names the chain.
            if header.parent != self.genesis_hash:
                raise ForgedBlock("parent", 0, "block 0 does not commit to the genesis this core was given")
        else:
            if header.parent != self.head_hash:
                raise ForgedBlock("parent", expected, "block does not extend the verified head")
            if self.evm_quorum:
                self._check_quorum(expected, header.hash, attestations or [])
            elif not block.verify_signature():
                raise ForgedBlock("signature", expected, "the sequencer's signature does not verify")
            if header.time_ms <= self.time_ms:
                raise ForgedBlock("time_ms", expected, "block time does not advance")
        if merkle_root([codec.sha256(raw) for raw in block.txs]) != header.tx_root:
            raise ForgedBlock("tx_root", expected, "the txs do not hash to the header's tx_root")
        try:
            items = codec.decode(raw_events)
            if not isinstance(items, list):
                raise MalformedError("events must be a list")
            events = [_event(item) for item in items]
        except (codec.CodecError, MalformedError, KeyError, TypeError) as exc:
            raise ForgedBlock("events", expected, f"events do not decode: {exc}") from None
        if merkle_root([event.hash() for event in events]) != header.events_root:
            raise ForgedBlock("events_root", expected, "the events do not hash to the header's events_root")
        return block, events

    def _check_quorum(self, height: int, block_hash: bytes, attestations: list[Any]) -> None:
        trusted = set(self.evm_nodes)
        origins: set[tuple[Any, Any]] = set()
        signers: set[bytes] = set()
        for item in attestations:
            if not isinstance(item, dict) or item.get("node") not in trusted:
                continue
            origin = (item.get("number"), item.get("hash"))
            body = {
                "chain_id": self.chain_id,
                "height": height,
                "block": block_hash,
                "evm_number": origin[0],
                "evm_hash": origin[1],
            }
            signature = item.get("sig")
            if isinstance(signature, bytes) and crypto.verify(_ATTEST_DOMAIN, body, signature, item["node"]):
                signers.add(item["node"])
                origins.add(origin)
        if len(origins) > 1:
            raise ForgedBlock("attestations", height, "nodes attest this block from different EVM blocks")
        if len(signers) < self.evm_quorum:
            raise ForgedBlock(
                "attestations",
                height,
                f"{len(signers)} of the genesis nodes attest this block; {self.evm_quorum} must (ask more nodes)",
            )

    def advance(self, block: Block) -> None:
        self.height = block.header.height
        self.head_hash = block.header.hash
        self.time_ms = block.header.time_ms

    # ---- facts -------------------------------------------------------------------------------
    def apply(self, block: Block, events: list[Event], me: bytes) -> list[Note]:
        """Update the facts from one verified block; return what concerns `me`."""
        notes: list[Note] = []
        self.applying = (block.header.height, block.header.time_ms)
        for event in events:
            handler = _HANDLERS.get((event.module, event.name))
            if handler is None:
                continue
            tx = _tx_at(block, event.tx_index) if (event.module, event.name) in _NEEDS_TX else None
            try:
                note = handler(self, event.data, tx, me)
            except (KeyError, TypeError, ValueError, AttributeError):
                # A signed block whose event lacks a field is the sequencer's bug; skipping the
                # event (rather than dying) keeps the core following, and changes no secret.
                continue
            if note is not None:
                notes.append(note)
        return notes

    def worker_eligible_for_key(self, worker: bytes) -> bool:
        """Attested, not expired, not revoked: may receive the master key (and run jobs)."""
        record = self.workers.get(worker)
        return record is not None and record["status"] == "active" and record["expires_at_ms"] > self.time_ms

    def holds(self, worker: bytes, epoch: int) -> bool:
        return worker in self.holders.get(epoch, [])

    def _hold(self, worker: bytes, epoch: int) -> None:
        members = self.holders.setdefault(epoch, [])
        if worker not in members:
            members.append(worker)


def _event(item: Any) -> Event:
    if not isinstance(item, dict) or set(item) != {"module", "name", "data", "tx"}:
        raise MalformedError("an event is {module, name, data, tx}")
    if not isinstance(item["data"], dict):
        raise MalformedError("event data must be a map")
    return Event.from_cbor(item)


def _tx_at(block: Block, index: int | None) -> SignedTx | None:
    if index is None or not 0 <= index < len(block.txs):
        return None
    try:
        return SignedTx.decode(block.txs[index])
    except MalformedError:
        return None


def _args(tx: SignedTx | None, module: str, method: str) -> dict[str, Any] | None:
    if tx is None or tx.tx.call.module != module or tx.tx.call.method != method:
        return None
    return tx.tx.call.args


# ---- registry --------------------------------------------------------------------------------------
def _worker_registered(view: ChainView, data: dict[str, Any], tx: SignedTx | None, me: bytes) -> Note | None:
    worker = data["worker"]
    registration = _args(tx, "registry", "register_worker") or {}
    evidence = registration.get("evidence")
    view.workers[worker] = {
        "operator": data["operator"],
        "ecdh_pk": data["ecdh_pk"],
        "role": data["role"],
        "tee_type": data["tee_type"],
        "platform": data["platform"],
        "measurement": data["measurement"],
        "status": "active",
        "expires_at_ms": data["expires_at_ms"],
        "endpoint": registration.get("endpoint"),
        "evidence_hash": codec.sha256(evidence) if isinstance(evidence, bytes) else None,
    }
    return (
        Note("registered", {"worker": worker})
        if worker == me
        else Note("worker_registered", {"worker": worker})
    )


def _worker_reattested(view: ChainView, data: dict[str, Any], tx: SignedTx | None, me: bytes) -> Note | None:
    record = view.workers.get(data["worker"])
    if record is not None:
        record["status"] = "active"
        record["expires_at_ms"] = data["expires_at_ms"]
        registration = _args(tx, "registry", "register_worker") or {}
        if registration.get("endpoint") is not None:
            record["endpoint"] = registration["endpoint"]
        if isinstance(registration.get("evidence"), bytes):
            record["evidence_hash"] = codec.sha256(registration["evidence"])
    return Note("reattested", {"worker": data["worker"]}) if data["worker"] == me else None


def _status(status: str) -> Any:
    def handler(view: ChainView, data: dict[str, Any], tx: SignedTx | None, me: bytes) -> Note | None:
        record = view.workers.get(data["worker"])
        if record is not None and not (record["status"] == "revoked" and status != "revoked"):
            record["status"] = status
        return Note(f"worker_{status}", {"worker": data["worker"]}) if data["worker"] == me else None

    return handler


# ---- keys ------------------------------------------------------------------------------------------
def _master_published(view: ChainView, data: dict[str, Any], tx: SignedTx | None, me: bytes) -> Note | None:
    epoch = int(data["epoch"])
    view.masters[epoch] = {"master_pk": data["master_pk"], "gatekeeper": data["gatekeeper"]}
    view.epoch = epoch
    view.pending_epoch = None
    view._hold(data["gatekeeper"], epoch)
    return Note(
        "master_published", {"epoch": epoch, "master_pk": data["master_pk"], "gatekeeper": data["gatekeeper"]}
    )


def _key_handed_over(view: ChainView, data: dict[str, Any], tx: SignedTx | None, me: bytes) -> Note | None:
    epoch, worker = int(data["epoch"]), data["worker"]
    view._hold(worker, epoch)
    if worker != me:
        return None
    args = _args(tx, "keys", "handover")
    if args is None:
        return Note("handover_unreadable", {"epoch": epoch})
    return Note(
        "handover", {"epoch": epoch, "ciphertext": args["ciphertext"], "gatekeeper": data["gatekeeper"]}
    )


def _rotation_started(view: ChainView, data: dict[str, Any], tx: SignedTx | None, me: bytes) -> Note | None:
    view.pending_epoch = int(data["epoch"])
    return Note("rotation_started", {"epoch": view.pending_epoch})


def _contract_key_published(
    view: ChainView, data: dict[str, Any], tx: SignedTx | None, me: bytes
) -> Note | None:
    contract = view.contracts.get(data["contract"])
    if contract is not None:
        contract["keys"][int(data["epoch"])] = {
            "ecdh_pk": data["ecdh_pk"],
            "sign_pk": data["sign_pk"],
            "evm_address": data["evm_address"],
        }
    return Note("contract_key", {"contract": data["contract"], "epoch": int(data["epoch"])})


# ---- contracts -------------------------------------------------------------------------------------
def _operators_set(view: ChainView, data: dict[str, Any], tx: SignedTx | None, me: bytes) -> Note | None:
    view.gatekeeper_operators = list(data["operators"])
    return None


def _contract_deployed(view: ChainView, data: dict[str, Any], tx: SignedTx | None, me: bytes) -> Note | None:
    manifest = (_args(tx, "contracts", "deploy") or {}).get("manifest") or {}
    allowlist = manifest.get("http_allowlist", []) if isinstance(manifest, dict) else []
    view.contracts[data["contract"]] = {
        "owner": data["owner"],
        "code_hash": data["code_hash"],
        "version": 0,
        "state_hash": None,
        "keys": {},
        "http_allowlist": [h for h in allowlist if isinstance(h, str)],
        "secrets": {},
        "blobs": {},
    }
    return Note("contract_deployed", {"contract": data["contract"]})


def _secret_uploaded(view: ChainView, data: dict[str, Any], tx: SignedTx | None, me: bytes) -> Note | None:
    contract = view.contracts.get(data["contract"])
    if contract is not None:
        contract["secrets"][data["name"]] = data["hash"]
    return None


def _blob_registered(view: ChainView, data: dict[str, Any], tx: SignedTx | None, me: bytes) -> Note | None:
    contract = view.contracts.get(data["contract"])
    if contract is not None:
        contract["blobs"][data["hash"]] = data["size"]
    return None


def _state_updated(view: ChainView, data: dict[str, Any], tx: SignedTx | None, me: bytes) -> Note | None:
    contract = view.contracts.get(data["contract"])
    if contract is not None:
        if contract["state_hash"] is not None:
            view.states.drop(contract["state_hash"])
        contract["version"] = int(data["version"])
        contract["state_hash"] = data["state_hash"]
        # The settling result tx carries the sealed state (the settlement checked its hash).
        blob = (_args(tx, "compute", "submit_result") or {}).get("state_blob")
        if isinstance(blob, bytes) and codec.sha256(blob) == data["state_hash"]:
            view.states.put(data["state_hash"], blob)
    return None


# ---- compute ---------------------------------------------------------------------------------------
def _job_requested(view: ChainView, data: dict[str, Any], tx: SignedTx | None, me: bytes) -> Note | None:
    args = _args(tx, "compute", "request") or {}
    value = args.get("value", 0)
    view.jobs[data["job"]] = {
        "contract": data["contract"],
        "requester": data["requester"],
        "replicas": data["replicas"],
        "value": value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0,
        "nonce": data["nonce"],
        "input_hash": data["input_hash"],
        "reply_pk": data["reply_pk"],
        "workers": [],
        "state_version": None,
        "state_hash": None,
        "deadline_height": None,
        "submitted": [],
    }
    sealed = args.get("sealed_input")
    if isinstance(sealed, bytes):
        view.inputs.put(data["job"], sealed)
    return None


def _job_assigned(view: ChainView, data: dict[str, Any], tx: SignedTx | None, me: bytes) -> Note | None:
    job = view.jobs.get(data["job"])
    if job is None:
        return None
    job.update(
        workers=list(data["workers"]),
        # What the contract sees as ctx.height/time_ms: the same on every replica.
        assigned_height=view.applying[0],
        assigned_time_ms=view.applying[1],
        deadline_height=data["deadline_height"],
        state_version=data["state_version"],
        state_hash=data["state_hash"],
        submitted=[],
    )
    if me not in job["workers"]:
        view.inputs.drop(data["job"])
        return None
    return Note("job_assigned", {"job": data["job"]})


def _job_reassigned(view: ChainView, data: dict[str, Any], tx: SignedTx | None, me: bytes) -> Note | None:
    """The job went back to its queue (deadline missed); a JobAssigned names its new workers."""
    job = view.jobs.get(data["job"])
    if job is not None:
        job.update(workers=[], submitted=[], deadline_height=None)
    return None


def _result_submitted(view: ChainView, data: dict[str, Any], tx: SignedTx | None, me: bytes) -> Note | None:
    job = view.jobs.get(data["job"])
    if job is not None and data["worker"] not in job["submitted"]:
        job["submitted"].append(data["worker"])
    return None


def _job_closed(view: ChainView, data: dict[str, Any], tx: SignedTx | None, me: bytes) -> Note | None:
    view.jobs.pop(data["job"], None)
    view.inputs.drop(data["job"])
    return None


# Events whose tx the core reads: a registration's endpoint, a handover's ciphertext, a deploy's
# manifest (its http allowlist), a request's value and sealed input, a settled state's ciphertext.
_NEEDS_TX = frozenset(
    {
        ("registry", "WorkerRegistered"),
        ("registry", "WorkerReattested"),
        ("keys", "KeyHandedOver"),
        ("contracts", "ContractDeployed"),
        ("contracts", "ContractStateUpdated"),
        ("compute", "JobRequested"),
    }
)

_HANDLERS: dict[tuple[str, str], Any] = {
    ("registry", "WorkerRegistered"): _worker_registered,
    ("registry", "WorkerReattested"): _worker_reattested,
    ("registry", "WorkerRevoked"): _status("revoked"),
    ("registry", "WorkerExpired"): _status("expired"),
    ("registry", "WorkerUnresponsive"): _status("unresponsive"),
    ("registry", "WorkerOnline"): _status("active"),
    ("keys", "MasterKeyPublished"): _master_published,
    ("keys", "KeyHandedOver"): _key_handed_over,
    ("keys", "RotationStarted"): _rotation_started,
    ("keys", "ContractKeyPublished"): _contract_key_published,
    ("keys", "GatekeeperOperatorsSet"): _operators_set,
    ("contracts", "ContractDeployed"): _contract_deployed,
    ("contracts", "ContractStateUpdated"): _state_updated,
    ("contracts", "SecretUploaded"): _secret_uploaded,
    ("contracts", "BlobRegistered"): _blob_registered,
    ("compute", "JobRequested"): _job_requested,
    ("compute", "JobAssigned"): _job_assigned,
    ("compute", "JobReassigned"): _job_reassigned,
    ("compute", "ResultSubmitted"): _result_submitted,
    ("compute", "JobSettled"): _job_closed,
    ("compute", "JobFailed"): _job_closed,
}
