"""validate_contract_source: static checks for deploy tools, never executing the code."""

from __future__ import annotations

import pytest

from tests.contract.conftest import COUNTER, NOTES_PATH
from umbra.contract import ContractInfo, ContractSourceError, validate_contract_source

HEADER = "from umbra.contract import Contract, command, query\n"


def test_counter() -> None:
    assert validate_contract_source(COUNTER) == ContractInfo("Counter", ("add",), ("get",), True)


def test_conformance_notes() -> None:
    # ../shared sits beside the repo on every machine, CI included: its absence is a failure.
    assert NOTES_PATH.is_file(), f"conformance contract not found at {NOTES_PATH}"
    assert validate_contract_source(NOTES_PATH.read_text()) == ContractInfo(
        "Notes", ("add",), ("count", "mine"), True
    )


def test_import_aliases_and_helpers_are_understood() -> None:
    code = """
import umbra.contract as uc
from umbra.contract import query as q

def helper():
    return 1

class Helper:
    def __init__(self):
        pass

class Vault(uc.Contract):
    @uc.command
    def put(self, ctx, **kwargs): ...
    @q
    def peek(self, ctx, *args): ...
    def _private_helper(self): ...
    @staticmethod
    def util(x): ...
"""
    assert validate_contract_source(code) == ContractInfo("Vault", ("put",), ("peek",), False)


def test_it_never_executes_the_code(tmp_path: object) -> None:
    code = (
        HEADER
        + "raise SystemExit('executed!')\nclass C(Contract):\n    @command\n    def a(self, ctx): ...\n"
    )
    assert validate_contract_source(code).commands == ("a",)


BAD = {
    "syntax": (HEADER + "class C(Contract)\n    pass\n", "syntax error at line 2"),
    "none": ("class C:\n    pass\n", "no contract class"),
    "two": (
        HEADER + "class A(Contract):\n    pass\nclass B(Contract):\n    pass\n",
        "exactly one Contract subclass, found A, B",
    ),
    "nested": (HEADER + "def f():\n    class C(Contract):\n        pass\n", "top level"),
    "dunder_init": (
        HEADER + "class C(Contract):\n    def __init__(self):\n        pass\n",
        "defines __init__",
    ),
    "private": (
        HEADER + "class C(Contract):\n    @command\n    def _x(self, ctx): ...\n",
        "must not start with '_'",
    ),
    "both": (
        HEADER + "class C(Contract):\n    @command\n    @query\n    def x(self, ctx): ...\n",
        "both @command and @query",
    ),
    "async": (
        HEADER + "class C(Contract):\n    @command\n    async def x(self, ctx): ...\n",
        "async methods",
    ),
    "parens": (
        HEADER + "class C(Contract):\n    @command()\n    def x(self, ctx): ...\n",
        "without parentheses",
    ),
    "no_ctx": (HEADER + "class C(Contract):\n    @query\n    def x(self): ...\n", "must take (self, ctx"),
    "marked_init": (
        HEADER + "class C(Contract):\n    @command\n    def init(self, ctx): ...\n",
        "init runs once",
    ),
    "init_no_ctx": (HEADER + "class C(Contract):\n    def init(self): ...\n", "init must take (self, ctx"),
    "too_big": (HEADER + "#" * (256 * 1024), "exceeds 262144 bytes"),
    "not_text": (b"class C: pass", "must be text"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_sources_are_refused_with_a_reason(case: str) -> None:
    code, reason = BAD[case]
    with pytest.raises(ContractSourceError) as error:
        validate_contract_source(code)  # type: ignore[arg-type]
    assert reason in str(error.value)


def test_a_later_plain_def_replaces_a_command() -> None:
    code = HEADER + "class C(Contract):\n    @command\n    def x(self, ctx): ...\n    def x(self, ctx): ...\n"
    assert validate_contract_source(code).commands == ()
