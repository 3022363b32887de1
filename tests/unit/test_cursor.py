from __future__ import annotations

import pytest

from exchange.errors import BadRequest
from exchange.node import cursor

SECRET = b"k" * 32


def test_round_trip_gives_the_position_back():
    token = cursor.encode(SECRET, 1_700_000_000_000_000, 42, "digest")
    assert cursor.decode(SECRET, token, "digest") == (1_700_000_000_000_000, 42)


def test_a_token_signed_with_another_secret_is_refused():
    token = cursor.encode(b"x" * 32, 1, 2, "d")
    with pytest.raises(BadRequest, match="signature"):
        cursor.decode(SECRET, token, "d")


def test_a_token_for_other_filters_is_refused():
    token = cursor.encode(SECRET, 1, 2, "d1")
    with pytest.raises(BadRequest, match="other filters"):
        cursor.decode(SECRET, token, "d2")


@pytest.mark.parametrize("token", ["", "nodot", "a.b.c", "!!!.???", "x" * 600, "eyJ9.AAAA"])
def test_garbage_is_refused(token):
    with pytest.raises(BadRequest):
        cursor.decode(SECRET, token, "d")


def test_digest_ignores_nothing_it_is_given():
    assert cursor.request_digest(["objects", "c", None, [["a"]]]) != cursor.request_digest(["objects", "c", None, [["b"]]])


def test_a_respelled_token_is_refused():
    # base64url of 16 bytes ends in a character with 4 unused bits: setting one spells the same bytes
    token = cursor.encode(SECRET, 1, 2, "d")
    body, mac = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    respelled = mac[:-1] + alphabet[alphabet.index(mac[-1]) | 1]
    assert respelled != mac
    with pytest.raises(BadRequest):
        cursor.decode(SECRET, body + "." + respelled, "d")
