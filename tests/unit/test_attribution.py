"""Joint attribution: stances, joint status, deterministic joint products, concurrence (pure functions)."""

from __future__ import annotations

import copy

import pytest

from exchange.errors import BadRequest
from exchange.policy import evaluate, load_policy
from exchange.sharing import attribution as attr
from exchange.stix import check_object

POLICY = load_policy()
PARTIES = attr.Parties.from_policy(POLICY, "identity--9909a483-dc4f-404a-96a0-33f5fd316e10")
US = POLICY.parties["us"].identity
ROK = POLICY.parties["rok"].identity
JOINT = POLICY.parties["joint"].identity
LAZARUS = {"type": "intrusion-set", "spec_version": "2.1", "id": "intrusion-set--c93fccb1-e8e8-42cf-ae33-2ad1d183913a",
           "created": "2017-05-31T21:31:45.629Z", "modified": "2024-01-01T00:00:00.000Z", "name": "Lazarus Group",
           "object_marking_refs": [attr.TLP_CLEAR], "created_by_ref": US}
RGB = {"type": "threat-actor", "spec_version": "2.1", "id": "threat-actor--64b0d10e-a214-53f8-b996-a631ec20d718",
       "created": "2024-01-01T00:00:00.000Z", "modified": "2024-01-01T00:00:00.000Z",
       "name": "DPRK Reconnaissance General Bureau (exercise)", "object_marking_refs": [attr.TLP_CLEAR], "created_by_ref": US}
MARKS = [attr.TLP_AMBER]
T0 = "2025-03-01T10:00:00.000Z"


def proposal(confidence: int = 80, now: str = T0, previous: dict | None = None) -> dict:
    return attr.build_proposal(creator=US, subject=LAZARUS, actor=RGB, confidence=confidence, rationale="sources",
                               markings=MARKS, now=now, previous=previous)


def opinion(rel: dict, who: str, value: str, now: str, confidence: int | None = None) -> dict:
    return attr.build_opinion(creator=who, relationship=rel, opinion=value, confidence=confidence, explanation=None,
                              markings=MARKS, now=now)


def stances(a: attr.Assessment) -> dict[str, str | None]:
    return {s.party: s.opinion for s in a.stances}


def test_parties_come_from_the_policy():
    assert dict(PARTIES.members) == {"us": US, "rok": ROK}
    assert PARTIES.joint == JOINT


def test_a_proposal_counts_for_the_proposer_only():
    rel = proposal()
    a = attr.assess(rel, [], PARTIES)
    assert a.proposer == "us" and a.state == "pending"
    assert stances(a) == {"us": "agree", "rok": None}
    assert a.stances[0].source == "proposal" and a.stances[0].confidence == 80
    assert attr.joint_products(a, PARTIES) == []


@pytest.mark.parametrize("value,state", [("agree", "joint"), ("strongly-agree", "joint"), ("neutral", "pending"),
                                         ("disagree", "dissent"), ("strongly-disagree", "dissent")])
def test_the_partners_opinion_decides(value, state):
    rel = proposal()
    a = attr.assess(rel, [opinion(rel, ROK, value, "2025-03-02T00:00:00.000Z")], PARTIES)
    assert a.state == state and stances(a)["rok"] == value


def test_combined_confidence_is_the_lower_of_the_two():
    rel = proposal(confidence=80)
    ours = opinion(rel, US, "agree", T0, 80)
    theirs = opinion(rel, ROK, "strongly-agree", "2025-03-02T00:00:00.000Z", 65)
    a = attr.assess(rel, [ours, theirs], PARTIES)
    assert a.state == "joint" and a.combined_confidence == 65
    # a stance without its own confidence adopts the proposal's
    a = attr.assess(rel, [opinion(rel, ROK, "agree", "2025-03-02T00:00:00.000Z")], PARTIES)
    assert a.combined_confidence == 80


def test_a_later_disagreeing_opinion_ends_concurrence_and_a_later_agreement_restores_it():
    rel = proposal()
    agree = opinion(rel, ROK, "agree", "2025-03-02T00:00:00.000Z")
    disagree = opinion(rel, ROK, "disagree", "2025-03-03T00:00:00.000Z")
    assert attr.assess(rel, [agree, disagree], PARTIES).state == "dissent"
    again = opinion(rel, ROK, "agree", "2025-03-04T00:00:00.000Z")
    assert attr.assess(rel, [disagree, again, agree], PARTIES).state == "joint"


def test_the_proposer_may_retract_by_its_own_disagreeing_opinion():
    rel = proposal()
    opinions = [opinion(rel, ROK, "agree", "2025-03-02T00:00:00.000Z"), opinion(rel, US, "disagree", "2025-03-03T00:00:00.000Z")]
    a = attr.assess(rel, opinions, PARTIES)
    assert a.state == "dissent" and stances(a) == {"us": "disagree", "rok": "agree"}


def test_a_revised_proposal_resets_concurrence():
    v1 = proposal(confidence=80)
    agree = opinion(v1, ROK, "agree", "2025-03-02T00:00:00.000Z")
    assert attr.assess(v1, [agree], PARTIES).state == "joint"
    v2 = proposal(confidence=90, now="2025-03-05T00:00:00.000Z", previous=v1)
    assert v2["id"] == v1["id"] and v2["created"] == v1["created"] and v2["modified"] > v1["modified"]
    a = attr.assess(v2, [agree], PARTIES)
    assert a.state == "pending" and a.superseded == 1 and stances(a)["rok"] is None
    a = attr.assess(v2, [agree, opinion(v2, ROK, "agree", "2025-03-06T00:00:00.000Z")], PARTIES)
    assert a.state == "joint" and a.combined_confidence == 90


def test_a_revision_is_never_dated_at_or_before_the_version_it_replaces():
    v1 = proposal(now="2025-03-05T00:00:00.000Z")
    v2 = proposal(now="2025-03-01T00:00:00.000Z", previous=v1)  # a clock behind the first version
    assert v2["modified"] == "2025-03-05T00:00:00.001Z"
    late = opinion(v2, ROK, "agree", "2025-03-01T00:00:00.000Z")  # and a partner whose clock is behind
    assert late["modified"] == v2["modified"] and attr.assess(v2, [late], PARTIES).state == "joint"


def test_opinions_of_others_or_about_other_objects_are_ignored():
    rel = proposal()
    other = dict(proposal(), id="relationship--00000000-0000-4000-8000-000000000001")
    ignored = [opinion(other, ROK, "agree", "2025-03-02T00:00:00.000Z"),
               dict(opinion(rel, ROK, "agree", "2025-03-02T00:00:00.000Z"), created_by_ref=POLICY.parties["jp"].identity)]
    assert attr.assess(rel, ignored, PARTIES).state == "pending"


def test_joint_products_are_deterministic_valid_and_cite_both_opinions():
    rel = proposal(confidence=80)
    ours = opinion(rel, US, "agree", T0, 80)
    theirs = opinion(rel, ROK, "strongly-agree", "2025-03-02T00:00:00.000Z", 70)
    names = {LAZARUS["id"]: "Lazarus Group", RGB["id"]: RGB["name"]}
    a = attr.assess(rel, [ours, theirs], PARTIES)
    jrel, report = attr.joint_products(a, PARTIES, names)
    again = attr.joint_products(attr.assess(copy.deepcopy(rel), [theirs, ours], PARTIES), PARTIES, dict(names))
    assert [jrel, report] == again
    for obj in (jrel, report):
        assert check_object(obj) is None
        assert obj["created_by_ref"] == JOINT and obj["object_marking_refs"] == [attr.TLP_CLEAR]
        assert obj["confidence"] == 70 and obj["modified"] == theirs["modified"]
    assert (jrel["source_ref"], jrel["target_ref"], jrel["relationship_type"]) == (LAZARUS["id"], RGB["id"], "attributed-to")
    assert report["object_refs"] == [rel["id"], ours["id"], theirs["id"], US, ROK, jrel["id"]]
    assert "lower of the partners' confidences" in report["description"]
    assert "sources" not in report["description"] + jrel["description"]  # the rationale stays with the partners
    assert report["report_types"] == ["attribution"]


def test_expected_products_and_concurred_ids():
    rel = proposal()
    theirs = opinion(rel, ROK, "agree", "2025-03-02T00:00:00.000Z")
    objects = [LAZARUS, RGB, rel, opinion(rel, US, "agree", T0), theirs]
    expected = attr.expected_products(objects, PARTIES)
    products = list(expected.values())
    assert len(products) == 2
    assert attr.concurred_ids(products, expected, PARTIES) == {p["id"] for p in products}
    forged = dict(products[0], confidence=99)
    assert attr.concurred_ids([forged], expected, PARTIES) == set()
    assert attr.concurred_ids([rel, theirs], expected, PARTIES) == set()  # not the joint cell's
    # without the partner's opinion nothing is expected
    assert attr.expected_products(objects[:-1], PARTIES) == {}


def test_joint_products_pass_the_sccf_only_with_recorded_concurrence():
    rel = proposal()
    objects = [LAZARUS, RGB, rel, opinion(rel, US, "agree", T0), opinion(rel, ROK, "agree", "2025-03-02T00:00:00.000Z")]
    products = list(attr.expected_products(objects, PARTIES).values())
    concurred = attr.concurred_ids(products, attr.expected_products(objects, PARTIES), PARTIES)
    held = {LAZARUS["id"], RGB["id"]}
    for recipient in ("jp", "public"):
        without = evaluate(products, POLICY, "rok", recipient, held=held)
        assert [d.decision for d in without] == ["withhold", "withhold"]
        assert [d.clauses for d in without] == [("sccf.attribution-relationships",), ("sccf.attribution-products",)]
        shared = evaluate(products, POLICY, "rok", recipient, held=held, concurred=concurred)
        assert [d.decision for d in shared] == ["share", "redact"]
        # the report reaches the third party without the partners' own proposal and opinions
        assert shared[1].shared["object_refs"] == [US, ROK, products[0]["id"]]


def test_bad_input_is_refused():
    with pytest.raises(BadRequest, match="intrusion-set or campaign"):
        attr.build_proposal(creator=US, subject=RGB, actor=RGB, confidence=5, rationale=None, markings=MARKS)
    with pytest.raises(BadRequest, match="threat-actor"):
        attr.build_proposal(creator=US, subject=LAZARUS, actor=LAZARUS, confidence=5, rationale=None, markings=MARKS)
    with pytest.raises(BadRequest, match="0 to 100"):
        attr.build_proposal(creator=US, subject=LAZARUS, actor=RGB, confidence=101, rationale=None, markings=MARKS)
    with pytest.raises(BadRequest, match="opinion"):
        attr.build_opinion(creator=ROK, relationship=proposal(), opinion="maybe", confidence=None, explanation=None, markings=MARKS)


def test_the_iep_marking_is_a_valid_amber_must_not_marking():
    from exchange.policy import markings as mk

    md = attr.build_iep_marking(US, "us")
    assert check_object(md) is None
    info = mk.classify_marking_definition(md, md["id"])
    assert info.iep is not None and info.iep.provider_attribution == "must-not" and info.level == mk.AMBER
    assert attr.build_iep_marking(US, "us") == md


def test_policy_check_recognises_the_concurrence_a_bundle_records(tmp_path):
    import json

    from click.testing import CliRunner

    from exchange.cli import main

    rel = proposal()
    record = [LAZARUS, RGB, rel, opinion(rel, US, "agree", T0), opinion(rel, ROK, "agree", "2025-03-02T00:00:00.000Z")]
    products = list(attr.expected_products(record, PARTIES).values())

    def check(objects: list[dict]) -> dict[str, str]:
        path = tmp_path / "b.json"
        path.write_text(json.dumps({"type": "bundle", "id": "bundle--6f1c1f38-8f0e-4d4e-9d55-0c0de0c7e5a1", "objects": objects}))
        out = CliRunner().invoke(main, ["policy", "check", str(path), "--from", "us", "--to", "jp", "--json"])
        assert out.exit_code == 0, out.output
        return {d["id"]: d["decision"] for d in json.loads(out.output)}

    with_record = check(record + products)
    assert with_record[products[0]["id"]] == "share" and with_record[rel["id"]] == "withhold"
    # the joint products alone (no proposal and opinions to back them) stay inside the partnership
    alone = check(products)
    assert set(alone.values()) == {"withhold"}
    # nor does a different version than the concurrence yields
    assert check(record + [dict(products[0], confidence=99)])[products[0]["id"]] == "withhold"
