"""The confidential path on real dev networks: worker start-up, queries, commands, scaling.

Two networks (bench._devnet: `umbra dev`'s processes, started by the suite one by one):

1. start-up, on a fresh network: the gatekeeper and 3 workers start at once, then 17 more at once
   (20 in all). Each figure is the time from the workers' process start until the last of them is
   registered, attested and holds the current key epoch (what `umbra dev` waits for). The quick
   run takes the same two figures, smaller, off the scaling network as it grows: the gatekeeper
   and 1 worker fresh, then the last 4 workers joining 4.
2. the scaling network, which grows 1 -> 2 -> 4 -> 8 workers (joining workers are warmed with a
   query per contract, so their sandbox start-up stays out of the timed windows):
   - queries against its one worker with a trivial contract: latency from building the sealed,
     signed query to the verified reply (the client's own checks), one at a time; then queries/s
     from concurrent connections replaying pre-built sealed queries (replies checked for 200, a
     sample verified in full). Connections come from distinct loopback addresses (127.0.0.x), as
     many clients' would: the worker's per-IP rate limit is not what is measured;
   - command latency: `Client.call` one at a time, from request to verified result (the client
     waits for inclusion and settlement, then checks signature, registration, code hash and
     commitment);
   - commands/s on 1, 2, 4 and 8 workers, on many contracts (commands on one contract run one at
     a time by design), closed loop with a few commands queued per contract, request txs
     pre-sealed, pre-signed and posted in batches (POST /txs), after a warm-up; a command counts
     when its JobSettled event arrives (not failed). The CPU every process of the network used
     per settled command is printed by role;
   - latency against load: the same driver with 1, 2, 4, ... commands in flight on 8 workers,
     from request to settlement event, for the plot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench._devnet import BenchNetwork, Tee
from bench._harness import Metric, percentile
from umbra import codec, crypto
from umbra.chain.types import Call, SignedTx, Tx
from umbra.client import Client
from umbra.client import _flows as flows
from umbra.client import _protocol as proto
from umbra.client._transport import run_sync

__all__ = ["Sizes", "run"]

BLOCK_MS = 100  # umbra dev's block_ms (DEV_PARAMS)
COUNTER = """from umbra.contract import Contract, command, query


class Counter(Contract):
    def init(self, ctx, start=0):
        self.state["n"] = start

    @command
    def add(self, ctx, by=1):
        self.state["n"] += by
        return self.state["n"]

    @query
    def get(self, ctx):
        return {"n": self.state["n"]}
"""
SCALING_WORKERS = (1, 2, 4, 8)
# Linear scaling from the 500/s at 4 workers: each worker is its own machine in production,
# and the chain's own target (5,000 tx/s, two txs per command) stays above 1,000 commands/s.
COMMANDS_TARGET = {1: 125, 2: 250, 4: 500, 8: 1000}
QUERY_P50_TARGET_MS = 2.0
QUERY_P99_TARGET_MS = 10.0  # the contracts issue sets the p50; a tail of 5x the median
QUERIES_TARGET = 2000
COMMAND_P50_TARGET_MS = 2 * BLOCK_MS + 20
COMMAND_P99_TARGET_MS = 4 * BLOCK_MS + 20  # one missed block each way, on top of the p50 target
# A quarter and a half of the 120 s INTERFACES.md allows `umbra dev` with workers (node start included).
START_TARGET_S = {"fresh": 30.0, "joining": 60.0}


@dataclass(frozen=True)
class Sizes:
    contracts: int  # contracts the throughput runs spread over
    depth: int  # commands kept queued per contract in the throughput runs
    warmup_s: float
    measure_s: float
    sweep: tuple[int, ...]  # commands in flight, for latency against load
    sweep_s: float
    queries: int  # sequential queries for latency
    query_s: float  # seconds of queries/s
    calls: int  # sequential Client.call for latency

    @classmethod
    def of(cls, quick: bool) -> Sizes:
        if quick:
            return cls(8, 3, 1.5, 3.0, (1, 4, 8), 2.5, 300, 2.0, 20)
        return cls(24, 3, 3.0, 10.0, (1, 2, 4, 8, 16, 24), 6.0, 2000, 5.0, 100)


@dataclass
class Curves:
    """What the plots show: commands/s by workers, and latency by load."""

    scaling: dict[int, float] = field(default_factory=dict)
    load: list[dict[str, float]] = field(default_factory=list)  # {"rate", "p50", "p99", "inflight"}


# ---- chain events ---------------------------------------------------------------------------------
class Settlements(threading.Thread):
    """Follows /events; hands (job id, failed, seen at) of every settled or failed job to `out`."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True, name="settlements")
        self.url = url
        self.out: queue.Queue[tuple[bytes, bool, float]] = queue.Queue()
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(10, read=None))

    def run(self) -> None:
        try:
            self._follow()
        except Exception:  # closing the client from stop() ends the stream in any of several ways
            if not self._stopping.is_set():
                raise

    def _follow(self) -> None:
        with self._client.stream("GET", f"{self.url}/events") as reply:
            self.ready.set()
            for line in reply.iter_lines():
                if self._stopping.is_set():
                    return
                if not line.startswith("data: "):
                    continue
                now = time.perf_counter()
                for event in json.loads(line[6:]).get("events", []):
                    if event.get("module") == "compute" and event.get("name") in ("JobSettled", "JobFailed"):
                        data = event.get("data") or {}
                        failed = event["name"] == "JobFailed" or bool(data.get("failed"))
                        self.out.put((codec.from_hex(data["job"]), failed, now))

    def stop(self) -> None:
        self._stopping.set()
        self._client.close()


# ---- load: pre-sealed, pre-signed compute.request txs ------------------------------------------------
@dataclass
class Sender:
    key: crypto.SigningKey
    nonce: int = 0


class Load:
    """Accounts that request commands, and the contracts' verified keys."""

    def __init__(self, net: BenchNetwork, client: Client, senders: int) -> None:
        self.url = net.url
        self.http = httpx.Client(base_url=net.url, timeout=60)
        self.chain_id = str(client.status()["chain_id"])
        self.job_fee = run_sync(flows.param("job_fee", 10), self.http)
        self.tx_fee = run_sync(flows.param("tx_fee", 1), self.http)
        self.reply = crypto.EcdhKey.generate()
        self.keys: dict[bytes, proto.ContractKey] = {}
        self.senders = [Sender(crypto.SigningKey.generate()) for _ in range(senders)]
        alice = net.account_keys()["alice"]
        nonce = int(self.http.get(f"/accounts/{codec.to_hex(alice.public_key)}").json()["nonce"])
        txs = [
            Tx(
                self.chain_id,
                alice.public_key,
                nonce + i,
                Call("balances", "transfer", {"to": s.key.public_key, "amount": 10**12}),
                self.tx_fee,
            ).sign(alice)
            for i, s in enumerate(self.senders)
        ]
        for start in range(0, len(txs), 200):
            if self.post(txs[start : start + 200]):
                raise RuntimeError("the node refused to fund the load accounts")
        last = txs[-1].hash
        deadline = time.monotonic() + 30
        while self.http.get(f"/tx/{codec.to_hex(last)}").json().get("status") != "included":
            if time.monotonic() > deadline:
                raise RuntimeError("the load accounts were not funded within 30 s")
            time.sleep(0.05)

    def add_contract(self, client: Client, contract: bytes) -> None:
        self.keys[contract] = run_sync(flows.contract_key(client._session, contract), client._http)

    def request(self, sender: Sender, contract: bytes) -> SignedTx:
        key = self.keys[contract]
        sealed = proto.seal_input(
            key,
            sender=sender.key.public_key,
            reply_pk=self.reply.public_key,
            nonce=sender.nonce,
            method="add",
            args={"by": 1},
        )
        call = Call(
            "compute",
            "request",
            {
                "contract": contract,
                "sealed_input": sealed,
                "reply_pk": self.reply.public_key,
                "max_fee": self.job_fee,
                "nonce": sender.nonce,
            },
        )
        stx = Tx(self.chain_id, sender.key.public_key, sender.nonce, call, self.tx_fee).sign(sender.key)
        sender.nonce += 1
        return stx

    def post(self, txs: list[SignedTx]) -> list[int]:
        """POST /txs; the indices of the txs the node refused."""
        reply = self.http.post("/txs", json={"txs": [codec.to_hex(t.encode()) for t in txs]})
        reply.raise_for_status()
        return [i for i, r in enumerate(reply.json()["results"]) if "error" in r]

    def resync(self, sender: Sender) -> None:
        account = self.http.get(f"/accounts/{codec.to_hex(sender.key.public_key)}").json()
        sender.nonce = int(account["nonce"])

    def close(self) -> None:
        self.http.close()


@dataclass
class LoopResult:
    rate: float
    latencies_ms: list[float]
    failed: int


def closed_loop(
    load: Load, watch: Settlements, slots: list[tuple[Sender, bytes]], warmup_s: float, measure_s: float
) -> LoopResult:
    """Keep one command in flight per slot (a sender and a contract): resubmit as each settles,
    those settled in one block together in one POST /txs. Counts completions after the warm-up."""
    pending: dict[bytes, tuple[int, float]] = {}

    refused = 0

    def submit(indices: list[int], retry: bool = True) -> None:
        nonlocal refused
        txs, jobs = [], []
        for i in indices:
            sender, contract = slots[i]
            stx = load.request(sender, contract)
            job = proto.job_id(stx.hash)
            pending[job] = (i, time.perf_counter())
            txs.append(stx)
            jobs.append((i, job))
        again = []
        for start in range(0, len(txs), 500):
            for k in load.post(txs[start : start + 500]):
                slot, job = jobs[start + k]
                del pending[job]
                load.resync(slots[slot][0])
                again.append(slot)
        if again and retry:  # a refused request (its sender's nonce moved): once more, fresh nonces
            submit(again, retry=False)
        elif again:
            refused += len(again)

    while not watch.out.empty():
        watch.out.get_nowait()
    begin = time.perf_counter()
    submit(list(range(len(slots))))
    window_start, window_end = begin + warmup_s, begin + warmup_s + measure_s
    done, failed, latencies = 0, 0, []
    while True:
        now = time.perf_counter()
        if now > window_end:
            break
        try:
            job, bad, seen = watch.out.get(timeout=max(0.01, window_end - now))
        except queue.Empty:
            break
        batch = [(job, bad, seen)]
        with contextlib.suppress(queue.Empty):
            while True:
                batch.append(watch.out.get_nowait())
        again = []
        for job, bad, seen in batch:
            entry = pending.pop(job, None)
            if entry is None:
                continue
            slot, submitted = entry
            if window_start <= seen <= window_end:
                done += 1
                failed += bad
                latencies.append((seen - submitted) * 1000)
            again.append(slot)
        if again and time.perf_counter() < window_end:
            submit(again)
    # Let the commands still in flight settle, so the next run starts from empty queues.
    deadline = time.perf_counter() + 30
    while pending and time.perf_counter() < deadline:
        with contextlib.suppress(queue.Empty):
            job, _, _ = watch.out.get(timeout=0.5)
            pending.pop(job, None)
    if refused:
        print(f"  note: {refused} requests refused at admission and not retried")
    return LoopResult(done / measure_s, latencies, failed)


# ---- queries --------------------------------------------------------------------------------------
def _clients_on_loopback(count: int) -> list[httpx.Client]:
    return [
        httpx.Client(timeout=30, transport=httpx.HTTPTransport(local_address=f"127.0.0.{2 + i}"))
        for i in range(count)
    ]


async def _query_flood(
    url: str, bodies: list[bytes], connections: int, seconds: float
) -> tuple[int, int, list[bytes]]:
    """Closed loop over `connections` keep-alive connections: (ok, refused, a few reply bodies)."""
    host, port = url.removeprefix("http://").split(":")
    ok = refused = 0
    samples: list[bytes] = []
    stop = time.perf_counter() + seconds

    async def one(index: int) -> None:
        nonlocal ok, refused
        reader, writer = await asyncio.open_connection(
            host, int(port), local_addr=(f"127.0.0.{2 + index}", 0)
        )
        i = index
        try:
            while time.perf_counter() < stop:
                body = bodies[i % len(bodies)]
                i += connections
                writer.write(
                    b"POST /query HTTP/1.1\r\nhost: w\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                reply = await reader.readexactly(length)
                if head.startswith(b"HTTP/1.1 200"):
                    ok += 1
                    if len(samples) < 16:
                        samples.append(reply)
                else:
                    refused += 1
        finally:
            writer.close()

    await asyncio.gather(*(one(i) for i in range(connections)))
    return ok, refused, samples


def queries(
    client: Client, worker: Tee, contract: bytes, caller: crypto.SigningKey, sizes: Sizes
) -> list[Metric]:
    key = run_sync(flows.contract_key(client._session, contract), client._http)
    record = run_sync(flows.worker(worker.id), client._http)
    head = client.status()
    now_ms = int(head["time_ms"])
    contract_hex = codec.to_hex(contract)

    def build() -> proto.QueryRequest:
        return proto.build_query(
            key,
            caller=caller,
            method="get",
            args={},
            expiry_ms=now_ms + 5 * 60 * 1000,
            min_height=0,
            reply_key=crypto.EcdhKey.generate(),
        )

    # Latency: build, send, verify, one at a time (rotating the source address: see the docstring).
    https = _clients_on_loopback(8)
    samples: list[float] = []
    parts: list[tuple[float, float, float]] = []  # build, worker round trip, verify
    health: list[float] = []
    try:
        for i in range(sizes.queries + 20):
            start = time.perf_counter()
            request = build()
            sent = time.perf_counter()
            reply = https[i % len(https)].post(
                f"{worker.url}/query", json={"contract": contract_hex, "query": codec.to_hex(request.raw)}
            )
            reply.raise_for_status()
            answered = time.perf_counter()
            verified = proto.verify_query_reply(
                request, reply.json(), worker=record, worker_id=worker.id, now_ms=now_ms
            )
            assert verified.outcome.ok, verified.outcome.error
            end = time.perf_counter()
            if i >= 20:  # the first ones warm connections and caches
                samples.append((end - start) * 1000)
                parts.append(((sent - start) * 1000, (answered - sent) * 1000, (end - answered) * 1000))
        for i in range(100):  # the worker's HTTP stack alone: no core, no crypto
            start = time.perf_counter()
            https[i % len(https)].get(f"{worker.url}/health").raise_for_status()
            health.append((time.perf_counter() - start) * 1000)
    finally:
        for http in https:
            http.close()
    build_ms, worker_ms, verify_ms = (percentile([p[k] for p in parts], 50) for k in range(3))
    split = (
        f"Medians: the client seals and signs in {build_ms:.2f} ms, the worker answers in {worker_ms:.2f} ms "
        f"(its HTTP stack alone, GET /health: {percentile(health, 50):.2f} ms; the rest is one pipe round "
        f"trip to its enclave core, HPKE open and seal, an Ed25519 verify and sign, and the query in the "
        f"caller's kept sandbox child), the client verifies in {verify_ms:.2f} ms"
    )
    print(f"  {split}")
    # Throughput: pre-built sealed queries, replayed over concurrent connections.
    requests = [build() for _ in range(256)]
    bodies = [json.dumps({"contract": contract_hex, "query": codec.to_hex(r.raw)}).encode() for r in requests]
    ok, refused, replies = asyncio.run(_query_flood(worker.url, bodies, 16, sizes.query_s))
    for body in replies:  # the replies carry the right signature and open (a sample)
        doc = json.loads(body)
        match = next(r for r in requests if codec.sha256(r.raw).hex() == doc["reply"]["query_hash"][2:])
        proto.verify_query_reply(match, doc, worker=record, worker_id=worker.id, now_ms=now_ms)
    if refused:
        print(f"  note: {refused} queries refused during the queries/s run")
    return [
        Metric(
            "query latency p50 (1 worker)",
            percentile(samples, 50),
            "ms",
            QUERY_P50_TARGET_MS,
            "lower",
            bound_by="loopback HTTP round trip p50",
            note=split + ".",
        ),
        Metric("query latency p99 (1 worker)", percentile(samples, 99), "ms", QUERY_P99_TARGET_MS, "lower"),
        Metric(
            "queries/s (1 worker)",
            ok / sizes.query_s,
            "queries/s",
            QUERIES_TARGET,
            "higher",
            bound_by="query crypto ceiling (1 core)",
            note=(
                "A worker answers through one enclave core process, one request at a time (the pipe "
                "protocol), about 0.8 ms of core CPU each; the load generator, the node and the worker "
                f"share this machine's {os.cpu_count()} CPUs."
            ),
        ),
    ]


# ---- commands -------------------------------------------------------------------------------------
def deploy_all(net: BenchNetwork, accounts: list[crypto.SigningKey], count: int) -> list[bytes]:
    def one(index: int) -> bytes:
        with Client(net.url, accounts[index % len(accounts)]) as client:
            return codec.from_hex(client.deploy(COUNTER, init={"start": 0}).contract_id)

    with ThreadPoolExecutor(max_workers=min(count, len(accounts), 8)) as pool:
        return list(pool.map(one, range(count)))


def warm(client: Client, workers: list[Tee], contracts: list[bytes], caller: crypto.SigningKey) -> None:
    """One query per contract on each worker: its core starts the contract's warm sandbox (as the
    first job would), so that start-up stays out of the timed windows."""
    head = client.status()
    built = {
        c: proto.build_query(
            run_sync(flows.contract_key(client._session, c), client._http),
            caller=caller,
            method="get",
            args={},
            expiry_ms=int(head["time_ms"]) + 5 * 60 * 1000,
            min_height=0,
            reply_key=crypto.EcdhKey.generate(),
        )
        for c in contracts
    }

    def one(worker: Tee) -> None:
        with httpx.Client(timeout=60) as http:
            for contract, request in built.items():
                body = {"contract": codec.to_hex(contract), "query": codec.to_hex(request.raw)}
                http.post(f"{worker.url}/query", json=body).raise_for_status()

    with ThreadPoolExecutor(max_workers=max(1, len(workers))) as pool:
        list(pool.map(one, workers))


def command_latency(client: Client, contract: bytes, calls: int) -> list[Metric]:
    samples = []
    for i in range(calls + 3):
        start = time.perf_counter()
        result = client.call(contract, "add", {"by": 1})
        assert result.verified
        if i >= 3:
            samples.append((time.perf_counter() - start) * 1000)
    return [
        Metric(
            "command latency p50 (request to verified result)",
            percentile(samples, 50),
            "ms",
            COMMAND_P50_TARGET_MS,
            "lower",
            note=(
                "The request waits for its block (up to block_ms), the worker runs the job when that "
                "block's event reaches it, the result settles in a later block, and the client then "
                "polls the job record and reads what it verifies (block, worker records) from the node."
            ),
        ),
        Metric(
            "command latency p99 (request to verified result)",
            percentile(samples, 99),
            "ms",
            COMMAND_P99_TARGET_MS,
            "lower",
        ),
    ]


@contextlib.contextmanager
def _timed(label: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    print(f"  {label}: {time.perf_counter() - start:.1f} s", flush=True)


def _startup_metrics(
    fresh: int, fresh_s: float, joined: int, existing: int, joining_s: float
) -> list[Metric]:
    """`fresh` workers (and the gatekeeper) on a new network; `joined` workers joining `existing`."""
    return [
        Metric(
            f"worker start to attested+keyed ({fresh} worker{'s' if fresh > 1 else ''}, fresh network)",
            fresh_s,
            "s",
            START_TARGET_S["fresh"],
            "lower",
        ),
        Metric(
            f"worker start to attested+keyed ({existing + joined} workers: {joined} joining {existing})",
            joining_s,
            "s",
            START_TARGET_S["joining"],
            "lower",
        ),
    ]


def _ready_s(tees: list[Tee]) -> float:
    return max(t.ready_s for t in tees)


def startup(work: Path) -> list[Metric]:
    """A fresh network: the gatekeeper and 3 workers at once, then 17 more at once (20 in all)."""
    with BenchNetwork(work / "startup", max_workers=20) as net:
        net.start_node()
        with _timed("3 workers attested and keyed"):
            first = net.start_workers(3)
        assert net.gatekeeper is not None
        three = _ready_s([*first, net.gatekeeper])
        with _timed("17 more workers attested and keyed"):
            twenty = _ready_s(net.start_workers(17))
    return _startup_metrics(3, three, 17, 3, twenty)


def _cpu_report(before: dict[str, float], after: dict[str, float], client: float, commands: float) -> str:
    """CPU milliseconds per settled command, by role (all processes of the network, and this one)."""
    used = {k: after[k] - before.get(k, 0.0) for k in after}
    used["load generator"] = client
    total = sum(used.values())
    if not commands:
        return f"{total:.1f} CPU s and no command settled"
    parts = ", ".join(f"{k} {1000 * v / commands:.1f}" for k, v in used.items())
    cpus = os.cpu_count() or 1
    text = (
        f"{1000 * total / commands:.0f} ms of CPU per settled command ({parts}); every process shares this "
        f"machine's {cpus} CPUs, which at that cost settle at most {cpus * commands / total:.0f} commands/s"
    )
    print(f"    {text}", flush=True)
    return text


def run(work: Path, *, quick: bool, curves: Curves) -> list[Metric]:
    sizes = Sizes.of(quick)
    metrics = [] if quick else startup(work)
    # The scaling network grows 1 -> 2 -> 4 -> 8 workers: no operator tx races the hosts' own.
    with BenchNetwork(work / "scaling", max_workers=8) as net:
        net.start_node()
        first = net.start_workers(1)
        assert net.gatekeeper is not None
        fresh_s, joining = _ready_s([*first, net.gatekeeper]), (0, 0, 0.0)
        keys = net.account_keys()
        with Client(net.url, keys["alice"]) as alice:
            load = Load(net, alice, senders=max(sizes.contracts * sizes.depth, max(sizes.sweep)))
            try:
                with _timed(f"deploy {sizes.contracts + 1} contracts"):
                    funded = [s.key for s in load.senders[:8]]
                    contracts = deploy_all(net, funded, sizes.contracts + 1)
                for contract in contracts:
                    load.add_contract(alice, contract)
                probe, contracts = contracts[0], contracts[1:]
                with _timed("queries"):
                    metrics += queries(alice, net.workers[0], probe, keys["bob"], sizes)
                with _timed("command latency"):
                    metrics += command_latency(alice, probe, sizes.calls)
                for sender in load.senders[:8]:  # they deployed: their nonces moved on
                    account = load.http.get(f"/accounts/{codec.to_hex(sender.key.public_key)}").json()
                    sender.nonce = int(account["nonce"])
                watch = Settlements(net.url)
                watch.start()
                watch.ready.wait(10)
                try:
                    slots = [
                        (load.senders[i], contracts[i % len(contracts)])
                        for i in range(len(contracts) * sizes.depth)
                    ]
                    for count in SCALING_WORKERS:
                        if len(net.workers) < count:
                            with _timed(f"{count - len(net.workers)} more worker(s) keyed and warm"):
                                existing = len(net.workers)
                                new = net.start_workers(count - existing)
                                joining = (len(new), existing, _ready_s(new))
                                warm(alice, new, contracts, keys["bob"])
                        before, client_before = net.cpu_seconds(), time.process_time()
                        with _timed(f"commands/s on {count} worker(s)"):
                            result = closed_loop(load, watch, slots, sizes.warmup_s, sizes.measure_s)
                        cpu = _cpu_report(
                            before,
                            net.cpu_seconds(),
                            time.process_time() - client_before,
                            result.rate * sizes.measure_s,
                        )
                        curves.scaling[count] = result.rate
                        if result.failed:
                            print(f"  note: {result.failed} commands failed on {count} worker(s)")
                        metrics.append(
                            Metric(
                                f"commands/s ({count} worker{'s' if count > 1 else ''}, {len(contracts)} contracts)",
                                result.rate,
                                "commands/s",
                                COMMANDS_TARGET[count],
                                "higher",
                                note=f"Measured: {cpu}. A contract runs one command per block, so "
                                f"{len(contracts)} contracts at {BLOCK_MS} ms blocks allow at most "
                                f"{len(contracts) * 1000 // BLOCK_MS} commands/s whatever the workers.",
                            )
                        )
                    for inflight in sizes.sweep:
                        with _timed(f"latency at {inflight} in flight"):
                            result = closed_loop(load, watch, slots[:inflight], 1.0, sizes.sweep_s)
                        curves.load.append(
                            {
                                "inflight": inflight,
                                "rate": result.rate,
                                "p50": percentile(result.latencies_ms, 50),
                                "p99": percentile(result.latencies_ms, 99),
                            }
                        )
                finally:
                    watch.stop()
            finally:
                load.close()
    if quick:
        metrics = _startup_metrics(len(first), fresh_s, *joining) + metrics
    return metrics
