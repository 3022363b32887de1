"""STIX/TAXII timestamps are RFC 3339: ASCII digits only, nothing after the ``Z``."""

from __future__ import annotations

import pytest

from exchange.errors import BadRequest
from exchange.node.backend import parse_filters
from exchange.stix import check_object, parse_timestamp
from tests.conftest import new_indicator

ASCII_MESSAGE = "timestamp must use ASCII digits (RFC 3339)"

NON_ASCII_DIGITS = [
    "\uff12\uff10\uff12\uff16-11-01T00:00:00.000Z",  # full-width 2026
    "2026-11-01T00:00:00.\uff10\uff10\uff10Z",  # full-width fraction
    "\u0662\u0660\u0662\u0666-11-01T00:00:00Z",  # Arabic-Indic
    "2026-\u0967\u0967-01T00:00:00Z",  # Devanagari month
    "2026-11-01T00:00:0\U0001d7ceZ",  # mathematical bold zero
]


@pytest.mark.parametrize("value", NON_ASCII_DIGITS)
def test_non_ascii_digits_are_not_a_timestamp(value):
    with pytest.raises(ValueError, match=r"^timestamp must use ASCII digits \(RFC 3339\)$"):
        parse_timestamp(value)


@pytest.mark.parametrize("value", ["2026-11-01T00:00:00.000Z\n", "2026-11-01T00:00:00Z ", "x2026-11-01T00:00:00Z", "2026-11-01T00:00:00z"])
def test_nothing_but_the_timestamp_is_accepted(value):
    with pytest.raises(ValueError, match="is not a STIX timestamp"):
        parse_timestamp(value)


def test_ascii_timestamps_still_parse():
    assert parse_timestamp("1970-01-01T00:00:01.5Z") == 1_500_000
    assert parse_timestamp("2026-11-01T00:00:00.123456789Z") % 1_000_000 == 123_456


@pytest.mark.parametrize("prop", ["created", "modified", "valid_from"])
def test_an_object_with_a_non_ascii_timestamp_fails_with_one_clear_message(prop):
    obj = new_indicator(1, **{prop: NON_ASCII_DIGITS[0]})
    if prop == "created":
        obj["modified"] = NON_ASCII_DIGITS[0]
    assert check_object(obj) == f"'{prop}': {ASCII_MESSAGE}"


def test_added_after_and_match_version_with_non_ascii_digits_are_bad_requests():
    with pytest.raises(BadRequest, match=r"^added_after: timestamp must use ASCII digits \(RFC 3339\)$"):
        parse_filters("c", {"added_after": NON_ASCII_DIGITS[0]}, ("id", "type", "version", "spec_version"))
    with pytest.raises(BadRequest, match=r"^match\[version\]: timestamp must use ASCII digits"):
        parse_filters("c", {"match[version]": NON_ASCII_DIGITS[2]}, ("id", "type", "version", "spec_version"))


def test_identifiers_and_type_names_take_no_trailing_newline():
    from exchange.stix import is_identifier, is_type_name

    assert is_identifier("indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f")
    assert not is_identifier("indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f\n")
    assert is_type_name("indicator") and not is_type_name("indicator\n")
