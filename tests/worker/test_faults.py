"""Chaos flags: a lying enclave is outvoted by honest replicas; a stalled worker's job moves on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.worker.conftest import info, run_json, wait_keyed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

COUNTER = """
from umbra.contract import Contract, command


class Counter(Contract):
    def init(self, ctx, start=0):
        self.state["n"] = start

    @command
    def add(self, ctx, by=1):
        self.state["n"] += by
        return self.state["n"]
"""


def test_honest_replicas_outvote_a_lying_enclave(network: Any, tmp_path: Path) -> None:
    net = network()
    gatekeeper = net.start_host("gatekeeper", "gatekeeper")
    honest = [net.start_host("worker", "w0"), net.start_host("worker", "w1")]
    liar = net.start_host("worker", "w2", "--fault", "wrong-output")
    wait_keyed(gatekeeper, *honest, liar)
    source = tmp_path / "counter.py"
    source.write_text(COUNTER)
    common = ("--node", net.node_url, "--key", str(net.keys["alice"]))
    code, deployed = run_json("deploy", str(source), "--init", '{"start": 1}', *common, timeout=120)
    assert code == 0, deployed
    code, called = run_json(
        "call", deployed["contract_id"], "add", "--args", '{"by": 2}', "--replicas", "3", *common, timeout=120
    )
    assert code == 0, called
    assert called["output"] == 3 and called["verified"] is True
    assert info(liar)["id"] not in called["workers"]
    assert sorted(called["workers"]) == sorted(info(p)["id"] for p in honest)
