"""The worker's HTTP API in process, over real HTTP, with a stub host: `POST /query` (answered by
the lean ASGI route) keeps the FastAPI route's contract: validation, statuses, the reply's JSON."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.node.conftest import serve_app
from umbra import codec
from umbra.client._node import UmbraError
from umbra.enclave.transport import CoreError
from umbra.worker.api import MAX_QUERY_HEX, create_app

pytestmark = pytest.mark.timeout(60)

CONTRACT = "0x" + "11" * 32
ANSWER = {
    "worker": b"\x01" * 32,
    "reply": {
        "contract": b"\x11" * 32,
        "height": 9,
        "state_hash": b"\x02" * 32,
        "sealed_reply_hash": b"\x03" * 32,
        "query_hash": b"\x04" * 32,
    },
    "signature": b"\x05" * 64,
    "sealed_reply": b"\x06" * 48,
}


class _Host:
    """Answers, or refuses the way a core or node would, by the first byte of the sealed query."""

    fatal = None
    height = 9

    def __init__(self) -> None:
        self.asked: list[tuple[bytes, bytes, int | None]] = []

    def query(self, contract: bytes, sealed: bytes, min_height: int | None) -> dict[str, Any]:
        self.asked.append((contract, sealed, min_height))
        if sealed[:1] == b"\xc0":
            raise CoreError("cannot_open", "the query does not open with this contract's key")
        if sealed[:1] == b"\xbe":
            raise UmbraError("behind", "this worker has applied height 9, not yet 12; retry shortly")
        return ANSWER


@pytest.fixture
def api() -> Any:
    host = _Host()
    with serve_app(create_app(host)) as url, httpx.Client(base_url=url, timeout=30) as client:  # type: ignore[arg-type]
        yield client, host


def _refused(reply: httpx.Response, status: int, code: str) -> str:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code and error["message"]
    return str(error["message"])


def test_a_query_is_answered_with_the_reply_document(api: Any) -> None:
    client, host = api
    reply = client.post("/query", json={"contract": CONTRACT, "query": "0xab01", "height": 7})
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    assert reply.json() == {
        "worker": codec.to_hex(ANSWER["worker"]),  # type: ignore[arg-type]
        "height": 9,
        "reply": codec.jsonable(ANSWER["reply"]),
        "signature": codec.to_hex(ANSWER["signature"]),  # type: ignore[arg-type]
        "sealed_reply": codec.to_hex(ANSWER["sealed_reply"]),  # type: ignore[arg-type]
    }
    assert host.asked == [(b"\x11" * 32, b"\xab\x01", 7)]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"{not json", "JSON"),
        (b"[1, 2]", "object"),
        (b'{"query": "0x00"}', "body.contract"),
        (b'{"contract": "0x00", "query": 5}', "body.query"),
        (b'{"contract": "0x00", "query": "0x00", "height": -1}', "body.height"),
        (b'{"contract": "0x00", "query": "0x00", "height": true}', "body.height"),
        (b'{"contract": "0x00", "query": "0x00", "height": "3"}', "body.height"),
    ],
)
def test_malformed_bodies_are_refused_before_the_host(api: Any, body: bytes, where: str) -> None:
    client, host = api
    message = _refused(client.post("/query", content=body), 400, "malformed")
    assert where in message and not host.asked


def test_bad_hex_core_refusals_and_a_lagging_worker_keep_their_statuses(api: Any) -> None:
    client, _ = api
    assert "contract" in _refused(
        client.post("/query", json={"contract": "0x11", "query": "0x00"}), 400, "malformed"
    )
    too_long = "0x" + "00" * (MAX_QUERY_HEX // 2)
    _refused(client.post("/query", json={"contract": CONTRACT, "query": too_long}), 400, "malformed")
    _refused(client.post("/query", json={"contract": CONTRACT, "query": "0xc0"}), 400, "cannot_open")
    _refused(client.post("/query", json={"contract": CONTRACT, "query": "0xbe", "height": 12}), 503, "behind")
    assert client.get("/health").json() == {"ok": True, "height": 9}  # the other routes: FastAPI's
    assert "/query" in client.get("/openapi.json").json()["paths"]
