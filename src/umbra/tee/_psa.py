"""PSA attestation tokens (RFC 9783 and its PSA_IOT_PROFILE_1 predecessor), and the PSA claims the
Arm CCA platform token shares with them.

A token is a COSE_Sign1 (ES256/ES384/ES512) under the Initial Attestation Key given as the anchor,
or a COSE_Mac0 (HMAC) under a raw symmetric key. The claims are read in whichever key layout the
token uses: the legacy one (-75000...-75010) or the IANA-registered one (265, 10, 256, 2394...).
The profile is reported, not judged: tf-m-tools' "http://example.com" token is as readable as
"PSA_IOT_PROFILE_1" or "http://arm.com/psa/2.0.0".

Reported values:
- `nonce` is the challenge claim; `report_data` is the challenge zero-padded on the right to 64
  bytes (the largest challenge PSA allows), so every type reports a fixed-size report_data.
- `measurements` maps each software component to its measurement value, named `sw:<type>` by its
  measurement type, or `sw#<index>` (its position in the token) when the type is absent or shared
  with another component. Signer ids, versions and descriptions are under `claims["sw_components"]`.
- `debug` follows the security lifecycle (RFC 9783 4.2.1; the low byte is IMPLEMENTATION DEFINED):
  secured (0x30xx) is not debug. assembly-and-test (0x10xx) and PSA RoT provisioning (0x20xx) are
  debug, as the device is not yet locked down; so are non-PSA-RoT debug (0x40xx) and recoverable
  PSA RoT debug (0x50xx), where debug access is open. unknown (0x00xx) and decommissioned (0x60xx)
  establish no trustworthy state at all and are refused at the policy step; other values are not a
  lifecycle and refused at parse.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final

from cryptography.hazmat.primitives.asymmetric import ec

from umbra.tee._cose import (
    ClaimMap,
    CoseMessage,
    KeyFormatError,
    decode_cbor,
    load_public_key,
    parse_message,
    public_key_from_jwk,
    verify_mac,
    verify_signature,
)
from umbra.tee._model import AttestationError, Endorsements, Step, VerifiedEvidence

__all__ = [
    "CURRENT_KEYS",
    "REPORT_DATA_SIZE",
    "PlatformClaims",
    "PsaVerifier",
    "read_platform_claims",
    "resolve_anchor",
]

REPORT_DATA_SIZE: Final = 64
_CHALLENGE_SIZES: Final = (32, 48, 64)


@dataclass(frozen=True)
class ClaimKeys:
    """Where one generation of the PSA token puts each claim."""

    profile: int
    client_id: int
    lifecycle: int
    implementation_id: int
    boot_seed: int
    certification_reference: int
    sw_components: int
    no_sw_measurements: int | None
    challenge: int
    instance_id: int
    verification_service: int


LEGACY_KEYS: Final = ClaimKeys(
    profile=-75000,
    client_id=-75001,
    lifecycle=-75002,
    implementation_id=-75003,
    boot_seed=-75004,
    certification_reference=-75005,
    sw_components=-75006,
    no_sw_measurements=-75007,
    challenge=-75008,
    instance_id=-75009,
    verification_service=-75010,
)
CURRENT_KEYS: Final = ClaimKeys(
    profile=265,
    client_id=2394,
    lifecycle=2395,
    implementation_id=2396,
    boot_seed=2397,
    certification_reference=2398,
    sw_components=2399,
    no_sw_measurements=None,
    challenge=10,
    instance_id=256,
    verification_service=2400,
)
_LEGACY_KEY_RANGE: Final = range(LEGACY_KEYS.verification_service, LEGACY_KEYS.profile + 1)

# major lifecycle state (high byte) -> (name, debug); debug None means no state to trust
_LIFECYCLE_STATES: Final[Mapping[int, tuple[str, bool | None]]] = {
    0x00: ("unknown", None),
    0x10: ("assembly-and-test", True),
    0x20: ("psa-rot-provisioning", True),
    0x30: ("secured", False),
    0x40: ("non-psa-rot-debug", True),
    0x50: ("recoverable-psa-rot-debug", True),
    0x60: ("decommissioned", None),
}

# software component map keys, the same in both generations
_SW_TYPE: Final = 1
_SW_VALUE: Final = 2
_SW_VERSION: Final = 4
_SW_SIGNER_ID: Final = 5
_SW_DESCRIPTION: Final = 6


@dataclass(frozen=True)
class SoftwareComponent:
    measurement_type: str | None
    measurement_value: bytes
    signer_id: bytes | None
    version: str | None
    description: str | None

    def report(self) -> dict[str, str]:
        fields = {
            "measurement_type": self.measurement_type,
            "measurement_value": self.measurement_value.hex(),
            "signer_id": None if self.signer_id is None else self.signer_id.hex(),
            "version": self.version,
            "measurement_description": self.description,
        }
        return {name: value for name, value in fields.items() if value is not None}


@dataclass(frozen=True)
class PlatformClaims:
    """The PSA claims of a PSA token or an Arm CCA platform token."""

    profile: str | None
    challenge: bytes
    implementation_id: bytes
    instance_id: bytes
    lifecycle: int
    lifecycle_name: str
    lifecycle_debug: bool | None  # None: a state with nothing to trust (see the module doc)
    components: tuple[SoftwareComponent, ...]
    client_id: int | None
    boot_seed: bytes | None
    certification_reference: str | None
    verification_service: str | None

    def debug_state(self) -> bool:
        """Whether the lifecycle is a debug state, refusing (POLICY) one with nothing to trust.

        Call it only once the token is authenticated, so that a tampered lifecycle is reported as
        the bad signature it is, not as a policy refusal.
        """
        if self.lifecycle_debug is None:
            raise AttestationError(
                Step.POLICY,
                f"security lifecycle {self.lifecycle_name} ({self.lifecycle:#06x}) establishes no trustworthy state",
            )
        return self.lifecycle_debug

    def measurements(self) -> dict[str, str]:
        """Each component's measurement value, by `sw:<type>`, else `sw#<index>` (see module doc)."""
        types = [component.measurement_type for component in self.components]
        return {
            f"sw:{kind}" if kind is not None and types.count(kind) == 1 else f"sw#{index}": (
                component.measurement_value.hex()
            )
            for index, (kind, component) in enumerate(zip(types, self.components, strict=True))
        }

    def report(self) -> dict[str, Any]:
        """JSON-ready claims; absent optional claims are left out."""
        claims: dict[str, Any] = {
            "profile": self.profile,
            "implementation_id": self.implementation_id.hex(),
            "instance_id": self.instance_id.hex(),
            "security_lifecycle": self.lifecycle_name,
            "security_lifecycle_value": self.lifecycle,
            "sw_components": [component.report() for component in self.components],
            "client_id": self.client_id,
            "boot_seed": None if self.boot_seed is None else self.boot_seed.hex(),
            "certification_reference": self.certification_reference,
            "verification_service": self.verification_service,
        }
        return {name: value for name, value in claims.items() if value is not None}


def read_platform_claims(claims: ClaimMap, keys: ClaimKeys) -> PlatformClaims:
    """The PSA claims of `claims` under the key layout `keys`; a missing mandatory claim refuses."""
    challenge = claims.require(keys.challenge, bytes, "challenge")
    if len(challenge) not in _CHALLENGE_SIZES:
        raise AttestationError(
            Step.PARSE, f"{claims.what}: challenge is {len(challenge)} bytes, not 32, 48 or 64"
        )
    lifecycle = claims.require(keys.lifecycle, int, "security lifecycle")
    lifecycle_name, lifecycle_debug = _lifecycle_state(lifecycle, claims.what)
    return PlatformClaims(
        profile=claims.get(keys.profile, str, "profile"),
        challenge=challenge,
        implementation_id=claims.require(keys.implementation_id, bytes, "implementation id"),
        instance_id=claims.require(keys.instance_id, bytes, "instance id"),
        lifecycle=lifecycle,
        lifecycle_name=lifecycle_name,
        lifecycle_debug=lifecycle_debug,
        components=_software_components(claims, keys),
        client_id=claims.get(keys.client_id, int, "client id"),
        boot_seed=claims.get(keys.boot_seed, bytes, "boot seed"),
        certification_reference=claims.get(keys.certification_reference, str, "certification reference"),
        verification_service=claims.get(keys.verification_service, str, "verification service"),
    )


def resolve_anchor(anchor: bytes | None, platform: PlatformClaims, role: str) -> ec.EllipticCurvePublicKey:
    """The key that must have signed the token: `anchor` is a public key (PEM, DER or JWK) or a JSON
    trust-anchor list of {"instance-id", "implementation-id", "pkey"}, matched by instance id."""
    if not anchor:
        raise AttestationError(Step.CHAIN, f"no {role} given as the anchor")
    try:
        if anchor.lstrip().startswith(b"["):
            return _trust_anchor_key(anchor, platform, role)
        return load_public_key(anchor)
    except KeyFormatError as exc:
        raise AttestationError(Step.CHAIN, f"{role} anchor is unusable: {exc}") from None


class PsaVerifier:
    """PSA attestation tokens. They carry no certificates and no time, so `at` plays no part."""

    tee_type: ClassVar[str] = "psa"

    def verify_at_time(self, evidence: bytes, endorsements: Endorsements, at: datetime) -> VerifiedEvidence:
        message = parse_message(decode_cbor(evidence, "PSA token"), "PSA token", allow_mac=True)
        claims = ClaimMap(decode_cbor(message.payload, "PSA claims"), "PSA claims")
        legacy = any(key in _LEGACY_KEY_RANGE for key in claims if isinstance(key, int))
        platform = read_platform_claims(claims, LEGACY_KEYS if legacy else CURRENT_KEYS)
        try:
            _authenticate(message, platform, endorsements.anchor)
        except AttestationError as exc:
            exc.debug = platform.lifecycle_debug  # reported whenever the token parsed, refused or not
            raise
        return VerifiedEvidence(
            tee_type=self.tee_type,
            platform="psa",
            measurements=platform.measurements(),
            report_data=platform.challenge.ljust(REPORT_DATA_SIZE, b"\0"),
            debug=platform.debug_state(),
            nonce=platform.challenge,
            claims={
                **platform.report(),
                "nonce": platform.challenge.hex(),
                "claim_keys": "legacy" if legacy else "current",
                "protection": message.alg_name,
            },
        )


def _authenticate(message: CoseMessage, platform: PlatformClaims, anchor: bytes | None) -> None:
    if not message.mac:
        verify_signature(message, resolve_anchor(anchor, platform, "IAK"), "PSA token")
    elif anchor:
        verify_mac(message, anchor, "PSA token")
    else:
        raise AttestationError(Step.CHAIN, "the PSA token is a COSE_Mac0 but no HMAC key was given")


def _lifecycle_state(value: int, what: str) -> tuple[str, bool | None]:
    state = _LIFECYCLE_STATES.get(value >> 8) if 0 <= value <= 0xFFFF else None
    if state is None:
        raise AttestationError(Step.PARSE, f"{what}: {value:#x} is not a PSA security lifecycle value")
    return state


def _software_components(claims: ClaimMap, keys: ClaimKeys) -> tuple[SoftwareComponent, ...]:
    entries = claims.array(keys.sw_components, "software components")
    if entries is None:
        if keys.no_sw_measurements is not None and keys.no_sw_measurements in claims:
            return ()
        raise AttestationError(Step.PARSE, f"{claims.what} lacks the software components claim")
    if not entries:
        raise AttestationError(Step.PARSE, f"{claims.what}: software components claim is empty")
    return tuple(
        _software_component(entry, f"{claims.what}: software component {i}")
        for i, entry in enumerate(entries)
    )


def _software_component(entry: object, what: str) -> SoftwareComponent:
    component = ClaimMap(entry, what)
    return SoftwareComponent(
        measurement_type=component.get(_SW_TYPE, str, "measurement type"),
        measurement_value=component.require(_SW_VALUE, bytes, "measurement value"),
        signer_id=component.get(_SW_SIGNER_ID, bytes, "signer id"),
        version=component.get(_SW_VERSION, str, "version"),
        description=component.get(_SW_DESCRIPTION, str, "measurement description"),
    )


def _trust_anchor_key(anchor: bytes, platform: PlatformClaims, role: str) -> ec.EllipticCurvePublicKey:
    try:
        entries = json.loads(anchor)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyFormatError(f"trust-anchor list is not valid JSON: {exc}") from None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise KeyFormatError("trust-anchor list is not a JSON array of objects")
    instance_id = platform.instance_id.hex()
    entry = next((e for e in entries if str(e.get("instance-id", "")).lower() == instance_id), None)
    if entry is None:
        raise AttestationError(
            Step.CHAIN, f"no {role} in the trust-anchor list for instance id {instance_id}"
        )
    implementation_id = entry.get("implementation-id")
    if implementation_id is not None and str(implementation_id).lower() != platform.implementation_id.hex():
        raise AttestationError(
            Step.CHAIN,
            f"the {role} for instance id {instance_id} belongs to implementation {implementation_id}, "
            f"not {platform.implementation_id.hex()}",
        )
    return _anchor_entry_key(entry.get("pkey"))


def _anchor_entry_key(pkey: object) -> ec.EllipticCurvePublicKey:
    if isinstance(pkey, dict):
        return public_key_from_jwk(pkey)
    if isinstance(pkey, str):
        return load_public_key(pkey.encode())
    raise KeyFormatError("trust-anchor entry has no pkey (a JWK object or a PEM string)")
