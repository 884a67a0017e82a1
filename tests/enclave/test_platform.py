"""Platforms: the simulated CPU, and the hardware adapters over the producers' device fakes."""

from __future__ import annotations

import ctypes
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.tee.test_producers import (
    ARK_GUID,
    ASK_GUID,
    NITRO_DOCUMENT,
    SNP_ARK,
    SNP_ASK,
    SNP_REPORT,
    SNP_VCEK,
    VCEK_GUID,
    VECTORS,
    FakeNsm,
    FakeTsm,
    gramine_dir,
    snp_cert_table,
)
from umbra.enclave.core import Core
from umbra.enclave.platform import (
    SNP_GET_DERIVED_KEY,
    GramineSealKey,
    PlatformError,
    SevGuestSealKey,
    SimTee,
    hardware_tee,
)
from umbra.enclave.transport import InMemoryTransport
from umbra.tee import Endorsements, verify
from umbra.tee._sim import SimAuthority
from umbra.tee.producers import ConfigfsTsmProducer, GramineSgxProducer, NitroNsmProducer

pytestmark = pytest.mark.timeout(60)
REPORT_DATA = bytes(range(64))


@pytest.fixture
def root_file(tmp_path: Path) -> Path:
    path = tmp_path / "sim-root.pem"
    SimAuthority.create(now=datetime.now(UTC)).save(path)
    return path


def test_a_sim_machine_is_issued_once_and_keeps_its_seal_key(tmp_path: Path, root_file: Path) -> None:
    machine = tmp_path / "w" / "machine.sim"
    first = SimTee.for_machine(machine, root_file, presented_type="tdx")
    assert machine.exists() and machine.stat().st_mode & 0o077 == 0
    again = SimTee.for_machine(machine, None, presented_type="tdx")  # the root is needed only once
    assert first.seal_key() == again.seal_key() and len(first.seal_key() or b"") == 32
    other_code = SimTee.for_machine(machine, None, measurement=bytes(32))
    assert other_code.seal_key() != first.seal_key()  # sealing is bound to the code measured
    other_machine = SimTee.for_machine(tmp_path / "x" / "machine.sim", root_file)
    assert other_machine.seal_key() != first.seal_key()
    attestation = first.attest(REPORT_DATA)
    assert (first.tee_type, first.platform, attestation.platform) == ("sim", "tdx", "tdx")
    verdict = verify("sim", attestation.evidence, Endorsements(root=root_file.read_bytes()))
    assert verdict.ok and verdict.report_data == REPORT_DATA.hex(), verdict.error


def test_sim_refusals_are_clear(tmp_path: Path, root_file: Path) -> None:
    with pytest.raises(PlatformError, match="no simulated CPU"):
        SimTee.for_machine(tmp_path / "none" / "machine.sim", None)
    with pytest.raises(PlatformError, match="cannot present"):
        SimTee.for_machine(tmp_path / "m.sim", root_file, presented_type="z80")


def test_tdx_through_configfs_tsm_has_evidence_and_no_seal_key(tmp_path: Path) -> None:
    quote = (VECTORS / "intel-dcap/dcap-qvl/tdx_quote_v4.bin").read_bytes()
    tee = hardware_tee(ConfigfsTsmProducer(tmp_path, io=FakeTsm("tdx_guest", quote)))
    assert (tee.tee_type, tee.platform, tee.measurement, tee.seal_key()) == ("dcap", "tdx", None, None)
    assert tee.attest(REPORT_DATA).evidence == quote


class FakeSevGuest:
    """/dev/sev-guest's SNP_GET_DERIVED_KEY: reads the request struct, writes MSG_KEY_RSP."""

    def __init__(self, status: int = 0) -> None:
        self.status = status
        self.requests: list[dict[str, int]] = []

    def __call__(self, fd: int, request: int, message: Any) -> int:
        assert request == SNP_GET_DERIVED_KEY
        fields = ctypes.cast(message.req_data, ctypes.POINTER(ctypes.c_uint32 * 8)).contents
        self.requests.append(
            {
                "root_key_select": fields[0],
                "guest_field_select": fields[2] | fields[3] << 32,
                "vmpl": fields[4],
            }
        )
        response = bytes(self.status.to_bytes(4, "little")) + bytes(28) + bytes(range(32))
        ctypes.memmove(message.resp_data, response, 64)
        return 0


def test_sev_snp_through_configfs_tsm_seals_with_the_firmware_derived_key(tmp_path: Path) -> None:
    table = snp_cert_table({VCEK_GUID: SNP_VCEK, ASK_GUID: SNP_ASK, ARK_GUID: SNP_ARK})
    device = tmp_path / "sev-guest"
    device.write_bytes(b"")
    (tmp_path / "tsm").mkdir()
    producer = ConfigfsTsmProducer(tmp_path / "tsm", io=FakeTsm("sev_guest", SNP_REPORT, table))
    tee = hardware_tee(producer, sev_guest=tmp_path / "no-sev-guest")
    assert (tee.tee_type, tee.platform) == ("sev-snp", "sev-snp")
    with pytest.raises(PlatformError, match="no-sev-guest"):  # wired to the SEV guest device
        tee.seal_key()
    attestation = tee.attest(REPORT_DATA)
    assert attestation.evidence == SNP_REPORT and attestation.endorsements.vek == SNP_VCEK
    fake = FakeSevGuest()
    sealer = SevGuestSealKey(device, ioctl=fake)
    key = sealer.seal_key()
    assert len(key) == 32 and key == SevGuestSealKey(device, ioctl=FakeSevGuest()).seal_key()
    # Chip-unique root key (VCEK), bound to the guest policy and the launch measurement.
    assert fake.requests == [{"root_key_select": 0, "guest_field_select": 0b1001, "vmpl": 0}]
    with pytest.raises(PlatformError, match="refused"):
        SevGuestSealKey(device, ioctl=FakeSevGuest(status=0x16)).seal_key()
    with pytest.raises(PlatformError, match="SEV-SNP derived key"):
        SevGuestSealKey(tmp_path / "absent", ioctl=fake).seal_key()


def test_gramine_sgx_seals_with_the_mrenclave_key(tmp_path: Path) -> None:
    quote = (VECTORS / "intel-dcap/dcap-qvl/sgx_quote.bin").read_bytes()
    root = gramine_dir(tmp_path, "dcap", quote)
    (root / "keys").mkdir()
    (root / "keys" / "_sgx_mrenclave").write_bytes(bytes(range(16)))
    tee = hardware_tee(GramineSgxProducer(root), gramine_root=root)
    assert (tee.tee_type, tee.platform) == ("dcap", "sgx")
    assert tee.attest(REPORT_DATA).evidence == quote
    key = tee.seal_key()
    assert key is not None and len(key) == 32 and key == GramineSealKey(root).seal_key()
    (root / "keys" / "_sgx_mrenclave").write_bytes(b"short")
    with pytest.raises(PlatformError, match="expected 16"):
        tee.seal_key()


def test_nitro_has_evidence_and_no_seal_key() -> None:
    tee = hardware_tee(NitroNsmProducer(FakeNsm()))
    assert (tee.tee_type, tee.platform, tee.seal_key()) == ("nitro", "nitro", None)
    assert tee.attest(REPORT_DATA).evidence == NITRO_DOCUMENT


def test_a_core_without_a_seal_key_keeps_secrets_in_memory_only(tmp_path: Path) -> None:
    from tests.enclave.helpers import SimNet

    net = SimNet.start(tmp_path / "net")
    tee = hardware_tee(NitroNsmProducer(FakeNsm()))
    first = InMemoryTransport(Core(tee, tmp_path / "core").handle)
    reply = first.call({"op": "init", "genesis": net.genesis.encode(), "role": "worker"})
    assert reply["persistent"] is False and not list((tmp_path).glob("core/*"))
    second = InMemoryTransport(Core(tee, tmp_path / "core").handle)
    again = second.call({"op": "init", "genesis": net.genesis.encode(), "role": "worker"})
    assert again["identity_pk"] != reply["identity_pk"] and not again["resumed"]
