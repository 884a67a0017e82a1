"""`make run`: start `umbra dev` in the foreground and run a demo against it once it is ready.

Runs until Ctrl-C (or SIGTERM), which stops the whole network.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from umbra import crypto
from umbra.client import Client, UmbraError
from umbra.client._node import NodeClient

DEMO_CONTRACT = """
from umbra.contract import Contract, command, query


class Diary(Contract):
    \"\"\"Each caller keeps private entries; only the count is visible to the owner.\"\"\"

    def init(self, ctx):
        self.state["owner"] = ctx.caller
        self.state["entries"] = {}

    @command
    def write(self, ctx, text):
        mine = self.state["entries"].setdefault(ctx.caller, [])
        mine.append(text)
        return len(mine)

    @query
    def read(self, ctx):
        return self.state["entries"].get(ctx.caller, [])
"""


def demo(dev_json: Path) -> None:
    doc = json.loads(dev_json.read_text())
    url = doc["nodes"][0]["url"]
    alice = crypto.load_signing_key(doc["keys"]["alice"])
    bob = crypto.load_signing_key(doc["keys"]["bob"])
    with NodeClient(url) as client:
        receipt = client.call(alice, "balances", "transfer", to=bob.public_key, amount=1000)
        print(f"demo: alice -> bob 1000 in block {receipt['block']}")
    with Client(url, doc["keys"]["alice"]) as alice_client, Client(url, doc["keys"]["bob"]) as bob_client:
        deployment = alice_client.deploy(DEMO_CONTRACT)
        print(f"demo: deployed {deployment.contract_id} (code hash {deployment.code_hash[:18]}...)")
        result = bob_client.call(deployment.contract_id, "write", {"text": "bob's private entry"})
        print(
            f"demo: bob's confidential call -> {result.output} on {result.workers[0][:18]}..., verified={result.verified}"
        )
        mine = bob_client.query(deployment.contract_id, "read")
        theirs = alice_client.query(deployment.contract_id, "read")
        print(f"demo: bob reads {mine.output}; alice reads {theirs.output} (verified={mine.verified})")
    print(f"demo: {len(doc['workers'])} attested workers; explorer at {url}/explorer")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="./.umbra-dev")
    parser.add_argument("--port", default="9944")
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    dev_json = data_dir / "dev.json"
    dev_json.unlink(missing_ok=True)
    umbra = Path(sys.executable).with_name("umbra")
    network = subprocess.Popen([str(umbra), "dev", "--data-dir", str(data_dir), "--port", args.port])

    def stop(signum: int, _frame: object) -> None:
        network.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    deadline = time.monotonic() + 400
    while not dev_json.exists():
        if network.poll() is not None:
            return network.returncode or 1
        if time.monotonic() > deadline:
            print("umbra dev did not become ready in 400 s", file=sys.stderr)
            network.terminate()
            return 1
        time.sleep(0.5)
    try:
        demo(dev_json)
    except UmbraError as exc:
        print(f"demo failed: {exc.code}: {exc.message}", file=sys.stderr)
    print(f"network running (data dir {os.path.abspath(data_dir)}); Ctrl-C stops it", flush=True)
    return network.wait()


if __name__ == "__main__":
    sys.exit(main())
