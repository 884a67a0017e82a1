"""The common evidence model every TEE verifier speaks.

A verifier turns raw evidence plus endorsements (collateral, certificate chains, anchors) into a
`VerifiedEvidence` at a given time, or raises `AttestationError` naming the step that failed.
The facade `verify_at_time` adds the checks that are the same for every type (debug, nonce) and
never lets an exception escape: every outcome is a `Verdict`, including garbage input.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

__all__ = [
    "TEE_TYPES",
    "AttestationError",
    "Endorsements",
    "Step",
    "Verdict",
    "VerifiedEvidence",
    "Verifier",
]

# The `--type` names of INTERFACES.md. `dcap` covers both SGX and TDX quotes.
TEE_TYPES = ("dcap", "sev-snp", "nitro", "nvidia-gpu", "arm-cca", "psa", "sim")


class Step(enum.StrEnum):
    """The verification step that refused the evidence. Stable strings: they appear in verdicts."""

    PARSE = "parse"
    CHAIN = "chain"
    SIGNATURE = "signature"
    COLLATERAL = "collateral"
    COLLATERAL_EXPIRED = "collateral-expired"
    COLLATERAL_NOT_YET_VALID = "collateral-not-yet-valid"
    FMSPC_MISMATCH = "fmspc-mismatch"
    TCB = "tcb"
    TCB_REVOKED = "tcb-revoked"
    DEBUG = "debug"
    NONCE = "nonce"
    BINDING = "binding"
    MEASUREMENT = "measurement"
    ADVISORY = "advisory"
    FRESHNESS = "freshness"
    POLICY = "policy"
    UNSUPPORTED = "unsupported"


class AttestationError(Exception):
    """Evidence refused at `step`. `debug` carries the debug flag when the evidence parsed."""

    def __init__(self, step: Step, message: str, *, debug: bool | None = None) -> None:
        super().__init__(f"{step.value}: {message}")
        self.step = step
        self.message = message
        self.debug = debug


@dataclass(frozen=True)
class Endorsements:
    """Everything besides the evidence itself that verification may use. All optional.

    `root` replaces the pinned vendor root (tests). `anchor` is the verification key for arm-cca
    (CPAK) and psa (IAK): PEM, JWK, a trust-anchor list, or a raw HMAC key.
    """

    collateral: bytes | None = None
    vek: bytes | None = None
    chain: bytes | None = None
    root: bytes | None = None
    anchor: bytes | None = None


@dataclass(frozen=True)
class VerifiedEvidence:
    """What a verifier established about one piece of evidence.

    `tee_type` is the verifier type (`dcap`, `sev-snp`, ...); `platform` the concrete hardware
    (`sgx`, `tdx`, `sev-snp`, ...). `measurements` maps names (`mrenclave`, `mrtd`, `rtmr0`,
    `measurement`, `pcr0`, ...) to lowercase hex without 0x. `nonce` is whatever the evidence
    carries as its freshness challenge, if anything; the facade compares it to an expected nonce.
    """

    tee_type: str
    platform: str
    measurements: Mapping[str, str]
    report_data: bytes
    debug: bool
    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = ()
    issued_at: datetime | None = None
    nonce: bytes | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """The verdict object of `umbra attest verify`, also returned by the library facade."""

    ok: bool
    type: str
    status: str | None
    advisory_ids: list[str]
    debug: bool | None
    measurements: dict[str, str]
    report_data: str | None
    error: str | None
    step: str | None = None
    platform: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    evidence: VerifiedEvidence | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The fixed fields of INTERFACES.md, plus `step`, `platform` and `claims`."""
        return {
            "ok": self.ok,
            "type": self.type,
            "status": self.status,
            "advisory_ids": self.advisory_ids,
            "debug": self.debug,
            "measurements": self.measurements,
            "report_data": self.report_data,
            "error": self.error,
            "step": self.step,
            "platform": self.platform,
            "claims": self.claims,
        }


class Verifier(Protocol):
    """One TEE type. Implementations are pure functions of their inputs and `at`."""

    tee_type: ClassVar[str]

    def verify_at_time(self, evidence: bytes, endorsements: Endorsements, at: datetime) -> VerifiedEvidence:
        """Verify chain, signatures, collateral and TCB at `at`; raise AttestationError if not.

        Must not judge debug or nonce: the facade does, uniformly. Must parse by structure length
        (trailing bytes after a well-formed structure are ignored, not fatal) and must never let a
        non-AttestationError escape on hostile input (the facade still guards, as a backstop).
        """
        ...


def utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
