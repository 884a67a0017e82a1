"""The work behind `umbra deploy | call | query | upload-secret` (cli.py keeps only the commands).

Each function returns the command's one JSON object, or raises `UmbraError` (code `usage` for
what the user typed wrong, which the CLI turns into exit 2).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from umbra import crypto
from umbra.client._client import Client
from umbra.client._errors import UmbraError

__all__ = ["call", "deploy", "json_object", "query", "read_secret", "upload_secret"]

T = TypeVar("T")
_progress = Console(stderr=True)


def json_object(text: str | None, option: str) -> dict[str, Any] | None:
    """`--args`/`--init`: a JSON object, passed to the method as keyword arguments."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UmbraError("usage", f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UmbraError(
            "usage", f"{option} must be a JSON object of keyword arguments, like '{{\"by\": 2}}'"
        )
    return value


def read_secret(file: Path | None, text: str | None) -> bytes:
    """A secret from --file (or '-' for stdin) or --text; never from a positional argument."""
    if (file is None) == (text is None):
        raise UmbraError("usage", "give exactly one of --file FILE (or - for stdin) and --text TEXT")
    if text is not None:
        return text.encode()
    assert file is not None
    if str(file) == "-":
        return sys.stdin.buffer.read()
    try:
        return file.read_bytes()
    except OSError as exc:
        raise UmbraError("usage", f"cannot read {file}: {exc.strerror}") from None


@contextmanager
def _spinner(as_json: bool, text: str) -> Iterator[None]:
    """People get a spinner on stderr while the network works; --json output stays one object."""
    if as_json or not _progress.is_terminal:
        yield
        return
    with _progress.status(text):
        yield


def _with(node: str, key: crypto.SigningKey, as_json: bool, text: str, action: Callable[[Client], T]) -> T:
    with _spinner(as_json, text), Client(node, key) as client:
        return action(client)


def deploy(
    node: str, key: crypto.SigningKey, file: Path, init: str | None, manifest: str | None, as_json: bool
) -> dict[str, Any]:
    try:
        code = file.read_bytes()
    except OSError as exc:
        raise UmbraError("usage", f"cannot read {file}: {exc.strerror}") from None
    init_args = json_object(init, "--init")
    manifest_doc = json_object(manifest, "--manifest")
    done = _with(
        node,
        key,
        as_json,
        f"deploying {file.name}: waiting for its key and its init job",
        lambda c: c.deploy(code, init=init_args, manifest=manifest_doc),
    )
    return done.to_json()


def call(
    node: str,
    key: crypto.SigningKey,
    contract: str,
    method: str,
    args: str | None,
    replicas: int,
    value: int,
    distinct: str,
    as_json: bool,
) -> dict[str, Any]:
    kwargs = json_object(args, "--args")
    done = _with(
        node,
        key,
        as_json,
        f"{method}: waiting for {replicas} worker(s) and verifying the result",
        lambda c: c.call(contract, method, kwargs, replicas=replicas, value=value, distinct=distinct),
    )
    return done.to_json()


def query(
    node: str,
    key: crypto.SigningKey,
    contract: str,
    method: str,
    args: str | None,
    worker: str | None,
    min_height: int | None,
    as_json: bool,
) -> dict[str, Any]:
    kwargs = json_object(args, "--args")
    done = _with(
        node,
        key,
        as_json,
        f"{method}: asking a worker",
        lambda c: c.query(contract, method, kwargs, worker=worker, min_height=min_height),
    )
    return done.to_json()


def upload_secret(
    node: str, key: crypto.SigningKey, contract: str, name: str, plaintext: bytes, as_json: bool
) -> dict[str, Any]:
    return _with(
        node,
        key,
        as_json,
        f"sealing {name} to the contract key",
        lambda c: c.upload_secret(contract, name, plaintext),
    )
