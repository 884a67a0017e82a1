"""A price oracle for EVM contracts: fetch a value over HTTP inside the enclave, sign it with the
contract's own secp256k1 key, and hand the signed report to whoever posts it to an EVM chain.

The key is derived from the master key inside enclave cores and never leaves them; the chain
publishes its EVM address, so an EVM contract can check reports with `ecrecover`. The feed's
API key is an owner secret: it is opened only inside the enclave and sent only to the feed.
`ctx.http` runs only in unreplicated jobs (replicas could see different answers) and reaches
only the hosts on the deploy manifest's `http_allowlist`.
"""

import json

from umbra.contract import Contract, command


class PriceOracle(Contract):
    def init(self, ctx, url, field="price"):
        self.state["url"] = url
        self.state["field"] = field
        self.state["round"] = 0

    @command
    def report(self, ctx):
        """Fetch the value and sign `abi.encode(uint256 value, uint256 round)` for the EVM."""
        api_key = ctx.secret("api_key").decode()
        reply = ctx.http("GET", self.state["url"], headers={"Authorization": f"Bearer {api_key}"})
        if reply["status"] != 200:
            raise RuntimeError(f"the feed answered HTTP {reply['status']}")
        value = json.loads(reply["body"])[self.state["field"]]
        if not isinstance(value, int) or not 0 <= value < 2**256:
            raise ValueError("the feed's value is not a uint256")
        self.state["round"] += 1
        message = value.to_bytes(32, "big") + self.state["round"].to_bytes(32, "big")
        signature = ctx.sign("secp256k1", message)  # r || s over keccak-256(message), low s
        return {"value": value, "round": self.state["round"], "signature": "0x" + signature.hex()}
