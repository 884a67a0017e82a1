"""The worker's HTTP endpoint: sealed queries in, sealed signed replies out.

- `POST /query` `{"contract": "0x..", "query": "0x<sealed>", "height": N?}` -> `{"worker", "height",
  "reply": {contract, height, state_hash, sealed_reply_hash, query_hash}, "signature",
  "sealed_reply"}`. With `height`, the worker first waits (bounded) until it has applied that
  block, so a query sent after a command settled reads that command's state.
- `GET /keys/{contract}?epoch=`: the contract's public keys as this core derives them.
- `GET /health`, `GET /info` (identity, TEE, height, registration and key status).

Refusals are 4xx `{"error": {"code", "message"}}`; a worker that is behind answers 503. The same
guards as the node's stand in front: a body above MAX_BODY gets 413 (after it is drained), and each
client IP gets a token bucket (`rate`/s, `burst`), beyond which it gets 429 with Retry-After.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictInt, StrictStr
from starlette.exceptions import HTTPException

from umbra import codec
from umbra.client._node import UmbraError
from umbra.enclave.transport import CoreError
from umbra.node._limits import BodyLimit, RateLimit
from umbra.worker.host import Host

__all__ = ["create_app"]

MAX_QUERY_HEX = 2 * 1024 * 1024
MAX_BODY = MAX_QUERY_HEX + 64 * 1024  # a largest query, its JSON and the other fields
_STATUS = {"behind": 503, "core_gone": 503, "unreachable": 503, "timeout": 503, "not_found": 404}


class QueryIn(BaseModel):
    contract: StrictStr = Field(description="contract id, 0x-hex")
    query: StrictStr = Field(description="the sealed query, 0x-hex", max_length=MAX_QUERY_HEX)
    height: StrictInt | None = Field(default=None, ge=0, description="wait until this height is applied")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_app(host: Host, *, rate: float = 200.0, burst: float = 400.0) -> Any:
    """The worker's API behind its body-size and per-IP rate guards (`.fastapi` is the bare app)."""
    app = FastAPI(title="Umbra worker", version="1", description="Sealed queries to an Umbra TEE worker.")

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(
            400, "malformed", f"request body is not valid: {where}: {first.get('msg', 'invalid')}"[:300]
        )

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(
            exc.status_code, "not_found" if exc.status_code == 404 else "bad_request", str(exc.detail)
        )

    @app.get("/health", summary="Liveness")
    def health() -> Any:
        if host.fatal is not None:
            return _error(503, host.fatal.code, host.fatal.message)
        return {"ok": True, "height": host.height}

    @app.get("/info", summary="Identity, TEE, height, registration and key status")
    def info() -> Any:
        try:
            return host.info()
        except CoreError as exc:
            return _error(503, exc.code, exc.message)

    @app.get("/keys/{contract}", summary="The contract's public keys as this core derives them")
    def keys(contract: str, epoch: int | None = None) -> Any:
        """Lets anyone cross-check the keys a gatekeeper published against what this worker's
        core derives from the master key it holds (equal keys prove equal master keys)."""
        try:
            contract_id = codec.from_hex(contract, length=32, what="contract")
        except codec.CodecError as exc:
            return _error(400, "malformed", str(exc))
        try:
            derived = host.contract_public(contract_id, epoch)
        except CoreError as exc:
            return _error(404 if exc.code == "no_key" else 400, exc.code, exc.message)
        return codec.jsonable(derived)

    @app.post("/query", summary="Run a sealed query on the latest verified state")
    def query(body: QueryIn) -> Any:
        try:
            contract = codec.from_hex(body.contract, length=32, what="contract")
            sealed = codec.from_hex(body.query, what="query")
        except codec.CodecError as exc:
            return _error(400, "malformed", str(exc))
        try:
            answer = host.query(contract, sealed, body.height)
        except CoreError as exc:
            return _error(_STATUS.get(exc.code, 400), exc.code, exc.message)
        except UmbraError as exc:
            return _error(_STATUS.get(exc.code, 502), exc.code, exc.message)
        return {
            "worker": codec.to_hex(answer["worker"]),
            "height": answer["reply"]["height"],
            "reply": codec.jsonable(answer["reply"]),
            "signature": codec.to_hex(answer["signature"]),
            "sealed_reply": codec.to_hex(answer["sealed_reply"]),
        }

    guarded: Any = RateLimit(BodyLimit(app, MAX_BODY), rate=rate, burst=burst)
    guarded.fastapi = app
    return guarded
