"""registry: sim workers attested at block time, refusals with typed errors, liveness timers and
council revocations that take effect in the block that makes them (and start a key rotation)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.modules.net import (
    AUTHORITY,
    CHAIN_ID,
    COUNCIL,
    GENESIS_AT,
    MEASUREMENT,
    OP1,
    OP2,
    OTHER_MEASUREMENT,
    USER,
    Net,
    all_events,
    assert_council_noop,
    assert_noop,
    default_policy,
    events_named,
    make_worker,
)
from umbra import codec
from umbra.tee.policy import report_data_binding


def test_register_records_an_attested_worker(net: Net) -> None:
    worker = make_worker("w1", OP1)
    args = net.register_args(worker)
    outcome = net.ok(OP1, "registry", "register_worker", **args)
    now = net.head.time_ms
    ttl = 24 * 3600 * 1000
    (event,) = events_named(outcome, "registry", "WorkerRegistered")
    assert event == {
        "worker": worker.id,
        "operator": OP1.public_key,
        "ecdh_pk": worker.ecdh.public_key,
        "tee_type": "sim",
        "platform": "sim",
        "measurement": MEASUREMENT.hex(),
        "role": "worker",
        "expires_at_ms": now + ttl,
    }
    record = net.worker(worker)
    assert record["status"] == "active"
    assert record["operator"] == OP1.public_key
    assert (record["attested_at_ms"], record["expires_at_ms"]) == (now, now + ttl)
    assert record["registered_height"] == record["last_heartbeat"] == net.height
    assert record["evidence_hash"] == codec.sha256(args["evidence"])
    assert record["endpoint"] == worker.endpoint
    assert net.runtime.registry.worker_ids(net.state()) == [worker.id]
    assert net.runtime.registry.is_attested(net.state(), worker.id, now + 1)


def test_a_sim_worker_may_present_another_tee_type(net: Net) -> None:
    worker = make_worker("sgx-like", OP1, presented_type="sgx")
    net.register(worker)
    record = net.worker(worker)
    assert (record["tee_type"], record["platform"], record["class"]) == ("sim", "sgx", "sim")


# ---- refusals ------------------------------------------------------------------------------------


def test_measurement_not_on_the_allowlist_is_refused(net: Net) -> None:
    worker = make_worker("w1", OP1, measurement=OTHER_MEASUREMENT)
    receipt = assert_noop(
        net,
        OP1,
        "registry",
        "register_worker",
        code="registry.policy_measurement",
        **net.register_args(worker),
    )
    assert OTHER_MEASUREMENT.hex() in (receipt.message or "")


def test_debug_evidence_is_refused(net: Net) -> None:
    worker = make_worker("dbg", OP1, debug=True)
    receipt = assert_noop(
        net,
        OP1,
        "registry",
        "register_worker",
        code="registry.attestation_refused",
        **net.register_args(worker),
    )
    assert "debug" in (receipt.message or "")


def test_expired_hardware_certificate_is_refused(net: Net) -> None:
    cpu = AUTHORITY.issue_hardware(now=GENESIS_AT - timedelta(days=10), valid_for=timedelta(days=1))
    worker = make_worker("old-cpu", OP1, cpu=cpu)
    receipt = assert_noop(
        net,
        OP1,
        "registry",
        "register_worker",
        code="registry.attestation_refused",
        **net.register_args(worker),
    )
    assert "expired" in (receipt.message or "")


@pytest.mark.parametrize("offset", [timedelta(hours=-1), timedelta(minutes=-11), timedelta(minutes=5)])
def test_evidence_dated_outside_the_window_is_refused(net: Net, offset: timedelta) -> None:
    worker = make_worker("w1", OP1)
    args = net.register_args(worker, at=net.next_time() + offset)
    receipt = assert_noop(net, OP1, "registry", "register_worker", code="registry.policy_freshness", **args)
    assert "freshness" in (receipt.message or "")


def test_the_policy_max_age_decides_freshness() -> None:
    worker = make_worker("w1", OP1)
    lenient = Net.create()
    lenient.register(worker, at=lenient.next_time() - timedelta(seconds=300))  # default max age 600 s
    strict = Net.create(policy=default_policy(max_evidence_age_s=60))
    args = strict.register_args(worker, at=strict.next_time() - timedelta(seconds=300))
    assert_noop(strict, OP1, "registry", "register_worker", code="registry.policy_freshness", **args)
    strict.register(worker, at=strict.next_time() - timedelta(seconds=30))


def test_report_data_bound_to_other_keys_is_refused(net: Net) -> None:
    worker = make_worker("w1", OP1)
    other = make_worker("w2", OP1)
    bound_elsewhere = [
        # another worker's keys
        report_data_binding(
            chain_id=CHAIN_ID,
            genesis_hash=net.runtime.genesis.hash,
            identity_pk=other.id,
            ecdh_pk=other.ecdh.public_key,
            tee_type="sim",
            runtime_version=1,
        ),
        # our keys, on another chain
        report_data_binding(
            chain_id="another-chain",
            genesis_hash=net.runtime.genesis.hash,
            identity_pk=worker.id,
            ecdh_pk=worker.ecdh.public_key,
            tee_type="sim",
            runtime_version=1,
        ),
        # our identity, another ECDH key (the host swapped the key inputs are sealed to)
        report_data_binding(
            chain_id=CHAIN_ID,
            genesis_hash=net.runtime.genesis.hash,
            identity_pk=worker.id,
            ecdh_pk=other.ecdh.public_key,
            tee_type="sim",
            runtime_version=1,
        ),
    ]
    for report_data in bound_elsewhere:
        args = net.register_args(worker, report_data=report_data)
        assert_noop(net, OP1, "registry", "register_worker", code="registry.policy_binding", **args)


def test_bad_binding_signature_is_refused(net: Net) -> None:
    worker = make_worker("w1", OP1)
    # signed for another operator: a registration cannot be replayed by someone else
    args = net.register_args(worker, binding_operator=OP2.public_key)
    assert_noop(net, OP1, "registry", "register_worker", code="registry.bad_binding_signature", **args)
    # OP2 replays OP1's genuine registration tx body
    args = net.register_args(worker)
    assert_noop(net, OP2, "registry", "register_worker", code="registry.bad_binding_signature", **args)
    # signed by a key other than the identity
    args = net.register_args(worker, binding_sig=OP1.sign("umbra/worker-binding/v1", {"x": 1}))
    assert_noop(net, OP1, "registry", "register_worker", code="registry.bad_binding_signature", **args)


def test_sim_is_refused_when_the_policy_disallows_it() -> None:
    net = Net.create(policy=default_policy(allow_sim=False))
    worker = make_worker("w1", OP1)
    receipt = assert_noop(
        net, OP1, "registry", "register_worker", code="registry.policy_policy", **net.register_args(worker)
    )
    assert "simulated" in (receipt.message or "")


def test_evidence_of_another_tee_type_is_refused(net: Net) -> None:
    worker = make_worker("w1", OP1)
    args = net.register_args(worker, tee_type="sev-snp")
    assert_noop(net, OP1, "registry", "register_worker", code="registry.attestation_refused", **args)


def test_another_operator_cannot_take_over_an_identity(net: Net) -> None:
    worker = make_worker("w1", OP1)
    net.register(worker)
    stolen = make_worker("w1", OP2)  # same identity key, another operator (who signs a binding for itself)
    assert stolen.id == worker.id
    assert_noop(
        net, OP2, "registry", "register_worker", code="registry.not_operator", **net.register_args(stolen)
    )
    assert net.worker(worker)["operator"] == OP1.public_key


def test_reattestation_keeps_keys_and_role(net: Net) -> None:
    worker = make_worker("w1", OP1)
    net.register(worker)
    changed_key = make_worker("w1", OP1)
    changed_key.ecdh = make_worker("w9", OP1).ecdh
    assert_noop(
        net, OP1, "registry", "register_worker", code="registry.bad_key", **net.register_args(changed_key)
    )
    promoted = make_worker("w1", OP1, role="gatekeeper")
    assert_noop(
        net, OP1, "registry", "register_worker", code="registry.bad_role", **net.register_args(promoted)
    )


# ---- re-attestation, heartbeats, timers ------------------------------------------------------------


def test_reattestation_extends_expiry() -> None:
    net = Net.create(registry={"attestation_ttl_ms": 5_000})
    worker = make_worker("w1", OP1)
    net.register(worker)
    first = net.worker(worker)
    registered_at = net.height
    net.advance(20)
    outcome = net.register(worker)
    (event,) = events_named(outcome, "registry", "WorkerReattested")
    record = net.worker(worker)
    assert event == {"worker": worker.id, "expires_at_ms": net.head.time_ms + 5_000}
    assert record["expires_at_ms"] > first["expires_at_ms"]
    assert record["registered_height"] == registered_at
    assert events_named(outcome, "registry", "WorkerRegistered") == []
    assert net.runtime.registry.worker_ids(net.state()) == [worker.id]


def test_heartbeat_checks_and_silence_makes_a_worker_unresponsive() -> None:
    net = Net.create(registry={"heartbeat_blocks": 5, "missed_heartbeats": 2})
    worker = make_worker("w1", OP1)
    chatty = make_worker("w2", OP2)
    net.register(worker)
    net.register(chatty)
    body = {"chain_id": CHAIN_ID, "worker": worker.id, "height": net.height}
    good = worker.identity.sign("umbra/heartbeat/v1", body)
    assert_noop(
        net, OP1, "registry", "heartbeat", code="registry.bad_signature",
        worker=worker.id, height=net.height - 1, signature=good,
    )  # fmt: skip
    assert_noop(
        net, OP2, "registry", "heartbeat", code="registry.not_operator",
        worker=worker.id, height=body["height"], signature=good,
    )  # fmt: skip
    assert_noop(
        net, OP1, "registry", "heartbeat", code="registry.stale_heartbeat",
        worker=worker.id, height=net.height + 5, signature=good,
    )  # fmt: skip
    assert_noop(
        net, OP1, "registry", "heartbeat", code="registry.unknown_worker",
        worker=USER.public_key, height=net.height, signature=good,
    )  # fmt: skip
    outcome = net.heartbeat(worker)
    assert events_named(outcome, "registry", "WorkerOnline") == []  # nothing to say while active
    silent_since = net.height
    outcomes = []
    while net.height < silent_since + 16:
        if net.height % 3 == 0:
            net.heartbeat(chatty)
        outcomes.append(net.produce())
    unresponsive = all_events(outcomes, "registry", "WorkerUnresponsive")
    assert [e["worker"] for e in unresponsive] == [worker.id]
    assert net.worker(worker)["status"] == "unresponsive"
    assert net.worker(chatty)["status"] == "active"
    assert not net.runtime.registry.is_attested(net.state(), worker.id, net.head.time_ms)
    outcome = net.heartbeat(worker)
    assert events_named(outcome, "registry", "WorkerOnline") == [{"worker": worker.id}]
    assert net.worker(worker)["status"] == "active"


def test_attestation_expiry_makes_a_worker_expired_until_it_reattests() -> None:
    net = Net.create(registry={"attestation_ttl_ms": 1_000, "heartbeat_blocks": 5})
    worker = make_worker("w1", OP1)
    net.register(worker)
    expires = net.worker(worker)["expires_at_ms"]
    outcomes = []
    while net.head.time_ms < expires:
        assert net.runtime.registry.is_attested(net.state(), worker.id, net.head.time_ms)
        outcomes.append(net.produce())
    # ineligible from the moment it expires, whatever the status says until the timer runs
    assert not net.runtime.registry.is_attested(net.state(), worker.id, net.head.time_ms)
    outcomes += net.advance(5)
    assert [e["worker"] for e in all_events(outcomes, "registry", "WorkerExpired")] == [worker.id]
    assert net.worker(worker)["status"] == "expired"
    net.register(worker)
    assert net.worker(worker)["status"] == "active"
    assert net.runtime.registry.is_attested(net.state(), worker.id, net.head.time_ms)


# ---- council -------------------------------------------------------------------------------------


def test_revoke_worker_takes_effect_in_its_block_and_starts_a_rotation(net: Net) -> None:
    w1, w2 = make_worker("w1", OP1), make_worker("w2", OP2)
    gatekeeper = net.bootstrap(w1, w2)
    contract = net.deploy()
    # the council revokes w1 in the same block as a request: the scheduler must not pick w1
    revoke = net.tx(
        COUNCIL, "council", "propose", module="registry", method="revoke_worker", args={"worker": w1.id}
    )
    request = net.request_tx(USER, contract)
    outcome = net.produce(revoke, request)
    assert [r.ok for r in outcome.receipts] == [True, True]
    assert events_named(outcome, "registry", "WorkerRevoked") == [
        {"worker": w1.id, "reason": "revoked by the council"}
    ]
    assert events_named(outcome, "keys", "RotationStarted") == [{"epoch": 1}]
    (assigned,) = events_named(outcome, "compute", "JobAssigned")
    assert assigned["workers"] == [w2.id]
    assert net.worker(w1)["status"] == "revoked"
    # a revoked identity cannot come back, nor receive keys
    assert_noop(net, OP1, "registry", "register_worker", code="registry.revoked", **net.register_args(w1))
    args = net.handover_args(gatekeeper, w1, epoch=0)
    assert_noop(net, gatekeeper.operator, "keys", "handover", code="keys.worker_not_attested", **args)
    assert_council_noop(
        net, "registry", "revoke_worker", code="registry.unknown_worker", worker=USER.public_key
    )


def test_revoke_measurement_revokes_every_worker_running_it() -> None:
    net = Net.create(
        policy=default_policy(measurements={"sim": [MEASUREMENT.hex(), OTHER_MEASUREMENT.hex()]})
    )
    old1, old2 = make_worker("w1", OP1), make_worker("w2", OP2)
    new = make_worker("w3", OP1, measurement=OTHER_MEASUREMENT)
    net.bootstrap(old1, old2, new)
    outcome = net.council(
        "registry", "revoke_measurement", measurement_class="sim", measurement="0x" + MEASUREMENT.hex()
    )
    revoked = {e["worker"] for e in events_named(outcome, "registry", "WorkerRevoked")}
    gatekeeper_id = [
        w for w in net.runtime.registry.worker_ids(net.state()) if net.worker(w)["role"] == "gatekeeper"
    ]
    assert revoked == {old1.id, old2.id, *gatekeeper_id}  # the gatekeeper runs the same code
    assert events_named(outcome, "keys", "RotationStarted") == [{"epoch": 1}]
    assert net.worker(new)["status"] == "active"
    fresh = make_worker("w4", OP2)
    assert_noop(
        net,
        OP2,
        "registry",
        "register_worker",
        code="registry.measurement_revoked",
        **net.register_args(fresh),
    )


def test_set_policy_revokes_workers_it_no_longer_accepts(net: Net) -> None:
    w1 = make_worker("w1", OP1)
    net.bootstrap(w1)
    assert_council_noop(net, "registry", "set_policy", code="registry.bad_policy", policy={"nonsense": 1})
    outcome = net.council("registry", "set_policy", policy=default_policy(allow_sim=False))
    revoked = [e["worker"] for e in events_named(outcome, "registry", "WorkerRevoked")]
    assert w1.id in revoked
    assert events_named(outcome, "keys", "RotationStarted") == [{"epoch": 1}]
    assert not net.eligible(w1)
    assert net.runtime.registry.policy(net.state()).allow_sim is False
