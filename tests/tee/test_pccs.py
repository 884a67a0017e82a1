"""The PCCS client, against a PCCS stand-in on 127.0.0.1 that serves the shared collateral files."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import VECTORS
from tests.tee._pccs_server import FakePccs
from umbra.tee import Endorsements, verify_at_time
from umbra.tee._pccs import PccsClient, PccsError, PccsUnreachableError

# Both collaterals are valid at this time.
AT = datetime(2025, 7, 1, tzinfo=UTC)
SGX = ("intel-dcap/dcap-qvl/sgx_quote.bin", "intel-dcap/dcap-qvl/sgx_quote_collateral_2025-06.json")
TDX = ("intel-dcap/dcap-qvl/tdx_quote_v4.bin", "intel-dcap/dcap-qvl/tdx_quote_v4_collateral_2025-06.json")


def load(files: tuple[str, str]) -> tuple[bytes, bytes]:
    quote_name, collateral_name = files
    return (VECTORS / quote_name).read_bytes(), (VECTORS / collateral_name).read_bytes()


@pytest.fixture
def sgx_pccs() -> Iterator[FakePccs]:
    with FakePccs(json.loads(load(SGX)[1])) as pccs:
        yield pccs


@pytest.mark.parametrize("pck_crl_encoding", ["pem", "der"])
@pytest.mark.parametrize("files", [SGX, TDX], ids=["sgx", "tdx"])
def test_fetched_collateral_verifies_like_the_file(
    files: tuple[str, str], pck_crl_encoding: str, tmp_path: Path
) -> None:
    quote, collateral_file = load(files)
    with FakePccs(json.loads(collateral_file), pck_crl_encoding=pck_crl_encoding) as pccs:
        fetched = PccsClient(pccs.url, tmp_path).fetch_collateral(quote, now=AT)
    sgx_api, tee_api = "/sgx/certification/v4", f"/{pccs.tee}/certification/v4"
    assert sorted(pccs.requests) == sorted(
        [
            f"{sgx_api}/pckcrl?ca={pccs.pck_ca}",
            f"{sgx_api}/rootcacrl",
            f"{tee_api}/tcb?fmspc={pccs.fmspc}",
            f"{tee_api}/qe/identity",
        ]
    )
    assert json.loads(fetched) == json.loads(collateral_file)
    from_pccs = verify_at_time("dcap", quote, Endorsements(collateral=fetched), AT)
    from_file = verify_at_time("dcap", quote, Endorsements(collateral=collateral_file), AT)
    assert from_pccs.ok, from_pccs.error
    assert from_pccs.to_json() == from_file.to_json()


def test_a_second_fetch_is_served_from_the_disk_cache(sgx_pccs: FakePccs, tmp_path: Path) -> None:
    quote, _ = load(SGX)
    first = PccsClient(sgx_pccs.url, tmp_path).fetch_collateral(quote, now=AT)
    assert len(sgx_pccs.requests) == 4
    # A new client on the same directory: the cache is on disk, not in the object.
    second = PccsClient(sgx_pccs.url, tmp_path).fetch_collateral(quote, now=AT + timedelta(days=1))
    assert len(sgx_pccs.requests) == 4
    assert second == first


def test_entries_past_their_next_update_are_fetched_again(sgx_pccs: FakePccs, tmp_path: Path) -> None:
    quote, collateral_file = load(SGX)
    client = PccsClient(sgx_pccs.url, tmp_path)
    client.fetch_collateral(quote, now=AT)
    tcb_next_update = next_update(json.loads(collateral_file)["tcb_info"])
    client.fetch_collateral(quote, now=tcb_next_update)
    refetched = sgx_pccs.requests[4:]
    assert f"/sgx/certification/v4/tcb?fmspc={sgx_pccs.fmspc}" in refetched
    # The root CA CRL is good until 2026: still served from the cache.
    assert "/sgx/certification/v4/rootcacrl" not in refetched


def next_update(signed_json: str) -> datetime:
    content: dict[str, Any] = json.loads(signed_json)
    return datetime.fromisoformat(content["nextUpdate"])


def test_damaged_cache_entries_are_fetched_again(sgx_pccs: FakePccs, tmp_path: Path) -> None:
    quote, _ = load(SGX)
    client = PccsClient(sgx_pccs.url, tmp_path)
    first = client.fetch_collateral(quote, now=AT)
    entries = sorted(tmp_path.iterdir())
    assert len(entries) == 4
    for entry in entries:
        entry.write_text('{"url": "truncated')
    assert client.fetch_collateral(quote, now=AT) == first
    assert len(sgx_pccs.requests) == 8


def test_an_unreachable_pccs_is_a_typed_error(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = PccsClient(f"http://127.0.0.1:{port}", tmp_path, timeout=5)
    with pytest.raises(PccsUnreachableError, match="no answer from") as raised:
        client.fetch_collateral(load(SGX)[0], now=AT)
    assert raised.value.url is not None
    assert raised.value.url.startswith(f"http://127.0.0.1:{port}/sgx/certification/v4/")


def test_an_error_answer_is_a_pccs_error(tmp_path: Path) -> None:
    # A PCCS that knows only the TDX platform's collateral has nothing for the SGX quote.
    with FakePccs(json.loads(load(TDX)[1])) as pccs, pytest.raises(PccsError, match="HTTP 404") as raised:
        PccsClient(pccs.url, tmp_path).fetch_collateral(load(SGX)[0], now=AT)
    assert not isinstance(raised.value, PccsUnreachableError)


class ChainlessPccs(FakePccs):
    """A PCCS that forgets the TCB Info issuer chain header."""

    def route(self, path: str, query: Any) -> tuple[bytes, dict[str, str]] | None:
        found = super().route(path, query)
        return (found[0], {}) if found is not None and path.endswith("/tcb") else found


def test_an_unusable_answer_is_refused_and_not_cached(tmp_path: Path) -> None:
    quote, collateral_file = load(SGX)
    with ChainlessPccs(json.loads(collateral_file)) as pccs:
        client = PccsClient(pccs.url, tmp_path)
        for attempt in (1, 2):
            with pytest.raises(PccsError, match="tcb-info-issuer-chain header is missing"):
                client.fetch_collateral(quote, now=AT)
            assert pccs.requests.count(f"/sgx/certification/v4/tcb?fmspc={pccs.fmspc}") == attempt


def test_a_quote_without_a_pck_chain_fetches_nothing(sgx_pccs: FakePccs, tmp_path: Path) -> None:
    with pytest.raises(PccsError, match="cannot tell which collateral"):
        PccsClient(sgx_pccs.url, tmp_path).fetch_collateral(b"not a quote", now=AT)
    assert sgx_pccs.requests == []


def test_the_url_may_name_the_api_root(sgx_pccs: FakePccs, tmp_path: Path) -> None:
    client = PccsClient(f"{sgx_pccs.url}/sgx/certification/v4/", tmp_path)
    assert json.loads(client.fetch_collateral(load(SGX)[0], now=AT)) == json.loads(load(SGX)[1])


@pytest.mark.parametrize("url", ["", "pccs.example", "ftp://pccs.example", "http://", "http://[::1"])
def test_a_bad_url_is_refused_up_front(url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PCCS URL"):
        PccsClient(url, tmp_path)
