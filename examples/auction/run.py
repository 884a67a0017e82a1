"""Sealed-bid batch auction: four traders send encrypted bids and asks; the owner closes the
window and the enclave clears every order at one uniform price, paying sellers and refunding
bidders through ctx.transfer.

Checks that no order is readable before clearing (by other traders or the owner, and nothing in
public events), that only the price, the volume and each trader's own fills come out, that
balances move by exactly the payouts, and that submitting the same orders in another order to a
second auction gives the same price and fills.

Runs against the network named by UMBRA_NODE with the dev accounts of UMBRA_DEV_JSON.
Exits 0 iff every check passes. UMBRA_EXAMPLE_MARKER, if set, goes into each order's private ref.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from umbra import crypto
from umbra.client import Client, UmbraError, dev_keys

CONTRACT = Path(__file__).with_name("contract.py")
HOLDINGS = {"charlie": 4, "dave": 8}  # units of the asset each seller starts with
BUDGETS = {"bob": 1000, "erin": 800}  # what each bidder pays in (public: send a round sum, not the bid)
# (trader, side, price, qty). Demand >= p and supply <= p trade most (6 units) at 100 and 102 with
# equal imbalance, so the price is their midpoint, 101. Bids at 105 and 102 fill in full; asks at
# 96 fill in full (2), and the 4 units left are shared pro rata by the asks at 100: dave 3, charlie 1.
ORDERS = [
    ("bob", "buy", 105, 4),
    ("erin", "buy", 102, 2),
    ("bob", "buy", 99, 2),
    ("erin", "buy", 97, 3),
    ("charlie", "sell", 96, 2),
    ("dave", "sell", 100, 6),
    ("charlie", "sell", 100, 2),
    ("dave", "sell", 103, 2),
]
PRICE, VOLUME = 101, 6
FILLS = [4, 2, 0, 0, 2, 3, 1, 0]
PAYOUTS = {"bob": 1000 - 4 * 101, "erin": 800 - 2 * 101, "charlie": 3 * 101, "dave": 3 * 101}


def main() -> int:
    keys = dev_keys()
    keys["dave"], keys["erin"] = crypto.SigningKey.generate(), crypto.SigningKey.generate()
    marker = os.environ.get("UMBRA_EXAMPLE_MARKER", "client-order")
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    def refused(action: Callable[[], Any], reason: str, what: str) -> None:
        try:
            action()
        except UmbraError as exc:
            check(exc.code == "contract_error" and reason in exc.message, f"{what}: refused ({exc.message})")
        else:
            check(False, f"{what}: was allowed")

    clients = {name: Client(key=key) for name, key in keys.items()}
    try:
        addr = {name: str(c.address) for name, c in clients.items()}
        alice, bob, charlie = clients["alice"], clients["bob"], clients["charlie"]
        balance = alice.balance  # any account's free balance (public chain data)
        for name in ("dave", "erin"):
            alice.transfer(addr[name], 100_000)
        init = {"holdings": {addr[n]: units for n, units in HOLDINGS.items()}, "min_orders": len(ORDERS)}
        first = alice.deploy(CONTRACT, init=init)
        second = alice.deploy(CONTRACT, init=init)
        a, b = first.contract_id, second.contract_id
        print(f"deployed two auctions: A {a}, B {b}")

        def submit(cid: str, sequence: list[int]) -> None:
            funded: set[str] = set()
            for i in sequence:
                trader, side, price, qty = ORDERS[i]
                value = 0
                if side == "buy" and trader not in funded:  # a bidder pays in its budget once
                    value = BUDGETS[trader]
                    funded.add(trader)
                args = {"side": side, "price": price, "qty": qty, "ref": f"{marker}-{i}"}
                clients[trader].call(cid, "order", args, value=value)

        submit(a, list(range(len(ORDERS))))
        print(f"A: {len(ORDERS)} sealed orders submitted in the listed order")
        later = [7, 3, 5, 1, 6, 0, 4, 2]  # the same orders, in another order
        submit(b, later[:4])
        refused(lambda: alice.call(b, "close"), "only after 8 orders", "B: closing before enough orders")
        submit(b, later[4:])
        print("B: the same orders submitted in the order " + ", ".join(map(str, later)))

        mine = bob.query(a, "orders").output
        check(
            [(o["price"], o["qty"], o["ref"], o["fill"]) for o in mine]
            == [(105, 4, f"{marker}-0", None), (99, 2, f"{marker}-2", None)],
            "bob reads his own sealed orders (no fills yet)",
        )
        refused(
            lambda: charlie.query(a, "orders", {"trader": addr["bob"]}),
            "sealed",
            "charlie reads bob's orders",
        )
        refused(
            lambda: alice.query(a, "orders", {"trader": addr["bob"]}),
            "sealed",
            "the owner reads bob's orders",
        )
        refused(lambda: bob.query(a, "result"), "not cleared", "reading the result before clearing")
        refused(lambda: bob.call(a, "close"), "only the owner", "a trader closes the window early")
        check(alice.contract_events(a, first.height) == [], "no public event before clearing")

        traders = ["bob", "erin", "charlie", "dave"]

        def fills_of(cid: str) -> list[int]:
            """Each order's fill, in ORDERS' order, as its own trader reads it (refs name the order)."""
            fills = {}
            for name in traders:
                for order in clients[name].query(cid, "orders").output:
                    fills[int(order["ref"].rsplit("-", 1)[1])] = order["fill"]
            return [fills[i] for i in range(len(ORDERS))]

        pool = alice.contract_account(a)
        before = {n: balance(addr[n]) for n in traders}
        check(
            balance(pool) == sum(BUDGETS.values()), f"A holds the bidders' funds in escrow: {balance(pool)}"
        )
        cleared = alice.call(a, "close").output
        check(cleared == {"price": PRICE, "volume": VOLUME}, f"A clears at one price: {cleared}")
        moved = {n: balance(addr[n]) - before[n] for n in traders}
        check(moved == PAYOUTS, f"payouts through ctx.transfer: {moved}")
        check(balance(pool) == 0, "A's account is empty: every unit of escrow was paid out or refunded")
        check(bob.query(a, "result").output == cleared, "the result is readable once cleared")
        fills = fills_of(a)
        check(fills == FILLS, f"each trader sees their own fills: {fills}")
        units = {n: clients[n].query(a, "account").output["holdings"] for n in traders}
        check(units == {"bob": 4, "erin": 2, "charlie": 1, "dave": 5}, f"units moved to the buyers: {units}")
        events = [(e.name, e.data) for e in alice.contract_events(a, first.height)]
        check(events == [("Cleared", {"price": PRICE, "volume": VOLUME})], f"public events: {events}")

        again = alice.call(b, "close").output
        fills_b = fills_of(b)
        check(
            again == cleared and fills_b == fills,
            f"B, same orders in another order: same price and fills ({again})",
        )
        check(balance(alice.contract_account(b)) == 0, "B paid out everything too")
    finally:
        for client in clients.values():
            client.close()
    print(f"{'all checks pass' if not failures else f'{len(failures)} check(s) failed'}")
    return 0 if not failures else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UmbraError as exc:
        print(f"FAIL {exc.code}: {exc.message}")
        sys.exit(1)
