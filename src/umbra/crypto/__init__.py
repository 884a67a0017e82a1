"""Umbra's cryptographic facade: sign/verify, seal/open, derive, commit.

Every signature is Ed25519 over `SHA-256(domain_tag || cbor(body))`, with one tag per message
kind, so a signature made for one purpose never verifies for another. HPKE is RFC 9180 with
X25519, HKDF-SHA256 and ChaCha20-Poly1305. Symmetric blobs carry a version byte so that the
format can change without ambiguity. Randomness is a parameter (`rng`) so tests can fix it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from umbra import codec
from umbra.crypto import _hazmat
from umbra.crypto._hazmat import RandomSource

__all__ = [
    "DOMAINS",
    "AeadKey",
    "BadSignature",
    "DecryptError",
    "EcdhKey",
    "KeyFileError",
    "RandomSource",
    "SigningKey",
    "commitment",
    "derive_key",
    "hpke_open",
    "hpke_seal",
    "load_signing_key",
    "save_signing_key",
    "signing_digest",
    "verify",
    "verify_or_raise",
]

# One tag per signed message kind. A new kind gets a new tag here, never a reused one.
DOMAINS = frozenset(
    {
        "umbra/tx/v1",
        "umbra/block/v1",
        "umbra/result/v1",
        "umbra/query/v1",
        "umbra/query-reply/v1",
        "umbra/worker-binding/v1",
        "umbra/contract-key/v1",
        "umbra/heartbeat/v1",
        "umbra/sim-evidence/v1",
        "umbra/chain-attest/v1",
        "umbra/master-key/v1",
        "umbra/handover/v1",
    }
)


class BadSignature(ValueError):
    """A signature that does not verify for the claimed key, domain and body."""


class DecryptError(ValueError):
    """A ciphertext that does not open: wrong key, wrong binding (info/aad) or tampered."""


class KeyFileError(ValueError):
    """A key file that is missing, unreadable or not an Umbra key."""


def _check_domain(domain: str) -> bytes:
    if domain not in DOMAINS:
        raise ValueError(f"unknown signing domain {domain!r}")
    return domain.encode()


def signing_digest(domain: str, body: Any) -> bytes:
    """The 32 bytes that are actually signed: SHA-256(domain || cbor(body))."""
    return codec.sha256(_check_domain(domain) + codec.encode(body))


@dataclass(frozen=True, repr=False)
class SigningKey:
    """An Ed25519 key. Its public key is an Umbra account id."""

    seed: bytes

    @classmethod
    def generate(cls, rng: RandomSource = _hazmat.system_random) -> SigningKey:
        return cls(rng(32))

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        object.__setattr__(self, "_key", _hazmat.ed25519_private(self.seed))
        object.__setattr__(self, "_public", _hazmat.ed25519_public_raw(self._key))  # type: ignore[attr-defined]

    @property
    def public_key(self) -> bytes:
        return self._public  # type: ignore[attr-defined,no-any-return]

    def sign(self, domain: str, body: Any) -> bytes:
        return _hazmat.ed25519_sign(self._key, signing_digest(domain, body))  # type: ignore[attr-defined]

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign a digest already computed with `signing_digest` (saves re-encoding large bodies)."""
        return _hazmat.ed25519_sign(self._key, digest)  # type: ignore[attr-defined]

    def __repr__(self) -> str:  # never print the seed
        return f"SigningKey({codec.to_hex(self.public_key)})"


def verify(domain: str, body: Any, signature: bytes, public_key: bytes) -> bool:
    return _hazmat.ed25519_verify(public_key, signature, signing_digest(domain, body))


def verify_digest(digest: bytes, signature: bytes, public_key: bytes) -> bool:
    return _hazmat.ed25519_verify(public_key, signature, digest)


def verify_or_raise(domain: str, body: Any, signature: bytes, public_key: bytes) -> None:
    if not verify(domain, body, signature, public_key):
        raise BadSignature(f"signature does not verify for {codec.to_hex(public_key)} ({domain})")


def verify_many(items: Iterable[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """Verify (digest, signature, public_key) triples; the batch form lets callers parallelise."""
    return [_hazmat.ed25519_verify(pk, sig, digest) for digest, sig, pk in items]


@dataclass(frozen=True, repr=False)
class EcdhKey:
    """An X25519 key: the recipient side of HPKE."""

    secret: bytes

    @classmethod
    def generate(cls, rng: RandomSource = _hazmat.system_random) -> EcdhKey:
        return cls(rng(32))

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise ValueError("an X25519 secret is 32 bytes")
        object.__setattr__(self, "_key", _hazmat.x25519_private(self.secret))
        object.__setattr__(self, "_public", _hazmat.x25519_public_raw(self._key))  # type: ignore[attr-defined]

    @property
    def public_key(self) -> bytes:
        return self._public  # type: ignore[attr-defined,no-any-return]

    def open(self, ciphertext: bytes, info: bytes) -> bytes:
        return hpke_open(self, ciphertext, info)

    def __repr__(self) -> str:
        return f"EcdhKey({codec.to_hex(self.public_key)})"


def hpke_seal(recipient_public_key: bytes, plaintext: bytes, info: bytes) -> bytes:
    """HPKE base mode, single shot. `info` binds the context: a copy elsewhere will not open."""
    if len(recipient_public_key) != 32:
        raise ValueError("an X25519 public key is 32 bytes")
    return _hazmat.hpke_seal(recipient_public_key, plaintext, info)


def hpke_open(key: EcdhKey, ciphertext: bytes, info: bytes) -> bytes:
    plaintext = _hazmat.hpke_open(key._key, ciphertext, info)  # type: ignore[attr-defined]
    if plaintext is None:
        raise DecryptError("ciphertext does not open with this key and context")
    return plaintext


_AEAD_VERSION = 1


@dataclass(frozen=True, repr=False)
class AeadKey:
    """A 32-byte symmetric key. Blobs are `version || nonce || ChaCha20-Poly1305(ct)`."""

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != 32:
            raise ValueError("an AEAD key is 32 bytes")

    def seal(self, plaintext: bytes, aad: bytes = b"", rng: RandomSource = _hazmat.system_random) -> bytes:
        nonce = rng(12)
        return bytes([_AEAD_VERSION]) + nonce + _hazmat.chacha_seal(self.key, nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes = b"") -> bytes:
        if len(blob) < 1 + 12 + 16 or blob[0] != _AEAD_VERSION:
            raise DecryptError("sealed blob has an unknown version or is truncated")
        plaintext = _hazmat.chacha_open(self.key, blob[1:13], blob[13:], aad)
        if plaintext is None:
            raise DecryptError("sealed blob failed authentication (wrong key or tampered)")
        return plaintext

    def __repr__(self) -> str:
        return "AeadKey(<hidden>)"


def derive_key(secret: bytes, label: str, context: bytes = b"", length: int = 32) -> bytes:
    """HKDF-SHA256 with a distinct label per purpose: the key tree's only derivation step."""
    return _hazmat.hkdf_sha256(
        secret, salt=b"umbra/kdf/v1", info=label.encode() + b"\x00" + context, length=length
    )


def commitment(key: bytes, output: bytes) -> bytes:
    """HMAC-SHA256 commitment: replicas agree on it without revealing a low-entropy output."""
    return _hazmat.hmac_sha256(key, output)


# ---- key files ----------------------------------------------------------------------------------

_KEY_FILE_KIND = "umbra-ed25519-key/v1"


def save_signing_key(path: str | os.PathLike[str], key: SigningKey) -> None:
    """Write a key file readable only by its owner, atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    doc = {"kind": _KEY_FILE_KIND, "address": codec.to_hex(key.public_key), "seed": key.seed.hex()}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
        fh.write("\n")
    os.replace(tmp, target)


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    try:
        doc = json.loads(Path(path).read_text())
        if doc.get("kind") != _KEY_FILE_KIND:
            raise KeyFileError(f"{path} is not an Umbra key file")
        key = SigningKey(bytes.fromhex(doc["seed"]))
    except KeyFileError:
        raise
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise KeyFileError(f"key file {path} is unreadable or malformed") from None
    if codec.to_hex(key.public_key) != doc.get("address"):
        raise KeyFileError(f"key file {path} is inconsistent: address does not match the key")
    return key
