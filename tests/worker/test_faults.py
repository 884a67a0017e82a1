"""Chaos flags through the CLI: a lying enclave is outvoted by honest replicas (the same, and a
stalling worker, on a whole `umbra dev` network with staked pools: test_dev_economics.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import COUNTER_CONTRACT
from tests.worker.conftest import info, run_json, wait_keyed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_honest_replicas_outvote_a_lying_enclave(network: Any) -> None:
    net = network()
    gatekeeper = net.start_host("gatekeeper", "gatekeeper")
    honest = [net.start_host("worker", "w0"), net.start_host("worker", "w1")]
    liar = net.start_host("worker", "w2", "--fault", "wrong-output")
    wait_keyed(gatekeeper, *honest, liar)
    common = ("--node", net.node_url, "--key", str(net.keys["alice"]))
    code, deployed = run_json("deploy", str(COUNTER_CONTRACT), "--init", '{"start": 1}', *common, timeout=120)
    assert code == 0, deployed
    code, called = run_json(
        "call", deployed["contract_id"], "add", "--args", '{"by": 2}', "--replicas", "3", *common, timeout=120
    )
    assert code == 0, called
    assert called["output"] == 3 and called["verified"] is True
    assert info(liar)["id"] not in called["workers"]
    assert sorted(called["workers"]) == sorted(info(p)["id"] for p in honest)
