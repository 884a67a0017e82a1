"""Unit tests without a sandbox: fixed-point helpers, strict value encoding, allowlists, the SDK's
decorators, the wire framing and the thread pinning of onnxruntime."""

from __future__ import annotations

import datetime
import decimal
import os
import sys
import threading
import time
import types
from typing import Any

import cbor2
import pytest

from umbra.contract import (
    Contract,
    JobSpec,
    Limits,
    LocalRunner,
    _host,
    _values,
    _wire,
    command,
    fixed,
    query,
)
from umbra.contract._services import host_allowed

# ---- fixed ---------------------------------------------------------------------------------------


def test_round_div_rounds_half_to_even_exactly() -> None:
    assert [fixed.round_div(n, 2) for n in (-3, -1, 1, 3, 5)] == [-2, 0, 0, 2, 2]
    assert fixed.round_div(7, 3) == 2 and fixed.round_div(8, 3) == 3 and fixed.round_div(-8, 3) == -3
    assert fixed.round_div(5, -2) == -2
    big = 10**40 + 1
    assert fixed.round_div(big * 3, 3) == big
    with pytest.raises(ZeroDivisionError):
        fixed.round_div(1, 0)


def test_quantize_and_arithmetic() -> None:
    assert (
        fixed.quantize(0.1234564) == 123456 and fixed.quantize(-2.5, 1) == -2 and fixed.quantize(3.5, 1) == 4
    )
    assert fixed.quantize_all([0.5, 1.25], scale=100) == [50, 125]
    assert fixed.dequantize(1_500_000) == 1.5
    assert fixed.mul(1_500_000, 2_000_000) == 3_000_000 and fixed.div(3_000_000, 2_000_000) == 1_500_000
    assert fixed.mean([1, 2]) == 2 and fixed.mean([1, 2, 4]) == 2
    assert fixed.weighted_mean([10, 20], [3, 1]) == 12  # 12.5 -> 12
    assert fixed.mean_vectors([[1, 10], [3, 20]]) == [2, 15]
    assert fixed.weighted_mean_vectors([[0, 100], [100, 0]], [1, 3]) == [75, 25]
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            fixed.quantize(bad)
    with pytest.raises(ValueError):
        fixed.quantize(1.0, scale=0)
    with pytest.raises(ValueError):
        fixed.mean_vectors([[1], [1, 2]])
    with pytest.raises(ValueError):
        fixed.weighted_mean([1], [0])


# ---- values --------------------------------------------------------------------------------------


def test_plain_values_round_trip() -> None:
    value = {"a": [1, -(2**80), 2.5, None, True, b"\x00", "s", (1, 2)], 7: {b"k": {}}}
    assert _values.decode(_values.encode(value, what="v"), what="v") == {
        "a": [1, -(2**80), 2.5, None, True, b"\x00", "s", [1, 2]],
        7: {b"k": {}},
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"s": {1}}, "output['s'] is a set"),
        ([datetime.datetime.now()], "output[0] is a datetime"),
        ({"d": decimal.Decimal(1)}, "output['d'] is a Decimal"),
        ({"o": object()}, "output['o'] is a object"),
        ({"c": 1j}, "is a complex"),
    ],
)
def test_non_plain_values_are_refused_with_their_path(value: Any, message: str) -> None:
    with pytest.raises(_values.ValueRejected) as error:
        _values.encode(value, what="output")
    assert message in str(error.value)


def test_cycles_and_depth_are_refused() -> None:
    cyclic: dict[str, Any] = {}
    cyclic["me"] = cyclic
    with pytest.raises(_values.ValueRejected, match=r"state\[.me.\] contains itself"):
        _values.encode(cyclic, what="state")
    deep: Any = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(_values.ValueRejected, match="nesting depth"):
        _values.decode(cbor2.dumps(deep), what="x")


def test_decoding_refuses_every_tag_but_bignums() -> None:
    """Untrusted bytes from the sandbox must not reach cbor2's tag decoders (regex, MIME, shared
    references...). This re-derives the list of tags cbor2 decodes natively."""
    native = []
    for tag in range(0, 2048):
        encoded = cbor2.dumps(cbor2.CBORTag(tag, 0))
        try:
            decoded = cbor2.loads(encoded, tag_hook=lambda *a: "hook")
        except Exception:
            decoded = None
        if decoded != "hook":
            native.append(tag)
    missing = set(native) - set(_values._NATIVE_TAGS) - {2, 3}
    assert not missing, f"cbor2 decodes tags {sorted(missing)} natively: add them to _values._NATIVE_TAGS"
    for tag in (*_values._NATIVE_TAGS, 2000, 99999):
        with pytest.raises(_values.ValueRejected):
            _values.decode(cbor2.dumps(cbor2.CBORTag(tag, "x")), what="x")
    assert _values.decode(cbor2.dumps(2**100), what="x") == 2**100
    for hostile in (b"\x9f\x01\xff", b"\xa2\x01\x01\x01\x02", b"\xff", b"\x5a\xff\xff\xff\xff"):
        with pytest.raises(_values.ValueRejected):
            _values.decode(hostile, what="x")


# ---- http allowlist ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.example.com/x", True),
        ("https://API.example.com/x", True),
        ("https://api.example.com:443/x", True),
        ("https://api.example.com:8443/x", False),
        ("http://api.example.com/x", True),
        ("https://a.b.example.org/", True),
        ("https://example.org/", False),
        ("https://example.org.evil.com/", False),
        ("https://evil.com/?https://api.example.com", False),
        ("https://api.example.com@evil.com/", False),
        ("https://127.0.0.1:8080/", True),
        ("https://[::1]:9000/", True),
        ("file:///etc/passwd", False),
        ("https://api.example.com/\n", False),
        ("not a url", False),
    ],
)
def test_host_allowlist(url: str, allowed: bool) -> None:
    allowlist = ["api.example.com", "*.example.org", "127.0.0.1:8080", "[::1]:9000", "bad entry :/"]
    assert host_allowed(url, allowlist) is allowed


# ---- the SDK's own rules ---------------------------------------------------------------------------


def test_decorators_refuse_misuse() -> None:
    with pytest.raises(TypeError, match="must not start with '_'"):

        @command
        def _hidden(self: Any, ctx: Any) -> None: ...

    with pytest.raises(TypeError, match="applies to a method defined with def"):
        command(staticmethod(len))  # type: ignore[type-var]
    with pytest.raises(TypeError, match="plain function"):

        @command
        async def run(self: Any, ctx: Any) -> None: ...

    with pytest.raises(TypeError, match="both"):

        @query
        @command
        def both(self: Any, ctx: Any) -> None: ...

    with pytest.raises(TypeError, match="init runs once"):

        class Bad(Contract):
            @command
            def init(self, ctx: Any) -> None: ...


def test_subclass_overrides_update_the_method_sets() -> None:
    class Base(Contract):
        @command
        def a(self, ctx: Any) -> None: ...

        @query
        def b(self, ctx: Any) -> None: ...

    class Child(Base):
        def a(self, ctx: Any) -> None: ...  # no longer callable

        @command
        def b(self, ctx: Any) -> None: ...  # now a command

    assert Base.__umbra_commands__ == {"a"} and Base.__umbra_queries__ == {"b"}
    assert Child.__umbra_commands__ == {"b"} and Child.__umbra_queries__ == frozenset()


def test_limits_and_job_specs_are_checked() -> None:
    with pytest.raises(ValueError):
        Limits(cpu_seconds=0)
    with pytest.raises(ValueError):
        Limits(wall_seconds=float("inf"))
    with pytest.raises(ValueError):
        Limits(cpu_seconds=1.5)  # type: ignore[arg-type]
    local = LocalRunner(
        "from umbra.contract import Contract\nclass C(Contract):\n    pass\n", contract_id=bytes(32)
    )
    seed = bytes(16)
    assert local.run(JobSpec(kind="bogus", random_seed=seed)).error_code == "request"  # type: ignore[arg-type]
    assert local.run(JobSpec(kind="command", random_seed=seed)).error_code == "request"
    assert local.run(JobSpec(kind="init", random_seed=seed, args={"x": {1, 2}})).error_code == "request"
    assert local.run(JobSpec(kind="init", random_seed=seed, height=-1)).error_code == "request"
    assert local.run(JobSpec(kind="init", random_seed=seed)).ok


# ---- wire --------------------------------------------------------------------------------------


def test_frames_round_trip_and_are_bounded() -> None:
    read_fd, write_fd = os.pipe()
    try:
        writer = threading.Thread(
            target=lambda: (
                _wire.write_frame(write_fd, _wire.JOB, b"abc"),
                _wire.write_frame(write_fd, _wire.RESULT, b"x" * 100_000),  # more than a pipe holds
            )
        )
        writer.start()
        reader = _wire.FrameReader(read_fd, 200_000)
        assert reader.read() == (_wire.JOB, b"abc")
        assert reader.read() == (_wire.RESULT, b"x" * 100_000)
        writer.join()
        _wire.write_frame(write_fd, _wire.JOB, b"y" * 10)
        small = _wire.FrameReader(read_fd, 5)
        with pytest.raises(_wire.ProtocolError, match="exceeds the limit"):
            small.read()
        with pytest.raises(TimeoutError):
            _wire.FrameReader(read_fd, 10).read(deadline=0)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_writes_to_a_peer_that_never_reads_end_at_the_deadline() -> None:
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            _wire.write_frame_until(write_fd, _wire.JOB, b"x" * (1 << 20), time.monotonic() + 0.2)
        assert time.monotonic() - started < 2
    finally:
        os.close(read_fd)
        os.close(write_fd)


# ---- thread pinning --------------------------------------------------------------------------------


def test_onnxruntime_sessions_default_to_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    class SessionOptions:
        intra_op_num_threads = 0
        inter_op_num_threads = 0

    class InferenceSession:
        def __init__(self, model: bytes, sess_options: Any = None, providers: Any = None) -> None:
            self.options = sess_options

    fake = types.ModuleType("onnxruntime")
    fake.SessionOptions = SessionOptions  # type: ignore[attr-defined]
    fake.InferenceSession = InferenceSession  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    _host._pin_threads()
    session = InferenceSession(b"model")
    assert session.options.intra_op_num_threads == 1 and session.options.inter_op_num_threads == 1
    own = SessionOptions()
    own.intra_op_num_threads = 4
    assert InferenceSession(b"model", own).options.intra_op_num_threads == 4  # explicit choices stand
