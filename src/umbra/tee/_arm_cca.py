"""Arm CCA attestation tokens: a platform token (signed by the CPAK) and a realm token (signed by
the Realm Attestation Key it carries), bound together by the platform challenge.

Accepted shapes: the legacy collection (tag 399: {44234: platform bstr, 44241: realm bstr}), the
CMW collection (tag 907: each entry a [content-type, bstr] record), or a bare platform COSE_Sign1,
which is a platform-only token, accepted and marked `claims["platform_only"]`. Both claim
generations are read: the legacy CCA-SSD profile (RAK as a raw SEC1 point, no realm profile) and
the 2023+ profiles (RAK as a COSE_Key).

The binding is the point of the realm token: the platform challenge must equal the hash of the RAK
claim's bytes under the realm's RAK hash algorithm. Otherwise a valid realm token could be paired
with any valid platform token (rust-ccatoken bug 33), so a mismatch is refused at BINDING even when
both signatures hold.

Reported values: `measurements` holds `rim` and `rem0`..`rem3` (realm initial and extensible
measurements) and each platform software component as `sw:<type>` or `sw#<index>` (see `_psa`).
`nonce`, `report_data` and `claims["challenge"]` are the 64-byte realm challenge; for a
platform-only token the platform challenge, with report_data zero-padded to 64 bytes. `debug` is the platform security lifecycle,
read as for PSA.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from umbra.tee._cose import (
    TAG_SIGN1,
    ClaimMap,
    CoseMessage,
    KeyFormatError,
    decode_cbor,
    parse_message,
    public_key_from_cose_key,
    public_key_from_point,
    verify_signature,
)
from umbra.tee._model import AttestationError, Endorsements, Step, VerifiedEvidence
from umbra.tee._psa import (
    CURRENT_KEYS,
    REPORT_DATA_SIZE,
    PlatformClaims,
    read_platform_claims,
    resolve_anchor,
)

__all__ = ["ArmCcaVerifier"]

_TAG_LEGACY_COLLECTION: Final = 399
_TAG_CMW_COLLECTION: Final = 907
_PLATFORM_ENTRY: Final = 44234
_REALM_ENTRY: Final = 44241

_PLATFORM_CONFIG: Final = 2401
_PLATFORM_HASH_ALGORITHM: Final = 2402

_REALM_CHALLENGE: Final = 10
_REALM_PROFILE: Final = 265
_REALM_PERSONALIZATION_VALUE: Final = 44235
_REALM_HASH_ALGORITHM: Final = 44236
_REALM_PUBLIC_KEY: Final = 44237
_REALM_INITIAL_MEASUREMENT: Final = 44238
_REALM_EXTENSIBLE_MEASUREMENTS: Final = 44239
_REALM_PUBLIC_KEY_HASH_ALGORITHM: Final = 44240
_REALM_CHALLENGE_SIZE: Final = 64
_EXTENSIBLE_MEASUREMENT_COUNT: Final = 4

# IANA Named Information hash algorithm names, as the tokens spell them
_HASHES: Final[Mapping[str, Callable[[bytes], Any]]] = {
    "sha-256": hashlib.sha256,
    "sha-384": hashlib.sha384,
    "sha-512": hashlib.sha512,
}


@dataclass(frozen=True)
class _Realm:
    profile: str | None
    challenge: bytes
    personalization_value: bytes
    hash_algorithm: str
    public_key_claim: bytes  # the RAK exactly as carried: the platform challenge hashes these bytes
    public_key: ec.EllipticCurvePublicKey
    public_key_hash_algorithm: str
    initial_measurement: bytes
    extensible_measurements: tuple[bytes, ...]

    def measurements(self) -> dict[str, str]:
        rems = {f"rem{i}": value.hex() for i, value in enumerate(self.extensible_measurements)}
        return {"rim": self.initial_measurement.hex(), **rems}


class ArmCcaVerifier:
    """Arm CCA realm tokens, and platform-only tokens. Nothing in them depends on `at`."""

    tee_type: ClassVar[str] = "arm-cca"

    def verify_at_time(self, evidence: bytes, endorsements: Endorsements, at: datetime) -> VerifiedEvidence:
        platform_item, realm_item = _unwrap(decode_cbor(evidence, "CCA token"))
        platform_message = parse_message(platform_item, "CCA platform token")
        platform_claims = ClaimMap(
            decode_cbor(platform_message.payload, "CCA platform claims"), "CCA platform claims"
        )
        platform = read_platform_claims(platform_claims, CURRENT_KEYS)
        try:
            return self._verify_parsed(platform_message, platform_claims, platform, realm_item, endorsements)
        except AttestationError as exc:
            exc.debug = platform.lifecycle_debug  # reported whenever the platform token parsed
            raise

    def _verify_parsed(
        self,
        platform_message: CoseMessage,
        platform_claims: ClaimMap,
        platform: PlatformClaims,
        realm_item: object | None,
        endorsements: Endorsements,
    ) -> VerifiedEvidence:
        claims: dict[str, Any] = {
            **platform.report(),
            "platform_challenge": platform.challenge.hex(),
            "platform_hash_algorithm": platform_claims.get(_PLATFORM_HASH_ALGORITHM, str, "hash algorithm"),
            "platform_config": _hex(platform_claims.get(_PLATFORM_CONFIG, bytes, "platform config")),
        }
        cpak = resolve_anchor(endorsements.anchor, platform, "CPAK")
        verify_signature(platform_message, cpak, "CCA platform token")
        if realm_item is None:
            return self._verified(
                platform, platform.measurements(), platform.challenge, claims, platform_only=True
            )

        realm_message = parse_message(realm_item, "CCA realm token")
        realm = _read_realm(
            ClaimMap(decode_cbor(realm_message.payload, "CCA realm claims"), "CCA realm claims")
        )
        verify_signature(realm_message, realm.public_key, "CCA realm token")
        _check_binding(platform, realm)
        claims |= {
            "realm_profile": realm.profile,
            "hash_algorithm": realm.hash_algorithm,
            "realm_public_key": realm.public_key_claim.hex(),
            "realm_public_key_hash_algorithm": realm.public_key_hash_algorithm,
            "personalization_value": realm.personalization_value.hex(),
        }
        measurements = {**realm.measurements(), **platform.measurements()}
        return self._verified(platform, measurements, realm.challenge, claims, platform_only=False)

    def _verified(
        self,
        platform: PlatformClaims,
        measurements: dict[str, str],
        challenge: bytes,
        claims: dict[str, Any],
        *,
        platform_only: bool,
    ) -> VerifiedEvidence:
        claims = {name: value for name, value in claims.items() if value is not None}
        return VerifiedEvidence(
            tee_type=self.tee_type,
            platform="arm-cca",
            measurements=measurements,
            report_data=challenge.ljust(REPORT_DATA_SIZE, b"\0"),
            debug=platform.debug_state(),
            nonce=challenge,
            claims={**claims, "challenge": challenge.hex(), "platform_only": platform_only},
        )


def _unwrap(token: object) -> tuple[object, object | None]:
    """(platform COSE item, realm COSE item or None for a platform-only token)."""
    if isinstance(token, cbor2.CBORTag) and token.tag in (_TAG_LEGACY_COLLECTION, _TAG_CMW_COLLECTION):
        collection = ClaimMap(token.value, f"CCA collection (tag {token.tag})")
        read = _legacy_entry if token.tag == _TAG_LEGACY_COLLECTION else _cmw_entry
        return read(collection, _PLATFORM_ENTRY, "platform token"), read(
            collection, _REALM_ENTRY, "realm token"
        )
    if isinstance(token, cbor2.CBORTag) and token.tag != TAG_SIGN1:
        raise AttestationError(
            Step.PARSE,
            f"CCA token has CBOR tag {token.tag}, not a collection ({_TAG_LEGACY_COLLECTION}, "
            f"{_TAG_CMW_COLLECTION}) or a platform COSE_Sign1 ({TAG_SIGN1})",
        )
    return token, None  # a platform token on its own


def _legacy_entry(collection: ClaimMap, key: int, name: str) -> object:
    return decode_cbor(collection.require(key, bytes, name), f"CCA {name}")


def _cmw_entry(collection: ClaimMap, key: int, name: str) -> object:
    record = collection.array(key, name)
    if record is None:
        raise AttestationError(Step.PARSE, f"{collection.what} lacks the {name}")
    # a CMW record is [content-type, value] or [content-type, value, indicator]
    if len(record) not in (2, 3) or not isinstance(record[0], int | str) or not isinstance(record[1], bytes):
        raise AttestationError(Step.PARSE, f"{collection.what}: {name} is not a [content-type, bstr] record")
    return decode_cbor(record[1], f"CCA {name}")


def _read_realm(claims: ClaimMap) -> _Realm:
    challenge = claims.require(_REALM_CHALLENGE, bytes, "challenge")
    if len(challenge) != _REALM_CHALLENGE_SIZE:
        raise AttestationError(Step.PARSE, f"{claims.what}: challenge is {len(challenge)} bytes, not 64")
    rems = claims.array(_REALM_EXTENSIBLE_MEASUREMENTS, "extensible measurements")
    if (
        rems is None
        or len(rems) != _EXTENSIBLE_MEASUREMENT_COUNT
        or not all(isinstance(r, bytes) for r in rems)
    ):
        raise AttestationError(Step.PARSE, f"{claims.what}: extensible measurements are not 4 byte strings")
    public_key_claim = claims.require(_REALM_PUBLIC_KEY, bytes, "realm public key")
    return _Realm(
        profile=claims.get(_REALM_PROFILE, str, "profile"),
        challenge=challenge,
        personalization_value=claims.require(_REALM_PERSONALIZATION_VALUE, bytes, "personalization value"),
        hash_algorithm=claims.require(_REALM_HASH_ALGORITHM, str, "hash algorithm"),
        public_key_claim=public_key_claim,
        public_key=_realm_public_key(public_key_claim, claims.what),
        public_key_hash_algorithm=claims.require(
            _REALM_PUBLIC_KEY_HASH_ALGORITHM, str, "public key hash algorithm"
        ),
        initial_measurement=claims.require(_REALM_INITIAL_MEASUREMENT, bytes, "initial measurement"),
        extensible_measurements=tuple(rems),
    )


def _realm_public_key(claim: bytes, what: str) -> ec.EllipticCurvePublicKey:
    # The legacy profile carries a raw SEC1 point (first byte 0x04); later ones a COSE_Key map,
    # whose first byte is a CBOR map header (0xa0..0xbf), so the first byte tells them apart.
    try:
        return public_key_from_point(claim) if claim[:1] == b"\x04" else public_key_from_cose_key(claim)
    except KeyFormatError as exc:
        raise AttestationError(Step.PARSE, f"{what}: realm public key is unusable: {exc}") from None


def _check_binding(platform: PlatformClaims, realm: _Realm) -> None:
    digest = _HASHES.get(realm.public_key_hash_algorithm)
    if digest is None:
        raise AttestationError(
            Step.PARSE,
            f"realm public key hash algorithm {realm.public_key_hash_algorithm!r} is not supported",
        )
    if digest(realm.public_key_claim).digest() != platform.challenge:
        raise AttestationError(
            Step.BINDING,
            f"platform challenge is not the {realm.public_key_hash_algorithm} of the realm public key: "
            "the platform token does not vouch for this realm",
        )


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()
