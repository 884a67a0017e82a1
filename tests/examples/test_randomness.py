"""examples/randomness against a live `umbra dev --workers 3`: the lottery passes its own checks
(a draw agreed by three replicas of three TEE types, one draw per round, the pot paid to the
winner), and the private ticket notes, which carry a marker, show up nowhere public or on disk."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.examples.privacy_net import DevNetwork, dev_network, new_marker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevNetwork]:
    with dev_network(tmp_path_factory.mktemp("randomness")) as network:
        yield network


def test_the_lottery_draws_verifiably_and_keeps_notes_private(net: DevNetwork) -> None:
    marker = new_marker("randomness")
    output = net.run_example("randomness", marker)
    assert "all 3 replicas" in output and "a second draw of round 1 (a re-roll): refused" in output
    assert net.public_leaks(marker) == []
    assert net.public_leaks("class Lottery(Contract)"), "the scan must see public data (the code)"
    net.stop()
    assert net.file_leaks(marker) == []
    assert net.file_leaks("class Lottery(Contract)"), "the scan must see the chain's database"
