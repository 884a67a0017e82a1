"""umbra.codec: deterministic CBOR (RFC 8949 §4.2) and strict, canonical decoding."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umbra import codec

pytestmark = pytest.mark.timeout(60)

# Values Umbra puts on the wire: no floats in consensus data, but the codec must handle them.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.binary(max_size=40),
    st.text(max_size=20),
    st.floats(allow_nan=False),
)
map_keys = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40), st.text(max_size=8), st.binary(max_size=8)
)
cbor_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(map_keys, inner, max_size=5)),
    max_leaves=25,
)


def test_equal_values_encode_to_equal_bytes_whatever_the_insertion_order() -> None:
    forwards = {"b": 2, "a": 1, "c": {"y": b"\x01", "x": [1, 2]}}
    backwards = {"c": {"x": [1, 2], "y": b"\x01"}, "a": 1, "b": 2}
    assert codec.encode(forwards) == codec.encode(backwards)


@pytest.mark.parametrize(
    ("value", "encoding"),
    [
        (0, "00"),
        (23, "17"),
        (24, "1818"),
        (255, "18ff"),
        (256, "190100"),
        (2**32, "1b0000000100000000"),
        (-1, "20"),
        (1.5, "f93e00"),  # shortest float that holds the value exactly
        (100000.0, "fa47c35000"),
        ("a", "6161"),
        (b"", "40"),
        ([], "80"),
        ({}, "a0"),
    ],
)
def test_encoding_uses_the_shortest_form(value: Any, encoding: str) -> None:
    assert codec.encode(value).hex() == encoding


def test_map_keys_follow_rfc8949_bytewise_order() -> None:
    # The example of RFC 8949 §4.2.1: 10, 100, -1, "z", "aa", [100], [-1], false.
    mixed = {False: 0, (-1,): 0, (100,): 0, "aa": 0, "z": 0, -1: 0, 100: 0, 10: 0}
    encoded = codec.encode(mixed)
    assert (
        encoded.hex()
        == "a8" + "0a00" + "186400" + "2000" + "617a00" + "62616100" + "81186400" + "812000" + "f400"
    )
    assert codec.decode_canonical(encoded) == mixed


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("1800", "integer 0 not in its shortest form"),
        ("1900ff", "integer 255 in three bytes"),
        ("780161", "text length not in its shortest form"),
        ("fb3ff8000000000000", "1.5 as a double, not a half"),
        ("a2616201616102", "map keys out of order"),
        ("a26000186401", "mixed keys in length-first (RFC 7049) order, not bytewise"),
    ],
)
def test_canonical_decode_refuses_non_deterministic_encodings(raw: str, why: str) -> None:
    data = bytes.fromhex(raw)
    codec.decode(data)  # well-formed CBOR ...
    with pytest.raises(codec.CodecError, match="deterministic"):
        codec.decode_canonical(data)  # ... but not the one encoding Umbra signs and hashes


@pytest.mark.parametrize(
    "raw",
    [
        "",  # nothing
        "0000",  # two items: trailing bytes
        "a1616101ff",  # a map, then junk
        "5f4101ff",  # indefinite-length byte string
        "9f01ff",  # indefinite-length array
        "bf616101ff",  # indefinite-length map
        "a2616101616102",  # duplicate key
        "62c328",  # invalid UTF-8 in a text string
        "5bffffffffffffffff",  # a byte string claiming 2^64 bytes
        "9bffffffffffffffff",  # an array claiming 2^64 items
        "1c",  # reserved additional information
        "81" * 70 + "00",  # nested deeper than MAX_DEPTH
    ],
)
def test_decode_refuses_malformed_input_with_codec_error(raw: str) -> None:
    with pytest.raises(codec.CodecError):
        codec.decode(bytes.fromhex(raw))
    with pytest.raises(codec.CodecError):
        codec.decode_canonical(bytes.fromhex(raw))


def test_encode_refuses_values_that_have_no_cbor_form() -> None:
    with pytest.raises(codec.CodecError):
        codec.encode(object())


@settings(max_examples=200, deadline=None)
@given(cbor_values)
def test_every_encoding_round_trips_canonically(value: Any) -> None:
    encoded = codec.encode(value)
    decoded = codec.decode_canonical(encoded)
    assert codec.encode(decoded) == encoded


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_either_decode_or_raise_codec_error(data: bytes) -> None:
    try:
        value = codec.decode_canonical(data)
    except codec.CodecError:
        return
    assert codec.encode(value) == data  # accepted means: exactly the deterministic encoding


def test_hex_helpers() -> None:
    assert codec.to_hex(b"\x00\xab") == "0x00ab"
    assert codec.from_hex("0x00ab") == b"\x00\xab"
    assert codec.from_hex("00AB") == b"\x00\xab"
    assert codec.from_hex("0X00ab", length=2) == b"\x00\xab"
    with pytest.raises(codec.CodecError, match="must be 3 bytes"):
        codec.from_hex("0x00ab", length=3)
    with pytest.raises(codec.CodecError, match="not valid hex"):
        codec.from_hex("0xzz")
    with pytest.raises(codec.CodecError, match="0x-hex string"):
        codec.from_hex(5)  # type: ignore[arg-type]


def test_jsonable_turns_bytes_into_hex_everywhere() -> None:
    value = {b"\x01": [b"\x02", (3, "x")], "k": {"n": None}, 7: True}
    assert codec.jsonable(value) == {"0x01": ["0x02", [3, "x"]], "k": {"n": None}, "7": True}


def test_sha256_is_sha256() -> None:
    assert codec.sha256(b"abc").hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
