"""The node's HTTP API (FastAPI). JSON, bytes as 0x-hex, signed payloads as their CBOR bytes.

Every refusal is a 4xx `{"error": {"code", "message"}}`; back-pressure is 429 with Retry-After.
Handlers that verify signatures or touch SQLite run in the thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import BaseModel, Field, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from umbra import codec
from umbra.chain.runtime import AdmissionError
from umbra.chain.state import State
from umbra.chain.store import BlobQuotaFull, StoreFull
from umbra.node._limits import BodyLimit, RateLimit
from umbra.node.explorer import mount_explorer
from umbra.node.service import BlockNotice, Node

__all__ = ["create_app"]

log = logging.getLogger("umbra.api")

MAX_BODY = 2 * 1024 * 1024
MAX_BATCH = 2000
_HISTORY_SCAN = 10_000  # blocks one /history/events call reads
_STATUS_OF = {
    "too_large": 413,
    "mempool_full": 429,
    "rate_limited": 429,
    "duplicate": 409,
    "bad_nonce": 409,
    "disk_full": 507,
}


class TxIn(BaseModel):
    tx: StrictStr = Field(description="the signed tx as 0x-hex CBOR")


class TxsIn(BaseModel):
    txs: list[StrictStr] = Field(max_length=MAX_BATCH)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _admission_error(exc: AdmissionError) -> JSONResponse:
    status = _STATUS_OF.get(exc.code, 400)
    headers = {"Retry-After": "1"} if status == 429 else None
    return _error(status, exc.code, exc.message, headers)


class _Waiters:
    """Futures resolved when a tx is included; fed from the block thread."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.by_tx: dict[bytes, list[asyncio.Future[int]]] = {}
        self.subscribers: set[asyncio.Queue[bytes]] = set()  # each gets every block's SSE frame
        self.next_block: list[asyncio.Future[None]] = []  # submissions waiting out a deep backlog

    def on_block(self, notice: BlockNotice) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._deliver, notice)

    def _deliver(self, notice: BlockNotice) -> None:
        for waiting in self.next_block:
            if not waiting.done():
                waiting.set_result(None)
        self.next_block.clear()
        height = notice.block.header.height
        for stx in notice.outcome.included:
            for fut in self.by_tx.pop(stx.hash, []):
                if not fut.done():
                    fut.set_result(height)
        if not self.subscribers:
            return
        frame = b"event: block\ndata: " + _notice_json(notice) + b"\n\n"  # once, for every subscriber
        for queue in list(self.subscribers):
            if queue.full():  # a slow reader loses its stream rather than growing memory
                self.subscribers.discard(queue)
            else:
                queue.put_nowait(frame)

    async def block(self, timeout: float) -> None:
        """Until the next block commits (or `timeout` seconds), holding no thread."""
        assert self.loop is not None
        waiting: asyncio.Future[None] = self.loop.create_future()
        self.next_block.append(waiting)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiting, timeout)

    async def wait(self, tx_hash: bytes, timeout: float, included: Callable[[], int | None]) -> int | None:
        """The height of the block that includes `tx_hash`, or None after `timeout` seconds.

        `included` reads the store. It runs after the future is registered, so a block committed
        before that (whose notice nobody was listening for) is found there, and any later block
        resolves the future: no inclusion falls between the two.
        """
        assert self.loop is not None
        fut: asyncio.Future[int] = self.loop.create_future()
        self.by_tx.setdefault(tx_hash, []).append(fut)
        try:
            height = await run_in_threadpool(included)
            if height is not None:
                return height
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            futures = self.by_tx.get(tx_hash)
            if futures is not None and fut in futures:
                futures.remove(fut)
                if not futures:
                    del self.by_tx[tx_hash]


def create_app(node: Node, *, rate: float = 5000.0, burst: float = 10000.0) -> Any:
    waiters = _Waiters()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        waiters.loop = asyncio.get_running_loop()
        yield

    app = FastAPI(
        title="Umbra node",
        version="1",
        description="Umbra node API: txs, blocks, state, events.",
        lifespan=lifespan,
    )
    node.add_listener(waiters.on_block)

    registry = CollectorRegistry()
    m_admitted = Counter("umbra_txs_admitted", "txs admitted to the mempool", registry=registry)
    m_refused = Counter("umbra_txs_refused", "txs refused at admission", ["code"], registry=registry)
    m_blocks = Counter("umbra_blocks", "blocks committed", registry=registry)
    m_included = Counter("umbra_txs_included", "txs included in blocks", registry=registry)
    m_height = Gauge("umbra_height", "chain height", registry=registry)
    m_mempool = Gauge("umbra_mempool_txs", "txs waiting in the mempool", registry=registry)

    def count_block(notice: BlockNotice) -> None:
        m_blocks.inc()
        m_included.inc(len(notice.outcome.included))
        m_height.set(notice.block.header.height)

    node.add_listener(count_block)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(
            400, "malformed", f"request body is not valid: {where}: {first.get('msg', 'invalid')}"[:300]
        )

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in API")
        return _error(500, "internal", f"internal error: {type(exc).__name__}")

    # ---- txs ------------------------------------------------------------------------------------
    async def pace() -> None:
        """`Node.submit_many`'s wait for a block behind a deep backlog, on the event loop: waiting
        submissions hold no worker thread, so queries stay answered while the node is busy."""
        if node.backlog_full():
            await waiters.block(node.config.admission_wait_s)

    def _parse_hex(text: str, what: str) -> bytes:
        try:
            return codec.from_hex(text, what=what)
        except codec.CodecError as exc:
            raise AdmissionError("malformed", str(exc)) from None

    @app.post("/tx", summary="Submit one signed tx")
    async def post_tx(
        body: TxIn, wait: bool = False, timeout: float = Query(30.0, allow_inf_nan=False)
    ) -> Any:
        try:
            raw = _parse_hex(body.tx, "tx")
            await pace()
            tx_hash = await run_in_threadpool(node.submit, raw, paced=False)
        except AdmissionError as exc:
            m_refused.labels(exc.code).inc()
            return _admission_error(exc)
        m_admitted.inc()
        out: dict[str, Any] = {"tx_hash": codec.to_hex(tx_hash)}
        if wait:

            def included_at() -> int | None:
                record = node.store.tx(tx_hash)
                return None if record is None else record.height

            height = await waiters.wait(tx_hash, min(max(timeout, 0.1), 120.0), included_at)
            record = await run_in_threadpool(node.store.tx, tx_hash)
            if record is None and height is None:
                return JSONResponse({**out, "status": "pending"}, status_code=202)
            if record is not None:
                out.update(
                    status="included",
                    block=record.height,
                    index=record.index,
                    ok=record.ok,
                    error=record.error,
                    message=record.message,
                )
        return out

    @app.post("/txs", summary="Submit a batch of signed txs (each admitted or refused on its own)")
    async def post_txs(body: TxsIn) -> Any:
        raws: list[bytes | AdmissionError] = []
        for text in body.txs:
            try:
                raws.append(_parse_hex(text, "tx"))
            except AdmissionError as exc:
                raws.append(exc)
        good = [r for r in raws if isinstance(r, bytes)]
        if good:
            await pace()
        results = iter(await run_in_threadpool(node.submit_many, good, paced=False) if good else [])
        out: list[dict[str, Any]] = []
        for item in raws:
            result = item if isinstance(item, AdmissionError) else next(results)
            if isinstance(result, AdmissionError):
                m_refused.labels(result.code).inc()
                out.append({"error": {"code": result.code, "message": result.message}})
            else:
                out.append({"tx_hash": codec.to_hex(result)})
        m_admitted.inc(sum(1 for entry in out if "tx_hash" in entry))
        # Plain JSON already: a JSONResponse skips FastAPI's per-item jsonable_encoder walk.
        return JSONResponse({"results": out})

    @app.get("/tx/{tx_hash}", summary="Status and receipt of a tx")
    async def get_tx(tx_hash: str) -> Any:
        try:
            key = codec.from_hex(tx_hash, length=32, what="tx hash")
        except codec.CodecError as exc:
            return _error(400, "malformed", str(exc))
        record = await run_in_threadpool(node.store.tx, key)
        if record is None:
            status = "pending" if key in node.mempool else "unknown"
            return {"tx_hash": tx_hash, "status": status}
        events = await run_in_threadpool(node.store.block_events, record.height)
        return {
            "tx_hash": codec.to_hex(record.tx_hash),
            "status": "included",
            "block": record.height,
            "index": record.index,
            "sender": codec.to_hex(record.sender),
            "ok": record.ok,
            "error": record.error,
            "message": record.message,
            "events": [codec.jsonable(e.to_cbor()) for e in events if e.tx_index == record.index],
        }

    # ---- chain ----------------------------------------------------------------------------------
    @app.get("/status", summary="Chain summary")
    async def status() -> Any:
        head = node.store.head()
        extra: dict[str, Any] = {}
        if node.evm is not None:
            extra["evm"] = await run_in_threadpool(node.evm.status)
        return {
            "chain_id": node.genesis.chain_id,
            "genesis_hash": codec.to_hex(node.genesis.hash),
            "height": head.height,
            "block_hash": codec.to_hex(head.hash),
            "state_root": codec.to_hex(head.state_root),
            "time_ms": head.time_ms,
            "runtime_version": head.runtime_version,
            "mempool": len(node.mempool),
            "workers_attested": await run_in_threadpool(_workers_attested),
            "role": "evm" if node.evm is not None else "sequencer" if node.is_sequencer else "follower",
            "ordering": node.ordering,
            "halted": node.halted,
            "disk_full": node.disk_full,
            **extra,
        }

    def _evm_origins(start: int, end: int) -> dict[int, dict[str, Any]]:
        """The EVM block each Umbra block in [start, end] was derived from (evm mode only)."""
        if node.evm is None:
            return {}
        found = node.evm.origins.many(start, end)
        return {
            h: {
                "number": o.number,
                "hash": codec.to_hex(o.hash),
                # the node's signature (domain umbra/chain-attest/v1) binding this block to that EVM block
                "attestation": None
                if o.node is None or o.sig is None
                else {"node": codec.to_hex(o.node), "sig": codec.to_hex(o.sig)},
            }
            for h, o in found.items()
        }

    def _workers_attested() -> int:
        state = State(node.view)
        registry, head = node.runtime.registry, node.store.head()
        return sum(1 for w in registry.worker_ids(state) if registry.is_attested(state, w, head.time_ms))

    def _block_json(height: int) -> dict[str, Any] | None:
        block = node.store.block(height)
        if block is None:
            return None
        out = block.header.to_json()
        out["signature"] = codec.to_hex(block.signature)
        out["txs"] = [codec.to_hex(codec.sha256(raw)) for raw in block.txs]
        out["receipts"] = [codec.jsonable(r) for r in node.store.block_receipts(height)]
        out["events"] = [codec.jsonable(e.to_cbor()) for e in node.store.block_events(height)]
        if node.evm is not None:
            out["evm"] = _evm_origins(height, height).get(height)
        return out

    @app.get("/blocks/latest", summary="The head block")
    async def latest_block() -> Any:
        return await run_in_threadpool(_block_json, node.store.head().height)

    @app.get("/blocks/{ref}", summary="A block by height or 0x hash")
    async def get_block(ref: str) -> Any:
        height: int | None
        if ref.startswith("0x"):
            try:
                height = await run_in_threadpool(
                    node.store.height_of, codec.from_hex(ref, length=32, what="block hash")
                )
            except codec.CodecError as exc:
                return _error(400, "malformed", str(exc))
        else:
            try:
                height = int(ref)
            except ValueError:
                return _error(400, "malformed", "block reference must be a height or a 0x hash")
        found = None if height is None or height < 0 else await run_in_threadpool(_block_json, height)
        if found is None:
            return _error(404, "not_found", f"no block {ref}")
        return found

    @app.get(
        "/sync/blocks",
        summary="Encoded blocks (CBOR) with their event lists, for followers and enclave cores",
    )
    async def sync_blocks(start: int = Query(0, alias="from"), limit: int = 100) -> Any:
        rows = await run_in_threadpool(node.store.raw_blocks, max(start, 0), min(max(limit, 1), 500))
        out: list[dict[str, Any]] = [
            {"height": h, "block": codec.to_hex(raw), "events": codec.to_hex(ev)} for h, raw, ev in rows
        ]
        if node.evm is not None and rows:
            # In evm mode blocks are unsigned: a core trusts a block only when two nodes serve the
            # same bytes, and the EVM block each was derived from lets it name the source too.
            origins = await run_in_threadpool(_evm_origins, rows[0][0], rows[-1][0])
            for entry in out:
                entry["evm"] = origins.get(entry["height"])
        return {"blocks": out}

    # ---- blobs ----------------------------------------------------------------------------------
    @app.put(
        "/blobs/{digest}", summary="Store a content-addressed blob (ciphertext); the path names its SHA-256"
    )
    async def put_blob(digest: str, request: Request) -> Any:
        try:
            expected = codec.from_hex(digest, length=32, what="blob hash")
        except codec.CodecError as exc:
            return _error(400, "malformed", str(exc))
        data = await request.body()
        if codec.sha256(data) != expected:
            return _error(400, "hash_mismatch", "the body's SHA-256 is not the hash in the path")
        try:
            await run_in_threadpool(node.store.put_blob, data, int(time.time() * 1000))
        except BlobQuotaFull as exc:
            return _error(507, "blob_quota", str(exc))
        except StoreFull as exc:
            return _error(507, "disk_full", str(exc))
        return {"hash": digest, "size": len(data)}

    @app.get("/blobs/{digest}", summary="Fetch a blob by its SHA-256")
    async def get_blob(digest: str) -> Response:
        try:
            key = codec.from_hex(digest, length=32, what="blob hash")
        except codec.CodecError as exc:
            return _error(400, "malformed", str(exc))
        data = await run_in_threadpool(node.store.blob, key)
        if data is None:
            return _error(404, "not_found", f"no blob {digest}")
        return Response(data, media_type="application/octet-stream")

    @app.get("/genesis", summary="The genesis config (CBOR) and its hash")
    async def genesis() -> Any:
        return {"hash": codec.to_hex(node.genesis.hash), "genesis": codec.to_hex(node.genesis.encode())}

    # ---- state ----------------------------------------------------------------------------------
    @app.get("/accounts/{address}", summary="Balances and nonce of an account")
    async def account(address: str) -> Any:
        try:
            who = codec.from_hex(address, length=32, what="address")
        except codec.CodecError as exc:
            return _error(400, "malformed", str(exc))

        def read() -> dict[str, Any]:
            state = State(node.view)
            acct = node.runtime.balances.account(state, who)
            acct["staked"] = node.runtime.staking.staked_value(state, who)  # delegations, at today's price
            nonce = node.runtime.system.nonce(state, who)
            # pending_nonce also counts this node's mempool: concurrent senders of one account
            # (an operator beside its worker host) then do not pick a nonce that is already taken.
            pending = node.mempool.next_nonce(who, nonce)
            return {"address": codec.to_hex(who), **acct, "nonce": nonce, "pending_nonce": pending}

        return await run_in_threadpool(read)

    @app.get("/state/{module}/{item}", summary="A module's storage value, or a map entry with ?key=")
    async def state_item(module: str, item: str, key: str | None = None, encoding: str = "json") -> Any:
        prefix = f"{module}/{item}".encode()
        if key is None:
            raw_key = prefix
        else:
            try:
                part = (
                    codec.from_hex(key)
                    if key.startswith("0x")
                    else int(key).to_bytes(8, "big")
                    if key.isdigit()
                    else key.encode()
                )
            except (codec.CodecError, OverflowError) as exc:
                return _error(400, "malformed", f"bad key: {exc}")
            raw_key = prefix + b"/" + part
        raw = await run_in_threadpool(node.store.read, raw_key)
        if raw is None:
            return _error(404, "not_found", f"no state at {module}/{item}" + (f"/{key}" if key else ""))
        if encoding == "cbor":  # exact bytes, for clients that re-check signatures over stored values
            return {"key": codec.to_hex(raw_key), "value": codec.to_hex(raw)}
        return {"key": codec.to_hex(raw_key), "value": codec.jsonable(codec.decode(raw))}

    @app.get(
        "/history/events",
        summary="Past events of one module by name (e.g. staking Rewarded,Slashed), oldest first; "
        "scans at most 10,000 blocks per call and names where to continue (`next`)",
    )
    async def history_events(
        module: str,
        names: str,
        start: int = Query(0, alias="from", ge=0),
        workers: str | None = None,
        limit: int = Query(1000, ge=1, le=10_000),
    ) -> Any:
        wanted = {n for n in names.split(",") if n}
        try:
            only = (
                {codec.from_hex(w, length=32, what="worker") for w in workers.split(",")} if workers else None
            )
        except codec.CodecError as exc:
            return _error(400, "malformed", str(exc))

        def scan() -> dict[str, Any]:
            head = node.store.head().height
            end = min(head, start + _HISTORY_SCAN - 1)
            found: list[dict[str, Any]] = []
            height = start
            while height <= end and len(found) < limit:
                rows = node.store.raw_blocks(height, min(500, end - height + 1))
                if not rows:
                    break
                for h, _block, raw_events in rows:
                    height = h + 1
                    if not any(name.encode() in raw_events for name in wanted):
                        continue  # cheap pre-filter: most blocks carry none of these events
                    for event in codec.decode(raw_events):
                        data = event["data"]
                        if event["module"] != module or event["name"] not in wanted:
                            continue
                        if only is not None and data.get("worker") not in only:
                            continue
                        found.append({"height": h, **codec.jsonable(event)})
                    if len(found) >= limit:
                        break
            return {"events": found, "next": height if height <= head else None, "head": head}

        return await run_in_threadpool(scan)

    # ---- events (SSE) ---------------------------------------------------------------------------
    @app.get("/events", summary="Server-sent events: one `block` event per committed block")
    async def events(request: Request) -> StreamingResponse:
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)
        waiters.subscribers.add(queue)

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b": umbra event stream\n\n"
                while not await request.is_disconnected():
                    try:
                        yield await asyncio.wait_for(queue.get(), 15)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
            finally:
                waiters.subscribers.discard(queue)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    # ---- ops ------------------------------------------------------------------------------------
    @app.get("/health", summary="Liveness (exempt from rate limits)")
    async def health() -> Any:
        if node.halted:
            return _error(503, "halted", node.halted)
        if node.disk_full:
            return _error(503, "disk_full", node.disk_full)
        return {"ok": True, "height": node.store.head().height}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        m_mempool.set(len(node.mempool))
        m_height.set(node.store.head().height)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    mount_explorer(app, node)

    guarded: Any = BodyLimit(app, MAX_BODY)
    guarded = RateLimit(guarded, rate=rate, burst=burst)
    guarded.node = node
    guarded.fastapi = app
    return guarded


def _notice_json(notice: BlockNotice) -> bytes:
    """The block's SSE payload: its header, tx hashes and events, as JSON (bytes as 0x-hex)."""
    payload = notice.block.header.to_json()
    payload["txs"] = [codec.to_hex(stx.hash) for stx in notice.outcome.included]
    events = [e.to_cbor() for e in notice.outcome.events]
    try:  # orjson walks the events in C and calls back only for bytes
        return orjson.dumps({**payload, "events": events}, default=_hex)
    except TypeError:  # bytes as map keys, or integers beyond 64 bits: the generic conversion
        return json.dumps({**payload, "events": [codec.jsonable(e) for e in events]}).encode()


def _hex(value: Any) -> str:
    if isinstance(value, bytes):
        return codec.to_hex(value)
    raise TypeError(f"{type(value).__name__} is not JSON")
