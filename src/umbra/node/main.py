"""Process entry points for `umbra node`."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import uvicorn

from umbra import codec, crypto
from umbra.chain.store import Store, StoreCorrupt
from umbra.chain.types import GenesisConfig
from umbra.client._node import UmbraError
from umbra.node.api import create_app
from umbra.node.service import Node, NodeConfig

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


def run_node(
    *,
    data_dir: Path,
    host: str,
    port: int,
    genesis_path: Path | None,
    sequencer_key_path: Path | None,
    follow_url: str | None,
) -> None:
    genesis: GenesisConfig | None = None
    if genesis_path is not None:
        try:
            genesis = GenesisConfig.from_cbor(codec.decode(genesis_path.read_bytes()))
        except (OSError, ValueError, KeyError, codec.CodecError) as exc:
            raise UmbraError("bad_genesis", f"cannot read genesis {genesis_path}: {exc}") from None
    elif follow_url is not None and not (data_dir / "chain.sqlite").exists():
        genesis = _fetch_genesis(follow_url)
    key = None
    if sequencer_key_path is not None:
        try:
            key = crypto.load_signing_key(sequencer_key_path)
        except crypto.KeyFileError as exc:
            raise UmbraError("bad_key", str(exc)) from None
    try:
        node = Node(NodeConfig(data_dir=data_dir, sequencer_key=key, follow_url=follow_url), genesis)
    except StoreCorrupt as exc:
        raise UmbraError("store_corrupt", f"refusing to start: {exc}") from None
    if key is not None and key.public_key != node.genesis.sequencer:
        raise UmbraError("bad_key", "the sequencer key is not the one named in genesis")
    node.start()
    log.info(
        "node %s at http://%s:%d, height %d",
        "sequencer" if key else "follower",
        host,
        port,
        node.store.head().height,
    )
    try:
        uvicorn.run(create_app(node), host=host, port=port, log_level="warning", access_log=False)
    finally:
        node.stop()
