"""The pure parts of the lifecycle: what a withdrawal carries, when one is due, corrected versions, report counts."""

from __future__ import annotations

import uuid

import orjson

from exchange.sharing.lifecycle import corrected, due, lifecycle_report, withdrawal_of
from exchange.stix import check_object, parse_timestamp
from exchange.storage.store import Selection

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


ROK = "identity--99da2a3b-3031-468d-b273-2f29aec7f816"
MITRE = "identity--c78cb6e5-0c4b-4611-8297-d1b8b55e40b5"
AMBER = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"
CLEAR = "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487"


def _node(tmp_path):
    from exchange.node.ops import open_node

    return open_node("us", data_dir=tmp_path / "us")


def _obj(creator: str, marking: str, modified: str = "2025-01-02T00:00:00.000Z", **extra) -> dict:
    return {**HELD, "id": f"indicator--{uuid.uuid4()}", "created_by_ref": creator, "modified": modified, "object_marking_refs": [marking], **extra}


def test_a_partners_object_no_longer_releasable_onward_is_removed_with_a_withdrawal_note(tmp_path):
    from exchange.sharing.lifecycle import is_withdrawal_note
    from exchange.sharing.release import release_all

    opened = _node(tmp_path)
    try:
        cfg = opened.node.config
        inbox, jp = cfg.partner_collection("rok", "partner-inbox").id, cfg.partner_collection("jp", "partner-read").id
        green = _obj(ROK, GREEN)
        opened.store.add_objects(inbox, [green])
        release_all(opened)
        assert opened.store.latest(jp, green["id"]) == green
        opened.store.add_objects(inbox, [dict(green, modified="2025-03-01T00:00:00.000Z", object_marking_refs=[AMBER])])
        assert release_all(opened)["jp"].withdrawn == 1
        assert opened.store.latest(jp, green["id"]) is None, "only ROK may version ROK's object: removed"
        notes = [o for o in (orjson.loads(r.body) for r in opened.store.iter_rows(Selection(jp, types=("note",)))) if is_withdrawal_note(o)]
        assert [n["object_refs"] for n in notes] == [[green["id"]]] and notes[0]["created_by_ref"] == cfg.identity
        assert notes[0]["object_marking_refs"] == [GREEN] and check_object(notes[0]) is None
    finally:
        opened.close()


def test_a_public_sources_object_deleted_here_is_removed_from_the_partner(tmp_path):
    from exchange.sharing.release import release_all

    opened = _node(tmp_path)
    try:
        cfg = opened.node.config
        own, rok = cfg.own_collection.id, cfg.partner_collection("rok", "partner-read").id
        mitre = _obj(MITRE, CLEAR)
        opened.store.add_objects(own, [mitre])
        release_all(opened)
        assert opened.store.latest(rok, mitre["id"]) == mitre
        opened.store.delete_object(Selection(own, versions=("all",)), mitre["id"])
        assert release_all(opened)["rok"].withdrawn == 1
        assert opened.store.latest(rok, mitre["id"]) is None
    finally:
        opened.close()


def test_a_partners_withdrawal_note_removes_what_was_relayed_from_it(tmp_path):
    from exchange.sharing.lifecycle import withdrawal_note
    from exchange.sharing.release import release_all

    opened = _node(tmp_path)
    try:
        cfg = opened.node.config
        inbox, jp = cfg.partner_collection("rok", "partner-inbox").id, cfg.partner_collection("jp", "partner-read").id
        relayed = _obj(MITRE, CLEAR)  # a public object ROK sent, relayed to Japan from ROK's inbox
        opened.store.add_objects(inbox, [relayed])
        release_all(opened)
        assert opened.store.latest(jp, relayed["id"]) is not None
        opened.store.add_objects(inbox, [withdrawal_note(ROK, "ROK node", relayed, "deleted")])
        release_all(opened)
        assert opened.store.latest(jp, relayed["id"]) is None
    finally:
        opened.close()
