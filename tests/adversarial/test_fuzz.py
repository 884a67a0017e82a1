"""Fuzzing every door: the node's whole OpenAPI (schemathesis, against a running `umbra node`),
the worker's /query endpoint (hypothesis, against a running worker and its core), and in process
the tx decoder and admission, the block and event parsers of the enclave core, and the core's
request interface (what a malicious host may send it). Nothing may answer 5xx or raise anything
but its typed refusal, and the processes' memory stays bounded (RSS measured with psutil).

The attestation evidence parsers (every TEE type, mutated evidence, 2 MB inputs) are fuzzed in
tests/tee/test_fuzz_all.py; the node's hand-written hostile bodies in tests/node/test_api.py.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.adversarial.conftest import HTTP, Shared, height, record, state_value
from tests.enclave.helpers import OPERATORS, SimNet
from tests.node.conftest import write_chain_files
from umbra import codec, crypto
from umbra.chain.runtime import AdmissionError
from umbra.chain.types import Block, Call, MalformedError, SignedTx, Tx
from umbra.enclave.chainview import ChainView, ForgedBlock
from umbra.node.service import Node, NodeConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Per operation and generation mode (positive: schema-valid, negative: schema-violating).
EXAMPLES = int(os.environ.get("UMBRA_ADV_FUZZ_EXAMPLES", "12"))
MIB = 1024 * 1024
_FAST = settings(
    deadline=None,
    database=None,
    derandomize=True,  # the same inputs every run: a CI failure reproduces
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)


def fast(examples: int) -> settings:
    return settings(_FAST, max_examples=examples)


def _rss(pid: int) -> int:
    """Resident memory of a process and its children (a worker's core is its child)."""
    proc = psutil.Process(pid)
    return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))


def test_the_node_api_survives_schemathesis(shared: Shared) -> None:
    url = shared.url
    pid = shared.net.by_name["node"].pid
    spec = HTTP.get(f"{url}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(spec).exclude(path="/events")  # an endless stream
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 40, "the schema lost operations"
    session = requests.Session()
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    def exercise(operation: Any, mode: GenerationMode, examples: int) -> None:
        @fast(examples)
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            response = case.call(base_url=url, session=session, timeout=30)
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}"
                )
            elif response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
                error = response.json().get("error", {})
                if not (isinstance(error, dict) and error.get("code") and error.get("message")):
                    failures.append(f"{case.method} {case.formatted_path}: untyped {response.status_code}")

        with contextlib.suppress(Unsatisfiable):  # no schema-violating input for a parameterless operation
            run()

    for operation in operations:  # warm-up: caches, thread pools, first renders
        exercise(operation, GenerationMode.POSITIVE, 2)
    before = _rss(pid)
    started = time.monotonic()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            exercise(operation, mode, EXAMPLES)
    seconds = time.monotonic() - started
    after = _rss(pid)
    assert not failures, failures[:10]
    assert HTTP.get(f"{url}/health", timeout=5).status_code == 200
    assert after - before < 64 * MIB, f"node RSS grew {(after - before) / MIB:.1f} MiB under fuzzing"
    record(
        "fuzz",
        {
            "node_api": {
                "operations": len(operations),
                "requests": sum(statuses.values()),
                "seconds": round(seconds, 1),
                "status_counts": {str(k): v for k, v in sorted(statuses.items())},
                "server_errors": 0,
                "rss_before_mib": round(before / MIB, 1),
                "rss_after_mib": round(after / MIB, 1),
            }
        },
    )


# ---- the worker's /query ----------------------------------------------------------------------


def _sealed_query(shared: Shared, inner: bytes) -> bytes:
    contract = codec.from_hex(shared.counter)
    key = state_value(shared.url, "keys", "contract_key", contract + (0).to_bytes(8, "big"))
    assert shared.net.genesis is not None
    info = codec.encode(
        {"chain_id": shared.net.genesis.chain_id, "contract": contract, "purpose": "umbra/query/v1"}
    )
    return crypto.hpke_seal(key["ecdh_pk"], inner, info)


def _query_inner(shared: Shared, body: dict[str, Any], signer: crypto.SigningKey) -> bytes:
    signature = signer.sign("umbra/query/v1", body)
    return codec.encode({"body": body, "caller": signer.public_key, "signature": signature})


CBOR_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def test_the_worker_query_endpoint_survives_fuzzing(shared: Shared) -> None:
    worker = shared.net.by_name["w0"]
    url = worker.url or ""
    head = height(shared.url)
    user = shared.net.key("user")
    contract = codec.from_hex(shared.counter)
    now_ms = int(time.time() * 1000)
    good_body = {
        "contract": contract,
        "method": "get",
        "args": {},
        "reply_pk": crypto.EcdhKey.generate().public_key,
        "expiry_ms": now_ms + 60_000,
    }
    valid = _sealed_query(shared, _query_inner(shared, good_body, user))
    answer = HTTP.post(
        f"{url}/query", json={"contract": shared.counter, "query": codec.to_hex(valid)}, timeout=30
    )
    assert answer.status_code == 200, answer.text  # the fuzz starts from a query that works

    def mutate(data: bytes, position: int, value: int, cut: int) -> bytes:
        flipped = bytearray(data)
        flipped[position % len(flipped)] ^= value or 1
        return bytes(flipped[: max(1, len(flipped) - cut)])

    queries = st.one_of(
        st.binary(max_size=300),  # garbage
        st.builds(mutate, st.just(valid), st.integers(0, 10**6), st.integers(0, 255), st.integers(0, 40)),
        # properly sealed to the contract, but whatever is inside
        st.builds(lambda v: _sealed_query(shared, codec.encode(v)), CBOR_VALUES),
        st.builds(
            lambda field, value: _sealed_query(
                shared, _query_inner(shared, {**good_body, field: value}, user)
            ),
            st.sampled_from(sorted(good_body)),
            CBOR_VALUES,
        ),
        st.builds(  # a body signed by someone else than the caller it names
            lambda: _sealed_query(
                shared,
                codec.encode(
                    {
                        "body": good_body,
                        "caller": user.public_key,
                        "signature": crypto.SigningKey.generate().sign("umbra/query/v1", good_body),
                    }
                ),
            )
        ),
    )
    hexes = st.one_of(st.builds(codec.to_hex, queries), st.text(max_size=60))
    contracts = st.one_of(
        st.just(shared.counter), st.text(max_size=70), st.builds(codec.to_hex, st.binary(max_size=33))
    )
    heights = st.one_of(st.none(), st.integers(0, head), st.integers(max_value=-1), st.text(max_size=5))
    reaching_the_core = st.fixed_dictionaries(
        {"contract": st.just(shared.counter), "query": st.builds(codec.to_hex, queries)},
        optional={"height": st.integers(0, head)},
    )
    bodies = st.one_of(
        reaching_the_core,
        reaching_the_core,
        st.fixed_dictionaries({"contract": contracts, "query": hexes}, optional={"height": heights}),
        CBOR_VALUES.map(lambda v: codec.jsonable(v)),
    )
    statuses: Counter[int] = Counter()
    codes: Counter[str] = Counter()
    failures: list[str] = []

    @fast(int(os.environ.get("UMBRA_ADV_QUERY_EXAMPLES", "150")))
    @given(body=bodies)
    def run(body: Any) -> None:
        reply = HTTP.post(f"{url}/query", json=body, timeout=30)
        statuses[reply.status_code] += 1
        if reply.status_code >= 500:
            failures.append(f"{reply.status_code} {reply.text[:200]} for {str(body)[:200]}")
        elif reply.status_code >= 400:
            error = reply.json()["error"]
            assert error["code"] and error["message"]
            codes[error["code"]] += 1
        else:  # a well-sealed, well-signed query (its method may fail: that stays inside the seal)
            assert set(reply.json()) == {"worker", "height", "reply", "signature", "sealed_reply"}
            codes["answered"] += 1

    before = _rss(worker.pid)
    run()
    after = _rss(worker.pid)
    assert not failures, failures[:5]
    assert worker.alive() and HTTP.get(f"{url}/health", timeout=5).status_code == 200
    assert after - before < 64 * MIB, f"worker RSS grew {(after - before) / MIB:.1f} MiB"
    record(
        "fuzz",
        {
            "worker_query": {
                "requests": sum(statuses.values()),
                "status_counts": {str(k): v for k, v in sorted(statuses.items())},
                "error_codes": dict(sorted(codes.items())),
                "server_errors": 0,
                "rss_before_mib": round(before / MIB, 1),
                "rss_after_mib": round(after / MIB, 1),
            }
        },
    )


# ---- parsers, in process ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idle_node(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("decoder")
    files = write_chain_files(root / "files")
    node = Node(NodeConfig(data_dir=root / "node", sequencer_key=files.sequencer), files.genesis)
    yield files, node
    node.stop()
    node.store.close()


TX_FIELDS = ("chain_id", "sender", "nonce", "call", "fee")


def test_the_tx_decoder_and_admission_refuse_anything_with_a_typed_error(idle_node: Any) -> None:
    files, node = idle_node
    alice = files.keys["alice"]
    good = Tx(
        files.genesis.chain_id,
        alice.public_key,
        0,
        Call("balances", "transfer", {"to": bytes(32), "amount": 1}),
        1,
    )
    valid = good.sign(alice).encode()
    shape = codec.decode(valid)
    counted: Counter[str] = Counter()

    def mutate_field(field: str, value: Any) -> bytes:
        doc = codec.decode(valid)
        target = doc["tx"] if isinstance(doc, dict) and "tx" in doc and field in TX_FIELDS else doc
        if isinstance(target, dict):
            target[field] = value
        return codec.encode(doc)

    raws = st.one_of(
        st.binary(max_size=400),
        st.builds(lambda v: codec.encode(v), CBOR_VALUES),
        st.builds(
            mutate_field,
            st.sampled_from([*TX_FIELDS, *(shape if isinstance(shape, dict) else {})]),
            CBOR_VALUES,
        ),
        st.builds(
            lambda i, b: valid[:i] + bytes([b]) + valid[i + 1 :],
            st.integers(0, len(valid) - 1),
            st.integers(0, 255),
        ),
        st.builds(lambda n: valid[:n], st.integers(0, len(valid) - 1)),
    )

    @fast(int(os.environ.get("UMBRA_ADV_DECODER_EXAMPLES", "400")))
    @given(raw=raws)
    def run(raw: bytes) -> None:
        try:
            SignedTx.decode(raw)
        except MalformedError:
            counted["decoder: malformed"] += 1
        (result,) = node.submit_many([raw])  # decode, size, chain, call shape, signature, nonce, funds
        if isinstance(result, AdmissionError):
            counted[result.code] += 1
        else:
            assert raw == valid or SignedTx.decode(raw).verify_signature()
            counted["admitted"] += 1

    run()
    assert counted["decoder: malformed"] > 0 and len(counted) > 3, counted
    record("fuzz", {"tx_decoder_and_admission": dict(sorted(counted.items()))})


def test_the_cores_block_and_event_parsers_refuse_forgeries(tmp_path: Path) -> None:
    net = SimNet.start(tmp_path)
    member = net.core("w", OPERATORS[0])
    net.feed(member)
    stx = net.chain.transfer(OPERATORS[0], OPERATORS[1], 5)
    block, outcome = net.chain.build([stx])
    raw_block = block.encode()
    raw_events = codec.encode([e.to_cbor() for e in outcome.events])
    view = ChainView.from_cbor(codec.decode(codec.encode(member.core.view.to_cbor())))
    counted: Counter[str] = Counter()

    def flip(data: bytes, i: int, b: int) -> bytes:
        return data[: i % len(data)] + bytes([b]) + data[i % len(data) + 1 :]

    blocks = st.one_of(
        st.binary(max_size=300),
        st.builds(lambda v: codec.encode(v), CBOR_VALUES),
        st.builds(flip, st.just(raw_block), st.integers(0, 10**6), st.integers(0, 255)),
        st.just(raw_block),
    )
    events = st.one_of(
        st.binary(max_size=200),
        st.builds(lambda v: codec.encode(v), CBOR_VALUES),
        st.builds(flip, st.just(raw_events), st.integers(0, 10**6), st.integers(0, 255)),
        st.builds(lambda v: codec.encode([*codec.decode(raw_events), v]), CBOR_VALUES),
    )

    @fast(int(os.environ.get("UMBRA_ADV_DECODER_EXAMPLES", "400")))
    @given(raw=blocks, ev=events)
    def run(raw: bytes, ev: bytes) -> None:
        try:
            Block.decode(raw)
        except MalformedError:
            counted["block_malformed"] += 1
        try:
            view.verify(raw, ev)
            assert raw == raw_block and ev == raw_events, "a forged block or event list was believed"
            counted["genuine"] += 1
        except ForgedBlock as exc:
            counted[exc.check] += 1

    run()
    assert counted["events_root"] > 0 and counted["malformed"] > 0, counted
    # The core itself, through its request interface, stays where it was.
    before = member.call("status")["height"]
    from umbra.enclave.transport import CoreError

    with pytest.raises(CoreError):
        member.call("feed", blocks=[[raw_block, codec.encode([])]])
    assert member.call("status")["height"] == before
    record("fuzz", {"core_block_and_event_parsers": dict(sorted(counted.items()))})


CORE_OPS = (
    "init",
    "status",
    "feed",
    "duties",
    "register",
    "heartbeat",
    "generate_master",
    "handover",
    "contract_key",
    "contract_public",
    "contract",
    "job",
    "execute",
    "query",
    "nonsense",
)


def test_the_core_answers_any_request_from_its_host_without_raising(tmp_path: Path) -> None:
    """The host-to-core pipe is the trust boundary: whatever a malicious host sends, the core
    answers with `{ok}` or a typed `{error}` and keeps no secret in the reply."""
    net = SimNet.start(tmp_path)
    member = net.core("w", OPERATORS[0])
    net.feed(member)
    identity = member.core._identity
    assert identity is not None
    secrets = [identity.seed, *(m.secret for m in member.core._masters.values())]
    counted: Counter[str] = Counter()
    fields = st.dictionaries(
        st.sampled_from(
            [
                "genesis",
                "role",
                "blocks",
                "operator",
                "endpoint",
                "height",
                "epoch",
                "worker",
                "contract",
                "job",
                "code",
                "sealed_input",
                "state_blob",
                "query",
                "secrets",
                "blobs",
                "reset",
            ]
        ),
        CBOR_VALUES,
        max_size=5,
    )

    @fast(int(os.environ.get("UMBRA_ADV_DECODER_EXAMPLES", "400")))
    @given(op=st.sampled_from(CORE_OPS), args=fields)
    def run(op: str, args: dict[str, Any]) -> None:
        reply = member.core.handle({**args, "op": op})
        assert isinstance(reply, dict) and (reply.get("ok") is True or "error" in reply), reply
        if "error" in reply:
            counted[reply["error"]["code"]] += 1
            assert reply["error"]["code"] != "internal", (op, args, reply)
        else:
            counted[f"ok:{op}"] += 1
        encoded = codec.encode(reply)
        assert not any(secret in encoded for secret in secrets), f"{op} answered with a secret"

    run()
    assert member.call("status")["identity_pk"] == member.id
    record("fuzz", {"core_requests": dict(sorted(counted.items()))})
