"""Evidence producers: ask the TEE this process runs in for evidence binding 64 bytes of report_data.

    producer = detect_producer()
    attestation = producer.attest(report_data)   # evidence + endorsements the platform hands out

- `ConfigfsTsmProducer`: Intel TDX, AMD SEV-SNP and Arm CCA guests, through the Linux configfs-tsm
  report interface (Documentation/ABI/testing/configfs-tsm-report).
- `GramineSgxProducer`: SGX enclaves under Gramine, through its /dev/attestation pseudo-files.
- `NitroNsmProducer`: AWS Nitro Enclaves, through the NSM device's ioctl.
- `SimProducer`: the simulated TEE of development networks.

Every producer zero-pads report_data to 64 bytes, as the kernel does for a short TDX or SNP inblob,
so the evidence of every type carries the same 64 bytes and the binding compares alike. Producers
never touch the network: collateral (Intel PCCS, AMD KDS) is fetched elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from umbra.tee._model import Endorsements
from umbra.tee._sim import SimPlatform

__all__ = [
    "DEFAULT_GRAMINE_ROOT",
    "DEFAULT_NSM_DEVICE",
    "DEFAULT_TSM_REPORT_ROOT",
    "NSM_IOCTL_REQUEST",
    "Attestation",
    "ConfigfsIO",
    "ConfigfsTsmProducer",
    "DevNsmTransport",
    "GramineSgxProducer",
    "NitroNsmProducer",
    "NsmTransport",
    "Producer",
    "ProducerError",
    "SimProducer",
    "detect_producer",
]

DEFAULT_TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
DEFAULT_GRAMINE_ROOT = Path("/dev/attestation")
DEFAULT_NSM_DEVICE = Path("/dev/nsm")

_REPORT_DATA_LEN = 64
_T = TypeVar("_T")


class ProducerError(RuntimeError):
    """The TEE could not produce evidence; the message says what the platform refused."""


@dataclass(frozen=True)
class Attestation:
    """Evidence as a verifier takes it: `tee_type` is the verifier type (`dcap`, `sev-snp`, ...),
    `platform` the hardware (`tdx`, `sgx`, ...). `endorsements` holds what the platform handed out
    with the evidence (an SNP guest's VCEK and ASK/ARK), never anything fetched."""

    tee_type: str
    platform: str
    evidence: bytes
    endorsements: Endorsements = field(default_factory=Endorsements)


class Producer(Protocol):
    """One TEE's evidence source. Subclasses implement `attest`; `get_evidence` comes with it."""

    @property
    def tee_type(self) -> str:
        """The verifier type of this producer's evidence."""
        ...

    def attest(self, report_data: bytes) -> Attestation:
        """Evidence binding `report_data` (at most 64 bytes), with the platform's endorsements."""
        ...

    def get_evidence(self, report_data: bytes) -> bytes:
        return self.attest(report_data).evidence


def _padded(report_data: bytes) -> bytes:
    if len(report_data) > _REPORT_DATA_LEN:
        raise ValueError(f"report_data is at most {_REPORT_DATA_LEN} bytes, got {len(report_data)}")
    return bytes(report_data).ljust(_REPORT_DATA_LEN, b"\0")


# ---------------------------------------------------------------------------------------------
# configfs-tsm (TDX, SEV-SNP, Arm CCA)


class ConfigfsIO(Protocol):
    """The file operations configfs-tsm is driven by. The default is the real file system."""

    def mkdir(self, path: Path) -> None: ...
    def rmdir(self, path: Path) -> None: ...
    def read(self, path: Path) -> bytes: ...
    def write(self, path: Path, data: bytes) -> None: ...


class _KernelConfigfs:
    """configfs itself: an attribute is read whole, and written whole in one write before close,
    which is when the kernel stores it."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)  # configfs removes the attribute files with the entry

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def write(self, path: Path, data: bytes) -> None:
        with path.open("wb", buffering=0) as attribute:
            attribute.write(data)


# configfs-tsm provider -> (verifier type, platform)
_TSM_PROVIDERS = {
    "tdx_guest": ("dcap", "tdx"),
    "sev_guest": ("sev-snp", "sev-snp"),
    "arm_cca_guest": ("arm-cca", "arm-cca"),
}
_PRIVLEVEL_MAX = 3  # TSM_REPORT_PRIVLEVEL_MAX: SEV-SNP's VMPL0..3

# GHCB specification 4.1.8.1: the SNP certificate table is a list of (GUID, offset, length)
# entries, offsets from the start of the table, ended by an all-zero entry.
_SNP_CERT_ENTRY = struct.Struct("<16sII")
_VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
_VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
_ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
_ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
# SEV-SNP ATTESTATION_REPORT: bits 4:2 of the 32-bit word at 0x48 say which key signed (0 VCEK, 1 VLEK).
_SNP_SIGNING_KEY_OFFSET = 0x48
_SNP_SIGNED_BY_VLEK = 1


class ConfigfsTsmProducer(Producer):
    """TDX, SEV-SNP or Arm CCA evidence from configfs-tsm under `root`.

    Each request uses its own report entry, and checks the entry's `generation` around the
    writes and reads: if another writer touched the entry in between, the outblob may answer
    their inblob, so the request is retried (up to `attempts` times).
    """

    def __init__(
        self,
        root: Path = DEFAULT_TSM_REPORT_ROOT,
        *,
        privlevel: int | None = None,
        attempts: int = 3,
        io: ConfigfsIO | None = None,
    ) -> None:
        if privlevel is not None and not 0 <= privlevel <= _PRIVLEVEL_MAX:
            raise ValueError(f"privlevel must be 0..{_PRIVLEVEL_MAX}, got {privlevel}")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._root = root
        self._privlevel = privlevel
        self._attempts = attempts
        self._io: ConfigfsIO = io if io is not None else _KernelConfigfs()
        self._provider: str | None = None

    @property
    def provider(self) -> str:
        """The configfs-tsm provider (`tdx_guest`, `sev_guest`, `arm_cca_guest`), probed once."""
        if self._provider is None:
            with self._entry() as entry:
                self._provider = self._read_provider(entry)
        return self._provider

    @property
    def tee_type(self) -> str:
        return _TSM_PROVIDERS[self.provider][0]

    def attest(self, report_data: bytes) -> Attestation:
        inblob = _padded(report_data)
        for _ in range(self._attempts):
            with self._entry() as entry:
                attestation = self._request(entry, inblob)
            if attestation is not None:
                return attestation
        raise ProducerError(
            f"configfs-tsm report kept changing under a concurrent writer; gave up after {self._attempts} attempts"
        )

    @contextlib.contextmanager
    def _entry(self) -> Iterator[Path]:
        entry = self._root / f"umbra-{os.getpid()}-{secrets.token_hex(6)}"
        self._call("create report entry", self._io.mkdir, entry)
        try:
            yield entry
        finally:
            self._call("remove report entry", self._io.rmdir, entry)

    def _request(self, entry: Path, inblob: bytes) -> Attestation | None:
        """One report, or None when a racing writer changed the entry while we used it."""
        provider = self._read_provider(entry)
        tee_type, platform = _TSM_PROVIDERS[provider]
        generation = self._generation(entry)
        writes = 0
        if self._privlevel is not None:
            self._call("write privlevel", self._io.write, entry / "privlevel", str(self._privlevel).encode())
            writes += 1
        self._call("write inblob", self._io.write, entry / "inblob", inblob)
        writes += 1
        outblob = self._call("read outblob", self._io.read, entry / "outblob")
        auxblob = (
            self._call("read auxblob", self._io.read, entry / "auxblob") if provider == "sev_guest" else b""
        )
        if self._generation(entry) != generation + writes:
            return None
        if not outblob:
            raise ProducerError(f"configfs-tsm provider {provider} returned an empty report")
        endorsements = _snp_endorsements(outblob, auxblob) if auxblob else Endorsements()
        return Attestation(tee_type, platform, outblob, endorsements)

    def _read_provider(self, entry: Path) -> str:
        provider = (
            self._call("read provider", self._io.read, entry / "provider").decode("ascii", "replace").strip()
        )
        if provider not in _TSM_PROVIDERS:
            raise ProducerError(
                f"configfs-tsm provider {provider!r} is not supported; known: {sorted(_TSM_PROVIDERS)}"
            )
        return provider

    def _generation(self, entry: Path) -> int:
        text = self._call("read generation", self._io.read, entry / "generation")
        try:
            return int(text.decode("ascii").strip())
        except ValueError:
            raise ProducerError(f"configfs-tsm generation is not a number: {text[:32]!r}") from None

    def _call(self, what: str, operation: Callable[..., _T], *args: Any) -> _T:
        try:
            return operation(*args)
        except OSError as exc:
            raise ProducerError(f"configfs-tsm at {self._root}: cannot {what}: {exc}") from None


def _snp_endorsements(report: bytes, cert_table: bytes) -> Endorsements:
    """The VCEK (or VLEK) and ASK/ARK a SEV-SNP host attached to the report, from the GHCB table."""
    certificates = _parse_snp_cert_table(cert_table)
    signing_key = None
    if len(report) >= _SNP_SIGNING_KEY_OFFSET + 4:
        flags = int.from_bytes(report[_SNP_SIGNING_KEY_OFFSET : _SNP_SIGNING_KEY_OFFSET + 4], "little")
        signing_key = (flags >> 2) & 0b111
    preferred = (_VLEK_GUID, _VCEK_GUID) if signing_key == _SNP_SIGNED_BY_VLEK else (_VCEK_GUID, _VLEK_GUID)
    vek = next((certificates[guid] for guid in preferred if guid in certificates), None)
    chain = None
    if _ASK_GUID in certificates and _ARK_GUID in certificates:
        chain = b"".join(_der_to_pem(certificates[guid]) for guid in (_ASK_GUID, _ARK_GUID))
    return Endorsements(vek=vek, chain=chain)


def _parse_snp_cert_table(table: bytes) -> dict[uuid.UUID, bytes]:
    certificates: dict[uuid.UUID, bytes] = {}
    for position in range(0, len(table), _SNP_CERT_ENTRY.size):
        if position + _SNP_CERT_ENTRY.size > len(table):
            break
        guid_bytes, offset, length = _SNP_CERT_ENTRY.unpack_from(table, position)
        if guid_bytes == bytes(16) and offset == 0 and length == 0:
            return certificates
        if length == 0 or offset + length > len(table):
            raise ProducerError(f"SEV-SNP certificate table entry at {position} points outside the table")
        certificates[uuid.UUID(bytes=guid_bytes)] = table[offset : offset + length]
    raise ProducerError("SEV-SNP certificate table has no terminating entry")


def _der_to_pem(der: bytes) -> bytes:
    try:
        return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    except ValueError as exc:
        raise ProducerError(f"SEV-SNP certificate table holds a certificate that is not DER: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Gramine (SGX)


class GramineSgxProducer(Producer):
    """SGX DCAP quotes from Gramine's /dev/attestation pseudo-files."""

    tee_type = "dcap"
    # The pseudo-files hold one report_data per process: a quote answers the last write, whoever
    # wrote it, so requests in one process take turns.
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, root: Path = DEFAULT_GRAMINE_ROOT) -> None:
        self._root = root

    def attest(self, report_data: bytes) -> Attestation:
        user_report_data = _padded(report_data)
        with self._lock:
            try:
                attestation_type = (self._root / "attestation_type").read_text("ascii").strip()
                if attestation_type != "dcap":
                    raise ProducerError(
                        f"Gramine attestation type is {attestation_type!r}; Umbra needs 'dcap' "
                        '(set sgx.remote_attestation = "dcap" in the manifest)'
                    )
                with (self._root / "user_report_data").open("wb", buffering=0) as file:
                    file.write(user_report_data)
                quote = (self._root / "quote").read_bytes()
            except (OSError, UnicodeDecodeError) as exc:
                raise ProducerError(f"Gramine attestation at {self._root}: {exc}") from None
        if not quote:
            raise ProducerError("Gramine returned an empty quote")
        return Attestation("dcap", "sgx", quote)


# ---------------------------------------------------------------------------------------------
# AWS Nitro Enclaves (NSM)


class NsmTransport(Protocol):
    """Carries one CBOR request to the Nitro Secure Module and returns its CBOR response."""

    def request(self, message: bytes) -> bytes: ...


class _IoVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _NsmMessage(ctypes.Structure):
    """`struct nsm_message { struct iovec request; struct iovec response; }` of the NSM driver."""

    _fields_ = (("request", _IoVec), ("response", _IoVec))


def _iowr(magic: int, number: int, size: int) -> int:
    """Linux `_IOWR`: direction read|write in bits 30-31, argument size in 16-29, magic, number."""
    return (3 << 30) | (size << 16) | (magic << 8) | number


NSM_IOCTL_REQUEST = _iowr(0x0A, 0, ctypes.sizeof(_NsmMessage))
_NSM_REQUEST_MAX = 0x1000
_NSM_RESPONSE_MAX = 0x3000


class DevNsmTransport:
    """The NSM device: one ioctl per request, the kernel writing the response into our buffer."""

    def __init__(self, device: Path = DEFAULT_NSM_DEVICE) -> None:
        self._device = device

    def request(self, message: bytes) -> bytes:
        if len(message) > _NSM_REQUEST_MAX:
            raise ProducerError(f"NSM request of {len(message)} bytes exceeds {_NSM_REQUEST_MAX}")
        request = ctypes.create_string_buffer(message, len(message))
        response = ctypes.create_string_buffer(_NSM_RESPONSE_MAX)
        call = _NsmMessage(
            _IoVec(ctypes.addressof(request), len(message)),
            _IoVec(ctypes.addressof(response), _NSM_RESPONSE_MAX),
        )
        try:
            fd = os.open(self._device, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, NSM_IOCTL_REQUEST, call, True)
            finally:
                os.close(fd)
        except OSError as exc:
            raise ProducerError(f"NSM device {self._device}: {exc}") from None
        if call.response.iov_len > _NSM_RESPONSE_MAX:
            raise ProducerError("NSM response overran its buffer")
        return response.raw[: call.response.iov_len]


class NitroNsmProducer(Producer):
    """Nitro attestation documents from the NSM: report_data travels as the document's user_data."""

    tee_type = "nitro"

    def __init__(self, transport: NsmTransport | None = None, *, public_key: bytes | None = None) -> None:
        self._transport: NsmTransport = transport if transport is not None else DevNsmTransport()
        self._public_key = public_key

    def attest(self, report_data: bytes, *, nonce: bytes | None = None) -> Attestation:
        request = {
            "Attestation": {"user_data": _padded(report_data), "nonce": nonce, "public_key": self._public_key}
        }
        raw = self._transport.request(cbor2.dumps(request, canonical=True))
        try:
            response = cbor2.loads(raw)
        except Exception as exc:  # cbor2 raises many types on malformed input
            raise ProducerError(f"NSM response is not CBOR: {type(exc).__name__}: {exc}") from None
        if isinstance(response, dict) and "Error" in response:
            raise ProducerError(f"NSM refused the attestation request: {response['Error']}")
        answer = response.get("Attestation") if isinstance(response, dict) else None
        document = answer.get("document") if isinstance(answer, dict) else None
        if not isinstance(document, bytes) or not document:
            raise ProducerError(f"NSM response carries no attestation document: {raw[:64].hex()}")
        return Attestation("nitro", "nitro", document)


# ---------------------------------------------------------------------------------------------
# Simulated TEE and detection


class SimProducer(Producer):
    """Evidence from a simulated CPU (development networks only; the policy refuses it elsewhere)."""

    tee_type = "sim"

    def __init__(
        self, platform: SimPlatform, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self._platform = platform
        self._clock = clock

    def attest(self, report_data: bytes) -> Attestation:
        evidence = self._platform.evidence(_padded(report_data), at=self._clock())
        return Attestation("sim", self._platform.presented_type, evidence)


def detect_producer(
    *,
    sim: SimPlatform | None = None,
    tsm_root: Path = DEFAULT_TSM_REPORT_ROOT,
    gramine_root: Path = DEFAULT_GRAMINE_ROOT,
    nsm_device: Path = DEFAULT_NSM_DEVICE,
) -> Producer:
    """The producer of the TEE this process runs in; the simulated one only if `sim` is given
    and no hardware TEE is present."""
    if _gramine_attestation_type(gramine_root) == "dcap":
        return GramineSgxProducer(gramine_root)
    if nsm_device.exists():
        return NitroNsmProducer(DevNsmTransport(nsm_device))
    if tsm_root.is_dir():
        producer = ConfigfsTsmProducer(tsm_root)
        with contextlib.suppress(ProducerError):
            _ = producer.provider  # a configfs-tsm without a TEE provider refuses new entries
            return producer
    if sim is not None:
        return SimProducer(sim)
    raise ProducerError(
        f"no TEE found (looked for {gramine_root}, {nsm_device} and {tsm_root}); "
        "development networks use the simulated TEE"
    )


def _gramine_attestation_type(root: Path) -> str | None:
    try:
        return (root / "attestation_type").read_text("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
