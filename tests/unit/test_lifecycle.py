"""The pure parts of the lifecycle: what a withdrawal carries, when one is due, corrected versions, report counts."""

from __future__ import annotations

from exchange.sharing.lifecycle import corrected, due, lifecycle_report, withdrawal_of
from exchange.stix import check_object, parse_timestamp

GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
HELD = {
    "type": "indicator", "spec_version": "2.1", "id": "indicator--6b1c3a8e-2f0e-4b4a-9d7c-0e1f2a3b4c5d",
    "created": "2025-01-01T00:00:00.000Z", "modified": "2025-01-02T00:00:00.000Z",
    "created_by_ref": "identity--371ec1f1-c078-4fd3-9eff-c233c753c388", "name": "C2", "description": "content",
    "indicator_types": ["malicious-activity"], "pattern": "[ipv4-addr:value = '198.51.100.1']", "pattern_type": "stix",
    "valid_from": "2025-01-01T00:00:00Z", "labels": ["network"], "object_marking_refs": [GREEN],
    "external_references": [{"source_name": "x"}],
}


def test_a_withdrawal_carries_only_the_required_properties_the_creator_and_the_held_marking():
    w = withdrawal_of(HELD, after="2025-02-01T00:00:00.000Z")
    assert set(w) == {"type", "spec_version", "id", "created", "modified", "created_by_ref", "pattern", "pattern_type",
                      "valid_from", "object_marking_refs", "revoked"}
    assert w["revoked"] is True and w["object_marking_refs"] == [GREEN]
    assert parse_timestamp(w["modified"]) == parse_timestamp("2025-02-01T00:00:00.000Z") + 1
    assert check_object(w) is None
    assert withdrawal_of(HELD) == withdrawal_of(dict(HELD)), "deterministic: both joint members build the same one"


def test_a_withdrawal_is_due_only_when_the_partner_holds_a_version_it_may_no_longer_have():
    assert due(None, False, True) == "none"
    assert due(HELD, True, True) == "none"
    assert due(HELD, False, True) == "revoke"
    assert due(HELD, False, False) == "remove", "only the creator versions an object"
    assert due(withdrawal_of(HELD), False, True) == "none", "already withdrawn"
    assert due({"type": "ipv4-addr", "id": "ipv4-addr--1", "value": "198.51.100.1"}, False, True) == "remove"


def test_a_correction_is_a_later_version_with_millisecond_precision():
    fixed = corrected(HELD, ["2025-01-02T00:00:00.000Z", "2025-01-03T00:00:00.000Z"], "2025-01-01T00:00:00.000Z")
    assert fixed["modified"] == "2025-01-03T00:00:00.001Z" and fixed["description"] == HELD["description"]
    assert corrected(HELD, ["2025-01-02T00:00:00.000Z"], "2026-05-05T10:00:00.123456Z")["modified"] == "2026-05-05T10:00:00.123Z"


def test_the_report_counts_withdrawals_per_direction_and_conflicts_per_node():
    logs = {"us": [{"event": "withdraw", "partner": "rok"}, {"event": "withdraw", "partner": "jp"}, {"event": "conflict", "partner": None},
                   {"event": "share", "partner": "rok"}],
            "rok": [{"event": "withdraw", "partner": "jp"}]}
    assert lifecycle_report(logs) == {"withdrawn": {"rok->jp": 1, "us->jp": 1, "us->rok": 1}, "conflicts": {"us": 1}}
