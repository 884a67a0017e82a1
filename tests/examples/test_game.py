"""examples/game against a live `umbra dev --workers 3`: battleship passes its own checks (hidden
boards refused to the opponent, answers by the rules, commitments checked after the reveal, the
stakes paid to the winner), and the board salts, which carry a marker, show up nowhere public or
on disk: the sealed placements never leave the enclaves in the clear."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.examples.privacy_net import DevNetwork, dev_network, new_marker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevNetwork]:
    with dev_network(tmp_path_factory.mktemp("game")) as network:
        yield network


def test_battleship_keeps_boards_hidden_until_the_end(net: DevNetwork) -> None:
    marker = new_marker("game")
    output = net.run_example("game", marker)
    assert "bob reads alice's board: refused" in output
    assert "bob checks alice's revealed board against her commitment" in output
    assert net.public_leaks(marker) == []
    assert net.public_leaks("class Battleship(Contract)"), "the scan must see public data (the code)"
    net.stop()
    assert net.file_leaks(marker) == []
    assert net.file_leaks("class Battleship(Contract)"), "the scan must see the chain's database"
