"""The node's HTTP API on a real socket: typed 4xx for every hostile body, limits, ops endpoints."""

from __future__ import annotations

import json
import os
import random
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.node.conftest import (
    HTTP,
    LiveNode,
    post_tx,
    serve_node,
    signed_transfer,
    wait_until,
    write_chain_files,
)
from umbra import codec
from umbra.chain.runtime import BlockOutcome
from umbra.chain.state import StateRoot
from umbra.chain.types import Block, Event, Header
from umbra.node.api import _notice_json
from umbra.node.service import BlockNotice

pytestmark = pytest.mark.timeout(120)

MAX_BODY = 2 * 1024 * 1024


def assert_typed_error(
    reply: httpx.Response, status: int | None = None, code: str | None = None
) -> dict[str, Any]:
    assert 400 <= reply.status_code < 500, f"{reply.status_code}: {reply.text[:300]}"
    if status is not None:
        assert reply.status_code == status, reply.text[:300]
    assert reply.headers["content-type"].startswith("application/json")
    error = reply.json()["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


def next_nonce(live: LiveNode, name: str) -> int:
    return int(live.account(live.files.keys[name].public_key)["nonce"])


# ---- raw HTTP/1.1 over a socket (to see exactly what a client sees) ------------------------------


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a complete response: {buffer[:200]!r}"
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the response body"
        body += chunk
    return status, headers, body[:length]


def post_raw(url: str, body: bytes, *, chunked: bool = False) -> tuple[int, dict[str, str], bytes, int]:
    """POST /tx, then GET /health on the SAME connection: the second answer proves the server read
    (drained) the whole first body instead of resetting or mis-parsing the connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        if chunked:
            head = b"POST /tx HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            step = 256 * 1024
            payload = b"".join(
                f"{len(body[i : i + step]):x}\r\n".encode() + body[i : i + step] + b"\r\n"
                for i in range(0, len(body), step)
            )
            sock.sendall(head + payload + b"0\r\n\r\n")
        else:
            fixed = f"POST /tx HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall(fixed.encode() + body)
        status, headers, reply = read_response(sock)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        health_status, _, _ = read_response(sock)
    return status, headers, reply, health_status


# ---- POST /tx --------------------------------------------------------------------------------


def test_a_signed_transfer_is_admitted_included_and_has_a_receipt(live_node: LiveNode) -> None:
    files = live_node.files
    to = os.urandom(32)
    stx = signed_transfer(files, "alice", to, 77, next_nonce(live_node, "alice"))
    reply = post_tx(live_node.url, stx.encode(), wait="true", timeout="20")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["tx_hash"] == codec.to_hex(stx.hash)
    assert (body["status"], body["ok"], body["error"]) == ("included", True, None)
    receipt = HTTP.get(f"{live_node.url}/tx/{body['tx_hash']}", timeout=10).json()
    assert receipt["status"] == "included" and receipt["block"] == body["block"]
    assert receipt["sender"] == files.address("alice") and receipt["ok"] is True
    transfer_events = [e for e in receipt["events"] if (e["module"], e["name"]) == ("balances", "Transfer")]
    assert transfer_events == [
        {
            "module": "balances",
            "name": "Transfer",
            "tx": receipt["index"],
            "data": {"source": files.address("alice"), "dest": codec.to_hex(to), "amount": 77},
        }
    ]
    assert live_node.account(to)["free"] == 77
    block = HTTP.get(f"{live_node.url}/blocks/{body['block']}", timeout=10).json()
    assert body["tx_hash"] in block["txs"]


CONFORMANCE_BODIES = [
    b"",
    b"{",
    b"null",
    b"[]",
    b'{"tx": 5}',
    b'{"tx": "0x"}',
    b'{"tx": "zz"}',
    b'{"tx": "0x' + os.urandom(300).hex().encode() + b'"}',
    json.dumps({"tx": "0x" + "a0" * 40}).encode(),
    b'{"tx": "0xdeadbeef"}',
]
MORE_HOSTILE_BODIES = [
    b'{"tx": "0xabc"}',  # odd-length hex
    b'{"tx": null}',
    b'{"tx": ["0x00"]}',
    b'{"tx": {"a": 1}}',
    b'{"tx": "0x00", "tx": 1}',
    b'{"txs": "0x00"}',
    b"\xff\xfe\x00\x00garbage",  # not UTF-8
    b"[" * 50_000,  # nesting bomb
    b'{"tx": "' + b"9" * 5000 + b'"}',
    b'{"tx": 1e999}',
    b'"just a string"',
    json.dumps({"tx": "0x" + codec.encode({"tx": {}, "sig": b""}).hex()}).encode(),
    json.dumps({"tx": "0x" + codec.encode([1, 2, 3]).hex()}).encode(),
    json.dumps({"tx": "0x" + "81" * 200 + "00"}).encode(),  # CBOR nested too deep
    json.dumps({"tx": "0x" + "5bffffffffffffffff"}).encode(),  # CBOR claims 2^64 bytes
]


def test_hostile_bodies_get_a_typed_4xx_never_a_5xx(live_node: LiveNode) -> None:
    rnd = random.Random(7)
    bodies = CONFORMANCE_BODIES + MORE_HOSTILE_BODIES
    bodies += [rnd.randbytes(rnd.randint(1, 3000)) for _ in range(30)]
    bodies += [
        json.dumps({"tx": "0x" + rnd.randbytes(rnd.randint(1, 2000)).hex()}).encode() for _ in range(40)
    ]
    with httpx.Client(base_url=live_node.url, timeout=10) as client:
        for body in bodies:
            for content_type in ("application/json", "text/plain"):
                reply = client.post("/tx", content=body, headers={"content-type": content_type})
                assert_typed_error(reply)
        assert client.get("/health").status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {"wait": "true", "timeout": "nan"},
        {"wait": "true", "timeout": "-5"},
        {"wait": "true", "timeout": "inf"},
        {"wait": "true", "timeout": "1e400"},
        {"wait": "maybe"},
        {"timeout": "soon"},
    ],
)
def test_hostile_query_parameters_on_a_valid_tx_are_not_5xx(
    live_node: LiveNode, params: dict[str, str]
) -> None:
    stx = signed_transfer(live_node.files, "erin", os.urandom(32), 1, next_nonce(live_node, "erin"))
    reply = post_tx(live_node.url, stx.encode(), **params)
    assert reply.status_code < 500, reply.text
    if reply.status_code >= 400:
        assert_typed_error(reply, code="malformed")
    else:
        wait_until(
            lambda: HTTP.get(f"{live_node.url}/tx/{codec.to_hex(stx.hash)}").json()["status"] == "included",
            10,
            "inclusion",
        )


def test_other_methods_and_paths_get_typed_errors(live_node: LiveNode) -> None:
    assert_typed_error(HTTP.put(f"{live_node.url}/tx", json={"tx": "0x00"}), 405, "method_not_allowed")
    assert_typed_error(HTTP.get(f"{live_node.url}/no/such/path"), 404, "not_found")
    assert_typed_error(HTTP.post(f"{live_node.url}/tx", data={"tx": "0x00"}))  # form-encoded


def test_an_oversized_body_gets_413_after_it_is_drained(live_node: LiveNode) -> None:
    body = b'{"tx": "0x' + b"ab" * (MAX_BODY // 2 + 10_000) + b'"}'
    status, headers, reply, health = post_raw(live_node.url, body)
    assert status == 413
    assert headers["content-type"].startswith("application/json")
    assert json.loads(reply)["error"]["code"] == "too_large"
    assert health == 200  # same connection, next request: the body was read to its end


def test_an_oversized_chunked_body_gets_413_after_it_is_drained(live_node: LiveNode) -> None:
    status, _, reply, health = post_raw(live_node.url, b"x" * (MAX_BODY + 100_000), chunked=True)
    assert (status, json.loads(reply)["error"]["code"], health) == (413, "too_large", 200)


def test_the_body_limit_is_exactly_2_mib(live_node: LiveNode) -> None:
    def body_of(size: int) -> bytes:
        prefix, suffix = b'{"tx": "0x', b'"}'
        fill = size - len(prefix) - len(suffix)
        return prefix + b"a" * fill + suffix

    at_limit_status, _, at_limit, _ = post_raw(live_node.url, body_of(MAX_BODY))
    assert at_limit_status == 400 and json.loads(at_limit)["error"]["code"] == "malformed"
    over_status, _, _, _ = post_raw(live_node.url, body_of(MAX_BODY + 1))
    assert over_status == 413


def test_a_batch_reports_each_tx_on_its_own(live_node: LiveNode) -> None:
    files = live_node.files
    nonce = next_nonce(live_node, "bob")
    good = signed_transfer(files, "bob", os.urandom(32), 3, nonce)
    wrong_chain = signed_transfer(files, "bob", os.urandom(32), 3, nonce + 1, chain_id="elsewhere")
    reply = HTTP.post(
        f"{live_node.url}/txs",
        json={"txs": [codec.to_hex(good.encode()), "0xzz", codec.to_hex(wrong_chain.encode())]},
    )
    assert reply.status_code == 200
    results = reply.json()["results"]
    assert results[0] == {"tx_hash": codec.to_hex(good.hash)}
    assert results[1]["error"]["code"] == "malformed"
    assert results[2]["error"]["code"] == "wrong_chain"
    assert_typed_error(HTTP.post(f"{live_node.url}/txs", json={"txs": ["0x00"] * 2001}), 400, "malformed")


# ---- reads ---------------------------------------------------------------------------------------


def test_unknown_and_malformed_tx_hashes(live_node: LiveNode) -> None:
    unknown = codec.to_hex(os.urandom(32))
    assert HTTP.get(f"{live_node.url}/tx/{unknown}").json() == {"tx_hash": unknown, "status": "unknown"}
    assert_typed_error(HTTP.get(f"{live_node.url}/tx/0x1234"), 400, "malformed")
    assert_typed_error(HTTP.get(f"{live_node.url}/tx/nothex"), 400, "malformed")


def test_blocks_by_height_hash_and_latest_agree(live_node: LiveNode) -> None:
    wait_until(lambda: live_node.status()["height"] >= 2, 10, "two blocks")
    one = HTTP.get(f"{live_node.url}/blocks/1").json()
    assert HTTP.get(f"{live_node.url}/blocks/{one['hash']}").json() == one
    zero = HTTP.get(f"{live_node.url}/blocks/0").json()
    assert one["parent"] == zero["hash"] and one["height"] == 1
    for key in (
        "hash",
        "parent",
        "time_ms",
        "tx_root",
        "state_root",
        "events_root",
        "author",
        "signature",
        "txs",
    ):
        assert key in one
    latest = HTTP.get(f"{live_node.url}/blocks/latest").json()
    assert latest["height"] >= 2
    head = live_node.status()["height"]
    assert_typed_error(HTTP.get(f"{live_node.url}/blocks/{head + 1000}"), 404, "not_found")
    assert_typed_error(HTTP.get(f"{live_node.url}/blocks/{codec.to_hex(os.urandom(32))}"), 404, "not_found")
    assert_typed_error(HTTP.get(f"{live_node.url}/blocks/-1"), 404, "not_found")
    assert_typed_error(HTTP.get(f"{live_node.url}/blocks/first"), 400, "malformed")
    assert_typed_error(HTTP.get(f"{live_node.url}/blocks/0x1234"), 400, "malformed")


@pytest.mark.parametrize(
    "path",
    [
        "/blocks/99999999999999999999",
        "/blocks/" + "9" * 5000,
        "/sync/blocks?from=99999999999999999999",
        "/sync/blocks?limit=99999999999999999999",
        "/state/system/param?key=99999999999999999999",
    ],
)
def test_out_of_range_numbers_are_client_errors(live_node: LiveNode, path: str) -> None:
    reply = HTTP.get(f"{live_node.url}{path}", timeout=10)
    assert reply.status_code < 500, reply.text
    if reply.status_code >= 400:
        assert_typed_error(reply)


def test_sync_serves_encoded_blocks_for_followers(live_node: LiveNode) -> None:
    blocks = HTTP.get(f"{live_node.url}/sync/blocks", params={"from": 0, "limit": 2}).json()["blocks"]
    assert [b["height"] for b in blocks] == [0, 1]
    decoded = [Block.decode(codec.from_hex(b["block"])) for b in blocks]
    assert [b.header.height for b in decoded] == [0, 1]
    assert decoded[1].header.parent == decoded[0].header.hash and decoded[1].verify_signature()


def test_accounts_and_state_reads(live_node: LiveNode) -> None:
    alice = live_node.account(live_node.files.keys["alice"].public_key)
    assert set(alice) >= {"address", "free", "reserved", "staked", "nonce"}
    assert_typed_error(HTTP.get(f"{live_node.url}/accounts/0x12"), 400, "malformed")
    fee = HTTP.get(f"{live_node.url}/state/system/param", params={"key": "tx_fee"}).json()
    assert fee["value"] == 1
    assert_typed_error(HTTP.get(f"{live_node.url}/state/nope/nothing"), 404, "not_found")
    assert_typed_error(
        HTTP.get(f"{live_node.url}/state/system/param", params={"key": "0xzz"}), 400, "malformed"
    )


def test_status_names_the_chain(live_node: LiveNode) -> None:
    status = live_node.status()
    assert status["chain_id"] == live_node.files.genesis.chain_id
    assert status["genesis_hash"] == codec.to_hex(live_node.files.genesis.hash)
    for key in ("height", "block_hash", "state_root", "workers_attested"):
        assert key in status
    assert status["role"] == "sequencer" and status["halted"] is None


def test_metrics_are_prometheus_text(live_node: LiveNode) -> None:
    post_tx(live_node.url, b"\x00")  # one refusal to count
    reply = HTTP.get(f"{live_node.url}/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    assert {
        "umbra_height",
        "umbra_blocks",
        "umbra_txs_admitted",
        "umbra_txs_refused",
        "umbra_mempool_txs",
    } <= set(families)
    assert (
        families["umbra_height"].samples[0].value == live_node.status()["height"]
        or families["umbra_height"].samples[0].value >= 1
    )
    refused = {
        s.labels.get("code"): s.value
        for s in families["umbra_txs_refused"].samples
        if s.name.endswith("_total")
    }
    assert refused.get("malformed", 0) >= 1


def test_openapi_and_docs_are_served(live_node: LiveNode) -> None:
    spec = HTTP.get(f"{live_node.url}/openapi.json").json()
    assert {"/tx", "/tx/{tx_hash}", "/blocks/{ref}", "/events", "/health", "/metrics", "/status"} <= set(
        spec["paths"]
    )
    docs = HTTP.get(f"{live_node.url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_server_sent_events_deliver_blocks_with_their_txs(live_node: LiveNode) -> None:
    files = live_node.files
    stx = signed_transfer(files, "charlie", os.urandom(32), 9, next_nonce(live_node, "charlie"))
    wanted = codec.to_hex(stx.hash)
    seen_blocks: list[dict[str, Any]] = []
    with HTTP.stream("GET", f"{live_node.url}/events", timeout=httpx.Timeout(20)) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines).startswith(":")  # the greeting comment arrives before any block
        assert post_tx(live_node.url, stx.encode()).status_code == 200
        event = None
        deadline = time.monotonic() + 20
        for line in lines:
            assert time.monotonic() < deadline, "no block event with our tx"
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event == "block":
                block = json.loads(line.removeprefix("data:"))
                seen_blocks.append(block)
                if wanted in block["txs"]:
                    break
    assert seen_blocks and all(
        {"height", "hash", "state_root", "txs", "events"} <= set(b) for b in seen_blocks
    )
    heights = [b["height"] for b in seen_blocks]
    assert heights == sorted(heights) and len(set(heights)) == len(heights)


@pytest.mark.parametrize(
    "data",
    [
        {"source": os.urandom(32), "amount": 5, "ids": [os.urandom(32)], "note": None},
        {"amount": 2**100},  # beyond 64 bits
        {"by_key": {os.urandom(32): 1, 7: "seven"}},  # map keys that are not text
    ],
)
def test_block_events_stream_as_jsonable_whatever_their_values(data: dict[str, Any]) -> None:
    header = Header(3, os.urandom(32), 1, os.urandom(32), os.urandom(32), os.urandom(32), os.urandom(32), 1)
    event = Event("balances", "Transfer", data, 0)
    outcome = BlockOutcome([], [], [], [event], {}, StateRoot())
    payload = json.loads(_notice_json(BlockNotice(Block(header, bytes(64), ()), outcome)))
    assert payload["events"] == [codec.jsonable(event.to_cbor())]
    assert payload["hash"] == codec.to_hex(header.hash) and payload["txs"] == []


# ---- nodes with special settings -----------------------------------------------------------------


def test_rate_limits_answer_429_with_retry_after_but_never_limit_health(tmp_path: Path) -> None:
    files = write_chain_files(tmp_path / "files")
    with (
        serve_node(files, tmp_path / "node", rate=0.5, burst=3, produce=False) as live,
        httpx.Client(base_url=live.url, timeout=10) as client,
    ):
        codes = [client.get("/status").status_code for _ in range(6)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429, 429]
        limited = client.get("/status")
        error = assert_typed_error(limited, 429, "rate_limited")
        assert error["message"]
        assert 1 <= int(limited.headers["retry-after"]) <= 2
        assert all(client.get("/health").status_code == 200 for _ in range(30))
        limited_tx = client.post("/tx", json={"tx": "0x00"})
        assert limited_tx.status_code == 429 and "retry-after" in limited_tx.headers


def test_a_tx_waits_in_the_mempool_until_a_block_is_made(tmp_path: Path) -> None:
    files = write_chain_files(tmp_path / "files")
    with serve_node(files, tmp_path / "node", produce=False) as live:
        first = signed_transfer(files, "alice", os.urandom(32), 1, 0)
        assert post_tx(live.url, first.encode()).status_code == 200
        assert HTTP.get(f"{live.url}/tx/{codec.to_hex(first.hash)}").json()["status"] == "pending"
        assert_typed_error(post_tx(live.url, first.encode()), 409, "duplicate")
        second = signed_transfer(files, "alice", os.urandom(32), 1, 1)
        waited = post_tx(live.url, second.encode(), wait="true", timeout="0.2")
        assert waited.status_code == 202 and waited.json()["status"] == "pending"
        live.node.produce_block(files.sequencer)
        assert HTTP.get(f"{live.url}/tx/{codec.to_hex(first.hash)}").json()["status"] == "included"
        assert_typed_error(post_tx(live.url, first.encode()), 409)  # included now: still refused


def test_concurrent_waiting_submissions_all_learn_of_their_inclusion(tmp_path: Path) -> None:
    """`?wait=true` must not miss a block committed between admission and the start of waiting:
    every answer arrives long before the wait timeout, and says included."""
    names = tuple(f"user{i}" for i in range(16))
    files = write_chain_files(tmp_path / "files", accounts=names, params={"block_ms": 5})
    wait_timeout = 20.0

    with serve_node(files, tmp_path / "node") as live:

        def submit(job: tuple[str, int]) -> tuple[float, int, str | None]:
            name, nonce = job
            stx = signed_transfer(files, name, os.urandom(32), 1, nonce)
            started = time.monotonic()
            reply = post_tx(live.url, stx.encode(), wait="true", timeout=str(wait_timeout))
            return time.monotonic() - started, reply.status_code, reply.json().get("status")

        jobs = [(name, nonce) for nonce in range(4) for name in names]
        with ThreadPoolExecutor(max_workers=64) as pool:
            results = list(pool.map(submit, jobs))
    assert all(code == 200 and status == "included" for _, code, status in results), results
    slowest = max(elapsed for elapsed, _, _ in results)
    assert slowest < wait_timeout / 2, f"a waiter missed its block and sat out the timeout ({slowest:.1f} s)"


def test_the_pending_nonce_counts_the_senders_waiting_txs(tmp_path: Path) -> None:
    """Two senders of one account (an operator beside its worker host) pick the next free nonce."""
    files = write_chain_files(tmp_path / "files")
    with serve_node(files, tmp_path / "node", produce=False) as live:
        alice, bob = files.keys["alice"].public_key, files.keys["bob"].public_key
        for nonce in (0, 1, 3):  # 3 waits behind a gap: the next free nonce is 2
            assert (
                post_tx(live.url, signed_transfer(files, "alice", bob, 1, nonce).encode()).status_code == 200
            )
        account = live.account(alice)
        assert (account["nonce"], account["pending_nonce"]) == (0, 2)
        assert live.account(bob)["pending_nonce"] == live.account(bob)["nonce"] == 0
