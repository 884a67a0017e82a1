"""The SDK's chain reads and writes against a real node over HTTP (tests/client/harness.py):
balances, transfers, a contract's account and its public events, each with its refusals, and
the async twin.

The harness's spec cores run the `notes` contract; here every successful `add` also emits a
public `Added` event with its output (as a contract's `ctx.emit` would), so that the events
read back can be checked against the calls that made them. Paging through /history/events,
which takes more than 10,000 blocks to reach on a live node, is driven through the flow itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.client.harness import Network, network
from tests.client.spec_enclave import SpecContract
from umbra import codec, crypto
from umbra.client import AsyncClient, Client, ContractEvent, UmbraError
from umbra.client import _flows as flows
from umbra.client._transport import Flow, Http

pytestmark = pytest.mark.timeout(180)

CODE = b"# notes (run by the harness's spec cores)\n"
UNKNOWN_CONTRACT = "0x" + "ab" * 32


def _emitting_result(original: Any) -> Any:
    """`SpecContract.result`, plus an `Added` event for each note added (re-signed as a worker signs)."""

    def result(self: SpecContract, worker: crypto.SigningKey, **fields: Any) -> tuple[Any, bytes, bytes]:
        body, signature, sealed = original(self, worker, **fields)
        if fields["ok"] and isinstance(fields["output"], int):
            body = {**body, "events": [{"name": "Added", "data": {"n": fields["output"]}}]}
            signature = worker.sign("umbra/result/v1", body)
        return body, signature, sealed

    return result


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SpecContract, "result", _emitting_result(SpecContract.result))
        with network(tmp_path_factory.mktemp("chain-helpers")) as live:
            yield live
            assert not live.errors, live.errors


def client(net: Network, who: str) -> Client:
    return Client(net.url, net.users[who])


def test_balance_and_transfer_move_exactly_the_amount_and_the_fee(net: Network) -> None:
    with client(net, "alice") as alice, client(net, "bob") as bob:
        assert alice.address is not None and bob.address is not None
        before = {"alice": alice.balance(), "bob": bob.balance()}
        assert bob.balance(alice.address) == before["alice"] > 0  # anyone reads any account
        assert alice.balance(codec.from_hex(bob.address)) == before["bob"]  # bytes or 0x-hex

        receipt = alice.transfer(bob.address, 1234)
        assert set(receipt) == {"tx_hash", "block", "fee"} and receipt["fee"] >= 1
        included = net.node.store.tx(codec.from_hex(receipt["tx_hash"]))
        assert included is not None and included.ok and included.height == receipt["block"]
        assert alice.balance() == before["alice"] - 1234 - receipt["fee"]
        assert bob.balance() == before["bob"] + 1234

        fresh = codec.to_hex(crypto.SigningKey.generate().public_key)
        assert alice.balance(fresh) == 0
        alice.transfer(fresh, 50)
        assert alice.balance(fresh) == 50


def test_transfer_and_balance_refusals(net: Network, monkeypatch: pytest.MonkeyPatch) -> None:
    with client(net, "alice") as alice, client(net, "bob") as bob:
        assert bob.address is not None
        before = alice.balance()
        for to, amount, code in (
            (bob.address, before + 1, "insufficient_funds"),  # refused at admission: nothing moves
            (bob.address, 0, "bad_amount"),
            (bob.address, -5, "bad_amount"),
            ("0x1234", 1, "bad_args"),
        ):
            with pytest.raises(UmbraError) as refused:
                alice.transfer(to, amount)
            assert refused.value.code == code, (to, amount, refused.value.message)
        assert alice.balance() == before

        with Client(net.url, crypto.SigningKey.generate()) as broke, pytest.raises(UmbraError) as empty:
            broke.transfer(bob.address, 1)
        assert empty.value.code == "insufficient_funds"

        monkeypatch.delenv("UMBRA_KEY", raising=False)
        with Client(net.url) as keyless:
            assert keyless.balance(bob.address) == bob.balance()
            for action in (keyless.balance, lambda: keyless.transfer(bob.address, 1)):
                with pytest.raises(UmbraError) as no_key:
                    action()
                assert no_key.value.code == "no_key"
        with pytest.raises(UmbraError) as bad:
            alice.balance("not hex")
        assert bad.value.code == "bad_args"


def test_contract_account_holds_call_values(net: Network) -> None:
    with client(net, "alice") as alice, client(net, "bob") as bob:
        cid = alice.deploy(CODE).contract_id
        account = bob.contract_account(cid)
        assert account != cid and alice.balance(account) == 0
        bob.call(cid, "add", {"text": "paid"}, value=500)
        bob.call(cid, "add", {"text": "paid again"}, value=250)
        assert alice.balance(account) == 750
        assert alice.contract_account(codec.from_hex(cid)) == account

        for bad, code in ((UNKNOWN_CONTRACT, "unknown_contract"), ("0xabcd", "bad_args")):
            with pytest.raises(UmbraError) as refused:
                alice.contract_account(bad)
            assert refused.value.code == code


def test_contract_events_are_the_contracts_own_from_a_height_on(net: Network) -> None:
    with client(net, "alice") as alice, client(net, "bob") as bob:
        mine = alice.deploy(CODE, init={"limit": 5})
        other = alice.deploy(CODE)
        first = bob.call(mine.contract_id, "add", {"text": "one"})
        alice.call(other.contract_id, "add", {"text": "elsewhere"})
        second = bob.call(mine.contract_id, "add", {"text": "two"})
        alice.call(mine.contract_id, "add", {"text": "three"})

        events = bob.contract_events(mine.contract_id, mine.height)
        assert [(e.name, e.data) for e in events] == [("Added", {"n": n}) for n in (1, 2, 1)]
        assert events[0] == ContractEvent(first.height, "Added", {"n": 1})
        assert [e.height for e in events] == sorted(e.height for e in events)
        later = bob.contract_events(mine.contract_id, first.height + 1)
        assert later[0] == ContractEvent(second.height, "Added", {"n": 2}) and len(later) == 2
        assert bob.contract_events(mine.contract_id) == events  # since genesis
        assert bob.contract_events(mine.contract_id, net.node.store.head().height + 1) == []
        assert [e.data for e in alice.contract_events(other.contract_id)] == [{"n": 1}]

        for contract, since, code in (
            (UNKNOWN_CONTRACT, 0, "unknown_contract"),
            (mine.contract_id, -1, "bad_args"),
            ("0x00", 0, "bad_args"),
        ):
            with pytest.raises(UmbraError) as refused:
                bob.contract_events(contract, since)
            assert refused.value.code == code


def test_the_async_twin(net: Network) -> None:
    async def scenario() -> None:
        async with (
            AsyncClient(net.url, net.users["charlie"]) as charlie,
            AsyncClient(net.url, net.users["bob"]) as bob,
        ):
            assert bob.address is not None
            before = await bob.balance()
            receipt = await charlie.transfer(bob.address, 77)
            assert await bob.balance() == before + 77 and receipt["fee"] >= 1
            with pytest.raises(UmbraError) as refused:
                await charlie.transfer(bob.address, await charlie.balance() + 1)
            assert refused.value.code == "insufficient_funds"

            deployed = await charlie.deploy(CODE)
            added = await bob.call(deployed.contract_id, "add", {"text": "x"}, value=9)
            assert await bob.balance(await bob.contract_account(deployed.contract_id)) == 9
            events = await bob.contract_events(deployed.contract_id, deployed.height)
            assert events == [ContractEvent(added.height, "Added", {"n": 1})]

    asyncio.run(scenario())


def _events_page(contract: str, heights: list[int], following: int | None) -> dict[str, Any]:
    events = [
        {
            "height": h,
            "module": "contracts",
            "name": "ContractEvent",
            "data": {"contract": c, "name": "E", "data": h},
        }
        for h in heights
        for c in (contract, UNKNOWN_CONTRACT)  # another contract's events are interleaved
    ]
    return {"events": events, "next": following, "head": 25_000}


def _start_events_flow(since: int) -> tuple[Flow[list[ContractEvent]], Http, str]:
    """A contract_events flow past its contract lookup: (flow, its first /history/events request, id)."""
    contract = crypto.SigningKey.generate().public_key
    flow = flows.contract_events(flows.Session(), contract, since)
    lookup = next(flow)
    assert isinstance(lookup, Http) and lookup.path == "/state/contracts/contract"
    record = {
        "id": codec.to_hex(contract),
        "owner": codec.to_hex(contract),
        "code_hash": codec.to_hex(contract),
    }
    first = flow.send({"key": "0x", "value": record})
    assert isinstance(first, Http) and first.path == "/history/events"
    return flow, first, codec.to_hex(contract)


def test_contract_events_follow_next_until_the_head() -> None:
    flow, first, contract = _start_events_flow(7)
    assert first.params == {"module": "contracts", "names": "ContractEvent", "from": "7"}
    second = flow.send(_events_page(contract, [9, 10_001], 10_007))
    assert isinstance(second, Http) and second.params is not None and second.params["from"] == "10007"
    with pytest.raises(StopIteration) as done:
        flow.send(_events_page(contract, [20_000], None))
    assert done.value.value == [ContractEvent(h, "E", h) for h in (9, 10_001, 20_000)]


def test_contract_events_refuse_a_node_that_does_not_move_on() -> None:
    flow, _, contract = _start_events_flow(7)
    with pytest.raises(UmbraError) as stuck:
        flow.send(_events_page(contract, [], 7))
    assert stuck.value.code == "bad_response"
