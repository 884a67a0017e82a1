"""Drive an example's contract in this process (umbra.contract.LocalRunner), the way the chain
would: state carried from job to job, a command's state kept only when it succeeds, and the
transfers and events of each job collected. Fast unit tests of contract logic, no network."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from umbra.contract import JobOutcome, JobSpec, LocalRunner

REPO = Path(__file__).resolve().parents[2]


def account(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def hex_of(name: str) -> str:
    return "0x" + account(name).hex()


class LocalContract:
    def __init__(self, example: str, init: Mapping[str, Any], owner: str = "alice") -> None:
        code = (REPO / "examples" / example / "contract.py").read_text()
        self.runner = LocalRunner(code, contract_id=account(f"contract/{example}"))
        self.jobs = 0
        self.height = 1
        self.state: dict[str, Any] = {}
        self.transfers: list[tuple[str, int]] = []
        self.events: list[tuple[str, Any]] = []
        self._ok(self._run("init", None, init, owner, 0))

    def _run(
        self, kind: str, method: str | None, args: Mapping[str, Any], caller: str, value: int
    ) -> JobOutcome:
        self.jobs += 1
        seed = hashlib.sha256(b"seed" + self.jobs.to_bytes(8, "big")).digest()
        return self.runner.run(
            JobSpec(
                kind=kind,  # type: ignore[arg-type]
                method=method,
                args=dict(args),
                state=self.state,
                caller=account(caller),
                height=self.height,
                time_ms=self.height * 1000,
                job=None if kind == "query" else seed,
                value=value,
                random_seed=seed,
            )
        )

    def _ok(self, outcome: JobOutcome) -> Any:
        assert outcome.ok, outcome.error
        if outcome.new_state is not None:
            self.state = outcome.new_state
        self.transfers += [("0x" + to.hex(), amount) for to, amount in outcome.transfers]
        self.events += [(e["name"], e["data"]) for e in outcome.events]
        self.height += 1
        return outcome.output

    def call(
        self, method: str, args: Mapping[str, Any] | None = None, caller: str = "alice", value: int = 0
    ) -> Any:
        """A command that must succeed: its output; state, transfers and events applied."""
        return self._ok(self._run("command", method, args or {}, caller, value))

    def query(self, method: str, args: Mapping[str, Any] | None = None, caller: str = "alice") -> Any:
        outcome = self._run("query", method, args or {}, caller, 0)
        assert outcome.ok, outcome.error
        return outcome.output

    def refused(
        self,
        kind: str,
        method: str,
        args: Mapping[str, Any] | None = None,
        caller: str = "alice",
        value: int = 0,
    ) -> str:
        """A command or query that must fail; its error message. Nothing is applied."""
        outcome = self._run(kind, method, args or {}, caller, value)
        assert not outcome.ok, f"{method} was allowed: {outcome.output!r}"
        return str(outcome.error)
