"""Signature checks for batches of txs, in worker processes.

Ed25519 verification releases the GIL, but a thread verifying one signature after another takes
the GIL back between every two checks, and beside a busy block thread and API each hand-over may
wait a whole switch interval: verifying in threads slowed everything else down. So large batches
go to worker processes (`python -m umbra.node._verify`), a feeder thread per process:

    request = count (4 bytes, big-endian) || count x (digest 32 || signature 64 || public key 32)
    reply   = count bytes, 1 where the signature verifies, else 0

A worker imports only the crypto it needs and exits when its stdin closes, which also happens
when the node dies by kill -9. The verdicts are the ones an in-process check gives (Ed25519
verification is deterministic); small batches are checked in place, where a round trip to a
process would cost more, and a batch whose process failed is checked in place as well.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from umbra.crypto import _hazmat

if TYPE_CHECKING:  # the worker process imports only the crypto
    from umbra.chain.types import SignedTx

__all__ = ["Verifier"]

log = logging.getLogger("umbra.node")

# Below this many txs a batch is checked in the calling thread (a process round trip costs ~1 ms).
_IN_PLACE_BELOW = 64
_MIN_CHUNK = 64  # smallest share of a batch sent to one process
_REPLY_TIMEOUT = 60.0  # seconds; 2,000 checks take well under one on a loaded core
_DIGEST, _SIGNATURE, _KEY = 32, 64, 32
_ITEM = _DIGEST + _SIGNATURE + _KEY


@dataclass
class _Job:
    payload: bytes
    count: int
    verdicts: Future[bytes] = field(default_factory=Future)


def _check(payload: bytes) -> bytes:
    """The verdicts for a request body: what a worker process answers."""
    out = bytearray()
    for at in range(0, len(payload), _ITEM):
        digest = payload[at : at + _DIGEST]
        signature = payload[at + _DIGEST : at + _DIGEST + _SIGNATURE]
        key = payload[at + _DIGEST + _SIGNATURE : at + _ITEM]
        out.append(_hazmat.ed25519_verify(key, signature, digest))
    return bytes(out)


class Verifier:
    """Verifies tx signatures; large batches in `processes` worker processes, started lazily."""

    def __init__(self, processes: int | None = None) -> None:
        self._processes = processes or os.cpu_count() or 2
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._feeders: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def warm(self) -> None:
        """Start the worker processes now, so that the first large batch does not wait for them."""
        with self._lock:
            if self._feeders or self._closed:
                return
            for index in range(self._processes):
                feeder = threading.Thread(target=self._feed, name=f"verify-{index}", daemon=True)
                feeder.start()
                self._feeders.append(feeder)

    def verify(self, txs: Sequence[SignedTx]) -> list[bool]:
        if len(txs) < _IN_PLACE_BELOW or self._closed:
            return [stx.verify_signature() for stx in txs]
        self.warm()
        items = [self._item(stx) for stx in txs]
        size = max(_MIN_CHUNK, -(-len(items) // self._processes))
        jobs = [
            _Job(b"".join(items[at : at + size]), len(items[at : at + size]))
            for at in range(0, len(items), size)
        ]
        for job in jobs:
            self._jobs.put(job)
        verdicts = bytearray()
        for job in jobs:
            try:
                verdicts += job.verdicts.result(timeout=_REPLY_TIMEOUT)
            except (OSError, TimeoutError):  # the process died under this job, or is stuck: check here
                verdicts += _check(job.payload)
        return [bool(v) for v in verdicts]

    @staticmethod
    def _item(stx: SignedTx) -> bytes:
        digest, signature, key = stx.signing_digest(), stx.signature, stx.tx.sender
        if len(signature) != _SIGNATURE or len(key) != _KEY:  # decode refuses these; never verifies
            return bytes(_ITEM)
        return digest + signature + key

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for _ in self._feeders:
                self._jobs.put(None)
            self._feeders.clear()

    def _feed(self) -> None:
        """One worker process: hand it jobs one at a time until `close`; restart it if it dies."""
        proc: subprocess.Popen[bytes] | None = None
        try:
            proc = _spawn()  # now: `warm` means the process is up before the first batch
            while (job := self._jobs.get()) is not None:
                try:
                    if proc is None or proc.poll() is not None:
                        proc = _spawn()
                    reply = _exchange(proc, job)
                except OSError as exc:
                    log.warning("signature worker process failed (%s); restarting it", exc)
                    if proc is not None:
                        proc.kill()
                        proc.wait()
                    proc = None
                    job.verdicts.set_exception(exc)
                else:
                    job.verdicts.set_result(reply)
        except OSError as exc:  # cannot start a process at all: the batches are checked in place
            log.error("cannot start a signature worker process: %s", exc)
            with self._lock:
                self._closed = True
        finally:
            if proc is not None:
                _stop(proc)


def _spawn() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "umbra.node._verify"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )


def _exchange(proc: subprocess.Popen[bytes], job: _Job) -> bytes:
    stdin, stdout = proc.stdin, proc.stdout
    assert stdin is not None and stdout is not None
    stdin.write(job.count.to_bytes(4, "big") + job.payload)
    stdin.flush()
    reply = stdout.read(job.count)
    if len(reply) != job.count:
        raise OSError(f"worker process exited with {proc.poll()}")
    return reply


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()  # the worker exits at end of input
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """The worker process: answer requests until the node closes our stdin (or dies)."""
    while len(header := requests.read(4)) == 4:
        count = int.from_bytes(header, "big")
        payload = requests.read(count * _ITEM)
        if len(payload) != count * _ITEM:
            return
        replies.write(_check(payload))
        replies.flush()


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
