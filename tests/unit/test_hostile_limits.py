"""The pure parts of the hostile-input limits: login throttle, nesting depth, identifiers, config defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from exchange.accounts import LoginThrottle
from exchange.config import ApiRootConfig, AuthConfig, load_node
from exchange.stix import deeper_than, is_identifier, is_type_name


def test_throttle_locks_a_name_after_the_limit_within_the_window():
    t = LoginThrottle(limit=3, window=60)
    for i in range(2):
        t.failed("jp", now=100 + i)
    assert t.retry_after("jp", now=102) == 0
    t.failed("jp", now=102)
    assert t.retry_after("jp", now=103) == 57  # until the first failure (t=100) is 60 s old
    assert t.retry_after("analyst", now=103) == 0  # per name
    assert t.retry_after("jp", now=160.5) == 0  # the first failure left the window: one more try
    t.failed("jp", now=160.8)
    assert t.retry_after("jp", now=160.8) == 1  # locked again until the second failure (t=101) is 60 s old


def test_throttle_failures_outside_the_window_do_not_count():
    t = LoginThrottle(limit=2, window=10)
    t.failed("x", now=0)
    t.failed("x", now=11)
    assert t.retry_after("x", now=11) == 0


def test_throttle_treats_unknown_and_long_names_alike_and_stays_bounded():
    t = LoginThrottle(limit=1, window=10, max_names=100)
    t.failed("a" * 10_000, now=0)
    assert t.retry_after("a" * 10_000, now=1) == 9
    for i in range(1000):
        t.failed(f"spray-{i}", now=1)
    assert len(t._failures) <= 100


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
