"""``evaluate_many`` (issue 21): one evaluation per group of recipients on equivalent routes, the same answers as ``evaluate``."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from exchange.policy import evaluate, evaluate_many, load_policy
from exchange.policy import markings as mk
from tests.policy.test_properties import NOW, POLICY, SETTINGS, batch

REPO = Path(__file__).resolve().parents[2]
EXTRA = ["p1", "p2", "p3"]


def _policy_with_partners() -> object:
    """The repository's policy with three more parties in the bilateral and trilateral communities (as ``fanout_bench``)."""
    root = Path(tempfile.mkdtemp(prefix="route-groups-"))
    try:
        shutil.copytree(REPO / "policies", root / "policies")
        path = root / "policies" / "parties.yaml"
        parties = yaml.safe_load(path.read_text())
        for i, name in enumerate(EXTRA, start=1):
            parties["parties"][name] = {"name": f"Partner {i}", "identity": f"identity--00000000-0000-4000-8000-00000000000{i}"}
            for community in ("bilateral", "trilateral"):
                parties["communities"][community]["members"].append(name)
        path.write_text(yaml.safe_dump(parties, sort_keys=False))
        return load_policy(root / "policies")
    finally:
        shutil.rmtree(root, ignore_errors=True)


WIDE = _policy_with_partners()


def _fields(decisions):
    return [(d.id, d.type, d.version, d.decision, d.clauses, d.reason, d.shared, d.removed_fields) for d in decisions]


def _check_same_as_evaluate(policy, objs, sender, recipients, held, producers):
    judged = evaluate_many(objs, policy, sender, recipients, now=NOW, held=held, producers=producers)
    seen = [r for g in judged for r in g.recipients]
    assert sorted(seen) == sorted(recipients) and len(seen) == len(set(seen))
    for g in judged:
        for r in g.recipients:
            alone = evaluate(objs, policy, sender, r, now=NOW, held=held.get(r, ()), producers=producers)
            assert _fields(g.decisions[r]) == _fields(alone), r
    return judged


@SETTINGS
@given(batch(), st.sampled_from(["us", "rok"]), st.data())
def test_many_recipients_get_exactly_what_each_would_get_alone(objs, sender, data):
    recipients = [p for p in ("us", "rok", "jp", "joint", "cri", "public") if p != sender]
    ids = [o["id"] for o in objs]
    held = {r: set(data.draw(st.lists(st.sampled_from(ids), max_size=3))) for r in recipients}
    producers = {i: data.draw(st.sampled_from([POLICY.parties["us"].identity, POLICY.parties["jp"].identity])) for i in ids[:2]}
    _check_same_as_evaluate(POLICY, objs, sender, recipients, held, producers)


@SETTINGS
@given(batch(), st.data())
def test_partners_on_the_same_route_are_judged_once_and_named_in_their_own_reasons(objs, data):
    recipients = ["rok", *EXTRA]
    same = data.draw(st.booleans())
    ids = [o["id"] for o in objs]
    held = {r: ({ids[0]} if same or r != "p3" else set()) for r in recipients}
    judged = _check_same_as_evaluate(WIDE, objs, "us", recipients, held, {})
    groups = {r: g.recipients for g in judged for r in g.recipients}
    sighting = any(o["type"] == "sighting" for o in objs)
    if not sighting:  # the identities matter only to sighting-to-producer
        assert set(groups["p1"]) >= {"p1", "p2"}  # rok has communities of its own (CRI, ...): maybe another route
        assert ("p3" in groups["p1"]) == same
    for g in judged:
        for r in g.recipients:
            for d in g.decisions[r]:
                assert "\x00" not in d.reason


def test_a_name_in_another_role_is_left_as_it_is():
    """p1's own identity released to p2 names p1 as a party, not as the recipient."""
    ident = {"type": "identity", "spec_version": "2.1", "id": WIDE.parties["p1"].identity, "created": "2024-01-01T00:00:00.000Z",
             "modified": "2024-01-01T00:00:00.000Z", "name": "Partner 1", "identity_class": "organization"}
    amber = {"type": "indicator", "spec_version": "2.1", "id": "indicator--6b8a2a63-0c3e-4b59-a4a4-7b0b1b2c3d4e",
             "created": "2024-01-01T00:00:00.000Z", "modified": "2024-01-01T00:00:00.000Z", "pattern_type": "stix",
             "pattern": "[domain-name:value = 'x.example']", "valid_from": "2024-01-01T00:00:00Z",
             "created_by_ref": WIDE.parties["us"].identity, "object_marking_refs": [mk.TLP2_IDS[mk.AMBER]]}
    judged = evaluate_many([ident, amber], WIDE, "us", ["p1", "p2"], now=NOW)
    assert len(judged) == 1 and judged[0].recipients == ("p1", "p2")
    for r in ("p1", "p2"):
        party, own = judged[0].decisions[r]
        assert "'p1'" in party.reason and r in own.reason
        assert _fields(judged[0].decisions[r]) == _fields(evaluate([ident, amber], WIDE, "us", r, now=NOW))


def test_a_sighting_goes_only_to_its_producer_whoever_shares_its_route():
    """cert.sighting-to-producer compares the recipient's identity: p1 and p2 are judged apart when a sighting is in the input."""
    sighted = "indicator--1f0e8a63-0c3e-4b59-a4a4-7b0b1b2c3d4e"
    sighting = {"type": "sighting", "spec_version": "2.1", "id": "sighting--2a8a2a63-0c3e-4b59-a4a4-7b0b1b2c3d4e",
                "created": "2024-01-01T00:00:00.000Z", "modified": "2024-01-01T00:00:00.000Z", "sighting_of_ref": sighted,
                "created_by_ref": WIDE.parties["us"].identity, "object_marking_refs": [mk.TLP2_IDS[mk.AMBER]]}
    producers = {sighted: WIDE.parties["p1"].identity}
    held = {r: {sighted} for r in ("p1", "p2")}
    judged = _check_same_as_evaluate(WIDE, [sighting], "us", ["p1", "p2"], held, producers)
    assert len(judged) == 2
    by = {r: g.decisions[r][0].decision for g in judged for r in g.recipients}
    assert by["p2"] == "withhold" and by["p1"] != "withhold"
