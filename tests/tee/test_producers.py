"""Evidence producers against faithful fakes of each device interface.

The fakes answer with real vendor evidence from the shared vectors, so what a producer hands out
is checked end to end: it must verify through the facade exactly as the vector does.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import fcntl
import os
import shutil
import struct
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import VECTORS
from umbra.tee import Endorsements, verify_at_time
from umbra.tee._nitro import evidence_time
from umbra.tee._sim import SimAuthority, SimPlatform
from umbra.tee.producers import (
    NSM_IOCTL_REQUEST,
    ConfigfsTsmProducer,
    DevNsmTransport,
    GramineSgxProducer,
    NitroNsmProducer,
    ProducerError,
    SimProducer,
    detect_producer,
)

REPORT_DATA = b"\x5a" * 48  # shorter than 64: producers zero-pad, as the kernel does
PADDED = REPORT_DATA + bytes(16)

SNP_REPORT = bytes.fromhex((VECTORS / "amd-sev-snp/virtee-sev/report_milan.hex").read_text().strip())
SNP_VCEK = (VECTORS / "amd-sev-snp/virtee-sev/vcek_milan.der").read_bytes()
SNP_ASK, SNP_ARK = (
    c.public_bytes(serialization.Encoding.DER)
    for c in x509.load_pem_x509_certificates(
        (VECTORS / "amd-sev-snp/virtee-sev/cert_chain_milan.pem").read_bytes()
    )
)
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")


def snp_cert_table(certificates: dict[uuid.UUID, bytes]) -> bytes:
    """The GHCB certificate table a SEV-SNP host attaches: (GUID, offset, length) entries, an
    all-zero terminator, then the certificates; offsets count from the start of the table."""
    offset = 24 * (len(certificates) + 1)
    entries, blobs = b"", b""
    for guid, der in certificates.items():
        entries += struct.pack("<16sII", guid.bytes, offset + len(blobs), len(der))
        blobs += der
    return entries + bytes(24) + blobs


class FakeTsm:
    """configfs-tsm as the kernel presents it, over a temp dir (a `ConfigfsIO`).

    mkdir creates an entry with its read-only attributes; each write to inblob or privlevel bumps
    `generation`; reading outblob (and auxblob, visible for sev_guest only) yields the report for
    the current request; write-only attributes cannot be read; rmdir removes the entry whole.
    `racing_writes` simulates another process writing inblob while we read outblob.
    """

    def __init__(
        self, provider: str, outblob: bytes, auxblob: bytes = b"", *, privlevel_floor: int = 0
    ) -> None:
        self.provider = provider
        self.outblob = outblob
        self.auxblob = auxblob
        self.privlevel_floor = privlevel_floor
        self.racing_writes = 0
        self.entries_made = 0
        self.writes: list[tuple[str, bytes]] = []

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)
        self.entries_made += 1
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")
        (path / "privlevel_floor").write_text(f"{self.privlevel_floor}\n")

    def rmdir(self, path: Path) -> None:
        shutil.rmtree(path)

    def write(self, path: Path, data: bytes) -> None:
        if path.name == "inblob":
            if len(data) > 64:
                raise OSError(errno.EINVAL, "inblob is at most 64 bytes")
        elif path.name == "privlevel":
            if not self.privlevel_floor <= int(data) <= 3:
                raise OSError(errno.EINVAL, "privlevel out of range")
        else:
            raise PermissionError(errno.EACCES, f"{path.name} is read-only")
        self.writes.append((path.name, data))
        path.write_bytes(data)
        self._bump(path.parent)

    def read(self, path: Path) -> bytes:
        if path.name in ("inblob", "privlevel"):
            raise PermissionError(errno.EACCES, f"{path.name} is write-only")
        if path.name == "auxblob" and self.provider != "sev_guest":
            raise FileNotFoundError(errno.ENOENT, "auxblob is not visible for this provider")
        if path.name in ("outblob", "auxblob"):
            if path.name == "outblob" and self.racing_writes:
                self.racing_writes -= 1
                (path.parent / "inblob").write_bytes(b"someone else's nonce")
                self._bump(path.parent)
            path.write_bytes(self.outblob if path.name == "outblob" else self.auxblob)
        return path.read_bytes()

    @staticmethod
    def _bump(entry: Path) -> None:
        generation = entry / "generation"
        generation.write_text(f"{int(generation.read_text()) + 1}\n")


def tsm_producer(tmp_path: Path, fake: FakeTsm, **options: Any) -> ConfigfsTsmProducer:
    return ConfigfsTsmProducer(tmp_path, io=fake, **options)


def test_tdx_quote_through_configfs_tsm_verifies(tmp_path: Path) -> None:
    quote = (VECTORS / "intel-dcap/dcap-qvl/tdx_quote_v4.bin").read_bytes()
    fake = FakeTsm("tdx_guest", quote)
    producer = tsm_producer(tmp_path, fake)
    assert producer.tee_type == "dcap"
    attestation = producer.attest(REPORT_DATA)
    assert (attestation.tee_type, attestation.platform, attestation.evidence) == ("dcap", "tdx", quote)
    assert fake.writes == [("inblob", PADDED)]
    assert list(tmp_path.iterdir()) == []  # every report entry (the probe's too) is removed
    collateral = (VECTORS / "intel-dcap/dcap-qvl/tdx_quote_v4_collateral_2025-06.json").read_bytes()
    verdict = verify_at_time(
        "dcap", attestation.evidence, Endorsements(collateral=collateral), datetime(2025, 7, 1, tzinfo=UTC)
    )
    assert verdict.ok and verdict.platform == "tdx", verdict.error


def test_snp_report_and_host_certificates_through_configfs_tsm_verify(tmp_path: Path) -> None:
    table = snp_cert_table({ASK_GUID: SNP_ASK, VCEK_GUID: SNP_VCEK, ARK_GUID: SNP_ARK})
    fake = FakeTsm("sev_guest", SNP_REPORT, table)
    attestation = tsm_producer(tmp_path, fake, privlevel=0).attest(REPORT_DATA)
    assert (attestation.tee_type, attestation.platform) == ("sev-snp", "sev-snp")
    assert fake.writes == [("privlevel", b"0"), ("inblob", PADDED)]
    assert attestation.endorsements.vek == SNP_VCEK
    assert attestation.endorsements.chain is not None
    chain = x509.load_pem_x509_certificates(attestation.endorsements.chain)
    assert [c.public_bytes(serialization.Encoding.DER) for c in chain] == [SNP_ASK, SNP_ARK]
    verdict = verify_at_time(
        "sev-snp", attestation.evidence, attestation.endorsements, datetime(2025, 1, 1, tzinfo=UTC)
    )
    assert verdict.ok, verdict.error


def test_snp_without_host_certificates_leaves_endorsements_to_the_caller(tmp_path: Path) -> None:
    attestation = tsm_producer(tmp_path, FakeTsm("sev_guest", SNP_REPORT)).attest(REPORT_DATA)
    assert attestation.endorsements == Endorsements()


@pytest.mark.parametrize(("signing_key", "expected"), [(0, SNP_VCEK), (1, b"vlek")], ids=["vcek", "vlek"])
def test_snp_takes_the_key_the_report_names(tmp_path: Path, signing_key: int, expected: bytes) -> None:
    report = bytearray(SNP_REPORT)
    struct.pack_into("<I", report, 0x48, signing_key << 2)
    table = snp_cert_table({VCEK_GUID: SNP_VCEK, VLEK_GUID: b"vlek"})
    attestation = tsm_producer(tmp_path, FakeTsm("sev_guest", bytes(report), table)).attest(REPORT_DATA)
    assert attestation.endorsements.vek == expected and attestation.endorsements.chain is None


@pytest.mark.parametrize(
    "table",
    [
        struct.pack("<16sII", VCEK_GUID.bytes, 48, 4000) + bytes(24),  # points past the end
        struct.pack("<16sII", VCEK_GUID.bytes, 24, 8) + SNP_VCEK[:8],  # no terminator
        snp_cert_table({ASK_GUID: b"not DER", ARK_GUID: SNP_ARK}),
    ],
    ids=["out-of-bounds", "unterminated", "not-a-certificate"],
)
def test_malformed_snp_certificate_tables_are_refused(tmp_path: Path, table: bytes) -> None:
    with pytest.raises(ProducerError, match="certificate table"):
        tsm_producer(tmp_path, FakeTsm("sev_guest", SNP_REPORT, table)).attest(REPORT_DATA)


def test_arm_cca_token_through_configfs_tsm_verifies(tmp_path: Path) -> None:
    token = (VECTORS / "batch2/arm-cca/tf-m-tools/cca_token.cbor").read_bytes()
    attestation = tsm_producer(tmp_path, FakeTsm("arm_cca_guest", token)).attest(REPORT_DATA)
    assert (attestation.tee_type, attestation.platform) == ("arm-cca", "arm-cca")
    anchor = (VECTORS / "batch2/arm-cca/tf-m-tools/cca_platform.pub.pem").read_bytes()
    verdict = verify_at_time("arm-cca", attestation.evidence, Endorsements(anchor=anchor), datetime.now(UTC))
    assert verdict.ok, verdict.error


def test_a_racing_writer_makes_the_request_retry(tmp_path: Path) -> None:
    fake = FakeTsm("tdx_guest", b"quote")
    fake.racing_writes = 1
    assert tsm_producer(tmp_path, fake).attest(REPORT_DATA).evidence == b"quote"
    assert fake.entries_made == 2 and fake.racing_writes == 0
    assert list(tmp_path.iterdir()) == []


def test_a_writer_that_keeps_racing_is_an_error(tmp_path: Path) -> None:
    fake = FakeTsm("tdx_guest", b"quote")
    fake.racing_writes = 10
    with pytest.raises(ProducerError, match="concurrent writer"):
        tsm_producer(tmp_path, fake, attempts=3).attest(REPORT_DATA)
    assert fake.entries_made == 3 and list(tmp_path.iterdir()) == []


def test_configfs_tsm_refusals(tmp_path: Path) -> None:
    with pytest.raises(ProducerError, match="not supported"):
        tsm_producer(tmp_path, FakeTsm("tpm_guest", b"x")).attest(REPORT_DATA)
    with pytest.raises(ProducerError, match="privlevel"):
        tsm_producer(tmp_path, FakeTsm("sev_guest", SNP_REPORT, privlevel_floor=2), privlevel=1).attest(
            REPORT_DATA
        )
    with pytest.raises(ProducerError, match="create report entry"):
        ConfigfsTsmProducer(tmp_path / "absent", io=FakeTsm("tdx_guest", b"x")).attest(REPORT_DATA)
    with pytest.raises(ProducerError, match="empty report"):
        tsm_producer(tmp_path, FakeTsm("tdx_guest", b"")).attest(REPORT_DATA)
    with pytest.raises(ValueError, match="at most 64"):
        tsm_producer(tmp_path, FakeTsm("tdx_guest", b"x")).attest(bytes(65))
    with pytest.raises(ValueError, match="privlevel"):
        ConfigfsTsmProducer(tmp_path, privlevel=4)
    assert list(tmp_path.iterdir()) == []


def gramine_dir(tmp_path: Path, attestation_type: str, quote: bytes) -> Path:
    """/dev/attestation as Gramine presents it to an SGX enclave."""
    root = tmp_path / "attestation"
    root.mkdir()
    (root / "attestation_type").write_text(attestation_type)
    (root / "user_report_data").write_bytes(bytes(64))
    (root / "quote").write_bytes(quote)
    return root


def test_gramine_sgx_quote_verifies(tmp_path: Path) -> None:
    quote = (VECTORS / "intel-dcap/dcap-qvl/sgx_quote.bin").read_bytes()
    root = gramine_dir(tmp_path, "dcap", quote)
    producer = GramineSgxProducer(root)
    assert producer.get_evidence(REPORT_DATA) == quote
    assert (root / "user_report_data").read_bytes() == PADDED
    collateral = (VECTORS / "intel-dcap/dcap-qvl/sgx_quote_collateral_2025-06.json").read_bytes()
    verdict = verify_at_time(
        "dcap", quote, Endorsements(collateral=collateral), datetime(2025, 7, 1, tzinfo=UTC)
    )
    assert verdict.ok and verdict.platform == "sgx", verdict.error


def test_gramine_without_dcap_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProducerError, match="'epid'"):
        GramineSgxProducer(gramine_dir(tmp_path, "epid", b"q")).attest(REPORT_DATA)
    with pytest.raises(ProducerError, match="Gramine attestation"):
        GramineSgxProducer(tmp_path / "absent").attest(REPORT_DATA)


NITRO_DOCUMENT = base64.b64decode((VECTORS / "aws-nitro/blocky-nitrite/nitro_attestation.b64").read_text())


class FakeNsm:
    """The Nitro Secure Module's request/response protocol (serde CBOR, externally tagged)."""

    def __init__(self, response: object = None) -> None:
        self.response = response if response is not None else {"Attestation": {"document": NITRO_DOCUMENT}}
        self.requests: list[Any] = []

    def request(self, message: bytes) -> bytes:
        request = cbor2.loads(message)
        self.requests.append(request)
        if set(request) != {"Attestation"} or set(request["Attestation"]) != {
            "user_data",
            "nonce",
            "public_key",
        }:
            return cbor2.dumps({"Error": "InvalidOperation"})
        return cbor2.dumps(self.response)


def test_nitro_document_from_the_nsm_verifies() -> None:
    nsm = FakeNsm()
    attestation = NitroNsmProducer(nsm, public_key=b"pk").attest(REPORT_DATA, nonce=b"n")
    assert nsm.requests == [{"Attestation": {"user_data": PADDED, "nonce": b"n", "public_key": b"pk"}}]
    assert (attestation.tee_type, attestation.evidence) == ("nitro", NITRO_DOCUMENT)
    at = evidence_time(attestation.evidence)
    assert at is not None
    verdict = verify_at_time("nitro", attestation.evidence, Endorsements(), at)
    assert verdict.ok, verdict.error


@pytest.mark.parametrize(
    "response", [{"Error": "InternalError"}, {"Attestation": {}}, {"Attestation": "x"}, ["x"]], ids=str
)
def test_nsm_refusals_are_producer_errors(response: object) -> None:
    with pytest.raises(ProducerError, match="NSM"):
        NitroNsmProducer(FakeNsm(response)).attest(REPORT_DATA)


def test_the_nsm_device_transport_speaks_the_kernel_ioctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver reads the request through the iovec the message points at, writes the response
    into the response iovec and sets its length: emulate exactly that on the real ctypes buffers."""
    device = tmp_path / "nsm"
    device.write_bytes(b"")
    nsm = FakeNsm()
    calls: list[int] = []

    def kernel_ioctl(fd: int, request: int, argument: Any, mutate: bool) -> int:
        assert request == NSM_IOCTL_REQUEST == 0xC0200A00 and mutate
        calls.append(fd)
        message = memoryview(argument).cast("B")
        request_base, request_len, response_base, response_capacity = struct.unpack("<QQQQ", message)
        response = nsm.request(ctypes.string_at(request_base, request_len))
        assert len(response) <= response_capacity
        ctypes.memmove(response_base, response, len(response))
        struct.pack_into("<Q", message, 24, len(response))
        return 0

    monkeypatch.setattr(fcntl, "ioctl", kernel_ioctl)
    attestation = NitroNsmProducer(DevNsmTransport(device)).attest(REPORT_DATA)
    assert attestation.evidence == NITRO_DOCUMENT and len(calls) == 1
    with pytest.raises(ProducerError, match="NSM device"):
        DevNsmTransport(tmp_path / "absent").request(b"\xa0")


def test_sim_producer_presents_its_type_and_verifies() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    authority = SimAuthority.create(now=now - timedelta(days=1))
    platform = SimPlatform(authority.issue_hardware(now=now), presented_type="sev-snp", measurement=bytes(32))
    attestation = SimProducer(platform, clock=lambda: now).attest(REPORT_DATA)
    assert (attestation.tee_type, attestation.platform) == ("sim", "sev-snp")
    verdict = verify_at_time("sim", attestation.evidence, Endorsements(root=authority.cert_pem), now)
    assert verdict.ok and verdict.report_data == PADDED.hex(), verdict.error


def test_detection_finds_the_tee_present_and_sim_only_when_given(tmp_path: Path) -> None:
    def detect(sim: SimPlatform | None = None) -> object:
        return detect_producer(
            sim=sim,
            tsm_root=tmp_path / "tsm",
            gramine_root=tmp_path / "attestation",
            nsm_device=tmp_path / "nsm",
        )

    with pytest.raises(ProducerError, match="no TEE found"):
        detect()
    authority = SimAuthority.create(now=datetime.now(UTC))
    sim = SimPlatform(authority.issue_hardware(now=datetime.now(UTC)), measurement=bytes(32))
    assert isinstance(detect(sim), SimProducer)
    # a configfs-tsm directory without a TEE provider behind it is no TEE
    (tmp_path / "tsm").mkdir()
    assert isinstance(detect(sim), SimProducer)
    assert list((tmp_path / "tsm").iterdir()) == []
    (tmp_path / "nsm").write_bytes(b"")
    assert isinstance(detect(sim), NitroNsmProducer)
    gramine_dir(tmp_path, "dcap", b"q")
    assert isinstance(detect(sim), GramineSgxProducer)
