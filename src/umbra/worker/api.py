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

`POST /query` is the hot route: `QueryRoute` answers it straight from ASGI, without FastAPI's
routing, model validation, dependency solving, thread-pool limiter and response encoding (about
half of the host's CPU per query), with the same checks, statuses and reply as the FastAPI route,
which stays declared for the OpenAPI document and serves the bare app (`.fastapi`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictInt, StrictStr, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from umbra import codec
from umbra.client._node import UmbraError
from umbra.enclave.transport import CoreError
from umbra.node._limits import BodyLimit, RateLimit
from umbra.worker.host import Host

__all__ = ["QueryRoute", "create_app"]

MAX_QUERY_HEX = 2 * 1024 * 1024
MAX_BODY = MAX_QUERY_HEX + 64 * 1024  # a largest query, its JSON and the other fields
_STATUS = {"behind": 503, "core_gone": 503, "unreachable": 503, "timeout": 503, "not_found": 404}
# Threads that carry queries to the host: one talks to the core at a time, the others wait for a
# height (read your writes) or fetch a state from the node meanwhile.
_QUERY_THREADS = 16


class QueryIn(BaseModel):
    contract: StrictStr = Field(description="contract id, 0x-hex")
    query: StrictStr = Field(description="the sealed query, 0x-hex", max_length=MAX_QUERY_HEX)
    height: StrictInt | None = Field(default=None, ge=0, description="wait until this height is applied")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def answer_query(
    host: Host, contract_hex: str, query_hex: str, height: int | None
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON document) for a query whose fields are well typed."""
    try:
        contract = codec.from_hex(contract_hex, length=32, what="contract")
        sealed = codec.from_hex(query_hex, what="query")
    except codec.CodecError as exc:
        return 400, _error_doc("malformed", str(exc))
    try:
        answer = host.query(contract, sealed, height)
    except CoreError as exc:
        return _STATUS.get(exc.code, 400), _error_doc(exc.code, exc.message)
    except UmbraError as exc:
        return _STATUS.get(exc.code, 502), _error_doc(exc.code, exc.message)
    return 200, {
        "worker": codec.to_hex(answer["worker"]),
        "height": answer["reply"]["height"],
        "reply": codec.jsonable(answer["reply"]),
        "signature": codec.to_hex(answer["signature"]),
        "sealed_reply": codec.to_hex(answer["sealed_reply"]),
    }


def _error_doc(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _invalid(errors: Sequence[Any]) -> dict[str, Any]:
    """The refusal of a body that does not validate, named by its first error (both routes)."""
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return _error_doc("malformed", f"request body is not valid: {where}: {first.get('msg', 'invalid')}"[:300])


class QueryRoute:
    """`POST /query` straight from ASGI (see the module docstring); everything else goes to `app`."""

    def __init__(self, app: ASGIApp, host: Host) -> None:
        self.app = app
        self.host = host
        self._threads = ThreadPoolExecutor(_QUERY_THREADS, thread_name_prefix="query")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/query" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:  # BodyLimit in front has bounded it
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        try:
            # pydantic's own JSON validation, with the FastAPI route's locations ("body.query").
            body = QueryIn.model_validate_json(b"".join(chunks))
        except ValidationError as exc:
            status, doc = 400, _invalid([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])
        else:
            loop = asyncio.get_running_loop()
            status, doc = await loop.run_in_executor(
                self._threads, answer_query, self.host, body.contract, body.query, body.height
            )
        payload = orjson.dumps(doc)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def create_app(host: Host, *, rate: float = 200.0, burst: float = 400.0) -> Any:
    """The worker's API behind its body-size and per-IP rate guards (`.fastapi` is the bare app)."""
    app = FastAPI(title="Umbra worker", version="1", description="Sealed queries to an Umbra TEE worker.")

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_invalid(exc.errors()), status_code=400)

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
        status, doc = answer_query(host, body.contract, body.query, body.height)
        return JSONResponse(doc, status_code=status)

    guarded: Any = RateLimit(BodyLimit(QueryRoute(app, host), MAX_BODY), rate=rate, burst=burst)
    guarded.fastapi = app
    return guarded
