"""Secrets never reach the host: not its memory, not the chain, not logs, not API responses.

The worker host runs in this test process with its core in a child process, exactly as in
production. A client in another process stores marker notes in a contract (inputs, state,
outputs, queries). Afterwards no string or bytes reachable from any object of this process
contains a marker, and no 32-byte value in it is the master secret, a contract key or the
worker's own keys (each candidate is tried as a key and compared with the published public
keys). The node's database, every log and the APIs' answers hold no marker either."""

from __future__ import annotations

import contextlib
import gc
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.node.conftest import UMBRA, child_env, free_port, wait_until
from tests.worker.conftest import wait_keyed
from umbra import codec, crypto
from umbra.enclave.keytree import MasterKey
from umbra.enclave.transport import PipeTransport
from umbra.worker.api import create_app
from umbra.worker.host import Host, HostConfig
from umbra.worker.main import HostOptions, core_args

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Built at run time, so the test's own constants never match the full pattern.
PREFIX = "UMBRA" + "-LEAK-"
PATTERN = re.compile((PREFIX + "[0-9a-f]{16}").encode())


def _strings_in_memory() -> Iterator[bytes]:
    """Every str/bytes reachable from the gc-tracked objects of this process (str as UTF-8).

    It walks referents transitively: CPython stops tracking containers that hold only atomic
    values (a dict of strings, a tuple of bytes), so the tracked objects alone would miss them."""
    gc.collect()
    seen: set[int] = set()
    stack: list[Any] = list(gc.get_objects())
    # Running functions' locals live in interpreter frames the gc does not list: add every
    # thread's stack of frames as roots.
    for frame in sys._current_frames().values():
        current: Any = frame
        while current is not None:
            stack.append(current.f_locals)
            current = current.f_back
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            yield obj.encode("utf-8", "replace")
        elif isinstance(obj, bytes | bytearray):
            yield bytes(obj)
        elif isinstance(obj, memoryview):
            with contextlib.suppress(ValueError, TypeError):
                yield obj.tobytes()
        elif not isinstance(obj, int | float | complex | bool | type(None)):
            stack.extend(gc.get_referents(obj))


def _key_candidates(blobs: list[bytes]) -> set[bytes]:
    out = set()
    for blob in blobs:
        if len(blob) == 32:
            out.add(blob)
    return out


@pytest.fixture
def in_process_worker(network: Any, tmp_path: Path) -> Iterator[tuple[Any, Host, str]]:
    net = network(operators=("w0",))
    gatekeeper = net.start_host("gatekeeper", "gatekeeper")
    wait_keyed(gatekeeper)
    port = free_port()
    options = HostOptions(
        node_url=net.node_url,
        operator=net.key("w0-operator"),
        data_dir=tmp_path / "w0",
        port=port,
        sim_root=net.sim_root,
    )
    host = Host(
        HostConfig(node_url=net.node_url, operator=options.operator, endpoint=f"http://127.0.0.1:{port}"),
        PipeTransport(core_args(options)),
    )
    host.start()
    stop = threading.Event()
    loop = threading.Thread(target=host.run, args=(stop,), daemon=True)
    loop.start()
    server = uvicorn.Server(uvicorn.Config(create_app(host), host="127.0.0.1", port=port, log_level="error"))
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    try:
        wait_until(
            lambda: host.info()["status"] == "active" and 0 in host.info()["epochs_held"],
            60,
            "the worker keyed",
        )
        yield net, host, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        stop.set()
        loop.join(timeout=10)
        serving.join(timeout=10)
        host.close()


def test_no_secret_reaches_the_host_the_chain_the_logs_or_the_apis(
    in_process_worker: tuple[Any, Host, str], tmp_path: Path
) -> None:
    net, host, worker_url = in_process_worker
    env = {**child_env(), "UMBRA_NODE": net.node_url, "UMBRA_KEY": str(net.keys["alice"]), "UMBRA_BIN": UMBRA}
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("_leak_client.py")),
            PREFIX,
            str(tmp_path / "vault.py"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert PATTERN.search(done.stdout.encode()) is None
    contract = codec.from_hex(done.stdout.split()[1])

    # The scan must see what it looks for: plant a control marker and a control key first.
    control = {"note": PREFIX + "0123456789abcdef", "key": crypto.EcdhKey.generate().secret}
    scanned = list(_strings_in_memory())
    assert any(PATTERN.search(blob) for blob in scanned) and control["key"] in _key_candidates(scanned)
    del control, scanned

    # 1. This process: no marker in any reachable string or bytes.
    blobs = list(_strings_in_memory())
    leaks = [blob[:80] for blob in blobs if PATTERN.search(blob)]
    assert leaks == [], f"plaintext reached the host process: {leaks[:3]}"

    # 2. No 32-byte value here is a secret key: try each as one and compare with public keys.
    master_pk = codec.from_hex(net.state("keys", "master", (0).to_bytes(8, "big"))["master_pk"])
    published = net.state("keys", "contract_key", contract + (0).to_bytes(8, "big"))
    contract_ecdh, contract_sign = codec.from_hex(published["ecdh_pk"]), codec.from_hex(published["sign_pk"])
    me = net.state("registry", "worker", host.identity)
    my_ecdh = codec.from_hex(me["ecdh_pk"])
    candidates = _key_candidates(blobs)
    assert len(candidates) > 10  # the scan sees real data (hashes, public keys...)
    for candidate in candidates:
        assert MasterKey(candidate).public_key != master_pk, "the master secret is in the host"
        x = crypto.EcdhKey(candidate).public_key
        assert x not in (contract_ecdh, my_ecdh, master_pk), "an ECDH secret is in the host"
        assert crypto.SigningKey(candidate).public_key not in (contract_sign, host.identity), (
            "a signing seed is in the host"
        )

    # 3. The chain database, the logs and the API answers hold no marker.
    for path in [*net.root.rglob("*.sqlite*"), *net.root.rglob("*.log"), *tmp_path.rglob("*.sealed")]:
        assert PATTERN.search(path.read_bytes()) is None, f"a marker is in {path}"
    answers = [
        httpx.get(f"{net.node_url}/sync/blocks", params={"from": 0, "limit": 500}, timeout=10).content,
        httpx.get(
            f"{net.node_url}/state/contracts/state", params={"key": codec.to_hex(contract)}, timeout=10
        ).content,
        httpx.get(f"{worker_url}/info", timeout=10).content,
    ]
    for height in range(net.client().status()["height"] + 1):
        answers.append(httpx.get(f"{net.node_url}/blocks/{height}", timeout=10).content)
    for answer in answers:
        assert PATTERN.search(answer) is None
