"""`umbra attest verify` (placeholder module, replaced by the attestation work)."""

from __future__ import annotations

import typer

attest_app = typer.Typer(no_args_is_help=True, help="TEE attestation evidence")
