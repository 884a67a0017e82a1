"""keys: the master key published once by an elected gatekeeper, handovers only to attested
workers, contract keys only from gatekeepers holding the epoch, and rotations."""

from __future__ import annotations

from tests.modules.net import (
    GK_OP,
    OP1,
    OP2,
    USER,
    Net,
    assert_council_noop,
    assert_noop,
    events_named,
    make_worker,
)


def test_init_master_only_from_a_gatekeeper_operators_registered_gatekeeper_once(net: Net) -> None:
    gatekeeper = make_worker("gk", GK_OP, role="gatekeeper")
    # not registered yet
    args = net.init_master_args(gatekeeper)
    assert_noop(net, GK_OP, "keys", "init_master", code="keys.unknown_gatekeeper", **args)
    # a gatekeeper-role worker of an operator the council did not elect
    rogue = make_worker("rogue", OP1, role="gatekeeper")
    net.register(rogue)
    assert_noop(
        net, OP1, "keys", "init_master", code="keys.not_gatekeeper_operator", **net.init_master_args(rogue)
    )
    # an elected operator's plain worker
    plain = make_worker("plain", GK_OP)
    net.register(plain)
    assert_noop(net, GK_OP, "keys", "init_master", code="keys.not_gatekeeper", **net.init_master_args(plain))
    net.register(gatekeeper)
    # someone else posting for the gatekeeper
    assert_noop(net, OP1, "keys", "init_master", code="keys.not_operator", **args)
    # a signature by another key
    forged = {**args, "signature": plain.identity.sign("umbra/master-key/v1", {"x": 1})}
    assert_noop(net, GK_OP, "keys", "init_master", code="keys.bad_signature", **forged)
    outcome = net.init_master(gatekeeper)
    assert events_named(outcome, "keys", "MasterKeyPublished") == [
        {"epoch": 0, "master_pk": args["master_pk"], "gatekeeper": gatekeeper.id}
    ]
    assert net.runtime.keys.current_epoch(net.state()) == 0
    assert net.runtime.keys.has_current_key(net.state(), gatekeeper.id)
    assert_noop(net, GK_OP, "keys", "init_master", code="keys.master_exists", **args)


def test_handover_goes_only_to_attested_workers_from_gatekeepers() -> None:
    net = Net.create(registry={"attestation_ttl_ms": 2_000, "heartbeat_blocks": 5})
    worker = make_worker("w1", OP1)
    gatekeeper = net.bootstrap()
    assert_noop(
        net, GK_OP, "keys", "handover", code="keys.unknown_worker", **net.handover_args(gatekeeper, worker)
    )
    net.register(worker)
    # from a non-gatekeeper: the worker's own operator, naming its worker as the gatekeeper
    other = make_worker("w2", OP2)
    net.register(other)
    args = net.handover_args(worker, other)
    assert_noop(net, OP1, "keys", "handover", code="keys.not_gatekeeper_operator", **args)
    # an epoch without a master key
    args = net.handover_args(gatekeeper, worker, epoch=7)
    assert_noop(net, GK_OP, "keys", "handover", code="keys.unknown_epoch", **args)
    # a signature that does not cover this ciphertext
    args = net.handover_args(gatekeeper, worker)
    args["ciphertext"] = args["ciphertext"][:-1] + bytes([args["ciphertext"][-1] ^ 1])
    assert_noop(net, GK_OP, "keys", "handover", code="keys.bad_signature", **args)
    outcome = net.handover(gatekeeper, worker)
    assert events_named(outcome, "keys", "KeyHandedOver") == [
        {"gatekeeper": gatekeeper.id, "worker": worker.id, "epoch": 0}
    ]
    assert net.runtime.keys.has_current_key(net.state(), worker.id)
    assert_noop(
        net,
        GK_OP,
        "keys",
        "handover",
        code="keys.already_handed_over",
        **net.handover_args(gatekeeper, worker),
    )
    # expired: the attestation of `other` lapses (keep the gatekeeper fresh)
    expires = net.worker(other)["expires_at_ms"]
    while net.head.time_ms + 100 < expires:
        net.produce()
    net.register(gatekeeper)
    net.advance(1)
    args = net.handover_args(gatekeeper, other)
    assert_noop(net, GK_OP, "keys", "handover", code="keys.worker_not_attested", **args)


def test_handover_refused_to_unresponsive_and_revoked_workers() -> None:
    net = Net.create(registry={"heartbeat_blocks": 5, "missed_heartbeats": 1})
    w1, w2 = make_worker("w1", OP1), make_worker("w2", OP2)
    gatekeeper = net.bootstrap()
    net.register(w1)
    net.register(w2)
    net.council("registry", "revoke_worker", worker=w1.id)
    assert_noop(
        net, GK_OP, "keys", "handover", code="keys.worker_not_attested", **net.handover_args(gatekeeper, w1)
    )
    while net.worker(w2)["status"] == "active":
        net.heartbeat(gatekeeper)
    assert net.worker(w2)["status"] == "unresponsive"
    assert_noop(
        net, GK_OP, "keys", "handover", code="keys.worker_not_attested", **net.handover_args(gatekeeper, w2)
    )
    net.heartbeat(w2)
    net.handover(gatekeeper, w2)


def test_a_self_declared_gatekeeper_of_an_unelected_operator_never_holds_the_master(net: Net) -> None:
    gatekeeper = net.bootstrap()
    rogue = make_worker("rogue", OP1, role="gatekeeper")
    net.register(rogue)
    net.handover(gatekeeper, rogue)  # the gatekeeper hands the key to every attested worker
    assert rogue.id not in net.runtime.keys.gatekeepers.get(net.state())
    contract = net.deploy()
    args = net.contract_key_args(rogue, contract)
    assert_noop(net, OP1, "keys", "publish_contract_key", code="keys.not_gatekeeper_operator", **args)


def test_publish_contract_key_only_from_a_gatekeeper_holding_the_epoch(net: Net) -> None:
    worker = make_worker("w1", OP1)
    gatekeeper = net.bootstrap(worker)
    second = make_worker("gk2", GK_OP, role="gatekeeper")
    net.register(second)
    contract = net.deploy()
    assert_noop(
        net, OP1, "keys", "publish_contract_key", code="keys.not_gatekeeper_operator",
        **net.contract_key_args(worker, contract),
    )  # fmt: skip
    # an elected, registered gatekeeper that was never handed the master key
    assert_noop(
        net, GK_OP, "keys", "publish_contract_key", code="keys.not_gatekeeper",
        **net.contract_key_args(second, contract),
    )  # fmt: skip
    assert_noop(
        net, GK_OP, "keys", "publish_contract_key", code="keys.unknown_contract",
        **net.contract_key_args(gatekeeper, USER.public_key),
    )  # fmt: skip
    assert_noop(
        net, GK_OP, "keys", "publish_contract_key", code="keys.unknown_epoch",
        **net.contract_key_args(gatekeeper, contract, epoch=3),
    )  # fmt: skip
    args = net.contract_key_args(gatekeeper, contract)
    outcome = net.ok(GK_OP, "keys", "publish_contract_key", **args)
    (published,) = events_named(outcome, "keys", "ContractKeyPublished")
    assert published["contract"] == contract and published["epoch"] == 0
    stored = net.runtime.keys.contract_key(net.state(), contract)
    assert (
        stored is not None and stored["gatekeeper"] == gatekeeper.id and stored["ecdh_pk"] == args["ecdh_pk"]
    )
    assert_noop(net, GK_OP, "keys", "publish_contract_key", code="keys.already_published", **args)
    # once handed the key, the second gatekeeper holds the epoch too
    net.handover(gatekeeper, second)
    assert second.id in net.runtime.keys.gatekeepers.get(net.state())
    other_contract = net.deploy()
    net.ok(GK_OP, "keys", "publish_contract_key", **net.contract_key_args(second, other_contract))


def test_rotation_and_publish_master(net: Net) -> None:
    assert_council_noop(net, "keys", "rotate", code="keys.no_master")
    w1, w2 = make_worker("w1", OP1), make_worker("w2", OP2)
    gatekeeper = net.bootstrap(w1, w2)
    second = make_worker("gk2", GK_OP, role="gatekeeper")
    net.register(second)
    net.handover(gatekeeper, second)
    contract = net.deploy()
    assert_noop(
        net,
        GK_OP,
        "keys",
        "publish_master",
        code="keys.no_rotation",
        **net.publish_master_args(gatekeeper, 1),
    )
    outcome = net.council("keys", "rotate")
    assert events_named(outcome, "keys", "RotationStarted") == [{"epoch": 1}]
    assert_council_noop(net, "keys", "rotate", code="keys.rotation_pending")
    assert_noop(
        net,
        GK_OP,
        "keys",
        "publish_master",
        code="keys.no_rotation",
        **net.publish_master_args(gatekeeper, 2),
    )
    assert net.eligible(w1)  # until the new key exists, the old epoch is current
    outcome = net.ok(GK_OP, "keys", "publish_master", **net.publish_master_args(gatekeeper, 1))
    assert events_named(outcome, "keys", "MasterKeyPublished") == [
        {"epoch": 1, "master_pk": net.master_pk(1), "gatekeeper": gatekeeper.id}
    ]
    keys, state = net.runtime.keys, net.state()
    assert keys.current_epoch(state) == 1 and keys.pending_epoch.get(state) is None
    assert keys.gatekeepers.get(state) == [gatekeeper.id]
    # workers hold only the old epoch: not eligible, so a job waits for the handover
    assert not net.eligible(w1) and not net.eligible(w2)
    assert keys.holds_epoch(state, w1.id, 0)
    job = net.request(USER, contract)
    assert net.job(job)["status"] == "queued"
    # the other gatekeeper no longer holds the current epoch until it is handed it
    assert_noop(
        net, GK_OP, "keys", "publish_contract_key", code="keys.not_gatekeeper",
        **net.contract_key_args(second, contract, epoch=1),
    )  # fmt: skip
    outcome = net.handover(gatekeeper, w1)
    assert net.assigned(outcome, job) == [w1.id]
    net.handover(gatekeeper, second)
    net.ok(GK_OP, "keys", "publish_contract_key", **net.contract_key_args(second, contract, epoch=1))
