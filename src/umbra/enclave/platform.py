"""What the enclave core needs from the TEE it runs in: evidence, and a key to seal with.

    platform = SimTee.for_machine(machine_file, sim_root_file, presented_type="sgx")
    attestation = platform.attest(report_data)      # evidence + endorsements for register_worker
    key = platform.seal_key()                        # None: this TEE has no sealing primitive

`SimTee` is the simulated CPU of development networks (umbra.tee._sim). `HardwareTee` wraps the
evidence producers of umbra.tee.producers (configfs-tsm TDX/SEV-SNP/CCA, Gramine SGX, Nitro NSM)
and pairs each with its platform's sealing primitive where one exists: Gramine's MRENCLAVE key,
and SEV-SNP's firmware-derived key bound to the launch measurement. TDX, CCA and Nitro have no
sealing key a guest can ask for, so a core there keeps its secrets in memory only: a restarted
worker registers as a new identity and receives the keys again (docs/protocol.md allows exactly
this for a worker whose sealed keys are lost).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from umbra import crypto
from umbra.tee._sim import PRESENTED_TYPES, SimAuthority, SimHardware, SimPlatform
from umbra.tee.producers import (
    DEFAULT_GRAMINE_ROOT,
    Attestation,
    ConfigfsTsmProducer,
    GramineSgxProducer,
    NitroNsmProducer,
    Producer,
    ProducerError,
    SimProducer,
    detect_producer,
)

__all__ = [
    "GramineSealKey",
    "HardwareTee",
    "Platform",
    "PlatformError",
    "SealKeySource",
    "SevGuestSealKey",
    "SimTee",
    "detect_hardware",
    "hardware_tee",
]

_SEAL_LABEL = "umbra/enclave/seal-key"


class PlatformError(RuntimeError):
    """The TEE cannot do what the core asked (no device, refused request); the message says why."""


class Platform(Protocol):
    """One TEE as the core sees it."""

    @property
    def tee_type(self) -> str:
        """The verifier type of this platform's evidence (`sim`, `dcap`, `sev-snp`, `nitro`, ...)."""
        ...

    @property
    def platform(self) -> str:
        """The hardware presented (`sim`, `sgx`, `tdx`, `sev-snp`, `nitro`, ...)."""
        ...

    @property
    def measurement(self) -> bytes | None:
        """This code's measurement where the core can know it locally (sim), else None."""
        ...

    def attest(self, report_data: bytes) -> Attestation:
        """Evidence binding `report_data` (64 bytes), with the endorsements the platform hands out."""
        ...

    def seal_key(self) -> bytes | None:
        """A 32-byte key only this code on this machine derives, or None if the TEE has none."""
        ...


# ---- sim -------------------------------------------------------------------------------------------


class SimTee:
    """The simulated TEE: one simulated CPU (persisted per machine) running this code tree."""

    def __init__(
        self,
        hardware: SimHardware,
        *,
        presented_type: str = "sim",
        measurement: bytes | None = None,
        debug: bool = False,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sim = SimPlatform(hardware, presented_type=presented_type, measurement=measurement, debug=debug)
        self._producer = SimProducer(self._sim, clock=clock)

    @classmethod
    def for_machine(
        cls,
        machine_file: Path,
        sim_root_file: Path | None,
        *,
        presented_type: str = "sim",
        measurement: bytes | None = None,
        debug: bool = False,
    ) -> SimTee:
        """The CPU saved in `machine_file`; a new one is issued by the dev root in `sim_root_file`
        the first time (only then is the root's private key needed)."""
        if presented_type not in PRESENTED_TYPES:
            raise PlatformError(
                f"sim cannot present {presented_type!r}; choose one of {', '.join(PRESENTED_TYPES)}"
            )
        try:
            if machine_file.exists():
                hardware = SimHardware.load(machine_file)
            else:
                if sim_root_file is None:
                    raise PlatformError(f"no simulated CPU at {machine_file} and no --sim-root to issue one")
                authority = SimAuthority.load(sim_root_file)
                machine_file.parent.mkdir(parents=True, exist_ok=True)
                hardware = SimHardware.load_or_issue(machine_file, authority, now=datetime.now(UTC))
        except (OSError, ValueError) as exc:
            raise PlatformError(f"cannot set up the simulated CPU: {exc}") from None
        return cls(hardware, presented_type=presented_type, measurement=measurement, debug=debug)

    @property
    def tee_type(self) -> str:
        return "sim"

    @property
    def platform(self) -> str:
        return self._sim.presented_type

    @property
    def measurement(self) -> bytes | None:
        return self._sim.measurement

    def attest(self, report_data: bytes) -> Attestation:
        return self._producer.attest(report_data)

    def seal_key(self) -> bytes | None:
        return self._sim.seal_key()


# ---- hardware seal keys ----------------------------------------------------------------------------


class SealKeySource(Protocol):
    def seal_key(self) -> bytes: ...


class GramineSealKey:
    """SGX sealing under Gramine: the MRENCLAVE-bound key at /dev/attestation/keys/_sgx_mrenclave
    (16 bytes; widened by HKDF), so another enclave build or another CPU cannot unseal."""

    def __init__(self, root: Path = DEFAULT_GRAMINE_ROOT) -> None:
        self._path = root / "keys" / "_sgx_mrenclave"

    def seal_key(self) -> bytes:
        try:
            raw = self._path.read_bytes()
        except OSError as exc:
            raise PlatformError(f"Gramine sealing key at {self._path}: {exc}") from None
        if len(raw) != 16:
            raise PlatformError(f"Gramine sealing key at {self._path} is {len(raw)} bytes, expected 16")
        return crypto.derive_key(raw, _SEAL_LABEL, b"sgx-mrenclave")


class _SnpDerivedKeyRequest(ctypes.Structure):
    """`struct snp_derived_key_req` of linux/sev-guest.h."""

    _fields_ = (
        ("root_key_select", ctypes.c_uint32),
        ("rsvd", ctypes.c_uint32),
        ("guest_field_select", ctypes.c_uint64),
        ("vmpl", ctypes.c_uint32),
        ("guest_svn", ctypes.c_uint32),
        ("tcb_version", ctypes.c_uint64),
    )


class _SnpDerivedKeyResponse(ctypes.Structure):
    """`struct snp_derived_key_resp`: the firmware's MSG_KEY_RSP (status, reserved, 32-byte key)."""

    _fields_ = (("data", ctypes.c_uint8 * 64),)


class _SnpGuestRequest(ctypes.Structure):
    """`struct snp_guest_request_ioctl`: message version, request and response pointers, exitinfo2."""

    _fields_ = (
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    )


def _iowr(magic: int, number: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (magic << 8) | number


SNP_GET_DERIVED_KEY = _iowr(ord("S"), 0x1, ctypes.sizeof(_SnpGuestRequest))
# GUEST_FIELD_SELECT (SEV-SNP ABI, MSG_KEY_REQ): mix the guest policy (bit 0) and the launch
# measurement (bit 3) into the key, like SGX's MRENCLAVE policy: changed code derives another key.
_SNP_FIELDS_POLICY_AND_MEASUREMENT = (1 << 0) | (1 << 3)
_SNP_KEY_OFFSET = 0x20

Ioctl = Callable[[int, int, Any], Any]


class SevGuestSealKey:
    """SEV-SNP sealing: SNP_GET_DERIVED_KEY on /dev/sev-guest, rooted in the chip-unique VCEK and
    bound to the guest policy and launch measurement."""

    def __init__(
        self, device: Path = Path("/dev/sev-guest"), *, ioctl: Ioctl | None = None, vmpl: int = 0
    ) -> None:
        self._device = device
        self._ioctl: Ioctl = ioctl if ioctl is not None else _kernel_ioctl
        self._vmpl = vmpl

    def seal_key(self) -> bytes:
        request = _SnpDerivedKeyRequest(
            root_key_select=0, rsvd=0, guest_field_select=_SNP_FIELDS_POLICY_AND_MEASUREMENT, vmpl=self._vmpl
        )
        response = _SnpDerivedKeyResponse()
        message = _SnpGuestRequest(
            msg_version=1,
            req_data=ctypes.addressof(request),
            resp_data=ctypes.addressof(response),
            exitinfo2=0,
        )
        try:
            fd = os.open(self._device, os.O_RDWR | os.O_CLOEXEC)
            try:
                self._ioctl(fd, SNP_GET_DERIVED_KEY, message)
            finally:
                os.close(fd)
        except OSError as exc:
            raise PlatformError(f"SEV-SNP derived key from {self._device}: {exc}") from None
        data = bytes(response.data)
        status = int.from_bytes(data[:4], "little")
        if status != 0 or message.exitinfo2 != 0:
            raise PlatformError(
                f"SEV-SNP firmware refused the key request (status {status}, exitinfo2 {message.exitinfo2:#x})"
            )
        return crypto.derive_key(data[_SNP_KEY_OFFSET : _SNP_KEY_OFFSET + 32], _SEAL_LABEL, b"sev-snp-vcek")


def _kernel_ioctl(fd: int, request: int, argument: Any) -> Any:
    return fcntl.ioctl(fd, request, argument, True)


# ---- hardware --------------------------------------------------------------------------------------


class HardwareTee:
    """A real TEE: one of umbra.tee.producers' producers, and its seal key source if it has one."""

    def __init__(self, producer: Producer, sealer: SealKeySource | None, *, platform: str) -> None:
        self._producer = producer
        self._sealer = sealer
        self._platform = platform

    @property
    def tee_type(self) -> str:
        return self._producer.tee_type

    @property
    def platform(self) -> str:
        return self._platform

    @property
    def measurement(self) -> bytes | None:
        return None  # only the verifier, reading the evidence, learns it

    def attest(self, report_data: bytes) -> Attestation:
        try:
            return self._producer.attest(report_data)
        except (ProducerError, ValueError) as exc:
            raise PlatformError(str(exc)) from None

    def seal_key(self) -> bytes | None:
        return None if self._sealer is None else self._sealer.seal_key()


def hardware_tee(
    producer: Producer, *, gramine_root: Path = DEFAULT_GRAMINE_ROOT, sev_guest: Path | None = None
) -> HardwareTee:
    """Pair a producer with its platform's sealing primitive."""
    if isinstance(producer, GramineSgxProducer):
        return HardwareTee(producer, GramineSealKey(gramine_root), platform="sgx")
    if isinstance(producer, NitroNsmProducer):
        return HardwareTee(producer, None, platform="nitro")
    if isinstance(producer, ConfigfsTsmProducer):
        try:
            provider = producer.provider
        except ProducerError as exc:
            raise PlatformError(str(exc)) from None
        if provider == "sev_guest":
            return HardwareTee(
                producer, SevGuestSealKey(sev_guest or Path("/dev/sev-guest")), platform="sev-snp"
            )
        return HardwareTee(
            producer, None, platform={"tdx_guest": "tdx", "arm_cca_guest": "arm-cca"}.get(provider, provider)
        )
    raise PlatformError(f"no hardware adapter for producer {type(producer).__name__}")


def detect_hardware() -> HardwareTee:
    """The hardware TEE this process runs in (never the simulated one)."""
    try:
        return hardware_tee(detect_producer())
    except ProducerError as exc:
        raise PlatformError(str(exc)) from None
