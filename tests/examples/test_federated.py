"""examples/federated: FedAvg over sealed model updates.

Live (slow): run.py passes against its own `umbra dev --workers 3` (aggregate equal to local
FedAvg, replicated on three TEE types, individual updates refused to everyone), and the party
tags, which carry a marker, appear nowhere public or on disk. Local: the contract's rules.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction

import pytest

from tests.examples.local_contract import LocalContract, hex_of
from tests.examples.privacy_net import DevNetwork, dev_network, new_marker

PARTIES = ("alice", "bob", "charlie")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevNetwork]:
    with dev_network(tmp_path_factory.mktemp("federated")) as network:
        yield network


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_federated_releases_only_the_aggregate(net: DevNetwork) -> None:
    marker = new_marker("federated")
    output = net.run_example("federated", marker)
    for line in (
        "ok   closing with 2 of 3 updates: refused",
        "ok   bob reads alice's update: refused",
        "ok   alice (the owner) reads bob's update: refused",
        "ok   round 1: the aggregate equals local FedAvg exactly",
        "ok   round 1: replicas on sev-snp, sgx, tdx",
        "ok   round 2: the release is only the aggregate and the participant count",
    ):
        assert line in output
    assert net.public_leaks(marker) == []
    assert net.public_leaks("class FederatedAveraging(Contract)"), "the scan must see public data (the code)"
    net.stop()
    assert net.file_leaks(marker) == []
    assert net.file_leaks("class FederatedAveraging(Contract)"), "the scan must see the chain's database"


def test_fedavg_rules() -> None:
    fl = LocalContract(
        "federated", {"parties": [hex_of(p) for p in PARTIES], "dim": 3, "min_participants": 3}
    )
    updates = {"alice": [1, -2, 3_000_001], "bob": [4, 5, -6], "charlie": [7, 8, 9]}
    samples = {"alice": 3, "bob": 5, "charlie": 7}
    assert "only registered parties" in fl.refused(
        "command", "submit", {"weights": [0, 0, 0], "samples": 1}, "mallory"
    )
    assert "3 fixed-point ints" in fl.refused(
        "command", "submit", {"weights": [0.5, 0, 0], "samples": 1}, "bob"
    )
    for party in ("alice", "bob"):
        fl.call("submit", {"weights": updates[party], "samples": samples[party], "tag": "t"}, party)
    assert "needs at least 3" in fl.refused("command", "aggregate", caller="alice")
    assert "private" in fl.refused("query", "update", {"party": hex_of("bob")}, "alice")
    assert fl.query("update", caller="bob") == {"weights": updates["bob"], "samples": 5, "tag": "t"}
    fl.call("submit", {"weights": updates["charlie"], "samples": samples["charlie"]}, "charlie")

    model = fl.call("aggregate", caller="bob")
    expected = [round(Fraction(sum(updates[p][i] * samples[p] for p in PARTIES), 15)) for i in range(3)]
    assert model == {"round": 1, "participants": 3, "weights": expected}
    assert fl.query("model", caller="charlie") == model
    assert fl.query("update", caller="bob") is None, "individual updates are erased when the round closes"
    assert "updates" in fl.state and fl.state["updates"] == {}
    assert fl.events == [("RoundClosed", {"round": 1, "participants": 3})] and fl.transfers == []
    with pytest.raises(AssertionError, match="min_participants must be at least 3"):
        LocalContract("federated", {"parties": [hex_of(p) for p in PARTIES], "dim": 3, "min_participants": 2})
