"""A client in its own process (so the test process never holds what it sends): deploys a vault
contract, stores marker notes through a command, reads them with a query, and checks the
answers. It prints nothing secret: only `ok` or what failed, without the markers."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

VAULT = """
from umbra.contract import Contract, command, query


class Vault(Contract):
    def init(self, ctx, note):
        self.state["notes"] = [note]

    @command
    def put(self, ctx, note):
        self.state["notes"].append(note)
        return note + "-echo"

    @query
    def get(self, ctx):
        return self.state["notes"]
"""


def umbra(*args: str) -> dict:
    done = subprocess.run(
        [os.environ["UMBRA_BIN"], *args, "--json"], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        sys.exit(f"umbra {args[0]} failed with status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    prefix = sys.argv[1]
    path = sys.argv[2]
    markers = [prefix + secrets.token_hex(8) for _ in range(2)]
    with open(path, "w") as file:
        file.write(VAULT)
    contract = umbra("deploy", path, "--init", json.dumps({"note": markers[0]}))["contract_id"]
    called = umbra("call", contract, "put", "--args", json.dumps({"note": markers[1]}))
    if called["output"] != markers[1] + "-echo" or not called["verified"]:
        sys.exit("the call's output is not the echo of its input")
    answer = umbra("query", contract, "get")
    if answer["output"] != markers or not answer["verified"]:
        sys.exit("the query does not return the stored notes")
    print("ok", contract)


if __name__ == "__main__":
    main()
