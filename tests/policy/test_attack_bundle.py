"""The real MITRE ATT&CK DPRK bundle under each policy and every sender/recipient pair."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest

from exchange.policy import companions, evaluate, load_policy

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "collections" / "attack-dprk" / "attack-dprk.json"
POLICIES = REPO / "policies"
OBJECTS = json.loads(BUNDLE.read_text(encoding="utf-8"))["objects"]
FRAMEWORK_FILES = sorted(p.name for p in POLICIES.glob("*.yaml") if p.name not in ("parties.yaml",))
PAIRS = [(s, r) for s in ("us", "rok") for r in ("us", "rok", "jp", "joint", "cri", "public") if s != r]


def _policy_for(name: str):
    """The whole policy directory, or one framework with the parties and the baseline it builds on."""
    if name == "all":
        return load_policy(POLICIES)
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    for f in {"parties.yaml", "strategic-cybersecurity-framework.yaml", name, "frameworks-source.md"}:
        shutil.copy(POLICIES / f, tmp / f)
    return load_policy(tmp)


def test_bundle_copy_is_the_shared_real_data():
    assert len(OBJECTS) == 2130
    assert (BUNDLE.parent / "README.md").read_text(encoding="utf-8").count("The MITRE Corporation") >= 2


@pytest.mark.parametrize("name", ["all", *FRAMEWORK_FILES])
def test_attack_bundle_evaluates_under_each_policy_and_pair(name):
    policy = _policy_for(name)
    before = copy.deepcopy(OBJECTS[:50])
    for sender, recipient in PAIRS:
        decisions = evaluate(OBJECTS, policy, sender, recipient, now="2025-06-01T00:00:00Z")
        assert len(decisions) == len(OBJECTS)
        counts = Counter(d.decision for d in decisions)
        # ATT&CK is a known public source: all of it may go anywhere, unchanged
        assert counts == {"share": 2130}, (name, sender, recipient, counts)
        assert all(d.shared is o for d, o in zip(decisions, OBJECTS, strict=True))
        assert {d.clauses for d in decisions} == {("scf.public-sources", "scf.clear-anyone")}
        assert companions(decisions, OBJECTS, policy, sender, recipient) == []
    assert OBJECTS[:50] == before


def test_attack_objects_are_not_rewritten_with_markings():
    policy = load_policy(POLICIES)
    for d in evaluate(OBJECTS, policy, "us", "public"):
        assert d.shared is not None and "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487" not in d.shared.get("object_marking_refs", [])


def test_attack_attribution_by_a_partner_would_not_be_published():
    policy = load_policy(POLICIES)
    rel = next(o for o in OBJECTS if o.get("relationship_type") == "attributed-to")
    ours = dict(rel, created_by_ref=policy.parties["us"].identity,
                object_marking_refs=["marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487"])
    [d] = evaluate([ours], policy, "us", "public", held={rel["source_ref"], rel["target_ref"]})
    assert d.decision == "withhold" and d.clauses == ("sccf.attribution-relationships",)
