"""`umbra attest verify`: check TEE evidence offline, exactly as INTERFACES.md "Attestation" fixes it.

It always prints the verdict object (`--json`: one JSON object) and exits 0 iff the evidence is ok,
1 if it is refused, including evidence that cannot be read or parsed. Usage errors (an unknown
`--type`, a malformed `--nonce` or `--at`) exit 2; with `--json` their object is still the verdict
object, its `error` being the `{"code", "message"}` object every other command prints on failure.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from umbra.tee import TEE_TYPES, Endorsements, Step, Verdict, verify_at_time
from umbra.tee._inputs import decode_evidence, parse_hex, parse_time

__all__ = ["attest_app"]

attest_app = typer.Typer(no_args_is_help=True, add_completion=False, help="TEE attestation evidence.")

# Types whose evidence carries the time it was made, for `--at evidence`: type -> its module.
_EVIDENCE_TIME_MODULES = {"nitro": "umbra.tee._nitro", "sim": "umbra.tee._sim"}
_ENDORSEMENT_OPTIONS = ("collateral", "vek", "chain", "root", "anchor")
_T = TypeVar("_T")


class _UsageError(Exception):
    pass


@attest_app.command("verify")
def verify(
    evidence: Annotated[
        str | None, typer.Argument(help="Evidence file (raw bytes, hex or base64 text), or - for stdin.")
    ] = None,
    tee_type: Annotated[str | None, typer.Option("--type", help=f"One of {'|'.join(TEE_TYPES)}.")] = None,
    collateral: Annotated[
        str | None, typer.Option(help="Collateral file (dcap: QVL collateral JSON).")
    ] = None,
    vek: Annotated[str | None, typer.Option(help="SEV-SNP VCEK/VLEK certificate, PEM or DER.")] = None,
    chain: Annotated[str | None, typer.Option(help="Certificate chain, PEM (one or more) or DER.")] = None,
    root: Annotated[
        str | None, typer.Option(help="Root certificate replacing the pinned vendor root.")
    ] = None,
    anchor: Annotated[
        str | None, typer.Option(help="arm-cca CPAK / psa IAK: PEM, JWK, trust-anchor list, HMAC key.")
    ] = None,
    nonce: Annotated[str | None, typer.Option(help="Expected nonce, hex.")] = None,
    at: Annotated[
        str | None,
        typer.Option(help="Verification time: ISO-8601, unix seconds, or 'evidence'. Default: now."),
    ] = None,
    allow_debug: Annotated[
        bool, typer.Option("--allow-debug", help="Accept debug evidence (sev-snp, nitro, sim).")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    node: Annotated[
        str, typer.Option(envvar="UMBRA_NODE", help="Node URL (unused: verification is offline).")
    ] = "http://127.0.0.1:9944",
    key: Annotated[str | None, typer.Option(envvar="UMBRA_KEY", help="Key file (unused here).")] = None,
) -> None:
    """Verify TEE evidence at a time, offline, and print the verdict."""
    del node, key  # every command accepts them; verifying needs neither
    type_name = tee_type or ""
    try:
        if evidence is None:
            raise _UsageError("missing EVIDENCE (a file, or - for stdin)")
        if type_name not in TEE_TYPES:
            raise _UsageError(f"--type must be one of {', '.join(TEE_TYPES)}; got {tee_type!r}")
        expected_nonce = _parse_option("--nonce", nonce, parse_hex)
        if at == "evidence" and type_name not in _EVIDENCE_TIME_MODULES:
            raise _UsageError(
                f"--at evidence needs evidence that carries its time ({', '.join(_EVIDENCE_TIME_MODULES)}); "
                f"{type_name} evidence does not"
            )
        at_time = _parse_option("--at", at, parse_time) if at not in (None, "evidence") else None
    except _UsageError as exc:
        _usage_error(str(exc), type_name, json_output=json_output)
    files = {"collateral": collateral, "vek": vek, "chain": chain, "root": root, "anchor": anchor}
    verdict = _verify(type_name, evidence, files, expected_nonce, at, at_time, allow_debug=allow_debug)
    _print_verdict(verdict, json_output=json_output)
    raise typer.Exit(0 if verdict.ok else 1)


def _verify(
    tee_type: str,
    evidence_path: str,
    files: dict[str, str | None],
    nonce: bytes | None,
    at_text: str | None,
    at: datetime | None,
    *,
    allow_debug: bool,
) -> Verdict:
    try:
        raw = sys.stdin.buffer.read() if evidence_path == "-" else Path(evidence_path).read_bytes()
    except OSError as exc:
        return _refusal(
            tee_type, Step.PARSE.value, f"cannot read evidence {evidence_path}: {exc.strerror or exc}"
        )
    evidence = decode_evidence(raw)
    endorsement_bytes: dict[str, bytes | None] = {}
    for name in _ENDORSEMENT_OPTIONS:
        path = files[name]
        try:
            endorsement_bytes[name] = None if path is None else Path(path).read_bytes()
        except OSError as exc:
            return _refusal(tee_type, Step.PARSE.value, f"cannot read --{name} {path}: {exc.strerror or exc}")
    if at_text == "evidence":
        try:
            at = _evidence_time(tee_type, evidence)
        except ModuleNotFoundError as exc:
            return _refusal(
                tee_type, Step.UNSUPPORTED.value, f"verifier for {tee_type} is unavailable: {exc}"
            )
    return verify_at_time(
        tee_type,
        evidence,
        Endorsements(**endorsement_bytes),
        at if at is not None else datetime.now(UTC),
        allow_debug=allow_debug,
        nonce=nonce,
    )


def _evidence_time(tee_type: str, evidence: bytes) -> datetime | None:
    """The time inside the evidence, or None where it cannot be read. Verification then runs at
    now, and the verifier's own refusal says what is wrong with the evidence."""
    module = importlib.import_module(_EVIDENCE_TIME_MODULES[tee_type])
    read_time = cast(Callable[[bytes], datetime | None], module.evidence_time)
    try:
        return read_time(evidence)
    except Exception:  # unreadable evidence: the verifier refuses it below, with the reason
        return None


def _parse_option(option: str, text: str | None, parse: Callable[[str], _T]) -> _T | None:
    if text is None:
        return None
    try:
        return parse(text)
    except ValueError as exc:
        raise _UsageError(f"{option}: {exc}") from None


def _refusal(tee_type: str, step: str, message: str) -> Verdict:
    return Verdict(False, tee_type, None, [], None, {}, None, f"{step}: {message}", step)


def _usage_error(message: str, tee_type: str, *, json_output: bool) -> NoReturn:
    if json_output:
        verdict = _refusal(tee_type, "usage", message).to_json()
        typer.echo(json.dumps({**verdict, "error": {"code": "usage", "message": message}}))
    else:
        Console(stderr=True).print(f"[red]usage:[/red] {message}", markup=True, highlight=False)
    raise typer.Exit(2)


def _print_verdict(verdict: Verdict, *, json_output: bool) -> None:
    if json_output:
        typer.echo(json.dumps(verdict.to_json(), default=str))
        return
    table = Table(show_header=False, title="attestation verdict", title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("ok", "[green]yes[/green]" if verdict.ok else "[red]no[/red]")
    table.add_row("type", verdict.type + (f" ({verdict.platform})" if verdict.platform else ""))
    if verdict.error:
        table.add_row("error", f"[red]{escape(verdict.error)}[/red]")
    table.add_row("status", verdict.status or "-")
    table.add_row("advisories", ", ".join(verdict.advisory_ids) or "-")
    table.add_row("debug", "-" if verdict.debug is None else str(verdict.debug).lower())
    for name, value in sorted(verdict.measurements.items()):
        table.add_row(escape(name), value)
    table.add_row("report_data", verdict.report_data or "-")
    Console().print(table)
