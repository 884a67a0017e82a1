"""Plain data only: what a contract may keep in state, return, or emit.

Contract values cross a trust boundary twice: the child encodes them (contract code could hand
us anything) and the runner, inside the enclave core, decodes them. cbor2 would happily encode a
set, a datetime or a Decimal as a tagged item and decode it back into live objects, so:

- `encode` refuses every type outside the plain set (None, bool, int, float, str, bytes, list,
  tuple, dict) with an error that names the offending path, e.g. `output['a'][2] is a set`;
- `decode` (used on everything the child or host sends) refuses every CBOR tag except bignums,
  so no regex, MIME, shared-reference or other tag decoder runs inside the core on hostile bytes.
"""

from __future__ import annotations

import datetime
import decimal
import email.message
import fractions
import ipaddress
import re
import uuid
from typing import Any, NoReturn

import cbor2

# Deeper nesting is never legitimate and costs recursion on both sides.
MAX_DEPTH = 64
PLAIN_TYPES = "None, bool, int, float, str, bytes, list, tuple and dict"


class ValueRejected(ValueError):
    """A value that may not be stored, returned or emitted by a contract."""


def _refuse(_encoder: Any, value: Any) -> NoReturn:
    raise TypeError(f"{type(value).__name__} is not plain data")


# cbor2 looks encoders up by exact type; these are the types it would otherwise turn into tags.
_STRICT_ENCODERS: dict[type, Any] = {
    kind: _refuse
    for kind in (
        set,
        frozenset,
        datetime.datetime,
        datetime.date,
        decimal.Decimal,
        fractions.Fraction,
        uuid.UUID,
        complex,
        re.Pattern,
        email.message.Message,
        ipaddress.IPv4Address,
        ipaddress.IPv6Address,
        ipaddress.IPv4Network,
        ipaddress.IPv6Network,
        ipaddress.IPv4Interface,
        ipaddress.IPv6Interface,
        cbor2.CBORTag,
        cbor2.CBORSimpleValue,
        type(cbor2.undefined),
    )
}


def _reject_tag(*args: Any) -> NoReturn:
    raise ValueError("CBOR tags are not allowed in contract values")


# Every tag cbor2 6.3 decodes natively, except 2 and 3 (bignums are plain integers). Unknown tags
# go to the tag hook, which refuses them too. tests/contract/test_values.py re-derives this list.
_NATIVE_TAGS = (0, 1, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004, 43000, 55799)
_TAG_DECODERS: dict[int, Any] = dict.fromkeys(_NATIVE_TAGS, _reject_tag)


def encode(value: Any, *, what: str) -> bytes:
    """CBOR of a plain value (not canonical: the core re-encodes canonically where it hashes)."""
    try:
        return cbor2.dumps(value, encoders=_STRICT_ENCODERS)
    except RecursionError:
        raise ValueRejected(f"{what} is nested too deeply") from None
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise ValueRejected(_explain(value, what) or f"{what} cannot be encoded: {exc}") from None


def decode(data: bytes, *, what: str) -> Any:
    """Decode bytes from an untrusted peer into plain values, or raise ValueRejected."""
    try:
        return cbor2.loads(
            data,
            semantic_decoders=_TAG_DECODERS,
            tag_hook=_reject_tag,
            max_depth=MAX_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
        )
    except RecursionError:
        raise ValueRejected(f"{what} is nested too deeply") from None
    except Exception as exc:  # cbor2 raises many types on hostile input; none may escape
        raise ValueRejected(f"{what} is not valid plain CBOR: {exc}"[:500]) from None


def _explain(value: Any, what: str) -> str | None:
    """Find the first non-plain value, for an error message that says where it is."""
    stack: list[tuple[Any, str, int]] = [(value, what, 0)]
    on_path: set[int] = set()
    exits: list[tuple[int, int]] = []  # (stack height, id) for cycle tracking
    while stack:
        while exits and len(stack) <= exits[-1][0]:
            on_path.discard(exits.pop()[1])
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"{path} is nested more than {MAX_DEPTH} levels deep"
        if item is None or isinstance(item, bool | int | float | str | bytes):
            continue
        if isinstance(item, list | tuple | dict):
            if id(item) in on_path:
                return f"{path} contains itself"
            on_path.add(id(item))
            exits.append((len(stack), id(item)))
            if isinstance(item, dict):
                for key, child in reversed(list(item.items())):
                    if not isinstance(key, str | int | bytes | float | tuple) and key is not None:
                        return f"{path} has a key of type {type(key).__name__}; use str, int or bytes keys"
                    stack.append((child, f"{path}[{key!r}]", depth + 1))
            else:
                for index in range(len(item) - 1, -1, -1):
                    stack.append((item[index], f"{path}[{index}]", depth + 1))
            continue
        return f"{path} is a {type(item).__name__}; only {PLAIN_TYPES} can be stored"
    return None
