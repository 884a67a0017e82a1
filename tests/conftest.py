"""Shared fixtures. Vendor evidence is read in place from ../shared (never copied into the repo)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
VECTORS = SHARED / "attestation-vectors"
# The example counter (init start, command add(by), query get): the contract most tests deploy.
COUNTER_CONTRACT = REPO / "examples" / "counter" / "contract.py"


def load_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((VECTORS / "cases.json").read_text())["cases"]
    return cases


@pytest.fixture(scope="session")
def vectors() -> Path:
    assert (VECTORS / "cases.json").is_file(), f"attestation vectors not found at {VECTORS}"
    return VECTORS
