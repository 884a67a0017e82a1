"""The boundary between a worker's untrusted host and its enclave core.

Requests are `{op, ...}` maps and replies `{ok: true, ...}` or `{error: {code, message}}`, each
one deterministic CBOR frame prefixed with its length (4 bytes, big-endian). The host holds a
`CoreTransport`; what is behind it is either the core in its own OS process (`PipeTransport`,
production: the host's memory never holds what the core keeps) or a `Core` object in this very
process (`InMemoryTransport`, unit tests), which still round-trips every message through the codec
so both paths speak exactly the same bytes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any, Protocol

from umbra import codec

__all__ = [
    "MAX_FRAME",
    "CoreError",
    "CoreTransport",
    "InMemoryTransport",
    "PipeTransport",
    "read_frame",
    "write_frame",
]

# A contract's code (256 KiB), its state and a sealed input fit with room to spare; anything
# bigger is a broken or hostile peer, refused before allocating it.
MAX_FRAME = 32 * 1024 * 1024
_LENGTH_BYTES = 4


class CoreError(Exception):
    """The core refused a request, or the core itself is gone. `code` is stable, `message` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class CoreTransport(Protocol):
    """Carries one request to the core and brings back its reply; raises CoreError on refusal."""

    def call(self, request: dict[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


def write_frame(stream: IO[bytes], message: dict[str, Any]) -> None:
    payload = codec.encode(message)
    if len(payload) > MAX_FRAME:
        raise CoreError(
            "too_large", f"message of {len(payload)} bytes exceeds the {MAX_FRAME}-byte frame limit"
        )
    stream.write(len(payload).to_bytes(_LENGTH_BYTES, "big") + payload)
    stream.flush()


def read_frame(stream: IO[bytes]) -> dict[str, Any] | None:
    """The next message, or None at a clean end of stream (the peer closed between frames)."""
    header = _read_exactly(stream, _LENGTH_BYTES, allow_eof=True)
    if header is None:
        return None
    length = int.from_bytes(header, "big")
    if length > MAX_FRAME:
        raise CoreError("bad_frame", f"peer announced a {length}-byte frame; the limit is {MAX_FRAME}")
    payload = _read_exactly(stream, length, allow_eof=False)
    assert payload is not None
    try:
        message = codec.decode_canonical(payload)
    except codec.CodecError as exc:
        raise CoreError("bad_frame", f"frame is not deterministic CBOR: {exc}") from None
    if not isinstance(message, dict):
        raise CoreError("bad_frame", "a frame must carry a CBOR map")
    return message


def _read_exactly(stream: IO[bytes], size: int, *, allow_eof: bool) -> bytes | None:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            if allow_eof and remaining == size:
                return None
            raise CoreError("core_gone", "the stream ended in the middle of a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _unwrap(reply: dict[str, Any]) -> dict[str, Any]:
    error = reply.get("error")
    if isinstance(error, dict):
        raise CoreError(str(error.get("code", "error")), str(error.get("message", "")))
    if reply.get("ok") is not True:
        raise CoreError("bad_reply", "the core's reply is neither ok nor an error")
    return reply


class InMemoryTransport:
    """A core in this process (tests): every request and reply still crosses the codec."""

    def __init__(self, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self._handle = handler
        self._lock = threading.Lock()

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        wire = codec.encode(request)
        with self._lock:
            reply = self._handle(codec.decode_canonical(wire))
        reply_wire = codec.encode(reply)
        if len(reply_wire) > MAX_FRAME:
            raise CoreError("too_large", "the core's reply exceeds the frame limit")
        return _unwrap(codec.decode_canonical(reply_wire))

    def close(self) -> None:
        """Nothing to release: the core object belongs to whoever built it."""


class PipeTransport:
    """The core as a child process (`python -m umbra.enclave ARGS`), spoken to over its stdin/stdout.

    The child's stderr is the host's (its log lines go where the host's go). One request is in
    flight at a time. If the child dies, every later call raises CoreError("core_gone").
    """

    def __init__(
        self, args: Sequence[str], *, python: str = sys.executable, env: dict[str, str] | None = None
    ) -> None:
        self._popen = subprocess.Popen(
            [python, "-m", "umbra.enclave", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            env=env,
            close_fds=True,
        )
        assert self._popen.stdin is not None and self._popen.stdout is not None
        self._to_core: IO[bytes] = self._popen.stdin
        self._from_core: IO[bytes] = self._popen.stdout
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self._popen.pid

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._popen.poll() is not None:
                raise CoreError("core_gone", f"the enclave core exited with status {self._popen.returncode}")
            try:
                write_frame(self._to_core, request)
                reply = read_frame(self._from_core)
            except (BrokenPipeError, OSError) as exc:
                raise CoreError("core_gone", f"the enclave core is unreachable: {exc}") from None
            if reply is None:
                raise CoreError("core_gone", "the enclave core closed its pipe")
        return _unwrap(reply)

    def close(self) -> None:
        """End the core: closing its stdin is its signal to exit; it is killed if it lingers."""
        with contextlib.suppress(OSError):
            self._to_core.close()
        try:
            self._popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait(timeout=5)
        with contextlib.suppress(OSError):
            self._from_core.close()


def serve(handler: Callable[[dict[str, Any]], dict[str, Any]], stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The core side of `PipeTransport`: answer frames until the host closes the pipe."""
    while True:
        request = read_frame(stdin)
        if request is None:
            return
        write_frame(stdout, handler(request))


def detach_stdio() -> tuple[IO[bytes], IO[bytes]]:
    """Take fds 0/1 for the frame protocol and point Python's stdout at stderr, so that a stray
    print anywhere in the core can never corrupt a frame."""
    frames_in = os.fdopen(os.dup(0), "rb", buffering=0)
    frames_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return frames_in, frames_out
