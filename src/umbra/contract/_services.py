"""The enclave core's side of `ctx.sign` and `ctx.http`.

The sandbox child checks the rules first, for clear errors, but contract code can bypass anything in
its own process and write raw RPC frames. `handle_rpc` runs in the core and is the check that counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

__all__ = ["SIGN_SCHEMES", "HttpRequest", "HttpResponse", "Services", "handle_rpc", "host_allowed"]

SIGN_SCHEMES = ("ed25519", "secp256k1")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_MAX_SIGN_MESSAGE = 1 << 20
_MAX_HEADERS = 64
_MAX_HEADER_BYTES = 16 << 10


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    # What is left of the job's wall-time budget: the Services implementation must not exceed it.
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


class Services(Protocol):
    """What the enclave core provides to a running job. Both calls may raise; the message reaches
    the contract as a ServiceError, so it must not contain anything secret."""

    def sign(self, scheme: str, message: bytes) -> bytes:
        """Sign with the contract's derived key for `scheme` ("ed25519" or "secp256k1")."""
        ...

    def http(self, request: HttpRequest) -> HttpResponse:
        """Perform the request (TLS terminated inside the core), within request.timeout_s."""
        ...


def _split_entry(entry: str) -> tuple[str, int | None] | None:
    try:
        parts = urlsplit("//" + entry.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    return (host, port) if host else None


def host_allowed(url: str, allowlist: Sequence[str]) -> bool:
    """Is `url` an http(s) URL whose host is on the allowlist?

    Entries are `host`, `host:port` or `*.domain` (any subdomain of domain, not domain itself).
    Without a port an entry allows the scheme's default port only.
    """
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        return False
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return False
    if parts.scheme not in ("https", "http") or not host:
        return False
    effective = port if port is not None else (443 if parts.scheme == "https" else 80)
    for entry in allowlist:
        split = _split_entry(entry) if isinstance(entry, str) else None
        if split is None:
            continue
        pattern, entry_port = split
        if (entry_port if entry_port is not None else (443 if parts.scheme == "https" else 80)) != effective:
            continue
        if pattern == host or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def _str_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or len(value) > _MAX_HEADERS:
        raise ValueError(f"{what} must be a map of at most {_MAX_HEADERS} entries")
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise ValueError(f"{what} must map str to str")
        out[key] = item
    if sum(len(k) + len(v) for k, v in out.items()) > _MAX_HEADER_BYTES:
        raise ValueError(f"{what} exceed {_MAX_HEADER_BYTES} bytes")
    return out


def handle_rpc(
    request: Any,
    *,
    kind: str,
    replicated: bool,
    allowlist: Sequence[str],
    services: Services | None,
    body_limit: int,
    remaining_s: float,
) -> dict[str, Any]:
    """Serve one RPC from a job: {"ok": True, "value": ...} or {"ok": False, "error": "..."}."""
    try:
        return {
            "ok": True,
            "value": _serve(request, kind, replicated, allowlist, services, body_limit, remaining_s),
        }
    except Exception as exc:  # every failure goes back to the contract as a ServiceError
        return {"ok": False, "error": str(exc)[:1000] or type(exc).__name__}


def _serve(
    request: Any,
    kind: str,
    replicated: bool,
    allowlist: Sequence[str],
    services: Services | None,
    body_limit: int,
    remaining_s: float,
) -> Any:
    if not isinstance(request, dict):
        raise ValueError("malformed service request")
    op = request.get("op")
    if services is None:
        raise RuntimeError(f"ctx.{op} is not available on this worker")
    if op == "sign":
        scheme, message = request.get("scheme"), request.get("message")
        if scheme not in SIGN_SCHEMES:
            raise ValueError(f"unknown signature scheme {scheme!r}")
        if not isinstance(message, bytes) or len(message) > _MAX_SIGN_MESSAGE:
            raise ValueError(f"the message to sign must be bytes, at most {_MAX_SIGN_MESSAGE}")
        signature = services.sign(scheme, message)
        if not isinstance(signature, bytes):
            raise RuntimeError("the signing service returned no signature")
        return signature
    if op == "http":
        if replicated and kind != "query":
            raise PermissionError("ctx.http is only available in queries and unreplicated jobs")
        method, url, body = request.get("method"), request.get("url"), request.get("body")
        if not isinstance(method, str) or method.upper() not in _METHODS:
            raise ValueError(f"unsupported HTTP method {method!r}")
        if not isinstance(url, str) or len(url) > 8192 or not host_allowed(url, allowlist):
            raise PermissionError(f"{str(url)[:200]!r} is not on this contract's http_allowlist")
        if body is not None and (not isinstance(body, bytes) or len(body) > body_limit):
            raise ValueError(f"the request body must be bytes, at most {body_limit}")
        if not math.isfinite(remaining_s) or remaining_s <= 0:
            raise TimeoutError("no wall time left for an HTTP request")
        headers = _str_map(request.get("headers") or {}, "request headers")
        response = services.http(HttpRequest(method.upper(), url, headers, body, remaining_s))
        if not isinstance(response, HttpResponse) or not isinstance(response.status, int):
            raise RuntimeError("the HTTP service returned no response")
        if not isinstance(response.body, bytes) or len(response.body) > body_limit:
            raise ValueError(f"the HTTP response body exceeds {body_limit} bytes")
        return {
            "status": response.status,
            "headers": _str_map(response.headers, "response headers"),
            "body": response.body,
        }
    raise ValueError(f"unknown service {op!r}")
