"""The pure parts of the hostile-input limits: login throttle, nesting depth, identifiers, config defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from exchange.config import ApiRootConfig, AuthConfig, load_node
from exchange.node.accounts import LoginThrottle
from exchange.stix import deeper_than, is_identifier, is_type_name

S = 1_000_000  # microseconds


def test_throttle_counts_failures_within_the_window_only():
    t = LoginThrottle(limit=3, window=60)
    assert t.since(100 * S) == 40 * S


def test_throttle_waits_until_the_locking_failure_leaves_the_window():
    t = LoginThrottle(limit=3, window=60)
    assert t.retry_after(None, 103 * S) == 0  # fewer than 3 failures in the window
    assert t.retry_after(100 * S, 103 * S) == 57  # the 3rd newest failure (t=100) is 60 s old at t=160
    assert t.retry_after(100 * S, 159 * S + 1) == 1  # rounded up: never "retry after 0"
    assert t.retry_after(100 * S, 160 * S) == 0  # it left the window: one more try


def test_throttle_keys_names_by_their_first_256_characters_without_nul():
    assert LoginThrottle.key("a" * 10_000) == "a" * 256
    assert LoginThrottle.key("jp") == "jp"
    assert "\x00" not in LoginThrottle.key("jp\x00")  # PostgreSQL text cannot hold NUL


def test_depth_counts_container_levels():
    assert not deeper_than("scalar", 0)
    assert deeper_than({}, 0) and not deeper_than({}, 1)
    assert deeper_than([[[]]], 2) and not deeper_than([[[]]], 3)
    assert deeper_than({"a": [{"b": 1}]}, 2) and not deeper_than({"a": [{"b": 1}]}, 3)
    deep: list = []
    for _ in range(100_000):  # far past the recursion limit: iterative
        deep = [deep]
    assert deeper_than(deep, 64)


@pytest.mark.parametrize(
    "value,ok",
    [
        ("indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f", True),
        ("x-custom-type--8E2E2D2B-17D4-4CBF-938F-98EE46B3CD3F", True),
        ("../../etc/passwd", False),
        ("indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f\x00", False),
        ("indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f/../x", False),
        ("Indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f", False),
        ("a" * 280 + "--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f", False),
        (None, False),
    ],
)
def test_identifiers(value, ok):
    assert is_identifier(value) is ok


def test_type_names():
    assert is_type_name("indicator") and is_type_name("x-acme-thing")
    assert not is_type_name("in") and not is_type_name("Indicator") and not is_type_name("x\x00y") and not is_type_name("a" * 251)


def test_limits_have_defaults_so_existing_node_files_stay_valid():
    root = load_node("us").config.api_root
    assert (root.max_objects_per_envelope, root.max_object_depth, root.max_json_values) == (10_000, 64, 500_000)
    auth = load_node("rok").config.auth
    assert (auth.max_failed_logins, auth.failed_login_window) == (10, 300.0)


@pytest.mark.parametrize("field,value", [("max_objects_per_envelope", 0), ("max_object_depth", 2), ("max_json_values", -1)])
def test_nonsense_limits_are_refused(field, value):
    with pytest.raises(ValidationError):
        ApiRootConfig(path="us", title="t", **{field: value})
    with pytest.raises(ValidationError):
        AuthConfig(max_failed_logins=0)
