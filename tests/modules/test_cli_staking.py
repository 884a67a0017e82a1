"""`umbra stake | delegate | unbond | withdraw | pool | rewards` and the staked balance, against
an in-process node over real HTTP with a registered sim worker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.chain.helpers import SEQUENCER
from tests.modules.net import COUNCIL, FUNDED, OP1, OP2, USER, USER2, make_genesis, make_worker
from tests.node.conftest import serve_app
from umbra import RUNTIME_VERSION, codec, crypto
from umbra.chain.modules.registry import binding_fields
from umbra.chain.types import Call, GenesisConfig
from umbra.client._node import NodeClient
from umbra.client.cli import app
from umbra.node.api import create_app
from umbra.node.service import Node, NodeConfig
from umbra.tee.policy import report_data_binding

RUNNER = CliRunner()
PARAMS = {
    "block_ms": 20,
    "idle_ms": 100,
    "reward_epoch_blocks": 10,
    "reward_budget": 0,
    "unbonding_blocks": 2,
}


@dataclass
class Live:
    url: str
    keys: dict[str, Path]
    node: Node

    def cli(self, *args: str, key: str | None = None, ok: bool = True) -> dict[str, Any]:
        argv = [*args, "--json", "--node", self.url]
        if key is not None:
            argv += ["--key", str(self.keys[key])]
        result = RUNNER.invoke(app, argv, env={"UMBRA_KEY": "", "UMBRA_NODE": ""})
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"want one JSON line, got {result.stdout!r} ({result.exception!r})"
        out: dict[str, Any] = json.loads(lines[0])
        assert (result.exit_code == 0) == ok, (result.exit_code, out)
        return out

    def height(self) -> int:
        with NodeClient(self.url) as client:
            return int(client.status()["height"])

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("staking-cli")
    keys = {}
    for name, key in (("op1", OP1), ("op2", OP2), ("user", USER), ("user2", USER2), ("council", COUNCIL)):
        keys[name] = root / f"{name}.key"
        crypto.save_signing_key(keys[name], key)
    base = make_genesis(params=PARAMS, registry={"missed_heartbeats": 10**6})
    genesis = GenesisConfig(
        chain_id=base.chain_id,
        time_ms=int(time.time() * 1000),
        sequencer=SEQUENCER.public_key,
        runtime_version=RUNTIME_VERSION,
        params=base.params,
        modules=base.modules,
    )
    assert {k.public_key for k in FUNDED} <= set(genesis.modules["balances"]["allocations"])
    node = Node(NodeConfig(data_dir=root / "node", sequencer_key=SEQUENCER), genesis)
    node.start()
    try:
        with serve_app(create_app(node)) as url:
            yield Live(url, keys, node)
    finally:
        node.stop()
        node.store.close()


def register(live: Live, name: str, operator: crypto.SigningKey) -> bytes:
    worker = make_worker(name, operator)
    genesis = live.node.genesis
    report_data = report_data_binding(
        **binding_fields(
            chain_id=genesis.chain_id,
            genesis_hash=genesis.hash,
            identity_pk=worker.id,
            ecdh_pk=worker.ecdh.public_key,
            tee_type="sim",
        )
    )
    binding = {"operator": operator.public_key, "endpoint": worker.endpoint, "chain_id": genesis.chain_id}
    with NodeClient(live.url) as client:
        client.call(
            operator,
            "registry",
            "register_worker",
            evidence=worker.platform.evidence(report_data, at=datetime.now(UTC)),
            tee_type="sim",
            endorsements={},
            identity_pk=worker.id,
            ecdh_pk=worker.ecdh.public_key,
            endpoint=worker.endpoint,
            binding_sig=worker.identity.sign("umbra/worker-binding/v1", binding),
            role="worker",
        )
    return worker.id


def council(live: Live, module: str, method: str, args: dict[str, Any]) -> None:
    """A council motion (one member, threshold 1): it executes in the block that includes it."""
    call = Call("council", "propose", {"module": module, "method": method, "args": args})
    with NodeClient(live.url) as client:
        receipt = client.submit(client.build_tx(COUNCIL, call))
        assert receipt["ok"], receipt


def test_staking_commands_end_to_end(live: Live) -> None:
    worker = codec.to_hex(register(live, "cli-w1", OP1))
    user = codec.to_hex(USER.public_key)
    # a pool needs its operator
    err = live.cli("stake", worker, "10", key="user", ok=False)
    assert err["error"]["code"] == "staking.not_operator"
    assert live.cli("pool", worker, ok=False)["error"]["code"] == "no_pool"
    staked = live.cli("stake", worker, "1000", "--commission", "100000", key="op1")
    assert (
        staked["pool_created"] is True and staked["shares"] == 1_000 and staked["commission_ppm"] == 100_000
    )
    assert staked["your_shares"] == 1_000
    again = live.cli("stake", worker, "500", key="op1")
    assert again["pool_created"] is False and again["your_shares"] == 1_500
    delegated = live.cli("delegate", worker, "500", key="user")
    assert (delegated["shares"], delegated["your_shares"], delegated["your_value"]) == (500, 500, 500)
    shown = live.cli("pool", worker, key="user")
    assert shown["owner"] == codec.to_hex(OP1.public_key)
    assert (shown["stake"], shown["shares"], shown["your_shares"], shown["queue"]) == (2_000, 2_000, 500, [])
    assert shown["staked"] is True and shown["reputation"] == 500 and shown["stopped"] is False
    assert live.cli("pool", worker)["your_shares"] is None
    assert live.cli("balance", user)["staked"] == 500
    # fees fill the treasury, the council sets a budget; an epoch later the pool is rewarded, the owner takes the commission
    with NodeClient(live.url) as client:
        stx = client.build_tx(
            USER2, Call("balances", "transfer", {"to": USER.public_key, "amount": 1}), fee=5_000
        )
        assert client.submit(stx)["ok"]
    council(live, "system", "set_param", {"name": "reward_budget", "value": 1_000})
    live.wait_for(lambda: live.cli("rewards", worker)["events"] != [], "a reward epoch")
    rewards = live.cli("rewards", worker)
    (first,) = rewards["events"][:1]
    assert first["event"] == "Rewarded" and first["worker"] == worker and first["reward"] > 0
    assert first["commission"] == first["reward"] // 10
    mine = live.cli("rewards", key="user")  # the account's pools
    assert mine["address"] == user and mine["workers"] == [worker] and mine["rewarded"] >= first["reward"]
    assert live.cli("balance", user)["staked"] > 500
    # unbond, then the chain pays it once the delay has passed
    err = live.cli("unbond", worker, "501", key="user", ok=False)
    assert err["error"]["code"] == "staking.bad_shares"
    unbonded = live.cli("unbond", worker, "200", key="user")
    assert unbonded["unlock_height"] == unbonded["block"] + PARAMS["unbonding_blocks"]
    assert unbonded["your_shares"] == 300
    live.wait_for(lambda: live.height() > unbonded["unlock_height"], "the unbonding delay")
    withdrawn = live.cli("withdraw", worker, key="user")
    assert withdrawn["pending"] == []
    assert live.cli("pool", worker, key="user")["queue"] == []
    # a council slash shows up in the history, pro rata
    council(
        live,
        "staking",
        "slash_worker",
        {"worker": codec.from_hex(worker), "amount": 100, "reason": "cli test"},
    )
    history = live.cli("rewards", user)
    assert [(e["event"], e["amount"], e["reason"]) for e in history["events"] if e["event"] == "Slashed"] == [
        ("Slashed", 100, "cli test")
    ]
    assert history["slashed"] == 100


def test_staking_command_errors(live: Live) -> None:
    unknown = codec.to_hex(bytes(32))
    assert live.cli("delegate", unknown, "5", key="user", ok=False)["error"]["code"] == "no_pool"
    assert live.cli("withdraw", "0x12", key="user", ok=False)["error"]["code"] == "bad_address"
    assert live.cli("delegate", unknown, "0", key="user", ok=False)["error"]["code"] == "bad_amount"
    assert live.cli("unbond", unknown, "5", ok=False)["error"]["code"] == "no_key"
    assert live.cli("rewards", unknown)["events"] == []
