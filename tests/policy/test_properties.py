"""Property-based policy tests (hypothesis) over generated objects and markings."""

from __future__ import annotations

import copy
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.policy import companions, evaluate, load_policy
from exchange.policy import markings as mk
from exchange.policy.engine import _refs_of

POLICY = load_policy()
NOW = "2025-01-01T00:00:00Z"
PARTIES = ["us", "rok", "jp", "joint", "cri", "public"]
SENDERS = ["us", "rok"]
CREATORS = [POLICY.parties[p].identity for p in ("us", "rok", "jp", "joint")] + [
    "identity--5b1d3c2e-7a44-4d0e-9a51-2f8f4f3f6a10", None]
VENDOR = "identity--5b1d3c2e-7a44-4d0e-9a51-2f8f4f3f6a10"
IEP_ID = "marking-definition--da05d443-ad8d-46fc-abf5-31d3d00290f1"
MARKING_POOL = list(mk.TLP2_IDS.values()) + list(mk.TLP1_MARKINGS) + [IEP_ID]
RED_IDS = {mk.TLP2_IDS[mk.RED], "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed"}
STRICT_OR_RED = RED_IDS | {mk.TLP2_IDS[mk.AMBER_STRICT]}
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def iep_marking(draw):
    return {
        "type": "marking-definition", "spec_version": "2.1", "id": IEP_ID, "created": "2024-01-10T00:00:00.000Z",
        "name": "IEP", "extensions": {mk.IEP2_EXTENSION_ID: {
            "extension_type": "property-extension",
            "encrypt_in_transit": draw(st.sampled_from(["may", "must"])),
            "permitted_actions": draw(st.sampled_from(mk.IEP_ENUMS["permitted_actions"])),
            "affected_party_notifications": draw(st.sampled_from(["may", "must-not"])),
            "tlp": draw(st.sampled_from(["white", "green", "amber", "red"])),
            "provider_attribution": draw(st.sampled_from(["may", "must", "must-not"])),
            "unmodified_resale": draw(st.sampled_from(["may", "must-not"])),
            "iep_id": "0224bfdf-ea3a-49c3-96f6-66d908bb1845", "iep_version": 2.0, "description": "generated",
            "start_date": "2022-10-01T00:00:00Z",
            **({"end_date": "2023-01-01T00:00:00Z"} if draw(st.booleans()) and draw(st.booleans()) else {}),
        }},
    }


markings_st = st.lists(st.sampled_from(MARKING_POOL), max_size=3, unique=True)


@st.composite
def batch(draw):
    """A batch of indicators, threat actors, identities, relationships, reports and sightings."""
    n = draw(st.integers(min_value=1, max_value=8))
    objs: list[dict] = [draw(iep_marking())]
    base = []
    for i in range(n):
        stype = draw(st.sampled_from(["indicator", "threat-actor", "identity", "vulnerability", "incident"]))
        obj = {"type": stype, "spec_version": "2.1", "id": f"{stype}--{uuid.UUID(int=draw(st.integers(0, 2**64)) , version=4)}",
               "created": "2024-01-01T00:00:00.000Z", "modified": "2024-01-01T00:00:00.000Z", "name": f"o{i}",
               "description": "text"}
        if stype == "indicator":
            obj.update(pattern="[file:hashes.MD5 = '0123456789abcdef0123456789abcdef']", pattern_type="stix",
                       valid_from="2024-01-01T00:00:00Z")
            obj["labels"] = draw(st.sampled_from([["ransomware"], ["dprk"]]))
        if stype == "incident" and draw(st.booleans()):
            obj["labels"] = ["critical-infrastructure"]
        creator = draw(st.sampled_from(CREATORS))
        if creator:
            obj["created_by_ref"] = creator
        marks = draw(markings_st)
        if marks:
            obj["object_marking_refs"] = marks
        if draw(st.booleans()):
            obj["granular_markings"] = [{"marking_ref": draw(st.sampled_from(MARKING_POOL)), "selectors": ["description"]}]
        base.append(obj)
    objs.extend(base)
    ids = [o["id"] for o in base]
    for _j in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["relationship", "report", "sighting"]))
        common = {"spec_version": "2.1", "created": "2024-01-01T00:00:00.000Z", "modified": "2024-01-01T00:00:00.000Z"}
        creator = draw(st.sampled_from(CREATORS))
        if creator:
            common["created_by_ref"] = creator
        marks = draw(markings_st)
        if marks:
            common["object_marking_refs"] = marks
        oid = f"{kind}--{uuid.UUID(int=draw(st.integers(0, 2**64)), version=4)}"
        if kind == "relationship":
            objs.append({"type": kind, "id": oid, **common, "relationship_type": draw(st.sampled_from(["indicates", "attributed-to"])),
                         "source_ref": draw(st.sampled_from(ids)), "target_ref": draw(st.sampled_from(ids))})
        elif kind == "report":
            objs.append({"type": kind, "id": oid, **common, "name": "r", "published": "2024-01-02T00:00:00Z",
                         "object_refs": draw(st.lists(st.sampled_from(ids), min_size=1, max_size=4, unique=True))})
        else:
            objs.append({"type": kind, "id": oid, **common, "sighting_of_ref": draw(st.sampled_from(ids)),
                         "where_sighted_refs": draw(st.lists(st.sampled_from(ids), max_size=2, unique=True))})
    if draw(st.booleans()):
        objs.append({"type": "identity", "spec_version": "2.1", "id": VENDOR, "created": "2024-01-01T00:00:00.000Z",
                     "modified": "2024-01-01T00:00:00.000Z", "name": "Vendor", "identity_class": "organization"})
    # a later version of one object with different markings
    if draw(st.booleans()):
        again = copy.deepcopy(draw(st.sampled_from(base)))
        again["modified"] = "2024-06-01T00:00:00.000Z"
        again["object_marking_refs"] = draw(markings_st) or [mk.TLP2_IDS[mk.GREEN]]
        objs.append(again)
    return objs


route = st.tuples(st.sampled_from(SENDERS), st.sampled_from(PARTIES)).filter(lambda r: r[0] != r[1])


def _levels(refs, iep):
    out = []
    for r in refs or ():
        if r in mk.LEVEL_OF:
            out.append(mk.LEVEL_OF[r])
        elif r == IEP_ID:
            out.append(mk.IEP_TLP_LEVEL[iep["extensions"][mk.IEP2_EXTENSION_ID]["tlp"]])
    return out


@SETTINGS
@given(batch(), route)
def test_nothing_marked_red_is_ever_shared(objs, r):
    decisions = evaluate(objs, POLICY, *r, now=NOW)
    for obj, d in zip(objs, decisions, strict=True):
        if mk.RED in _levels(obj.get("object_marking_refs"), objs[0]):
            assert d.decision == "withhold", (obj, d)
        # a field marked RED never leaves in a shared copy
        if d.shared is not None:
            for gm in d.shared.get("granular_markings", ()):
                assert gm["marking_ref"] not in RED_IDS, (obj, d)


@SETTINGS
@given(batch(), route)
def test_amber_strict_and_red_received_never_go_onward(objs, r):
    sender, recipient = r
    own = {POLICY.parties[sender].identity, POLICY.parties["joint"].identity}
    decisions = evaluate(objs, POLICY, sender, recipient, now=NOW)
    for obj, d in zip(objs, decisions, strict=True):
        if obj.get("created_by_ref") in own:
            continue
        levels = _levels(obj.get("object_marking_refs"), objs[0])
        if levels and max(levels) >= mk.AMBER_STRICT:
            assert d.decision == "withhold"


@SETTINGS
@given(batch(), route)
def test_amber_strict_never_reaches_partner(objs, r):
    decisions = evaluate(objs, POLICY, *r, now=NOW)
    for obj, d in zip(objs, decisions, strict=True):
        if set(obj.get("object_marking_refs") or ()) & STRICT_OR_RED:
            assert d.shared is None


@SETTINGS
@given(batch(), route)
def test_shared_references_resolve_within_what_is_shared(objs, r):
    decisions = evaluate(objs, POLICY, *r, now=NOW)
    shared_ids = {d.id for d in decisions if d.shared is not None}
    extra = companions(decisions, objs, POLICY, *r, now=NOW)
    held_by_all = set(mk.OFFICIAL_OBJECTS) | {p.identity for p in POLICY.parties.values() if p.identity}
    available = shared_ids | {o["id"] for o in extra} | held_by_all
    for d in decisions:
        if d.shared is None:
            continue
        for key, target in _refs_of(d.shared):
            assert target in available, (d.id, key, target, d)


@SETTINGS
@given(batch(), route)
def test_evaluation_is_deterministic_and_never_mutates_input(objs, r):
    before = copy.deepcopy(objs)
    first = evaluate(objs, POLICY, *r, now=NOW)
    assert objs == before
    second = evaluate(copy.deepcopy(objs), POLICY, *r, now=NOW)
    assert [(d.id, d.decision, d.clauses, d.removed_fields, d.shared) for d in first] == [
        (d.id, d.decision, d.clauses, d.removed_fields, d.shared) for d in second]
    assert len(first) == len(objs) and [d.id for d in first] == [o["id"] for o in objs]


@SETTINGS
@given(batch(), route)
def test_every_decision_names_clauses_of_the_policy(objs, r):
    ids = set(POLICY.clause_ids)
    for d in evaluate(objs, POLICY, *r, now=NOW):
        assert d.clauses and set(d.clauses) <= ids
        assert (d.shared is None) == (d.decision == "withhold")
        assert bool(d.removed_fields) == (d.decision == "redact")
