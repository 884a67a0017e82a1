"""Dark pool: four traders deposit, place limit orders that match inside the enclave (price-time
priority, midpoint execution), and the operator settles everyone's cash through ctx.transfer.

Checks each trader's own fills against the expected matches, that nobody (the operator included)
reads another trader's orders or fills, that the public chain carries no prices or orders (only a
settlement event with counts), and that balances move by exactly each trader's net proceeds.

Runs against the network named by UMBRA_NODE with the dev accounts of UMBRA_DEV_JSON.
Exits 0 iff every check passes. UMBRA_EXAMPLE_MARKER, if set, goes into each order's private ref.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from umbra import crypto
from umbra.client import Client, UmbraError, dev_keys

CONTRACT = Path(__file__).with_name("contract.py")
HOLDINGS = {"charlie": 10, "dave": 6}  # units of the asset each seller starts with
DEPOSITS = {"bob": 5000, "erin": 5000}  # cash the buyers pay in (public)
# (trader, side, price, qty), in arrival order, and what each does on the book:
ORDERS = [
    ("charlie", "sell", 100, 4),  # rests
    ("dave", "sell", 98, 3),  # rests, better priced
    ("bob", "buy", 101, 5),  # takes dave's 3 at (101+98)//2 = 99, then 2 of charlie's at 100
    ("erin", "buy", 99, 4),  # does not cross charlie's remaining 2 at 100: rests
    ("charlie", "sell", 97, 3),  # takes 3 of erin's 4 at (99+97)//2 = 98
]
FILLS = {  # each trader's own view: (side, price, qty)
    "bob": [("buy", 99, 3), ("buy", 100, 2)],
    "erin": [("buy", 98, 3)],
    "charlie": [("sell", 100, 2), ("sell", 98, 3)],
    "dave": [("sell", 99, 3)],
}
# Settlement pays free cash: bob 5000 - 497; erin 5000 - 294 (her last 1 @ 99 is cancelled first);
# charlie 2*100 + 3*98; dave 3*99.
PAYOUTS = {"bob": 4503, "erin": 4706, "charlie": 494, "dave": 297}


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
        operator = clients["alice"]
        balance = operator.balance  # any account's free balance (public chain data)
        for name in ("dave", "erin"):
            operator.transfer(addr[name], 100_000)
        deployed = operator.deploy(CONTRACT, init={"holdings": {addr[n]: u for n, u in HOLDINGS.items()}})
        cid = deployed.contract_id
        print(f"deployed dark pool {cid}; alice operates it")
        for name, amount in DEPOSITS.items():
            clients[name].call(cid, "deposit", value=amount)
        refused(
            lambda: clients["dave"].call(cid, "order", {"side": "sell", "price": 90, "qty": 7}),
            "not enough free units",
            "dave offers more units than he holds",
        )

        for i, (name, side, price, qty) in enumerate(ORDERS):
            out = clients[name].call(
                cid, "order", {"side": side, "price": price, "qty": qty, "ref": f"{marker}-{i}"}
            )
            print(f"{name} placed a sealed {side} order -> {out.output}")

        erin_open = clients["erin"].query(cid, "orders").output
        check(
            erin_open == [{"side": "buy", "price": 99, "left": 1, "ref": f"{marker}-3"}],
            "erin sees her own resting order",
        )
        for reader, owner in (("charlie", "bob"), ("bob", "charlie"), ("alice", "bob"), ("alice", "erin")):
            refused(
                partial(clients[reader].query, cid, "fills", {"trader": addr[owner]}),
                "dark",
                f"{reader} reads {owner}'s fills",
            )
        refused(
            lambda: operator.query(cid, "orders", {"trader": addr["erin"]}),
            "dark",
            "the operator reads erin's orders",
        )
        refused(lambda: clients["bob"].call(cid, "settle"), "only the operator", "a trader settles")
        check(operator.contract_events(cid, deployed.height) == [], "no public event while trading")
        clients["erin"].call(cid, "cancel", {"ref": f"{marker}-3"})
        check(clients["erin"].query(cid, "orders").output == [], "erin cancels her remaining order")

        seen = {
            n: [(f["side"], f["price"], f["qty"]) for f in clients[n].query(cid, "fills").output]
            for n in FILLS
        }
        check(seen == FILLS, f"each trader sees exactly their own fills: {seen}")
        check(
            all(f["ref"].startswith(marker) for n in FILLS for f in clients[n].query(cid, "fills").output),
            "fills carry the trader's own private refs",
        )

        pool = operator.contract_account(cid)
        before = {n: balance(addr[n]) for n in PAYOUTS}
        check(balance(pool) == sum(DEPOSITS.values()), f"the pool holds the deposits: {balance(pool)}")
        summary = operator.call(cid, "settle").output
        moved = {n: balance(addr[n]) - before[n] for n in PAYOUTS}
        check(moved == PAYOUTS, f"settlement paid each trader's net proceeds: {moved}")
        check(balance(pool) == 0, "the pool's account is empty after settlement")
        units = {n: clients[n].query(cid, "account").output["units"] for n in FILLS}
        check(
            units == {"bob": 5, "erin": 3, "charlie": 3, "dave": 3},
            f"units moved (charlie's 2 unfilled at 100 stay locked on the book): {units}",
        )
        events = [(e.name, e.data) for e in operator.contract_events(cid, deployed.height)]
        check(
            events == [("Settled", {"batch": 1, "fills": 3, "payouts": 4})] and summary == events[0][1],
            f"the only public event is the settlement, with counts only: {events}",
        )
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
