"""Physical limits measured in the same run: what the metrics are compared against."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from bench._harness import Limit, percentile
from umbra import crypto


def _rate(fn: Callable[[], object], seconds: float) -> float:
    count = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            fn()
        count += 100
    return count / elapsed


def ed25519_verify(seconds: float) -> list[Limit]:
    key = ed25519.Ed25519PrivateKey.generate()
    public, message = key.public_key(), os.urandom(200)
    signature = key.sign(message)
    one = _rate(lambda: public.verify(signature, message), seconds)
    with ThreadPoolExecutor(2) as pool:  # verification releases the GIL
        start = time.perf_counter()
        n = sum(
            pool.map(
                lambda _: int(_rate(lambda: public.verify(signature, message), seconds) * seconds), range(2)
            )
        )
        two = n / (time.perf_counter() - start)
    return [
        Limit("Ed25519 verify/s (1 core)", one, "ops/s"),
        Limit("Ed25519 verify/s (2 cores)", two, "ops/s"),
    ]


def hpke(seconds: float) -> list[Limit]:
    key = crypto.EcdhKey.generate()
    sealed = crypto.hpke_seal(key.public_key, b"x" * 64, b"info")
    return [
        Limit(
            "HPKE seal/s",
            _rate(lambda: crypto.hpke_seal(key.public_key, b"x" * 64, b"info"), seconds),
            "ops/s",
        ),
        Limit("HPKE open/s", _rate(lambda: key.open(sealed, b"info"), seconds), "ops/s"),
    ]


def aead(seconds: float) -> list[Limit]:
    data, nonce = os.urandom(1 << 16), os.urandom(12)
    chacha, gcm = ChaCha20Poly1305(os.urandom(32)), AESGCM(os.urandom(32))
    mb = len(data) / 1e6
    return [
        Limit(
            "ChaCha20-Poly1305 throughput",
            _rate(lambda: chacha.encrypt(nonce, data, None), seconds) * mb,
            "MB/s",
        ),
        Limit("AES-256-GCM throughput", _rate(lambda: gcm.encrypt(nonce, data, None), seconds) * mb, "MB/s"),
    ]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def loopback_http(requests: int) -> list[Limit]:
    """A minimal asyncio HTTP/1.1 echo server and a raw keep-alive client: the floor under any API."""
    loop = asyncio.new_event_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = loop.run_until_complete(asyncio.start_server(_echo, sock=sock))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    client = socket.create_connection(("127.0.0.1", port))
    request = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 64\r\n\r\n" + b"y" * 64
    samples = []
    for _ in range(requests):
        start = time.perf_counter()
        client.sendall(request)
        got = b""
        while not got.endswith(b"y" * 64):
            got += client.recv(4096)
        samples.append((time.perf_counter() - start) * 1000)
    client.close()
    time.sleep(0.05)  # the echo task reads the EOF and ends before the loop stops
    loop.call_soon_threadsafe(server.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    return [Limit("loopback HTTP round trip p50", percentile(samples, 50), "ms")]


def ed25519_sign(seconds: float) -> list[Limit]:
    key, message = ed25519.Ed25519PrivateKey.generate(), os.urandom(200)
    return [Limit("Ed25519 sign/s (1 core)", _rate(lambda: key.sign(message), seconds), "ops/s")]


def query_ceiling(found: list[Limit]) -> list[Limit]:
    """What one core can answer if a query cost nothing but the worker's own cryptography: open
    the sealed query (HPKE), verify the caller's signature, seal the reply (HPKE), sign it."""
    rate = {limit.name: limit.value for limit in found}
    seconds = sum(
        1 / rate[name]
        for name in ("HPKE open/s", "Ed25519 verify/s (1 core)", "HPKE seal/s", "Ed25519 sign/s (1 core)")
    )
    return [Limit("query crypto ceiling (1 core)", 1 / seconds, "queries/s")]


def measure(seconds: float, requests: int) -> list[Limit]:
    found = [*ed25519_verify(seconds), *ed25519_sign(seconds), *hpke(seconds), *aead(seconds)]
    return [*found, *query_ceiling(found), *loopback_http(requests)]
