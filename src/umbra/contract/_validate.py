"""Check a contract's source without running it, for deploy tools and the chain-facing side.

The rules mirror what the sandbox enforces when it loads the module, so a deploy that passes here
fails at load only for reasons that need execution (an import error, an exception at top level).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

__all__ = [
    "MAX_CODE_BYTES",
    "ContractInfo",
    "ContractSourceError",
    "imported_modules",
    "validate_contract_source",
]

MAX_CODE_BYTES = 256 * 1024  # docs/protocol.md: contracts.deploy refuses larger code
_SDK_MODULE = "umbra.contract"


class ContractSourceError(ValueError):
    """The source is not a valid Umbra contract; the message says what to change."""


@dataclass(frozen=True, slots=True)
class ContractInfo:
    class_name: str
    commands: tuple[str, ...]
    queries: tuple[str, ...]
    has_init: bool


class _Names:
    """Local names that refer to umbra.contract's Contract, command and query."""

    def __init__(self, tree: ast.Module) -> None:
        self.direct: dict[str, str] = {}  # local name -> "Contract" | "command" | "query"
        self.modules: set[str] = set()  # dotted local names bound to the umbra.contract module
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                for alias in node.names:
                    if node.module == _SDK_MODULE and alias.name in ("Contract", "command", "query"):
                        self.direct[alias.asname or alias.name] = alias.name
                    elif node.module == "umbra" and alias.name == "contract":
                        self.modules.add(alias.asname or "contract")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == _SDK_MODULE:
                        self.modules.add(alias.asname or _SDK_MODULE)

    def resolve(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return self.direct.get(node.id)
        if isinstance(node, ast.Attribute) and node.attr in ("Contract", "command", "query"):
            return node.attr if _dotted(node.value) in self.modules else None
        return None


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _takes_ctx(fn: ast.FunctionDef) -> bool:
    positional = len(fn.args.posonlyargs) + len(fn.args.args)
    return positional >= 2 or (positional == 1 and fn.args.vararg is not None)


def _parse(code: str) -> ast.Module:
    if not isinstance(code, str):
        raise ContractSourceError("contract code must be text (Python source)")
    if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
        raise ContractSourceError(f"contract code exceeds {MAX_CODE_BYTES} bytes")
    try:
        return ast.parse(code, filename="<contract>")
    except SyntaxError as exc:
        raise ContractSourceError(f"syntax error at line {exc.lineno}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ContractSourceError(f"contract code cannot be parsed: {exc}") from None


def validate_contract_source(code: str) -> ContractInfo:
    """Parse (never execute) `code` and describe its contract, or raise ContractSourceError."""
    tree = _parse(code)
    names = _Names(tree)
    classes = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef) and any(names.resolve(base) == "Contract" for base in node.bases)
    ]
    nested = [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and node not in classes
        and any(names.resolve(base) == "Contract" for base in node.bases)
    ]
    if nested:
        raise ContractSourceError(
            f"contract class {nested[0]} must be defined at the top level of the module"
        )
    if not classes:
        raise ContractSourceError(
            "no contract class: define one class derived from umbra.contract.Contract "
            "(from umbra.contract import Contract, command, query)"
        )
    if len(classes) > 1:
        listed = ", ".join(c.name for c in classes)
        raise ContractSourceError(f"a contract module defines exactly one Contract subclass, found {listed}")
    cls = classes[0]
    kinds: dict[str, str] = {}
    has_init = False
    for item in cls.body:
        if isinstance(item, ast.AsyncFunctionDef):
            raise ContractSourceError(f"{cls.name}.{item.name}: async methods are not supported")
        if not isinstance(item, ast.FunctionDef):
            continue
        marks = set()
        for decorator in item.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            kind = names.resolve(target)
            if kind in ("command", "query"):
                if isinstance(decorator, ast.Call):
                    raise ContractSourceError(f"{cls.name}.{item.name}: write @{kind} without parentheses")
                marks.add(kind)
        if item.name == "__init__":
            raise ContractSourceError(
                f"{cls.name} defines __init__: put deploy-time setup in init(self, ctx, ...) and keep "
                "everything that must last in self.state"
            )
        if item.name == "init":
            if marks:
                raise ContractSourceError(
                    "init runs once at deploy; it must not be marked @command or @query"
                )
            if not _takes_ctx(item):
                raise ContractSourceError("init must take (self, ctx, ...)")
            has_init = True
            kinds.pop("init", None)
            continue
        if len(marks) > 1:
            raise ContractSourceError(f"{cls.name}.{item.name} cannot be both @command and @query")
        if not marks:
            kinds.pop(item.name, None)  # a later undecorated def replaces an earlier method
            continue
        kind = marks.pop()
        if item.name.startswith("_"):
            raise ContractSourceError(f"@{kind} {item.name}: callable methods must not start with '_'")
        if not _takes_ctx(item):
            raise ContractSourceError(f"@{kind} {item.name} must take (self, ctx, ...)")
        kinds[item.name] = kind
    return ContractInfo(
        class_name=cls.name,
        commands=tuple(sorted(n for n, k in kinds.items() if k == "command")),
        queries=tuple(sorted(n for n, k in kinds.items() if k == "query")),
        has_init=has_init,
    )


def imported_modules(code: str) -> list[str]:
    """Absolute module names the source imports anywhere, also inside functions (best effort)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    found: dict[str, None] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found[alias.name] = None
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found[node.module] = None
            for alias in node.names:
                found[f"{node.module}.{alias.name}"] = None  # may be a submodule; failures are ignored
    return list(found)
