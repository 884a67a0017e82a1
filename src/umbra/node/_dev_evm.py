"""`umbra dev --ordering evm`: a local anvil, the inbox deployed on it, and N node command lines.

dev.py owns the processes (spawning, supervision, dev.json); this module owns what is particular
to evm mode:

    evm = EvmDev(data_dir, nodes=2, first_port=9944)
    anvil_argv = evm.anvil_command()            # raises AnvilNotFound with how to install it
    ... start it ...; evm.wait_anvil(alive=...)
    genesis_path = evm.prepare(genesis_path)    # deploy + bind + publish once; verify on resume
    for name, argv, url in evm.node_commands(umbra_argv): ... start them ...

Resuming: anvil keeps its chain in DIR/anvil/state.json (dumped every second and on exit), the
deployment is recorded in DIR/evm.json, and the keys in DIR/keys/evm-*.key. The EVM keys are made
here and funded with anvil's `anvil_setBalance`, so no well-known private key is involved.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import coincurve

import umbra
from umbra import codec, crypto
from umbra.chain.types import GenesisConfig
from umbra.ordering.evm import EvmSettings, evm_binding, evm_genesis_params, open_inbox
from umbra.ordering.evm_inbox import InboxError, deploy_inbox
from umbra.ordering.evm_rpc import EvmAccount, EvmError, EvmRpc, address_hex, load_evm_key, parse_address

__all__ = [
    "ANVIL_NPM_PACKAGE",
    "AnvilNotFound",
    "EvmDev",
    "anvil_command",
    "find_anvil",
    "free_port",
    "fund",
    "new_evm_key",
]

ANVIL_NPM_PACKAGE = "@foundry-rs/anvil-linux-amd64@1.7.1"
DEV_CONFIRMATIONS = 2
DEV_BLOCK_TIME = 1  # seconds; anvil mines on this timer so that confirmations arrive
_FUNDS = 10**24  # wei: a million ether, far more than a dev network ever spends on gas


class AnvilNotFound(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _repo_root() -> Path:
    # src/umbra/__init__.py -> the checkout (editable installs run from the repo)
    return Path(umbra.__file__).resolve().parents[2]


def find_anvil() -> Path | None:
    """$UMBRA_ANVIL, else `anvil` on PATH, else the repo's node_modules/.bin/anvil."""
    candidates: list[Path] = []
    env = os.environ.get("UMBRA_ANVIL")
    if env:
        candidates.append(Path(env))
    on_path = shutil.which("anvil")
    if on_path:
        candidates.append(Path(on_path))
    candidates += [
        _repo_root() / "node_modules" / ".bin" / "anvil",
        Path.cwd() / "node_modules" / ".bin" / "anvil",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def anvil_command(
    *, port: int, block_time: int | None = DEV_BLOCK_TIME, state: Path | None = None
) -> list[str]:
    anvil = find_anvil()
    if anvil is None:
        raise AnvilNotFound(
            "evm ordering needs anvil and none was found ($UMBRA_ANVIL, PATH, node_modules/.bin/anvil). "
            f"Install it from npm in the repo root: `make anvil`, or `npm install --no-save {ANVIL_NPM_PACKAGE}`"
        )
    argv = [str(anvil), "--host", "127.0.0.1", "--port", str(port), "--silent"]
    if block_time is not None:  # else anvil's default: a block for each tx, more on request
        argv += ["--block-time", str(block_time)]
    if state is not None:
        argv += ["--state", str(state), "--state-interval", "1"]
    return argv


def new_evm_key(path: Path) -> bytes:
    """A secp256k1 key file (0x-hex, mode 0600), made once and reused."""
    if path.exists():
        return load_evm_key(path)
    secret = coincurve.PrivateKey().secret
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("0x" + secret.hex() + "\n")
    os.replace(tmp, path)
    return secret


def fund(rpc: EvmRpc, address: bytes, amount: int = _FUNDS) -> None:
    """Give a dev account funds through anvil's cheat RPC (works on anvil only)."""
    rpc.call("anvil_setBalance", "0x" + address.hex(), hex(amount))


def wait_rpc(url: str, *, alive: Callable[[], bool] = lambda: True, timeout: float = 60.0) -> None:
    rpc = EvmRpc(url, timeout=2)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with contextlib.suppress(EvmError):
                rpc.block_number()
                return
            if not alive():
                raise RuntimeError(f"anvil exited before answering at {url}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"anvil did not answer at {url} within {timeout:.0f} s")
            time.sleep(0.1)
    finally:
        rpc.close()


def _keep_good_state(state: Path) -> None:
    """anvil rewrites its state file every second; a kill -9 mid-write leaves it truncated and anvil
    would refuse to start. Keep the last readable one aside and fall back to it."""
    backup = state.with_suffix(".json.good")
    if not state.exists():
        return
    try:
        json.loads(state.read_bytes())
    except ValueError:
        if backup.exists():
            print(f"umbra dev: {state} is damaged; resuming from the previous good copy", flush=True)
            shutil.copyfile(backup, state)
        return
    shutil.copyfile(state, backup)


class EvmDev:
    def __init__(self, data_dir: Path, *, nodes: int, first_port: int, anvil_port: int) -> None:
        self.dir = data_dir
        self.nodes = nodes
        self.first_port = first_port
        self.anvil_port = anvil_port
        self.rpc_url = f"http://127.0.0.1:{anvil_port}"
        self.inbox: bytes | None = None

    def anvil_command(self) -> list[str]:
        state_dir = self.dir / "anvil"
        state_dir.mkdir(parents=True, exist_ok=True)
        state = state_dir / "state.json"
        _keep_good_state(state)
        return anvil_command(port=self.anvil_port, state=state)

    def wait_anvil(self, *, alive: Callable[[], bool] = lambda: True, timeout: float = 60.0) -> None:
        wait_rpc(self.rpc_url, alive=alive, timeout=timeout)

    def _relayer_key(self, index: int) -> Path:
        return self.dir / "keys" / f"evm-relayer{index}.key"

    def _node_key(self, index: int) -> Path:
        """The Umbra key node `index` attests derived blocks with (named in genesis evm_nodes)."""
        path = self.dir / "keys" / f"node{index}.key"
        if not path.exists():
            crypto.save_signing_key(path, crypto.SigningKey.generate())
        return path

    def prepare(self, genesis_path: Path) -> Path:
        """Bind the dev genesis at `genesis_path` to a freshly deployed inbox (first start), or check
        that the inbox still holds it (resume). Rewrites `genesis_path` in place; returns it."""
        rpc = EvmRpc(self.rpc_url)
        try:
            genesis = GenesisConfig.from_cbor(codec.decode(genesis_path.read_bytes()))
            record = self.dir / "evm.json"
            deployer = EvmAccount(rpc, new_evm_key(self.dir / "keys" / "evm-deployer.key"))
            for index in range(self.nodes):
                fund(rpc, EvmAccount(rpc, new_evm_key(self._relayer_key(index))).address)
            if evm_binding(genesis) is not None and record.exists():
                self.inbox = parse_address(json.loads(record.read_text())["inbox"])
                try:
                    open_inbox(self._settings(), genesis, rpc)
                except InboxError as exc:
                    raise RuntimeError(
                        f"the EVM chain in {self.dir / 'anvil'} no longer holds this network's inbox ({exc}); "
                        "start over with --fresh"
                    ) from None
                return genesis_path
            fund(rpc, deployer.address)
            inbox = deploy_inbox(deployer)
            attesters = [crypto.load_signing_key(self._node_key(i)).public_key for i in range(self.nodes)]
            latest = rpc.block(rpc.block_number())
            bound = replace(
                genesis,
                sequencer=bytes(32),  # no sequencer: blocks are derived, unsigned
                time_ms=genesis.time_ms if latest is None else latest.timestamp * 1000,
                params={
                    **genesis.params,
                    **evm_genesis_params(rpc.chain_id(), inbox.address, nodes=attesters),
                },
            )
            receipt = inbox.publish_genesis(deployer, bound)
            self.inbox = inbox.address
            tmp = genesis_path.with_suffix(".tmp")
            tmp.write_bytes(bound.encode())
            os.replace(tmp, genesis_path)
            doc = {
                "inbox": address_hex(inbox.address),
                "genesis_block": receipt.block_number,
                "rpc": self.rpc_url,
            }
            record.write_text(json.dumps(doc, indent=2))
            return genesis_path
        finally:
            rpc.close()

    def _settings(self) -> EvmSettings:
        assert self.inbox is not None
        return EvmSettings(url=self.rpc_url, inbox=self.inbox, confirmations=DEV_CONFIRMATIONS)

    def node_commands(self, umbra_argv: list[str], genesis_path: Path) -> list[tuple[str, list[str], str]]:
        """(name, argv, url) for each node: node0 on `first_port`, the others on free ports."""
        assert self.inbox is not None, "prepare() first"
        out = []
        for index in range(self.nodes):
            port = self.first_port if index == 0 else free_port()
            name = f"node{index}"
            argv = [
                *umbra_argv,
                "node",
                "--ordering",
                "evm",
                "--evm-url",
                self.rpc_url,
                "--inbox",
                address_hex(self.inbox),
                "--confirmations",
                str(DEV_CONFIRMATIONS),
                "--evm-key",
                str(self._relayer_key(index)),
                "--node-key",
                str(self._node_key(index)),
                "--genesis",
                str(genesis_path),
                "--data-dir",
                str(self.dir / name),
                "--port",
                str(port),
            ]
            out.append((name, argv, f"http://127.0.0.1:{port}"))
        return out
