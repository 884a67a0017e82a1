"""examples/data_union: consented records, k-anonymous paid aggregates, revenue to the members.

Live (slow): run.py passes against its own `umbra dev --workers 3` (aggregates equal to local
ones, small groups and identifier fields refused, exact pro-rata payouts), and the record names,
which carry a marker, appear nowhere public or on disk. Local: consent, k and the split's rounding.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.examples.local_contract import LocalContract, hex_of
from tests.examples.privacy_net import DevNetwork, dev_network, new_marker


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevNetwork]:
    with dev_network(tmp_path_factory.mktemp("data_union")) as network:
        yield network


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_data_union_releases_only_k_anonymous_aggregates(net: DevNetwork) -> None:
    marker = new_marker("data_union")
    output = net.run_example("data_union", marker)
    for line in (
        "ok   bob reads charlie's records: refused",
        "ok   the analyst reads dave's records: refused",
        "ok   a filter matching 1 record: refused",
        "ok   a filter on names: refused",
        "ok   research: 1000 split over 5/3/4 consenting records",
        "ok   marketing: paid only to consenting members",
    ):
        assert line in output
    assert net.public_leaks(marker) == []
    assert net.public_leaks("class DataUnion(Contract)"), "the scan must see public data (the code)"
    net.stop()
    assert net.file_leaks(marker) == []
    assert net.file_leaks("class DataUnion(Contract)"), "the scan must see the chain's database"


def test_consent_k_and_revenue_split() -> None:
    union = LocalContract("data_union", {"k": 3, "price": 100, "identifiers": ["email"]})
    row = {"email": "x@example.org", "age": 40}
    union.call("contribute", {"records": [row] * 2, "purposes": ["research"]}, "bob")
    union.call("contribute", {"records": [row] * 1, "purposes": ["research", "ads"]}, "carol")
    union.call("contribute", {"records": [{**row, "age": 20}] * 4, "purposes": ["ads"]}, "dave")
    analyze = {"purpose": "research", "stat": "sum", "field": "age"}

    assert "costs exactly 100" in union.refused("command", "analyze", analyze, "erin", value=99)
    assert "identifier" in union.refused("command", "analyze", {**analyze, "field": "email"}, "erin", 100)
    assert "identifier" in union.refused(
        "command", "analyze", {**analyze, "where": {"email": "x@example.org"}}, "erin", 100
    )
    assert "fewer than k=3" in union.refused(
        "command", "analyze", {**analyze, "where": {"age": [0, 30]}}, "erin", 100
    ), "dave's young records did not consent to research"
    assert union.call("analyze", analyze, "erin", value=100) == {
        "stat": "sum",
        "field": "age",
        "records": 3,
        "value": 120,
    }
    # 100 over bob's 2 and carol's 1 consenting records: 66.67 and 33.33 -> 67 and 33; dave gets none.
    assert sorted(union.transfers) == sorted([(hex_of("bob"), 67), (hex_of("carol"), 33)])
    union.transfers.clear()
    ads = union.call("analyze", {"purpose": "ads", "stat": "mean", "field": "age"}, "erin", value=100)
    assert ads == {"stat": "mean", "field": "age", "records": 5, "value": 24.0}
    assert sorted(union.transfers) == sorted([(hex_of("carol"), 20), (hex_of("dave"), 80)])
    assert union.events == [
        ("AnalysisPaid", {"analysis": 1, "paid": 100, "members": 2}),
        ("AnalysisPaid", {"analysis": 2, "paid": 100, "members": 2}),
    ]
    assert "private" in union.refused("query", "records", {"member": hex_of("bob")}, "erin")
    assert union.query("earnings", caller="carol") == 53
    assert union.call("revoke", caller="carol") == {"removed": 1}
    assert "fewer than k=3" in union.refused("command", "analyze", analyze, "erin", 100)
