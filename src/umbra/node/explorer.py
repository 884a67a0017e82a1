"""The explorer: `GET /explorer`, its detail pages, JSON under `/explorer/api`, static assets.

Every page is rendered here, on the server, so its first view is complete HTML (the workers with
full 0x ids and attestation status are in the document before any script runs). The page script
then follows `/events` (one SSE `block` event per committed block) and, for each section a block
touched, re-fetches that section's HTML from `/explorer/api/fragments/<section>`: rendering lives
in one place, and live updates need no reload.

Confidentiality: the chain holds only ciphertext and hashes, and the explorer never shows sealed
bytes at all. Fields that carry ciphertext (sealed inputs and outputs, state blobs, secrets, key
handovers) and any byte string longer than `_MAX_INLINE_BYTES` are shown as their SHA-256 and size.

History (charts, recent txs, job timelines) comes from an in-memory index that replays recent
block events once, on first use, and then follows committed blocks. All store reads run in the
thread pool and are bounded.
"""

from __future__ import annotations

import fnmatch
import html
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles

from umbra import codec, crypto
from umbra.chain.modules.registry import binding_fields
from umbra.chain.state import State
from umbra.chain.types import Event, Header, MalformedError, SignedTx
from umbra.node.service import BlockNotice, Node
from umbra.tee import AttestationError, Endorsements, Verdict, VerifiedEvidence, verify_at_time
from umbra.tee.policy import Policy, measurement_class, report_data_binding

__all__ = ["Explorer", "mount_explorer", "public"]

# Byte fields that hold ciphertext (or the key handover): always shown as hash + size, whatever
# their length. Anything else longer than _MAX_INLINE_BYTES is shown the same way (evidence,
# code, endorsements), which also catches a sealed field this list does not name yet.
CONFIDENTIAL_FIELDS = frozenset(
    {"sealed_input", "sealed_output", "sealed", "sealed_reply", "ciphertext", "state_blob", "blob", "ct"}
)
_MAX_INLINE_BYTES = 64

_BACKFILL_BLOCKS = 20_000  # replayed once on first use; from genesis on any dev-sized chain
_KEEP_BLOCKS = 20_000
_KEEP_JOBS = 2_000
_KEEP_TXS = 100
_MAX_LIST = 200  # upper bound of every paginated list
_MAX_WORKERS_SCANNED = 2_000
_MAX_BLOCK_TXS_SHOWN = 500

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_HEX32 = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


# ==== public values ================================================================================


def _short(data: bytes) -> str:
    text = codec.to_hex(data)
    return text if len(text) <= 18 else f"{text[:10]}…{text[-6:]}"


def public(value: Any, key: str | None = None) -> Any:
    """A chain value as JSON that is safe to show: bytes as 0x-hex, except ciphertext and long
    byte strings, which become `{"sha256", "size"}`. Bytes map keys become 0x-hex."""
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
        if key in CONFIDENTIAL_FIELDS or len(raw) > _MAX_INLINE_BYTES:
            return {"sha256": codec.to_hex(codec.sha256(raw)), "size": len(raw)}
        return codec.to_hex(raw)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            name = codec.to_hex(bytes(k)) if isinstance(k, bytes | bytearray) else str(k)
            out[name] = public(v, name)
        return out
    if isinstance(value, list | tuple):
        return [public(v, key) for v in value]
    return value


def _is_digest(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"sha256", "size"}


# ==== the index ====================================================================================


@dataclass
class _BlockRow:
    height: int
    hash: bytes
    time_ms: int
    txs: int
    events: int
    settled: int  # jobs settled or failed in this block
    online: int  # workers active after this block


@dataclass
class _TxRow:
    hash: bytes
    height: int
    index: int
    time_ms: int
    sender: bytes
    call: str
    ok: bool


@dataclass
class _Step:
    what: str  # requested | assigned | result | reassigned | refused | settled | failed | dispute
    height: int
    time_ms: int
    workers: list[bytes] = field(default_factory=list)
    note: str | None = None


@dataclass
class _JobTrack:
    job: bytes
    contract: bytes | None = None
    requester: bytes | None = None
    status: str = "queued"
    requested_ms: int | None = None
    finished_ms: int | None = None
    workers: list[bytes] = field(default_factory=list)
    steps: list[_Step] = field(default_factory=list)

    @property
    def latency_ms(self) -> int | None:
        if self.requested_ms is None or self.finished_ms is None:
            return None
        return self.finished_ms - self.requested_ms


_ONLINE_EVENTS = frozenset({"WorkerRegistered", "WorkerReattested", "WorkerOnline"})
# Only these modules' events feed the index; the rest (transfers, ...) are only counted, so a
# block of thousands of transfers costs the index no more memory than an empty one.
_INDEXED_MODULES = frozenset({"registry", "compute"})


@dataclass
class _Notice:
    header: Header
    events: list[Event]  # of _INDEXED_MODULES only
    txs: list[_TxRow]  # the newest _KEEP_TXS at most
    tx_count: int
    event_count: int


_OFFLINE_EVENTS = {
    "WorkerRevoked": "revoked",
    "WorkerExpired": "expired",
    "WorkerUnresponsive": "unresponsive",
}


class Index:
    """Recent history the chain's state does not keep: per-block counts, recent txs, job
    lifecycles with timings, and how many workers were online after each block.

    Worker statuses change only through registry events (registered, re-attested, online,
    revoked, expired, unresponsive), so replaying events reproduces the online count exactly
    when the replay starts at genesis. On a chain longer than the backfill, a worker's status
    before the window is inferred from its first event in the window (or its current status).
    """

    def __init__(self, node: Node) -> None:
        self._node = node
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._loaded = False
        # Blocks committed before the first load; the oldest fall off, as the load reads them.
        self._pending: deque[_Notice] = deque(maxlen=_KEEP_BLOCKS)
        self.blocks: deque[_BlockRow] = deque(maxlen=_KEEP_BLOCKS)
        self.txs: deque[_TxRow] = deque(maxlen=_KEEP_TXS)
        self.jobs: OrderedDict[bytes, _JobTrack] = OrderedDict()
        self.status: dict[bytes, str] = {}
        self.done: dict[bytes, int] = {}
        self.missed: dict[bytes, int] = {}
        self.latencies: deque[tuple[int, int]] = deque(maxlen=_KEEP_JOBS)
        self.first_height: int | None = None

    # ---- feeding -------------------------------------------------------------------------------
    def on_block(self, notice: BlockNotice) -> None:
        """Block-thread listener: cheap (no store reads); everything it needs is in the notice."""
        header = notice.block.header
        included, receipts = notice.outcome.included, notice.outcome.receipts
        # Only the newest txs are kept, so a full block costs no more than a small one.
        rows = [
            _TxRow(stx.hash, header.height, r.index, header.time_ms, stx.tx.sender, _call_name(stx), r.ok)
            for stx, r in zip(included[-_KEEP_TXS:], receipts[-_KEEP_TXS:], strict=False)
        ]
        events = notice.outcome.events
        item = _Notice(
            header, [e for e in events if e.module in _INDEXED_MODULES], rows, len(included), len(events)
        )
        with self._lock:
            if self._loaded:
                self._apply(item)
            else:
                self._pending.append(item)

    def ensure_loaded(self) -> None:
        """Replay recent blocks from the store, once (call from a worker thread).

        Until this returns, the block listener only queues notices and every reader waits
        here, so the replay may fill the structures without holding `_lock` (which would stall
        the block thread). Blocks above the head read here come from the queued notices.
        """
        if self._loaded:
            return
        with self._load_lock:
            if self._loaded:
                return
            store = self._node.store
            head = store.head().height
            start = max(0, head - _BACKFILL_BLOCKS + 1)
            history: list[_Notice] = []
            at = start
            while at <= head:
                rows = store.raw_blocks(at, min(500, head - at + 1))
                if not rows:
                    break
                for height, raw, raw_events in rows:
                    decoded = codec.decode(raw)
                    events = codec.decode(raw_events)
                    kept = [Event.from_cbor(e) for e in events if e.get("module") in _INDEXED_MODULES]
                    header = Header.from_cbor(decoded["header"])
                    history.append(_Notice(header, kept, [], len(decoded["txs"]), len(events)))
                    at = height + 1
            self.first_height = start
            self.status.update(self._seed_statuses(start, [ev for n in history for ev in n.events]))
            for item in history:
                self._apply(item)
            self.txs.extend(self._recent_txs(head))
            with self._lock:
                for item in self._pending:
                    if item.header.height > head:
                        self._apply(item)
                self._pending.clear()
                self._loaded = True

    def _recent_txs(self, head: int) -> list[_TxRow]:
        """The newest txs (up to _KEEP_TXS), oldest first, scanning back at most 2,000 blocks."""
        store = self._node.store
        found: list[_TxRow] = []
        height = head
        while height >= 0 and height > head - 2_000 and len(found) < _KEEP_TXS:
            block = store.block(height)
            if block is not None and block.txs:
                receipts = store.block_receipts(height)
                for index in range(len(block.txs) - 1, -1, -1):
                    try:
                        stx = SignedTx.decode(block.txs[index])
                    except MalformedError:
                        continue
                    ok = bool(receipts[index].get("ok")) if index < len(receipts) else True
                    found.append(
                        _TxRow(
                            stx.hash, height, index, block.header.time_ms, stx.tx.sender, _call_name(stx), ok
                        )
                    )
                    if len(found) >= _KEEP_TXS:
                        break
            height -= 1
        found.reverse()
        return found

    def _seed_statuses(self, start: int, events: list[Event]) -> dict[bytes, str]:
        """Each worker's status just before block `start`, for a replay that skips history."""
        seeds: dict[bytes, str] = {}
        if start == 0:
            return seeds  # replay from genesis: every worker's status comes from its events
        first: dict[bytes, str] = {}
        for ev in events:
            worker = ev.data.get("worker") if ev.module == "registry" else None
            if isinstance(worker, bytes) and worker not in first:
                first[worker] = ev.name
        state = State(self._node.view)
        registry = self._node.runtime.registry
        for wid in registry.worker_ids(state)[:_MAX_WORKERS_SCANNED]:
            name = first.get(wid)
            if name is None:
                record = registry.worker(state, wid)
                seeds[wid] = record["status"] if record else "unknown"
            elif name in _OFFLINE_EVENTS:
                seeds[wid] = "active"  # it went offline inside the window, so it was online
            elif name != "WorkerRegistered":
                seeds[wid] = "offline"
        return seeds

    def _apply(self, item: _Notice) -> None:
        settled = 0
        height, now = item.header.height, item.header.time_ms
        for ev in item.events:
            data = ev.data
            if ev.module == "registry":
                worker = data.get("worker")
                if isinstance(worker, bytes):
                    if ev.name in _ONLINE_EVENTS:
                        self.status[worker] = "active"
                    elif ev.name in _OFFLINE_EVENTS:
                        self.status[worker] = _OFFLINE_EVENTS[ev.name]
            elif ev.module == "compute":
                settled += self._job_event(ev, height, now)
        self.txs.extend(item.txs)
        online = sum(1 for s in self.status.values() if s == "active")
        self.blocks.append(
            _BlockRow(height, item.header.hash, now, item.tx_count, item.event_count, settled, online)
        )

    def _job_event(self, ev: Event, height: int, now: int) -> int:
        data = ev.data
        job_id = data.get("job")
        if not isinstance(job_id, bytes):
            return 0
        track = self.jobs.get(job_id)
        if track is None:
            track = _JobTrack(job_id)
            self.jobs[job_id] = track
            while len(self.jobs) > _KEEP_JOBS:
                self.jobs.popitem(last=False)
        workers = [w for w in data.get("workers", []) if isinstance(w, bytes)]
        finished = 0
        if ev.name == "JobRequested":
            track.contract, track.requester = data.get("contract"), data.get("requester")
            track.requested_ms, track.status = now, "queued"
            track.steps.append(_Step("requested", height, now, note=f"{data.get('replicas', 1)} replica(s)"))
        elif ev.name == "JobAssigned":
            track.contract = track.contract or data.get("contract")
            track.status, track.workers = "assigned", workers
            note = f"deadline #{data.get('deadline_height')}, state v{data.get('state_version')}"
            track.steps.append(_Step("assigned", height, now, workers, note))
        elif ev.name == "ResultSubmitted":
            worker = data.get("worker")
            track.steps.append(_Step("result", height, now, [worker] if isinstance(worker, bytes) else []))
        elif ev.name == "ResultRefused":
            worker = data.get("worker")
            track.steps.append(_Step("refused", height, now, [worker] if isinstance(worker, bytes) else []))
        elif ev.name == "JobReassigned":
            silent = [w for w in data.get("silent", []) if isinstance(w, bytes)]
            for worker in silent:
                self.missed[worker] = self.missed.get(worker, 0) + 1
            track.status = "queued"
            track.steps.append(_Step("reassigned", height, now, silent, "deadline missed"))
        elif ev.name in ("JobSettled", "JobFailed"):
            failed = ev.name == "JobFailed" or bool(data.get("failed"))
            track.status = "failed" if failed else "settled"
            track.finished_ms = now
            track.contract = track.contract or data.get("contract")
            if workers:
                track.workers = workers
            if not failed:
                for worker in workers:
                    self.done[worker] = self.done.get(worker, 0) + 1
            reason = data.get("reason")
            track.steps.append(_Step(track.status, height, now, workers, str(reason) if reason else None))
            if track.latency_ms is not None:
                self.latencies.append((now, track.latency_ms))
            finished = 1
        elif ev.name == "Dispute":
            track.steps.append(_Step("dispute", height, now, workers, "replicas disagree"))
        return finished

    # ---- reading (copies under the lock) -------------------------------------------------------
    def recent_blocks(self, limit: int) -> list[_BlockRow]:
        self.ensure_loaded()
        with self._lock:
            return list(self.blocks)[-limit:][::-1]

    def recent_txs(self, limit: int) -> list[_TxRow]:
        self.ensure_loaded()
        with self._lock:
            return list(self.txs)[-limit:][::-1]

    def recent_jobs(
        self, limit: int, contract: bytes | None = None, worker: bytes | None = None
    ) -> list[_JobTrack]:
        self.ensure_loaded()
        with self._lock:
            tracks = list(self.jobs.values())
        if contract is not None:
            tracks = [t for t in tracks if t.contract == contract]
        if worker is not None:
            tracks = [t for t in tracks if any(worker in s.workers for s in t.steps)]
        return tracks[-limit:][::-1]

    def job(self, job_id: bytes) -> _JobTrack | None:
        self.ensure_loaded()
        with self._lock:
            return self.jobs.get(job_id)

    def worker_stats(self, worker: bytes) -> tuple[int, int]:
        self.ensure_loaded()
        with self._lock:
            return self.done.get(worker, 0), self.missed.get(worker, 0)

    def series(self, window_s: int, bucket_s: int, now_ms: int) -> dict[str, Any]:
        """Per-bucket tx/s, jobs/s, mean job latency and workers online over the last `window_s`."""
        self.ensure_loaded()
        start = now_ms - window_s * 1000
        with self._lock:
            rows = [b for b in self.blocks if b.time_ms > start - bucket_s * 1000]
            before = next((b.online for b in reversed(self.blocks) if b.time_ms <= start), None)
            latencies = [(t, lat) for t, lat in self.latencies if t > start]
        count = max(1, window_s // bucket_s)
        txs = [0] * count
        jobs = [0] * count
        online: list[int | None] = [None] * count
        lat_sum = [0] * count
        lat_n = [0] * count
        for row in rows:
            slot = (row.time_ms - start) // (bucket_s * 1000)
            if 0 <= slot < count:
                txs[slot] += row.txs
                jobs[slot] += row.settled
                online[slot] = row.online
        for t, lat in latencies:
            slot = (t - start) // (bucket_s * 1000)
            if 0 <= slot < count:
                lat_sum[slot] += lat
                lat_n[slot] += 1
        carried = before if before is not None else (rows[0].online if rows else 0)
        filled: list[int] = []
        for value in online:
            carried = carried if value is None else value
            filled.append(carried)
        times = [start + (i + 1) * bucket_s * 1000 for i in range(count)]
        return {
            "now_ms": now_ms,
            "window_s": window_s,
            "bucket_s": bucket_s,
            "t": times,
            "tx_rate": [round(n / bucket_s, 3) for n in txs],
            "job_rate": [round(n / bucket_s, 3) for n in jobs],
            "job_latency_ms": [lat_sum[i] // lat_n[i] if lat_n[i] else None for i in range(count)],
            "workers_online": filled,
        }


def _call_name(stx: SignedTx) -> str:
    return f"{stx.tx.call.module}.{stx.tx.call.method}"


# ==== reads ========================================================================================


class NotFound(LookupError):
    pass


def _now_ms() -> int:
    return int(time.time() * 1000)


def _parse_id(text: str, what: str) -> bytes:
    try:
        return codec.from_hex(text if text.startswith("0x") else "0x" + text, length=32, what=what)
    except codec.CodecError as exc:
        raise NotFound(str(exc)) from None


class Explorer:
    """Reads for the pages and the JSON API. Every method runs in a worker thread."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.index = Index(node)
        self._reverify_slots = threading.BoundedSemaphore(2)

    # ---- helpers -------------------------------------------------------------------------------
    def state(self) -> State:
        return State(self.node.view)

    def _block_time(self, height: int | None) -> int | None:
        if height is None:
            return None
        block = self.node.store.block(int(height))
        return None if block is None else block.header.time_ms

    def _prefix(self, prefix: bytes, limit: int) -> list[tuple[bytes, Any]]:
        return [(k[len(prefix) :], codec.decode(v)) for k, v in self.node.store.read_prefix(prefix, limit)]

    # ---- summary -------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        self.index.ensure_loaded()
        state = self.state()
        head = self.node.store.head()
        rt = self.node.runtime
        now = _now_ms()
        ids = rt.registry.worker_ids(state)
        attested = sum(1 for wid in ids[:_MAX_WORKERS_SCANNED] if rt.registry.is_attested(state, wid, now))
        contracts = len(self.node.store.read_prefix(rt.contracts.contracts.prefix, 1_000))
        jobs = self.index.recent_jobs(_KEEP_JOBS)
        rates = self.index.series(60, 60, now)
        return {
            "chain_id": self.node.genesis.chain_id,
            "genesis_hash": codec.to_hex(self.node.genesis.hash),
            "height": head.height,
            "block_hash": codec.to_hex(head.hash),
            "time_ms": head.time_ms,
            "runtime_version": head.runtime_version,
            "mempool": len(self.node.mempool),
            "workers": len(ids),
            "workers_attested": attested,
            "key_epoch": rt.keys.current_epoch(state),
            "contracts": contracts,
            "jobs_indexed": len(jobs),
            "jobs_settled": sum(1 for j in jobs if j.status == "settled"),
            "tx_rate_1m": rates["tx_rate"][0],
            "job_rate_1m": rates["job_rate"][0],
            "indexed_from": self.index.first_height,
        }

    # ---- blocks and txs ------------------------------------------------------------------------
    def blocks(self, before: int | None, limit: int) -> list[dict[str, Any]]:
        limit = max(1, min(limit, _MAX_LIST))
        head = self.node.store.head().height
        top = head if before is None else min(before - 1, head)
        out = []
        for height in range(top, max(-1, top - limit), -1):
            block = self.node.store.block(height)
            if block is None:
                continue
            out.append(
                {
                    "height": height,
                    "hash": codec.to_hex(block.header.hash),
                    "time_ms": block.header.time_ms,
                    "txs": len(block.txs),
                    "author": codec.to_hex(block.header.author),
                }
            )
        return out

    def resolve_block(self, ref: str) -> int:
        ref = ref.strip().lstrip("#")
        if ref.isdigit():
            return int(ref)
        digest = _parse_id(ref, "block hash")
        height = self.node.store.height_of(digest)
        if height is None:
            raise NotFound(f"no block {ref}")
        return height

    def block(self, ref: str) -> dict[str, Any]:
        height = self.resolve_block(ref)
        store = self.node.store
        block = store.block(height)
        if block is None:
            raise NotFound(f"no block {ref}")
        receipts = store.block_receipts(height)
        txs = []
        for index, raw in enumerate(block.txs[:_MAX_BLOCK_TXS_SHOWN]):
            receipt = receipts[index] if index < len(receipts) else {}
            try:
                stx = SignedTx.decode(raw)
                sender, call, nonce = codec.to_hex(stx.tx.sender), _call_name(stx), stx.tx.nonce
            except MalformedError:
                sender, call, nonce = "?", "?", None
            txs.append(
                {
                    "hash": codec.to_hex(codec.sha256(raw)),
                    "index": index,
                    "sender": sender,
                    "call": call,
                    "nonce": nonce,
                    "ok": receipt.get("ok", True),
                    "error": receipt.get("error"),
                }
            )
        header = block.header.to_json()
        return {
            **header,
            "signature": codec.to_hex(block.signature),
            "tx_count": len(block.txs),
            "txs": txs,
            "events": [public(e.to_cbor()) for e in store.block_events(height)],
            "head": store.head().height,
        }

    def tx(self, text: str) -> dict[str, Any]:
        tx_hash = _parse_id(text, "tx hash")
        store = self.node.store
        record = store.tx(tx_hash)
        if record is None:
            if tx_hash in self.node.mempool:
                return {"hash": codec.to_hex(tx_hash), "status": "pending"}
            raise NotFound(f"no tx {codec.to_hex(tx_hash)}")
        block = store.block(record.height)
        assert block is not None
        stx = SignedTx.decode(block.txs[record.index])
        events = [
            public(e.to_cbor()) for e in store.block_events(record.height) if e.tx_index == record.index
        ]
        return {
            "hash": codec.to_hex(tx_hash),
            "status": "included",
            "block": record.height,
            "block_hash": codec.to_hex(block.header.hash),
            "time_ms": block.header.time_ms,
            "index": record.index,
            "sender": codec.to_hex(record.sender),
            "nonce": stx.tx.nonce,
            "fee": stx.tx.fee,
            "call": _call_name(stx),
            "args": public(stx.tx.call.args),
            "ok": record.ok,
            "error": record.error,
            "message": record.message,
            "size": len(block.txs[record.index]),
            "events": events,
        }

    def account(self, text: str) -> dict[str, Any]:
        who = _parse_id(text, "address")
        state = self.state()
        rt = self.node.runtime
        acct = rt.balances.account(state, who)
        txs = self.node.store.txs_of(who, 25)
        staking = getattr(rt, "staking", None)
        delegations = list(staking.delegations.get(state, who, [])) if staking is not None else []
        return {
            "address": codec.to_hex(who),
            **acct,
            "nonce": rt.system.nonce(state, who),
            "txs": [
                {
                    "hash": codec.to_hex(r.tx_hash),
                    "block": r.height,
                    "index": r.index,
                    "ok": r.ok,
                    "error": r.error,
                }
                for r in txs
            ],
            "delegations": [codec.to_hex(w) for w in delegations],
            "is_worker": rt.registry.worker(state, who) is not None,
            "is_contract": rt.contracts.exists(state, who),
        }

    # ---- workers -------------------------------------------------------------------------------
    def _worker_row(self, state: State, record: Mapping[str, Any], now: int) -> dict[str, Any]:
        rt = self.node.runtime
        wid = bytes(record["id"])
        staking = getattr(rt, "staking", None)
        pool = staking.pool(state, wid) if staking is not None else None
        score = staking.score(state, wid) if staking is not None else None
        attested = rt.registry.is_attested(state, wid, now)
        status = str(record.get("status"))
        if status == "revoked":
            attestation = "revoked"
        elif int(record.get("expires_at_ms", 0)) <= now or status == "expired":
            attestation = "expired"
        else:
            attestation = "attested"
        done, missed = self.index.worker_stats(wid)
        return {
            "id": codec.to_hex(wid),
            "operator": codec.to_hex(bytes(record["operator"])),
            "role": record.get("role"),
            "tee_type": record.get("tee_type"),
            "platform": record.get("platform"),
            "measurement": record.get("measurement"),
            "tcb_status": record.get("tcb_status"),
            "status": status,
            "attestation": attestation,
            "attested": attested,
            "attested_at_ms": record.get("attested_at_ms"),
            "expires_at_ms": record.get("expires_at_ms"),
            "online": attested and status == "active",
            "keyed": rt.keys.has_current_key(state, wid),
            "stake": None if pool is None else pool.get("stake"),
            "pool_stopped": None if pool is None else pool.get("stopped"),
            "reputation": score,
            "jobs_done": done,
            "jobs_missed": missed,
            "endpoint": record.get("endpoint"),
            "registered_height": record.get("registered_height"),
            "last_heartbeat": record.get("last_heartbeat"),
            "evidence_hash": public(record.get("evidence_hash")),
        }

    def workers(self, offset: int = 0, limit: int = _MAX_LIST) -> dict[str, Any]:
        self.index.ensure_loaded()
        state = self.state()
        rt = self.node.runtime
        ids = rt.registry.worker_ids(state)
        offset = max(0, offset)
        limit = max(1, min(limit, _MAX_LIST))
        now = _now_ms()
        rows = []
        for wid in ids[offset : offset + limit]:
            record = rt.registry.worker(state, wid)
            if record is not None:
                rows.append(self._worker_row(state, record, now))
        return {"total": len(ids), "offset": offset, "workers": rows}

    def worker(self, text: str) -> dict[str, Any]:
        self.index.ensure_loaded()
        wid = _parse_id(text, "worker id")
        state = self.state()
        record = self.node.runtime.registry.worker(state, wid)
        if record is None:
            raise NotFound(f"no worker {codec.to_hex(wid)}")
        row = self._worker_row(state, record, _now_ms())
        staking = getattr(self.node.runtime, "staking", None)
        pool = staking.pool(state, wid) if staking is not None else None
        row["pool"] = public(pool)
        row["ecdh_pk"] = codec.to_hex(bytes(record["ecdh_pk"]))
        row["class"] = record.get("class")
        return row

    def _attestation_tx(self, record: Mapping[str, Any]) -> dict[str, Any] | None:
        """The tx whose evidence the registry recorded last: the block whose time is the record's
        `attested_at_ms` (a call runs at its block's time), found by binary search from the
        registration height, then the WorkerRegistered/WorkerReattested event's tx index."""
        store = self.node.store
        wid = bytes(record["id"])
        target = int(record["attested_at_ms"])
        lo, hi = int(record.get("registered_height", 0)), store.head().height
        while lo < hi:
            mid = (lo + hi) // 2
            block = store.block(mid)
            if block is None or block.header.time_ms < target:
                lo = mid + 1
            else:
                hi = mid
        candidates = [lo, lo + 1, lo + 2, int(record.get("registered_height", 0))]
        fallback: dict[str, Any] | None = None
        for height in dict.fromkeys(candidates):
            block = store.block(height)
            if block is None:
                continue
            for ev in store.block_events(height):
                if (
                    ev.module != "registry"
                    or ev.name not in ("WorkerRegistered", "WorkerReattested")
                    or ev.data.get("worker") != wid
                    or ev.tx_index is None
                    or ev.tx_index >= len(block.txs)
                ):
                    continue
                raw = block.txs[ev.tx_index]
                try:
                    stx = SignedTx.decode(raw)
                except MalformedError:
                    continue
                call = stx.tx.call
                if call.module != "registry" or call.method != "register_worker":
                    continue
                if call.args.get("identity_pk") != wid:
                    continue
                evidence = call.args.get("evidence")
                found = {
                    "height": height,
                    "tx_index": ev.tx_index,
                    "tx_hash": codec.sha256(raw),
                    "time_ms": block.header.time_ms,
                    "runtime_version": block.header.runtime_version,
                    "event": ev.name,
                    "sender": stx.tx.sender,
                    "args": call.args,
                    "evidence_matches": isinstance(evidence, bytes)
                    and codec.sha256(evidence) == record.get("evidence_hash"),
                }
                if found["evidence_matches"]:
                    return found
                fallback = fallback or found
        return fallback

    def _verify(
        self, record: Mapping[str, Any], found: Mapping[str, Any], at: datetime
    ) -> tuple[Verdict, Policy, dict[str, Any]]:
        state = self.state()
        registry = self.node.runtime.registry
        policy = registry.policy(state)
        settings = registry.settings.get(state)
        args = found["args"]
        tee_type = str(args.get("tee_type", record.get("tee_type")))
        endorsements = args.get("endorsements") or {}
        given = {
            k: bytes(v)
            for k, v in endorsements.items()
            if k in ("collateral", "vek", "chain", "anchor") and isinstance(v, bytes)
        }
        root = settings.get("sim_root") if tee_type == "sim" else None
        verdict = verify_at_time(
            tee_type,
            bytes(args.get("evidence", b"")),
            Endorsements(root=root, **given),
            at,
            allow_debug=policy.allow_debug,
        )
        return verdict, policy, settings

    def attestation(self, text: str) -> dict[str, Any]:
        """The evidence as the chain verified it at registration (re-run at that block's time)."""
        wid = _parse_id(text, "worker id")
        record = self.node.runtime.registry.worker(self.state(), wid)
        if record is None:
            raise NotFound(f"no worker {codec.to_hex(wid)}")
        found = self._attestation_tx(record)
        out: dict[str, Any] = {
            "worker": codec.to_hex(wid),
            "tee_type": record.get("tee_type"),
            "platform": record.get("platform"),
            "measurement": record.get("measurement"),
            "tcb_status": record.get("tcb_status"),
            "attested_at_ms": record.get("attested_at_ms"),
            "expires_at_ms": record.get("expires_at_ms"),
            "evidence_hash": public(record.get("evidence_hash")),
            "registration": None,
            "verdict": None,
        }
        if found is None:
            return out
        args = found["args"]
        out["registration"] = {
            "block": found["height"],
            "tx": codec.to_hex(found["tx_hash"]),
            "tx_index": found["tx_index"],
            "event": found["event"],
            "time_ms": found["time_ms"],
            "sender": codec.to_hex(found["sender"]),
            "endpoint": args.get("endpoint"),
            "role": args.get("role", "worker"),
            "evidence": public(args.get("evidence")),
            "endorsements": public(args.get("endorsements") or {}),
            "evidence_matches": found["evidence_matches"],
        }
        at = datetime.fromtimestamp(int(record["attested_at_ms"]) / 1000, UTC)
        verdict, _, _ = self._verify(record, found, at)
        summary = verdict.to_json()
        evidence = verdict.evidence
        summary["issued_at"] = evidence.issued_at.isoformat() if evidence and evidence.issued_at else None
        out["verdict"] = public(summary)
        return out

    def reverify(self, text: str) -> dict[str, Any]:
        """Re-run every check of registration in this node and report each one."""
        if not self._reverify_slots.acquire(blocking=False):
            raise Busy("re-verification already running; try again")
        try:
            return self._reverify(text)
        finally:
            self._reverify_slots.release()

    def _reverify(self, text: str) -> dict[str, Any]:
        wid = _parse_id(text, "worker id")
        record = self.node.runtime.registry.worker(self.state(), wid)
        if record is None:
            raise NotFound(f"no worker {codec.to_hex(wid)}")
        checks: list[dict[str, Any]] = []

        def check(name: str, ok: bool, detail: str) -> None:
            checks.append({"name": name, "ok": bool(ok), "detail": detail})

        now_ms = _now_ms()
        now = datetime.fromtimestamp(now_ms / 1000, UTC)
        found = self._attestation_tx(record)
        if found is None:
            check("evidence located", False, "no registration tx for this worker was found in its blocks")
            return {"worker": codec.to_hex(wid), "ok": False, "checks": checks, "at_ms": now_ms}
        check(
            "evidence located",
            bool(found["evidence_matches"]),
            f"tx {codec.to_hex(found['tx_hash'])} (block #{found['height']}, index {found['tx_index']}); "
            + (
                "SHA-256 of its evidence is the registry's evidence_hash"
                if found["evidence_matches"]
                else "its evidence does not hash to the registry's evidence_hash"
            ),
        )
        at_reg = datetime.fromtimestamp(int(record["attested_at_ms"]) / 1000, UTC)
        then, policy, _ = self._verify(record, found, at_reg)
        current, _, _ = self._verify(record, found, now)
        check(
            "chain & signatures (now)",
            current.ok,
            current.error or f"vendor chain and evidence signature hold at {_iso(now_ms)}",
        )
        check(
            "chain & signatures (at registration)",
            then.ok,
            then.error
            or f"vendor chain and evidence signature held at {_iso(int(record['attested_at_ms']))}",
        )
        evidence: VerifiedEvidence | None = then.evidence or current.evidence
        args = found["args"]
        if evidence is None:
            for name in (
                "tcb status",
                "debug off",
                "measurement allowlisted",
                "report_data binding",
                "fresh at registration",
            ):
                check(name, False, "the evidence did not verify, so it cannot be judged")
        else:
            self._policy_checks(check, policy, evidence, record, found, at_reg)
        expires = int(record.get("expires_at_ms", 0))
        status = str(record.get("status"))
        check(
            "attestation unexpired",
            expires > now_ms and status not in ("revoked", "expired"),
            f"status {status}; attestation valid until {_iso(expires)}",
        )
        binding = {
            "operator": found["sender"],
            "endpoint": args.get("endpoint"),
            "chain_id": self.node.genesis.chain_id,
        }
        signature = args.get("binding_sig")
        check(
            "binding signature",
            isinstance(signature, bytes)
            and crypto.verify("umbra/worker-binding/v1", binding, signature, wid),
            "the identity key signed {operator, endpoint, chain_id} (umbra/worker-binding/v1)",
        )
        return {
            "worker": codec.to_hex(wid),
            "ok": all(c["ok"] for c in checks),
            "checks": checks,
            "at_ms": now_ms,
            "registration_tx": codec.to_hex(found["tx_hash"]),
        }

    def _policy_checks(
        self,
        check: Callable[[str, bool, str], None],
        policy: Policy,
        evidence: VerifiedEvidence,
        record: Mapping[str, Any],
        found: Mapping[str, Any],
        at_reg: datetime,
    ) -> None:
        """Each policy step on its own, so a failure in one does not hide the others. The
        policy's own `check` runs last: it is the verdict of record, and overrides any step."""

        def step(run: Callable[[], None]) -> str | None:
            try:
                run()
            except AttestationError as exc:
                return exc.message
            return None

        # Policy.check stops at the first failing step; its per-step methods let each be shown.
        tcb = step(lambda: policy._check_tcb(evidence))
        if tcb is None:
            tcb_detail = (
                f"TCB {evidence.tcb_status} is accepted by the policy"
                if evidence.tcb_status
                else "this TEE type reports no TCB status (its TCB is part of what it measures)"
            )
        check("tcb status", tcb is None, tcb or tcb_detail)
        debug_ok = not evidence.debug or (policy.allow_debug and evidence.tee_type != "dcap")
        check("debug off", debug_ok, "evidence is not debug" if not evidence.debug else "debug evidence")
        cls = measurement_class(evidence)
        measurement = step(lambda: policy._check_measurement(evidence, cls))
        key = policy.measurement_keys.get(cls, "measurement")
        values = sorted(v for k, v in evidence.measurements.items() if fnmatch.fnmatchcase(k, key))
        check(
            "measurement allowlisted",
            measurement is None and str(record.get("measurement", "")) in values,
            measurement or f"{cls} {key} {', '.join(values)} is on the on-chain allowlist",
        )
        fields = binding_fields(
            chain_id=self.node.genesis.chain_id,
            genesis_hash=self.node.genesis.hash,
            identity_pk=bytes(record["id"]),
            ecdh_pk=bytes(record["ecdh_pk"]),
            tee_type=str(found["args"].get("tee_type", record.get("tee_type"))),
        )
        fields["runtime_version"] = found["runtime_version"]  # the version the chain bound at the time
        expected = report_data_binding(**fields)
        reported = bytes(evidence.report_data)
        width = max(len(reported), len(expected))
        binds = bool(reported) and reported.ljust(width, b"\0") == expected.ljust(width, b"\0")
        check(
            "report_data binding",
            binds,
            "report_data is SHA-256(chain_id, genesis_hash, identity_pk, ecdh_pk, tee_type, runtime_version)"
            if binds
            else f"report_data {reported.hex()[:32]}… does not bind this worker's keys and chain",
        )
        fresh = step(lambda: policy._check_freshness(evidence, at_reg))
        issued = evidence.issued_at.isoformat() if evidence.issued_at else "undated"
        check(
            "fresh at registration",
            fresh is None,
            fresh or f"issued {issued}; at most {policy.max_evidence_age_s} s old when the chain accepted it",
        )
        verdict = step(lambda: policy.check(evidence, expected_report_data=expected, now=at_reg))
        check(
            "policy (on-chain policy at registration)",
            verdict is None,
            verdict or "Policy.check accepts the evidence",
        )

    # ---- keys ----------------------------------------------------------------------------------
    def keys(self) -> dict[str, Any]:
        state = self.state()
        rt = self.node.runtime
        keys = rt.keys
        epoch = keys.current_epoch(state)
        holders = [bytes(g) for g in keys.gatekeepers.get(state)]
        masters: list[dict[str, Any]] = [
            {
                "epoch": int.from_bytes(k[-8:], "big"),
                "master_pk": codec.to_hex(bytes(v["master_pk"])),
                "gatekeeper": codec.to_hex(bytes(v["gatekeeper"])),
            }
            for k, v in self._prefix(keys.masters.prefix, 1_000)
        ]
        per_epoch: dict[int, int] = {}
        for k, _ in self._prefix(keys.handovers.prefix, 5_000):
            e = int.from_bytes(k[-8:], "big")
            per_epoch[e] = per_epoch.get(e, 0) + 1
        for m in masters:
            m["handovers"] = per_epoch.get(m["epoch"], 0)
        now = _now_ms()
        gatekeepers = []
        for wid in rt.registry.worker_ids(state)[:_MAX_WORKERS_SCANNED]:
            record = rt.registry.worker(state, wid)
            if record is None or record.get("role") != "gatekeeper":
                continue
            gatekeepers.append(
                {
                    "id": codec.to_hex(wid),
                    "operator": codec.to_hex(bytes(record["operator"])),
                    "status": record.get("status"),
                    "attested": rt.registry.is_attested(state, wid, now),
                    "holds_master": wid in holders,
                    "tee_type": record.get("tee_type"),
                    "platform": record.get("platform"),
                }
            )
        return {
            "epoch": epoch,
            "pending_epoch": keys.pending_epoch.get(state),
            "gatekeeper_operators": [codec.to_hex(bytes(o)) for o in keys.operators.get(state)],
            "gatekeepers": gatekeepers,
            "masters": sorted(masters, key=lambda m: -int(m["epoch"])),
        }

    # ---- contracts and jobs --------------------------------------------------------------------
    def contracts(self, limit: int = _MAX_LIST) -> list[dict[str, Any]]:
        state = self.state()
        rt = self.node.runtime
        rows = []
        for cid, record in self._prefix(rt.contracts.contracts.prefix, max(1, min(limit, _MAX_LIST))):
            current = rt.contracts.current_state(state, cid)
            manifest = record.get("manifest") or {}
            rows.append(
                {
                    "id": codec.to_hex(cid),
                    "name": manifest.get("name"),
                    "owner": codec.to_hex(bytes(record["owner"])),
                    "code_hash": codec.to_hex(bytes(record["code_hash"])),
                    "size": record.get("size"),
                    "created_height": record.get("created_height"),
                    "state_version": current.get("version"),
                    "state_hash": public(current.get("state_hash")),
                }
            )
        rows.sort(key=lambda r: -int(r["created_height"] or 0))
        return rows

    def contract(self, text: str) -> dict[str, Any]:
        self.index.ensure_loaded()
        cid = _parse_id(text, "contract id")
        state = self.state()
        rt = self.node.runtime
        record = rt.contracts.record(state, cid)
        if record is None:
            raise NotFound(f"no contract {codec.to_hex(cid)}")
        code = rt.contracts.code.get(state, cid) or b""
        current = rt.contracts.current_state(state, cid)
        secrets = [  # keyed contract || name; the sealed value itself is never read out
            {"name": bytes(k)[len(cid) :].decode("utf-8", "replace"), "hash": codec.to_hex(bytes(v["hash"]))}
            for k, v in rt.contracts.secrets.items_with_prefix(state, cid)
        ]
        epoch = rt.keys.current_epoch(state)
        contract_keys = []
        for e in range(max(0, epoch - 4), epoch + 1):
            key = rt.keys.contract_key(state, cid, e)
            if key is not None:
                contract_keys.append(
                    public({k: key[k] for k in ("epoch", "ecdh_pk", "sign_pk", "evm_address", "gatekeeper")})
                )
        blob = current.get("blob")
        running = rt.compute.running.get(state, cid)
        queue = rt.compute.queues.get(state, cid, [])
        return {
            "id": codec.to_hex(cid),
            "owner": codec.to_hex(bytes(record["owner"])),
            "manifest": public(record.get("manifest") or {}),
            "code_hash": codec.to_hex(bytes(record["code_hash"])),
            "code_hash_ok": codec.sha256(bytes(code)) == record["code_hash"],
            "code": bytes(code).decode("utf-8", "replace"),
            "size": len(code),
            "account": codec.to_hex(bytes(record["account"])),
            "created_height": record.get("created_height"),
            "state_version": current.get("version"),
            "state_hash": public(current.get("state_hash")),
            "state_ciphertext": None if blob is None else public(bytes(blob), "blob"),
            "secrets": secrets,
            "keys": contract_keys,
            "running_job": None if running is None else codec.to_hex(bytes(running)),
            "queued_jobs": [codec.to_hex(bytes(j)) for j in queue[:_MAX_LIST]],
            "jobs": [self._track_json(t) for t in self.index.recent_jobs(50, contract=cid)],
        }

    def _track_json(self, track: _JobTrack) -> dict[str, Any]:
        return {
            "id": codec.to_hex(track.job),
            "contract": None if track.contract is None else codec.to_hex(track.contract),
            "requester": None if track.requester is None else codec.to_hex(track.requester),
            "status": track.status,
            "requested_ms": track.requested_ms,
            "finished_ms": track.finished_ms,
            "latency_ms": track.latency_ms,
            "workers": [codec.to_hex(w) for w in track.workers],
            "steps": [
                {
                    "what": s.what,
                    "height": s.height,
                    "time_ms": s.time_ms,
                    "workers": [codec.to_hex(w) for w in s.workers],
                    "note": s.note,
                }
                for s in track.steps
            ],
        }

    def jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        self.index.ensure_loaded()
        return [self._track_json(t) for t in self.index.recent_jobs(max(1, min(limit, _MAX_LIST)))]

    def job(self, text: str) -> dict[str, Any]:
        self.index.ensure_loaded()
        jid = _parse_id(text, "job id")
        record = self.node.runtime.compute.job(self.state(), jid)
        track = self.index.job(jid)
        if record is None and track is None:
            raise NotFound(f"no job {codec.to_hex(jid)}")
        out: dict[str, Any] = {"id": codec.to_hex(jid), "record": public(record)}
        if record is not None:
            for name in ("requested", "assigned", "settled"):
                out[f"{name}_ms"] = self._block_time(record.get(f"{name}_height"))
        out["track"] = None if track is None else self._track_json(track)
        return out

    # ---- staking -------------------------------------------------------------------------------
    def staking(self) -> dict[str, Any]:
        self.index.ensure_loaded()
        staking = getattr(self.node.runtime, "staking", None)
        if staking is None:
            # No staking module in this runtime: show whatever staking state exists.
            pools = self._prefix(b"staking/pool/", _MAX_LIST)
            slashes = self._prefix(b"staking/slash/", _MAX_LIST)
            return {
                "module": False,
                "pools": [{"worker": codec.to_hex(k), **public(v)} for k, v in pools],
                "slashes": [public(v) for _, v in slashes],
            }
        state = self.state()
        pool_rows: list[dict[str, Any]] = []
        for worker, pool in self._prefix(staking.pools.prefix, _MAX_LIST):
            pool_rows.append(
                {
                    "worker": codec.to_hex(worker),
                    "owner": codec.to_hex(bytes(pool["owner"])),
                    "stake": pool.get("stake"),
                    "shares": pool.get("shares"),
                    "commission_ppm": pool.get("commission_ppm"),
                    "stopped": pool.get("stopped"),
                    "staked": staking.is_staked(state, worker),
                    "reputation": staking.score(state, worker),
                    "queued_withdrawals": len(staking.queue.get(state, worker, [])),
                }
            )
        total = int(staking.slash_count.get(state))
        slash_rows: list[dict[str, Any]] = []
        for sid in range(total - 1, max(-1, total - 51), -1):
            record = staking.slashes.get(state, sid)
            if record is None:
                continue
            slash_rows.append(
                {
                    "slash": sid,
                    "worker": codec.to_hex(bytes(record["worker"])),
                    "amount": record.get("amount"),
                    "reason": record.get("reason"),
                    "height": record.get("height"),
                    "evidence_hash": codec.to_hex(codec.sha256(codec.encode(record.get("evidence")))),
                }
            )
        return {"module": True, "pools": pool_rows, "slashes": slash_rows, "slash_count": total}

    # ---- search --------------------------------------------------------------------------------
    def search(self, query: str) -> tuple[str, str] | None:
        """(kind, explorer path) for a height, a block/tx/worker/contract/job hash or an address."""
        q = query.strip().lstrip("#")
        if not q:
            return None
        if q.isdigit():
            height = int(q)
            if height <= self.node.store.head().height:
                return "block", f"/explorer/block/{height}"
            return None
        if not _HEX32.match(q):
            return None
        key = codec.from_hex(q if q.startswith("0x") else "0x" + q)
        ref = codec.to_hex(key)
        state = self.state()
        rt = self.node.runtime
        store = self.node.store
        if store.height_of(key) is not None:
            return "block", f"/explorer/block/{ref}"
        if store.tx(key) is not None or key in self.node.mempool:
            return "tx", f"/explorer/tx/{ref}"
        if rt.registry.worker(state, key) is not None:
            return "worker", f"/explorer/worker/{ref}"
        if rt.contracts.exists(state, key):
            return "contract", f"/explorer/contract/{ref}"
        if rt.compute.job(state, key) is not None or self.index.job(key) is not None:
            return "job", f"/explorer/job/{ref}"
        acct = rt.balances.account(state, key)
        if any(acct.values()) or rt.system.nonce(state, key) or store.txs_of(key, 1):
            return "account", f"/explorer/account/{ref}"
        return None


class Busy(RuntimeError):
    pass


# ==== HTML =========================================================================================


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _iso(ms: int | None) -> str:
    if ms is None:
        return "—"
    return datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _time(ms: int | None) -> str:
    if ms is None:
        return "—"
    iso = datetime.fromtimestamp(int(ms) / 1000, UTC).isoformat()
    return f'<time datetime="{esc(iso)}">{esc(_iso(ms))}</time>'


def _dur(ms: int | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    return f"{ms // 60_000} min {ms % 60_000 // 1000} s"


def _link(kind: str, ref: str | int | None, text: str | None = None, *, full: bool = False) -> str:
    if ref is None:
        return "—"
    label = str(ref) if full or not str(ref).startswith("0x") else _short(codec.from_hex(str(ref)))
    title = f' title="{esc(ref)}"' if not full else ""
    cls = "id full" if full else "id"
    return f'<a class="{cls}" href="/explorer/{kind}/{quote(str(ref))}"{title}>{esc(text or label)}</a>'


def _blk(height: Any) -> str:
    """A link to a block by height, labelled #height."""
    if height is None:
        return "—"
    return _link("block", int(height), f"#{int(height)}", full=True)


def _hash(value: Any) -> str:
    """A digest (from `public`) or a short hex string, for display."""
    if value is None:
        return "—"
    if _is_digest(value):
        digest = codec.from_hex(value["sha256"])
        return (
            f'<span class="digest" title="SHA-256 {esc(value["sha256"])} of {esc(value["size"])} bytes">'
            f"sha256 {esc(_short(digest))} · {esc(value['size'])} B</span>"
        )
    text = str(value)
    if text.startswith("0x") and len(text) > 18:
        return f'<span class="hex" title="{esc(text)}">{esc(text[:10])}…{esc(text[-6:])}</span>'
    return f'<span class="hex">{esc(text)}</span>'


def _ids(values: Iterable[str], kind: str = "worker") -> str:
    items = [_link(kind, v) for v in values]
    return ", ".join(items) if items else "—"


def _badge(text: str, tone: str) -> str:
    return f'<span class="badge {esc(tone)}">{esc(text)}</span>'


def _yes(flag: bool | None, yes: str = "yes", no: str = "no") -> str:
    if flag is None:
        return "—"
    return _badge(yes, "good") if flag else _badge(no, "bad")


# Field names whose 32-byte values name something the explorer has a page for.
_ID_FIELDS = {
    "worker": "worker",
    "workers": "worker",
    "silent": "worker",
    "gatekeeper": "worker",
    "identity_pk": "worker",
    "job": "job",
    "contract": "contract",
    "owner": "account",
    "requester": "account",
    "operator": "account",
    "sender": "account",
    "who": "account",
    "to": "account",
}


def render_value(value: Any, key: str | None = None, depth: int = 0) -> str:
    """A `public` value as nested HTML: digests as short hashes, ids as links."""
    if value is None:
        return '<span class="muted">null</span>'
    if _is_digest(value):
        return _hash(value)
    if isinstance(value, bool):
        return esc(str(value).lower())
    if isinstance(value, int | float):
        return esc(value)
    if isinstance(value, str):
        kind = _ID_FIELDS.get(key or "")
        if kind and _HEX32.match(value) and value.startswith("0x"):
            return _link(kind, value, full=True)
        if value.startswith("0x"):
            return f'<span class="hex">{esc(value)}</span>'
        return esc(value)
    if depth > 6:
        return '<span class="muted">…</span>'
    if isinstance(value, Mapping):
        if not value:
            return '<span class="muted">{}</span>'
        rows = "".join(
            f"<tr><th>{esc(k)}</th><td>{render_value(v, str(k), depth + 1)}</td></tr>"
            for k, v in value.items()
        )
        return f'<table class="kv">{rows}</table>'
    if isinstance(value, list):
        if not value:
            return '<span class="muted">[]</span>'
        return "<ol>" + "".join(f"<li>{render_value(v, key, depth + 1)}</li>" for v in value[:100]) + "</ol>"
    return esc(value)


def _table(headers: list[str], rows: list[str], empty: str, cls: str = "") -> str:
    if not rows:
        return f'<p class="empty">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f'<div class="scroll"><table class="grid {esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _kv(pairs: list[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


def page(title: str, body: str, *, head: int | None = None) -> str:
    height = "" if head is None else f"#{head}"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · Umbra explorer</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/explorer/static/explorer.css">
<script src="/explorer/static/explorer.js" defer></script>
</head>
<body>
<header class="top">
  <a class="brand" href="/explorer">Umbra <span>explorer</span></a>
  <nav>
    <a href="/explorer#workers">Workers</a><a href="/explorer#keys">Keys</a><a href="/explorer/blocks">Blocks</a>
    <a href="/explorer#contracts">Contracts</a><a href="/explorer#jobs">Jobs</a><a href="/explorer#staking">Staking</a>
  </nav>
  <form class="search" action="/explorer/search" method="get" role="search">
    <input id="search" name="q" type="search" placeholder="height, block / tx / worker / job hash, address" aria-label="search">
    <button type="submit">Search</button>
  </form>
  <span id="live" class="live off" title="live updates over server-sent events">offline</span>
  <span id="head-height" class="head">{esc(height)}</span>
</header>
<main>
<h1>{esc(title)}</h1>
{body}
</main>
<footer>Umbra explorer · public data only: ciphertext is shown as SHA-256 and size, never as bytes.</footer>
</body>
</html>"""


def section(name: str, title: str, inner: str, *, watch: str, ref: str | None = None) -> str:
    """A live section: the script re-fetches it when a block carries events of `watch` modules
    (`*`: every block; `tx`: blocks with txs) that mention `ref`, if given."""
    ref_attr = f' data-id="{esc(ref)}"' if ref else ""
    return (
        f'<section id="{esc(name)}" class="card"><h2>{esc(title)}</h2>'
        f'<div class="live-section" data-section="{esc(name)}" data-watch="{esc(watch)}"{ref_attr}>{inner}</div>'
        "</section>"
    )


# ---- section renderers (each returns the inner HTML of its section) ------------------------------


def render_summary(x: Explorer, _: str | None) -> str:
    s = x.summary()
    cards = [
        ("height", _blk(s["height"])),
        ("chain", esc(s["chain_id"])),
        ("workers attested", f"{esc(s['workers_attested'])} / {esc(s['workers'])}"),
        ("key epoch", esc(s["key_epoch"]) if s["key_epoch"] >= 0 else "none yet"),
        ("contracts", esc(s["contracts"])),
        ("jobs settled", f"{esc(s['jobs_settled'])} / {esc(s['jobs_indexed'])}"),
        ("tx/s (1 min)", esc(s["tx_rate_1m"])),
        ("mempool", esc(s["mempool"])),
    ]
    return (
        '<div class="stats">'
        + "".join(
            f'<div class="stat"><div class="label">{esc(k)}</div><div class="value">{v}</div></div>'
            for k, v in cards
        )
        + "</div>"
    )


def render_workers(x: Explorer, _: str | None) -> str:
    data = x.workers()
    rows = []
    for w in data["workers"]:
        tone = {"attested": "good", "expired": "warn", "revoked": "bad"}.get(w["attestation"], "")
        rep = "—" if w["reputation"] is None else esc(w["reputation"])
        stake = "—" if w["stake"] is None else esc(w["stake"])
        rows.append(
            f'<tr data-worker="{esc(w["id"])}">'
            f"<td>{_link('worker', w['id'], full=True)}</td>"
            f"<td>{esc(w['role'])}</td>"
            f"<td>{esc(w['tee_type'])}<span class='muted'> / {esc(w['platform'])}</span></td>"
            f"<td>{_hash('0x' + str(w['measurement'] or ''))}</td>"
            f"<td>{esc(w['tcb_status'] or '—')}</td>"
            f'<td class="attestation">{_badge(w["attestation"], tone)}<div class="muted small">until {_time(w["expires_at_ms"])}</div></td>'
            f"<td>{_badge(w['status'], 'good' if w['status'] == 'active' else 'warn')}</td>"
            f"<td>{_yes(w['online'], 'online', 'offline')}</td>"
            f"<td>{_yes(w['keyed'])}</td>"
            f"<td>{stake}</td><td>{rep}</td>"
            f"<td>{esc(w['jobs_done'])} / {esc(w['jobs_missed'])}</td>"
            "</tr>"
        )
    headers = [
        "worker id",
        "role",
        "TEE",
        "measurement",
        "TCB",
        "attestation",
        "status",
        "online",
        "key",
        "stake",
        "reputation",
        "jobs done / missed",
    ]
    note = f'<p class="muted small">{esc(data["total"])} registered; attestation is checked on chain at registration and expires.</p>'
    return note + _table(headers, rows, "No workers are registered (none attested yet).", "workers")


def render_keys(x: Explorer, _: str | None) -> str:
    k = x.keys()
    epoch = "none (no master key yet)" if k["epoch"] < 0 else str(k["epoch"])
    pending = "" if k["pending_epoch"] is None else f" · rotation to epoch {esc(k['pending_epoch'])} pending"
    head = f"<p>Current key epoch: <strong>{esc(epoch)}</strong>{pending}</p>"
    gk_rows = [
        f"<tr><td>{_link('worker', g['id'], full=True)}</td><td>{esc(g['tee_type'])}/{esc(g['platform'])}</td>"
        f"<td>{_badge(g['status'], 'good' if g['status'] == 'active' else 'warn')}</td>"
        f"<td>{_yes(g['attested'], 'attested', 'not attested')}</td><td>{_yes(g['holds_master'])}</td></tr>"
        for g in k["gatekeepers"]
    ]
    epoch_rows = [
        f"<tr><td>{esc(m['epoch'])}</td><td>{_hash(m['master_pk'])}</td><td>{_link('worker', m['gatekeeper'])}</td>"
        f"<td>{esc(m['handovers'])}</td></tr>"
        for m in k["masters"]
    ]
    return (
        head
        + "<h3>Gatekeepers</h3>"
        + _table(
            ["gatekeeper", "TEE", "status", "attestation", "holds master key"],
            gk_rows,
            "No gatekeepers registered.",
        )
        + "<h3>Key epochs</h3>"
        + _table(
            ["epoch", "master public key", "published by", "handovers"],
            epoch_rows,
            "No key epoch published yet.",
        )
    )


def render_blocks(x: Explorer, _: str | None) -> str:
    x.index.ensure_loaded()
    rows = [
        f'<tr data-height="{b.height}"><td>{_blk(b.height)}</td>'
        f"<td>{_link('block', codec.to_hex(b.hash))}</td><td>{_time(b.time_ms)}</td>"
        f"<td>{b.txs}</td><td>{b.events}</td></tr>"
        for b in x.index.recent_blocks(12)
    ]
    return _table(["height", "hash", "time", "txs", "events"], rows, "No blocks yet.", "blocks")


def render_txs(x: Explorer, _: str | None) -> str:
    x.index.ensure_loaded()
    rows = [
        f'<tr data-tx="{esc(codec.to_hex(t.hash))}"><td>{_link("tx", codec.to_hex(t.hash))}</td>'
        f"<td>{_blk(t.height)}</td><td>{esc(t.call)}</td>"
        f"<td>{_link('account', codec.to_hex(t.sender))}</td><td>{_yes(t.ok, 'ok', 'failed')}</td></tr>"
        for t in x.index.recent_txs(12)
    ]
    return _table(["tx", "block", "call", "sender", "result"], rows, "No txs yet.", "txs")


def render_contracts(x: Explorer, _: str | None) -> str:
    rows = [
        f"<tr><td>{_link('contract', c['id'])}</td><td>{esc(c['name'] or '—')}</td><td>{_hash(c['code_hash'])}</td>"
        f"<td>{esc(c['size'])} B</td><td>v{esc(c['state_version'])} {_hash(c['state_hash'])}</td>"
        f"<td>{_link('account', c['owner'])}</td><td>{_blk(c['created_height'])}</td></tr>"
        for c in x.contracts()
    ]
    return _table(
        ["contract", "name", "code hash", "code", "state", "owner", "deployed"],
        rows,
        "No contracts deployed.",
    )


def _job_rows(jobs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for j in jobs:
        tone = {"settled": "good", "failed": "bad"}.get(j["status"], "warn")
        steps = []
        for s in j["steps"]:
            offset = "" if j["requested_ms"] is None else f"+{_dur(s['time_ms'] - j['requested_ms'])}"
            who = f" {_ids(s['workers'])}" if s["workers"] else ""
            steps.append(
                f'<li><span class="step {esc(s["what"])}">{esc(s["what"])}</span> {esc(offset)}{who}</li>'
            )
        rows.append(
            f'<tr data-job="{esc(j["id"])}"><td>{_link("job", j["id"])}</td><td>{_link("contract", j["contract"])}</td>'
            f'<td class="job-status">{_badge(j["status"], tone)}</td><td>{_time(j["requested_ms"])}</td>'
            f"<td>{esc(_dur(j['latency_ms']))}</td><td>{_ids(j['workers'])}</td>"
            f'<td><ol class="steps">{"".join(steps)}</ol></td></tr>'
        )
    return rows


_JOB_HEADERS = ["job", "contract", "status", "requested", "latency", "workers", "lifecycle"]


def render_jobs(x: Explorer, _: str | None) -> str:
    return _table(_JOB_HEADERS, _job_rows(x.jobs(25)), "No jobs yet.", "jobs")


def render_staking(x: Explorer, _: str | None) -> str:
    s = x.staking()
    if not s["module"]:
        if not s["pools"]:
            return '<p class="empty">no staking pools</p>'
        return render_value(s["pools"])
    pool_rows = [
        f"<tr><td>{_link('worker', p['worker'])}</td><td>{_link('account', p['owner'])}</td><td>{esc(p['stake'])}</td>"
        f"<td>{esc(p['shares'])}</td><td>{esc(p['commission_ppm'] / 10_000 if p['commission_ppm'] is not None else '—')} %</td>"
        f"<td>{_yes(p['staked'])}</td><td>{esc(p['reputation'])}</td><td>{esc(p['queued_withdrawals'])}</td></tr>"
        for p in s["pools"]
    ]
    slash_rows = [
        f"<tr><td>{esc(sl['slash'])}</td><td>{_link('worker', sl['worker'])}</td><td>{esc(sl['amount'])}</td>"
        f"<td>{esc(sl['reason'])}</td><td>{_blk(sl['height'])}</td><td>{_hash(sl['evidence_hash'])}</td></tr>"
        for sl in s["slashes"]
    ]
    return (
        "<h3>Pools</h3>"
        + _table(
            [
                "worker",
                "owner",
                "stake",
                "shares",
                "commission",
                "staked",
                "reputation",
                "withdrawals queued",
            ],
            pool_rows,
            "no staking pools",
        )
        + "<h3>Slashes</h3>"
        + _table(["#", "worker", "amount", "reason", "block", "evidence"], slash_rows, "No slashes.")
    )


def render_worker(x: Explorer, ref: str | None) -> str:
    w = x.worker(ref or "")
    tone = {"attested": "good", "expired": "warn", "revoked": "bad"}.get(w["attestation"], "")
    pairs = [
        ("worker id", f'<span class="id full">{esc(w["id"])}</span>'),
        (
            "attestation",
            _badge(w["attestation"], tone)
            + f" attested {_time(w['attested_at_ms'])}, until {_time(w['expires_at_ms'])}",
        ),
        (
            "status",
            _badge(w["status"], "good" if w["status"] == "active" else "warn")
            + " "
            + _yes(w["online"], "online", "offline"),
        ),
        ("role", esc(w["role"])),
        ("TEE type / platform", f"{esc(w['tee_type'])} / {esc(w['platform'])} (class {esc(w['class'])})"),
        ("measurement", f'<span class="hex">{esc(w["measurement"])}</span>'),
        ("TCB status", esc(w["tcb_status"] or "— (not reported by this TEE type)")),
        ("operator", _link("account", w["operator"], full=True)),
        ("endpoint", esc(w["endpoint"])),
        ("ECDH public key", _hash(w["ecdh_pk"])),
        ("holds current key", _yes(w["keyed"])),
        ("stake", "—" if w["stake"] is None else esc(w["stake"])),
        ("reputation", "—" if w["reputation"] is None else esc(w["reputation"])),
        ("jobs done / missed", f"{esc(w['jobs_done'])} / {esc(w['jobs_missed'])}"),
        ("registered", _blk(w["registered_height"])),
        ("last heartbeat", f"#{esc(w['last_heartbeat'])}"),
        ("evidence hash", _hash(w["evidence_hash"])),
    ]
    wid = codec.from_hex(w["id"])
    jobs = [x._track_json(t) for t in x.index.recent_jobs(20, worker=wid)]
    return (
        _kv(pairs)
        + "<h3>Recent jobs</h3>"
        + _table(_JOB_HEADERS, _job_rows(jobs), "No jobs for this worker yet.", "jobs")
    )


def render_job(x: Explorer, ref: str | None) -> str:
    j = x.job(ref or "")
    record = j["record"] or {}
    track = j["track"]
    status = str(record.get("status") or (track or {}).get("status"))
    tone = {"settled": "good", "failed": "bad"}.get(status, "warn")
    pairs = [
        ("job", f'<span class="id full">{esc(j["id"])}</span>'),
        ("status", f'<span class="job-status">{_badge(status, tone)}</span>'),
        ("contract", _link("contract", record.get("contract") or (track or {}).get("contract"), full=True)),
        (
            "requester",
            _link("account", record.get("requester"), full=True) if record.get("requester") else "—",
        ),
        ("replicas", esc(record.get("replicas", "—"))),
        ("requested", f"{_time(j.get('requested_ms'))} (#{esc(record.get('requested_height'))})"),
        ("assigned", f"{_time(j.get('assigned_ms'))} (#{esc(record.get('assigned_height'))})"),
        ("settled", f"{_time(j.get('settled_ms'))} (#{esc(record.get('settled_height'))})"),
        (
            "latency",
            esc(_dur(j["settled_ms"] - j["requested_ms"]))
            if j.get("settled_ms") and j.get("requested_ms")
            else "—",
        ),
        ("workers", _ids(record.get("workers") or [])),
        ("sealed input", _hash(record.get("sealed_input"))),
        ("input hash", _hash(record.get("input_hash"))),
    ]
    steps = ""
    if track:
        steps = "<h3>Lifecycle</h3>" + _table(
            ["step", "block", "time", "after request", "workers", "note"],
            [
                f'<tr><td><span class="step {esc(s["what"])}">{esc(s["what"])}</span></td>'
                f"<td>{_blk(s['height'])}</td><td>{_time(s['time_ms'])}</td>"
                f"<td>{esc(_dur(s['time_ms'] - track['requested_ms']) if track['requested_ms'] else '—')}</td>"
                f"<td>{_ids(s['workers'])}</td><td>{esc(s['note'] or '')}</td></tr>"
                for s in track["steps"]
            ],
            "No events indexed.",
        )
    results = record.get("results") or {}
    result_rows = []
    for worker, result in results.items():
        body = result.get("body") or {}
        result_rows.append(
            f"<tr><td>{_link('worker', worker)}</td><td>{_hash(body.get('output_commitment'))}</td>"
            f"<td>{_hash(result.get('sealed_output'))}</td><td>{_hash(body.get('new_state_hash'))}</td>"
            f"<td>{render_value(body.get('failed'))}</td></tr>"
        )
    outcome = record.get("outcome")
    return (
        _kv(pairs)
        + steps
        + "<h3>Results (which worker did what)</h3>"
        + _table(
            ["worker", "output commitment", "sealed output", "new state hash", "failed"],
            result_rows,
            "No results yet.",
        )
        + ("<h3>Outcome</h3>" + render_value(outcome) if outcome else "")
    )


def render_contract(x: Explorer, ref: str | None) -> str:
    c = x.contract(ref or "")
    pairs = [
        ("contract", f'<span class="id full">{esc(c["id"])}</span>'),
        ("name", esc((c["manifest"] or {}).get("name") or "—")),
        ("owner", _link("account", c["owner"], full=True)),
        (
            "code hash",
            f'<span class="hex" id="code-hash">{esc(c["code_hash"])}</span> '
            + _yes(c["code_hash_ok"], "matches code", "MISMATCH"),
        ),
        ("deployed", _blk(c["created_height"])),
        ("state version", f'<span id="state-version">{esc(c["state_version"])}</span>'),
        ("state hash", _hash(c["state_hash"])),
        (
            "state ciphertext",
            _hash(c["state_ciphertext"]) if c["state_ciphertext"] else "— (in the blob store, by hash)",
        ),
        ("running job", _link("job", c["running_job"]) if c["running_job"] else "—"),
        ("queued jobs", _ids(c["queued_jobs"], "job")),
        ("account", _link("account", c["account"], full=True)),
        ("manifest", render_value(c["manifest"])),
    ]
    secrets = [f"<tr><td>{esc(s['name'])}</td><td>{_hash(s['hash'])}</td></tr>" for s in c["secrets"]]
    keys = [
        f"<tr><td>{esc(k['epoch'])}</td><td>{_hash(k['ecdh_pk'])}</td><td>{_hash(k['sign_pk'])}</td>"
        f"<td>{_hash(k['evm_address'])}</td><td>{_link('worker', k['gatekeeper'])}</td></tr>"
        for k in c["keys"]
    ]
    return (
        _kv(pairs)
        + "<h3>Jobs</h3>"
        + _table(_JOB_HEADERS, _job_rows(c["jobs"]), "No jobs for this contract yet.", "jobs")
        + "<h3>Contract keys</h3>"
        + _table(
            ["epoch", "ECDH key", "signing key", "EVM address", "gatekeeper"],
            keys,
            "No contract key published yet.",
        )
        + "<h3>Secrets (sealed; hashes only)</h3>"
        + _table(["name", "hash"], secrets, "No secrets uploaded.")
    )


@dataclass(frozen=True)
class _Section:
    title: str
    watch: str
    render: Callable[[Explorer, str | None], str]


SECTIONS: dict[str, _Section] = {
    "summary": _Section("Network", "*", render_summary),
    "workers": _Section("Workers", "registry keys staking compute", render_workers),
    "keys": _Section("Gatekeepers and key epochs", "keys registry", render_keys),
    "blocks": _Section("Latest blocks", "*", render_blocks),
    "txs": _Section("Latest transactions", "tx", render_txs),
    "contracts": _Section("Contracts", "contracts keys compute", render_contracts),
    "jobs": _Section("Jobs", "compute", render_jobs),
    "staking": _Section("Staking pools and slashes", "staking", render_staking),
    "worker": _Section("Worker", "registry keys staking compute", render_worker),
    "job": _Section("Job", "compute", render_job),
    "contract": _Section("Contract", "contracts keys compute", render_contract),
}

_CHARTS = [
    ("tx_rate", "tx/s", ""),
    ("job_rate", "jobs/s", ""),
    ("job_latency_ms", "job latency", "ms"),
    ("workers_online", "workers online", ""),
]


def _charts() -> str:
    figures = "".join(
        f'<figure class="chart" data-metric="{m}" data-unit="{u}"><figcaption>{esc(label)}</figcaption>'
        f'<svg class="plot" viewBox="0 0 300 110" role="img" aria-label="{esc(label)} over time"></svg></figure>'
        for m, label, u in _CHARTS
    )
    return (
        '<section id="charts" class="card"><h2>Activity (last 5 minutes)</h2>'
        f'<div class="charts" data-series="/explorer/api/series?window_s=300&amp;bucket_s=5">{figures}</div></section>'
    )


def _live(name: str, x: Explorer, ref: str | None = None) -> str:
    spec = SECTIONS[name]
    return section(name, spec.title, spec.render(x, ref), watch=spec.watch, ref=ref)


def overview_page(x: Explorer) -> str:
    head = x.node.store.head().height
    body = (
        _live("summary", x)
        + _charts()
        + _live("workers", x)
        + '<div class="two">'
        + _live("blocks", x)
        + _live("txs", x)
        + "</div>"
        + _live("keys", x)
        + _live("contracts", x)
        + _live("jobs", x)
        + _live("staking", x)
    )
    return page("Network overview", body, head=head)


def blocks_page(x: Explorer, before: int | None) -> str:
    rows = x.blocks(before, 25)
    trs = [
        f"<tr><td>{_blk(b['height'])}</td><td>{_link('block', b['hash'])}</td>"
        f"<td>{_time(b['time_ms'])}</td><td>{esc(b['txs'])}</td><td>{_hash(b['author'])}</td></tr>"
        for b in rows
    ]
    nav = ""
    if rows and rows[-1]["height"] > 0:
        nav = (
            f'<p class="pager"><a href="/explorer/blocks?before={rows[-1]["height"]}">older blocks →</a></p>'
        )
    body = (
        '<section class="card">'
        + _table(["height", "hash", "time", "txs", "author"], trs, "No blocks.")
        + nav
        + "</section>"
    )
    return page("Blocks", body, head=x.node.store.head().height)


def block_page(x: Explorer, ref: str) -> str:
    b = x.block(ref)
    height = int(b["height"])
    nav = []
    if height > 0:
        nav.append(f'<a href="/explorer/block/{height - 1}">← #{height - 1}</a>')
    if height < b["head"]:
        nav.append(f'<a href="/explorer/block/{height + 1}">#{height + 1} →</a>')
    pairs = [
        ("height", esc(height)),
        ("hash", f'<span class="hex full">{esc(b["hash"])}</span>'),
        ("parent", _link("block", b["parent"], full=True) if height > 0 else "—"),
        ("time", _time(b["time_ms"])),
        ("author", _hash(b["author"])),
        ("state root", _hash(b["state_root"])),
        ("tx root", _hash(b["tx_root"])),
        ("events root", _hash(b["events_root"])),
        ("runtime version", esc(b["runtime_version"])),
        ("txs", esc(b["tx_count"])),
    ]
    txs = [
        f"<tr><td>{esc(t['index'])}</td><td>{_link('tx', t['hash'])}</td><td>{esc(t['call'])}</td>"
        f"<td>{_link('account', t['sender']) if t['sender'].startswith('0x') else '?'}</td>"
        f"<td>{_yes(t['ok'], 'ok', 'failed')} {esc(t['error'] or '')}</td></tr>"
        for t in b["txs"]
    ]
    events = [
        f"<tr><td>{esc(e['module'])}.{esc(e['name'])}</td><td>{esc(e['tx'] if e['tx'] is not None else 'block')}</td>"
        f"<td>{render_value(e['data'])}</td></tr>"
        for e in b["events"]
    ]
    body = (
        f'<p class="pager">{" · ".join(nav)}</p><section class="card">{_kv(pairs)}</section>'
        + f'<section class="card"><h2>Transactions</h2>{_table(["#", "hash", "call", "sender", "result"], txs, "No txs in this block.")}</section>'
        + f'<section class="card"><h2>Events</h2>{_table(["event", "tx", "data"], events, "No events.")}</section>'
    )
    return page(f"Block #{height}", body, head=b["head"])


def tx_page(x: Explorer, ref: str) -> str:
    t = x.tx(ref)
    if t["status"] == "pending":
        return page(
            "Transaction (pending)",
            f'<section class="card"><p>{esc(t["hash"])} is in the mempool, not yet in a block.</p></section>',
        )
    pairs = [
        ("hash", f'<span class="hex full">{esc(t["hash"])}</span>'),
        ("block", _blk(t["block"]) + f" · index {esc(t['index'])}"),
        ("time", _time(t["time_ms"])),
        ("sender", _link("account", t["sender"], full=True)),
        ("nonce", esc(t["nonce"])),
        ("fee", esc(t["fee"])),
        ("call", f"<code>{esc(t['call'])}</code>"),
        (
            "result",
            _yes(t["ok"], "ok", "failed")
            + (f" <code>{esc(t['error'])}</code> {esc(t['message'])}" if t["error"] else ""),
        ),
        ("size", f"{esc(t['size'])} B"),
    ]
    events = [
        f"<tr><td>{esc(e['module'])}.{esc(e['name'])}</td><td>{render_value(e['data'])}</td></tr>"
        for e in t["events"]
    ]
    body = (
        f'<section class="card">{_kv(pairs)}</section>'
        + f'<section class="card"><h2>Arguments</h2>{render_value(t["args"])}</section>'
        + f'<section class="card"><h2>Events</h2>{_table(["event", "data"], events, "No events.")}</section>'
    )
    return page("Transaction", body)


def account_page(x: Explorer, ref: str) -> str:
    a = x.account(ref)
    pairs = [
        ("address", f'<span class="hex full">{esc(a["address"])}</span>'),
        ("free", esc(a["free"])),
        ("reserved", esc(a["reserved"])),
        ("staked", esc(a["staked"])),
        ("nonce", esc(a["nonce"])),
        ("delegates to", _ids(a["delegations"])),
    ]
    if a["is_worker"]:
        pairs.append(("worker", _link("worker", a["address"], full=True)))
    if a["is_contract"]:
        pairs.append(("contract", _link("contract", a["address"], full=True)))
    txs = [
        f"<tr><td>{_link('tx', t['hash'])}</td><td>{_blk(t['block'])}</td>"
        f"<td>{_yes(t['ok'], 'ok', 'failed')} {esc(t['error'] or '')}</td></tr>"
        for t in a["txs"]
    ]
    body = f'<section class="card">{_kv(pairs)}</section><section class="card"><h2>Recent transactions sent</h2>{_table(["tx", "block", "result"], txs, "No txs sent.")}</section>'
    return page("Account", body)


def worker_page(x: Explorer, ref: str) -> str:
    wid = _parse_id(ref, "worker id")
    ref = codec.to_hex(wid)
    detail = _live("worker", x, ref)
    a = x.attestation(ref)
    reg = a["registration"]
    verdict = a["verdict"]
    if reg is None:
        evidence_html = '<p class="empty">The registration tx of this worker was not found.</p>'
    else:
        pairs = [
            (
                "registration tx",
                _link("tx", reg["tx"], full=True) + f" (block {_blk(reg['block'])}, {esc(reg['event'])})",
            ),
            (
                "evidence",
                _hash(reg["evidence"])
                + " "
                + _yes(reg["evidence_matches"], "matches the registry's evidence_hash", "does not match"),
            ),
            ("endorsements", render_value(reg["endorsements"])),
            ("verified at", _time(reg["time_ms"]) + " (block time of registration)"),
        ]
        if verdict is not None:
            pairs += [
                (
                    "verdict at registration",
                    _yes(verdict["ok"], "ok", "refused")
                    + (f" {esc(verdict['error'])}" if verdict["error"] else ""),
                ),
                ("type / platform", f"{esc(verdict['type'])} / {esc(verdict['platform'])}"),
                ("TCB status", esc(verdict["status"] or "— (not reported by this TEE type)")),
                ("debug", render_value(verdict["debug"])),
                ("measurements", render_value(verdict["measurements"])),
                ("report_data", f'<span class="hex">{esc(verdict["report_data"])}</span>'),
                ("issued at", esc(verdict.get("issued_at") or "—")),
                ("claims", render_value(verdict["claims"])),
            ]
        evidence_html = _kv(pairs)
    reverify = (
        '<div class="reverify">'
        f'<button id="reverify" type="button" data-worker="{esc(ref)}">Re-verify attestation in this node</button>'
        '<span id="reverify-status" class="muted"></span>'
        '<div id="reverify-result" aria-live="polite"></div></div>'
    )
    body = (
        detail
        + '<section id="attestation" class="card"><h2>Attestation evidence (as verified at registration)</h2>'
        + evidence_html
        + reverify
        + "</section>"
    )
    return page(f"Worker {_short(wid)} — attestation", body, head=x.node.store.head().height)


def job_page(x: Explorer, ref: str) -> str:
    jid = codec.to_hex(_parse_id(ref, "job id"))
    return page(f"Job {_short(codec.from_hex(jid))}", _live("job", x, jid), head=x.node.store.head().height)


def contract_page(x: Explorer, ref: str) -> str:
    cid = codec.to_hex(_parse_id(ref, "contract id"))
    c = x.contract(cid)
    code = (
        f'<section id="code" class="card"><h2>Code <span class="muted small">SHA-256 {esc(c["code_hash"])}</span></h2>'
        f'<pre class="code"><code>{esc(c["code"])}</code></pre></section>'
    )
    return page(
        f"Contract {_short(codec.from_hex(cid))}",
        _live("contract", x, cid) + code,
        head=x.node.store.head().height,
    )


def not_found_page(message: str) -> str:
    return page("Not found", f'<section class="card"><p class="empty">{esc(message)}</p></section>')


# ==== routes =======================================================================================


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=_HEADERS)


def _json(value: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(value, status_code=status, headers={"Cache-Control": "no-store"})


def _json_error(status: int, code: str, message: str) -> JSONResponse:
    return _json({"error": {"code": code, "message": message}}, status)


def router(x: Explorer) -> APIRouter:
    r = APIRouter(include_in_schema=True, tags=["explorer"])

    async def html_view(render: Callable[[], str]) -> HTMLResponse:
        try:
            return _html(await run_in_threadpool(render))
        except NotFound as exc:
            return _html(not_found_page(str(exc)), 404)

    async def json_view(read: Callable[[], Any]) -> JSONResponse:
        try:
            return _json(await run_in_threadpool(read))
        except NotFound as exc:
            return _json_error(404, "not_found", str(exc))
        except Busy as exc:
            return _json_error(429, "busy", str(exc))

    # ---- pages ---------------------------------------------------------------------------------
    @r.get("/explorer", response_class=HTMLResponse, summary="Explorer: network overview (server-rendered)")
    async def overview() -> HTMLResponse:
        return await html_view(lambda: overview_page(x))

    @r.get("/explorer/", include_in_schema=False)
    async def overview_slash() -> RedirectResponse:
        return RedirectResponse("/explorer", status_code=308)

    @r.get("/explorer/blocks", response_class=HTMLResponse, summary="Explorer: blocks, newest first")
    async def blocks_view(before: int | None = None) -> HTMLResponse:
        return await html_view(lambda: blocks_page(x, before))

    @r.get(
        "/explorer/block/{ref}", response_class=HTMLResponse, summary="Explorer: a block by height or hash"
    )
    async def block_view(ref: str) -> HTMLResponse:
        return await html_view(lambda: block_page(x, ref))

    @r.get("/explorer/tx/{ref}", response_class=HTMLResponse, summary="Explorer: a transaction")
    async def tx_view(ref: str) -> HTMLResponse:
        return await html_view(lambda: tx_page(x, ref))

    @r.get("/explorer/account/{ref}", response_class=HTMLResponse, summary="Explorer: an account")
    async def account_view(ref: str) -> HTMLResponse:
        return await html_view(lambda: account_page(x, ref))

    @r.get("/explorer/worker/{ref}", response_class=HTMLResponse, summary="Explorer: a worker's attestation")
    async def worker_view(ref: str) -> HTMLResponse:
        return await html_view(lambda: worker_page(x, ref))

    @r.get(
        "/explorer/contract/{ref}", response_class=HTMLResponse, summary="Explorer: a contract and its code"
    )
    async def contract_view(ref: str) -> HTMLResponse:
        return await html_view(lambda: contract_page(x, ref))

    @r.get("/explorer/job/{ref}", response_class=HTMLResponse, summary="Explorer: a job's lifecycle")
    async def job_view(ref: str) -> HTMLResponse:
        return await html_view(lambda: job_page(x, ref))

    @r.get("/explorer/search", summary="Explorer: search by height, hash or address (redirects)")
    async def search_view(q: str = Query("", max_length=200)) -> Response:
        found = await run_in_threadpool(x.search, q)
        if found is None:
            # A search that finds nothing still succeeded: a results page with no result (200).
            message = "a height, a block, tx, worker, contract or job hash, or an address"
            body = f'<section class="card"><p class="empty">Nothing matches {esc(repr(q))}: try {message}.</p></section>'
            return _html(page("Search", body))
        return RedirectResponse(found[1], status_code=303)

    # ---- JSON ----------------------------------------------------------------------------------
    @r.get("/explorer/api/summary", summary="Explorer: chain summary")
    async def api_summary() -> JSONResponse:
        return await json_view(x.summary)

    @r.get("/explorer/api/blocks", summary="Explorer: blocks, newest first (paginated)")
    async def api_blocks(
        before: int | None = None, limit: int = Query(20, ge=1, le=_MAX_LIST)
    ) -> JSONResponse:
        return await json_view(lambda: {"blocks": x.blocks(before, limit)})

    @r.get("/explorer/api/blocks/{ref}", summary="Explorer: one block with its txs and events")
    async def api_block(ref: str) -> JSONResponse:
        return await json_view(lambda: x.block(ref))

    @r.get("/explorer/api/txs", summary="Explorer: latest txs")
    async def api_txs(limit: int = Query(20, ge=1, le=_KEEP_TXS)) -> JSONResponse:
        def read() -> Any:
            x.index.ensure_loaded()
            return {
                "txs": [
                    {
                        "hash": codec.to_hex(t.hash),
                        "block": t.height,
                        "index": t.index,
                        "time_ms": t.time_ms,
                        "sender": codec.to_hex(t.sender),
                        "call": t.call,
                        "ok": t.ok,
                    }
                    for t in x.index.recent_txs(limit)
                ]
            }

        return await json_view(read)

    @r.get("/explorer/api/txs/{ref}", summary="Explorer: one tx (sealed args as hashes)")
    async def api_tx(ref: str) -> JSONResponse:
        return await json_view(lambda: x.tx(ref))

    @r.get("/explorer/api/accounts/{ref}", summary="Explorer: an account")
    async def api_account(ref: str) -> JSONResponse:
        return await json_view(lambda: x.account(ref))

    @r.get("/explorer/api/workers", summary="Explorer: workers (paginated)")
    async def api_workers(
        offset: int = Query(0, ge=0), limit: int = Query(_MAX_LIST, ge=1, le=_MAX_LIST)
    ) -> JSONResponse:
        return await json_view(lambda: x.workers(offset, limit))

    @r.get("/explorer/api/workers/{ref}", summary="Explorer: one worker")
    async def api_worker(ref: str) -> JSONResponse:
        return await json_view(lambda: x.worker(ref))

    @r.get(
        "/explorer/api/workers/{ref}/attestation",
        summary="Explorer: a worker's evidence as verified at registration",
    )
    async def api_attestation(ref: str) -> JSONResponse:
        return await json_view(lambda: x.attestation(ref))

    @r.post(
        "/explorer/api/workers/{ref}/reverify",
        summary="Explorer: re-verify a worker's attestation, check by check",
    )
    async def api_reverify(ref: str) -> JSONResponse:
        return await json_view(lambda: x.reverify(ref))

    @r.get("/explorer/api/keys", summary="Explorer: key epochs and gatekeepers")
    async def api_keys() -> JSONResponse:
        return await json_view(x.keys)

    @r.get("/explorer/api/contracts", summary="Explorer: contracts")
    async def api_contracts(limit: int = Query(_MAX_LIST, ge=1, le=_MAX_LIST)) -> JSONResponse:
        return await json_view(lambda: {"contracts": x.contracts(limit)})

    @r.get("/explorer/api/contracts/{ref}", summary="Explorer: a contract with its (public) code")
    async def api_contract(ref: str) -> JSONResponse:
        return await json_view(lambda: x.contract(ref))

    @r.get("/explorer/api/jobs", summary="Explorer: recent jobs with their lifecycle")
    async def api_jobs(limit: int = Query(50, ge=1, le=_MAX_LIST)) -> JSONResponse:
        return await json_view(lambda: {"jobs": x.jobs(limit)})

    @r.get("/explorer/api/jobs/{ref}", summary="Explorer: one job (sealed bytes as hashes)")
    async def api_job(ref: str) -> JSONResponse:
        return await json_view(lambda: x.job(ref))

    @r.get("/explorer/api/staking", summary="Explorer: staking pools and slashes")
    async def api_staking() -> JSONResponse:
        return await json_view(x.staking)

    @r.get("/explorer/api/series", summary="Explorer: chart series (tx/s, jobs/s, latency, workers online)")
    async def api_series(
        window_s: int = Query(300, ge=10, le=3600), bucket_s: int = Query(5, ge=1, le=600)
    ) -> JSONResponse:
        def read() -> Any:
            x.index.ensure_loaded()
            return x.index.series(window_s, min(bucket_s, window_s), _now_ms())

        return await json_view(read)

    @r.get("/explorer/api/search", summary="Explorer: what a query names")
    async def api_search(q: str = Query("", max_length=200)) -> JSONResponse:
        found = await run_in_threadpool(x.search, q)
        if found is None:
            return _json_error(404, "not_found", f"nothing matches {q!r}")
        return _json({"kind": found[0], "url": found[1]})

    @r.get(
        "/explorer/api/fragments/{name}",
        response_class=HTMLResponse,
        summary="Explorer: one section's HTML, for live updates",
    )
    async def api_fragment(name: str, ref: str | None = Query(None, alias="id", max_length=80)) -> Response:
        spec = SECTIONS.get(name)
        if spec is None:
            return _json_error(404, "not_found", f"no section {name!r}")
        try:
            text = await run_in_threadpool(spec.render, x, ref)
        except NotFound as exc:
            return _html(f'<p class="empty">{esc(exc)}</p>', 404)
        return _html(text)

    return r


def mount_explorer(app: FastAPI, node: Node) -> Explorer:
    """Add the explorer's pages, JSON API and static assets to the node's app."""
    explorer = Explorer(node)
    node.add_listener(explorer.index.on_block)
    app.include_router(router(explorer))
    app.mount("/explorer/static", StaticFiles(packages=[("umbra.node", "static")]), name="explorer-static")
    return explorer
