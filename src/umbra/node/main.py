"""Process entry points for `umbra node`."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import httpx
import uvicorn

from umbra import codec, crypto
from umbra.chain.store import Store, StoreCorrupt
from umbra.chain.types import GenesisConfig
from umbra.client._node import UmbraError
from umbra.node.api import create_app
from umbra.node.service import Node, NodeConfig
from umbra.ordering.evm import EvmSettings, evm_binding, open_inbox
from umbra.ordering.evm_inbox import Inbox, InboxError
from umbra.ordering.evm_rpc import EvmError, EvmRpc

__all__ = ["check_store", "run_node"]

log = logging.getLogger("umbra.node")


def check_store(data_dir: Path) -> list[str]:
    path = data_dir / "chain.sqlite"
    if not path.exists():
        return [f"no database at {path}"]
    try:
        store = Store(path)
    except StoreCorrupt as exc:
        return [str(exc)]
    try:
        return store.full_check()
    finally:
        store.close()


def _fetch_genesis(url: str) -> GenesisConfig:
    try:
        reply = httpx.get(f"{url.rstrip('/')}/genesis", timeout=10)
        reply.raise_for_status()
        genesis = GenesisConfig.from_cbor(codec.decode(codec.from_hex(reply.json()["genesis"])))
    except (httpx.HTTPError, ValueError, KeyError, codec.CodecError) as exc:
        raise UmbraError("no_genesis", f"cannot fetch the genesis from {url}: {exc}") from None
    if codec.to_hex(genesis.hash) != reply.json().get("hash"):
        raise UmbraError("no_genesis", "the genesis served does not match its advertised hash")
    return genesis


def _genesis_from_inbox(evm: EvmSettings) -> GenesisConfig:
    """A new node joining an existing deployment takes the genesis the inbox holds."""
    rpc = EvmRpc(evm.url)
    try:
        genesis, _ = Inbox(rpc, evm.inbox).fetch_genesis()
    except (InboxError, EvmError) as exc:
        raise UmbraError("no_genesis", f"cannot fetch the genesis from the inbox: {exc}") from None
    finally:
        rpc.close()
    return genesis


def _check_evm(evm: EvmSettings, genesis: GenesisConfig) -> None:
    """Fail fast, before serving, on a binding that cannot work: wrong inbox, wrong EVM chain,
    another chain's genesis. An unreachable EVM node is not fatal: the node serves and retries."""
    rpc = EvmRpc(evm.url)
    try:
        open_inbox(evm, genesis, rpc)
    except InboxError as exc:
        raise UmbraError("bad_inbox", str(exc)) from None
    except EvmError as exc:
        log.warning("EVM node not reachable yet (%s); deriving once it is", exc)
    finally:
        rpc.close()


def _node_key(path: Path) -> crypto.SigningKey:
    """The key an evm-mode node attests derived blocks with: made once, kept in the data dir."""
    try:
        if path.exists():
            return crypto.load_signing_key(path)
        key = crypto.SigningKey.generate()
        crypto.save_signing_key(path, key)
        return key
    except (crypto.KeyFileError, OSError) as exc:
        raise UmbraError("bad_key", f"node key {path}: {exc}") from None


def run_node(
    *,
    data_dir: Path,
    host: str,
    port: int,
    genesis_path: Path | None,
    sequencer_key_path: Path | None,
    follow_url: str | None,
    evm: EvmSettings | None = None,
    blob_quota_bytes: int | None = 1 << 30,
) -> None:
    genesis: GenesisConfig | None = None
    if genesis_path is not None:
        try:
            genesis = GenesisConfig.from_cbor(codec.decode(genesis_path.read_bytes()))
        except (OSError, ValueError, KeyError, codec.CodecError) as exc:
            raise UmbraError("bad_genesis", f"cannot read genesis {genesis_path}: {exc}") from None
    elif follow_url is not None and not (data_dir / "chain.sqlite").exists():
        genesis = _fetch_genesis(follow_url)
    if evm is not None and genesis is None and not (data_dir / "chain.sqlite").exists():
        genesis = _genesis_from_inbox(evm)
    if evm is not None and evm.node_key is None:
        evm = replace(evm, node_key=_node_key(data_dir / "node.key"))
    if evm is None and genesis is not None and evm_binding(genesis) is not None:
        raise UmbraError(
            "usage",
            "this chain is ordered by an EVM inbox: run the node with --ordering evm --evm-url URL --inbox ADDR",
        )
    key = None
    if sequencer_key_path is not None:
        try:
            key = crypto.load_signing_key(sequencer_key_path)
        except crypto.KeyFileError as exc:
            raise UmbraError("bad_key", str(exc)) from None
    try:
        config = NodeConfig(
            data_dir=data_dir,
            sequencer_key=key,
            follow_url=follow_url,
            evm=evm,
            blob_quota_bytes=blob_quota_bytes,
        )
        node = Node(config, genesis)
    except StoreCorrupt as exc:
        raise UmbraError("store_corrupt", f"refusing to start: {exc}") from None
    except InboxError as exc:
        raise UmbraError("bad_inbox", str(exc)) from None
    if evm is not None:
        try:
            _check_evm(evm, node.genesis)
        except UmbraError:
            node.stop()
            raise
    if key is not None and key.public_key != node.genesis.sequencer:
        raise UmbraError("bad_key", "the sequencer key is not the one named in genesis")
    node.start()
    log.info(
        "node %s at http://%s:%d, height %d",
        "deriving from the EVM inbox" if evm else "sequencer" if key else "follower",
        host,
        port,
        node.store.head().height,
    )
    try:
        uvicorn.run(create_app(node), host=host, port=port, log_level="warning", access_log=False)
    finally:
        node.stop()
