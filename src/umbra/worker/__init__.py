"""The untrusted host of a TEE worker: follows the chain, feeds its enclave core, registers and
heartbeats, runs assigned jobs, and serves sealed queries over HTTP (umbra.worker.api)."""

from umbra.worker.host import Host, HostConfig, HostError, RegistrationRefused

__all__ = ["Host", "HostConfig", "HostError", "RegistrationRefused"]
