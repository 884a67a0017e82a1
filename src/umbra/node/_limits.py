"""ASGI guards in front of the API: body size limit and per-IP rate limit.

Both answer with a complete JSON error and never reset the connection: an oversized body is
drained before the 413 goes out, and a rate-limited client gets 429 with Retry-After.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimit", "RateLimit", "error_body"]


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


async def _reply(
    send: Send, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = error_body(code, message)
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": base + (headers or [])})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse bodies above `limit` bytes with 413, after reading (and discarding) all of it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        too_big = False
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                too_big = True
                chunks.clear()
            elif not too_big:
                chunks.append(body)
            more = message.get("more_body", False)
        if too_big:
            await _reply(send, 413, "too_large", f"request body is {size} bytes; the limit is {self.limit}")
            return
        payload = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": payload, "more_body": False}

        await self.app(scope, replay, send)


class RateLimit:
    """A token bucket per client IP. Paths in `exempt` (health checks) are never limited."""

    def __init__(
        self, app: ASGIApp, rate: float, burst: float, exempt: tuple[str, ...] = ("/health",)
    ) -> None:
        self.app = app
        self.rate = rate
        self.burst = burst
        self.exempt = exempt
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _take(self, ip: str) -> float:
        """0 if a token was taken, else seconds until one is available."""
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._buckets.get(ip, (self.burst, now))
            tokens = min(self.burst, tokens + (now - stamp) * self.rate)
            if tokens >= 1:
                self._buckets[ip] = (tokens - 1, now)
                return 0.0
            self._buckets[ip] = (tokens, now)
            if len(self._buckets) > 100_000:  # bounded memory under address churn
                self._buckets.clear()
            return (1 - tokens) / self.rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        client: Any = scope.get("client") or ("?", 0)
        wait = self._take(str(client[0]))
        if wait > 0:
            retry = str(max(1, math.ceil(wait))).encode()
            await _reply(
                send,
                429,
                "rate_limited",
                "too many requests from this address; retry later",
                [(b"retry-after", retry)],
            )
            return
        await self.app(scope, receive, send)
