from __future__ import annotations

import json
from pathlib import Path

import pytest

from exchange.stix import check_object, check_object_strict, format_timestamp, parse_timestamp
from tests.conftest import new_indicator

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "attack-dprk.json"


def test_a_valid_indicator_passes():
    assert check_object(new_indicator(1)) is None


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda o: o.pop("id"), "'id'"),
        (lambda o: o.update(id="malware--" + o["id"].split("--")[1]), "not of the form"),
        (lambda o: o.update(type="Indicator"), "'type'"),
        (lambda o: o.pop("spec_version"), "spec_version"),
        (lambda o: o.update(spec_version="2.0"), "only STIX 2.1"),
        (lambda o: o.pop("created"), "'created' is required"),
        (lambda o: o.pop("modified"), "'modified' is required"),
        (lambda o: o.update(modified="2024-01-01 00:00:00"), "not a STIX timestamp"),
        (lambda o: o.update(created="2024-02-30T00:00:00Z"), "not a valid date"),
        (lambda o: o.update(modified="2023-01-01T00:00:00Z"), "earlier than 'created'"),
        (lambda o: o.pop("pattern"), "'pattern' is required"),
        (lambda o: o.update(created_by_ref="not-an-id"), "created_by_ref"),
        (lambda o: o.update(object_marking_refs=["identity--7cbc2ebd-4e7e-4a41-9c3f-5b6d1c0f1e2a"]), "marking-definition"),
        (lambda o: o.update(confidence=101), "confidence"),
        (lambda o: o.update(granular_markings=[{"selectors": []}]), "selectors"),
        (lambda o: o.update(external_references=[{"url": "x"}]), "source_name"),
    ],
)
def test_each_defect_is_named(mutate, needle):
    obj = new_indicator(1)
    mutate(obj)
    problem = check_object(obj)
    assert problem is not None and needle in problem


def test_a_reference_seen_valid_before_does_not_vouch_for_another_value():
    """The checks remember identifiers that passed and property names' kinds: a later object is still judged on
    its own values, whatever type they are (a list or a dict where an identifier belongs is named, not a crash)."""
    ident = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
    green = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
    good = new_indicator(1, marking=green, created_by_ref=ident)
    assert check_object(good) is None and check_object(new_indicator(2, marking=green, created_by_ref=ident)) is None
    for bad in (ident + "\n", ident.upper(), [ident], {"id": ident}, None, 7, ident[:-1]):
        obj = new_indicator(3, marking=green, created_by_ref=bad)
        problem = check_object(obj)
        assert problem is not None and "created_by_ref" in problem, bad
        obj = new_indicator(4, created_by_ref=ident, object_marking_refs=[green, bad])
        assert check_object(obj) is not None, bad
    custom = new_indicator(5, created_by_ref=ident)
    custom["x_acme_sample_refs"] = [ident, "nope"]
    assert "x_acme_sample_refs" in (check_object(custom) or "")
    custom["x_acme_sample_refs"] = [ident]
    assert check_object(custom) is None


def test_non_objects_are_refused():
    for thing in (None, 1, "indicator", [1]):
        assert "not a STIX object" in check_object(thing)


def test_scos_need_no_created_or_spec_version():
    assert check_object({"type": "ipv4-addr", "id": "ipv4-addr--ff26c055-6336-5bc5-b98d-13d6226742dd", "value": "198.51.100.1"}) is None


def test_strict_mode_checks_the_pattern_grammar():
    obj = new_indicator(1, pattern="[file:hashes.'SHA-256' = 'not-a-hash']")
    assert check_object(obj) is None
    assert "stix2" in check_object_strict(obj)


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/real is not beside the repo")
def test_the_real_attack_bundle_passes_entirely():
    objects = json.loads(SHARED.read_text())["objects"]
    assert [o["id"] for o in objects if check_object(o) is not None] == []


def test_timestamps_round_trip_at_microsecond_precision():
    us = parse_timestamp("2023-04-26T12:34:56.789012345Z")
    assert format_timestamp(us) == "2023-04-26T12:34:56.789012Z"
    assert parse_timestamp("1970-01-01T00:00:00Z") == 0
