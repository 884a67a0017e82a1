"""The untrusted host of a worker (or gatekeeper): it moves bytes, the core decides.

    host = Host(config, PipeTransport(core_args))
    host.start()                    # genesis -> core init (resumes from sealed storage)
    host.run(stop_event)            # follow the node, feed the core, do what the core says is due

Each step pulls new blocks from the node's /sync/blocks and feeds them to the core, which checks
them itself. Then it asks the core for its duties (derived from the verified chain, never from
the host) and carries them out with operator-signed txs: register or re-attest, heartbeat,
execute assigned jobs and submit their results, and, in the gatekeeper role, the key duties of
`umbra.gatekeeper`. Everything the host handles is public or ciphertext: it never holds a key,
an input or an output in the clear, which is why the core runs in another process.

A new block wakes the loop through the node's /events stream. Job results go to a poster thread,
which sends all that are waiting in one POST /txs while the loop goes on with the next job.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from umbra import codec, crypto
from umbra.chain.modules.contracts import MAX_INLINE_STATE
from umbra.chain.types import Call, GenesisConfig
from umbra.client._node import NodeClient, UmbraError
from umbra.enclave.transport import CoreError, CoreTransport
from umbra.worker._faults import HOST_FAULTS, Malice
from umbra.worker.submitter import Submitter, TxFailed

__all__ = ["DutyHook", "Host", "HostConfig", "HostError", "RegistrationRefused"]

log = logging.getLogger("umbra.worker")

_SYNC_BATCH = 200
_SYNC_BYTES = 8 * 1024 * 1024
_IN_FLIGHT_S = 12.0  # a posted duty is not repeated for this long (its tx is on its way)
_STATE_CACHE_BYTES = 64 * 1024 * 1024  # sealed contract states kept by hash (queries, next jobs)
_IDLE_POLL_S = 1.0  # with the node's event stream waking the loop, the poll is only a fallback
_RESULTS_PER_POST = 200  # results posted in one POST /txs


class HostError(UmbraError):
    """The host cannot go on (no node, a core that refuses to start); `message` says what to do."""


class RegistrationRefused(HostError):
    """The chain refused this worker's registration: its evidence, policy or binding is wrong."""


DutyHook = Callable[["Host", dict[str, Any]], None]

FAULTS = ("stall", "wrong-output", "crash-after:N", *HOST_FAULTS)


def _crash_after(fault: str | None) -> int | None:
    if fault is None or not fault.startswith("crash-after:"):
        return None
    return max(1, int(fault.partition(":")[2]))


def check_fault(fault: str | None) -> None:
    """Refuse an unknown --fault value (a usage error)."""
    if fault is None or fault in ("stall", "wrong-output", *HOST_FAULTS):
        return
    if fault.startswith("crash-after:") and fault.partition(":")[2].isdigit():
        return
    raise HostError("usage", f"--fault is one of {', '.join(FAULTS)}, not {fault!r}")


@dataclass(frozen=True)
class HostConfig:
    node_url: str
    operator: crypto.SigningKey
    endpoint: str
    role: str = "worker"
    on_seal_failure: str = "fail"  # or "new-identity": quarantine unopenable sealed files and start over
    expected_genesis: bytes | None = None
    # Where the host keeps its public records (the registered evidence, for GET /info).
    state_dir: Path | None = None
    attest_urls: tuple[str, ...] = ()
    # Chaos testing: "stall" (take jobs, never answer) or "crash-after:N" (die after N results).
    # A lying enclave ("wrong-output") is the core's fault flag, not the host's. The malicious
    # host behaviours of the adversarial tests are in umbra.worker._faults (HOST_FAULTS).
    fault: str | None = None
    poll_s: float = 0.1
    query_wait_s: float = 10.0


@dataclass(frozen=True)
class _Posted:
    """A duty's tx awaiting its receipt check."""

    at: float
    what: str
    key: Any


class _InFlight:
    """Duties already posted, so the next step does not post them again while their tx travels.
    Shared by the chain loop and the result poster (hence the lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._posted: dict[Any, tuple[float, bytes | None]] = {}
        self._unchecked: dict[bytes, _Posted] = {}  # tx hash -> what to check

    def busy(self, key: Any) -> bool:
        with self._lock:
            entry = self._posted.get(key)
        return entry is not None and time.monotonic() - entry[0] < _IN_FLIGHT_S

    def mark(self, key: Any, tx_hash: bytes | None, what: str = "") -> None:
        """`key` was posted (its tx is `tx_hash`, None if not admitted); with `what`, its receipt is
        checked later (see Host._check_receipts)."""
        now = time.monotonic()
        with self._lock:
            self._posted[key] = (now, tx_hash)
            if tx_hash is not None and what:
                self._unchecked[tx_hash] = _Posted(now, what, key)

    def prune(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._posted = {k: v for k, v in self._posted.items() if now - v[0] < _IN_FLIGHT_S}

    def unchecked(self) -> list[tuple[bytes, _Posted]]:
        with self._lock:
            return list(self._unchecked.items())

    def checked(self, tx_hash: bytes, *, release: bool) -> None:
        """The receipt of `tx_hash` is settled; with `release`, its duty may come due again at once
        (a heartbeat)."""
        with self._lock:
            self._unchecked.pop(tx_hash, None)
            if release:
                self._posted = {k: v for k, v in self._posted.items() if v[1] != tx_hash}


@dataclass(frozen=True)
class _Result:
    """A job result the core signed, on its way to the node."""

    key: Any
    submit: dict[str, Any]  # compute.submit_result args
    publish_state: bool  # the new state must be in the node's blob store before the result lands


class Host:
    def __init__(
        self, config: HostConfig, transport: CoreTransport, *, hooks: tuple[DutyHook, ...] = ()
    ) -> None:
        if config.role not in ("worker", "gatekeeper"):
            raise ValueError("role is worker or gatekeeper")
        self.config = config
        self.core = transport
        self.client = NodeClient(config.node_url, timeout=30)
        # evm ordering: the other nodes whose attestations the core needs besides the primary's.
        self._attesters = [NodeClient(url, timeout=10) for url in config.attest_urls]
        self._evm_quorum = 0
        self._hooks = hooks
        self._height = -1
        self._height_changed = threading.Condition()
        self._in_flight = _InFlight()
        self._last_heartbeat: int | None = None
        self._duties: dict[str, Any] = {}
        self._warned: set[str] = set()
        self._code_cache: dict[bytes, bytes] = {}
        # Sealed states by their hash (content-addressed, so never stale): a query or job on a state
        # this host has already fetched or produced needs no round trip to the node.
        self._states: OrderedDict[bytes, bytes] = OrderedDict()
        self._states_size = 0
        self._states_lock = threading.Lock()
        # Set when the node commits a block (its /events stream), so the loop syncs at once.
        self._wake = threading.Event()
        self._events_live = False
        self.identity: bytes = b""
        self.init_info: dict[str, Any] = {}
        self.chain_id = ""
        self.submitter: Submitter | None = None
        self.fatal: HostError | None = None
        self._results: queue.Queue[_Result] = queue.Queue()  # run_job -> _post_results
        self._results_posted = 0
        self._crash_after = _crash_after(config.fault)
        self._malice = Malice(config.fault) if config.fault in HOST_FAULTS else None  # tests only

    # ---- start-up ------------------------------------------------------------------------------
    def _genesis(self) -> bytes:
        reply = self.client.get("/genesis")
        raw = codec.from_hex(reply["genesis"], what="genesis")
        genesis = GenesisConfig.from_cbor(codec.decode(raw))
        if codec.to_hex(genesis.hash) != reply.get("hash"):
            raise HostError("bad_genesis", "the node's genesis does not match the hash it advertises")
        if self.config.expected_genesis is not None and genesis.hash != self.config.expected_genesis:
            raise HostError("wrong_chain", "the node serves another chain than the genesis hash given")
        self.chain_id = genesis.chain_id
        if genesis.params.get("ordering") == "evm":
            self._evm_quorum = max(1, int(genesis.params.get("evm_quorum", 2)))
        return raw

    def start(self, *, timeout: float = 60.0) -> dict[str, Any]:
        """Fetch the genesis (waiting for the node), start the core, resume its sealed state."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                genesis = self._genesis()
                break
            except UmbraError as exc:
                if exc.code not in ("unreachable", "timeout") or time.monotonic() > deadline:
                    raise HostError(
                        exc.code, f"cannot fetch the genesis from {self.config.node_url}: {exc.message}"
                    ) from None
                time.sleep(0.2)
        request = {"op": "init", "genesis": genesis, "role": self.config.role}
        try:
            info = self.core.call(request)
        except CoreError as exc:
            if exc.code != "sealed_unopenable":
                raise HostError(exc.code, exc.message) from None
            if self.config.on_seal_failure != "new-identity":
                raise HostError(
                    exc.code, f"{exc.message} Restart with --on-seal-failure new-identity to do so."
                ) from None
            log.error("%s Starting over as a new identity.", exc.message)
            info = self.core.call({**request, "reset": True})
        self.init_info = info
        self.identity = info["identity_pk"]
        self._height = int(info["height"])
        self.submitter = Submitter(self.client, self.config.operator, self.chain_id)
        log.info(
            "%s %s (%s/%s) %s at height %d",
            self.config.role,
            codec.to_hex(self.identity),
            info["tee_type"],
            info["platform"],
            "resumed from sealed storage" if info["resumed"] else "created",
            self._height,
        )
        if not info["persistent"]:
            log.warning("this TEE has no sealing key: a restart registers a new identity")
        return info

    def close(self) -> None:
        self.core.close()
        self.client.close()
        for client in self._attesters:
            client.close()

    # ---- the loop ------------------------------------------------------------------------------
    @property
    def height(self) -> int:
        return self._height

    def run(self, stop: threading.Event) -> None:
        """Step until `stop` is set or a fatal refusal (kept in `self.fatal`)."""
        threading.Thread(target=self._follow_events, args=(stop,), name="node-events", daemon=True).start()
        threading.Thread(target=self._post_results, args=(stop,), name="results", daemon=True).start()
        while not stop.is_set():
            try:
                fed = self.step()
            except HostError as exc:
                self.fatal = exc
                log.error("stopping: %s", exc.message)
                stop.set()
                return
            except CoreError as exc:
                if exc.code == "core_gone":
                    self.fatal = HostError(exc.code, exc.message)
                    log.error("stopping: %s", exc.message)
                    stop.set()
                    return
                log.warning("core refused: %s", exc)
                stop.wait(1.0)
                continue
            except UmbraError as exc:
                log.warning("node: %s (%s)", exc.message, exc.code)
                stop.wait(1.0)
                continue
            if not fed:
                # A new block wakes the loop at once; the poll is the fallback without the stream.
                idle = max(self.config.poll_s, _IDLE_POLL_S) if self._events_live else self.config.poll_s
                self._wake.wait(idle)
                self._wake.clear()

    def _follow_events(self, stop: threading.Event) -> None:
        """Follow the node's server-sent events and wake the loop on every committed block, so a
        job assigned in a block starts within milliseconds, not a poll interval later."""
        while not stop.is_set():
            try:
                timeout = httpx.Timeout(10.0, read=60.0)  # the node sends a keep-alive every 15 s
                with (
                    httpx.Client(base_url=self.config.node_url, timeout=timeout) as client,
                    client.stream("GET", "/events") as reply,
                ):
                    if reply.status_code != 200:
                        raise httpx.HTTPError(f"GET /events answered {reply.status_code}")
                    self._events_live = True
                    self._wake.set()  # blocks may have come while the stream was down
                    # The stream carries only `block` events and keep-alive comments: any bytes are
                    # a reason to sync (a keep-alive's sync finds nothing), so none are parsed.
                    for _ in reply.iter_raw():
                        if stop.is_set():
                            return
                        self._wake.set()
            except httpx.HTTPError as exc:
                log.debug("node event stream: %s", exc)
            finally:
                self._events_live = False
            stop.wait(1.0)

    def step(self) -> int:
        fed = self.sync()
        if fed or not self._duties:
            self._duties = self.core.call({"op": "duties"})
            self._act(self._duties)
        return fed

    def sync(self) -> int:
        """Feed the core every block the node has past the core's head; return how many."""
        reply = self.client.get("/sync/blocks", **{"from": self._height + 1, "limit": _SYNC_BATCH})
        batch: list[list[Any]] = []
        size = 0
        for item in reply.get("blocks", []):
            block = codec.from_hex(item["block"], what="block")
            events = codec.from_hex(item["events"], what="events")
            batch.append([block, events])
            size += len(block) + len(events)
            if size > _SYNC_BYTES:
                break
        if self._evm_quorum and batch:
            batch = self._attested(reply["blocks"][: len(batch)], batch)
        if not batch:
            return 0
        if self._malice is not None:
            batch = self._malice.before_feed(self, batch)
        try:
            result = self.core.call({"op": "feed", "blocks": batch})
        except CoreError as exc:
            if exc.code != "forged_block":
                raise
            log.error("the node served a block the core refuses: %s", exc.message)
            if self._malice is not None:
                self._malice.after_refusal(self, exc)
            status = self.core.call({"op": "status"})
            self._set_height(int(status["height"]))
            time.sleep(1.0)
            return 0
        self._set_height(int(result["height"]))
        if self._malice is not None:
            self._malice.after_feed(self, batch)
        for note in result["notes"]:
            if note["kind"] in (
                "registered",
                "reattested",
                "worker_revoked",
                "worker_expired",
                "worker_unresponsive",
            ):
                log.info("chain: %s", note["kind"])
        return len(batch)

    def _attested(self, entries: list[dict[str, Any]], batch: list[list[Any]]) -> list[list[Any]]:
        """evm ordering: add every node's attestation of each block, and keep the blocks that
        enough nodes attest (the core checks each signature; this only avoids feeding too early)."""
        first = int(entries[0]["height"])
        found: dict[int, dict[bytes, dict[str, Any]]] = {first + i: {} for i in range(len(batch))}
        sources: list[list[dict[str, Any]]] = [entries]
        for client in self._attesters:
            try:
                sources.append(client.get("/sync/blocks", **{"from": first, "limit": len(batch)})["blocks"])
            except UmbraError as exc:
                log.debug("no attestations from %s: %s", client.url, exc.message)
        for rows in sources:
            for row in rows:
                height = int(row["height"])
                evm = row.get("evm") or {}
                attestation = evm.get("attestation")
                if height not in found or not attestation or row["block"] != entries[height - first]["block"]:
                    continue
                node = codec.from_hex(attestation["node"], length=32, what="node key")
                found[height][node] = {
                    "number": evm["number"],
                    "hash": codec.from_hex(evm["hash"], what="EVM block hash"),
                    "node": node,
                    "sig": codec.from_hex(attestation["sig"], what="attestation"),
                }
        out: list[list[Any]] = []
        for i, (block, events) in enumerate(batch):
            attestations = list(found[first + i].values())
            if first + i > 0 and len(attestations) < self._evm_quorum:  # block 0 is the genesis's
                break
            out.append([block, events, attestations])
        return out

    def _set_height(self, height: int) -> None:
        with self._height_changed:
            self._height = height
            self._height_changed.notify_all()

    def wait_for_height(self, height: int, timeout: float) -> bool:
        with self._height_changed:
            return self._height_changed.wait_for(lambda: self._height >= height, timeout)

    # ---- duties --------------------------------------------------------------------------------
    def _check_receipts(self, duties: dict[str, Any]) -> None:
        """Release a duty once its tx is included and the core has seen that block (under load
        blocks come every block_ms, so a heartbeat must not wait out _IN_FLIGHT_S); say in the
        log when a posted tx failed in its block (the duty is retried later). A result whose job
        the core no longer lists as due was accepted (or the job closed): no receipt to fetch."""
        now = time.monotonic()
        due_jobs = {("job", job["job"]) for job in duties["jobs"]}
        for tx_hash, posted in self._in_flight.unchecked():
            if isinstance(posted.key, tuple) and posted.key[:1] == ("job",) and posted.key not in due_jobs:
                self._in_flight.checked(tx_hash, release=True)
                continue
            if now - posted.at < 1.0:
                continue
            record = self.client.tx(tx_hash)
            if record.get("status") == "included":
                if record.get("ok") and int(record.get("block") or 0) > self._height:
                    continue  # the core has not applied that block yet: the duty still shows as due
                self._in_flight.checked(tx_hash, release=bool(record.get("ok")))
                if not record.get("ok"):
                    log.warning(
                        "%s failed in block %s: %s (%s)",
                        posted.what,
                        record.get("block"),
                        record.get("message"),
                        record.get("error"),
                    )
            elif now - posted.at > _IN_FLIGHT_S:
                self._in_flight.checked(tx_hash, release=False)
                log.warning(
                    "%s was not included within %.0f s; it will be posted again", posted.what, _IN_FLIGHT_S
                )
                assert self.submitter is not None
                self.submitter.resync()

    def _act(self, duties: dict[str, Any]) -> None:
        self._check_receipts(duties)
        self._in_flight.prune()
        if self._needs_registration(duties):
            self.register()
            return
        if duties["status"] == "revoked":
            self._warn_once("revoked", "this worker is revoked on chain: it gets no keys and no jobs")
            return
        self._heartbeat(duties)
        if self.config.fault == "stall" and duties["jobs"]:
            self._warn_once("stall", "fault injection: stalling, assigned jobs are never answered")
        else:
            for job in duties["jobs"]:
                self.run_job(job["job"], job["contract"])
        for hook in self._hooks:
            hook(self, duties)

    def _needs_registration(self, duties: dict[str, Any]) -> bool:
        if self._in_flight.busy("register"):
            return False
        if not duties["registered"]:
            return True
        if duties["status"] == "revoked":
            return False
        if duties["endpoint"] != self.config.endpoint or duties["status"] == "expired":
            return True
        # Re-attest with a third of the attestation's life left.
        return int(duties["expires_at_ms"]) - int(duties["time_ms"]) < int(duties["attestation_ttl_ms"]) // 3

    def register(self) -> None:
        """Attest and register (or re-attest); raise RegistrationRefused if the chain says no."""
        assert self.submitter is not None
        args = self.core.call(
            {"op": "register", "operator": self.config.operator.public_key, "endpoint": self.config.endpoint}
        )
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
        self._in_flight.mark("register", None)
        try:
            receipt = self.submitter.call("registry", "register_worker", **call_args)
        except TxFailed as exc:
            raise RegistrationRefused(
                exc.code, f"the chain refused this worker's registration: {exc.message}"
            ) from None
        log.info("registration included in block %s", receipt.get("block"))
        self._save_registration({k: call_args[k] for k in ("evidence", "tee_type", "endorsements")})

    # The evidence registered on chain is public: /info serves it, so that a client can verify it
    # itself. It is kept in a plain file, since evidence made again would not match the chain's hash.
    def _registration_path(self) -> Path | None:
        return None if self.config.state_dir is None else self.config.state_dir / "registration.cbor"

    def _save_registration(self, record: dict[str, Any]) -> None:
        path = self._registration_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(codec.encode(record))
        os.replace(temporary, path)

    def _registered_evidence(self, evidence_hash: bytes | None) -> dict[str, Any]:
        path = self._registration_path()
        if path is None or evidence_hash is None or not path.exists():
            return {}
        try:
            record = codec.decode(path.read_bytes())
            if codec.sha256(record["evidence"]) != evidence_hash:
                return {}
            return {
                "evidence": codec.to_hex(record["evidence"]),
                "endorsements": {k: codec.to_hex(v) for k, v in record["endorsements"].items()},
            }
        except (OSError, codec.CodecError, KeyError, TypeError, AttributeError):
            return {}

    def _heartbeat(self, duties: dict[str, Any]) -> None:
        height = int(duties["height"])
        every = max(1, int(duties["heartbeat_blocks"]) // 2)
        due = self._last_heartbeat is None or height - self._last_heartbeat >= every
        if not due and duties["status"] != "unresponsive":
            return
        if self._in_flight.busy("heartbeat"):
            return
        signed = self.core.call({"op": "heartbeat", "height": height})
        self.post(
            ("heartbeat",),
            "registry",
            "heartbeat",
            worker=signed["worker"],
            height=height,
            signature=signed["signature"],
        )
        self._last_heartbeat = height

    def post(self, key: Any, module: str, method: str, **args: Any) -> bytes | None:
        """Post a duty's tx once; while it travels the same duty is skipped."""
        if self._in_flight.busy(key):
            return None
        return self._post(key, module, method, **args)

    def _post(self, key: Any, module: str, method: str, **args: Any) -> bytes | None:
        assert self.submitter is not None
        try:
            tx_hash = self.submitter.post(module, method, **args)
        except UmbraError as exc:
            log.warning("%s.%s not admitted: %s (%s)", module, method, exc.message, exc.code)
            self._in_flight.mark(key, None)
            return None
        self._in_flight.mark(key, tx_hash, f"{module}.{method}")
        return tx_hash

    def busy(self, key: Any) -> bool:
        return self._in_flight.busy(key)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.error("%s", message)

    # ---- jobs ----------------------------------------------------------------------------------
    def _state_value(self, module: str, item: str, key: bytes) -> Any:
        try:
            return self.client.get(f"/state/{module}/{item}", key=codec.to_hex(key))["value"]
        except UmbraError as exc:
            if exc.code == "not_found":
                return None
            raise

    def contract_code(self, contract: bytes) -> bytes:
        cached = self._code_cache.get(contract)
        if cached is None:
            value = self._state_value("contracts", "code", contract)
            if value is None:
                raise HostError(
                    "unknown_contract", f"the node has no code for contract {codec.to_hex(contract)}"
                )
            cached = self._code_cache[contract] = codec.from_hex(value, what="contract code")
        return cached

    def state_blob(self, contract: bytes, state_hash: bytes | None) -> bytes | None:
        """The encrypted state whose hash is `state_hash` (inline in chain state, or a blob)."""
        if state_hash is None:
            return None
        with self._states_lock:
            cached = self._states.get(state_hash)
            if cached is not None:
                self._states.move_to_end(state_hash)
                return cached
        record = self._state_value("contracts", "state", contract)
        if (
            record is not None
            and record.get("blob") is not None
            and record.get("state_hash") == codec.to_hex(state_hash)
        ):
            blob = codec.from_hex(record["blob"], what="state blob")
        else:
            response = self.client._http.get(f"/blobs/{codec.to_hex(state_hash)}")
            if response.status_code != 200:
                raise UmbraError(
                    "no_state", f"state {codec.to_hex(state_hash)} is neither in chain state nor a blob"
                )
            blob = response.content
        self._keep_state(state_hash, blob)
        return blob

    def _keep_state(self, state_hash: bytes, blob: bytes) -> None:
        """Cache a sealed state under its hash, if it is what the hash says (the core checks it
        again; this only keeps a wrong answer from the node out of the cache)."""
        if codec.sha256(blob) != state_hash or len(blob) > _STATE_CACHE_BYTES // 4:
            return
        with self._states_lock:
            if state_hash in self._states:
                return
            self._states[state_hash] = blob
            self._states_size += len(blob)
            while self._states_size > _STATE_CACHE_BYTES:
                _, dropped = self._states.popitem(last=False)
                self._states_size -= len(dropped)

    def _material(self, contract: bytes, needs: dict[str, Any] | None = None) -> dict[str, Any]:
        """The sealed secrets and blobs the core does not hold yet (ciphertext, from the node)."""
        if needs is None:
            needs = self.core.call({"op": "contract", "contract": contract})["needs"]
        secrets: dict[str, bytes] = {}
        for name in needs["secrets"]:
            record = self._state_value("contracts", "secret", contract + name.encode())
            if record is not None:
                secrets[name] = codec.from_hex(record["sealed"], what="sealed secret")
        blobs: dict[bytes, bytes] = {}
        for digest in needs["blobs"]:
            response = self.client._http.get(f"/blobs/{codec.to_hex(digest)}")
            if response.status_code == 200:
                blobs[digest] = response.content
        return {"secrets": secrets, "blobs": blobs}

    def run_job(self, job: bytes, contract: bytes) -> None:
        """Have the core execute an assigned job and queue its result for the poster. The core
        usually holds all a job needs (the warm sandbox of the code, the sealed input from the
        verified request tx, the state it sealed itself): then the job id alone is one round trip."""
        key = ("job", job)
        if self._in_flight.busy(key):
            return
        self._in_flight.mark(key, None)
        started = time.monotonic()
        result: dict[str, Any] | None
        if self._malice is None:
            try:
                result = self.core.call({"op": "execute", "job": job})
            except CoreError as exc:
                if exc.code != "needs_input":
                    raise
                result = self._execute_with_inputs(job, contract)
        else:  # a malicious host hands the core what it chooses (tests)
            result = self._execute_with_inputs(job, contract)
        if result is None:
            return
        new_blob = result["state_blob"]
        if new_blob is not None:  # the next job or query of this contract here may need it
            self._keep_state(codec.sha256(new_blob), new_blob)
        submit = {
            "body": result["body"],
            "signature": result["signature"],
            "sealed_output": result["sealed_output"],
            "state_blob": new_blob,
        }
        if self._malice is not None:
            submit = self._malice.result_to_post(job, submit)
        # The chain keeps a state inline up to MAX_INLINE_STATE; a larger one lives only in the
        # node's blob store, and so does the previous state that a replica running after the
        # majority settled needs: for those the blob goes to the store before the result.
        publish = new_blob is not None and (len(new_blob) > MAX_INLINE_STATE or int(result["replicas"]) > 1)
        self._results.put(_Result(key, submit, publish))
        log.info(
            "job %s executed in %.0f ms (failed=%s)",
            codec.to_hex(job)[:18],
            1000 * (time.monotonic() - started),
            result["body"]["failed"],
        )

    def _execute_with_inputs(self, job: bytes, contract: bytes) -> dict[str, Any] | None:
        """Execute with everything the core may lack fetched from the node (after a restart, the
        first job of a contract here, a state sealed elsewhere); None if the node says the job is
        not assigned any more."""
        record = self._state_value("compute", "job", job)
        if record is None or record.get("status") != "assigned":
            return None
        sealed_input = codec.from_hex(record["sealed_input"], what="sealed input")
        code = self.contract_code(contract)
        # The state the job runs on is the one the core verified in JobAssigned, not the node's say.
        prev_state = self.core.call({"op": "job", "job": job})["state_hash"]
        if self._malice is None:
            state_blob = self.state_blob(contract, prev_state)
        else:
            state_blob = self._malice.state_for_core(self, contract, prev_state)
        return self.core.call(
            {
                "op": "execute",
                "job": job,
                "code": code,
                "sealed_input": sealed_input,
                "state_blob": state_blob,
                # The owner's secrets and blobs the core does not hold yet, as for queries.
                **self._material(contract),
            }
        )

    def _post_results(self, stop: threading.Event) -> None:
        """Post the results the chain loop queues, all that are waiting in one POST /txs: the loop
        goes on to the next job meanwhile, and a busy node gets one request, not one per result."""
        assert self.submitter is not None
        while not stop.is_set():
            try:
                batch = [self._results.get(timeout=0.5)]
            except queue.Empty:
                continue
            while len(batch) < _RESULTS_PER_POST:
                try:
                    batch.append(self._results.get_nowait())
                except queue.Empty:
                    break
            try:
                self._post_batch(batch)
            except UmbraError as exc:  # the node refused or is unreachable: the jobs come due again
                log.warning("results not posted: %s (%s)", exc.message, exc.code)
            except httpx.HTTPError as exc:
                log.warning("results not posted: %s", exc)

    def _post_batch(self, batch: list[_Result]) -> None:
        assert self.submitter is not None
        for item in batch:
            if item.publish_state:
                self._publish_state(item.submit["state_blob"])
        calls = [Call("compute", "submit_result", item.submit) for item in batch]
        for item, posted in zip(batch, self.submitter.post_many(calls), strict=True):
            if isinstance(posted, UmbraError):
                log.warning("compute.submit_result not admitted: %s (%s)", posted.message, posted.code)
                self._in_flight.mark(item.key, None)
                continue
            self._in_flight.mark(item.key, posted, "compute.submit_result")
            self._results_posted += 1
            if self._crash_after is not None and self._results_posted >= self._crash_after:
                log.error("fault injection: crashing after %d results", self._results_posted)
                os._exit(70)

    def _publish_state(self, blob: bytes) -> None:
        response = self.client._http.put(f"/blobs/{codec.to_hex(codec.sha256(blob))}", content=blob)
        if response.status_code != 200:
            raise UmbraError("blob_store", f"the node did not store the state blob: {response.text[:200]}")

    # ---- queries -------------------------------------------------------------------------------
    def query(self, contract: bytes, sealed_query: bytes, min_height: int | None) -> dict[str, Any]:
        """Answer a sealed query on the latest verified state, once the core has `min_height`."""
        if min_height is not None and not self.wait_for_height(min_height, self.config.query_wait_s):
            raise UmbraError(
                "behind",
                f"this worker has applied height {self._height}, not yet {min_height}; retry shortly",
            )
        # The core usually holds all it needs already (the warm sandbox of the code, the opened
        # latest state, the owner's material): then the sealed query alone is one round trip.
        try:
            return self.core.call({"op": "query", "contract": contract, "query": sealed_query})
        except CoreError as exc:
            if exc.code != "needs_input":
                raise
        # The node may be a block ahead of the core (its state moved on): then the state the core
        # verified is not served any more; wait for the core to catch up and try again.
        last: UmbraError | CoreError | None = None
        for _ in range(5):
            facts = self.core.call({"op": "contract", "contract": contract})
            try:
                blob = self.state_blob(contract, facts["state_hash"])
                return self.core.call(
                    {
                        "op": "query",
                        "contract": contract,
                        "query": sealed_query,
                        "state_blob": blob,
                        "code": self.contract_code(contract),
                        **self._material(contract, facts["needs"]),
                    }
                )
            except (CoreError, UmbraError) as exc:
                if exc.code not in ("stale_state", "no_state"):
                    raise
                last = exc
                self.wait_for_height(self._height + 1, 1.0)
        assert last is not None
        raise last

    def contract_public(self, contract: bytes, epoch: int | None = None) -> dict[str, Any]:
        if epoch is None:
            epoch = int(self.core.call({"op": "status"})["epoch"])
        derived = self.core.call({"op": "contract_public", "contract": contract, "epoch": max(epoch, 0)})
        return {k: v for k, v in derived.items() if k != "ok"}

    def info(self) -> dict[str, Any]:
        status = self.core.call({"op": "status"})
        worker = status["worker"] or {}
        return {
            "id": codec.to_hex(self.identity),
            "role": self.config.role,
            "tee": status["platform"],
            "tee_type": status["tee_type"],
            "height": status["height"],
            "registered": status["registered"],
            "status": worker.get("status"),
            "expires_at_ms": worker.get("expires_at_ms"),
            "endpoint": self.config.endpoint,
            "operator": codec.to_hex(self.config.operator.public_key),
            "epoch": status["epoch"],
            "epochs_held": status["epochs_held"],
            "alerts": status["alerts"],
            **self._registered_evidence(worker.get("evidence_hash")),
        }
