"""examples/darkpool: a private limit order book with midpoint matching.

Live (slow): run.py passes against its own `umbra dev --workers 3` (each trader sees only their
own fills, the operator sees none, settlement pays exact net proceeds and publishes counts only),
and the order refs, which carry a marker, appear nowhere public or on disk.
Local: price-time priority, midpoint prices, and conservation of cash and units on random flows.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from tests.examples.local_contract import LocalContract, hex_of
from tests.examples.privacy_net import DevNetwork, dev_network, new_marker

TRADERS = ("bob", "charlie", "dave", "erin")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevNetwork]:
    with dev_network(tmp_path_factory.mktemp("darkpool")) as network:
        yield network


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_darkpool_shows_fills_only_to_their_traders(net: DevNetwork) -> None:
    marker = new_marker("darkpool")
    output = net.run_example("darkpool", marker)
    for line in (
        "ok   charlie reads bob's fills: refused",
        "ok   alice reads erin's fills: refused",
        "ok   no public event while trading",
        "ok   settlement paid each trader's net proceeds",
        "ok   the only public event is the settlement, with counts only",
    ):
        assert line in output
    assert net.public_leaks(marker) == []
    assert net.public_leaks("class DarkPool(Contract)"), "the scan must see public data (the code)"
    net.stop()
    assert net.file_leaks(marker) == []
    assert net.file_leaks("class DarkPool(Contract)"), "the scan must see the chain's database"


def test_price_time_priority_and_midpoint() -> None:
    pool = LocalContract("darkpool", {"holdings": {hex_of("bob"): 5, hex_of("charlie"): 5}})
    pool.call("deposit", caller="erin", value=1000)
    pool.call("order", {"side": "sell", "price": 100, "qty": 2, "ref": "b1"}, "bob")
    pool.call("order", {"side": "sell", "price": 100, "qty": 2, "ref": "c1"}, "charlie")  # same price, later
    pool.call("order", {"side": "sell", "price": 99, "qty": 1, "ref": "c2"}, "charlie")  # better price
    assert pool.call("order", {"side": "buy", "price": 104, "qty": 4, "ref": "e1"}, "erin") == {
        "filled": 4,
        "resting": 0,
    }
    assert [(f["price"], f["qty"]) for f in pool.query("fills", caller="erin")] == [
        (101, 1),
        (102, 2),
        (102, 1),
    ]
    assert [(f["ref"], f["qty"]) for f in pool.query("fills", caller="bob")] == [("b1", 2)]
    assert [(f["ref"], f["qty"]) for f in pool.query("fills", caller="charlie")] == [("c2", 1), ("c1", 1)]
    assert pool.query("orders", caller="charlie") == [{"side": "sell", "price": 100, "left": 1, "ref": "c1"}]
    assert "dark" in pool.refused("query", "orders", {"trader": hex_of("charlie")}, "alice")
    assert "only the operator" in pool.refused("command", "settle", caller="erin")
    assert pool.call("settle") == {"batch": 1, "fills": 3, "payouts": 3}
    assert sorted(pool.transfers) == sorted(
        [(hex_of("erin"), 1000 - 101 - 204 - 102), (hex_of("bob"), 204), (hex_of("charlie"), 101 + 102)]
    )
    assert pool.events == [("Settled", {"batch": 1, "fills": 3, "payouts": 3})]


@pytest.mark.parametrize("seed", range(8))
def test_cash_and_units_are_conserved(seed: int) -> None:
    rng = random.Random(seed)
    pool = LocalContract("darkpool", {"holdings": {hex_of(t): 20 for t in TRADERS}})
    for t in TRADERS:
        pool.call("deposit", caller=t, value=5000)
    limits = {}
    for i in range(30):
        trader, side, price = rng.choice(TRADERS), rng.choice(("buy", "sell")), rng.randint(95, 105)
        qty = rng.randint(1, 4)
        if side == "sell" and pool.query("account", caller=trader)["units"] < qty:
            continue
        pool.call("order", {"side": side, "price": price, "qty": qty, "ref": str(i)}, trader)
        limits[str(i)] = (side, price)
        if rng.random() < 0.2 and any(o["ref"] == str(i) for o in pool.query("orders", caller=trader)):
            pool.call("cancel", {"ref": str(i)}, trader)
    pool.call("settle")
    book = pool.state["book"]
    locked_cash = sum(o["price"] * o["left"] for o in book if o["side"] == "buy")
    locked_units = sum(o["left"] for o in book if o["side"] == "sell")
    assert sum(a for _, a in pool.transfers) + locked_cash == 4 * 5000
    assert sum(pool.state["units"].values()) + locked_units == 4 * 20
    for t in TRADERS:
        for fill in pool.query("fills", caller=t):
            side, limit = limits[fill["ref"]]
            assert fill["price"] <= limit if side == "buy" else fill["price"] >= limit
