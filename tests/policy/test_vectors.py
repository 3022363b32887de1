"""Policy conformance vectors: every clause has data-driven vectors, and each vector holds."""

from __future__ import annotations

import copy

import pytest

from exchange.policy import evaluate, load_policy
from tests.policy.vectorlib import PARTY_IDS, expand, load_vectors

POLICY = load_policy()
VECTORS = load_vectors()
NOW = "2025-01-01T00:00:00Z"


def test_every_clause_has_a_vector():
    covered = {v["clause"] for _, v in VECTORS}
    missing = [c for c in POLICY.clause_ids if c not in covered]
    assert not missing, f"clauses without conformance vectors: {missing}"


def test_every_vector_names_a_clause_of_the_policy():
    unknown = [(name, v["clause"]) for name, v in VECTORS if v["clause"] not in POLICY.clause_ids]
    assert not unknown


def test_every_clause_decides_at_least_one_vector_outcome():
    deciding = {c for _, v in VECTORS for exp in v["expect"].values() for c in exp["clauses"]}
    assert set(POLICY.clause_ids) <= deciding, sorted(set(POLICY.clause_ids) - deciding)


def test_every_inbound_rule_id_is_an_inbound_clause():
    from exchange.policy.inbound import RULE_IDS

    assert set(RULE_IDS) == {c.id for c in POLICY.clauses_of("inbound")}
    assert all(c.id == f"inbound.{c.rule.check}" for c in POLICY.clauses_of("inbound"))


def _inbound_vector(vector: dict) -> None:
    """An inbound vector: the node's ``InboundRules`` for that partner judge the objects (accept / reject)."""
    from dataclasses import replace

    from exchange.config import load_node
    from exchange.node.ops import inbound_rules_for
    from exchange.policy.inbound import SignatureState
    from tests.policy.vectorlib import PARTY_IDS

    objects, ids = expand(vector["objects"])
    cfg = load_node(vector["inbound"]["node"]).config
    signing = frozenset(p.identity for p in cfg.partners.values() if not p.read_only) if vector.get("signing") else frozenset()
    rules = replace(inbound_rules_for(cfg, vector["inbound"]["partner"]), signing_parties=signing)
    states = {ids[a]: SignatureState(s["status"], PARTY_IDS[s["signer"]]) for a, s in (vector.get("signatures") or {}).items()}
    before = copy.deepcopy(objects)
    refused = rules.judge(objects, signatures=lambda o: states.get(o["id"], SignatureState("unsigned")))
    assert objects == before, "judge mutated its input"
    for i, spec in enumerate(vector["objects"]):
        exp = vector["expect"].get(spec["alias"])
        if exp is None:
            continue
        got = {"decision": "reject", "clauses": [refused[i].split(":", 1)[0]]} if i in refused else {"decision": "accept", "clauses": []}
        assert got == {"decision": exp["decision"], "clauses": exp["clauses"]}, f"{spec['alias']}: {refused.get(i)}"


@pytest.mark.parametrize("name,vector", VECTORS, ids=[n for n, _ in VECTORS])
def test_vector(name, vector):
    if "inbound" in vector:
        _inbound_vector(vector)
        return
    objects, ids = expand(vector["objects"])
    before = copy.deepcopy(objects)
    # ``concurred``: ids (or ``@alias``) of attribution objects with recorded joint concurrence
    concurred = [ids[c[1:]] if c.startswith("@") else c for c in vector.get("concurred", ())]
    # ``producers``: {sighted id or @alias: party} known to the releasing node (clause sighting-to-producer)
    producers = {(ids[k[1:]] if k.startswith("@") else k): PARTY_IDS.get(v, v) for k, v in (vector.get("producers") or {}).items()}
    decisions = evaluate(objects, POLICY, vector["from"], vector["to"], now=vector.get("now", NOW),
                         held=vector.get("held", ()), concurred=concurred, transport=vector.get("transport"), producers=producers)
    assert objects == before, "evaluate mutated its input"
    aliases = [spec.get("alias") for spec in vector["objects"]]
    by_alias = dict(zip(aliases, decisions, strict=True))
    for alias, exp in vector["expect"].items():
        d = by_alias[alias]
        got = {"decision": d.decision, "clauses": list(d.clauses), "removed_fields": list(d.removed_fields)}
        want = {"decision": exp["decision"], "clauses": exp["clauses"], "removed_fields": exp.get("removed_fields", [])}
        assert got == want, f"{alias}: {d.reason}"
        if d.decision == "withhold":
            assert d.shared is None
        else:
            assert d.shared is not None
            for f in d.removed_fields:
                assert f.split(".")[0] not in d.shared or "[" in f
        for key, value in (exp.get("shared_has") or {}).items():
            assert d.shared[key] == value
