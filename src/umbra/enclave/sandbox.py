"""The core's side of the contract sandbox: one warm `ContractRunner` per contract, and the
services a job reaches through it (`ctx.sign`, `ctx.http`), which need what only the core has.

The runner forks a fresh confined child per job (a caller's queries may share one: see
ContractRunner); the contract's keys never enter it. A contract
whose module does not load fails every job with the loader's message (deterministically, so
replicas agree); a sandbox that breaks is an `ExecutionFault`, so the job is not answered with
a failure another worker would not share.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import httpx
from Crypto.Hash import keccak
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

from umbra import crypto
from umbra.contract import (
    ContractLoadError,
    ContractRunner,
    HttpRequest,
    HttpResponse,
    JobSpec,
    Limits,
    SandboxError,
)
from umbra.enclave.keytree import ContractKeys

__all__ = ["ContractHost", "ContractServices", "RunResult", "SandboxFault"]

log = logging.getLogger("umbra.enclave")

_SECP256K1_HALF_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 // 2
_SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class SandboxFault(Exception):
    """The sandbox could not run the job (not the contract's fault): leave it to another attempt."""


@dataclass(frozen=True)
class RunResult:
    ok: bool
    output: Any = None
    error: str | None = None
    state: Any = None
    transfers: list[list[Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def failure(cls, error: str) -> RunResult:
        return cls(ok=False, error=error)


class ContractServices:
    """`ctx.sign` with the contract's derived keys, and `ctx.http` with TLS ending in the core."""

    def __init__(self, keys: ContractKeys, *, body_limit: int) -> None:
        self._keys = keys
        self._body_limit = body_limit

    def sign(self, scheme: str, message: bytes) -> bytes:
        if scheme == "ed25519":
            return self._keys.signing.sign_digest(message)  # Ed25519 over the raw message
        if scheme == "secp256k1":
            # ECDSA over keccak-256(message), low-s, as r || s (EVM convention; 64 bytes).
            digest = keccak.new(digest_bits=256, data=message).digest()
            der = self._keys.secp256k1.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
            r, s = decode_dss_signature(der)
            if s > _SECP256K1_HALF_ORDER:
                s = _SECP256K1_ORDER - s
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        raise ValueError(f"unknown signature scheme {scheme!r}")

    def http(self, request: HttpRequest) -> HttpResponse:
        body = bytearray()
        try:
            with (
                httpx.Client(timeout=max(0.1, request.timeout_s), follow_redirects=False) as client,
                client.stream(
                    request.method, request.url, headers=dict(request.headers), content=request.body
                ) as reply,
            ):
                for chunk in reply.iter_bytes():
                    body += chunk
                    if len(body) > self._body_limit:
                        raise ValueError(f"the response body exceeds {self._body_limit} bytes")
                headers = {k.lower(): v for k, v in reply.headers.items()}
                return HttpResponse(reply.status_code, headers, bytes(body))
        except httpx.HTTPError as exc:
            raise RuntimeError(f"HTTP request failed: {type(exc).__name__}") from None


class ContractHost:
    """The warm sandbox of one contract (its code pinned by hash)."""

    def __init__(
        self, contract: bytes, code: bytes, code_hash: bytes, *, limits: Limits | None = None
    ) -> None:
        self.contract = contract
        self.code_hash = code_hash
        self._limits = limits or Limits()
        self._runner: ContractRunner | None = None
        self._load_error: str | None = None
        try:
            self._runner = ContractRunner(code.decode("utf-8"), contract_id=contract, limits=self._limits)
        except UnicodeDecodeError:
            self._load_error = "the contract code is not UTF-8"
        except ContractLoadError as exc:
            self._load_error = f"the contract does not load: {exc}"
            log.warning("contract 0x%s does not load", contract.hex()[:16])

    def run(
        self,
        *,
        kind: str,
        method: str,
        args: dict[str, Any],
        caller: bytes,
        state: Any,
        height: int,
        time_ms: int,
        job: bytes,
        keys: ContractKeys,
        replicated: bool = False,
        value: int = 0,
        secrets: dict[str, bytes] | None = None,
        blobs: dict[bytes, bytes] | None = None,
        http_allowlist: list[str] | None = None,
    ) -> RunResult:
        if self._runner is None:
            return RunResult.failure(self._load_error or "the contract does not load")
        spec = JobSpec(
            kind=kind,  # type: ignore[arg-type]
            method=None if kind == "init" else method,
            args=args,
            state=state,
            caller=caller,
            height=height,
            time_ms=time_ms,
            job=None if kind == "query" else job,
            replicated=replicated,
            value=value,
            # Replicas agree on it (same master, same job); nobody outside a core can know it.
            random_seed=crypto.derive_key(keys.commit_key, "umbra/contract/random", job),
            secrets=secrets or {},
            blobs=blobs or {},
            http_allowlist=tuple(http_allowlist or ()),
        )
        services = ContractServices(keys, body_limit=self._limits.http_body_bytes)
        try:
            outcome = self._runner.run(spec, services)
        except SandboxError as exc:
            raise SandboxFault(str(exc)) from None
        if not outcome.ok:
            if outcome.error_code == "sandbox":
                raise SandboxFault(outcome.error or "the sandbox failed")
            return RunResult.failure(outcome.error or "the contract failed")
        return RunResult(
            ok=True,
            output=outcome.output,
            state=outcome.new_state,
            transfers=[[to, amount] for to, amount in outcome.transfers],
            events=list(outcome.events),
        )

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
