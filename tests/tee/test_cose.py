"""COSE_Sign1 / COSE_Mac0 decoding and verification, and the key readers.

The token builders and the hostile-input strategy here are shared with the nitro, arm-cca and psa
tests, which build their synthetic evidence with them.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from umbra.tee import AttestationError, Step
from umbra.tee._cose import (
    ClaimMap,
    KeyFormatError,
    decode_cbor,
    load_public_key,
    parse_message,
    public_key_from_cose_key,
    public_key_from_jwk,
    public_key_from_point,
    verify_mac,
    verify_signature,
)

ES256, ES384, ES512, HMAC256 = -7, -35, -36, 5
_HASHES: Mapping[int, hashes.HashAlgorithm] = {
    ES256: hashes.SHA256(),
    ES384: hashes.SHA384(),
    ES512: hashes.SHA512(),
}
_CURVES: Mapping[int, ec.EllipticCurve] = {
    ES256: ec.SECP256R1(),
    ES384: ec.SECP384R1(),
    ES512: ec.SECP521R1(),
}


# --- builders shared by the verifier tests ---------------------------------------------------------


def ec_key(alg: int = ES384) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(_CURVES[alg])


def sign1(
    payload: bytes,
    key: ec.EllipticCurvePrivateKey,
    alg: int = ES384,
    *,
    tagged: bool = True,
    protected: Mapping[int, Any] | None = None,
    unprotected: Mapping[int, Any] | None = None,
) -> bytes:
    """A COSE_Sign1 over `payload`, signed as RFC 9052 4.4 says."""
    header = cbor2.dumps(dict(protected) if protected is not None else {1: alg})
    to_be_signed = cbor2.dumps(["Signature1", header, b"", payload])
    r, s = decode_dss_signature(key.sign(to_be_signed, ec.ECDSA(_HASHES[alg])))
    size = (key.curve.key_size + 7) // 8
    message = [header, dict(unprotected or {}), payload, r.to_bytes(size, "big") + s.to_bytes(size, "big")]
    return cbor2.dumps(cbor2.CBORTag(18, message) if tagged else message)


def mac0(payload: bytes, key: bytes, *, tagged: bool = True) -> bytes:
    header = cbor2.dumps({1: HMAC256})
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(cbor2.dumps(["MAC0", header, b"", payload]))
    message = [header, {}, payload, mac.finalize()]
    return cbor2.dumps(cbor2.CBORTag(17, message) if tagged else message)


def pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    size = (key.curve.key_size + 7) // 8
    crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]

    def b64(value: int) -> str:
        return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode()

    return {"kty": "EC", "crv": crv, "x": b64(numbers.x), "y": b64(numbers.y)}


def cose_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    numbers = key.public_key().public_numbers()
    size = (key.curve.key_size + 7) // 8
    crv = {"secp256r1": 1, "secp384r1": 2, "secp521r1": 3}[key.curve.name]
    return cbor2.dumps(
        {1: 2, -1: crv, -2: numbers.x.to_bytes(size, "big"), -3: numbers.y.to_bytes(size, "big")}
    )


def point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def hostile_variants(token: bytes) -> st.SearchStrategy[bytes]:
    """Truncations, byte flips, re-tagged outer items, random and empty input derived from `token`."""
    outer = cbor2.loads(token)
    untagged = outer.value if isinstance(outer, cbor2.CBORTag) else outer
    truncated = st.integers(0, len(token) - 1).map(lambda n: token[:n])
    flipped = st.tuples(st.integers(0, len(token) - 1), st.integers(1, 255)).map(
        lambda f: token[: f[0]] + bytes([token[f[0]] ^ f[1]]) + token[f[0] + 1 :]
    )
    retagged = st.sampled_from([0, 1, 2, 16, 17, 18, 24, 61, 96, 98, 258, 263, 399, 400, 907, 55799]).map(
        lambda tag: cbor2.dumps(cbor2.CBORTag(tag, untagged))
    )
    doubly_tagged = st.just(cbor2.dumps(cbor2.CBORTag(55799, outer)))
    return st.one_of(truncated, flipped, retagged, doubly_tagged, st.binary(max_size=600), st.just(b""))


def refuses_or_attests_the_same(verify: Callable[[bytes], Any], data: bytes, reference: Any) -> None:
    """`verify` raises only AttestationError on `data`; if it accepts, nothing attested changed.

    A flipped byte can land outside the signed content (a CMW content-type number, say) and leave
    the token valid; what matters is that no mutation changes what the evidence attests.
    """
    try:
        verified = verify(data)
    except AttestationError as exc:
        assert exc.message
        return
    assert verified.measurements == reference.measurements
    assert verified.nonce == reference.nonce
    assert verified.report_data == reference.report_data


# --- decode_cbor ------------------------------------------------------------------------------------


def test_decode_reads_the_first_item_and_ignores_trailing_bytes() -> None:
    assert decode_cbor(cbor2.dumps([1, 2]) + b"\xff\x00junk", "x") == [1, 2]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x82\x01", "not well-formed"),  # array of 2 with one element
        (b"\xa2\x01\x02\x01\x03", "not well-formed"),  # duplicate map key
        (b"\x81" * 64 + b"\x00", "not well-formed"),  # nesting beyond the depth bound
        (b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff", "not well-formed"),  # huge declared length
    ],
)
def test_decode_refuses_malformed_cbor(data: bytes, reason: str) -> None:
    with pytest.raises(AttestationError) as refused:
        decode_cbor(data, "thing")
    assert refused.value.step is Step.PARSE
    assert reason in refused.value.message


def test_claim_map_refuses_wrong_types_and_missing_claims() -> None:
    claims = ClaimMap({1: b"x", 2: True, 3: [1]}, "claims")
    assert claims.require(1, bytes, "one") == b"x"
    assert claims.get(9, bytes, "nine") is None
    with pytest.raises(AttestationError, match="two is a CBOR boolean, expected integer"):
        claims.get(2, int, "two")
    with pytest.raises(AttestationError, match="lacks the nine claim"):
        claims.require(9, bytes, "nine")
    with pytest.raises(AttestationError, match="expected an array"):
        claims.array(1, "one")
    with pytest.raises(AttestationError, match="is a CBOR array, expected a map"):
        ClaimMap([1], "claims")


# --- COSE_Sign1 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", [ES256, ES384, ES512])
@pytest.mark.parametrize("tagged", [True, False])
def test_sign1_round_trip(alg: int, tagged: bool) -> None:
    key = ec_key(alg)
    message = parse_message(decode_cbor(sign1(b"claims", key, alg, tagged=tagged), "t"), "token")
    assert (message.mac, message.alg, message.payload) == (False, alg, b"claims")
    verify_signature(message, key.public_key(), "token")


def test_sign1_refuses_a_changed_payload() -> None:
    key = ec_key()
    protected, unprotected, _, signature = cbor2.loads(sign1(b"claims", key)).value
    item = [protected, unprotected, b"claimz", signature]
    with pytest.raises(AttestationError, match="signature does not verify") as refused:
        verify_signature(parse_message(item, "token"), key.public_key(), "token")
    assert refused.value.step is Step.SIGNATURE


def test_sign1_refuses_another_key_and_a_key_of_the_wrong_curve() -> None:
    message = parse_message(cbor2.loads(sign1(b"claims", ec_key(ES384))), "token")
    with pytest.raises(AttestationError, match="does not verify") as refused:
        verify_signature(message, ec_key(ES384).public_key(), "token")
    assert refused.value.step is Step.SIGNATURE
    with pytest.raises(AttestationError, match="ES384, which does not fit a secp256r1 key"):
        verify_signature(message, ec_key(ES256).public_key(), "token")


def test_sign1_refuses_a_signature_of_the_wrong_length() -> None:
    key = ec_key()
    protected, unprotected, payload, signature = cbor2.loads(sign1(b"claims", key)).value
    item = [protected, unprotected, payload, signature[:-1]]
    with pytest.raises(AttestationError, match="signature is 95 bytes, expected 96"):
        verify_signature(parse_message(item, "token"), key.public_key(), "token")


@pytest.mark.parametrize(
    ("protected", "unprotected", "reason"),
    [
        ({}, {}, "names no algorithm in its protected header"),
        ({1: ES384}, {1: ES384}, "repeats the algorithm in its unprotected header"),
        ({1: ES384, 2: [99]}, {}, "marks headers critical"),
        ({1: -8}, {}, "unsupported COSE algorithm -8"),  # EdDSA
        ({1: "ES384"}, {}, "algorithm is a CBOR text string"),
    ],
)
def test_sign1_headers_that_are_refused(
    protected: dict[int, Any], unprotected: dict[int, Any], reason: str
) -> None:
    token = sign1(b"claims", ec_key(), protected=protected, unprotected=unprotected)
    with pytest.raises(AttestationError, match=reason) as refused:
        parse_message(cbor2.loads(token), "token")
    assert refused.value.step is Step.PARSE


def test_empty_protected_header_means_no_algorithm() -> None:
    # RFC 9052: a zero-length protected bstr is the empty map (tf-m-tools' malformed.cbor has one)
    with pytest.raises(AttestationError, match="names no algorithm"):
        parse_message(cbor2.CBORTag(18, [b"", {}, b"claims", b"\x00" * 64]), "token")


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (cbor2.CBORTag(16, [b"\xa1\x01\x26", {}, b"p", b"s"]), "has CBOR tag 16"),
        ([b"\xa1\x01\x26", {}, b"p"], "not a COSE message"),
        ({"a": 1}, "not a COSE message"),
        ([{1: -7}, {}, b"p", b"s"], "protected header is not a byte string"),
        ([b"\xa1\x01\x26", None, b"p", b"s"], "unprotected header is a CBOR null, not a map"),
        ([b"\xa1\x01\x26", {}, None, b"s"], "payload is not an attached byte string"),
        ([b"\xa1\x01\x26", {}, b"p", "s"], "signature or tag is not a byte string"),
        (cbor2.CBORTag(17, [b"\xa1\x01\x26", {}, b"p", b"s"]), "tagged 17 but its algorithm -7"),
        (cbor2.CBORTag(18, [b"\xa1\x01\x05", {}, b"p", b"s"]), "tagged 18 but its algorithm 5"),
    ],
)
def test_parse_message_refuses_malformed_structures(item: object, reason: str) -> None:
    with pytest.raises(AttestationError, match=reason) as refused:
        parse_message(item, "token", allow_mac=True)
    assert refused.value.step is Step.PARSE


# --- COSE_Mac0 --------------------------------------------------------------------------------------


def test_mac0_round_trip_and_wrong_key() -> None:
    key = b"k" * 32
    message = parse_message(cbor2.loads(mac0(b"claims", key)), "token", allow_mac=True)
    assert message.mac and message.alg_name == "HMAC 256/256"
    verify_mac(message, key, "token")
    with pytest.raises(AttestationError, match="MAC does not verify") as refused:
        verify_mac(message, b"K" * 32, "token")
    assert refused.value.step is Step.SIGNATURE
    with pytest.raises(AttestationError, match="is MACed, but a public key was given"):
        verify_signature(message, ec_key().public_key(), "token")


def test_mac0_is_refused_where_a_signature_is_required() -> None:
    with pytest.raises(AttestationError, match="must be a signed COSE_Sign1"):
        parse_message(cbor2.loads(mac0(b"claims", b"k" * 32)), "token")


def test_untagged_mac0_is_recognised_by_its_algorithm() -> None:
    message = parse_message(cbor2.loads(mac0(b"claims", b"k" * 32, tagged=False)), "token", allow_mac=True)
    assert message.mac


# --- keys -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", [ES256, ES384, ES512])
def test_every_key_form_reads_back_the_same_key(alg: int) -> None:
    key = ec_key(alg)
    expected = key.public_key().public_numbers()
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forms = [
        load_public_key(pem(key)),
        load_public_key(der),
        load_public_key(json.dumps(jwk(key)).encode()),
        public_key_from_jwk(jwk(key)),
        public_key_from_cose_key(cose_key(key)),
        public_key_from_point(point(key)),
    ]
    assert all(form.public_numbers() == expected for form in forms)


def test_key_readers_refuse_what_is_not_an_ec_public_key() -> None:
    good = jwk(ec_key(ES256))
    off_curve = {**good, "x": base64.urlsafe_b64encode(b"\x01" * 32).rstrip(b"=").decode()}
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: load_public_key(b"not a key"), "not a PEM, DER or JWK"),
        (lambda: load_public_key(b"{not json"), "not valid JSON"),
        (lambda: load_public_key(b"[1]"), "not a PEM, DER or JWK"),
        (lambda: public_key_from_jwk({**good, "kty": "RSA"}), "not EC"),
        (lambda: public_key_from_jwk({**good, "crv": "P-192"}), "curve 'P-192'"),
        (lambda: public_key_from_jwk({**good, "x": "AA"}), "coordinates must be 32 bytes"),
        (lambda: public_key_from_jwk({**good, "y": 7}), "'y' is missing"),
        (lambda: public_key_from_jwk(off_curve), "invalid secp256r1 key"),
        (lambda: public_key_from_cose_key(cbor2.dumps({1: 1, -1: 6, -2: b"x"})), "lacks the y coordinate"),
        (lambda: public_key_from_cose_key(cbor2.dumps({1: 1, -1: 6, -2: b"x", -3: b"y"})), "not EC2"),
        (lambda: public_key_from_cose_key(cbor2.dumps({1: 2, -1: 9, -2: b"x", -3: b"y"})), "curve 9"),
        (lambda: public_key_from_cose_key(b"\xff"), "not well-formed"),
        (lambda: public_key_from_point(b"\x04" + b"\x01" * 64), "invalid secp256r1 point"),
        (lambda: public_key_from_point(b"\x02" + b"\x01" * 64), "not an uncompressed"),
        (lambda: public_key_from_point(b"\x04" * 10), "not an uncompressed"),
    ]
    for read, reason in cases:
        with pytest.raises(KeyFormatError, match=reason):
            read()


def test_rsa_keys_are_not_ec_keys() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=1024)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFormatError, match="RSAPublicKey is not an EC public key"):
        load_public_key(rsa_pem)


# --- fuzz -------------------------------------------------------------------------------------------

_FUZZ_KEY = ec_key(ES256)
_FUZZ_TOKEN = sign1(cbor2.dumps({10: b"n" * 32}), _FUZZ_KEY, ES256)


@settings(max_examples=400, deadline=None)
@given(hostile_variants(_FUZZ_TOKEN))
def test_hostile_messages_are_refused_only_with_attestation_errors(data: bytes) -> None:
    try:
        message = parse_message(decode_cbor(data, "token"), "token", allow_mac=True)
        if message.mac:
            verify_mac(message, b"k", "token")
        else:
            verify_signature(message, _FUZZ_KEY.public_key(), "token")
    except AttestationError as exc:
        assert exc.step in (Step.PARSE, Step.SIGNATURE)
        return
    assert message.payload == cbor2.dumps({10: b"n" * 32})  # accepted only if the signed content is intact


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_key_readers_raise_only_key_format_errors(data: bytes) -> None:
    for read in (load_public_key, public_key_from_cose_key, public_key_from_point):
        with contextlib.suppress(KeyFormatError):
            read(data)
