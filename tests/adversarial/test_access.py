"""Access control across the running network: no endpoint changes anything without a signature
(so there is no admin endpoint to protect), council-only calls are refused for everyone else,
and a contract's secrets open only inside that contract.

The council's voting rules in one process are in tests/chain/test_council.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.adversarial.conftest import HTTP, Shared, chain_events, height, record, state_value, submit
from umbra import codec
from umbra.client import Client, UmbraError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

FIGURES: dict[str, Any] = {}

# Every way to change anything through HTTP, and why each needs no admin key: a tx proves its
# sender by signature; a blob is stored under its own hash (ciphertext that only a registered
# contract's enclave can open, and that nothing uses until its owner's signed tx registers it);
# reverify only recomputes a worker's attestation; a query is sealed and signed by its caller.
NODE_WRITES = {
    ("POST", "/tx"),
    ("POST", "/txs"),
    ("PUT", "/blobs/{digest}"),
    ("POST", "/explorer/api/workers/{ref}/reverify"),
}
WORKER_WRITES = {("POST", "/query")}


def _writes(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method in ops
        if method.upper() not in ("GET", "HEAD", "OPTIONS")
    }


def test_no_endpoint_changes_anything_without_a_signature(shared: Shared) -> None:
    node_spec = HTTP.get(f"{shared.url}/openapi.json", timeout=10).json()
    assert _writes(node_spec) == NODE_WRITES
    worker_spec = HTTP.get(f"{shared.worker_urls()[0]}/openapi.json", timeout=10).json()
    assert _writes(worker_spec) == WORKER_WRITES
    for base in (shared.url, shared.worker_urls()[0]):
        for method, path in (("POST", "/admin"), ("POST", "/shutdown"), ("DELETE", "/blobs/" + "00" * 32)):
            reply = HTTP.request(method, f"{base}{path}", timeout=10)
            assert reply.status_code in (404, 405) and reply.json()["error"]["code"], (path, reply.text)
    FIGURES["state-changing endpoints"] = sorted(f"{m} {p}" for m, p in NODE_WRITES | WORKER_WRITES)


def test_council_only_calls_are_refused_for_everyone_else(shared: Shared) -> None:
    worker = codec.from_hex(HTTP.get(f"{shared.worker_urls()[0]}/info", timeout=5).json()["id"])
    # Sent directly, a privileged call never enters a block, whoever signs it (council members too).
    for sender in ("other", "alice"):
        for module, method, args in (
            ("registry", "revoke_worker", {"worker": worker}),
            ("system", "set_param", {"name": "tx_fee", "value": 0}),
            ("council", "set_members", {"members": [shared.net.key(sender).public_key], "threshold": 1}),
            ("keys", "rotate", {}),
        ):
            refused = submit(shared.net, sender, module, method, **args)
            assert refused["http_status"] == 400 and refused["error"]["code"] == "bad_origin", refused
    FIGURES["privileged call sent directly"] = "400 bad_origin"
    # Through the council, only members may propose or vote.
    proposed = submit(
        shared.net,
        "other",
        "council",
        "propose",
        module="registry",
        method="revoke_worker",
        args={"worker": worker},
    )
    assert (proposed["ok"], proposed["error"]) == (False, "council.not_member"), proposed
    since = height(shared.url)
    opened = submit(
        shared.net,
        "alice",
        "council",
        "propose",
        module="system",
        method="set_param",
        args={"name": "reward_budget", "value": 0},
    )
    assert opened["ok"] is True, opened
    (event,) = [e for e in chain_events(shared.url, "Proposed", start=since)]
    pid = event["data"]["proposal"]
    vote = submit(shared.net, "other", "council", "vote", proposal=pid, aye=True)
    assert (vote["ok"], vote["error"]) == (False, "council.not_member"), vote
    assert state_value(shared.url, "council", "proposal", pid.to_bytes(8, "big")) is not None  # still open
    assert state_value(shared.url, "registry", "worker", worker)["status"] == "active"
    # A second member's vote executes it (the positive control: the council itself can act).
    approved = submit(shared.net, "bob", "council", "vote", proposal=pid, aye=True)
    assert approved["ok"] is True
    executed = [e for e in chain_events(shared.url, "Executed", start=since) if e["data"]["proposal"] == pid]
    assert executed and executed[0]["data"]["ok"] is True
    FIGURES["council call by a non-member"] = "council.not_member"


READER = """
from umbra.contract import Contract, command, query


class Reader(Contract):
    @command
    def reveal(self, ctx):
        return ctx.secret("api-key")

    @query
    def public(self, ctx):
        return "nothing secret here"
"""


def test_a_contracts_secret_opens_only_inside_that_contract(shared: Shared) -> None:
    plaintext = b"the owner's API key"
    with Client(shared.url, shared.net.key("owner")) as owner:
        a = owner.deploy(READER).contract_id
        b = owner.deploy(READER).contract_id
        owner.upload_secret(a, "api-key", plaintext)
        assert owner.call(a, "reveal").output == plaintext  # inside contract a, it opens
        # The same sealed bytes registered for another contract (same owner, same name) do not open.
        sealed = state_value(shared.url, "contracts", "secret", codec.from_hex(a) + b"api-key")["sealed"]
        assert plaintext not in sealed
        copied = submit(
            shared.net,
            "owner",
            "contracts",
            "upload_secret",
            contract=codec.from_hex(b),
            name="api-key",
            sealed=sealed,
        )
        assert copied["ok"] is True
        with pytest.raises(UmbraError) as missing:
            owner.call(b, "reveal")
        assert "no secret named 'api-key'" in missing.value.message
    # Nobody but the owner can replace it, and another caller gets only what the code returns.
    stranger = submit(
        shared.net,
        "other",
        "contracts",
        "upload_secret",
        contract=codec.from_hex(a),
        name="api-key",
        sealed=b"\x01",
    )
    assert (stranger["ok"], stranger["error"]) == (False, "contracts.not_owner")
    with Client(shared.url, shared.net.key("other")) as other:
        assert other.query(a, "public").output == "nothing secret here"
        assert other.call(a, "reveal").output == plaintext  # ...exactly what the public code returns
    FIGURES["secret copied to another contract"] = "does not open (the seal binds the contract id)"
    FIGURES["secret replaced by a non-owner"] = "contracts.not_owner"
    record("access", FIGURES)
