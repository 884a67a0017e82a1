"""The `umbra` command. Every subcommand takes --json, --node and --key after its name.

With --json a command prints exactly one JSON object; on failure it exits 1 and prints
{"error": {"code", "message"}}. Usage errors exit 2.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from umbra import codec, crypto
from umbra.client._attest_cli import attest_app
from umbra.client._node import NodeClient, UmbraError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Umbra confidential-compute network")
app.add_typer(attest_app, name="attest")

JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object")]
NodeOpt = Annotated[
    str | None, typer.Option("--node", help="node URL [$UMBRA_NODE or http://127.0.0.1:9944]")
]
KeyOpt = Annotated[str | None, typer.Option("--key", help="key file [$UMBRA_KEY]")]

_console = Console()


def _node_url(node: str | None) -> str:
    return node or os.environ.get("UMBRA_NODE") or "http://127.0.0.1:9944"


def _key(key: str | None) -> crypto.SigningKey:
    path = key or os.environ.get("UMBRA_KEY")
    if not path:
        raise UmbraError("no_key", "no key given: pass --key FILE or set UMBRA_KEY")
    try:
        return crypto.load_signing_key(path)
    except crypto.KeyFileError as exc:
        raise UmbraError("bad_key", str(exc)) from None


def _address(text: str) -> bytes:
    try:
        return codec.from_hex(text, length=32, what="address")
    except codec.CodecError as exc:
        raise UmbraError("bad_address", str(exc)) from None


def _fail(as_json: bool, code: str, message: str, exit_code: int = 1) -> NoReturn:
    if as_json:
        print(json.dumps({"error": {"code": code, "message": message}}))
    else:
        _console.print(f"[red]error[/red] ({code}): {message}", highlight=False)
    raise typer.Exit(exit_code)


def _emit(as_json: bool, result: dict[str, Any], title: str | None = None) -> None:
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=title, show_header=False)
    for key, value in result.items():
        table.add_row(str(key), json.dumps(value) if isinstance(value, dict | list) else str(value))
    _console.print(table)


def _run(as_json: bool, action: Callable[[], dict[str, Any]], title: str | None = None) -> None:
    try:
        result = action()
    except UmbraError as exc:
        _fail(as_json, exc.code, exc.message)
    _emit(as_json, result, title)


# ---- accounts and chain ---------------------------------------------------------------------------
@app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", help="where to write the new key file")],
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Create a new account key."""

    def action() -> dict[str, Any]:
        if out.exists():
            raise UmbraError("exists", f"{out} already exists; refusing to overwrite a key")
        new = crypto.SigningKey.generate()
        crypto.save_signing_key(out, new)
        return {"address": codec.to_hex(new.public_key), "file": str(out)}

    _run(as_json, action)


@app.command()
def transfer(
    to: Annotated[str, typer.Argument(help="destination address (0x-hex)")],
    amount: Annotated[int, typer.Argument(help="amount in the smallest unit (>= 1)")],
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Transfer funds; waits until the tx is included."""

    def action() -> dict[str, Any]:
        if amount < 1:
            raise UmbraError("bad_amount", "amount must be at least 1")
        signer = _key(key)
        with NodeClient(_node_url(node)) as client:
            receipt = client.call(signer, "balances", "transfer", to=_address(to), amount=amount)
        return {"tx_hash": receipt["tx_hash"], "tx": receipt["tx"], "block": receipt["block"]}

    _run(as_json, action)


@app.command()
def balance(address: str, as_json: JsonOpt = False, node: NodeOpt = None, key: KeyOpt = None) -> None:
    """Show an account's balances."""

    def action() -> dict[str, Any]:
        with NodeClient(_node_url(node)) as client:
            acct = client.account(_address(address))
        return {
            "address": acct["address"],
            "free": acct["free"],
            "reserved": acct["reserved"],
            "staked": acct["staked"],
        }

    _run(as_json, action)


@app.command()
def status(as_json: JsonOpt = False, node: NodeOpt = None, key: KeyOpt = None) -> None:
    """Show the chain's head and health."""

    def action() -> dict[str, Any]:
        with NodeClient(_node_url(node)) as client:
            return client.status()

    _run(as_json, action, "chain status")


@app.command()
def block(
    height: Annotated[int | None, typer.Argument(help="block height (default: the head)")] = None,
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Show a block header."""

    def action() -> dict[str, Any]:
        with NodeClient(_node_url(node)) as client:
            found = client.block("latest" if height is None else height)
        return {k: v for k, v in found.items() if k not in ("events", "receipts")}

    _run(as_json, action, "block")


# ---- processes -------------------------------------------------------------------------------------
@app.command("node")
def node_cmd(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="where the chain database lives")] = Path(
        "./.umbra-node"
    ),
    port: Annotated[int, typer.Option("--port")] = 9944,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    genesis: Annotated[
        Path | None, typer.Option("--genesis", help="genesis file (CBOR) for a new chain")
    ] = None,
    sequencer_key: Annotated[
        Path | None, typer.Option("--sequencer-key", help="author blocks with this key")
    ] = None,
    follow: Annotated[str | None, typer.Option("--follow", help="follow the node at this URL")] = None,
    check: Annotated[bool, typer.Option("--check", help="run a full integrity check and exit")] = False,
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Run a node: the local sequencer (--sequencer-key) or a follower (--follow URL)."""
    from umbra.node.main import check_store, run_node

    if check:
        problems = check_store(data_dir)
        if as_json:
            print(json.dumps({"ok": not problems, "problems": problems}))
        else:
            _console.print("[green]database is healthy[/green]" if not problems else "\n".join(problems))
        raise typer.Exit(0 if not problems else 1)
    if (sequencer_key is None) == (follow is None):
        _fail(as_json, "usage", "give exactly one of --sequencer-key (author blocks) or --follow URL", 2)
    try:
        run_node(
            data_dir=data_dir,
            host=host,
            port=port,
            genesis_path=genesis,
            sequencer_key_path=sequencer_key,
            follow_url=follow,
        )
    except UmbraError as exc:
        _fail(as_json, exc.code, exc.message)


@app.command()
def dev(
    data_dir: Annotated[Path, typer.Option("--data-dir")] = Path("./.umbra-dev"),
    port: Annotated[int, typer.Option("--port")] = 9944,
    workers: Annotated[int, typer.Option("--workers", min=0)] = 3,
    fresh: Annotated[bool, typer.Option("--fresh", help="wipe the data dir first")] = False,
    ordering: Annotated[str, typer.Option("--ordering", help="local|evm")] = "local",
    nodes: Annotated[int, typer.Option("--nodes", min=1)] = 1,
    as_json: JsonOpt = False,
    node: NodeOpt = None,
    key: KeyOpt = None,
) -> None:
    """Run a whole local network in the foreground; writes DIR/dev.json when ready."""
    from umbra.node.dev import DevNetwork

    if ordering not in ("local", "evm"):
        _fail(as_json, "usage", "--ordering is local or evm", 2)
    network = DevNetwork(data_dir, port=port, workers=workers, fresh=fresh, ordering=ordering, nodes=nodes)
    try:
        code = network.run()
    except RuntimeError as exc:
        _fail(as_json, "dev_failed", str(exc))
    raise typer.Exit(code)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app()


if __name__ == "__main__":
    main()
