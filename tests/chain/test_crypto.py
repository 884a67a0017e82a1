"""umbra.crypto: domain-separated signatures, HPKE context binding, AEAD tamper detection, key files."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from umbra import codec, crypto

pytestmark = pytest.mark.timeout(60)

BODY = {"chain_id": "umbra-test", "nonce": 7, "payload": b"\x01\x02"}


def counter_rng() -> Callable[[int], bytes]:
    """A deterministic randomness source (each call returns fresh, predictable bytes)."""
    state = {"n": 0}

    def rng(n: int) -> bytes:
        state["n"] += 1
        return codec.sha256(state["n"].to_bytes(4, "big"))[:n].ljust(n, b"\x00")

    return rng


# ---- signatures ---------------------------------------------------------------------------------


def test_a_signature_verifies_for_its_own_domain_key_and_body() -> None:
    key = crypto.SigningKey.generate()
    signature = key.sign("umbra/tx/v1", BODY)
    assert crypto.verify("umbra/tx/v1", BODY, signature, key.public_key)
    crypto.verify_or_raise("umbra/tx/v1", BODY, signature, key.public_key)


@pytest.mark.parametrize("other_domain", sorted(crypto.DOMAINS - {"umbra/tx/v1"}))
def test_a_signature_for_one_domain_never_verifies_for_another(other_domain: str) -> None:
    key = crypto.SigningKey.generate()
    signature = key.sign("umbra/tx/v1", BODY)
    assert crypto.signing_digest("umbra/tx/v1", BODY) != crypto.signing_digest(other_domain, BODY)
    assert not crypto.verify(other_domain, BODY, signature, key.public_key)
    with pytest.raises(crypto.BadSignature):
        crypto.verify_or_raise(other_domain, BODY, signature, key.public_key)


def test_signatures_fail_for_another_key_body_or_a_flipped_bit() -> None:
    key, other = crypto.SigningKey.generate(), crypto.SigningKey.generate()
    signature = key.sign("umbra/block/v1", BODY)
    assert not crypto.verify("umbra/block/v1", BODY, signature, other.public_key)
    assert not crypto.verify("umbra/block/v1", {**BODY, "nonce": 8}, signature, key.public_key)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not crypto.verify("umbra/block/v1", BODY, flipped, key.public_key)


@pytest.mark.parametrize(
    ("signature", "public_key"), [(b"", bytes(32)), (bytes(64), b"short"), (bytes(63), bytes(32))]
)
def test_malformed_signatures_and_keys_are_false_not_exceptions(signature: bytes, public_key: bytes) -> None:
    assert crypto.verify("umbra/tx/v1", BODY, signature, public_key) is False


def test_unknown_signing_domains_are_refused() -> None:
    key = crypto.SigningKey.generate()
    with pytest.raises(ValueError, match="unknown signing domain"):
        key.sign("umbra/made-up/v1", BODY)


def test_signing_is_deterministic_and_keys_come_from_their_seed() -> None:
    seed = bytes(range(32))
    first, second = crypto.SigningKey(seed), crypto.SigningKey(seed)
    assert first.public_key == second.public_key
    assert first.sign("umbra/tx/v1", BODY) == second.sign("umbra/tx/v1", BODY)
    assert seed.hex() not in repr(first)
    with pytest.raises(ValueError):
        crypto.SigningKey(b"\x00" * 31)


# ---- HPKE ---------------------------------------------------------------------------------------


def test_hpke_opens_only_with_the_same_info() -> None:
    recipient = crypto.EcdhKey.generate()
    info = codec.encode({"chain_id": "umbra-test", "contract": b"\x01" * 32, "sender": b"\x02" * 32})
    sealed = crypto.hpke_seal(recipient.public_key, b"secret input", info)
    assert recipient.open(sealed, info) == b"secret input"
    other_info = codec.encode({"chain_id": "umbra-test", "contract": b"\x01" * 32, "sender": b"\x03" * 32})
    with pytest.raises(crypto.DecryptError):
        recipient.open(sealed, other_info)  # copied into someone else's request: does not open


def test_hpke_refuses_another_key_tampering_and_garbage() -> None:
    recipient, stranger = crypto.EcdhKey.generate(), crypto.EcdhKey.generate()
    sealed = crypto.hpke_seal(recipient.public_key, b"payload", b"info")
    with pytest.raises(crypto.DecryptError):
        stranger.open(sealed, b"info")
    for position in (0, 31, 32, len(sealed) - 1):  # encapsulated key, ciphertext, tag
        tampered = bytearray(sealed)
        tampered[position] ^= 0x80
        with pytest.raises(crypto.DecryptError):
            recipient.open(bytes(tampered), b"info")
    for garbage in (b"", b"\x00" * 10, sealed[:40]):
        with pytest.raises(crypto.DecryptError):
            recipient.open(garbage, b"info")
    with pytest.raises(ValueError):
        crypto.hpke_seal(b"\x00" * 31, b"x", b"info")


# ---- AEAD ---------------------------------------------------------------------------------------


def test_aead_round_trips_and_binds_its_associated_data() -> None:
    key = crypto.AeadKey(os.urandom(32))
    blob = key.seal(b"state", aad=b"contract-1")
    assert key.open(blob, aad=b"contract-1") == b"state"
    with pytest.raises(crypto.DecryptError):
        key.open(blob, aad=b"contract-2")
    with pytest.raises(crypto.DecryptError):
        crypto.AeadKey(os.urandom(32)).open(blob, aad=b"contract-1")


@pytest.mark.parametrize("position", [0, 1, 12, 13, -1])  # version, nonce start/end, ciphertext, tag
def test_aead_detects_any_tampered_byte(position: int) -> None:
    key = crypto.AeadKey(os.urandom(32))
    blob = bytearray(key.seal(b"some plaintext"))
    blob[position] ^= 0x01
    with pytest.raises(crypto.DecryptError):
        key.open(bytes(blob))


def test_aead_refuses_truncated_blobs_and_uses_fresh_nonces() -> None:
    key = crypto.AeadKey(os.urandom(32))
    blob = key.seal(b"x")
    for cut in (0, 1, 13, len(blob) - 1):
        with pytest.raises(crypto.DecryptError):
            key.open(blob[:cut])
    assert key.seal(b"x") != key.seal(b"x")  # a nonce per seal
    assert key.seal(b"x", rng=counter_rng()) == key.seal(b"x", rng=counter_rng())  # rng is injectable
    assert "<hidden>" in repr(key)


# ---- derivation and commitments ------------------------------------------------------------------


def test_derived_keys_depend_on_secret_label_and_context() -> None:
    secret = b"\x07" * 32
    base = crypto.derive_key(secret, "contract/ecdh", b"c1")
    assert base == crypto.derive_key(secret, "contract/ecdh", b"c1")
    assert (
        len(
            {
                base,
                crypto.derive_key(secret, "contract/state", b"c1"),
                crypto.derive_key(secret, "contract/ecdh", b"c2"),
                crypto.derive_key(b"\x08" * 32, "contract/ecdh", b"c1"),
                crypto.derive_key(secret, "contract/ecd", b"hc1"),
            }
        )
        == 5
    )
    assert len(crypto.derive_key(secret, "x", length=64)) == 64


def test_commitments_are_hmac_sha256() -> None:
    import hashlib
    import hmac

    assert crypto.commitment(b"k", b"output") == hmac.new(b"k", b"output", hashlib.sha256).digest()
    assert crypto.commitment(b"k", b"0") != crypto.commitment(b"k", b"1")


# ---- key files ----------------------------------------------------------------------------------


def test_key_files_round_trip_and_are_private(tmp_path: Path) -> None:
    key = crypto.SigningKey.generate()
    path = tmp_path / "nested" / "alice.key"
    crypto.save_signing_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert crypto.load_signing_key(path).public_key == key.public_key
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "unreadable or malformed"),
        ('{"kind": "something-else", "seed": "00"}', "not an Umbra key file"),
        ('{"kind": "umbra-ed25519-key/v1", "seed": "abcd"}', "unreadable or malformed"),
        ('{"kind": "umbra-ed25519-key/v1", "seed": "' + "11" * 32 + '", "address": "0x00"}', "inconsistent"),
        ('["a list"]', "unreadable or malformed"),
    ],
)
def test_bad_key_files_raise_key_file_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(content)
    with pytest.raises(crypto.KeyFileError, match=message):
        crypto.load_signing_key(path)


def test_a_missing_key_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(crypto.KeyFileError, match="does not exist"):
        crypto.load_signing_key(tmp_path / "absent.key")
