"""What the client returns: small frozen records whose `to_json()` is the CLI's output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from umbra import codec

__all__ = ["CallResult", "ChainEvent", "ContractEvent", "Deployment", "QueryResult", "Settings"]


@dataclass(frozen=True)
class Settings:
    """How long the client waits, how often it polls, and how much it checks itself."""

    timeout: float = 30.0  # one HTTP exchange
    tx_timeout: float = 60.0  # a tx's inclusion
    key_timeout: float = 60.0  # a new contract's key publication by a gatekeeper
    job_timeout: float = 180.0  # a job's settlement (a dead worker's job moves after its deadline)
    query_timeout: float = 30.0  # one worker's answer to a query (it may wait for min_height)
    poll_interval: float = 0.1
    verify_evidence: bool = False  # re-verify each worker's TEE evidence here, not just its registry record


@dataclass(frozen=True)
class Deployment:
    contract_id: str
    code_hash: str
    tx_hash: str
    height: int
    init_job: str

    def to_json(self) -> dict[str, Any]:
        return {"contract_id": self.contract_id, "code_hash": self.code_hash}


@dataclass(frozen=True)
class CallResult:
    """A verified command result. `height` is the block the job settled in (for read-your-writes)."""

    output: Any
    job_id: str
    workers: list[str]
    height: int
    verified: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "output": codec.jsonable(self.output),
            "job_id": self.job_id,
            "workers": list(self.workers),
            "verified": self.verified,
        }


@dataclass(frozen=True)
class QueryResult:
    output: Any
    worker: str
    height: int
    verified: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "output": codec.jsonable(self.output),
            "worker": self.worker,
            "height": self.height,
            "verified": self.verified,
        }


@dataclass(frozen=True)
class ChainEvent:
    """One public event from the node's event stream."""

    height: int
    module: str
    name: str
    data: dict[str, Any] = field(default_factory=dict)
    tx: int | None = None


@dataclass(frozen=True)
class ContractEvent:
    """One public event a contract emitted with `ctx.emit`, in the block at `height`."""

    height: int
    name: str
    data: Any
