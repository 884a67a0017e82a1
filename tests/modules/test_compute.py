"""contracts + compute: deploy, escrowed requests, the deterministic scheduler, result checks,
settlement (fees, treasury cut, refunds, value and transfers), replicas and disputes, deadlines
and reputation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chain.helpers import assert_refused
from tests.modules.net import (
    CODE,
    COUNCIL,
    OP1,
    OP2,
    OP3,
    OP4,
    USER,
    USER2,
    Net,
    SimWorker,
    all_events,
    assert_noop,
    events_named,
    make_worker,
    supply_conserved,
)
from umbra import codec
from umbra.chain.modules.balances import TREASURY
from umbra.chain.modules.contracts import contract_account
from umbra.chain.modules.staking import pool_account


def keyed(net: Net, *workers: SimWorker) -> SimWorker:
    """Bootstrap the gatekeeper and key `workers`; returns the gatekeeper."""
    return net.bootstrap(*workers)


@pytest.fixture
def econ() -> Net:
    """A network with round numbers: job fee 100 per replica, 10 % treasury cut."""
    return Net.create(params={"job_fee": 100, "treasury_cut_ppm": 100_000, "job_deadline_blocks": 5})


# ---- contracts -----------------------------------------------------------------------------------


def test_deploy_stores_public_code(net: Net) -> None:
    outcome = net.ok(USER, "contracts", "deploy", code=CODE, manifest={"name": "c"})
    (deployed,) = events_named(outcome, "contracts", "ContractDeployed")
    contract = deployed["contract"]
    tx_hash = outcome.included[0].hash
    assert contract == codec.sha256(
        codec.encode({"owner": USER.public_key, "tx": tx_hash, "code_hash": codec.sha256(CODE)})
    )
    record = net.runtime.contracts.record(net.state(), contract)
    assert record is not None
    assert (record["owner"], record["code_hash"], record["account"]) == (
        USER.public_key,
        codec.sha256(CODE),
        contract_account(contract),
    )
    assert net.runtime.contracts.code.get(net.state(), contract) == CODE
    assert net.runtime.contracts.current_state(net.state(), contract)["version"] == 0
    assert_noop(
        net,
        USER,
        "contracts",
        "deploy",
        code="contracts.bad_code",
        call_args={"code": b"\xff\xfe", "manifest": {}},
    )
    assert_noop(
        net,
        USER,
        "contracts",
        "deploy",
        code="contracts.bad_manifest",
        call_args={"code": CODE, "manifest": {"x": 1}},
    )


def test_only_the_owner_uploads_secrets_and_blobs(net: Net) -> None:
    contract = net.deploy(USER)
    assert_noop(
        net, USER2, "contracts", "upload_secret", contract=contract, name="k", sealed=b"x",
        code="contracts.not_owner",
    )  # fmt: skip
    outcome = net.ok(USER, "contracts", "upload_secret", contract=contract, name="k", sealed=b"sealed")
    assert events_named(outcome, "contracts", "SecretUploaded")[0]["hash"] == codec.sha256(b"sealed")
    assert_noop(
        net, USER2, "contracts", "register_blob", contract=contract, blob_hash=bytes(32), size=1,
        code="contracts.not_owner",
    )  # fmt: skip


# ---- requests ------------------------------------------------------------------------------------


def test_request_escrows_the_fee_and_value(econ: Net) -> None:
    net = econ
    contract = net.deploy()
    before = net.account(USER)
    job = net.request(USER, contract, max_fee=250, value=40)
    after = net.account(USER)
    assert after["reserved"] - before["reserved"] == 290
    assert before["free"] - after["free"] == 290 + 1  # the tx fee on top
    record = net.job(job)
    assert (record["status"], record["max_fee"], record["value"], record["fee"]) == ("queued", 250, 40, 100)
    assert record["requester"] == USER.public_key


def test_request_refusals(econ: Net) -> None:
    net = econ
    contract = net.deploy()

    def args(**kw: Any) -> dict[str, Any]:
        stx = net.request_tx(USER, contract, **kw)
        return dict(stx.tx.call.args)

    assert_noop(net, USER, "compute", "request", code="compute.fee_too_low", **args(max_fee=199, replicas=2))
    assert_noop(
        net, USER, "compute", "request", code="compute.unknown_contract", **{**args(), "contract": bytes(32)}
    )
    assert_noop(net, USER, "compute", "request", code="compute.bad_replicas", **args(replicas=8, max_fee=800))
    assert_noop(net, USER, "compute", "request", code="compute.bad_deadline", **args(deadline_blocks=1))
    assert_noop(net, USER, "compute", "request", code="compute.bad_distinct", **args(distinct="planets"))
    assert_noop(net, USER, "compute", "request", code="compute.bad_nonce", **args(nonce=net.nonce(USER) + 1))
    # a request the sender cannot cover never enters a block
    poor = net.request_tx(USER, contract, max_fee=10**12)
    assert_refused(net, poor, code="insufficient_funds")


# ---- scheduling ----------------------------------------------------------------------------------


def _tie(net: Net, job: bytes, worker: SimWorker) -> int:
    """Ring distance from the job's point, SHA-256(parent || job), to the worker's, SHA-256(id)."""
    start = int.from_bytes(codec.sha256(net.head.parent + job), "big")
    point = int.from_bytes(codec.sha256(b"umbra/ring/" + worker.id), "big")
    return (point - start) % (1 << 256)


def test_least_load_first_ties_by_hash_and_contracts_run_in_parallel(net: Net) -> None:
    w1, w2 = make_worker("w1", OP1), make_worker("w2", OP2)
    keyed(net, w1, w2)
    c1, c2, c3 = net.deploy(), net.deploy(), net.deploy()
    outcome = net.produce(net.request_tx(USER, c1), net.request_tx(USER2, c2))
    first, second = (e["job"] for e in events_named(outcome, "compute", "JobRequested"))
    by_hash = min((w1, w2), key=lambda w: _tie(net, first, w))
    assert net.assigned(outcome, first) == [by_hash.id]
    other = w2 if by_hash is w1 else w1
    assert net.assigned(outcome, second) == [other.id]  # least load: the idle one
    # both carry one job: the next goes by hash again
    job = net.request(USER, c3)
    expected = min((w1, w2), key=lambda w: _tie(net, job, w))
    assert net.job(job)["workers"] == [expected.id]


def test_commands_on_one_contract_run_one_at_a_time(net: Net) -> None:
    w1, w2 = make_worker("w1", OP1), make_worker("w2", OP2)
    keyed(net, w1, w2)
    contract = net.deploy()
    outcome = net.produce(net.request_tx(USER, contract), net.request_tx(USER2, contract))
    first, second = (e["job"] for e in events_named(outcome, "compute", "JobRequested"))
    assert [e["job"] for e in events_named(outcome, "compute", "JobAssigned")] == [first]
    assert net.job(second)["status"] == "queued"
    net.advance(2)
    assert net.job(second)["status"] == "queued"  # still waiting: the first is running
    (worker,) = (w for w in (w1, w2) if w.id in net.job(first)["workers"])
    outcome = net.submit(worker, first, new_state=b"after-first")
    assert events_named(outcome, "compute", "JobSettled")[0]["job"] == first
    (assigned,) = events_named(outcome, "compute", "JobAssigned")
    assert assigned["job"] == second
    assert assigned["state_hash"] == codec.sha256(b"after-first") and assigned["state_version"] == 1
    assert net.job(second)["prev_state_hash"] == codec.sha256(b"after-first")


def test_only_attested_keyed_staked_workers_get_jobs() -> None:
    net = Net.create(params={"min_stake": 100})
    staked, thin, unstaked = make_worker("w1", OP1), make_worker("w2", OP2), make_worker("w3", OP3)
    unkeyed = make_worker("w4", OP4)
    gatekeeper = keyed(net, staked, thin, unstaked)
    net.register(unkeyed)
    net.stake(staked, 100)
    net.stake(thin, 99)
    net.stake(unkeyed, 1000)
    contract = net.deploy()
    for _ in range(3):
        job = net.request(USER, contract)
        assert net.job(job)["workers"] == [staked.id]
        net.submit(staked, job)
    assert net.job(job)["status"] == "settled"
    assert gatekeeper.id not in net.job(job)["workers"]
    # once the staked worker is revoked nobody eligible is left: the job waits
    net.council("registry", "revoke_worker", worker=staked.id)
    job = net.request(USER, contract)
    net.advance(3)
    assert net.job(job)["status"] == "queued"


# ---- result checks -------------------------------------------------------------------------------


def test_result_checks(net: Net) -> None:
    w1, w2 = make_worker("w1", OP1), make_worker("w2", OP2)
    keyed(net, w1, w2)
    contract = net.deploy()
    job = net.request(USER, contract)
    (assigned,) = net.job(job)["workers"]
    worker, other = (w1, w2) if assigned == w1.id else (w2, w1)
    op = worker.operator

    def noop(code: str, signer: Any = None, **tamper: Any) -> None:
        assert_noop(
            net, signer or op, "compute", "submit_result", code=code, **net.result(worker, job, **tamper)
        )

    noop("compute.bad_signature", signature=other.identity.sign("umbra/result/v1", {"x": 1}))
    noop("compute.stale_state", prev_state_hash=codec.sha256(b"some other state"))
    noop("compute.bad_code_hash", code_hash=codec.sha256(b"other code"))
    noop("compute.bad_input_hash", input_hash=codec.sha256(b"other input"))
    noop("compute.bad_output", sealed_output=b"not what was hashed")
    noop("compute.bad_state", state_blob=b"not the new state")
    noop("compute.bad_result", transfers=[[b"short", 5]])
    noop("compute.bad_result", events=[{"nom": "x"}])
    noop("compute.bad_result", contract=bytes(32))
    noop("compute.not_operator", signer=other.operator)
    args = net.result(worker, job)
    body = {**args["body"], "job": bytes(32)}
    args.update(body=body, signature=worker.identity.sign("umbra/result/v1", body))
    assert_noop(net, op, "compute", "submit_result", code="compute.unknown_job", **args)
    net.submit(worker, job)
    assert net.job(job)["status"] == "settled"


def test_results_for_unassigned_jobs_are_refused_counted_and_then_slashed(econ: Net) -> None:
    net = econ
    w1, w2 = make_worker("w1", OP1), make_worker("w2", OP2)
    keyed(net, w1, w2)
    net.stake(w1, 5_000)
    net.stake(w2, 5_000)
    contract = net.deploy()
    job = net.request(USER, contract)
    (assigned,) = net.job(job)["workers"]
    intruder = w2 if assigned == w1.id else w1
    record = net.job(job)
    for count in (1, 2, 3):
        outcome = net.submit(intruder, job)  # included and successful, so the count persists
        (refused,) = events_named(outcome, "compute", "ResultRefused")
        assert (refused["job"], refused["worker"], refused["count"]) == (job, intruder.id, count)
        assert events_named(outcome, "compute", "ResultSubmitted") == []
        assert net.job(job) == record
    (slashed,) = events_named(outcome, "staking", "Slashed")
    assert (slashed["worker"], slashed["amount"]) == (intruder.id, 100)
    assert net.pool(intruder)["stake"] == 4_900  # type: ignore[index]
    assert net.score(intruder) == 490
    assert net.runtime.compute.refusals.get(net.state(), intruder.id) is None


def test_a_duplicate_or_revoked_replica_result_is_refused(econ: Net) -> None:
    net = econ
    workers = [make_worker(f"w{i}", op) for i, op in enumerate((OP1, OP2, OP3), 1)]
    keyed(net, *workers)
    contract = net.deploy()
    job = net.request(USER, contract, replicas=3)
    first, second, _ = workers
    net.submit(first, job)
    args = net.result(first, job)
    assert_noop(net, OP1, "compute", "submit_result", code="compute.duplicate_result", **args)
    net.council("registry", "revoke_worker", worker=second.id)
    args = net.result(second, job)
    assert_noop(net, OP2, "compute", "submit_result", code="compute.not_attested", **args)


# ---- settlement ----------------------------------------------------------------------------------


def test_settlement_pays_workers_the_treasury_and_the_contract_and_refunds_the_rest(econ: Net) -> None:
    net = econ
    worker = make_worker("w1", OP1)
    keyed(net, worker)
    contract = net.deploy()
    account = contract_account(contract)
    with supply_conserved(net):
        start_user, start_op = net.account(USER), net.free(OP1)
        job = net.request(USER, contract, max_fee=250, value=40)
        treasury = net.free(TREASURY)
        outcome = net.submit(
            worker, job, transfers=[[USER2.public_key, 30]], events=[{"name": "E", "data": 7}]
        )
        (settled,) = events_named(outcome, "compute", "JobSettled")
        assert (settled["workers"], settled["failed"]) == ([worker.id], False)
        assert events_named(outcome, "contracts", "ContractEvent") == [
            {"contract": contract, "name": "E", "data": 7}
        ]
        assert net.free(OP1) - start_op == 90 - 1  # fee 100 less the 10 % cut, less its own tx fee
        assert net.free(TREASURY) - treasury == 10 + 1  # the cut and the submit tx's fee
        assert net.free(account) == 40 - 30
        assert net.free(USER2) == 10**9 + 30
        user = net.account(USER)
        assert user["reserved"] == start_user["reserved"]
        assert start_user["free"] - user["free"] == 100 + 40 + 1  # fee, value, request tx fee
        state = net.runtime.contracts.current_state(net.state(), contract)
        assert state["version"] == 1 and state["state_hash"] == codec.sha256(b"state-1")
        assert state["blob"] == b"state-1"
        # the contract pays out of what it holds, never more
        job = net.request(USER, contract, max_fee=100)
        outcome = net.submit(worker, job, transfers=[[USER2.public_key, 11]], new_state=b"state-2")
        (settled,) = events_named(outcome, "compute", "JobSettled")
        assert settled["failed"] is True and "cannot cover" in settled["reason"]
        assert net.free(account) == 10
        assert net.runtime.contracts.current_state(net.state(), contract)["version"] == 1
        assert net.account(USER)["reserved"] == start_user["reserved"]


def test_a_failed_job_keeps_state_pays_the_fee_and_refunds_the_value(econ: Net) -> None:
    net = econ
    worker = make_worker("w1", OP1)
    keyed(net, worker)
    contract = net.deploy()
    net.submit(worker, net.request(USER, contract), new_state=b"v1")
    before_user, before_op = net.account(USER), net.free(OP1)
    job = net.request(USER, contract, value=500)
    outcome = net.submit(worker, job, failed=True, new_state=b"garbage", transfers=[[USER2.public_key, 1]])
    (settled,) = events_named(outcome, "compute", "JobSettled")
    assert settled["failed"] is True
    assert net.job(job)["status"] == "failed"
    state = net.runtime.contracts.current_state(net.state(), contract)
    assert state["version"] == 1 and state["state_hash"] == codec.sha256(b"v1")
    assert net.free(contract_account(contract)) == 0
    assert net.free(USER2) == 10**9
    assert net.account(USER)["reserved"] == before_user["reserved"]
    assert before_user["free"] - net.free(USER) == 100 + 1
    assert net.free(OP1) - before_op == 90 - 1


def test_a_job_fee_raised_after_the_request_does_not_break_settlement(econ: Net) -> None:
    net = econ
    worker = make_worker("w1", OP1)
    keyed(net, worker)
    contract = net.deploy()
    job = net.request(USER, contract, max_fee=100)
    net.council("system", "set_param", name="job_fee", value=1_000)
    with supply_conserved(net):
        net.submit(worker, job)
    assert net.job(job)["status"] == "settled"
    assert net.account(USER)["reserved"] == 0


# ---- replicas ------------------------------------------------------------------------------------


def three_staked(net: Net) -> list[SimWorker]:
    workers = [make_worker(f"w{i}", op) for i, op in enumerate((OP1, OP2, OP3), 1)]
    keyed(net, *workers)
    for worker in workers:
        net.stake(worker, 5_000)
    return workers


def test_majority_settles_and_the_dissenter_is_slashed(econ: Net) -> None:
    net = econ
    w1, w2, w3 = three_staked(net)
    contract = net.deploy()
    with supply_conserved(net):
        job = net.request(USER, contract, replicas=3)
        assert sorted(net.job(job)["workers"]) == sorted(w.id for w in (w1, w2, w3))
        ops = {op: net.free(op) for op in (OP1, OP2, OP3)}
        user, treasury = net.free(USER), net.free(TREASURY)
        net.submit(w1, job)
        outcome = net.submit(w3, job, output=b"lie")
        assert events_named(outcome, "compute", "JobSettled") == []  # 1 vs 1: not yet
        outcome = net.submit(w2, job)
        (settled,) = events_named(outcome, "compute", "JobSettled")
        assert settled["workers"] == sorted([w1.id, w2.id])
        (slashed,) = events_named(outcome, "staking", "Slashed")
        assert (slashed["worker"], slashed["amount"], slashed["reason"]) == (
            w3.id,
            1_000,
            "dissenting replica",
        )
        record = net.runtime.staking.slashes.get(net.state(), slashed["slash"])
        assert record["evidence"]["dissent_body"]["worker"] == w3.id
        # fee 300, cut 30, 135 to each agreeing operator; the requester gets half the slash
        assert net.free(OP1) - ops[OP1] == 135 - 1
        assert net.free(OP2) - ops[OP2] == 135 - 1
        assert net.free(OP3) - ops[OP3] == -1
        assert net.free(USER) - user == 500
        assert net.free(TREASURY) - treasury == 30 + 500 + 3
        assert net.pool(w3)["stake"] == 4_000  # type: ignore[index]
        assert net.score(w3) == 400 and net.score(w1) == 501


def test_a_late_dissenter_is_slashed_and_a_late_agreer_credited(econ: Net) -> None:
    net = econ
    w1, w2, w3 = three_staked(net)
    contract = net.deploy()
    job = net.request(USER, contract, replicas=3)
    net.submit(w1, job)
    net.submit(w2, job)
    assert net.job(job)["status"] == "settled"
    outcome = net.submit(w3, job, output=b"lie")
    (slashed,) = events_named(outcome, "staking", "Slashed")
    assert (slashed["worker"], slashed["amount"]) == (w3.id, 1_000)
    assert net.job(job)["status"] == "settled"
    # an agreeing latecomer only gains reputation
    job = net.request(USER, contract, replicas=3)
    net.submit(w1, job, new_state=b"s2")
    net.submit(w3, job, new_state=b"s2")
    before = net.free(OP2)
    outcome = net.submit(w2, job, new_state=b"s2")
    assert events_named(outcome, "staking", "Slashed") == []
    assert net.free(OP2) == before - 1
    assert events_named(outcome, "staking", "ReputationChanged")[0]["outcome"] == "completed"


def test_a_late_dissent_from_a_majority_that_agreed_the_contract_failed_is_slashed(econ: Net) -> None:
    net = econ
    w1, w2, w3 = three_staked(net)
    contract = net.deploy()
    job = net.request(USER, contract, replicas=3)
    net.submit(w1, job, failed=True)
    net.submit(w2, job, failed=True)
    assert net.job(job)["status"] == "failed"
    outcome = net.submit(w3, job)  # claims success where the majority saw the contract raise
    assert [e["worker"] for e in events_named(outcome, "staking", "Slashed")] == [w3.id]


def test_no_majority_is_a_dispute_and_refunds_the_requester(econ: Net) -> None:
    net = econ
    w1, w2, w3 = three_staked(net)
    contract = net.deploy()
    with supply_conserved(net):
        before = net.account(USER)
        job = net.request(USER, contract, replicas=3, value=7)
        net.submit(w1, job, output=b"a")
        net.submit(w2, job, output=b"b")
        outcome = net.submit(w3, job, output=b"c")
        (dispute,) = events_named(outcome, "compute", "Dispute")
        assert set(dispute["commitments"]) == {w1.id, w2.id, w3.id}
        assert events_named(outcome, "compute", "JobFailed")[0]["job"] == job
        assert events_named(outcome, "compute", "JobSettled") == []
        after = net.account(USER)
        assert after["reserved"] == before["reserved"] and before["free"] - after["free"] == 1
        assert net.job(job)["status"] == "failed"
        assert net.runtime.contracts.current_state(net.state(), contract)["version"] == 0
        # the contract is free again
        job = net.request(USER, contract)
        assert net.job(job)["status"] == "assigned"


def test_replicas_go_to_distinct_operators_when_asked(net: Net) -> None:
    same_op = [make_worker(f"a{i}", OP1) for i in range(3)]
    gatekeeper = keyed(net, *same_op)
    contract = net.deploy()
    job = net.request(USER, contract, replicas=3, distinct="operators")
    net.advance(2)
    assert net.job(job)["status"] == "queued"  # one operator cannot supply three
    for name, op in (("b", OP2), ("c", OP3)):
        worker = make_worker(name, op)
        net.register(worker)
        net.handover(gatekeeper, worker)
    chosen = net.job(job)["workers"]
    assert len(chosen) == 3
    assert len({net.worker(w)["operator"] for w in chosen}) == 3


def test_replicas_go_to_distinct_tee_types_when_asked(net: Net) -> None:
    workers = [
        make_worker("s1", OP1),
        make_worker("s2", OP1),
        make_worker("x1", OP1, presented_type="sgx"),
        make_worker("x2", OP1, presented_type="sgx"),
    ]
    gatekeeper = keyed(net, *workers)
    contract = net.deploy()
    job = net.request(USER, contract, replicas=3, distinct="tee_types")
    net.advance(2)
    assert net.job(job)["status"] == "queued"  # two types only
    tdx = make_worker("t1", OP1, presented_type="tdx")
    net.register(tdx)
    net.handover(gatekeeper, tdx)
    chosen = net.job(job)["workers"]
    assert len(chosen) == 3
    assert sorted(net.worker(w)["platform"] for w in chosen) == ["sgx", "sim", "tdx"]
    plain = net.request(USER, net.deploy(), replicas=3)
    assert len(set(net.job(plain)["workers"])) == 3


# ---- deadlines and reputation --------------------------------------------------------------------


def test_a_missed_deadline_reassigns_slashes_and_completes_exactly_once(econ: Net) -> None:
    net = econ
    w1, w2 = make_worker("w1", OP1), make_worker("w2", OP2)
    keyed(net, w1, w2)
    net.stake(w1, 5_000)
    net.stake(w2, 5_000)
    contract = net.deploy()
    with supply_conserved(net):
        before = net.account(USER)
        job = net.request(USER, contract, max_fee=150)
        (silent_id,) = net.job(job)["workers"]
        silent, live = (w1, w2) if silent_id == w1.id else (w2, w1)
        deadline = net.job(job)["deadline_height"]
        outcomes = net.advance_to(deadline)
        reassigned = all_events(outcomes, "compute", "JobReassigned")
        assert reassigned == [{"job": job, "silent": [silent.id]}]
        assert [e["worker"] for e in all_events(outcomes, "registry", "WorkerUnresponsive")] == [silent.id]
        (slashed,) = all_events(outcomes, "staking", "Slashed")
        assert (slashed["worker"], slashed["amount"], slashed["reason"]) == (
            silent.id,
            10,
            "missed a job deadline",
        )
        assert net.score(silent) == 475
        assert net.job(job)["workers"] == [live.id] and net.job(job)["status"] == "assigned"
        outcome = net.submit(live, job)
        assert [e["job"] for e in events_named(outcome, "compute", "JobSettled")] == [job]
        # the silent worker wakes up and reports: refused, nothing pays twice
        net.heartbeat(silent)
        outcome = net.submit(silent, job)
        assert events_named(outcome, "compute", "ResultRefused")[0]["worker"] == silent.id
        outcomes = net.advance(6)
        assert all_events(outcomes, "compute", "JobSettled") == []
        after = net.account(USER)
        assert after["reserved"] == before["reserved"]
        # fee 100 and the request's tx fee out; half the slash (5) in
        assert before["free"] - after["free"] == 100 + 1 - 5
        assert net.job(job)["attempts"] == 2


def test_a_job_nobody_completes_fails_and_refunds() -> None:
    net = Net.create(params={"job_deadline_blocks": 2})
    workers = [make_worker(f"w{i}", op) for i, op in enumerate((OP1, OP2, OP3, OP4), 1)]
    gatekeeper = keyed(net, *workers)
    contract = net.deploy()
    before = net.account(USER)
    job = net.request(USER, contract)
    outcomes = []
    for _ in range(12):
        outcomes.append(net.produce())
        for worker in workers:  # everyone comes back online, nobody ever answers
            if net.worker(worker)["status"] == "unresponsive":
                net.heartbeat(worker)
        net.heartbeat(gatekeeper)
    assert net.job(job)["status"] == "failed"
    assert net.job(job)["attempts"] == 5
    assert net.account(USER)["reserved"] == before["reserved"]


def test_reputation_moves_and_breaks_ties_at_equal_load(net: Net) -> None:
    w1, w2 = make_worker("w1", OP1), make_worker("w2", OP2)
    keyed(net, w1, w2)
    contract = net.deploy()
    job = net.request(USER, contract)
    (first,) = net.job(job)["workers"]
    winner, loser = (w1, w2) if first == w1.id else (w2, w1)
    outcome = net.submit(winner, job)
    assert events_named(outcome, "staking", "ReputationChanged") == [
        {"worker": winner.id, "outcome": "completed", "score": 501}
    ]
    hash_would_pick_loser, i = False, 0
    while not hash_would_pick_loser or i < 6:  # until the tie-break alone would have chosen the other
        assert i < 40
        job = net.request(USER, contract)
        hash_would_pick_loser |= _tie(net, job, loser) < _tie(net, job, winner)
        assert net.job(job)["workers"] == [winner.id]  # equal load, better score
        net.submit(winner, job, new_state=f"s{i}".encode())
        i += 1
    assert net.score(winner) == 501 + i and net.score(loser) == 500


def test_fees_reach_operators_and_slashes_reach_pools(econ: Net) -> None:
    net = econ
    worker = make_worker("w1", OP1)
    keyed(net, worker)
    net.stake(worker, 2_000)
    assert net.free(pool_account(worker.id)) == 2_000
    net.ok(COUNCIL, "council", "propose", module="staking", method="slash_worker",
           args={"worker": worker.id, "amount": 50, "reason": "proven off-chain"})  # fmt: skip
    assert net.pool(worker)["stake"] == 1_950  # type: ignore[index]
    assert net.free(pool_account(worker.id)) == 1_950
