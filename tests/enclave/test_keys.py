"""The key tree end to end in memory: registration, master key, handovers, refusals, rotation.

Every core here is a real `Core` behind the in-memory transport, fed the real runtime's signed
blocks; the txs are exactly those a host posts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.chain.helpers import ALICE, BOB, events_named
from tests.enclave.helpers import GK_OPERATOR, OPERATORS, OTHER_MEASUREMENT, Member, SimNet
from umbra import codec, crypto
from umbra.enclave.transport import CoreError

pytestmark = pytest.mark.timeout(120)
CONTRACT = codec.sha256(b"some contract id")


def _network(tmp_path: Path, workers: int = 3, **options: Any) -> tuple[SimNet, Member, list[Member]]:
    net = SimNet.start(tmp_path, **options)
    gatekeeper = net.core("gk", GK_OPERATOR, role="gatekeeper")
    net.register(gatekeeper)
    net.run_gatekeeper(gatekeeper)
    members = [net.core(f"w{i}", OPERATORS[i]) for i in range(workers)]
    for member in members:
        outcome = net.register(member)
        assert outcome.receipts[0].ok, outcome.receipts[0].message
    net.run_gatekeeper(gatekeeper)
    return net, gatekeeper, members


def _council(net: SimNet, module: str, method: str, **args: Any) -> None:
    proposed = net.block(net.chain.tx(ALICE, "council", "propose", module=module, method=method, args=args))
    assert proposed.receipts[0].ok, proposed.receipts[0].message
    (proposal,) = [e["proposal"] for e in events_named(proposed, "council", "Proposed")]
    voted = net.block(net.chain.tx(BOB, "council", "vote", proposal=proposal, aye=True))
    executed = events_named(voted, "council", "Executed")
    assert executed and executed[0]["ok"], executed


def test_every_worker_receives_the_same_master_key(tmp_path: Path) -> None:
    net, gatekeeper, workers = _network(tmp_path)
    state = net.chain.state()
    keys = net.chain.runtime.keys
    assert keys.current_epoch(state) == 0
    master_pk = keys.masters.get(state, 0)["master_pk"]
    derived = {gatekeeper.call("contract_public", contract=CONTRACT, epoch=0)["ecdh_pk"]}
    for worker in workers:
        assert keys.has_current_key(state, worker.id)
        status = worker.call("status")
        assert status["epochs_held"] == [0] and status["alerts"] == []
        derived.add(worker.call("contract_public", contract=CONTRACT, epoch=0)["ecdh_pk"])
    # Equal derived keys prove equal master secrets without revealing them.
    assert len(derived) == 1
    assert gatekeeper.core._masters[0].public_key == master_pk  # the published key is the held one


def test_the_handover_ciphertext_opens_only_for_its_worker(tmp_path: Path) -> None:
    net, _gatekeeper, workers = _network(tmp_path, workers=2)
    record = net.chain.runtime.keys.handovers.get(net.chain.state(), workers[0].id + (0).to_bytes(8, "big"))
    info = codec.encode({"chain_id": net.genesis.chain_id, "worker": workers[0].id, "epoch": 0})
    other = workers[1].core._ecdh
    assert other is not None
    with pytest.raises(crypto.DecryptError):
        crypto.hpke_open(other, record["ciphertext"], info)


def _refused(net: SimNet, member: Member, code: str) -> None:
    outcome = net.register(member)
    receipt = outcome.receipts[0]
    assert not receipt.ok and receipt.error == code, (receipt.error, receipt.message)
    assert receipt.message and "refused" in receipt.message
    assert not member.call("status")["registered"]


def test_unacceptable_workers_are_refused_and_get_no_key(tmp_path: Path) -> None:
    net, gatekeeper, _ = _network(tmp_path, workers=1)
    refused = [
        (net.core("other-code", OPERATORS[1], measurement=OTHER_MEASUREMENT), "registry.policy_measurement"),
        (net.core("debug", OPERATORS[2], debug=True), "registry.attestation_refused"),
        (
            net.core("stale", OPERATORS[3], clock=lambda: datetime.now(UTC) - timedelta(hours=1)),
            "registry.policy_freshness",
        ),
    ]
    for member, code in refused:
        _refused(net, member, code)
    # report_data bound to other keys: core A's evidence presented with core B's keys.
    a, b = net.core("a", OPERATORS[1]), net.core("b", OPERATORS[1])
    evidence = a.call("register", operator=a.operator.public_key, endpoint="http://a")
    keys_of_b = b.call("register", operator=b.operator.public_key, endpoint="http://a")
    args = {k: evidence[k] for k in ("evidence", "tee_type", "endorsements", "endpoint", "role")}
    args.update({k: keys_of_b[k] for k in ("identity_pk", "ecdh_pk", "binding_sig")})
    outcome = net.block(net.tx(a, "registry", "register_worker", **args))
    assert outcome.receipts[0].error == "registry.policy_binding", outcome.receipts[0].message
    # None of them is registered; the gatekeeper has no duty towards them and refuses a handover.
    due = gatekeeper.call("duties")["gatekeeper"]
    assert due["handovers"] == []
    for member in [m for m, _ in refused] + [a, b]:
        assert net.chain.runtime.registry.worker(net.chain.state(), member.id) is None
        with pytest.raises(CoreError) as caught:
            gatekeeper.call("handover", worker=member.id, epoch=0)
        assert caught.value.code == "not_registered"
        assert member.call("status")["epochs_held"] == []


def test_a_worker_cannot_ask_for_gatekeeper_ops(tmp_path: Path) -> None:
    _net, _, workers = _network(tmp_path, workers=1)
    for op, args in (("generate_master", {"epoch": 1}), ("handover", {"worker": workers[0].id, "epoch": 0})):
        with pytest.raises(CoreError) as caught:
            workers[0].call(op, **args)
        assert caught.value.code == "not_gatekeeper"


def test_revoking_a_measurement_rotates_and_the_revoked_worker_cannot_open_new_inputs(tmp_path: Path) -> None:
    net, gatekeeper, workers = _network(tmp_path, workers=2, extra_measurements=(OTHER_MEASUREMENT,))
    odd = net.core("odd", OPERATORS[2], measurement=OTHER_MEASUREMENT)
    assert net.register(odd).receipts[0].ok
    net.run_gatekeeper(gatekeeper)
    assert odd.call("status")["epochs_held"] == [0]

    _council(
        net, "registry", "revoke_measurement", measurement_class="sim", measurement=OTHER_MEASUREMENT.hex()
    )
    registry, keys = net.chain.runtime.registry, net.chain.runtime.keys
    state = net.chain.state()
    assert registry.worker(state, odd.id)["status"] == "revoked"  # in the very block that revoked it
    assert not registry.is_attested(state, odd.id, net.chain.head.time_ms)
    assert keys.pending_epoch.get(state) == 1
    assert odd.call("duties")["status"] == "revoked"

    with pytest.raises(CoreError) as caught:
        gatekeeper.call("handover", worker=odd.id, epoch=0)
    assert caught.value.code == "worker_ineligible"
    net.run_gatekeeper(gatekeeper)  # publishes epoch 1, hands it to the others only
    state = net.chain.state()
    assert keys.current_epoch(state) == 1
    for worker in workers:
        assert worker.call("status")["epochs_held"] == [0, 1]
    assert odd.call("status")["epochs_held"] == [0]
    assert not keys.holds_epoch(state, odd.id, 1)

    # An input sealed to the new epoch's contract key opens for a current worker, never for the revoked one.
    contract_pk = gatekeeper.call("contract_public", contract=CONTRACT, epoch=1)["ecdh_pk"]
    sealed = crypto.hpke_seal(contract_pk, b"a confidential input", b"info")
    assert (
        crypto.hpke_open(workers[0].core._masters[1].contract(CONTRACT).ecdh, sealed, b"info")
        == b"a confidential input"
    )
    for master in odd.core._masters.values():
        with pytest.raises(crypto.DecryptError):
            crypto.hpke_open(master.contract(CONTRACT).ecdh, sealed, b"info")


def test_a_restarted_core_resumes_its_identity_and_keys(tmp_path: Path) -> None:
    net, _, workers = _network(tmp_path, workers=1)
    worker = workers[0]
    before = worker.call("contract_public", contract=CONTRACT, epoch=0)
    again = SimNet(net.chain, net.authority, net.root)
    resumed = again.core("w0", OPERATORS[0])
    assert resumed.init["resumed"] and resumed.id == worker.id
    duties = resumed.call("duties")
    assert duties["registered"] and duties["holds_current"]
    assert resumed.call("contract_public", contract=CONTRACT, epoch=0) == before


def test_a_tampered_master_file_is_reported_and_a_reset_starts_a_new_identity(tmp_path: Path) -> None:
    net, _, workers = _network(tmp_path, workers=1)
    path = tmp_path / "w0" / "core" / "master-0.sealed"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x80
    path.write_bytes(bytes(data))
    again = SimNet(net.chain, net.authority, net.root)
    with pytest.raises(CoreError) as caught:
        again.core("w0", OPERATORS[0])
    assert caught.value.code == "sealed_unopenable"
    assert "master-0.sealed" in caught.value.message and "tampered" in caught.value.message
    fresh = again.platform("w0")
    from umbra.enclave.core import Core
    from umbra.enclave.transport import InMemoryTransport

    transport = InMemoryTransport(Core(fresh, tmp_path / "w0" / "core").handle)
    reply = transport.call({"op": "init", "genesis": net.genesis.encode(), "role": "worker", "reset": True})
    assert reply["identity_pk"] != workers[0].id and not reply["resumed"] and reply["quarantined"]
