"""Vault: private entries, read access granted and revoked per account; every result verified.

Runs against the network named by UMBRA_NODE with the dev accounts of UMBRA_DEV_JSON.
Exits 0 iff every check passes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from umbra.client import Client, UmbraError, dev_keys

CONTRACT = Path(__file__).with_name("contract.py")


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
        cid = alice.deploy(CONTRACT).contract_id
        print(f"deployed vault {cid}")
        assert bob.address is not None

        alice.call(cid, "put", {"name": "wifi", "value": "correct horse battery staple"})
        check(
            alice.query(cid, "get", {"name": "wifi"}).output == "correct horse battery staple",
            "alice reads her entry",
        )
        refused(lambda: bob.query(cid, "get", {"name": "wifi"}), "not allowed", "bob reads alice's entry")
        refused(
            lambda: charlie.call(cid, "put", {"name": "wifi", "value": "x"}),
            "belongs to another",
            "charlie overwrites it",
        )
        refused(
            lambda: bob.call(cid, "grant", {"name": "wifi", "reader": bob.address}),
            "only the owner",
            "bob grants himself",
        )

        granted = alice.call(cid, "grant", {"name": "wifi", "reader": bob.address})
        check(granted.output == [bob.address], "alice grants bob")
        check(
            bob.query(cid, "get", {"name": "wifi"}).output == "correct horse battery staple",
            "bob reads it now",
        )
        check(bob.query(cid, "readable").output == ["wifi"], "bob's readable list")
        check(charlie.query(cid, "readable").output == [], "charlie still reads nothing")

        alice.call(cid, "revoke", {"name": "wifi", "reader": bob.address})
        refused(lambda: bob.query(cid, "get", {"name": "wifi"}), "not allowed", "bob reads after revocation")

        bob.call(cid, "put", {"name": "diary", "value": {"day": 1, "text": "private"}})
        check(
            bob.query(cid, "get", {"name": "diary"}).output == {"day": 1, "text": "private"},
            "bob keeps his own entry",
        )
        refused(
            lambda: alice.query(cid, "get", {"name": "diary"}),
            "not allowed",
            "alice (the deployer) reads bob's entry",
        )
    print(f"{'all checks pass' if not failures else f'{len(failures)} check(s) failed'}")
    return 0 if not failures else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UmbraError as exc:
        print(f"FAIL {exc.code}: {exc.message}")
        sys.exit(1)
