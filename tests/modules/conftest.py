"""Fixtures for the confidential-path module tests: a fresh in-process network per test."""

from __future__ import annotations

import pytest

from tests.modules.net import Net


@pytest.fixture
def net() -> Net:
    return Net.create()
