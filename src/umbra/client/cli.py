"""The `umbra` command. Every subcommand takes --json, --node and --key after its name."""

from __future__ import annotations

import typer

from umbra.client._attest_cli import attest_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Umbra confidential-compute network")
app.add_typer(attest_app, name="attest")


def main() -> None:
    app()
