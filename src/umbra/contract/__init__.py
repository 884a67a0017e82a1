"""umbra.contract: the contract SDK and the sandbox that runs contracts in a worker's enclave core.

For contract authors::

    from umbra.contract import Contract, command, query

    class Counter(Contract):
        def init(self, ctx, start=0):
            self.state["n"] = start

        @command
        def add(self, ctx, by=1):
            self.state["n"] += by
            return self.state["n"]

        @query
        def get(self, ctx):
            return {"n": self.state["n"], "asked_by": ctx.caller}

For the chain-facing tools: `validate_contract_source(code)` checks a deploy without running it.
For the enclave core: `ContractRunner` runs jobs in a warm, confined sandbox (see _runner.py).
"""

from umbra.contract import fixed
from umbra.contract._runner import (
    ContractLoadError,
    ContractRunner,
    JobOutcome,
    JobSpec,
    Limits,
    LocalRunner,
    SandboxError,
)
from umbra.contract._sandbox import Protections
from umbra.contract._sdk import Context, Contract, ServiceError, command, query
from umbra.contract._services import HttpRequest, HttpResponse, Services
from umbra.contract._validate import ContractInfo, ContractSourceError, validate_contract_source

__all__ = [
    "Context",
    "Contract",
    "ContractInfo",
    "ContractLoadError",
    "ContractRunner",
    "ContractSourceError",
    "HttpRequest",
    "HttpResponse",
    "JobOutcome",
    "JobSpec",
    "Limits",
    "LocalRunner",
    "Protections",
    "SandboxError",
    "ServiceError",
    "Services",
    "command",
    "fixed",
    "query",
    "validate_contract_source",
]
