"""examples/evm_oracle against a live `umbra dev --workers 3` and its own anvil: a price fetched
through ctx.http and signed with the contract's secp256k1 key is accepted by the Vyper consumer,
forged, tampered and replayed reports are not, and the feed's API key (an owner secret carrying
a marker) shows up nowhere public or on disk.

anvil is found as `umbra dev` finds it; `make test` installs it first. Without it this test
fails under CI and skips elsewhere. The example compiles its consumer with vyper 0.4.3 in a venv
of its own under ~/.cache/umbra (made with pip on first use).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.examples.privacy_net import DevNetwork, dev_network, new_marker
from umbra.node._dev_evm import find_anvil

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevNetwork]:
    if find_anvil() is None:
        message = "anvil not found: run `make anvil` (npm install @foundry-rs/anvil-linux-amd64@1.7.1)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with dev_network(tmp_path_factory.mktemp("evm-oracle")) as network:
        yield network


def test_the_oracle_signs_for_the_evm_and_keeps_its_api_key_private(net: DevNetwork) -> None:
    marker = new_marker("evm-oracle")
    output = net.run_example("evm_oracle", marker)
    assert "a forged signature: reverted" in output and "the genuine report is accepted" in output
    assert net.public_leaks(marker) == []
    assert net.public_leaks("class PriceOracle(Contract)"), "the scan must see public data (the code)"
    net.stop()
    assert net.file_leaks(marker) == []
    assert net.file_leaks("class PriceOracle(Contract)"), "the scan must see the chain's database"
