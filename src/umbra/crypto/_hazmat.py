"""The only place in Umbra that touches `cryptography.hazmat`. Everything else goes through the
facade in `umbra.crypto`, which fixes the suites, the domain separation and the blob versions."""

from __future__ import annotations

import hashlib
import hmac as _hmac
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

RandomSource = Callable[[int], bytes]

# RFC 9180 suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


def ed25519_private(seed: bytes) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def ed25519_public_raw(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def ed25519_sign(key: ed25519.Ed25519PrivateKey, message: bytes) -> bytes:
    return key.sign(message)


def ed25519_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def x25519_private(secret: bytes) -> x25519.X25519PrivateKey:
    return x25519.X25519PrivateKey.from_private_bytes(secret)


def x25519_public_raw(key: x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def hpke_seal(public_key: bytes, plaintext: bytes, info: bytes) -> bytes:
    recipient = x25519.X25519PublicKey.from_public_bytes(public_key)
    return _SUITE.encrypt(plaintext, recipient, info=info)


def hpke_open(private_key: x25519.X25519PrivateKey, ciphertext: bytes, info: bytes) -> bytes | None:
    try:
        return _SUITE.decrypt(ciphertext, private_key, info=info)
    except (InvalidTag, ValueError):
        return None


def hkdf_sha256(secret: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def chacha_seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def chacha_open(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes | None:
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError):
        return None


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return _hmac.new(key, message, hashlib.sha256).digest()


def system_random(n: int) -> bytes:
    return os.urandom(n)
