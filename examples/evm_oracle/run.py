"""EVM oracle: an Umbra contract fetches a price through `ctx.http`, signs it with its own
secp256k1 key (`ctx.sign`), and the signed report is posted to a Vyper consumer on anvil, which
accepts it only if `ecrecover` gives the contract's EVM address as the Umbra chain publishes it.

The script starts a price feed on 127.0.0.1 (it wants an API key, which the oracle's owner
uploads as a sealed secret) and its own anvil, found as `umbra dev` finds it: $UMBRA_ANVIL, else
`anvil` on PATH, else the repo's node_modules/.bin/anvil (`make anvil` installs it from npm). It
compiles Consumer.vy with vyper 0.4.3, which lives in a venv of its own under ~/.cache/umbra
(made on first use with pip), since vyper pins a cbor2 older than the one umbra needs.

It checks that a genuine report is accepted, and that a forged signature, a tampered value and a
replayed report are refused; and that `ctx.http` is refused in replicated jobs and to hosts
off the allowlist.

Runs against the network named by UMBRA_NODE with the dev accounts of UMBRA_DEV_JSON.
UMBRA_EXAMPLE_MARKER, if set, goes into the feed's API key (the privacy test looks for it).
Exits 0 iff every check passes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import coincurve
import httpx

from umbra import codec, crypto
from umbra.client import Client, UmbraError, dev_keys
from umbra.ordering.evm_rpc import EvmAccount, EvmError, EvmRpc, address_hex, keccak256

HERE = Path(__file__).resolve().parent
CONTRACT = HERE / "contract.py"
CONSUMER = HERE / "Consumer.vy"
MARKER = os.environ.get("UMBRA_EXAMPLE_MARKER", "")
VYPER = "vyper==0.4.3"
PRICES = (12_345, 12_400)


# ---- tools: vyper, anvil, a price feed -----------------------------------------------------------


def vyper_python() -> Path:
    """A Python that has vyper 0.4.3: its own venv under ~/.cache/umbra, made once (~10 s)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "umbra"
    venv = cache / VYPER.replace("==", "-")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs build it once
        if not (venv / ".ready").exists():
            print(f"installing {VYPER} into {venv} ...")
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", VYPER]
            subprocess.run(pip, check=True, stdout=subprocess.DEVNULL)
            (venv / ".ready").touch()
    return venv / "bin" / "python"


def compile_vyper(source: Path) -> tuple[list[dict[str, Any]], bytes]:
    """(abi, creation bytecode) of a Vyper source, compiled as umbra's build compiles its inbox."""
    program = (
        "import json, sys, vyper\n"
        "out = vyper.compile_code(open(sys.argv[1]).read(), output_formats=['abi', 'bytecode'])\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [str(vyper_python()), "-c", program, str(source)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"vyper failed on {source.name}: {done.stderr.strip()[-2000:]}")
    out = json.loads(done.stdout)
    return out["abi"], bytes.fromhex(out["bytecode"].removeprefix("0x"))


def find_anvil() -> Path | None:
    """As `umbra dev` finds it: $UMBRA_ANVIL, else `anvil` on PATH, else node_modules/.bin/anvil."""
    candidates = [os.environ.get("UMBRA_ANVIL"), shutil.which("anvil")]
    candidates += [str(HERE.parents[1] / "node_modules" / ".bin" / "anvil"), "node_modules/.bin/anvil"]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def anvil() -> Iterator[EvmRpc]:
    """A fresh anvil on a free port (a block per tx), in its own process group, killed at the end."""
    binary = find_anvil()
    if binary is None:
        raise RuntimeError("no anvil: set UMBRA_ANVIL, put anvil on PATH, or run `make anvil` in the repo")
    port = free_port()
    argv = [str(binary), "--host", "127.0.0.1", "--port", str(port), "--silent"]
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    rpc = EvmRpc(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(EvmError):
                rpc.block_number()
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("anvil did not start")
            time.sleep(0.1)
        yield rpc
    finally:
        rpc.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class Feed(ThreadingHTTPServer):
    """GET /price -> {"price": N}, for requests that carry the API key."""

    def __init__(self, api_key: str) -> None:
        self.api_key, self.price, self.served = api_key, PRICES[0], 0
        feed = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/price" or self.headers.get("Authorization") != f"Bearer {feed.api_key}":
                    self.send_error(401 if self.path == "/price" else 404)
                    return
                body = json.dumps({"price": feed.price}).encode()
                feed.served += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:  # quiet
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


# ---- EVM calls -------------------------------------------------------------------------------------


def selector(abi: list[dict[str, Any]], name: str) -> bytes:
    entry = next(e for e in abi if e.get("type") == "function" and e["name"] == name)
    return keccak256(f"{name}({','.join(i['type'] for i in entry['inputs'])})".encode())[:4]


def word(value: int | bytes) -> bytes:
    return value.to_bytes(32, "big") if isinstance(value, int) else value.rjust(32, b"\0")


def recovery_v(signature: bytes, message: bytes, address: bytes) -> int | None:
    """`ctx.sign` gives r || s without a recovery id: find the v (27 or 28) that recovers `address`."""
    for recovery in (0, 1):
        with contextlib.suppress(ValueError, TypeError):
            key = coincurve.PublicKey.from_signature_and_message(
                signature + bytes([recovery]), keccak256(message), hasher=None
            )
            if keccak256(key.format(compressed=False)[1:])[12:] == address:
                return 27 + recovery
    return None


def published_evm_address(node: httpx.Client, contract: str) -> bytes:
    """The contract's EVM address as a registered gatekeeper signed it on the Umbra chain."""
    epoch = int(node.get("/state/keys/epoch").json()["value"])
    key = "0x" + codec.from_hex(contract).hex() + epoch.to_bytes(8, "big").hex()
    raw = node.get("/state/keys/contract_key", params={"key": key, "encoding": "cbor"}).json()["value"]
    doc = codec.decode(codec.from_hex(raw))
    body = {k: doc[k] for k in ("chain_id", "contract", "epoch", "ecdh_pk", "sign_pk", "evm_address")}
    gatekeepers = node.get("/state/keys/gatekeepers").json()["value"]
    if codec.to_hex(doc["gatekeeper"]) not in gatekeepers or not crypto.verify(
        "umbra/contract-key/v1", body, doc["signature"], doc["gatekeeper"]
    ):
        raise RuntimeError("the published contract key is not signed by a gatekeeper")
    address: bytes = doc["evm_address"]
    return address


def main() -> int:
    keys = dev_keys()
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    def refused(action: Callable[[], Any], reason: str, what: str) -> None:
        try:
            action()
        except UmbraError as exc:
            check(exc.code == "contract_error" and reason in exc.message, f"{what}: refused ({exc.message})")
        else:
            check(False, f"{what}: was allowed")

    abi, bytecode = compile_vyper(CONSUMER)
    print(f"compiled Consumer.vy: {len(bytecode)} bytes")
    feed = Feed(api_key=f"{MARKER}{secrets.token_hex(16)}")
    url = f"http://127.0.0.1:{feed.port}/price"
    manifest = {"name": "price-oracle", "http_allowlist": [f"127.0.0.1:{feed.port}"]}
    with (
        Client(key=keys["alice"]) as alice,
        Client(key=keys["bob"]) as bob,
        httpx.Client(base_url=alice.url, timeout=30) as node,
        anvil() as rpc,
    ):
        cid = alice.deploy(CONTRACT, init={"url": url}, manifest=manifest).contract_id
        alice.upload_secret(cid, "api_key", feed.api_key.encode())
        oracle = published_evm_address(node, cid)
        print(f"deployed oracle {cid}; its published EVM address is {address_hex(oracle)}")

        poster = EvmAccount(rpc, coincurve.PrivateKey().secret)
        rpc.call("anvil_setBalance", "0x" + poster.address.hex(), hex(10**21))
        consumer_address = poster.transact(None, bytecode + word(oracle)).contract_address
        assert consumer_address is not None
        print(f"deployed the consumer at {address_hex(consumer_address)} on anvil")

        def view(name: str) -> int:
            return int.from_bytes(rpc.eth_call(consumer_address, selector(abi, name)), "big")

        def submit(value: int, round_: int, signature: bytes, v: int) -> tuple[int, str | None]:
            """Post submit(...) as a tx; (receipt status, revert reason from a dry run)."""
            data = selector(abi, "submit") + b"".join(
                word(x) for x in (value, round_, signature[:32], signature[32:], v)
            )
            reason = None
            try:
                rpc.call(
                    "eth_call", {"to": "0x" + consumer_address.hex(), "data": "0x" + data.hex()}, "latest"
                )
            except EvmError as exc:
                reason = str(exc)
            receipt = poster.wait(poster.send(consumer_address, data, gas=200_000))
            return receipt.status, reason

        check(view("oracle") == int.from_bytes(oracle, "big"), "the consumer trusts the published address")

        report = bob.call(cid, "report")  # anyone may ask for a report
        value, round_ = report.output["value"], report.output["round"]
        signature = codec.from_hex(report.output["signature"])
        message = word(value) + word(round_)
        check(
            report.verified and (value, round_) == (PRICES[0], 1) and feed.served == 1,
            f"bob gets a verified report: {value} for round {round_}, fetched through ctx.http",
        )
        v = recovery_v(signature, message, oracle)
        check(
            len(signature) == 64 and v is not None, f"the signature recovers the published address with v={v}"
        )
        v = v or 27

        forger = coincurve.PrivateKey()
        forged = forger.sign_recoverable(keccak256(message), hasher=None)
        status, reason = submit(value, round_, forged[:64], 27 + forged[64])
        check(
            status == 0 and "not signed by the oracle" in str(reason),
            f"a forged signature: reverted ({reason})",
        )
        status, reason = submit(value + 1, round_, signature, v)
        check(status == 0 and "not signed by the oracle" in str(reason), "a tampered value: reverted")
        check(view("latest") == 0, "nothing was stored")

        status, reason = submit(value, round_, signature, v)
        check(status == 1 and reason is None, "the genuine report is accepted")
        check((view("latest"), view("round")) == (PRICES[0], 1), f"the consumer stores {view('latest')}")
        status, reason = submit(value, round_, signature, v)
        check(status == 0 and "stale round" in str(reason), "the same report again: reverted (stale round)")

        feed.price = PRICES[1]
        report = alice.call(cid, "report")
        signature = codec.from_hex(report.output["signature"])
        message = word(report.output["value"]) + word(report.output["round"])
        status, _ = submit(
            report.output["value"],
            report.output["round"],
            signature,
            recovery_v(signature, message, oracle) or 27,
        )
        check(
            status == 1 and (view("latest"), view("round")) == (PRICES[1], 2),
            f"the next round's report ({PRICES[1]}) replaces it",
        )

        refused(lambda: alice.call(cid, "report", replicas=2), "unreplicated", "ctx.http in a replicated job")
        elsewhere = alice.deploy(CONTRACT, init={"url": url}, manifest={"http_allowlist": ["127.0.0.1:1"]})
        alice.upload_secret(elsewhere.contract_id, "api_key", feed.api_key.encode())
        refused(
            lambda: alice.call(elsewhere.contract_id, "report"), "http_allowlist", "a feed off the allowlist"
        )
        check(feed.served == 2, "the feed served the two reports only")
    print(f"{'all checks pass' if not failures else f'{len(failures)} check(s) failed'}")
    return 0 if not failures else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UmbraError as exc:
        print(f"FAIL {exc.code}: {exc.message}")
        sys.exit(1)
