"""Contract semantics through the real sandbox: the INTERFACES.md Counter, the conformance Notes
contract, state persistence rules, isolation between jobs, determinism and the ctx services."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.contract.conftest import (
    ALICE,
    BOB,
    COUNTER,
    NOTES_PATH,
    SEED,
    FakeServices,
    RunnerFactory,
    command,
    failed,
    hexid,
    init,
    ok,
    query,
)
from umbra.contract import ContractRunner, JobSpec, Limits, LocalRunner

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def counter(module_runners: Any) -> ContractRunner:
    runner: ContractRunner = module_runners(COUNTER)
    return runner


def test_counter_from_interfaces_md(counter: ContractRunner) -> None:
    assert counter.info.class_name == "Counter"
    assert counter.info.commands == ("add",) and counter.info.queries == ("get",) and counter.info.has_init
    deployed = ok(counter.run(init({"start": 5})))
    assert deployed.output is None and deployed.new_state == {"n": 5}
    added = ok(counter.run(command("add", deployed.new_state, args={"by": 2})))
    assert added.output == 7 and added.new_state == {"n": 7}
    again = ok(counter.run(command("add", added.new_state)))
    assert again.output == 8
    got = ok(counter.run(query("get", again.new_state, caller=BOB)))
    assert got.output == {"n": 8, "asked_by": hexid(BOB)}
    assert got.new_state is None  # queries never produce state


def test_init_without_args_uses_defaults_and_init_is_optional(
    counter: ContractRunner, make_runner: RunnerFactory
) -> None:
    assert ok(counter.run(init())).new_state == {"n": 0}
    plain = make_runner(
        "from umbra.contract import Contract, query\nclass P(Contract):\n    @query\n    def hi(self, ctx):\n        return 'hi'\n"
    )
    assert not plain.info.has_init
    outcome = ok(plain.run(init({"ignored": 1})))
    assert outcome.output is None and outcome.new_state == {}


def test_method_kind_and_name_errors(counter: ContractRunner) -> None:
    state = {"n": 1}
    failed(counter.run(command("get", state)), "request", "'get' is a @query")
    failed(counter.run(query("add", state)), "request", "'add' is a @command")
    failed(counter.run(command("nope", state)), "request", "no command 'nope'", "add")
    failed(counter.run(command("_secret", state)), "request", "private")
    failed(counter.run(command("__init__", state)), "request", "private")
    failed(
        counter.run(command("add", state, args={"by": 1, "extra": 2})),
        "request",
        "bad arguments for add()",
        "extra",
    )
    failed(
        counter.run(JobSpec(kind="command", method="add", state=state, random_seed=b"short")),
        "request",
        "random_seed",
    )
    # The runner stays healthy after refusing.
    assert ok(counter.run(command("add", state))).output == 2


def test_many_jobs_in_a_row_keep_one_warm_host(counter: ContractRunner) -> None:
    host = counter._proc
    state: dict[str, Any] = {"n": 0}
    for _ in range(300):
        state = ok(counter.run(command("add", state))).new_state or {}
    assert state == {"n": 300}
    assert counter._proc is host and host is not None and host.poll() is None


def test_a_raising_command_changes_nothing(counter: ContractRunner) -> None:
    outcome = counter.run(command("add", {"n": 1}, args={"by": "x"}))
    error = failed(outcome, "contract", "TypeError")
    assert "contract line" in error and "in add" in error
    failed(counter.run(command("add", {})), "contract", "KeyError: 'n'")


@pytest.fixture(scope="module")
def notes(module_runners: Any) -> ContractRunner:
    # ../shared sits beside the repo on every machine, CI included: its absence is a failure.
    assert NOTES_PATH.is_file(), f"conformance contract not found at {NOTES_PATH}"
    runner: ContractRunner = module_runners(NOTES_PATH.read_text())
    return runner


def test_conformance_notes_contract(notes: ContractRunner) -> None:
    state = ok(notes.run(init({"limit": 2}, caller=ALICE))).new_state
    assert state == {"owner": hexid(ALICE), "limit": 2, "notes": {}}
    first = ok(notes.run(command("add", state, caller=BOB, args={"text": "bob-1"})))
    assert first.output == 1
    state = first.new_state
    assert ok(notes.run(query("mine", state, caller=BOB))).output == ["bob-1"]
    assert ok(notes.run(query("mine", state, caller=ALICE))).output == []
    failed(notes.run(query("count", state, caller=BOB)), "contract", "PermissionError: owner only")
    state = ok(notes.run(command("add", state, caller=BOB, args={"text": "bob-2"}))).new_state
    refused = notes.run(command("add", state, caller=BOB, args={"text": "bob-3"}))
    failed(refused, "contract", "ValueError: note limit reached")
    assert ok(notes.run(query("count", state, caller=ALICE))).output == 2
    alice = ok(notes.run(command("add", state, caller=ALICE, args={"text": "alice"}, replicated=True)))
    assert alice.output == 1
    assert alice.new_state is not None and alice.new_state["notes"] == {
        hexid(BOB): ["bob-1", "bob-2"],
        hexid(ALICE): ["alice"],
    }


STATEFUL = """
import random
from umbra.contract import Contract, command, query

CALLS = 0          # module globals must not carry anything from one job to the next
SEEN = []

class Stateful(Contract):
    @command
    def nest(self, ctx):
        self.state.setdefault("a", {"b": [1]})["b"].append(len(self.state["a"]["b"]) + 1)
        self.state["a"].setdefault("c", {})["d"] = {"deep": [b"\\x00", 1.5, None, True]}
        del self.state["gone"]
        return None

    @command
    def replace(self, ctx):
        self.state = {"fresh": True}

    @command
    def globals_(self, ctx):
        global CALLS
        CALLS += 1
        SEEN.append(ctx.caller)
        return {"calls": CALLS, "seen": SEEN}

    @command
    def not_storable(self, ctx, where):
        if where == "state":
            self.state["s"] = {1, 2}
            return None
        return {"when": __import__("datetime").date(2020, 1, 1)}

    @command
    def bad_state(self, ctx):
        self.state = [1, 2]

    @query
    def scribble(self, ctx):
        self.state["scribbled"] = True
        self.state["list"].append("q")
        return sorted(self.state)

    @command
    def randomness(self, ctx):
        return {"ctx": ctx.random(48), "more": ctx.random(5), "module": random.random(), "job": ctx.job,
                "height": ctx.height, "time": ctx.time_ms, "value": ctx.value, "replicated": ctx.replicated,
                "contract": ctx.contract}

    @query
    def secrets(self, ctx, name):
        return ctx.secret(name)

    @query
    def blob(self, ctx, key):
        return ctx.blob(key)

    @command
    def effects(self, ctx, fail=False):
        ctx.emit("Paid", to=ctx.caller, amount=5)
        ctx.emit("Note", items=[1, 2])
        ctx.transfer(ctx.caller, 5)
        ctx.transfer("0x" + "22" * 32, 7)
        if fail:
            raise RuntimeError("after effects")
        return "done"

    @query
    def query_effects(self, ctx, which):
        if which == "emit":
            ctx.emit("Nope")
        else:
            ctx.transfer(ctx.caller, 1)

    @command
    def sign(self, ctx, scheme, message):
        return ctx.sign(scheme, message)

    @query
    def fetch(self, ctx, url, body=None):
        return ctx.http("POST" if body else "GET", url, body=body, headers={"x-test": "1"})

    @command
    def fetch_cmd(self, ctx, url):
        return ctx.http("GET", url)

    @query
    def fetch_bypassing_the_sdk(self, ctx, url):
        # contract code can reach the raw RPC channel; the core must still refuse
        return ctx._rpc("http", {"method": "GET", "url": url, "headers": {}, "body": None})

    @query
    def env(self, ctx):
        import os
        return {"env": dict(os.environ), "hash": hash("umbra")}
"""


@pytest.fixture(scope="module")
def stateful(module_runners: Any) -> ContractRunner:
    runner: ContractRunner = module_runners(STATEFUL)
    return runner


def test_in_place_changes_to_nested_state_persist(stateful: ContractRunner) -> None:
    before = {"a": {"b": [1]}, "gone": 1, "keep": "me"}
    outcome = ok(stateful.run(command("nest", before)))
    assert outcome.new_state == {
        "a": {"b": [1, 2], "c": {"d": {"deep": [b"\x00", 1.5, None, True]}}},
        "keep": "me",
    }
    assert before == {"a": {"b": [1]}, "gone": 1, "keep": "me"}  # the caller's object is untouched
    assert ok(stateful.run(command("replace", before))).new_state == {"fresh": True}
    failed(stateful.run(command("bad_state", before)), "contract", "self.state must remain a dict")


def test_a_query_cannot_change_state(stateful: ContractRunner) -> None:
    state = {"list": ["x"]}
    outcome = ok(stateful.run(query("scribble", state)))
    assert outcome.output == ["list", "scribbled"] and outcome.new_state is None
    assert ok(stateful.run(query("scribble", state))).output == ["list", "scribbled"]


def test_no_globals_leak_between_jobs(stateful: ContractRunner) -> None:
    for caller in (ALICE, BOB, ALICE):
        outcome = ok(stateful.run(command("globals_", {}, caller=caller)))
        assert outcome.output == {"calls": 1, "seen": [hexid(caller)]}


REMEMBERING = """
from umbra.contract import Contract, command, query

SEEN = []  # what earlier jobs in this process saw

class Remembering(Contract):
    @query
    def recall(self, ctx, note, burn_ms=0):
        SEEN.append([ctx.caller, note, self.state["v"]])
        spin = __import__("time").process_time() + burn_ms / 1000
        while __import__("time").process_time() < spin:
            pass
        return {"seen": SEEN, "pid": __import__("os").getpid()}

    @command
    def remember(self, ctx, note):
        SEEN.append([ctx.caller, note, self.state["v"]])
        return {"seen": SEEN, "pid": __import__("os").getpid()}
"""


def test_a_query_child_is_kept_only_for_its_own_caller(make_runner: RunnerFactory) -> None:
    runner = make_runner(REMEMBERING)
    first = ok(runner.run(query("recall", {"v": 1}, caller=ALICE, args={"note": "a1"}))).output
    again = ok(runner.run(query("recall", {"v": 2}, caller=ALICE, args={"note": "a2"}))).output
    assert again["pid"] == first["pid"]  # kept: no fork for the same caller's next query
    assert again["seen"][-1] == [hexid(ALICE), "a2", 2]  # its own args and the state it was sent
    # Another caller, and any command, gets a fresh child: nothing ALICE's queries saw reaches it.
    bob = ok(runner.run(query("recall", {"v": 3}, caller=BOB, args={"note": "b1"}))).output
    assert bob["seen"] == [[hexid(BOB), "b1", 3]] and bob["pid"] != first["pid"]
    cmd = ok(runner.run(command("remember", {"v": 4}, caller=ALICE, args={"note": "c"}))).output
    assert cmd["seen"] == [[hexid(ALICE), "c", 4]] and cmd["pid"] not in (first["pid"], bob["pid"])
    assert (
        ok(runner.run(query("recall", {"v": 5}, caller=BOB, args={"note": "b2"}))).output["pid"] == bob["pid"]
    )


def test_a_kept_query_child_is_retired_past_its_share_of_the_cpu_budget(make_runner: RunnerFactory) -> None:
    runner = make_runner(REMEMBERING, Limits(cpu_seconds=1))  # a kept child may use 1/50 of it: 20 ms
    busy = ok(runner.run(query("recall", {"v": 1}, args={"note": "busy", "burn_ms": 60}))).output
    after = ok(runner.run(query("recall", {"v": 1}, args={"note": "next"}))).output
    assert after["pid"] != busy["pid"] and after["seen"] == [[hexid(ALICE), "next", 1]]


def test_values_that_cannot_be_stored_fail_clearly(stateful: ContractRunner) -> None:
    failed(
        stateful.run(command("not_storable", {}, args={"where": "state"})), "contract", "state['s'] is a set"
    )
    failed(
        stateful.run(command("not_storable", {}, args={"where": "output"})),
        "contract",
        "output['when'] is a date",
    )


def test_ctx_random_is_deterministic_per_seed(stateful: ContractRunner) -> None:
    spec: dict[str, Any] = {"height": 9, "time_ms": 1234, "value": 3, "job": b"\x07" * 32}
    one = ok(stateful.run(command("randomness", {}, **spec))).output
    two = ok(stateful.run(command("randomness", {}, **spec))).output
    other = ok(stateful.run(command("randomness", {}, random_seed=b"another seed 123" * 2, **spec))).output
    assert one == two  # replicas with the same seed agree, the global `random` module included
    assert one["ctx"] != other["ctx"] and one["module"] != other["module"]
    assert len(one["ctx"]) == 48 and one["more"] != one["ctx"][:5]
    assert one["job"] == "0x" + "07" * 32 and one["height"] == 9 and one["time"] == 1234 and one["value"] == 3
    assert one["replicated"] is False and one["contract"] == "0x" + bytes(range(32)).hex()


def test_secrets_and_blobs(stateful: ContractRunner) -> None:
    secrets = {"api-key": b"k3y"}
    assert ok(stateful.run(query("secrets", {}, args={"name": "api-key"}, secrets=secrets))).output == b"k3y"
    failed(
        stateful.run(query("secrets", {}, args={"name": "other"}, secrets=secrets)),
        "contract",
        "no secret named 'other'",
    )
    key = b"\x11" * 32
    blobs = {key: b"weights" * 1000}
    assert ok(stateful.run(query("blob", {}, args={"key": key}, blobs=blobs))).output == b"weights" * 1000
    assert (
        ok(stateful.run(query("blob", {}, args={"key": "0x" + key.hex()}, blobs=blobs))).output
        == b"weights" * 1000
    )
    # A job only sees the blobs it was given, although the host caches earlier ones.
    failed(stateful.run(query("blob", {}, args={"key": key})), "contract", "no blob")
    bigger = {key: b"weights" * 1000, b"\x12" * 32: b"more"}
    assert ok(stateful.run(query("blob", {}, args={"key": b"\x12" * 32}, blobs=bigger))).output == b"more"


def test_emit_and_transfer_are_recorded_only_when_the_job_succeeds(stateful: ContractRunner) -> None:
    outcome = ok(stateful.run(command("effects", {}, caller=BOB)))
    assert outcome.events == [
        {"name": "Paid", "data": {"to": hexid(BOB), "amount": 5}},
        {"name": "Note", "data": {"items": [1, 2]}},
    ]
    assert outcome.transfers == [(BOB, 5), (b"\x22" * 32, 7)]
    failed(
        stateful.run(command("effects", {}, args={"fail": True})), "contract", "RuntimeError: after effects"
    )
    failed(
        stateful.run(query("query_effects", {}, args={"which": "emit"})),
        "contract",
        "not available in queries",
    )
    failed(
        stateful.run(query("query_effects", {}, args={"which": "transfer"})),
        "contract",
        "not available in queries",
    )


def test_sign_goes_through_the_core(stateful: ContractRunner) -> None:
    services = FakeServices()
    for scheme in ("ed25519", "secp256k1"):
        outcome = ok(stateful.run(command("sign", {}, args={"scheme": scheme, "message": b"msg"}), services))
        assert outcome.output == b"sig/" + scheme.encode() + b"/msg"
    assert services.signed == [("ed25519", b"msg"), ("secp256k1", b"msg")]
    failed(
        stateful.run(command("sign", {}, args={"scheme": "rsa", "message": b"m"}), services),
        "contract",
        "scheme",
    )
    failed(
        stateful.run(command("sign", {}, args={"scheme": "ed25519", "message": b"m"})),
        "contract",
        "not available",
    )


def test_http_only_to_allowlisted_hosts_and_never_when_replicated(stateful: ContractRunner) -> None:
    services = FakeServices()
    allow = ["api.example.com", "*.data.example.org", "localhost:8080"]
    got = ok(
        stateful.run(
            query("fetch", {}, args={"url": "https://api.example.com/v1?q=1"}, http_allowlist=allow), services
        )
    )
    assert got.output == {
        "status": 200,
        "headers": {"content-type": "text/plain"},
        "body": b"echo https://api.example.com/v1?q=1",
    }
    posted = ok(
        stateful.run(
            query(
                "fetch", {}, args={"url": "https://x.data.example.org/", "body": "hi"}, http_allowlist=allow
            ),
            services,
        )
    )
    assert posted.output["body"] == b"echo hi"
    assert services.requests[0].method == "GET" and services.requests[0].headers == {"x-test": "1"}
    assert services.requests[1].method == "POST" and 0 < services.requests[1].timeout_s <= 30
    for url in (
        "https://evil.example.com/",
        "https://data.example.org/",
        "http://localhost/",
        "ftp://api.example.com/",
    ):
        failed(
            stateful.run(query("fetch", {}, args={"url": url}, http_allowlist=allow), services),
            "contract",
            "http_allowlist",
        )
    # Unreplicated commands may use http; replicated ones may not.
    assert ok(
        stateful.run(
            command("fetch_cmd", {}, args={"url": "https://api.example.com/"}, http_allowlist=allow), services
        )
    )
    refused = stateful.run(
        command(
            "fetch_cmd", {}, args={"url": "https://api.example.com/"}, http_allowlist=allow, replicated=True
        ),
        services,
    )
    failed(refused, "contract", "only available in queries and unreplicated jobs")
    # Contract code that skips ctx.http's own checks meets the core's.
    sneaky = stateful.run(
        query("fetch_bypassing_the_sdk", {}, args={"url": "https://evil.example.com/"}, http_allowlist=allow),
        services,
    )
    failed(sneaky, "contract", "not on this contract's http_allowlist")
    assert len(services.requests) == 3


def test_the_core_environment_does_not_reach_contracts(
    stateful: ContractRunner, make_runner: RunnerFactory
) -> None:
    os.environ["UMBRA_TEST_SECRET_TOKEN"] = "do-not-leak"
    try:
        fresh = make_runner(STATEFUL)
        env = ok(fresh.run(query("env", {}))).output
    finally:
        del os.environ["UMBRA_TEST_SECRET_TOKEN"]
    assert "UMBRA_TEST_SECRET_TOKEN" not in env["env"]
    assert env["env"]["OMP_NUM_THREADS"] == "1" and env["env"]["OPENBLAS_NUM_THREADS"] == "1"
    # Fixed str hashing, so that set iteration order agrees across replicas.
    assert env["hash"] == ok(stateful.run(query("env", {}))).output["hash"]


def test_local_runner_has_the_same_semantics_without_isolation() -> None:
    local = LocalRunner(STATEFUL, contract_id=bytes(range(32)))
    assert ok(local.run(command("nest", {"gone": 0}))).new_state == {
        "a": {"b": [1, 2], "c": {"d": {"deep": [b"\x00", 1.5, None, True]}}}
    }
    first = ok(local.run(command("randomness", {}))).output
    sandboxed_runner = ContractRunner(STATEFUL, contract_id=bytes(range(32)))
    try:
        assert first == ok(sandboxed_runner.run(command("randomness", {}))).output
    finally:
        sandboxed_runner.close()
    # No fork per job here: module globals persist, which is why LocalRunner is for tests only.
    assert ok(local.run(command("globals_", {}))).output["calls"] == 1
    assert ok(local.run(command("globals_", {}))).output["calls"] == 2
    assert local.run(JobSpec(kind="command", method="nope", random_seed=SEED)).error_code == "request"
