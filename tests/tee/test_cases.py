"""Every case of cases.json gives its expected verdict, through the library facade and through
`umbra attest verify --json` run exactly as the conformance check runs it; then the CLI's own
contract (input forms, usage errors, exit codes) from INTERFACES.md "Attestation"."""

from __future__ import annotations

import base64
import importlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.conftest import VECTORS, load_cases
from umbra.client.cli import app
from umbra.tee import Endorsements, verify_at_time
from umbra.tee._inputs import decode_evidence, parse_hex, parse_time
from umbra.tee._sim import SimAuthority, SimPlatform

CASES = load_cases()
IDS = [case["id"] for case in CASES]
ENDORSEMENTS = ("collateral", "vek", "chain", "root", "anchor")
UMBRA = Path(sys.executable).with_name("umbra")
VERDICT_KEYS = {"ok", "type", "status", "advisory_ids", "debug", "measurements", "report_data", "error"}


def assert_expected(case: dict[str, Any], verdict: dict[str, Any]) -> None:
    expect = case["expect"]
    assert verdict["ok"] == expect["ok"], f"{case['id']}: {verdict.get('error')}"
    if "status" in expect:
        assert verdict["status"] == expect["status"]
    if "advisory_ids" in expect:
        assert sorted(verdict["advisory_ids"]) == expect["advisory_ids"]
    if "debug" in expect:
        assert verdict["debug"] == expect["debug"]
    if not verdict["ok"]:
        assert verdict["error"], "a refusal must say why"


# --- the library facade ------------------------------------------------------------------------


def verification_time(case: dict[str, Any], evidence: bytes) -> datetime:
    if case.get("at") == "evidence":
        module = importlib.import_module(f"umbra.tee._{case['type'].replace('-', '_')}")
        return module.evidence_time(evidence) or datetime.now(UTC)
    return parse_time(case["at"]) if case.get("at") else datetime.now(UTC)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_case_through_the_facade(case: dict[str, Any]) -> None:
    evidence = decode_evidence((VECTORS / case["evidence"]).read_bytes())
    endorsements = Endorsements(
        **{name: (VECTORS / case[name]).read_bytes() for name in ENDORSEMENTS if case.get(name)}
    )
    verdict = verify_at_time(
        case["type"],
        evidence,
        endorsements,
        verification_time(case, evidence),
        allow_debug=bool(case.get("allow_debug")),
        nonce=bytes.fromhex(case["nonce"]) if case.get("nonce") else None,
    )
    assert_expected(case, verdict.to_json())


# --- the CLI, as the conformance check drives it -------------------------------------------------


def cli_command(case: dict[str, Any]) -> list[str]:
    command = [
        str(UMBRA),
        "attest",
        "verify",
        str(VECTORS / case["evidence"]),
        "--type",
        case["type"],
        "--json",
    ]
    for name in ENDORSEMENTS:
        if case.get(name):
            command += [f"--{name}", str(VECTORS / case[name])]
    if case.get("nonce"):
        command += ["--nonce", case["nonce"]]
    if case.get("at"):
        command += ["--at", case["at"]]
    if case.get("allow_debug"):
        command.append("--allow-debug")
    return command


@pytest.fixture(scope="module")
def cli_runs() -> dict[str, subprocess.CompletedProcess[str]]:
    """Every case through the real `umbra` executable, in parallel (each run is a process start)."""

    def run(case: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cli_command(case), capture_output=True, text=True, timeout=60, check=False)

    with ThreadPoolExecutor(max_workers=max(4, 2 * (os.cpu_count() or 1))) as pool:
        return dict(zip(IDS, pool.map(run, CASES), strict=True))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_case_through_the_cli(
    case: dict[str, Any], cli_runs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    run = cli_runs[case["id"]]
    verdict = json.loads(run.stdout)  # exactly one JSON object, nothing else on stdout
    assert set(verdict) >= VERDICT_KEYS
    assert_expected(case, verdict)
    assert run.returncode == (0 if case["expect"]["ok"] else 1), run.stderr


# --- the CLI contract --------------------------------------------------------------------------

T0 = datetime(2021, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def sim_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Sim evidence whose hardware certificate is valid only around T0, in every text form."""
    directory = tmp_path_factory.mktemp("sim")
    authority = SimAuthority.create(now=T0 - timedelta(days=1))
    hardware = authority.issue_hardware(now=T0 - timedelta(hours=1), valid_for=timedelta(hours=2))
    evidence = SimPlatform(hardware, measurement=bytes(32)).evidence(b"\x42" * 64, at=T0)
    encoded = base64.b64encode(evidence).decode()
    forms = {
        "raw": evidence,
        "hex": evidence.hex().encode(),
        "hex-wrapped": (
            "0x" + "\n".join(evidence.hex()[i : i + 64] for i in range(0, len(evidence) * 2, 64))
        ).encode(),
        "base64": encoded.encode(),
        "base64-wrapped": "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)).encode() + b"\n",
        "base64url": base64.urlsafe_b64encode(evidence).rstrip(b"="),
    }
    files = {name: directory / f"evidence.{name}" for name in forms}
    for name, data in forms.items():
        files[name].write_bytes(data)
    files["root"] = directory / "root.pem"
    files["root"].write_bytes(authority.cert_pem)
    files["garbage"] = directory / "garbage.bin"
    files["garbage"].write_bytes(b"\x00\xffnot evidence\x01")
    return files


def umbra(*args: str, input: bytes | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), input=input)
    return result.exit_code, result.stdout


def sim_verify(files: dict[str, Path], form: str = "raw", *extra: str) -> tuple[int, str]:
    return umbra("attest", "verify", str(files[form]), "--type", "sim", "--root", str(files["root"]), *extra)


@pytest.mark.parametrize("form", ["raw", "hex", "hex-wrapped", "base64", "base64-wrapped", "base64url"])
def test_evidence_is_read_as_raw_hex_or_base64(form: str, sim_files: dict[str, Path]) -> None:
    code, out = sim_verify(sim_files, form, "--at", T0.isoformat(), "--json")
    verdict = json.loads(out)
    assert (code, verdict["ok"], verdict["report_data"]) == (0, True, "42" * 64), verdict["error"]


def test_evidence_from_stdin(sim_files: dict[str, Path]) -> None:
    code, out = umbra(
        "attest", "verify", "-", "--type", "sim", "--root", str(sim_files["root"]), "--at", "1622548800", "--json",
        input=sim_files["hex"].read_bytes(),
    )  # fmt: skip
    assert code == 0 and json.loads(out)["ok"]


def test_at_evidence_uses_the_time_inside_the_evidence(sim_files: dict[str, Path]) -> None:
    code, out = sim_verify(sim_files, "raw", "--at", "evidence", "--json")
    assert code == 0 and json.loads(out)["ok"]
    code, out = sim_verify(sim_files, "raw", "--json")  # now: the two-hour hardware certificate has expired
    verdict = json.loads(out)
    assert (code, verdict["ok"], verdict["step"]) == (1, False, "chain")


def test_every_command_accepts_node_and_key(sim_files: dict[str, Path]) -> None:
    code, _ = sim_verify(
        sim_files, "raw", "--at", "evidence", "--node", "http://x:1", "--key", "/nonexistent"
    )
    assert code == 0


@pytest.mark.parametrize(
    "args",
    [
        ["--type", "tpm"],
        [],
        ["--type", "sim", "--nonce", "zz"],
        ["--type", "sim", "--at", "yesterday"],
        ["--type", "dcap", "--at", "evidence"],
    ],
    ids=["unknown-type", "missing-type", "bad-nonce", "bad-time", "at-evidence-without-time"],
)
def test_usage_errors_exit_2_with_one_json_object(args: list[str], sim_files: dict[str, Path]) -> None:
    code, out = umbra("attest", "verify", str(sim_files["raw"]), *args, "--json")
    body = json.loads(out)
    assert code == 2
    assert set(body) >= VERDICT_KEYS and body["ok"] is False
    assert body["error"]["code"] == "usage" and body["error"]["message"]


@pytest.mark.parametrize(
    ("evidence", "extra", "step"),
    [
        ("/nonexistent/evidence", [], "parse"),
        ("garbage", [], "parse"),
        ("raw", ["--chain", "/nonexistent/chain.pem"], "parse"),
        ("raw", ["--nonce", "00", "--at", "evidence"], "nonce"),
    ],
    ids=["missing-evidence-file", "garbage", "missing-endorsement-file", "nonce-mismatch"],
)
def test_refusals_print_the_verdict_and_exit_1(
    evidence: str, extra: list[str], step: str, sim_files: dict[str, Path]
) -> None:
    path = str(sim_files.get(evidence, evidence))
    code, out = umbra(
        "attest", "verify", path, "--type", "sim", "--root", str(sim_files["root"]), "--json", *extra
    )
    verdict = json.loads(out)
    assert (code, verdict["ok"], verdict["step"]) == (1, False, step)
    assert isinstance(verdict["error"], str) and verdict["error"]


def test_people_get_a_table(sim_files: dict[str, Path]) -> None:
    code, out = sim_verify(sim_files, "raw", "--at", "evidence")
    assert code == 0
    assert "ok" in out and "yes" in out and "measurement" in out and "42" * 8 in out
    code, out = sim_verify(sim_files, "garbage")
    assert code == 1 and "no" in out and "parse" in out


def test_hex_is_tried_before_base64() -> None:
    assert decode_evidence(b"abcd") == b"\xab\xcd"  # valid as both; hex wins
    assert decode_evidence(b"abc=") == b"i\xb7"
    assert decode_evidence(b" 0xAB\n cd\n") == b"\xab\xcd"
    binary = bytes(range(256))
    assert decode_evidence(binary) == binary
    assert decode_evidence(b"") == b""


def test_times_and_nonces() -> None:
    assert parse_time("2025-07-01T00:00:00Z") == datetime(2025, 7, 1, tzinfo=UTC)
    assert parse_time("2025-07-01T02:00:00+02:00") == datetime(2025, 7, 1, tzinfo=UTC)
    assert parse_time("2025-07-01") == datetime(2025, 7, 1, tzinfo=UTC)
    assert parse_time("1751328000") == datetime(2025, 7, 1, tzinfo=UTC)
    assert parse_hex("0xAbCd") == b"\xab\xcd"
    for bad in ("evidence", "1e99999", ""):
        with pytest.raises(ValueError):
            parse_time(bad)
