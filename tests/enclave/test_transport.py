"""The host/core boundary: frames, the in-memory transport, and a real core process."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from tests.enclave.helpers import SimNet
from umbra.enclave.transport import (
    MAX_FRAME,
    CoreError,
    InMemoryTransport,
    PipeTransport,
    read_frame,
    write_frame,
)

pytestmark = pytest.mark.timeout(60)


def test_frames_round_trip_and_refuse_garbage() -> None:
    stream = io.BytesIO()
    write_frame(stream, {"op": "status", "n": 1})
    write_frame(stream, {"op": "x"})
    stream.seek(0)
    assert read_frame(stream) == {"op": "status", "n": 1}
    assert read_frame(stream) == {"op": "x"}
    assert read_frame(stream) is None  # a clean end
    for raw, code in [
        ((MAX_FRAME + 1).to_bytes(4, "big"), "bad_frame"),
        ((5).to_bytes(4, "big") + b"ab", "core_gone"),
        ((1).to_bytes(4, "big") + b"\x01", "bad_frame"),  # CBOR, but not a map
        ((2).to_bytes(4, "big") + b"\xa1\xff", "bad_frame"),
    ]:
        with pytest.raises(CoreError) as caught:
            read_frame(io.BytesIO(raw))
        assert caught.value.code == code


def test_in_memory_transport_surfaces_refusals() -> None:
    transport = InMemoryTransport(
        lambda request: {"error": {"code": "nope", "message": f"no {request['op']}"}}
    )
    with pytest.raises(CoreError, match="no status"):
        transport.call({"op": "status"})
    with pytest.raises(CoreError) as caught:
        InMemoryTransport(lambda _request: {"weird": True}).call({"op": "x"})
    assert caught.value.code == "bad_reply"


def test_a_core_process_answers_and_its_death_is_reported(tmp_path: Path) -> None:
    net = SimNet.start(tmp_path / "net")
    machine = tmp_path / "w" / "machine.sim"
    root = tmp_path / "root.pem"
    net.authority.save(root)
    args = ["--sealed-dir", str(tmp_path / "w" / "core"), "--tee", "sim", "--machine-file", str(machine)]
    core = PipeTransport([*args, "--sim-root", str(root)], python=sys.executable)
    try:
        with pytest.raises(CoreError) as caught:
            core.call({"op": "status"})
        assert caught.value.code == "not_initialized"
        reply = core.call({"op": "init", "genesis": net.genesis.encode(), "role": "worker"})
        assert len(reply["identity_pk"]) == 32 and reply["persistent"]
        assert core.call({"op": "feed", "blocks": [net.raw(0)]})["height"] == 0
        with pytest.raises(CoreError) as caught:
            core.call({"op": "no-such-op"})
        assert caught.value.code == "unknown_op"
    finally:
        core.close()
    with pytest.raises(CoreError) as caught:
        core.call({"op": "status"})
    assert caught.value.code == "core_gone"
    # A platform that cannot start answers every request with the reason (no dead pipe).
    broken = PipeTransport(
        ["--sealed-dir", str(tmp_path / "x"), "--tee", "sim", "--machine-file", str(tmp_path / "none.sim")]
    )
    try:
        with pytest.raises(CoreError) as caught:
            broken.call({"op": "init", "genesis": net.genesis.encode()})
        assert caught.value.code == "platform" and "no simulated CPU" in caught.value.message
    finally:
        broken.close()
