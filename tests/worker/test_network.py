"""Acceptance across processes: a node, a gatekeeper and three workers register and share the key."""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import pytest

from tests.node.conftest import free_port, wait_until
from tests.worker.conftest import OTHER_MEASUREMENT, info, keyed, run_json, wait_keyed
from umbra import codec
from umbra.chain.types import Call
from umbra.tee import Endorsements, verify

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CONTRACT_CODE = b"from umbra.contract import Contract\n\nclass Empty(Contract):\n    pass\n"


def _registered_events(net: Any, worker: str) -> int:
    count = 0
    with httpx.Client(base_url=net.node_url, timeout=10) as client:
        blocks = client.get("/sync/blocks", params={"from": 0, "limit": 500}).json()["blocks"]
    for item in blocks:
        for event in codec.decode(codec.from_hex(item["events"])):
            if event["name"] == "WorkerRegistered" and codec.to_hex(event["data"]["worker"]) == worker:
                count += 1
    return count


def test_gatekeeper_and_three_workers_share_the_master_key(network: Any) -> None:
    net = network()
    gatekeeper = net.start_host("gatekeeper", "gatekeeper")
    workers = [
        net.start_host("worker", f"w{i}", "--tee-type", tee)
        for i, tee in enumerate(("sgx", "tdx", "sev-snp"))
    ]
    started = time.monotonic()
    wait_keyed(gatekeeper, *workers)
    assert time.monotonic() - started < 60

    epoch = net.state("keys", "epoch")
    assert epoch == 0
    ids = [info(p)["id"] for p in workers]
    assert len(set(ids)) == 3
    for worker_id, tee in zip(ids, ("sgx", "tdx", "sev-snp"), strict=True):
        record = net.state("registry", "worker", codec.from_hex(worker_id))
        assert record["status"] == "active" and record["platform"] == tee and record["tee_type"] == "sim"
        handover = net.state("keys", "handover", codec.from_hex(worker_id) + (0).to_bytes(8, "big"))
        assert handover is not None
    # Each worker serves the very evidence it registered, so a client can verify it itself.
    for proc in workers:
        served = info(proc)
        record = net.state("registry", "worker", codec.from_hex(served["id"]))
        evidence = codec.from_hex(served["evidence"])
        assert codec.to_hex(codec.sha256(evidence)) == record["evidence_hash"]
        verdict = verify("sim", evidence, Endorsements(root=net.sim_root.read_bytes()))
        assert verdict.ok and verdict.platform == record["platform"], verdict.error

    # A contract is deployed: the gatekeeper publishes its key, and every worker's core derives
    # exactly that key from the master key it received: equal keys, equal master key.
    deployed = net.client().call(net.key("alice"), "contracts", "deploy", code=CONTRACT_CODE, manifest={})
    contract = next(
        e["data"]["contract"]
        for e in net.client().tx(codec.from_hex(deployed["tx_hash"]))["events"]
        if e["name"] == "ContractDeployed"
    )

    def published() -> dict[str, Any] | None:
        value: dict[str, Any] | None = net.state(
            "keys", "contract_key", codec.from_hex(contract) + (0).to_bytes(8, "big")
        )
        return value

    wait_until(lambda: published() is not None, 30, "the contract key")
    key = published()
    assert key is not None
    for proc in [*workers, gatekeeper]:
        derived = httpx.get(f"{proc.url}/keys/{contract}", timeout=5).json()
        assert (derived["ecdh_pk"], derived["sign_pk"], derived["evm_address"]) == (
            key["ecdh_pk"],
            key["sign_pk"],
            key["evm_address"],
        )
    for proc in workers:
        assert info(proc)["alerts"] == []


def test_a_killed_worker_restarts_from_sealed_storage_with_the_same_identity(network: Any) -> None:
    net = network(operators=("w0",))
    gatekeeper = net.start_host("gatekeeper", "gatekeeper")
    port = free_port()
    worker = net.start_host("worker", "w0", port=port)
    wait_keyed(gatekeeper, worker)
    before = info(worker)
    record = net.state("registry", "worker", codec.from_hex(before["id"]))

    worker.kill_group(signal.SIGKILL)
    assert not worker.alive()
    restarted = net.start_host("worker", "w0", port=port)
    wait_keyed(restarted)
    after = info(restarted)
    assert after["id"] == before["id"] and after["epochs_held"] == [0]
    again = net.state("registry", "worker", codec.from_hex(after["id"]))
    assert again["registered_height"] == record["registered_height"]
    assert _registered_events(net, before["id"]) == 1
    assert "resumed from sealed storage" in restarted.log_tail()


def test_a_tampered_sealed_file_is_detected_and_reported(network: Any) -> None:
    net = network(operators=("w0",))
    gatekeeper = net.start_host("gatekeeper", "gatekeeper")
    port = free_port()
    worker = net.start_host("worker", "w0", port=port)
    wait_keyed(gatekeeper, worker)
    old_id = info(worker)["id"]
    worker.stop()

    sealed = net.root / "w0" / "core" / "identity.sealed"
    data = bytearray(sealed.read_bytes())
    data[-5] ^= 0x01
    sealed.write_bytes(bytes(data))
    code, out = run_json(*net.host_args("worker", "w0", port), timeout=60)
    assert code == 1 and out["error"]["code"] == "sealed_unopenable"
    assert "identity.sealed" in out["error"]["message"] and "tampered" in out["error"]["message"]

    # The operator chooses to start over: a new identity registers and receives the key.
    fresh = net.start_host("worker", "w0", "--on-seal-failure", "new-identity", port=port)
    wait_keyed(fresh)
    assert info(fresh)["id"] != old_id
    assert list(net.root.glob("w0/core.unopenable-*/identity.sealed"))


@pytest.mark.parametrize(
    ("flag", "code"),
    [
        (("--sim-measurement", OTHER_MEASUREMENT), "registry.policy_measurement"),
        (("--sim-debug",), "registry.attestation_refused"),
    ],
)
def test_an_unacceptable_worker_is_refused_with_a_clear_error(
    network: Any, flag: tuple[str, ...], code: str
) -> None:
    net = network(operators=("w0",))
    gatekeeper = net.start_host("gatekeeper", "gatekeeper")
    wait_keyed(gatekeeper)
    status, out = run_json(*net.host_args("worker", "w0", free_port(), *flag), timeout=60)
    assert status == 1 and out["error"]["code"] == code, out
    assert "refused" in out["error"]["message"]
    assert net.state("registry", "all") == [info(gatekeeper)["id"]]


def test_revoking_a_measurement_rotates_keys_away_from_its_workers(network: Any) -> None:
    net = network(operators=("w0", "w1"), extra_measurements=(OTHER_MEASUREMENT,))
    gatekeeper = net.start_host("gatekeeper", "gatekeeper")
    good = net.start_host("worker", "w0")
    odd = net.start_host("worker", "w1", "--sim-measurement", OTHER_MEASUREMENT)
    wait_keyed(gatekeeper, good, odd)
    odd_id = info(odd)["id"]

    client = net.client()
    # (`module` is both a propose argument and NodeClient.call's parameter: build the call by hand.)
    propose = Call(
        "council",
        "propose",
        {
            "module": "registry",
            "method": "revoke_measurement",
            "args": {"measurement_class": "sim", "measurement": OTHER_MEASUREMENT},
        },
    )
    proposed = client.submit(client.build_tx(net.key("alice"), propose))
    assert proposed["ok"], proposed
    proposal = next(
        e["data"]["proposal"]
        for e in client.tx(codec.from_hex(proposed["tx_hash"]))["events"]
        if e["name"] == "Proposed"
    )
    voted = client.call(net.key("bob"), "council", "vote", proposal=proposal, aye=True)
    assert net.state("registry", "worker", codec.from_hex(odd_id))["status"] == "revoked"
    revoked_at = voted["block"]
    assert revoked_at is not None

    wait_keyed(gatekeeper, good, epoch=1)
    assert net.state("keys", "epoch") == 1
    assert info(odd)["epochs_held"] == [0]
    assert net.state("keys", "handover", codec.from_hex(odd_id) + (1).to_bytes(8, "big")) is None
    assert info(odd)["status"] == "revoked"
    # The revoked worker's core cannot even derive the new epoch's contract keys.
    reply = httpx.get(f"{odd.url}/keys/{codec.to_hex(bytes(32))}", params={"epoch": 1}, timeout=5)
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "no_key"
    assert keyed(good, 1)


def test_workers_reattest_before_their_attestation_expires(network: Any) -> None:
    net = network(operators=("w0",), ttl_ms=9_000)
    gatekeeper = net.start_host("gatekeeper", "gatekeeper")
    worker = net.start_host("worker", "w0")
    wait_keyed(gatekeeper, worker)
    worker_id = codec.from_hex(info(worker)["id"])
    first = net.state("registry", "worker", worker_id)["expires_at_ms"]
    wait_until(
        lambda: net.state("registry", "worker", worker_id)["expires_at_ms"] > first, 30, "a re-attestation"
    )
    time.sleep(max(0.0, (first - time.time() * 1000) / 1000) + 2)  # past the first expiry
    record = net.state("registry", "worker", worker_id)
    assert record["status"] == "active" and record["expires_at_ms"] > time.time() * 1000
    assert keyed(worker) and _registered_events(net, info(worker)["id"]) == 1
