"""Length-prefixed frames over pipes, shared by the runner, the warm host and its job children.

A frame is `u32 big-endian length || kind byte || payload`, so that every reader can refuse an
oversized frame from its header alone, before buffering any of it.

Every reader here treats its peer as hostile: the host runs contract import code and the child
runs contract methods, so lengths are bounded, reads and writes can be given deadlines, and a
partial frame never blocks a reader that also has other work (see `FrameReader`).
"""

from __future__ import annotations

import os
import select
import struct
import time

_HEADER = struct.Struct(">IB")
HEADER_SIZE = _HEADER.size

# runner -> host (stdin)
LOAD = ord("L")  # CBOR {code, contract, limits, landlock, spare_fd}: the first frame, exactly once
BLOB = ord("B")  # CBOR {key, data}: cache a blob in the host so children inherit it through fork
DROP = ord("D")  # CBOR [key, ...]: forget cached blobs
TAKEN = ord("T")  # CBOR pid: a spare the runner used (after its job): the host forks a replacement
EXIT = ord("X")  # empty: the host exits
# host -> runner (stdout); spares travel separately, over a unix socket with their pipes
READY = ord("Y")  # CBOR {info, protections}
LOAD_ERROR = ord("E")  # UTF-8 text
EXITED = ord("Z")  # CBOR {pid, exit, signal, cpu_ms}: a child was reaped
FATAL = ord("F")  # UTF-8 text: the host hit an internal error and exits
# runner <-> job child, over the child's own pipes
JOB = ord("J")  # CBOR job body (see _runner.job_body)
RPC = ord("Q")  # child -> runner, CBOR {op, ...}
REPLY = ord("R")  # runner -> child, CBOR {ok, value | error}
RESULT = ord("O")  # child -> runner, CBOR result map (see _child.execute)


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed frame within bounds."""


def pack(kind: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(len(payload), kind) + payload


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_frame(fd: int, kind: int, payload: bytes = b"") -> None:
    """Write one whole frame to a blocking fd (raises BrokenPipeError if the reader is gone)."""
    if len(payload) < 65536:
        write_all(fd, pack(kind, payload))
        return
    # Large payloads: avoid copying them into one buffer with the header.
    parts = [memoryview(_HEADER.pack(len(payload), kind)), memoryview(payload)]
    while parts:
        written = os.writev(fd, parts)
        while parts and written >= len(parts[0]):
            written -= len(parts[0])
            parts.pop(0)
        if parts and written:
            parts[0] = parts[0][written:]


def write_frame_until(fd: int, kind: int, payload: bytes, deadline: float) -> None:
    """Write one frame to a non-blocking fd, waiting for room until a monotonic deadline: a peer
    that stops reading must not hold the writer past it (TimeoutError)."""
    parts = [memoryview(_HEADER.pack(len(payload), kind)), memoryview(payload)]
    while parts:
        try:
            written = os.writev(fd, parts)
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError from None
            select.select([], [fd], [], remaining)
            continue
        while parts and written >= len(parts[0]):
            written -= len(parts[0])
            parts.pop(0)
        if parts and written:
            parts[0] = parts[0][written:]


class FrameReader:
    """Incremental frame parser for one fd. `limit` caps a frame's payload length.

    `fill()` does at most one read, so a caller multiplexing with select never blocks on a peer
    that sent half a frame. `read(deadline)` blocks (up to a monotonic deadline) for a whole frame.
    """

    __slots__ = ("_buf", "eof", "fd", "limit")

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self._buf = bytearray()
        self.eof = False

    def fill(self) -> None:
        chunk = os.read(self.fd, 1 << 20)
        if not chunk:
            self.eof = True
        self._buf += chunk

    def pending(self) -> bool:
        """Bytes buffered or the end of the stream seen: something arrived that was not read."""
        return bool(self._buf) or self.eof

    def next(self) -> tuple[int, bytes] | None:
        """The next complete frame already buffered, or None."""
        if len(self._buf) < HEADER_SIZE:
            return None
        length, kind = _HEADER.unpack_from(self._buf)
        if length > self.limit:
            raise ProtocolError(f"frame of {length} bytes exceeds the limit of {self.limit}")
        end = HEADER_SIZE + length
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[HEADER_SIZE:end])
        del self._buf[:end]
        return kind, payload

    def read(self, deadline: float | None = None) -> tuple[int, bytes] | None:
        """Block for the next frame. None at a clean EOF; TimeoutError past the deadline."""
        while True:
            frame = self.next()
            if frame is not None:
                return frame
            if self.eof:
                if self._buf:
                    raise ProtocolError(f"EOF inside a frame ({len(self._buf)} bytes buffered)")
                return None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                    raise TimeoutError
            self.fill()
