"""Game: battleship with hidden boards, played by alice and bob for a stake; charlie watches.

Both players place their fleets privately and commit to them; they take turns firing and the
contract answers miss, hit or sunk. The script checks each answer against the rules, that
nobody reads the other's board before the end, that the public events carry nothing but the
commitments and the moves' results, that the winner is paid the stakes, and that after the game
the loser can check the revealed board against the commitment published at placement.

Runs against the network named by UMBRA_NODE with the dev accounts of UMBRA_DEV_JSON.
UMBRA_EXAMPLE_MARKER, if set, goes into the private board salts (the privacy test looks for it).
Exits 0 iff every check passes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from umbra.client import Client, UmbraError, dev_keys

CONTRACT = Path(__file__).with_name("contract.py")
MARKER = os.environ.get("UMBRA_EXAMPLE_MARKER", "")
STAKE = 5_000
# Each player's fleet (a ship of 3 and one of 2 on a 5x5 grid, rows A-E, columns 1-5).
FLEETS = {
    "alice": [["A1", "A2", "A3"], ["C5", "D5"]],
    "bob": [["B2", "B3", "B4"], ["D1", "E1"]],
}
# The moves, alternating, alice first: she sinks bob's fleet on her sixth shot.
MOVES = {
    "alice": ["A5", "B2", "B3", "B4", "D1", "E1"],
    "bob": ["E5", "A1", "A2", "C1", "C5"],
}


def commitment(ships: list[list[str]], salt: str) -> str:
    """The commitment the contract publishes, computed here independently (see contract.py)."""
    text = ";".join(",".join(ship) for ship in sorted(sorted(ship) for ship in ships))
    return "0x" + hashlib.sha256(f"{salt}:{text}".encode()).hexdigest()


def rule(ships: list[list[str]], earlier: list[str], cell: str) -> str:
    """What a shot at `cell` must answer, given the target's fleet and the shooter's earlier shots."""
    ship = next((s for s in ships if cell in s), None)
    if ship is None:
        return "miss"
    return "sunk" if all(c in [*earlier, cell] for c in ship) else "hit"


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
        balance = alice.balance  # any account's free balance (public chain data)
        players = {"alice": alice, "bob": bob}
        names = {alice.address: "alice", bob.address: "bob"}
        start = int(alice.status()["height"])
        cid = alice.deploy(CONTRACT, init={"opponent": bob.address, "stake": STAKE}).contract_id
        pot = alice.contract_account(cid)
        print(f"deployed battleship {cid}: alice vs bob for {STAKE} each")

        salts = {name: f"{MARKER}{secrets.token_hex(16)}" for name in players}
        board = {"ships": FLEETS["alice"], "salt": salts["alice"]}
        refused(lambda: charlie.call(cid, "place", board), "only the two players", "charlie joins the game")
        refused(lambda: bob.call(cid, "fire", {"cell": "A1"}), "placed first", "bob fires before the boards")
        placed = alice.call(cid, "place", board, value=STAKE)
        check(
            placed.output["commitment"] == commitment(FLEETS["alice"], salts["alice"]),
            "alice places her board; its commitment is the one she computes herself",
        )
        bad = {"ships": [["B2", "B3", "B4"], ["B4", "C4"]], "salt": salts["bob"]}
        refused(lambda: bob.call(cid, "place", bad, value=STAKE), "overlap", "bob places overlapping ships")
        good = {"ships": FLEETS["bob"], "salt": salts["bob"]}
        refused(lambda: bob.call(cid, "place", good, value=STAKE - 1), "stake", "bob stakes too little")
        placed = bob.call(cid, "place", good, value=STAKE)
        check(placed.output["commitment"] == commitment(FLEETS["bob"], salts["bob"]), "bob places his board")
        check(balance(pot) == 2 * STAKE, "the contract's account holds both stakes")

        refused(
            lambda: bob.query(cid, "board", {"player": alice.address}), "hidden", "bob reads alice's board"
        )
        refused(
            lambda: charlie.query(cid, "board", {"player": bob.address}),
            "hidden",
            "charlie reads bob's board",
        )
        own = alice.query(cid, "board").output
        check(own["salt"] == salts["alice"], "alice reads her own board")
        refused(lambda: bob.call(cid, "fire", {"cell": "A1"}), "not your turn", "bob fires out of turn")

        fired: dict[str, list[str]] = {"alice": [], "bob": []}
        turns = max(len(moves) for moves in MOVES.values())
        order = [(name, i) for i in range(turns) for name in players if i < len(MOVES[name])]
        costs: list[int] = []  # alice's balance change over each of her shots
        for name, index in order:
            other = "bob" if name == "alice" else "alice"
            cell = MOVES[name][index]
            expected = rule(FLEETS[other], fired[name], cell)
            before = balance(alice.address)
            shot = players[name].call(cid, "fire", {"cell": cell})
            if name == "alice":
                costs.append(balance(alice.address) - before)
            fired[name].append(cell)
            check(
                shot.verified and shot.output["result"] == expected,
                f"{name} fires at {cell}: {shot.output['result']}",
            )
        check(shot.output["winner"] == alice.address, "alice sank bob's fleet and won")
        check(
            costs[-1] - costs[-2] == 2 * STAKE,
            f"alice was paid both stakes with her winning shot ({costs[-1] - costs[-2]:+d} against a plain shot)",
        )
        check(balance(pot) == 0, "the contract's account is empty")
        refused(lambda: bob.call(cid, "fire", {"cell": "A3"}), "game is over", "bob fires after the end")

        # After the game: bob checks alice's revealed board against the commitment published
        # at placement, and against the answers he got.
        public = [(e.name, e.data) for e in bob.contract_events(cid, start)]
        committed = {names[d["player"]]: d["commitment"] for n, d in public if n == "BoardCommitted"}
        shots = [d for n, d in public if n == "Shot"]
        check(
            {n for n, _ in public} == {"BoardCommitted", "Shot"}
            and all(set(d) == {"player", "cell", "result"} for d in shots)
            and len(shots) == len(order),
            "public events: two commitments, then each move's cell and result, nothing more",
        )
        revealed = bob.query(cid, "board", {"player": alice.address}).output
        check(
            commitment(revealed["ships"], revealed["salt"]) == committed["alice"],
            "bob checks alice's revealed board against her commitment from placement",
        )
        answers = [d for d in shots if d["player"] == bob.address]
        check(
            all(
                rule(revealed["ships"], fired["bob"][:i], d["cell"]) == d["result"]
                for i, d in enumerate(answers)
            ),
            "every answer bob got is consistent with that board",
        )
        status = charlie.query(cid, "status").output
        check(
            status["winner"] == alice.address and len(status["shots"]) == len(order), "charlie sees the moves"
        )
    print(f"{'all checks pass' if not failures else f'{len(failures)} check(s) failed'}")
    return 0 if not failures else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UmbraError as exc:
        print(f"FAIL {exc.code}: {exc.message}")
        sys.exit(1)
