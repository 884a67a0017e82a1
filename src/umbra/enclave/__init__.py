"""The trusted core of a worker: key custody, sealing, chain following, confidential execution.

    transport = PipeTransport(["--sealed-dir", "data/core", "--tee", "sim", "--machine-file", ...])
    transport.call({"op": "init", "genesis": genesis_bytes, "role": "worker"})

The core runs in its own OS process (`python -m umbra.enclave`) behind a `CoreTransport`; the
untrusted host (umbra.worker) only ever sees public data and ciphertext. `InMemoryTransport`
runs a `Core` in-process for tests. Ops and formats: umbra.enclave.core, docs/protocol.md.
"""

from umbra.enclave.core import Core
from umbra.enclave.platform import HardwareTee, Platform, PlatformError, SimTee, detect_hardware, hardware_tee
from umbra.enclave.sealing import SealedStorageError, SealedStore
from umbra.enclave.transport import CoreError, CoreTransport, InMemoryTransport, PipeTransport

__all__ = [
    "Core",
    "CoreError",
    "CoreTransport",
    "HardwareTee",
    "InMemoryTransport",
    "PipeTransport",
    "Platform",
    "PlatformError",
    "SealedStorageError",
    "SealedStore",
    "SimTee",
    "detect_hardware",
    "hardware_tee",
]
