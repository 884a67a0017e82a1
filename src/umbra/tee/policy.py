"""Attestation policy: what a network accepts beyond "the vendor signed it".

A verifier establishes what evidence says; a `Policy` decides whether that is good enough: the
TEE class and its measurement are on the allowlist, the TCB status and advisories are acceptable,
debug is off, the evidence is fresh, its report_data binds the expected keys, and simulated
evidence only where the network allows it. The chain keeps one in genesis and the council changes
it, so it round-trips through plain dicts (`to_dict`/`from_dict`) that encode as CBOR and JSON.

    policy.check(verdict, expected_report_data=report_data_binding(**fields), now=block_time)
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Collection, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

import cbor2

from umbra.tee._model import AttestationError, Step, Verdict, VerifiedEvidence, utc

__all__ = [
    "DEFAULT_MEASUREMENT_KEYS",
    "DEFAULT_TCB_STATUSES",
    "MEASUREMENT_CLASSES",
    "Policy",
    "PolicyError",
    "measurement_class",
    "report_data_binding",
]

# Measurement class -> which measurement(s) the allowlist is compared against: a name from
# `VerifiedEvidence.measurements`, or a glob whose every match must be allowed (PSA's software
# components `sw:<type>`/`sw#<index>`, a GPU's measurement blocks).
DEFAULT_MEASUREMENT_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "dcap-sgx": "mrenclave",
        "dcap-tdx": "mrtd",
        "sev-snp": "measurement",
        "nitro": "pcr0",
        "nvidia-gpu": "*",
        "arm-cca": "rim",
        "psa": "sw*",
        "sim": "measurement",
    }
)
MEASUREMENT_CLASSES = tuple(DEFAULT_MEASUREMENT_KEYS)

# Intel's TCB statuses. Revoked is never acceptable, so it cannot even be configured.
_TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
    }
)
_REVOKED = "Revoked"
DEFAULT_TCB_STATUSES = frozenset(
    {"UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"}
)
_REPORT_DATA_LEN = 64
_POLICY_VERSION = 1


class PolicyError(ValueError):
    """A policy document that is malformed or asks for something never acceptable."""


def measurement_class(evidence: VerifiedEvidence) -> str:
    """The allowlist class of evidence: its TEE type, split by platform for dcap (SGX vs TDX).

    Simulated evidence is class `sim` whatever type it presents, so it never matches a real
    platform's allowlist.
    """
    if evidence.tee_type == "dcap":
        return f"dcap-{evidence.platform}"
    return evidence.tee_type


def report_data_binding(**fields: Any) -> bytes:
    """SHA-256 of the deterministic CBOR of `fields`, zero-padded to the 64 bytes of report_data.

    The caller chooses the fields (Umbra binds chain_id, genesis_hash, identity_pk, ecdh_pk,
    tee_type and runtime_version), so the evidence vouches for exactly those keys on that chain.
    """
    return hashlib.sha256(cbor2.dumps(fields, canonical=True)).digest().ljust(_REPORT_DATA_LEN, b"\0")


@dataclass(frozen=True)
class Policy:
    """What a network accepts. Construct with keyword arguments; every field has a safe default.

    `measurements` maps a measurement class (see `MEASUREMENT_CLASSES`) to its allowed values
    (hex; stored lowercase, as frozensets); a class without entries is not accepted at all. `measurement_keys` overrides
    which measurement each class compares (`{"dcap-sgx": "mrsigner"}`, say). Ages are seconds.
    """

    measurements: Mapping[str, Collection[str]] = field(default_factory=dict)
    measurement_keys: Mapping[str, str] = field(default_factory=dict)
    accepted_tcb_statuses: AbstractSet[str] = DEFAULT_TCB_STATUSES
    denied_advisories: AbstractSet[str] = frozenset()
    allow_debug: bool = False
    allow_sim: bool = False
    max_evidence_age_s: int = 600
    max_clock_skew_s: int = 60

    def __post_init__(self) -> None:
        measurements = {
            _known_class(name, "measurements"): frozenset(
                _normalize_hex(value) for value in _strings(values, name)
            )
            for name, values in self.measurements.items()
        }
        keys = dict(DEFAULT_MEASUREMENT_KEYS)
        for name, key in self.measurement_keys.items():
            if not isinstance(key, str) or not key:
                raise PolicyError(f"measurement key of {name!r} must be a non-empty string")
            keys[_known_class(name, "measurement_keys")] = key
        statuses = frozenset(_strings(self.accepted_tcb_statuses, "accepted_tcb_statuses"))
        if _REVOKED in statuses:
            raise PolicyError("a Revoked TCB is never acceptable")
        if unknown := sorted(statuses - _TCB_STATUSES):
            raise PolicyError(f"unknown TCB status(es) {unknown}; known: {sorted(_TCB_STATUSES)}")
        for name in ("allow_debug", "allow_sim"):
            if type(getattr(self, name)) is not bool:
                raise PolicyError(f"{name} must be a boolean")
        for name in ("max_evidence_age_s", "max_clock_skew_s"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise PolicyError(f"{name} must be a non-negative integer")
        object.__setattr__(self, "measurements", MappingProxyType(measurements))
        object.__setattr__(self, "measurement_keys", MappingProxyType(keys))
        object.__setattr__(self, "accepted_tcb_statuses", statuses)
        object.__setattr__(
            self, "denied_advisories", frozenset(_strings(self.denied_advisories, "denied_advisories"))
        )

    def check(
        self, subject: Verdict | VerifiedEvidence, *, expected_report_data: bytes | None, now: datetime
    ) -> None:
        """Raise `AttestationError` naming the step unless the policy accepts `subject` at `now`.

        `subject` is a facade verdict (a refused one is refused again, with its own step) or what a
        verifier established. `expected_report_data`, if given, must be what the evidence binds.
        """
        evidence = _evidence_of(subject)
        debug = evidence.debug
        cls = measurement_class(evidence)
        if (cls == "sim" or evidence.claims.get("simulated") is True) and not self.allow_sim:
            raise AttestationError(
                Step.POLICY, "simulated TEE evidence is not accepted on this network", debug=debug
            )
        if debug and (not self.allow_debug or evidence.tee_type == "dcap"):
            raise AttestationError(Step.DEBUG, "evidence was generated in debug mode", debug=debug)
        self._check_tcb(evidence)
        if denied := sorted(set(evidence.advisory_ids) & self.denied_advisories):
            raise AttestationError(
                Step.ADVISORY, f"platform is affected by denied advisories {denied}", debug=debug
            )
        self._check_measurement(evidence, cls)
        if expected_report_data is not None and not _binds(evidence.report_data, expected_report_data):
            raise AttestationError(
                Step.BINDING,
                f"report_data {evidence.report_data.hex()} does not bind the expected {expected_report_data.hex()}",
                debug=debug,
            )
        self._check_freshness(evidence, utc(now))

    def to_dict(self) -> dict[str, Any]:
        """Plain, deterministic data (sorted lists): equal policies give equal CBOR."""
        return {
            "version": _POLICY_VERSION,
            "measurements": {name: sorted(values) for name, values in sorted(self.measurements.items())},
            "measurement_keys": dict(sorted(self.measurement_keys.items())),
            "accepted_tcb_statuses": sorted(self.accepted_tcb_statuses),
            "denied_advisories": sorted(self.denied_advisories),
            "allow_debug": self.allow_debug,
            "allow_sim": self.allow_sim,
            "max_evidence_age_s": self.max_evidence_age_s,
            "max_clock_skew_s": self.max_clock_skew_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """The policy of `to_dict` output. Absent fields take their defaults; unknown ones are refused."""
        if not isinstance(data, Mapping):
            raise PolicyError("a policy must be a map")
        fields = dict(data)
        version = fields.pop("version", _POLICY_VERSION)
        if version != _POLICY_VERSION:
            raise PolicyError(f"unsupported policy version {version!r}")
        if unknown := sorted(set(fields) - _FIELDS):
            raise PolicyError(f"unknown policy field(s) {unknown}")
        for name in ("measurements", "measurement_keys"):
            if not isinstance(fields.get(name, {}), Mapping):
                raise PolicyError(f"{name} must be a map")
        for name in ("accepted_tcb_statuses", "denied_advisories"):
            if name in fields:
                fields[name] = frozenset(_strings(fields[name], name))
        return cls(**fields)

    def _check_tcb(self, evidence: VerifiedEvidence) -> None:
        status = evidence.tcb_status
        if status is None:
            return  # only dcap reports a TCB status; other types encode TCB in what they measure
        if status == _REVOKED:
            raise AttestationError(Step.TCB_REVOKED, "the platform TCB is Revoked", debug=evidence.debug)
        if status not in self.accepted_tcb_statuses:
            raise AttestationError(
                Step.TCB,
                f"TCB status {status} is not accepted (accepted: {', '.join(sorted(self.accepted_tcb_statuses))})",
                debug=evidence.debug,
            )

    def _check_measurement(self, evidence: VerifiedEvidence, cls: str) -> None:
        allowed = self.measurements.get(cls, frozenset())
        if not allowed:
            raise AttestationError(Step.MEASUREMENT, f"no {cls} measurement is allowed", debug=evidence.debug)
        pattern = self.measurement_keys.get(cls, "")
        names = sorted(name for name in evidence.measurements if fnmatch.fnmatchcase(name, pattern))
        if not names:
            raise AttestationError(
                Step.MEASUREMENT,
                f"evidence carries no measurement matching {pattern!r}",
                debug=evidence.debug,
            )
        for name in names:
            value = evidence.measurements[name].lower()
            if value not in allowed:
                raise AttestationError(
                    Step.MEASUREMENT, f"{cls} {name} {value} is not on the allowlist", debug=evidence.debug
                )

    def _check_freshness(self, evidence: VerifiedEvidence, now: datetime) -> None:
        if evidence.issued_at is None:
            return  # no timestamp in this evidence: freshness rests on the report_data binding
        issued_at = utc(evidence.issued_at)
        if issued_at - now > timedelta(seconds=self.max_clock_skew_s):
            raise AttestationError(
                Step.FRESHNESS,
                f"evidence is dated {issued_at.isoformat()}, in the future of {now.isoformat()}",
                debug=evidence.debug,
            )
        age = now - issued_at
        if age > timedelta(seconds=self.max_evidence_age_s):
            raise AttestationError(
                Step.FRESHNESS,
                f"evidence is {int(age.total_seconds())} s old; at most {self.max_evidence_age_s} s is accepted",
                debug=evidence.debug,
            )


_FIELDS = frozenset(Policy.__dataclass_fields__)


def _evidence_of(subject: Verdict | VerifiedEvidence) -> VerifiedEvidence:
    if isinstance(subject, VerifiedEvidence):
        return subject
    if not subject.ok:
        step = next((step for step in Step if step.value == subject.step), Step.POLICY)
        message = (subject.error or "evidence was refused").removeprefix(f"{step.value}: ")
        raise AttestationError(step, message, debug=subject.debug)
    if subject.evidence is None:
        raise AttestationError(Step.POLICY, "the verdict carries no verified evidence to judge")
    return subject.evidence


def _binds(reported: bytes, expected: bytes) -> bool:
    """Whether report_data carries `expected`, up to zero padding of the shorter one.

    A 32- or 48-byte challenge field (PSA, CCA, GPU nonces) carries a binding's leading bytes
    when the rest of the 64-byte binding is zeros, as `report_data_binding` makes it.
    """
    shorter, longer = sorted((bytes(reported), bytes(expected)), key=len)
    return bool(shorter) and longer == shorter.ljust(len(longer), b"\0")


def _known_class(name: object, where: str) -> str:
    if name not in DEFAULT_MEASUREMENT_KEYS:
        raise PolicyError(
            f"unknown measurement class {name!r} in {where}; known: {', '.join(MEASUREMENT_CLASSES)}"
        )
    return str(name)


def _strings(values: object, where: str) -> Iterable[str]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise PolicyError(f"{where} must be a list of strings")
    items = list(values)
    if not all(isinstance(item, str) for item in items):
        raise PolicyError(f"{where} must be a list of strings")
    return items


def _normalize_hex(value: str) -> str:
    body = value.lower().removeprefix("0x")
    try:
        bytes.fromhex(body)
    except ValueError:
        raise PolicyError(f"measurement {value!r} is not hex") from None
    if not body:
        raise PolicyError("a measurement must not be empty")
    return body
