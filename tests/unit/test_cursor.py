from __future__ import annotations

import base64
import hashlib
import hmac
import struct

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.errors import BadRequest
from exchange.node import cursor

SECRET = b"k" * 32
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
INT64 = st.integers(min_value=0, max_value=2**63 - 1)


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw(token: str) -> bytes:
    """Every byte a token carries, whatever its layout (one blob, or ``body.mac`` as before v2)."""
    return b"".join(_unb64(part) for part in token.split("."))


def _spellings(value: int) -> list[bytes]:
    """Ways a position could show in a token's bytes: decimal (JSON), 8-byte big and little endian."""
    return [str(value).encode(), value.to_bytes(8, "big"), value.to_bytes(8, "little")]


def _old_token(secret: bytes, date_added: int, seq: int, digest: str) -> str:
    """A token as nodes minted it before cursor v2: ``base64(JSON).base64(HMAC-SHA256[:16])``."""
    payload = orjson.dumps([date_added, seq, digest])
    mac = hmac.new(secret, payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _flip(token: str, byte: int, bit: int = 0) -> str:
    raw = bytearray(_unb64(token))
    raw[byte] ^= 1 << bit
    return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


def test_round_trip_gives_the_position_back():
    token = cursor.encode(SECRET, 1_700_000_000_000_000, 42, "digest")
    assert cursor.decode(SECRET, token, "digest") == (1_700_000_000_000_000, 42)


def test_the_token_shows_neither_the_row_sequence_nor_date_added():
    date_added, seq = 1_700_000_000_123_456, 987_654_321
    token = cursor.encode(SECRET, date_added, seq, "digest")
    raw = _raw(token)
    for value in (date_added, seq):
        for spelling in _spellings(value):
            assert spelling not in raw, f"{value} readable in the token as {spelling!r}"
    assert b"digest" not in raw


def test_the_token_is_one_url_safe_blob_of_fixed_reasonable_length():
    short = cursor.encode(SECRET, 1, 1, "d")
    long = cursor.encode(SECRET, 2**63 - 1, 2**63 - 1, "d" * 24)
    assert len(short) == len(long) < 100  # the length says nothing about how far the node has counted
    for token in (short, long):
        assert set(token) <= set(B64), token  # no padding, no '.', nothing to escape in a query string


def test_the_same_position_encodes_differently_each_time():
    assert cursor.encode(SECRET, 1, 2, "d") != cursor.encode(SECRET, 1, 2, "d")


def test_a_token_encrypted_with_another_secret_is_refused():
    token = cursor.encode(b"x" * 32, 1, 2, "d")
    with pytest.raises(BadRequest, match="start again without 'next'"):
        cursor.decode(SECRET, token, "d")


def test_a_token_for_other_filters_is_refused():
    token = cursor.encode(SECRET, 1, 2, "d1")
    with pytest.raises(BadRequest, match="not valid for this request"):
        cursor.decode(SECRET, token, "d2")


def test_tampering_with_any_byte_is_refused():
    token = cursor.encode(SECRET, 1_700_000_000_000_000, 42, "d")
    for i in range(len(_unb64(token))):
        for bit in (0, 7):
            with pytest.raises(BadRequest):
                cursor.decode(SECRET, _flip(token, i, bit), "d")


def test_tampering_with_any_character_is_refused():
    token = cursor.encode(SECRET, 1_700_000_000_000_000, 42, "d")
    for i, ch in enumerate(token):
        other = B64[(B64.index(ch) + 1) % 64]
        with pytest.raises(BadRequest):
            cursor.decode(SECRET, token[:i] + other + token[i + 1 :], "d")


def test_a_token_from_before_the_change_is_refused_with_advice():
    old = _old_token(SECRET, 1_700_000_000_000_000, 42, "d")
    with pytest.raises(BadRequest, match="start again without 'next'") as caught:
        cursor.decode(SECRET, old, "d")
    assert caught.value.status == 400


def test_a_token_with_an_unknown_version_is_refused():
    token = cursor.encode(SECRET, 1, 2, "d")
    raw = bytearray(_unb64(token))
    for version in (0, 1, 3, 0xFF):
        raw[0] = version
        with pytest.raises(BadRequest):
            cursor.decode(SECRET, base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("="), "d")


@pytest.mark.parametrize(
    "token",
    ["", "nodot", "a.b.c", "!!!.???", "x" * 600, "eyJ9.AAAA", "A", "AA", "AAAA" * 15, "\u0391" * 60, None, 42, b"bytes"],
)
def test_garbage_is_refused(token):
    with pytest.raises(BadRequest):
        cursor.decode(SECRET, token, "d")


def test_truncated_extended_or_padded_tokens_are_refused():
    token = cursor.encode(SECRET, 1, 2, "d")
    for bad in (token[:-1], token[:-4], token[1:], token + "A", token + "AAAA", token + "=", token + "==", " " + token, token + "\x00"):
        with pytest.raises(BadRequest):
            cursor.decode(SECRET, bad, "d")


def test_a_position_outside_64_bits_cannot_be_encoded():
    with pytest.raises(ValueError):
        cursor.encode(SECRET, 2**64, 1, "d")


def test_digest_ignores_nothing_it_is_given():
    assert cursor.request_digest(["objects", "c", None, [["a"]]]) != cursor.request_digest(["objects", "c", None, [["b"]]])


@settings(max_examples=300, deadline=None)
@given(date_added=INT64, seq=INT64, digest=st.text(min_size=1, max_size=40))
def test_any_position_round_trips_and_stays_unreadable(date_added, seq, digest):
    token = cursor.encode(SECRET, date_added, seq, digest)
    assert cursor.decode(SECRET, token, digest) == (date_added, seq)
    assert len(token) < 100 and set(token) <= set(B64)
    raw = _raw(token)
    plain = struct.pack(">qq", date_added, seq)
    assert plain not in raw
    for value in (date_added, seq):
        assert value.to_bytes(8, "big") not in raw and value.to_bytes(8, "little") not in raw
        if value >= 10**8:  # shorter decimals turn up in random bytes now and then
            assert str(value).encode() not in raw
    with pytest.raises(BadRequest):
        cursor.decode(SECRET, token, digest + "x")


@settings(max_examples=200, deadline=None)
@given(date_added=INT64, seq=INT64, data=st.data())
def test_any_flipped_bit_of_any_token_is_refused(date_added, seq, data):
    token = cursor.encode(SECRET, date_added, seq, "d")
    byte = data.draw(st.integers(0, len(_unb64(token)) - 1))
    bit = data.draw(st.integers(0, 7))
    with pytest.raises(BadRequest):
        cursor.decode(SECRET, _flip(token, byte, bit), "d")


@settings(max_examples=100, deadline=None)
@given(date_added=INT64, seq=INT64)
def test_any_old_format_token_is_refused(date_added, seq):
    with pytest.raises(BadRequest, match="start again without 'next'"):
        cursor.decode(SECRET, _old_token(SECRET, date_added, seq, "d"), "d")
