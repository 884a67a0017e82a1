"""The simulated TEE: evidence round trip, chain to the dev root, identity persistence, sealing."""

from __future__ import annotations

import hashlib
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from umbra.tee import Endorsements, Step, Verdict, verify_at_time
from umbra.tee._sim import (
    PRESENTED_TYPES,
    SimAuthority,
    SimHardware,
    SimPlatform,
    SimVerifier,
    code_tree_measurement,
    evidence_time,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
REPORT_DATA = bytes(range(64))
MEASUREMENT = hashlib.sha256(b"worker code").digest()


@pytest.fixture(scope="module")
def authority() -> SimAuthority:
    return SimAuthority.create(now=T0 - timedelta(days=1))


@pytest.fixture(scope="module")
def hardware(authority: SimAuthority) -> SimHardware:
    return authority.issue_hardware(now=T0 - timedelta(hours=1), valid_for=timedelta(days=30))


def make_evidence(hardware: SimHardware, *, presented_type: str = "sim", debug: bool = False) -> bytes:
    platform = SimPlatform(hardware, measurement=MEASUREMENT, presented_type=presented_type, debug=debug)
    return platform.evidence(REPORT_DATA, at=T0)


def verify(evidence: bytes, root: bytes | None, at: datetime = T0, *, allow_debug: bool = False) -> Verdict:
    return verify_at_time("sim", evidence, Endorsements(root=root), at, allow_debug=allow_debug)


def resign(body: dict[str, object], key: Ed25519PrivateKey) -> bytes:
    """Evidence for `body` signed by `key` the way the sim format prescribes."""
    body_bytes = cbor2.dumps(body, canonical=True)
    signature = key.sign(hashlib.sha256(b"umbra/sim-evidence/v1" + body_bytes).digest())
    return cbor2.dumps([body_bytes, signature])


def test_round_trip_reports_what_the_platform_measured(
    authority: SimAuthority, hardware: SimHardware
) -> None:
    verdict = verify(make_evidence(hardware), authority.cert_pem, T0 + timedelta(minutes=5))
    assert verdict.ok, verdict.error
    assert verdict.type == "sim" and verdict.platform == "sim"
    assert verdict.measurements == {"measurement": MEASUREMENT.hex()}
    assert verdict.report_data == REPORT_DATA.hex()
    assert verdict.debug is False and verdict.status is None and verdict.advisory_ids == []
    assert verdict.claims == {"simulated": True, "chip_id": hardware.chip_id.hex()}
    assert verdict.evidence is not None and verdict.evidence.issued_at == T0


def test_root_may_be_der_or_one_of_several_pem_certificates(
    authority: SimAuthority, hardware: SimHardware
) -> None:
    other = SimAuthority.create(now=T0 - timedelta(days=1))
    evidence = make_evidence(hardware)
    assert verify(evidence, other.cert_pem + authority.cert_pem).ok
    der = authority.certificate.public_bytes(serialization.Encoding.DER)
    assert verify(evidence, der).ok


@pytest.mark.parametrize("presented", PRESENTED_TYPES)
def test_every_presented_type_stays_sim_and_simulated(
    presented: str, authority: SimAuthority, hardware: SimHardware
) -> None:
    verdict = verify(make_evidence(hardware, presented_type=presented), authority.cert_pem)
    assert verdict.ok, verdict.error
    assert (verdict.type, verdict.platform, verdict.claims["simulated"]) == ("sim", presented, True)


def test_unknown_presented_type_is_refused_by_the_platform(hardware: SimHardware) -> None:
    with pytest.raises(ValueError, match="cannot present"):
        SimPlatform(hardware, presented_type="arm-cca", measurement=MEASUREMENT)


def test_without_the_dev_root_it_is_refused_at_the_chain(hardware: SimHardware) -> None:
    verdict = verify(make_evidence(hardware), None)
    assert not verdict.ok and verdict.step == Step.CHAIN
    assert "dev root" in (verdict.error or "")
    assert verdict.debug is False  # evidence parsed, so debug is reported


def test_another_networks_root_is_refused(hardware: SimHardware) -> None:
    stranger = SimAuthority.create(now=T0 - timedelta(days=1))
    verdict = verify(make_evidence(hardware), stranger.cert_pem)
    assert not verdict.ok and verdict.step == Step.CHAIN


def test_garbage_root_is_refused_at_the_chain(hardware: SimHardware) -> None:
    verdict = verify(make_evidence(hardware), b"not a certificate")
    assert not verdict.ok and verdict.step == Step.CHAIN


@pytest.mark.parametrize(
    "at", [T0 - timedelta(hours=2), T0 + timedelta(days=31)], ids=["before-issue", "after-expiry"]
)
def test_hardware_certificate_is_checked_at_the_verification_time(
    at: datetime, authority: SimAuthority, hardware: SimHardware
) -> None:
    evidence = make_evidence(hardware)
    verdict = verify(evidence, authority.cert_pem, at)
    assert not verdict.ok and verdict.step == Step.CHAIN, verdict.error
    assert "Umbra sim CPU" in (verdict.error or "")
    assert verify(evidence, authority.cert_pem, T0 + timedelta(days=29)).ok


def test_expired_dev_root_is_refused(hardware: SimHardware) -> None:
    short = SimAuthority.create(now=T0 - timedelta(days=2), valid_for=timedelta(days=1))
    evidence = make_evidence(short.issue_hardware(now=T0 - timedelta(days=2)))
    assert verify(evidence, short.cert_pem, T0 - timedelta(hours=36)).ok
    verdict = verify(evidence, short.cert_pem, T0)
    assert not verdict.ok and verdict.step == Step.CHAIN and "dev root" in (verdict.error or "")


def test_tampered_signature_is_refused(authority: SimAuthority, hardware: SimHardware) -> None:
    body_bytes, signature = cbor2.loads(make_evidence(hardware))
    forged = cbor2.dumps([body_bytes, bytes([signature[0] ^ 1]) + signature[1:]])
    verdict = verify(forged, authority.cert_pem)
    assert not verdict.ok and verdict.step == Step.SIGNATURE


def test_tampered_body_is_refused(authority: SimAuthority, hardware: SimHardware) -> None:
    body_bytes, signature = cbor2.loads(make_evidence(hardware))
    body = cbor2.loads(body_bytes)
    body["measurement"] = bytes(32)
    verdict = verify(cbor2.dumps([cbor2.dumps(body, canonical=True), signature]), authority.cert_pem)
    assert not verdict.ok and verdict.step == Step.SIGNATURE


def test_evidence_signed_by_a_key_the_root_never_certified_is_refused(
    authority: SimAuthority, hardware: SimHardware
) -> None:
    body = cbor2.loads(cbor2.loads(make_evidence(hardware))[0])
    verdict = verify(resign(body, Ed25519PrivateKey.generate()), authority.cert_pem)
    assert not verdict.ok and verdict.step == Step.SIGNATURE


def test_non_deterministic_body_is_refused(authority: SimAuthority, hardware: SimHardware) -> None:
    body = cbor2.loads(cbor2.loads(make_evidence(hardware))[0])
    reordered = cbor2.dumps(dict(reversed(list(body.items()))))  # same map, keys not in canonical order
    signature = b"\0" * 64
    verdict = verify(cbor2.dumps([reordered, signature]), authority.cert_pem)
    assert not verdict.ok and verdict.step == Step.PARSE and "deterministic" in (verdict.error or "")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("simulated", False),
        ("version", 2),
        ("presented_type", "tpm"),
        ("measurement", b"\1" * 31),
        ("report_data", b"\1" * 63),
        ("debug", 0),
        ("timestamp_ms", -1),
        ("hw_cert", b"\x30\x03\x02\x01\x00"),
    ],
)
def test_malformed_body_fields_are_parse_errors(
    field: str, value: object, authority: SimAuthority, hardware: SimHardware
) -> None:
    body = cbor2.loads(cbor2.loads(make_evidence(hardware))[0])
    body[field] = value
    verdict = verify(resign(body, Ed25519PrivateKey.generate()), authority.cert_pem)
    assert not verdict.ok and verdict.step == Step.PARSE, verdict.error


def test_debug_is_reported_and_left_to_the_caller(authority: SimAuthority, hardware: SimHardware) -> None:
    evidence = make_evidence(hardware, debug=True)
    refused = verify(evidence, authority.cert_pem)
    assert not refused.ok and refused.step == Step.DEBUG and refused.debug is True
    allowed = verify(evidence, authority.cert_pem, allow_debug=True)
    assert allowed.ok and allowed.debug is True
    # the verifier itself reports debug without judging it
    assert SimVerifier().verify_at_time(evidence, Endorsements(root=authority.cert_pem), T0).debug is True


def test_trailing_bytes_after_the_evidence_are_tolerated(
    authority: SimAuthority, hardware: SimHardware
) -> None:
    assert verify(make_evidence(hardware) + b"\0trailing junk", authority.cert_pem).ok


def test_short_report_data_is_zero_padded_and_long_refused(
    hardware: SimHardware, authority: SimAuthority
) -> None:
    platform = SimPlatform(hardware, measurement=MEASUREMENT)
    verdict = verify(platform.evidence(b"\xab" * 32, at=T0), authority.cert_pem)
    assert verdict.report_data == "ab" * 32 + "00" * 32
    with pytest.raises(ValueError, match="at most 64"):
        platform.evidence(b"\0" * 65, at=T0)


def test_evidence_time_reads_the_timestamp_to_the_millisecond(hardware: SimHardware) -> None:
    at = datetime(2025, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)
    evidence = SimPlatform(hardware, measurement=MEASUREMENT).evidence(REPORT_DATA, at=at)
    assert evidence_time(evidence) == at
    assert evidence_time(b"\xff\x00") is None


def test_authority_survives_save_and_load_with_private_permissions(
    tmp_path: Path, hardware: SimHardware
) -> None:
    authority = SimAuthority.create(now=T0)
    path = tmp_path / "dev-root.pem"
    authority.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = SimAuthority.load(path)
    assert loaded.cert_pem == authority.cert_pem
    issued = loaded.issue_hardware(now=T0)  # the loaded key signs: its hardware chains to the saved root
    assert verify(make_evidence(issued), authority.cert_pem).ok
    with pytest.raises(ValueError, match="dev root"):
        SimAuthority.from_pem(authority.cert_pem)  # a certificate without its key is no authority


def test_hardware_identity_and_sealing_key_survive_a_restart(tmp_path: Path, authority: SimAuthority) -> None:
    path = tmp_path / "machine.secret"
    first = SimHardware.load_or_issue(path, authority, now=T0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = SimHardware.load_or_issue(path, authority, now=T0 + timedelta(days=1))
    assert again.chip_id == first.chip_id
    assert (
        SimPlatform(again, measurement=MEASUREMENT).seal_key()
        == SimPlatform(first, measurement=MEASUREMENT).seal_key()
    )
    assert verify(make_evidence(again), authority.cert_pem).claims["chip_id"] == first.chip_id.hex()
    with pytest.raises(ValueError, match="another dev network"):
        SimHardware.load_or_issue(path, SimAuthority.create(now=T0), now=T0)
    with pytest.raises(ValueError, match="sim hardware"):
        SimHardware.from_bytes(b"garbage")


def test_sealing_key_depends_on_the_machine_and_the_code(
    authority: SimAuthority, hardware: SimHardware
) -> None:
    key = SimPlatform(hardware, measurement=MEASUREMENT).seal_key()
    assert len(key) == 32
    assert SimPlatform(hardware, measurement=MEASUREMENT, presented_type="tdx").seal_key() == key
    assert SimPlatform(hardware, measurement=bytes(32)).seal_key() != key
    other_machine = authority.issue_hardware(now=T0)
    assert SimPlatform(other_machine, measurement=MEASUREMENT).seal_key() != key


def test_code_tree_measurement_depends_on_code_only(tmp_path: Path) -> None:
    tree = tmp_path / "a" / "pkg"
    (tree / "sub").mkdir(parents=True)
    (tree / "__init__.py").write_text("x = 1\n")
    (tree / "sub" / "mod.py").write_text("y = 2\n")
    copy = tmp_path / "b" / "elsewhere"
    shutil.copytree(tree, copy)
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "stale.py").write_text("ignored")
    (copy / "README.md").write_text("not code")
    assert code_tree_measurement(tree) == code_tree_measurement(copy)
    renamed = tmp_path / "c"
    shutil.copytree(tree, renamed)
    (renamed / "sub" / "mod.py").rename(renamed / "sub" / "other.py")
    assert code_tree_measurement(renamed) != code_tree_measurement(tree)
    changed = tmp_path / "d"
    shutil.copytree(tree, changed)
    (changed / "sub" / "mod.py").write_text("y = 3\n")
    assert code_tree_measurement(changed) != code_tree_measurement(tree)


def test_default_measurement_is_the_installed_umbra_package() -> None:
    import umbra

    package = Path(umbra.__file__).resolve().parent
    assert code_tree_measurement() == code_tree_measurement(package)
    assert len(code_tree_measurement()) == 32
