"""Secrets stay sealed: markers planted in every kind of secret (inputs, outputs, state, owner
secrets, blobs, query args, a contract's exception message) appear nowhere but in the caller's
own verified results: not in any file of the network (chain database and WAL, every log, sealed
files, crash leftovers), not in any node API answer, explorer page or explorer API answer, not
in the workers' APIs, and not in what the processes print when a worker's core or host crashes.

A control marker the contract publishes on purpose (`ctx.emit`: events are public by explicit
choice) must be found by the very same scans, which shows they look at the right bytes. What
reaches the worker *host's* memory is checked in tests/worker/test_no_leaks.py.
"""

from __future__ import annotations

import json
import os
import signal

import psutil
import pytest

from tests.adversarial.conftest import (
    HTTP,
    Shared,
    chain_events,
    files_under,
    files_with,
    height,
    raw_blocks,
    record,
    wait_ready,
)
from tests.node.conftest import wait_until
from umbra import codec
from umbra.client import Client, UmbraError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

VAULT = """
from umbra.contract import Contract, command, query


class Vault(Contract):
    def init(self, ctx, note):
        self.state["notes"] = [note]

    @command
    def put(self, ctx, note):
        self.state["notes"].append(note)
        return note + "-echo"

    @command
    def absorb(self, ctx, blob, control):
        ctx.emit("Published", note=control)  # public on purpose: the scans' control
        secret = ctx.secret("api-key").decode()
        self.state["from_secret"] = secret
        self.state["from_blob"] = ctx.blob(blob).decode()
        return secret

    @command
    def fail(self, ctx, note):
        raise ValueError("refusing " + note)

    @query
    def notes(self, ctx, probe):
        return self.state["notes"] + [self.state["from_secret"], self.state["from_blob"], probe]
"""


def marker(kind: str) -> str:
    return "UMBRA" + "-SECRET-" + kind + "-" + os.urandom(8).hex()


def _api_answers(
    shared: Shared, contract: str, since: int, jobs: list[str], txs: list[str]
) -> dict[str, bytes]:
    """Every public answer that could carry the test's data: node API, explorer pages, explorer
    API (each GET route of the schema, with its references filled in), worker APIs."""
    url = shared.url
    owner = codec.to_hex(shared.net.key("owner").public_key)
    workers = [json.loads(HTTP.get(f"{u}/info", timeout=5).content)["id"] for u in shared.worker_urls()]
    head = height(url)
    refs = {
        "block": [str(h) for h in range(since, head + 1)],
        "tx": txs,
        "account": [owner],
        "worker": workers,
        "contract": [contract],
        "job": jobs,
    }
    paths = [
        "/status",
        "/metrics",
        f"/sync/blocks?from={since}&limit=500",
        f"/history/events?module=contracts&names=ContractEvent,ContractStateUpdated,SecretUploaded&from={since}",
        f"/history/events?module=compute&names=JobRequested,JobSettled,JobFailed,ResultSubmitted&from={since}",
        *(f"/blocks/{h}" for h in refs["block"]),
        *(f"/tx/{t}" for t in txs),
        *(f"/state/compute/job?key={j}" for j in jobs),
        *(f"/state/contracts/{item}?key={contract}" for item in ("contract", "code", "state")),
        f"/state/contracts/secret?key={contract}{b'api-key'.hex()}",
        f"/accounts/{owner}",
    ]
    spec = HTTP.get(f"{url}/openapi.json", timeout=10).json()
    for path, ops in spec["paths"].items():
        if not path.startswith("/explorer") or "get" not in ops:
            continue
        if "{ref}" in path:
            kind = next(
                k for k in refs if f"/{k}" in path
            )  # /explorer/block/{ref}, /explorer/api/blocks/{ref}
            paths += [path.replace("{ref}", ref) for ref in refs[kind]]
        elif "{name}" in path:
            paths += [
                f"/explorer/api/fragments/{name}?id={contract}" for name in ("contract", "contracts", "jobs")
            ]
            paths += [f"/explorer/api/fragments/job?id={j}" for j in jobs]
        elif path.endswith("/search"):
            paths += [f"{path}?q={contract}"]
        else:
            paths.append(path)
    answers = {}
    for path in paths:
        reply = HTTP.get(f"{url}{path}", timeout=30, follow_redirects=True)
        assert reply.status_code < 500, (path, reply.status_code)
        answers[path] = reply.content
    for worker_url in shared.worker_urls():
        for path in ("/info", f"/keys/{contract}", "/health"):
            answers[f"{worker_url}{path}"] = HTTP.get(f"{worker_url}{path}", timeout=10).content
    return answers


def _crash_a_core_and_a_host(shared: Shared) -> list[str]:
    """SIGSEGV the enclave core of w0 (the host reports it and exits), then the host of w1;
    restart both with their sealed identities. Returns what was crashed."""
    crashed = []
    w0 = shared.net.by_name["w0"]
    core = next(
        p for p in psutil.Process(w0.pid).children(recursive=True) if "umbra.enclave" in " ".join(p.cmdline())
    )
    core.send_signal(signal.SIGSEGV)
    wait_until(lambda: not w0.alive(), 30, "w0 to notice its core crashed")
    crashed.append("w0 core (SIGSEGV)")
    w1 = shared.net.by_name["w1"]
    os.kill(w1.pid, signal.SIGSEGV)
    wait_until(lambda: not w1.alive(), 30, "w1 host to crash")
    crashed.append("w1 host (SIGSEGV)")
    w1.stop()  # its core, orphaned in the host's group
    for name in ("w0", "w1"):
        shared.net.restart(name)
    wait_ready(shared.net, "w0", "w1", timeout=90)
    return crashed


def test_markers_in_every_kind_of_secret_never_leave_the_seal(shared: Shared) -> None:
    markers = {kind: marker(kind) for kind in ("init", "input", "secret", "blob", "query", "error")}
    control = "UMBRA" + "-PUBLIC-CONTROL-" + os.urandom(8).hex()
    since = height(shared.url)
    jobs: list[str] = []
    with Client(shared.url, shared.net.key("owner")) as owner:
        deployed = owner.deploy(VAULT, init={"note": markers["init"]})
        contract = deployed.contract_id
        jobs.append(deployed.init_job)
        owner.upload_secret(contract, "api-key", markers["secret"].encode())
        blob = owner.upload_blob(contract, (markers["blob"] + "|").encode() * 3)["hash"]
        put = owner.call(contract, "put", {"note": markers["input"]})
        assert put.output == markers["input"] + "-echo"  # the output is the caller's
        absorbed = owner.call(contract, "absorb", {"blob": blob, "control": control})
        assert absorbed.output == markers["secret"]  # the contract reads its secret inside the core
        with pytest.raises(UmbraError) as failed:
            owner.call(contract, "fail", {"note": markers["error"]})
        assert markers["error"] in failed.value.message  # the caller, and only the caller, sees why
        jobs += [put.job_id, absorbed.job_id]
    with Client(shared.url, shared.net.key("other")) as other:
        notes = other.query(contract, "notes", {"probe": markers["query"]}, min_height=height(shared.url))
    assert notes.output == [
        markers["init"],
        markers["input"],
        markers["secret"],
        (markers["blob"] + "|") * 3,
        markers["query"],
    ]
    jobs += [codec.to_hex(e["data"]["job"]) for e in chain_events(shared.url, "JobFailed", start=since)]
    txs = [
        codec.to_hex(codec.sha256(tx))
        for _, raw, _ in raw_blocks(shared.url, since)
        for tx in codec.decode(raw)["txs"]
    ]
    crashed = _crash_a_core_and_a_host(shared)

    answers = _api_answers(shared, contract, since, jobs, txs)
    files = files_under(shared.net.root)
    # The control: the scans find what was published on purpose, in the database and the APIs.
    control_hits = files_with(control.encode(), files)
    assert any(path.endswith(("chain.sqlite", "chain.sqlite-wal")) for path in control_hits), control_hits
    assert any(control.encode() in body for body in answers.values())
    assert any(control.encode() in body for path, body in answers.items() if path.startswith("/explorer"))
    leaks: dict[str, list[str]] = {}
    for kind, value in markers.items():
        needle = value.encode()
        found = files_with(needle, files)
        found += [path for path, body in answers.items() if needle in body or needle.hex().encode() in body]
        if found:
            leaks[kind] = found
    assert not leaks, f"secrets reached public places: {leaks}"
    core_dumps = [p for p in files if p.name.startswith("core") and p.suffix in ("", ".dump")]
    record(
        "secrets",
        {
            "kinds_of_secret": sorted(markers),
            "files_scanned": len(files),
            "bytes_scanned": sum(p.stat().st_size for p in files),
            "api_answers_scanned": len(answers),
            "explorer_answers_scanned": sum(1 for p in answers if p.startswith("/explorer")),
            "crashes_injected": crashed,
            "core_dump_files": len(core_dumps),
            "leaks": 0,
            "control_marker_found_in": sorted({p.rsplit("/", 1)[-1] for p in control_hits}),
        },
    )
