"""ARCHITECTURE.md's import arrows, enforced on the source with `ast`.

    codec/crypto <- tee <- chain <- ordering <- node;  enclave -> tee, crypto, contract;
    worker -> enclave, client.

The runtime (all of umbra.chain but the store) must be a pure state transition: no clock, no
randomness, no disk or network I/O. That is what lets every node replay to the same roots.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "umbra"

# Standard-library and third-party modules a pure state transition has no business importing.
IMPURE_MODULES = frozenset(
    {
        "asyncio",
        "concurrent",
        "fastapi",
        "http",
        "httpx",
        "io",
        "multiprocessing",
        "os",
        "pathlib",
        "random",
        "requests",
        "secrets",
        "select",
        "selectors",
        "shutil",
        "signal",
        "socket",
        "sqlite3",
        "starlette",
        "subprocess",
        "sys",
        "tempfile",
        "threading",
        "time",
        "urllib",
        "uuid",
        "uvicorn",
    }
)
IMPURE_BUILTINS = frozenset({"open", "input", "print", "exec", "eval", "__import__"})
# `datetime` may turn a block's own time into a datetime; it may not read the wall clock.
CLOCK_READS = frozenset({"now", "utcnow", "today"})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(dotted: str) -> bool:
    base = SRC.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(source: str, importer: str, is_package: bool = False) -> Iterator[tuple[str, int]]:
    """Every module `source` imports, fully qualified (relative imports resolved), with its line.
    `from pkg import name` counts as importing `pkg.name` when that is a module of ours."""
    package = importer if is_package else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield (candidate if base.startswith("umbra") and is_module(candidate) else base), node.lineno


def impure_calls(source: str) -> Iterator[tuple[str, int]]:
    """Calls of I/O builtins (`open(...)`) and clock reads (`datetime.now()`, `date.today()`)."""
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name) and node.func.id in IMPURE_BUILTINS:
            yield node.func.id, node.lineno
        elif isinstance(node.func, ast.Attribute) and node.func.attr in CLOCK_READS:
            yield f".{node.func.attr}", node.lineno


def sources(package: str) -> list[Path]:
    root = SRC.joinpath(*package.split("."))
    return sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]


def umbra_imports(package: str) -> list[tuple[str, str, int]]:
    """(importer, imported umbra module, line) for every file of `package`."""
    found = []
    for path in sources(package):
        importer = module_name(path)
        for imported, line in imports_of(path.read_text(), importer, path.name == "__init__.py"):
            if imported == "umbra" or imported.startswith("umbra."):
                found.append((importer, imported, line))
    return found


def within(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


# ---- the checker itself works (so that the rules below can fail) ---------------------------------


def test_the_import_parser_resolves_every_form() -> None:
    source = """
import sqlite3, os.path
from time import monotonic
from umbra import codec, RUNTIME_VERSION
from umbra.chain.types import Tx
from . import state
from .modules import balances
from ..node import api
def late():
    import random
"""
    found = {name for name, _ in imports_of(source, "umbra.chain.runtime")}
    assert found == {
        "sqlite3",
        "os.path",
        "time",
        "umbra.codec",
        "umbra",
        "umbra.chain.types",
        "umbra.chain.state",
        "umbra.chain.modules.balances",
        "umbra.node.api",
        "random",
    }
    calls = "x = open('f')\nprint(x)\nlen(x)\nt = datetime.now(UTC)\nd = date.today()\ndatetime.fromtimestamp(1, UTC)"
    assert [name for name, _ in impure_calls(calls)] == ["open", "print", ".now", ".today"]


def test_the_checker_sees_the_real_tree() -> None:
    store_imports = {
        name
        for path in sources("umbra.chain.store")
        for name, _ in imports_of(path.read_text(), "umbra.chain.store")
    }
    assert "sqlite3" in store_imports  # the store is the one adapter allowed to touch the disk
    assert ("umbra.chain.runtime", "umbra.chain.modules.balances") in {
        (a, b) for a, b, _ in umbra_imports("umbra.chain")
    }
    assert len(sources("umbra.chain")) >= 10


# ---- the rules -------------------------------------------------------------------------------


@pytest.mark.parametrize("package", ["umbra.codec", "umbra.crypto"])
def test_codec_and_crypto_import_no_other_umbra_package(package: str) -> None:
    bad = [
        f"{a} imports {b} (line {n})"
        for a, b, n in umbra_imports(package)
        if not within(b, ("umbra.codec", "umbra.crypto"))
    ]
    assert not bad, bad


def test_tee_imports_nothing_from_umbra_but_itself() -> None:
    bad = [
        f"{a} imports {b} (line {n})"
        for a, b, n in umbra_imports("umbra.tee")
        if not within(b, ("umbra.tee",))
    ]
    assert not bad, bad


def test_chain_imports_only_codec_crypto_tee_and_itself() -> None:
    allowed = ("umbra.codec", "umbra.crypto", "umbra.tee", "umbra.chain")
    bad = [
        f"{a} imports {b} (line {n})"
        for a, b, n in umbra_imports("umbra.chain")
        if b != "umbra" and not within(b, allowed)
    ]
    assert not bad, bad


def runtime_files() -> list[Path]:
    return [p for p in sources("umbra.chain") if p.name != "store.py"]


@pytest.mark.parametrize("path", runtime_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_runtime_does_no_io_and_reads_no_clock_or_randomness(path: Path) -> None:
    source = path.read_text()
    importer = module_name(path)
    bad = [
        f"imports {name} (line {line})"
        for name, line in imports_of(source, importer, path.name == "__init__.py")
        if name.split(".")[0] in IMPURE_MODULES
    ]
    bad += [f"calls {name}() (line {line})" for name, line in impure_calls(source)]
    assert not bad, f"{importer}: {bad}"


def test_ordering_does_not_import_the_node() -> None:
    bad = [
        f"{a} imports {b} (line {n})"
        for a, b, n in umbra_imports("umbra.ordering")
        if within(b, ("umbra.node", "umbra.client", "umbra.worker", "umbra.gatekeeper", "umbra.enclave"))
    ]
    assert not bad, bad
