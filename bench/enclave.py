"""The confidential path's cost inside a worker, against the same method run plainly.

Confidential: the core's `execute` op through the in-memory transport (every request and reply
still crosses the codec, as on the pipe): check the job against the verified chain, HPKE-open the
input, open the state, run the method in a fresh forked sandbox child, seal the new state, commit
to the output, HPKE-seal it to the requester and sign the result body. Plain: the same method, same
state and arguments, through `LocalRunner` (this process, no sandbox, no encryption; the same CBOR
checks). The method computes for about 10 ms. Runs alternate, so drift hits both alike; the
figure is the ratio of the medians.
"""

from __future__ import annotations

import statistics
import time

from bench._harness import Metric
from bench._inprocess import InProcessNetwork
from umbra.contract import ContractRunner, JobSpec, LocalRunner

__all__ = ["overhead"]

TARGET_RATIO = 1.15
WORK = b"""from umbra.contract import Contract, command


class Work(Contract):
    def init(self, ctx):
        self.state["acc"] = 0
        self.state["runs"] = 0

    @command
    def work(self, ctx, n=1000):
        acc = self.state["acc"]
        for i in range(n):
            acc = (acc * 31 + i) % 1000003
        self.state["acc"] = acc
        self.state["runs"] += 1
        return acc
"""


def _run_ms(runner: LocalRunner | ContractRunner, n: int, state: dict[str, int]) -> float:
    spec = JobSpec(
        kind="command",
        method="work",
        args={"n": n},
        state=state,
        caller=bytes(32),
        job=bytes(32),
        random_seed=bytes(32),
    )
    start = time.perf_counter()
    outcome = runner.run(spec)
    assert outcome.ok, outcome.error
    return (time.perf_counter() - start) * 1000


def overhead(*, runs: int) -> list[Metric]:
    net = InProcessNetwork.start()
    contract = net.deploy(WORK, init={})
    state = {"acc": 0, "runs": 0}
    plain = LocalRunner(WORK.decode(), contract_id=contract)
    # About 10 ms of compute in the plain runner.
    n = 20_000
    for _ in range(3):
        n = max(1000, int(n * 10.0 / statistics.median(_run_ms(plain, n, state) for _ in range(7))))
    _, request = net.request(contract, "work", {"n": n})
    # The sandbox alone (the fork-per-job runner the core uses, without keys or encryption): it
    # splits the overhead into the sandbox's share and the core's (checks, crypto, codec).
    sandbox = ContractRunner(WORK.decode(), contract_id=contract)
    confidential, baseline, sandboxed = [], [], []
    try:
        for _ in range(3):  # warm: the sandbox hosts start, the first children fork
            net.worker.call(request)
            _run_ms(sandbox, n, state)
        for _ in range(runs):  # interleaved, so that drift in the machine's load hits all three
            start = time.perf_counter()
            result = net.worker.call(request)
            confidential.append((time.perf_counter() - start) * 1000)
            assert not result["body"]["failed"]
            baseline.append(_run_ms(plain, n, state))
            sandboxed.append(_run_ms(sandbox, n, state))
    finally:
        sandbox.close()
        net.close()
    conf, base, box = (statistics.median(x) for x in (confidential, baseline, sandboxed))
    split = (
        f"of the {conf - base:.2f} ms the confidential path adds to a {base:.1f} ms method, the fork-per-job "
        f"sandbox takes {box - base:.2f} ms and the core (checks, HPKE, state sealing, signature, codec) "
        f"{conf - box:.2f} ms"
    )
    print(f"  confidential {conf:.2f} ms, sandbox only {box:.2f} ms, plain {base:.2f} ms (n={n})")
    return [
        Metric(
            "confidential/plain time, 10 ms command (in the worker)",
            conf / base,
            "ratio",
            TARGET_RATIO,
            "lower",
            note=f"Medians in one run: {split}.",
        ),
    ]
