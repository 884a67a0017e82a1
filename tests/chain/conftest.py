"""Fixtures for the pure chain tests (runtime, modules, blocks, state)."""

from __future__ import annotations

import pytest

from tests.chain.helpers import TestChain


@pytest.fixture
def chain() -> TestChain:
    return TestChain.start()
