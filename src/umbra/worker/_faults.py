"""TEST ONLY: a malicious worker *host*, for the adversarial suite (`umbra worker --fault ...`).

A malicious host is the threat model of a TEE worker: it holds the operator key and moves every
byte between the node and its enclave core, but it cannot sign as the core nor open what the core
seals. Each fault below makes the host do one thing such a host could do, so that tests can show
the core or the chain refusing it. Nothing here runs unless `--fault` names it, and none of it is
inside the core: a lying *enclave* is the core's own `wrong-output` flag.

- forge-signature: flip a bit of the core's signature before submitting a result.
- steal-job: submit results for jobs the chain assigned to other workers (in its own name, and in
  the name of a worker it does not operate).
- replay-result: execute the first job honestly, then submit that old result again for every
  later job instead of the new one.
- stale-state: give the core the first state it saw of a contract instead of the current one.
- forge-blocks: rewrite the events of blocks that assign jobs (assign them to itself, on a state
  of its choosing) before feeding them to the core, then ask the core to execute the forged job.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from umbra import codec
from umbra.enclave.transport import CoreError

if TYPE_CHECKING:
    from umbra.worker.host import Host

__all__ = ["HOST_FAULTS", "Malice"]

log = logging.getLogger("umbra.worker")

HOST_FAULTS = ("forge-signature", "steal-job", "replay-result", "stale-state", "forge-blocks")
FORGED_STATE = b"umbra/fault/forged-state"


class Malice:
    """The misbehaviour one `--fault` value names; the host calls these hooks and nothing else."""

    def __init__(self, fault: str) -> None:
        assert fault in HOST_FAULTS, fault
        self.fault = fault
        self._first_state: dict[bytes, bytes | None] = {}
        self._old_result: dict[str, Any] | None = None
        self._forged_jobs: list[bytes] = []
        log.error("fault injection: this host misbehaves (%s); for tests only", fault)

    # ---- chain following ---------------------------------------------------------------------
    def before_feed(self, host: Host, batch: list[list[Any]]) -> list[list[Any]]:
        if self.fault != "forge-blocks":
            return batch
        out = []
        for item in batch:
            events = codec.decode(item[1])
            forged = False
            for event in events:
                if event.get("module") == "compute" and event.get("name") == "JobAssigned":
                    event["data"]["workers"] = [host.identity]
                    event["data"]["state_hash"] = codec.sha256(FORGED_STATE)
                    self._forged_jobs.append(event["data"]["job"])
                    forged = True
            out.append([item[0], codec.encode(events), *item[2:]] if forged else item)
        return out

    def after_refusal(self, host: Host, refusal: CoreError) -> None:
        """forge-blocks: the core refused the forged block; try to make it run the forged job anyway."""
        if self.fault != "forge-blocks":
            return
        log.error("fault injection: the core refused the forged block: %s", refusal.message)
        for job in self._forged_jobs[-3:]:
            try:
                host.core.call(
                    {
                        "op": "execute",
                        "job": job,
                        "code": b"",
                        "sealed_input": b"",
                        "state_blob": FORGED_STATE,
                    }
                )
                log.error("fault injection: the core EXECUTED forged job %s", codec.to_hex(job))
            except CoreError as exc:
                log.error(
                    "fault injection: the core refused to execute forged job %s: %s (%s)",
                    codec.to_hex(job)[:18],
                    exc.message,
                    exc.code,
                )

    def after_feed(self, host: Host, batch: list[list[Any]]) -> None:
        """steal-job: claim every job the verified blocks assign to other workers."""
        if self.fault != "steal-job":
            return
        for item in batch:
            for event in codec.decode(item[1]):
                if event.get("module") != "compute" or event.get("name") != "JobAssigned":
                    continue
                data = event["data"]
                if host.identity in data["workers"]:
                    continue
                for worker in (host.identity, data["workers"][0]):
                    body = {
                        "job": data["job"],
                        "contract": data["contract"],
                        "worker": worker,
                        "code_hash": bytes(32),
                        "input_hash": bytes(32),
                        "sealed_output_hash": codec.sha256(b""),
                        "output_commitment": bytes(32),
                        "prev_state_hash": data["state_hash"],
                        "new_state_hash": data["state_hash"],
                        "failed": False,
                        "transfers": [],
                        "events": [],
                    }
                    log.error(
                        "fault injection: claiming job %s as %s",
                        codec.to_hex(data["job"])[:18],
                        "myself" if worker == host.identity else "its assigned worker",
                    )
                    host.post(
                        ("steal", data["job"], worker),
                        "compute",
                        "submit_result",
                        body=body,
                        signature=bytes(64),
                        sealed_output=b"",
                        state_blob=None,
                    )

    # ---- jobs --------------------------------------------------------------------------------
    def state_for_core(self, host: Host, contract: bytes, state_hash: bytes | None) -> bytes | None:
        """The state blob the host gives its core for a job that must run on `state_hash`."""
        if self.fault == "stale-state" and contract in self._first_state:
            log.error("fault injection: feeding the core a stale state of %s", codec.to_hex(contract)[:18])
            return self._first_state[contract]
        blob = host.state_blob(contract, state_hash)
        self._first_state.setdefault(contract, blob)
        return blob

    def result_to_post(self, job: bytes, submit: dict[str, Any]) -> dict[str, Any]:
        if self.fault == "forge-signature":
            signature = bytearray(submit["signature"])
            signature[0] ^= 0x01
            log.error("fault injection: forging the result signature of job %s", codec.to_hex(job)[:18])
            return {**submit, "signature": bytes(signature)}
        if self.fault == "replay-result":
            if self._old_result is None:
                self._old_result = submit
                return submit
            log.error("fault injection: replaying an old result instead of job %s", codec.to_hex(job)[:18])
            return self._old_result
        return submit
