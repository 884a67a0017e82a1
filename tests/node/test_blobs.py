"""The node's content-addressed blob store (`PUT /blobs/{sha256}`): anyone may upload, so it has a
quota; a blob beyond it is refused with a typed 507 while blocks keep committing, the quota's
accounting survives a restart, and a bad hash or path is a 400 that stores nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.node.conftest import HTTP, post_tx, serve_node, signed_transfer, wait_until, write_chain_files
from umbra import codec

pytestmark = pytest.mark.timeout(60)

QUOTA = 4096


def put(url: str, data: bytes) -> tuple[int, dict[str, Any]]:
    reply = HTTP.put(f"{url}/blobs/{codec.to_hex(codec.sha256(data))}", content=data, timeout=10)
    return reply.status_code, reply.json()


def test_blobs_beyond_the_quota_are_refused_and_the_chain_goes_on(tmp_path: Path) -> None:
    files = write_chain_files(tmp_path / "files")
    first, second, third = os.urandom(3000), os.urandom(1000), os.urandom(1500)
    with serve_node(files, tmp_path / "node", blob_quota_bytes=QUOTA) as live:
        assert put(live.url, first) == (200, {"hash": codec.to_hex(codec.sha256(first)), "size": 3000})
        assert put(live.url, first)[0] == 200  # the same blob again takes no more room
        assert put(live.url, second)[0] == 200  # 4,000 of 4,096 bytes
        status, refused = put(live.url, third)
        assert status == 507 and refused["error"]["code"] == "blob_quota"
        assert (
            HTTP.get(f"{live.url}/blobs/{codec.to_hex(codec.sha256(third))}", timeout=10).status_code == 404
        )
        assert HTTP.get(f"{live.url}/blobs/{codec.to_hex(codec.sha256(first))}", timeout=10).content == first

        # Blocks keep committing: the quota protects the chain's own file.
        bob = files.keys["bob"].public_key
        before = int(live.account(bob)["free"])
        assert post_tx(live.url, signed_transfer(files, "alice", bob, 7, 0).encode()).status_code == 200
        wait_until(lambda: int(live.account(bob)["free"]) == before + 7, 10, "the transfer in a block")
        assert live.status()["disk_full"] is None

    # The store counts what it holds when it opens again.
    with serve_node(files, tmp_path / "node", blob_quota_bytes=QUOTA) as live:
        assert put(live.url, third)[0] == 507
        assert put(live.url, os.urandom(96))[0] == 200  # exactly at the quota


def test_a_body_that_is_not_the_named_hash_stores_nothing(tmp_path: Path) -> None:
    files = write_chain_files(tmp_path / "files")
    with serve_node(files, tmp_path / "node", blob_quota_bytes=QUOTA) as live:
        data = os.urandom(100)
        wrong = HTTP.put(f"{live.url}/blobs/{codec.to_hex(bytes(32))}", content=data, timeout=10)
        assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "hash_mismatch"
        bad = HTTP.put(f"{live.url}/blobs/0x1234", content=data, timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "malformed"
        assert live.node.store.blob(codec.sha256(data)) is None
        assert put(live.url, os.urandom(QUOTA))[0] == 200  # the refusals took none of the quota
