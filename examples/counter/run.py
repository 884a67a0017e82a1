"""Counter: deploy, add from two accounts (once replicated), read back; every result verified.

Runs against the network named by UMBRA_NODE with the dev accounts of UMBRA_DEV_JSON.
Exits 0 iff every check passes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from umbra.client import Client, UmbraError, dev_keys

CONTRACT = Path(__file__).with_name("contract.py")


def main() -> int:
    keys = dev_keys()
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    with Client(key=keys["alice"]) as alice, Client(key=keys["bob"]) as bob:
        counter = alice.deploy(CONTRACT, init={"start": 5})
        print(f"deployed counter {counter.contract_id}")
        cid = counter.contract_id

        first = alice.call(cid, "add", {"by": 2})
        check(first.output == 7 and first.verified, f"alice adds 2 -> {first.output}")
        second = bob.call(cid, "add")
        check(second.output == 8 and second.verified, f"bob adds 1 -> {second.output}")
        both = bob.call(cid, "add", {"by": 10}, replicas=2)
        check(
            both.output == 18 and len(set(both.workers)) == 2, f"replicated add on 2 workers -> {both.output}"
        )

        read = bob.query(cid, "get")
        check(
            read.output == {"n": 18, "asked_by": bob.address} and read.verified,
            f"bob reads {read.output} from worker {read.worker[:10]}.. at height {read.height}",
        )
        check(alice.query(cid, "get").output["asked_by"] == alice.address, "ctx.caller is the query's signer")
    print(f"{'all checks pass' if not failures else f'{len(failures)} check(s) failed'}")
    return 0 if not failures else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UmbraError as exc:
        print(f"FAIL {exc.code}: {exc.message}")
        sys.exit(1)
