"""Randomness: a lottery whose draw comes from `ctx.random`, agreed by three replicas, verified.

bob and charlie buy tickets (with private notes); alice, the host, draws once the round has
closed, on three workers of three TEE types. The script checks that early draws, late tickets and
a second draw of the same round are refused, that every replica committed to the same draw, that
the winner follows from the published draw bytes, and that the pot moved to the winner exactly.

Runs against the network named by UMBRA_NODE with the dev accounts of UMBRA_DEV_JSON.
UMBRA_EXAMPLE_MARKER, if set, goes into the private ticket notes (the privacy test looks for it).
Exits 0 iff every check passes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from umbra.client import Client, UmbraError, dev_keys

CONTRACT = Path(__file__).with_name("contract.py")
MARKER = os.environ.get("UMBRA_EXAMPLE_MARKER", "")
PRICE = 1_000
ROUND_BLOCKS = 20


class Chain:
    """Public chain state the client has no method for, read from the node's API (what anyone can see)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)

    def state(self, module: str, item: str, key: str) -> Any:
        reply = self.http.get(f"/state/{module}/{item}", params={"key": key})
        reply.raise_for_status()
        return reply.json()["value"]


def main() -> int:
    keys = dev_keys()
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

    with (
        Client(key=keys["alice"]) as alice,
        Client(key=keys["bob"]) as bob,
        Client(key=keys["charlie"]) as charlie,
    ):
        chain = Chain(alice.url)
        balance = alice.balance  # any account's free balance (public chain data)
        start = int(alice.status()["height"])
        cid = alice.deploy(CONTRACT, init={"ticket_price": PRICE, "round_blocks": ROUND_BLOCKS}).contract_id
        pot_account = alice.contract_account(cid)
        print(f"deployed lottery {cid}; ticket price {PRICE}, rounds of {ROUND_BLOCKS} blocks")

        refused(
            lambda: alice.call(cid, "draw", {"round": 1}), "takes tickets until", "a draw before the close"
        )
        refused(
            lambda: bob.call(cid, "join", {"note": "x"}, value=PRICE + 1),
            "multiple of the ticket price",
            "a join that pays a fraction of a ticket",
        )
        notes = {"bob": f"for my niece {MARKER}".strip(), "charlie": f"lucky socks {MARKER}".strip()}
        bought = bob.call(cid, "join", {"note": notes["bob"]}, value=2 * PRICE)
        check(bought.output == {"round": 1, "tickets": 2} and bought.verified, "bob buys 2 tickets")
        bought = charlie.call(cid, "join", {"note": notes["charlie"]}, value=PRICE)
        check(bought.output == {"round": 1, "tickets": 1} and bought.verified, "charlie buys 1 ticket")
        check(balance(pot_account) == 3 * PRICE, "the pot (the contract's account) holds 3 tickets")
        mine = charlie.query(cid, "my_tickets").output
        check(mine == {"round": 1, "tickets": 1, "notes": [notes["charlie"]]}, "charlie reads only his note")
        status = bob.query(cid, "status").output
        check(status["tickets"] == 3, f"anyone sees the round's ticket count: {status}")

        closes_at = status["closes_at"]
        print(f"waiting for round 1 to close at height {closes_at} ...")
        while int(alice.status()["height"]) < closes_at:
            time.sleep(0.5)
        refused(
            lambda: charlie.call(cid, "join", {"note": "too late"}, value=PRICE),
            "closed",
            "a ticket after the close",
        )
        check(balance(pot_account) == 3 * PRICE, "the refused ticket's value stayed out of the pot")

        players = {bob.address: "bob", charlie.address: "charlie"}
        before = {address: balance(address) for address in players}
        started = time.monotonic()
        drawn = alice.call(cid, "draw", {"round": 1}, replicas=3, distinct="tee_types")
        out = drawn.output
        print(
            f"draw: {out['draw']} -> ticket {out['index']} of {out['tickets']} ({time.monotonic() - started:.1f} s)"
        )
        check(
            drawn.verified and len(set(drawn.workers)) >= 2,
            f"verified, from {len(drawn.workers)} agreeing workers",
        )
        tickets = [bob.address, bob.address, charlie.address]  # in the order they were bought
        index = int(out["draw"], 16) % len(tickets)
        check(
            out["index"] == index and out["winner"] == tickets[index],
            f"the winner follows from the draw bytes: {players.get(out['winner'])}",
        )
        after = {address: balance(address) for address in players}
        check(
            all(after[a] - before[a] == (3 * PRICE if a == out["winner"] else 0) for a in players),
            "the pot moved to the winner exactly: "
            + ", ".join(f"{name} {after[a] - before[a]:+d}" for a, name in players.items()),
        )
        check(balance(pot_account) == 0, "the pot is empty")

        # Every replica, including the one that reported after the majority settled, committed
        # to the same output, state and transfers: the draw is one value, not a worker's choice.
        deadline = time.monotonic() + 60
        job = chain.state("compute", "job", out["job"])
        while len(job["results"]) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
            job = chain.state("compute", "job", out["job"])
        bodies = [r["body"] for r in job["results"].values()]
        agreed = {(b["output_commitment"], b["new_state_hash"], repr(b["transfers"])) for b in bodies}
        platforms = {chain.state("registry", "worker", b["worker"])["platform"] for b in bodies}
        check(
            len(bodies) == 3 and len(agreed) == 1 and len(platforms) == 3,
            f"all 3 replicas ({', '.join(sorted(platforms))}) committed to the same draw",
        )

        refused(
            lambda: bob.call(cid, "draw", {"round": 1}),
            "cannot be drawn",
            "a second draw of round 1 (a re-roll)",
        )
        events = [(e.name, e.data) for e in alice.contract_events(cid, start)]
        check(events == [("Drawn", out)], "the public event is the draw, and nothing else")
        check(alice.query(cid, "history").output == [out], "the history holds one draw")
        check(alice.query(cid, "my_tickets").output["notes"] == [], "round 2 starts empty")
    print(f"{'all checks pass' if not failures else f'{len(failures)} check(s) failed'}")
    return 0 if not failures else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UmbraError as exc:
        print(f"FAIL {exc.code}: {exc.message}")
        sys.exit(1)
