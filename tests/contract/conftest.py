"""Helpers for the contract SDK and sandbox tests: runners that always stop, job builders, a fake
enclave core for sign/http."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from umbra.contract import ContractRunner, HttpRequest, HttpResponse, JobOutcome, JobSpec, Limits

CONTRACT_ID = bytes(range(32))
ALICE = b"\xa1" * 32
BOB = b"\xb0" * 32
SEED = b"seed-for-tests!!" * 2
NOTES_PATH = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "contracts" / "notes.py"

COUNTER = """
from umbra.contract import Contract, command, query

class Counter(Contract):
    def init(self, ctx, start=0):          # optional; if defined it runs once at deploy, with --init as kwargs
        self.state["n"] = start
    @command
    def add(self, ctx, by=1):
        self.state["n"] += by
        return self.state["n"]
    @query
    def get(self, ctx):
        return {"n": self.state["n"], "asked_by": ctx.caller}   # ctx.caller: 0x-hex account id
"""


def hexid(account: bytes) -> str:
    return "0x" + account.hex()


def init(args: dict[str, Any] | None = None, caller: bytes = ALICE, **kw: Any) -> JobSpec:
    return JobSpec(kind="init", args=args or {}, caller=caller, random_seed=SEED, job=b"\x01" * 32, **kw)


def command(method: str, state: dict[str, Any] | None, caller: bytes = ALICE, **kw: Any) -> JobSpec:
    kw.setdefault("random_seed", SEED)
    kw.setdefault("job", b"\x02" * 32)
    return JobSpec(kind="command", method=method, state=state, caller=caller, **kw)


def query(method: str, state: dict[str, Any] | None, caller: bytes = ALICE, **kw: Any) -> JobSpec:
    kw.setdefault("random_seed", SEED)
    return JobSpec(kind="query", method=method, state=state, caller=caller, **kw)


def ok(outcome: JobOutcome) -> JobOutcome:
    assert outcome.ok, f"job failed: [{outcome.error_code}] {outcome.error}"
    return outcome


def failed(outcome: JobOutcome, code: str, *fragments: str) -> str:
    assert not outcome.ok, f"job succeeded with {outcome.output!r}; expected a failure"
    assert outcome.error_code == code, f"[{outcome.error_code}] {outcome.error}"
    assert outcome.error is not None
    for fragment in fragments:
        assert fragment in outcome.error, outcome.error
    assert outcome.new_state is None and outcome.events == [] and outcome.transfers == []
    return outcome.error


@dataclass
class FakeServices:
    """The enclave core's side of ctx.sign and ctx.http, recording what it was asked."""

    signed: list[tuple[str, bytes]] = field(default_factory=list)
    requests: list[HttpRequest] = field(default_factory=list)

    def sign(self, scheme: str, message: bytes) -> bytes:
        self.signed.append((scheme, message))
        return b"sig/" + scheme.encode() + b"/" + message

    def http(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        return HttpResponse(
            200, {"content-type": "text/plain"}, b"echo " + (request.body or request.url.encode())
        )


RunnerFactory = Callable[..., ContractRunner]


@pytest.fixture
def make_runner() -> Iterator[RunnerFactory]:
    """ContractRunner(code, ...) that is closed, and whose processes are checked gone, after the test."""
    runners: list[ContractRunner] = []

    def make(code: str, limits: Limits | None = None, **kw: Any) -> ContractRunner:
        runner = ContractRunner(code, contract_id=CONTRACT_ID, limits=limits, **kw)
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.close()


@pytest.fixture(scope="module")
def module_runners() -> Iterator[Callable[..., ContractRunner]]:
    """Like make_runner, shared by a module's tests (a warm host costs ~0.3 s to start)."""
    runners: list[ContractRunner] = []

    def make(code: str, limits: Limits | None = None, **kw: Any) -> ContractRunner:
        runner = ContractRunner(code, contract_id=CONTRACT_ID, limits=limits, **kw)
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.close()
