"""examples/auction: a sealed-bid batch auction with a uniform clearing price.

Live (slow): run.py passes against its own `umbra dev --workers 3` (orders refused to others
before clearing, no public event until then, exact payouts, the same result from two submission
orders), and the order refs, which carry a marker, appear nowhere public or on disk.
Local: on random order books, any submission order gives the same price and fills, and every
unit of escrow is paid out.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.examples.local_contract import LocalContract, hex_of
from tests.examples.privacy_net import DevNetwork, dev_network, new_marker

TRADERS = ("bob", "charlie", "dave", "erin")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevNetwork]:
    with dev_network(tmp_path_factory.mktemp("auction")) as network:
        yield network


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_auction_keeps_orders_sealed_until_clearing(net: DevNetwork) -> None:
    marker = new_marker("auction")
    output = net.run_example("auction", marker)
    for line in (
        "ok   charlie reads bob's orders: refused",
        "ok   the owner reads bob's orders: refused",
        "ok   no public event before clearing",
        "ok   payouts through ctx.transfer",
        "ok   B, same orders in another order: same price and fills",
    ):
        assert line in output
    assert net.public_leaks(marker) == []
    assert net.public_leaks("class BatchAuction(Contract)"), "the scan must see public data (the code)"
    net.stop()
    assert net.file_leaks(marker) == []
    assert net.file_leaks("class BatchAuction(Contract)"), "the scan must see the chain's database"


def run_auction(
    orders: list[tuple[str, str, int, int]], sequence: list[int]
) -> tuple[Any, dict[int, int], LocalContract]:
    holdings = {hex_of(t): 50 for t in TRADERS}
    auction = LocalContract("auction", {"holdings": holdings, "min_orders": len(orders)}, owner="alice")
    for i in sequence:
        trader, side, price, qty = orders[i]
        auction.call(
            "order",
            {"side": side, "price": price, "qty": qty, "ref": str(i)},
            trader,
            value=price * qty if side == "buy" else 0,
        )
    result = auction.call("close")
    fills = {int(o["ref"]): o["fill"] for t in TRADERS for o in auction.query("orders", caller=t)}
    return result, fills, auction


@pytest.mark.parametrize("seed", range(12))
def test_clearing_ignores_submission_order_and_pays_out_everything(seed: int) -> None:
    rng = random.Random(seed)
    orders = [
        (rng.choice(TRADERS), rng.choice(("buy", "sell")), rng.randint(90, 110), rng.randint(1, 6))
        for _ in range(rng.randint(4, 14))
    ]
    sequence = list(range(len(orders)))
    result, fills, auction = run_auction(orders, sequence)
    rng.shuffle(sequence)
    assert run_auction(orders, sequence)[:2] == (result, fills)

    price, volume = result["price"], result["volume"]
    bought = sum(fills[i] for i, o in enumerate(orders) if o[1] == "buy")
    sold = sum(fills[i] for i, o in enumerate(orders) if o[1] == "sell")
    assert bought == sold == volume
    for i, (_, side, limit, qty) in enumerate(orders):
        assert 0 <= fills[i] <= qty
        if fills[i]:  # nobody trades at a price worse than their limit
            assert (limit >= price) if side == "buy" else (limit <= price)
    escrow = sum(p * q for _, side, p, q in orders if side == "buy")
    assert sum(amount for _, amount in auction.transfers) == escrow
    assert auction.events == [("Cleared", {"price": price, "volume": volume})]


def test_window_rules() -> None:
    auction = LocalContract("auction", {"holdings": {hex_of("bob"): 3}, "min_orders": 2, "close_height": 6})
    assert "exceed your funds" in auction.refused(
        "command", "order", {"side": "buy", "price": 10, "qty": 2}, "erin", 19
    )
    assert "more units than you hold" in auction.refused(
        "command", "order", {"side": "sell", "price": 9, "qty": 4}, "bob"
    )
    auction.call("order", {"side": "sell", "price": 9, "qty": 3}, "bob")
    assert "only the owner" in auction.refused("command", "close", caller="erin")
    assert "after 2 orders" in auction.refused("command", "close")
    assert "not cleared" in auction.refused("query", "result", caller="bob")
    assert "sealed" in auction.refused("query", "orders", {"trader": hex_of("bob")}, "alice")
    auction.call("order", {"side": "buy", "price": 12, "qty": 2, "ref": "x"}, "erin", value=100)
    auction.height = 6  # the window closes at height 6: anyone may clear, no more orders
    assert "closed" in auction.refused("command", "order", {"side": "buy", "price": 12, "qty": 1}, "erin", 12)
    assert auction.call("close", caller="erin") == {"price": 10, "volume": 2}
    assert sorted(auction.transfers) == sorted([(hex_of("bob"), 20), (hex_of("erin"), 80)])
    assert auction.query("account", caller="erin") == {"holdings": 2, "funds": 0}
