"""Turn contract source into a loaded Contract class: shared by the warm host and LocalRunner."""

from __future__ import annotations

import linecache
import sys
import types

from umbra.contract._child import Loaded, describe, prepare
from umbra.contract._sdk import Contract
from umbra.contract._validate import ContractInfo


class LoadError(Exception):
    """The contract module cannot be served; the message says why."""


def _find_contract(module: types.ModuleType) -> type[Contract]:
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Contract)
        and value is not Contract
        and value.__module__ == module.__name__
    ]
    if len(found) != 1:
        names = ", ".join(c.__name__ for c in found) or "none"
        raise LoadError(f"a contract module defines exactly one Contract subclass (found: {names})")
    cls = found[0]
    for klass in cls.__mro__:
        if klass is Contract:
            break
        if "__init__" in vars(klass):
            raise LoadError(
                f"{klass.__name__} defines __init__: put deploy-time setup in init(self, ctx, ...)"
            )
    return cls


def load_contract(code: str, contract: bytes, module_name: str) -> tuple[Loaded, ContractInfo]:
    """Execute the contract module (its top-level code runs here) and find its contract class."""
    filename = f"<contract 0x{contract.hex()[:16]}>"
    # Tracebacks and error locations read source lines from here: no file is ever opened for them.
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    module = types.ModuleType(module_name)
    module.__file__ = filename
    sys.modules[module_name] = module  # dataclasses, pickle and typing look classes up here
    try:
        exec(compile(code, filename, "exec"), module.__dict__)
    except SyntaxError as exc:
        raise LoadError(f"SyntaxError: {exc.msg} (contract line {exc.lineno})") from None
    except BaseException as exc:
        raise LoadError(f"the contract module failed to load: {describe(exc, filename)}") from None
    cls = _find_contract(module)
    loaded = prepare(cls, filename)
    info = ContractInfo(
        class_name=cls.__name__,
        commands=tuple(sorted(cls.__umbra_commands__)),
        queries=tuple(sorted(cls.__umbra_queries__)),
        has_init="init" in loaded.functions,
    )
    return loaded, info
