"""Joint attribution: propose, concur or dissent, release together (standard STIX 2.1 only).

The workflow (``../shared/reference/standards.md`` s4):

1. *Proposal*: a partner creates a ``relationship`` of type ``attributed-to``
   (an intrusion set or campaign attributed to a threat actor) with its own
   ``created_by_ref`` and ``confidence``, marked for the partner only
   (TLP:AMBER plus an IEP 2.0 marking with ``provider_attribution: must-not``).
   The proposer also records its own ``agree`` opinion, so the joint report
   can cite both partners' stances.
2. *Stances*: each partner answers with an ``opinion`` (``object_refs`` =
   the relationship).  Only opinions whose version (``modified``) is not
   earlier than the relationship's current version count: a revised proposal
   (new ``modified``) resets concurrence.  A partner's stance is its latest
   counting opinion; the proposer without one counts as agreeing (its proposal).
3. *Joint*: every member of the joint cell (``policies/parties.yaml``: ``us``
   and ``rok``) agrees (``agree``/``strongly-agree``); a later disagreeing
   opinion ends it (``dissent``).  Then each node builds, deterministically
   and so byte-identically, the joint products, created by the joint cell's
   identity and marked TLP:CLEAR:

   - a joint ``attributed-to`` relationship (same ends; one id per proposal,
     a new version per concurred proposal version), so that a third party
     receives the attribution itself;
   - a ``report`` (``report_types: [attribution]``; one id per proposal
     version) referencing the proposal, the counting opinions, both partner
     identities and the joint relationship.

   Combined confidence: the lower of the partners' confidences on the STIX
   0-100 scale (a stance without its own ``confidence`` adopts the proposal's);
   the report's description states the rule.  Timestamps are those of the
   latest contributing object, ids are uuid5 of the proposal id (and version).

The SCCF clauses release attribution objects outside the partnership only if
their ids are in the ``concurred`` set, computed here by ``concurred_ids``
from what the node holds: a joint product goes to Japan or the public only if
it is exactly what this node's own record of concurrence yields.

Pure functions take plain STIX dicts; ``gather``, ``settle`` and the
``propose``/``respond``/``status`` helpers are the thin storage layer used by
the CLI, the sync agent and the release.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exchange.errors import BadRequest, ConfigError
from exchange.stix import OPINIONS, format_timestamp, parse_timestamp

__all__ = [
    "AGREE", "DISAGREE", "NS", "Assessment", "Parties", "Stance", "assess", "assess_all", "build_iep_marking",
    "build_opinion", "build_proposal", "concurred_ids", "expected_products", "joint_products",
]

NS = uuid.UUID("0b5a3f52-54a4-5d3e-9d0c-5f0e0b1d6a21")  # namespace of the joint products' ids
AGREE = frozenset({"agree", "strongly-agree"})
DISAGREE = frozenset({"disagree", "strongly-disagree"})
OPINION_ORDER = ("strongly-disagree", "disagree", "neutral", "agree", "strongly-agree")
TLP_CLEAR = "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487"
TLP_AMBER = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"
IEP_EXTENSION = "extension-definition--762e2e97-ee51-43e5-a9ea-165fbb862c4a"
SUBJECT_TYPES = ("intrusion-set", "campaign")
ACTOR_TYPES = {"intrusion-set": ("threat-actor",), "campaign": ("threat-actor", "intrusion-set")}
COMBINED_RULE = ("the lower of the partners' confidences on the STIX 0-100 scale "
                 "(a stance without its own confidence adopts the proposal's)")


# ---------------------------------------------------------------- parties


@dataclass(frozen=True)
class Parties:
    """The partners whose concurrence makes an attribution joint, and the joint cell."""

    members: tuple[tuple[str, str], ...]  # (party name, identity id), in policy order
    joint: str  # the joint cell's identity id
    joint_name: str = "US-ROK joint CTI cell"
    titles: Mapping[str, str] = field(default_factory=dict)  # party name -> display name

    @classmethod
    def from_policy(cls, policy: Any, joint_identity: str | None = None, node: str | None = None) -> Parties:
        """The joint body of ``policy`` (the party with ``joint_identity``, else one whose members include ``node``)."""
        parties = policy.parties
        body = None
        for name, party in parties.items():
            if party.members and (party.identity == joint_identity if joint_identity else (node is None or node in party.members)):
                body = (name, party)
                break
        if body is None or not body[1].identity:
            raise ConfigError("the policy names no joint body (a party with members and an identity) for joint attribution")
        members = tuple((m, parties[m].identity) for m in body[1].members if parties[m].identity)
        if len(members) < 2:
            raise ConfigError(f"the joint body {body[0]!r} needs at least two members with identities")
        return cls(members, body[1].identity, body[1].name, {n: p.name for n, p in parties.items()})

    @property
    def identities(self) -> frozenset[str]:
        return frozenset(i for _, i in self.members)

    def name_of(self, identity: Any) -> str | None:
        for name, ident in self.members:
            if ident == identity:
                return name
        return None

    def identity_of(self, name: str) -> str:
        for n, ident in self.members:
            if n == name:
                return ident
        raise BadRequest(f"{name!r} is not a member of the {self.joint_name}")


# ---------------------------------------------------------------- stances and joint status


def version_of(obj: Mapping[str, Any]) -> str:
    return obj.get("modified") or obj["created"]


def _ts(obj: Mapping[str, Any]) -> int:
    return parse_timestamp(version_of(obj))


def is_proposal(obj: Mapping[str, Any], parties: Parties) -> bool:
    """An ``attributed-to`` relationship created by one of the partners (not revoked)."""
    return (obj.get("type") == "relationship" and obj.get("relationship_type") == "attributed-to"
            and obj.get("created_by_ref") in parties.identities and not obj.get("revoked"))


@dataclass(frozen=True)
class Stance:
    """One partner's position on the current version of a proposal."""

    party: str
    identity: str
    opinion: str | None  # None: no stance yet
    confidence: int | None
    source: str | None  # "opinion" | "proposal" | None
    object_id: str | None
    version: str | None

    @property
    def agrees(self) -> bool:
        return self.opinion in AGREE

    @property
    def dissents(self) -> bool:
        return self.opinion in DISAGREE

    def as_json(self) -> dict[str, Any]:
        return {"party": self.party, "opinion": self.opinion, "confidence": self.confidence, "source": self.source,
                "object_id": self.object_id, "version": self.version}


@dataclass(frozen=True)
class Assessment:
    """Where a proposal stands: each partner's stance on its current version and the joint state."""

    relationship: dict
    proposer: str
    stances: tuple[Stance, ...]
    state: str  # "joint" | "dissent" | "pending"
    combined_confidence: int | None
    opinions: tuple[dict, ...]  # the counting opinions, in member order
    superseded: int  # opinions on earlier versions (reset by a revision)

    @property
    def id(self) -> str:
        return self.relationship["id"]

    @property
    def version(self) -> str:
        return version_of(self.relationship)

    @property
    def timestamp(self) -> str:
        """The version timestamp of the latest contributing object (proposal version or counting opinion)."""
        objs = [self.relationship, *self.opinions]
        return version_of(max(objs, key=lambda o: (_ts(o), o["id"])))


def assess(relationship: Mapping[str, Any], opinions: Iterable[Mapping[str, Any]], parties: Parties) -> Assessment:
    """Each partner's stance on the relationship's current version, and whether the attribution is joint.

    ``opinions``: any opinions (latest version of each); those not about the
    relationship or not created by a partner are ignored; those earlier than
    the relationship's version are superseded.  Pure and deterministic.
    """
    rel = dict(relationship)
    rid = rel["id"]
    current = _ts(rel)
    latest: dict[str, dict] = {}
    superseded = 0
    for op in opinions:
        refs = op.get("object_refs")
        creator = op.get("created_by_ref")
        if op.get("type") != "opinion" or not isinstance(refs, list) or rid not in refs or creator not in parties.identities:
            continue
        if op.get("revoked"):
            continue
        if _ts(op) < current:
            superseded += 1
            continue
        prev = latest.get(creator)
        if prev is None or (_ts(op), op["id"]) > (_ts(prev), prev["id"]):
            latest[creator] = dict(op)
    proposer = parties.name_of(rel.get("created_by_ref")) or "?"
    base_conf = rel.get("confidence") if isinstance(rel.get("confidence"), int) else None
    stances = []
    counted = []
    for name, ident in parties.members:
        op = latest.get(ident)
        if op is not None:
            conf = op.get("confidence") if isinstance(op.get("confidence"), int) else base_conf
            stances.append(Stance(name, ident, op.get("opinion"), conf, "opinion", op["id"], version_of(op)))
            counted.append(op)
        elif ident == rel.get("created_by_ref"):
            stances.append(Stance(name, ident, "agree", base_conf, "proposal", rid, version_of(rel)))
        else:
            stances.append(Stance(name, ident, None, None, None, None, None))
    if any(s.dissents for s in stances):
        state = "dissent"
    elif all(s.agrees for s in stances):
        state = "joint"
    else:
        state = "pending"
    confs = [s.confidence for s in stances if s.confidence is not None]
    combined = min(confs) if state == "joint" and confs else None
    return Assessment(rel, proposer, tuple(stances), state, combined, tuple(counted), superseded)


def _latest_by_id(objects: Iterable[Mapping[str, Any]]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for o in objects:
        if not isinstance(o, Mapping) or not isinstance(o.get("id"), str) or not (o.get("modified") or o.get("created")):
            continue
        prev = out.get(o["id"])
        if prev is None or _ts(o) > _ts(prev):
            out[o["id"]] = dict(o)
    return out


def assess_all(objects: Iterable[Mapping[str, Any]], parties: Parties) -> list[Assessment]:
    """An assessment of every proposal among ``objects`` (any versions; the latest of each counts)."""
    latest = _latest_by_id(objects)
    opinions = [o for o in latest.values() if o.get("type") == "opinion"]
    by_ref: dict[str, list[dict]] = {}
    for op in opinions:
        for ref in op.get("object_refs") or ():
            if isinstance(ref, str) and ref.startswith("relationship--"):
                by_ref.setdefault(ref, []).append(op)
    proposals = sorted((o for o in latest.values() if is_proposal(o, parties)), key=lambda o: (o["created"], o["id"]))
    return [assess(rel, by_ref.get(rel["id"], ()), parties) for rel in proposals]


# ---------------------------------------------------------------- joint products


def joint_relationship_id(relationship_id: str) -> str:
    return f"relationship--{uuid.uuid5(NS, 'joint-attributed-to|' + relationship_id)}"


def joint_report_id(relationship_id: str, version: str) -> str:
    return f"report--{uuid.uuid5(NS, f'joint-report|{relationship_id}|{parse_timestamp(version)}')}"


def _label(oid: str, names: Mapping[str, str]) -> str:
    name = names.get(oid)
    return f"{name} ({oid})" if name else oid


def joint_products(assessment: Assessment, parties: Parties, names: Mapping[str, str] = {}) -> list[dict]:  # noqa: B006
    """The joint ``attributed-to`` relationship and ``report`` of a joint assessment ([] otherwise).

    Deterministic: the same proposal, opinions and ``names`` (id -> name of the
    subject and actor) give byte-identical objects at either node.
    """
    if assessment.state != "joint":
        return []
    rel = assessment.relationship
    rid = rel["id"]
    stamp = assessment.timestamp
    combined = assessment.combined_confidence
    subject, actor = rel.get("source_ref"), rel.get("target_ref")
    jrel_id = joint_relationship_id(rid)
    report_id = joint_report_id(rid, assessment.version)
    what = f"{_label(subject, names)} is attributed to {_label(actor, names)}"
    jrel: dict[str, Any] = {
        "type": "relationship", "spec_version": "2.1", "id": jrel_id,
        "created_by_ref": parties.joint, "created": rel["created"], "modified": stamp,
        "relationship_type": "attributed-to", "source_ref": subject, "target_ref": actor,
        "description": (f"Joint attribution of the {parties.joint_name}: {what}. Both partners concur; "
                        f"combined confidence: {COMBINED_RULE}. Joint report: {report_id}."),
        "object_marking_refs": [TLP_CLEAR],
    }
    stance_text = "; ".join(
        f"{parties.titles.get(s.party, s.party)}: {s.opinion}"
        + (f" (confidence {s.confidence})" if s.confidence is not None else "")
        + (" by its proposal" if s.source == "proposal" else "")
        for s in assessment.stances
    )
    report: dict[str, Any] = {
        "type": "report", "spec_version": "2.1", "id": report_id,
        "created_by_ref": parties.joint, "created": stamp, "modified": stamp, "published": stamp,
        "name": f"Joint attribution: {names.get(subject) or subject} attributed to {names.get(actor) or actor}",
        "description": (f"Joint assessment of the {parties.joint_name}: {what}. Stances on version "
                        f"{assessment.version} of proposal {rid}: {stance_text}. Combined confidence"
                        + (f" {combined}" if combined is not None else "")
                        + f": {COMBINED_RULE}."),
        "report_types": ["attribution"],
        "object_refs": [rid, *(o["id"] for o in assessment.opinions), *(i for _, i in parties.members), jrel_id],
        "object_marking_refs": [TLP_CLEAR],
    }
    if combined is not None:
        jrel["confidence"] = combined
        report["confidence"] = combined
    return [jrel, report]


def expected_products(objects: Iterable[Mapping[str, Any]], parties: Parties) -> dict[tuple[str, str], dict]:
    """``(id, version) -> object`` of every joint product the proposals and opinions among ``objects`` yield."""
    objs = list(objects)
    names = _names(objs)
    out: dict[tuple[str, str], dict] = {}
    for a in assess_all(objs, parties):
        for p in joint_products(a, parties, names):
            out[(p["id"], version_of(p))] = p
    return out


def _names(objects: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    latest = _latest_by_id(o for o in objects if o.get("type") in ("intrusion-set", "campaign", "threat-actor"))
    return {oid: o["name"] for oid, o in latest.items() if isinstance(o.get("name"), str)}


def concurred_ids(candidates: Iterable[Mapping[str, Any]], expected: Mapping[tuple[str, str], dict], parties: Parties) -> set[str]:
    """Ids of the joint cell's objects among ``candidates`` that are exactly a product of recorded concurrence.

    An id is left out if any of its versions among ``candidates`` is not (the
    SCCF clauses then keep it inside the partnership).
    """
    ok: set[str] = set()
    bad: set[str] = set()
    for o in candidates:
        if o.get("created_by_ref") != parties.joint or not (o.get("modified") or o.get("created")):
            continue
        (ok if expected.get((o["id"], version_of(o))) == o else bad).add(o["id"])
    return ok - bad


def concurred_in(objects: Sequence[Mapping[str, Any]], policy: Any, sender: str) -> set[str]:
    """The ``concurred`` set a bundle records by itself (``policy check``/``explain``): the joint products in
    ``objects`` that its proposals and opinions yield (empty if ``sender`` is in no joint body)."""
    try:
        parties = Parties.from_policy(policy, node=sender)
    except ConfigError:
        return set()
    objs = [o for o in objects if isinstance(o, Mapping) and isinstance(o.get("id"), str)]
    if not any(o.get("created_by_ref") == parties.joint for o in objs):
        return set()
    try:
        return concurred_ids(objs, expected_products(objs, parties), parties)
    except (ValueError, KeyError, TypeError):  # malformed objects: the engine reports them; nothing concurred
        return set()


# ---------------------------------------------------------------- building a node's own objects


def stix_now(micros: int | None = None) -> str:
    """A STIX timestamp with millisecond precision."""
    micros = time.time_ns() // 1000 if micros is None else micros
    return format_timestamp(micros - micros % 1000)[:-4] + "Z"


def _not_before(stamp: str, floor: str | None, *, strictly: bool = False) -> str:
    """``stamp``, raised to ``floor`` (+1 ms if ``strictly``) if it is earlier (clock skew between nodes)."""
    if floor is None:
        return stamp
    low = parse_timestamp(floor) + (1000 if strictly else 0)
    return stamp if parse_timestamp(stamp) >= low else stix_now(low + 999)


def build_iep_marking(node_identity: str, node: str) -> dict:
    """This node's IEP 2.0 marking for attribution proposals: TLP:AMBER, provider attribution must-not onward."""
    return {
        "type": "marking-definition", "spec_version": "2.1",
        "id": f"marking-definition--{uuid.uuid5(NS, 'iep-attribution|' + node_identity)}",
        "created_by_ref": node_identity, "created": "2024-01-01T00:00:00.000Z",
        "name": f"IEP 2.0 {node.upper()} joint-attribution consultation: AMBER, provider attribution must-not",
        "external_references": [{"source_name": "FIRST IEP 2.0", "url": "https://www.first.org/iep/"}],
        "extensions": {IEP_EXTENSION: {
            "extension_type": "property-extension",
            "iep_id": str(uuid.uuid5(NS, "iep-attribution-policy|" + node_identity)),
            "iep_version": 2.0,
            "description": "Attribution under consultation (SCCF): for the partner only; do not publish or name the provider.",
            "start_date": "2024-01-01T00:00:00Z",
            "encrypt_in_transit": "must",
            "permitted_actions": "internally-visible-actions",
            "affected_party_notifications": "must-not",
            "tlp": "amber",
            "provider_attribution": "must-not",
            "unmodified_resale": "must-not",
        }},
    }


def _check_confidence(value: Any, what: str = "confidence") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
        raise BadRequest(f"{what} must be an integer from 0 to 100 (STIX 2.1 confidence scale), not {value!r}")


def build_proposal(*, creator: str, subject: Mapping[str, Any], actor: Mapping[str, Any], confidence: int,
                   rationale: str | None, markings: Sequence[str], now: str | None = None,
                   previous: Mapping[str, Any] | None = None) -> dict:
    """An ``attributed-to`` relationship from ``subject`` to ``actor`` (a new version of ``previous`` if given)."""
    _check_confidence(confidence)
    stype, atype = subject.get("type"), actor.get("type")
    if stype not in SUBJECT_TYPES:
        raise BadRequest(f"--subject must be an intrusion-set or campaign, not a {stype}")
    if atype not in ACTOR_TYPES[stype]:
        raise BadRequest(f"a {stype} is attributed to a {' or '.join(ACTOR_TYPES[stype])} (STIX 2.1), not a {atype}")
    now = now or stix_now()
    rel: dict[str, Any] = {"type": "relationship", "spec_version": "2.1"}
    if previous is not None:
        rel["id"] = previous["id"]
        rel["created"] = previous["created"]
        rel["modified"] = _not_before(now, version_of(previous), strictly=True)
    else:
        rel["id"] = f"relationship--{uuid.uuid4()}"
        rel["created"] = rel["modified"] = now
    text = (
        "Proposed attribution (for joint concurrence under the SCCF): "
        f"{subject.get('name', subject['id'])} is attributed to {actor.get('name', actor['id'])}."
    )
    if rationale:
        text += f" Rationale: {rationale}"
    rel.update({
        "created_by_ref": creator, "relationship_type": "attributed-to",
        "source_ref": subject["id"], "target_ref": actor["id"], "confidence": confidence,
        "description": text, "object_marking_refs": list(markings),
    })
    return rel


def build_opinion(*, creator: str, relationship: Mapping[str, Any], opinion: str, confidence: int | None,
                  explanation: str | None, markings: Sequence[str], now: str | None = None) -> dict:
    """An ``opinion`` on the relationship's current version (never dated before it)."""
    if opinion not in OPINIONS:
        raise BadRequest(f"--opinion must be one of {', '.join(OPINION_ORDER)}, not {opinion!r}")
    if confidence is not None:
        _check_confidence(confidence)
    stamp = _not_before(now or stix_now(), version_of(relationship))
    op: dict[str, Any] = {
        "type": "opinion", "spec_version": "2.1", "id": f"opinion--{uuid.uuid4()}",
        "created_by_ref": creator, "created": stamp, "modified": stamp,
        "opinion": opinion, "object_refs": [relationship["id"]],
    }
    if explanation:
        op["explanation"] = explanation
    if confidence is not None:
        op["confidence"] = confidence
    op["object_marking_refs"] = list(markings)
    return op


# ---------------------------------------------------------------- the node's store (thin)


def parties_of(opened: Any, policy: Any = None) -> Parties:
    from exchange.policy import current_policy

    cfg = opened.node.config
    return Parties.from_policy(policy or current_policy(), cfg.joint_identity, cfg.node)


def _sources(opened: Any) -> list[Any]:
    return opened.node.config.release_sources


def gather(opened: Any) -> list[dict]:
    """Latest versions of the relationships and opinions this node holds (own collection and inboxes), plus
    the intrusion sets, campaigns and threat actors they refer to (for names)."""
    import orjson

    from exchange.storage.store import Selection

    store = opened.store
    out: list[dict] = []
    wanted: set[str] = set()
    for coll in _sources(opened):
        for row in store.iter_rows(Selection(coll.id, types=("relationship", "opinion"))):
            body = row.body
            if isinstance(body, str) and row.stix_id.startswith("relationship--") and "attributed-to" not in body:
                continue  # most relationships (ATT&CK "uses" ...) are not attributions: skip parsing them
            obj = orjson.loads(body)
            if obj.get("type") == "relationship":
                if obj.get("relationship_type") != "attributed-to":
                    continue
                wanted.update(r for r in (obj.get("source_ref"), obj.get("target_ref")) if isinstance(r, str))
            out.append(obj)
    if wanted:
        out += store.latest_many([c.id for c in _sources(opened)], sorted(wanted))
    return out


def settle(opened: Any, policy: Any = None) -> list[dict]:
    """Write the joint products due at this node into its own collection; the new ones (release separately)."""
    cfg = opened.node.config
    if not cfg.joint_identity:
        return []
    parties = parties_of(opened, policy)
    products = list(expected_products(gather(opened), parties).values())
    if not products:
        return []
    own = cfg.own_collection.id
    have = {(o["id"], version_of(o)) for o in opened.store.versions_of(own, [(p["id"], version_of(p)) for p in products])}
    new = [p for p in products if (p["id"], version_of(p)) not in have]
    if new:
        opened.store.add_objects(own, new, origin="local:attribution")
    return new


def concurred_for(opened: Any, candidates: Sequence[Mapping[str, Any]], policy: Any = None) -> set[str]:
    """The ``concurred`` set for a release batch: joint products this node's own record of concurrence yields."""
    cfg = opened.node.config
    if not cfg.joint_identity or not any(o.get("created_by_ref") == cfg.joint_identity for o in candidates):
        return set()
    parties = parties_of(opened, policy)
    return concurred_ids(candidates, expected_products(gather(opened), parties), parties)


def find(opened: Any, object_id: str) -> dict | None:
    """The latest version of an object in the node's own collection or an inbox."""
    found = opened.store.latest_many([c.id for c in _sources(opened)], [object_id])
    return found[0] if found else None


def _own_markings(opened: Any) -> tuple[list[str], dict]:
    cfg = opened.node.config
    iep = build_iep_marking(cfg.identity, cfg.node)
    return [TLP_AMBER, iep["id"]], iep


def propose(opened: Any, *, subject: str, actor: str, confidence: int, rationale: str | None = None,
            now: str | None = None) -> tuple[dict, dict, bool]:
    """Write a proposal (or a new version of this node's proposal with the same ends) and the proposer's
    ``agree`` opinion into the own collection.  Returns (relationship, opinion, revised)."""
    cfg = opened.node.config
    subj = find(opened, subject)
    if subj is None:
        raise BadRequest(f"--subject {subject}: no such object at node {cfg.node!r} (load it first)")
    act = find(opened, actor)
    if act is None:
        raise BadRequest(f"--actor {actor}: no such object at node {cfg.node!r} (load it first)")
    parties = parties_of(opened)
    previous = None
    for a in assess_all(gather(opened), parties):
        rel = a.relationship
        if rel.get("created_by_ref") == cfg.identity and rel.get("source_ref") == subject and rel.get("target_ref") == actor:
            previous = rel
    markings, iep = _own_markings(opened)
    rel = build_proposal(creator=cfg.identity, subject=subj, actor=act, confidence=confidence, rationale=rationale,
                         markings=markings, now=now, previous=previous)
    op = build_opinion(creator=cfg.identity, relationship=rel, opinion="agree", confidence=confidence,
                       explanation=rationale or "The proposer's own assessment.", markings=markings, now=version_of(rel))
    opened.store.add_objects(cfg.own_collection.id, [iep, rel, op], origin="local:attribution")
    return rel, op, previous is not None


def respond(opened: Any, *, relationship: str, opinion: str, confidence: int | None = None,
            explanation: str | None = None, now: str | None = None) -> tuple[dict, Assessment]:
    """Write this node's opinion on a proposal into the own collection; the (possibly new) joint products
    are settled too.  Returns (opinion, assessment after it)."""
    cfg = opened.node.config
    rel = find(opened, relationship)
    parties = parties_of(opened)
    if rel is None or not is_proposal(rel, parties):
        raise BadRequest(f"--relationship {relationship}: no attribution proposal (attributed-to relationship "
                         f"created by a partner) with that id at node {cfg.node!r}")
    markings, iep = _own_markings(opened)
    op = build_opinion(creator=cfg.identity, relationship=rel, opinion=opinion, confidence=confidence,
                       explanation=explanation, markings=markings, now=now)
    opened.store.add_objects(cfg.own_collection.id, [iep, op], origin="local:attribution")
    settle(opened)
    objs = gather(opened)
    [assessment] = [a for a in assess_all(objs, parties) if a.id == relationship]
    return op, assessment


def status(opened: Any) -> list[dict[str, Any]]:
    """Every proposal this node knows, with each partner's stance and where the joint products are."""
    cfg = opened.node.config
    parties = parties_of(opened)
    objs = gather(opened)
    names = _names(objs)
    store = opened.store
    out = []
    for a in assess_all(objs, parties):
        rel = a.relationship
        mine = rel.get("created_by_ref") == cfg.identity
        entry: dict[str, Any] = {
            "relationship": a.id, "version": a.version, "proposer": a.proposer,
            "subject": rel.get("source_ref"), "subject_name": names.get(rel.get("source_ref")),
            "actor": rel.get("target_ref"), "actor_name": names.get(rel.get("target_ref")),
            "proposed_confidence": rel.get("confidence"),
            "stances": [s.as_json() for s in a.stances], "superseded_opinions": a.superseded,
            "state": a.state, "combined_confidence": a.combined_confidence,
        }
        if mine:
            partners = [c for c in cfg.collections if c.role == "partner-read" and c.partner in dict(parties.members)]
            entry["proposal_released_to"] = sorted(
                c.partner for c in partners if store.versions_of(c.id, [(a.id, a.version)]))
        else:
            entry["proposal_released_to"] = []
        products = joint_products(a, parties, names)
        if products:
            jrel, report = products
            entry["joint_report"] = report["id"]
            entry["joint_relationship"] = jrel["id"]
            entry["joint_released_to"] = sorted(
                c.partner for c in cfg.collections
                if c.role == "partner-read" and store.versions_of(c.id, [(report["id"], version_of(report))])
            )
        else:
            entry["joint_report"] = entry["joint_relationship"] = None
            entry["joint_released_to"] = []
        # joint revocation (sccf.joint-revocation, exchange.sharing.lifecycle): where the joint attribution was withdrawn
        jrel_id = joint_relationship_id(a.id)
        entry["joint_withdrawn_from"] = sorted(
            c.partner for c in cfg.collections
            if c.role == "partner-read" and (held := store.latest(c.id, jrel_id)) is not None and held.get("revoked") is True
        )
        out.append(entry)
    return out
