"""Data union: bob, charlie and dave contribute personal records under consent terms; an analyst
(erin) pays for aggregate statistics, and each payment is split among the members on chain.

Checks the aggregates against the same statistics computed here, that consent limits which
records an analysis uses, that analyses matching fewer than k records or touching an identifier
field are refused (and cost nothing), that nobody reads another member's records, and that each
payment reaches the members pro rata to their consenting records, to the unit.

Runs against the network named by UMBRA_NODE with the dev accounts of UMBRA_DEV_JSON.
Exits 0 iff every check passes. UMBRA_EXAMPLE_MARKER, if set, goes into each record's name.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any

from umbra import crypto
from umbra.client import Client, UmbraError, dev_keys

CONTRACT = Path(__file__).with_name("contract.py")
K, PRICE = 5, 1000
FIELDS = ("age", "city", "income", "smoker")
ROWS = {  # (age, city, income, smoker) per member
    "bob": [
        (34, "Lyon", 52000, True),
        (45, "Paris", 61000, False),
        (29, "Lyon", 38000, True),
        (52, "Nice", 70000, True),
        (61, "Paris", 45000, False),
    ],
    "charlie": [(38, "Lyon", 48000, False), (57, "Paris", 66000, True), (24, "Nice", 31000, False)],
    "dave": [
        (41, "Lyon", 58000, True),
        (33, "Paris", 43123, True),
        (66, "Brest", 39000, False),
        (48, "Nice", 72000, False),
    ],
}
CONSENT = {"bob": ["research", "marketing"], "charlie": ["research"], "dave": ["research", "marketing"]}


def pro_rata(amount: int, weights: dict[str, int]) -> dict[str, int]:
    """Reference split: exact shares rounded down, leftover units to the largest remainders."""
    total = sum(weights.values())
    exact = {m: Fraction(amount * w, total) for m, w in weights.items()}
    shares = {m: int(x) for m, x in exact.items()}
    for m in sorted(exact, key=lambda m: -(exact[m] - shares[m]))[: amount - sum(shares.values())]:
        shares[m] += 1
    return shares


def main() -> int:
    keys = dev_keys()
    keys["dave"], keys["erin"] = crypto.SigningKey.generate(), crypto.SigningKey.generate()
    marker = os.environ.get("UMBRA_EXAMPLE_MARKER", "Jane Doe")
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

    records: dict[str, list[dict[str, Any]]] = {
        name: [
            {"name": f"{marker} {name}-{i}", **dict(zip(FIELDS, row, strict=True))}
            for i, row in enumerate(rows)
        ]
        for name, rows in ROWS.items()
    }
    clients = {name: Client(key=key) for name, key in keys.items()}
    try:
        addr = {name: str(c.address) for name, c in clients.items()}
        alice = clients["alice"]
        balance = alice.balance  # any account's free balance (public chain data)
        for name in ("dave", "erin"):
            alice.transfer(addr[name], 100_000)
        members, analyst = ("bob", "charlie", "dave"), clients["erin"]
        deployed = alice.deploy(CONTRACT, init={"k": K, "price": PRICE, "identifiers": ["name"]})
        cid = deployed.contract_id
        pool = alice.contract_account(cid)
        print(f"deployed data union {cid}: k={K}, {PRICE} per analysis, 'name' is an identifier")
        for name in members:
            out = clients[name].call(cid, "contribute", {"records": records[name], "purposes": CONSENT[name]})
            print(f"{name} contributed {out.output['records']} records for {', '.join(CONSENT[name])}")

        check(
            clients["bob"].query(cid, "records").output
            == [{"data": r, "purposes": sorted(CONSENT["bob"])} for r in records["bob"]],
            "bob reads his own records back",
        )
        refused(
            lambda: clients["bob"].query(cid, "records", {"member": addr["charlie"]}),
            "private",
            "bob reads charlie's records",
        )
        refused(
            lambda: analyst.query(cid, "records", {"member": addr["dave"]}),
            "private",
            "the analyst reads dave's records",
        )

        def analysis(
            purpose: str, stat: str, field: str | None, where: dict[str, Any]
        ) -> tuple[Any, dict[str, int]]:
            """Run a paid analysis; return its output and how much each member's balance moved."""
            before = {m: balance(addr[m]) for m in members}
            args = {"purpose": purpose, "stat": stat, "field": field, "where": where}
            output = analyst.call(cid, "analyze", args, value=PRICE).output
            return output, {m: balance(addr[m]) - before[m] for m in members}

        # research: every member consented; mean income of the 30-60 year olds.
        rows = [r for m in members for r in records[m] if 30 <= r["age"] <= 60]
        mean = round(Fraction(100 * sum(r["income"] for r in rows), len(rows))) / 100
        out, moved = analysis("research", "mean", "income", {"age": [30, 60]})
        check(
            out == {"stat": "mean", "field": "income", "records": len(rows), "value": mean},
            f"research: mean income at 30-60 is {out['value']} over {out['records']} records (local: {mean})",
        )
        expected = pro_rata(PRICE, {m: len(records[m]) for m in members})
        check(moved == expected, f"research: {PRICE} split over 5/3/4 consenting records: {moved}")

        # marketing: charlie did not consent, so his records are not used and he is not paid.
        smokers = sum(r["smoker"] for m in ("bob", "dave") for r in records[m])
        out, moved = analysis("marketing", "count", None, {"smoker": True})
        check(
            out["records"] == out["value"] == smokers,
            f"marketing: {out['value']} smokers among consenting records",
        )
        expected = pro_rata(PRICE, {"bob": 5, "dave": 4}) | {"charlie": 0}
        check(moved == expected, f"marketing: paid only to consenting members: {moved}")

        held, erin = balance(pool), balance(addr["erin"])
        before = {m: balance(addr[m]) for m in members}
        for args, value, reason, what in (
            ({"where": {"city": "Brest"}}, PRICE, "fewer than k=5", "a filter matching 1 record"),
            (
                {"purpose": "marketing", "where": {"city": "Lyon"}},
                PRICE,
                "fewer than k=5",
                "a filter matching 3 consenting records",
            ),
            ({"where": {"name": f"{marker} bob-0"}}, PRICE, "identifier", "a filter on names"),
            ({}, 0, "costs exactly", "an unpaid analysis"),
        ):
            args = {"purpose": "research", "stat": "count", **args}
            refused(partial(analyst.call, cid, "analyze", args, value=value), reason, what)
        fees = erin - balance(addr["erin"])
        check(
            balance(pool) == held == 0 and {m: balance(addr[m]) for m in members} == before and fees < PRICE,
            f"refused analyses pay nobody; the analyst gets its value back (it paid {fees} in fees)",
        )

        earned = {m: clients[m].query(cid, "earnings").output for m in members}
        check(
            earned == {"bob": 417 + 556, "charlie": 250, "dave": 333 + 444},
            f"each member's own earnings: {earned}",
        )
        check(
            clients["charlie"].call(cid, "revoke").output == {"removed": 3}
            and clients["charlie"].query(cid, "records").output == [],
            "charlie revokes consent: his records are deleted",
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
