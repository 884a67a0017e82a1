"""The SDK end to end over HTTP against a real node, real registry/keys/compute modules and
spec-side cores (tests/client/harness.py): deploy, init, calls from two accounts, queries,
contract errors, replicas, secrets, read-your-writes, evidence re-verification, the async twin."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.harness import Network, network
from umbra import codec
from umbra.client import AsyncClient, ChainEvent, Client, Settings, UmbraError, VerificationError

pytestmark = pytest.mark.timeout(180)

CODE = b"# notes (run by the harness's spec cores)\n"
MARK = "plaintext-marker-inprocess-" + os.urandom(4).hex()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("client-net")) as live:
        yield live


def client(net: Network, who: str, **settings: object) -> Client:
    return Client(net.url, net.users[who], settings=Settings(**settings))  # type: ignore[arg-type]


def test_deploy_call_query_from_two_accounts(net: Network) -> None:
    with client(net, "alice") as alice, client(net, "bob") as bob:
        deployed = alice.deploy(CODE, init={"limit": 2})
        assert deployed.code_hash == codec.to_hex(codec.sha256(CODE))
        cid = deployed.contract_id

        added = bob.call(cid, "add", {"text": MARK})
        assert (added.output, added.verified, len(added.workers)) == (1, True, 1)
        mine = bob.query(cid, "mine")
        assert (mine.output, mine.verified) == ([MARK], True) and mine.height >= added.height
        assert alice.query(cid, "mine").output == []

        with pytest.raises(UmbraError) as denied:
            bob.query(cid, "count")
        assert denied.value.code == "contract_error" and "owner only" in denied.value.message

        assert bob.call(cid, "add", {"text": "two"}).output == 2
        with pytest.raises(UmbraError) as limit:
            bob.call(cid, "add", {"text": "three"})
        assert limit.value.code == "contract_error" and "note limit reached" in limit.value.message
        assert alice.query(cid, "count").output == 2  # the failed call changed nothing

        replicated = alice.call(cid, "add", {"text": "alice"}, replicas=2)
        assert replicated.output == 1 and len(set(replicated.workers)) == 2
    assert not net.errors, net.errors


def test_the_plaintext_never_reaches_the_chain_or_its_api(net: Network, tmp_path: Path) -> None:
    marker = "plaintext-marker-" + os.urandom(6).hex()
    with client(net, "alice") as alice:
        cid = alice.deploy(CODE).contract_id
        alice.call(cid, "add", {"text": marker})
        assert alice.query(cid, "mine").output == [marker]
    import httpx

    head = net.node.store.head().height
    for height in range(max(0, head - 40), head + 1):
        assert marker not in httpx.get(f"{net.url}/blocks/{height}").text
    for raw in net.served_queries:
        assert marker.encode() not in raw
    data_dir = net.node.config.data_dir
    for path in Path(data_dir).rglob("*"):
        if path.is_file():
            assert marker.encode() not in path.read_bytes(), path


def test_a_contract_error_at_init_fails_the_deploy_with_its_message(net: Network) -> None:
    with client(net, "charlie") as charlie:
        cid = charlie.deploy(CODE).contract_id
        with pytest.raises(UmbraError) as failed:
            charlie.call(cid, "nope")
        assert "no method 'nope'" in failed.value.message


def test_evidence_is_re_verified_when_asked(net: Network) -> None:
    with client(net, "alice", verify_evidence=True) as alice:
        cid = alice.deploy(CODE).contract_id
        assert alice.call(cid, "add", {"text": "x"}).verified
        assert alice.query(cid, "mine").output == ["x"]
    victim = net.workers[0].identity.public_key
    saved = net.evidence[victim]
    net.evidence[victim] = saved[:-1] + bytes([saved[-1] ^ 1])  # serves evidence it did not register
    try:
        with client(net, "alice", verify_evidence=True) as alice, pytest.raises(VerificationError) as refused:
            alice.query(cid, "mine", worker=victim)
        assert refused.value.code == "bad_evidence"
    finally:
        net.evidence[victim] = saved


def test_a_query_skips_a_worker_that_is_down(net: Network) -> None:
    dead = net.workers[1]
    assert dead.server is not None
    dead.server.shutdown()
    dead.server.server_close()
    try:
        with client(net, "bob") as bob:
            cid = bob.deploy(CODE).contract_id
            for _ in range(4):  # the shuffle picks the dead one now and then
                assert bob.query(cid, "mine").worker != codec.to_hex(dead.identity.public_key)
    finally:
        from tests.client.harness import _serve

        _serve(net, dead)  # same identity, new port: queries to its registered endpoint still fail


def test_secrets_are_sealed_to_the_contract_and_bound_to_their_name(net: Network) -> None:
    with client(net, "alice") as alice, client(net, "bob") as bob:
        cid = alice.deploy(CODE).contract_id
        receipt = alice.upload_secret(cid, "api-key", b"s3cret-" + MARK.encode())
        stored = net.node.runtime.contracts.secrets.get(net.state(), codec.from_hex(cid) + b"api-key")
        assert stored["hash"] == codec.from_hex(receipt["hash"])
        assert MARK.encode() not in stored["sealed"]
        assert (
            net.spec(codec.from_hex(cid)).open_secret(stored["sealed"], name="api-key")
            == b"s3cret-" + MARK.encode()
        )
        with pytest.raises(UmbraError) as not_owner:
            bob.upload_secret(cid, "api-key", b"x")
        assert not_owner.value.code == "contracts.not_owner"


def test_the_async_client_is_a_twin(net: Network) -> None:
    async def main() -> tuple[object, object]:
        async with AsyncClient(net.url, net.users["alice"]) as alice:
            cid = (await alice.deploy(CODE, init={"limit": 5})).contract_id
            added = await alice.call(cid, "add", {"text": "async"})
            read = await alice.query(cid, "mine")
            return added.output, read.output

    assert asyncio.run(main()) == (1, ["async"])


def test_refusals_are_typed(net: Network) -> None:
    with client(net, "alice") as alice:
        with pytest.raises(UmbraError) as unknown:
            alice.call("0x" + "11" * 32, "add")
        assert unknown.value.code == "unknown_contract"
        with pytest.raises(UmbraError) as bad:
            alice.call("0x1234", "add")
        assert bad.value.code == "bad_args"
        with pytest.raises(UmbraError) as replicas:
            alice.call("0x" + "11" * 32, "add", replicas=9)
        assert replicas.value.code == "bad_replicas"
    with Client("http://127.0.0.1:9", net.users["alice"]) as nowhere, pytest.raises(UmbraError) as down:
        nowhere.status()
    assert down.value.code == "unreachable"


# ---- the CLI ------------------------------------------------------------------------------------
def umbra(net: Network, keyfile: Path, *args: str) -> tuple[int, dict[str, object]]:
    import json
    import subprocess

    from tests.node.conftest import UMBRA, child_env

    done = subprocess.run(
        [UMBRA, *args, "--json", "--node", net.url, "--key", str(keyfile)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"want one JSON line, got {done.stdout!r} {done.stderr[-2000:]!r}"
    return done.returncode, json.loads(lines[0])


def test_the_cli_drives_a_contract_as_the_interfaces_fix_it(net: Network, tmp_path: Path) -> None:
    from umbra import crypto

    keys = {}
    for name in ("alice", "bob"):
        keys[name] = tmp_path / f"{name}.key"
        crypto.save_signing_key(keys[name], net.users[name])
    source = tmp_path / "notes.py"
    source.write_bytes(CODE)

    code, deployed = umbra(net, keys["alice"], "deploy", str(source), "--init", '{"limit": 1}')
    assert code == 0 and set(deployed) == {"contract_id", "code_hash"}, deployed
    cid = str(deployed["contract_id"])
    code, added = umbra(net, keys["bob"], "call", cid, "add", "--args", '{"text": "cli"}')
    assert code == 0 and added["output"] == 1 and added["verified"] is True and len(added["workers"]) == 1  # type: ignore[arg-type]
    code, read = umbra(net, keys["bob"], "query", cid, "mine")
    assert (
        code == 0
        and read["output"] == ["cli"]
        and read["verified"] is True
        and isinstance(read["height"], int)
    )
    code, failed = umbra(net, keys["bob"], "call", cid, "add", "--args", '{"text": "over"}')
    assert code == 1 and "note limit reached" in failed["error"]["message"]  # type: ignore[index]
    code, usage = umbra(net, keys["bob"], "call", cid, "add", "--args", "[1]")
    assert code == 2 and usage["error"]["code"] == "usage"  # type: ignore[index]
    code, secret = umbra(net, keys["alice"], "upload-secret", cid, "token", "--text", "t0ken")
    assert code == 0 and str(secret["hash"]).startswith("0x")


def test_blobs_are_sealed_stored_by_hash_and_registered(net: Network) -> None:
    from umbra import crypto

    with client(net, "alice") as alice:
        cid = alice.deploy(CODE).contract_id
        data = b"weights:" + MARK.encode() * 100
        stored = alice.upload_blob(cid, data)
        digest = codec.from_hex(str(stored["hash"]))
        sealed = net.node.store.blob(digest)
        assert sealed is not None and codec.sha256(sealed) == digest and MARK.encode() not in sealed
        assert net.node.runtime.contracts.blobs.get(net.state(), codec.from_hex(cid) + digest) == len(sealed)
        info = codec.encode(
            {
                "chain_id": net.spec(codec.from_hex(cid)).chain_id,
                "contract": codec.from_hex(cid),
                "purpose": "umbra/blob/v1",
            }
        )
        assert crypto.hpke_open(net.spec(codec.from_hex(cid)).keys.ecdh, sealed, info) == data


def test_watch_events_streams_chain_events(net: Network) -> None:
    import threading

    seen: list[ChainEvent] = []
    ready = threading.Event()

    def watch() -> None:
        with client(net, "bob") as bob:
            for event in bob.watch_events(module="contracts", name="ContractDeployed"):
                seen.append(event)
                ready.set()
                return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    time.sleep(0.5)  # let the stream subscribe before the deploy
    with client(net, "alice") as alice:
        cid = alice.deploy(CODE).contract_id
    assert ready.wait(30), "no ContractDeployed event arrived on the stream"
    (event,) = seen
    assert isinstance(event, ChainEvent)
    assert (event.module, event.name, event.data["contract"]) == ("contracts", "ContractDeployed", cid)
    assert event.height > 0


def test_the_async_client_streams_events_too(net: Network) -> None:
    async def main() -> tuple[str, str]:
        async with AsyncClient(net.url, net.users["alice"]) as alice:
            stream = alice.watch_events(module="contracts", name="ContractDeployed")
            waiter = asyncio.ensure_future(stream.__anext__())
            await asyncio.sleep(0.5)
            cid = (await alice.deploy(CODE)).contract_id
            event = await asyncio.wait_for(waiter, 30)
            await stream.aclose()
            return str(event.data["contract"]), cid

    streamed, deployed = asyncio.run(main())
    assert streamed == deployed
