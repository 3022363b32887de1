"""The lifecycle of shared intelligence: withdrawals follow the data (re-mark, delete, revoke, joint revoke).

A partner holds what this node released to it (its ``partner-read`` collection, and what its
agent copied from there).  When the newest version of an object it holds may no longer go to it,
the node *withdraws* the object:

- **creator** (this node, or the joint cell of which it is a member): it releases a new version
  with ``revoked: true`` (STIX 2.1 s3.6), built by ``withdrawal_of`` from the version the partner
  already holds: the common properties, the ones the spec requires for the type, the creator and
  the marking the partner already held.  Nothing of the restricted version travels;
- **not the creator** (a partner's object relayed onward, a public source's object): a node may not
  version it, so it removes every version from that partner's read collection (TAXII GET then
  answers 404 and the manifest no longer lists it).

Triggers (each one audit entry ``withdraw``: partner, object, version, reason, clause):

- the release walk judges a new version that is the object's newest and withholds it, while the
  partner holds an earlier one (``after_judging``, called from ``release._judged``);
- a withdrawal the origin released arrives and is released onward unchanged (``relayed``);
- an analyst deletes versions in the own collection (TAXII DELETE or ``Store.delete_object``;
  ``withdraw_deleted``): the deleted versions leave every read collection, and if one was what
  the partner held as newest the object is withdrawn;
- a joint attribution ends (dissent after concurrence, revision, revoked proposal;
  ``withdraw_joint``): the released joint relationship and report are withdrawn from every
  recipient, clause ``sccf.joint-revocation``.

``due`` is the pure decision the rest applies; ``lifecycle_report`` counts withdrawals per
direction and conflicts per node for ``report``.
"""

from __future__ import annotations

import copy
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from exchange.node.ops import OpenNode
from exchange.policy import Policy, current_policy
from exchange.sharing.attribution import (
    Parties,
    assess_all,
    expected_products,
    gather,
    joint_relationship_id,
    joint_report_id,
    parties_of,
    version_of,
)
from exchange.sharing.signatures import signed
from exchange.stix import REQUIRED, format_timestamp, object_version, parse_timestamp
from exchange.storage import audit

COMMON = ("type", "spec_version", "id", "created", "modified")
KEEP = ("created_by_ref", "object_marking_refs", "revoked", "report_types")
WITHDRAW = "withdraw"
WITHDRAWAL_LABEL = "withdrawal"
_NOTE_NS = uuid.UUID("5d0f1f8e-3b7a-5c2d-9e4f-6a7b8c9d0e1f")
_DELETED = "deleted:{}"


# ---------------------------------------------------------------- pure


def withdrawal_of(held: Mapping[str, Any], after: str | None = None, keep: Sequence[str] = KEEP) -> dict:
    """The withdrawal of ``held`` (the version a partner holds): a ``revoked`` version (STIX 2.1 s3.6).

    It keeps the common properties, those STIX 2.1 requires for the type (s4-s6) and ``keep``
    (creator, the marking the partner already held), all from ``held``; ``modified`` is 1 µs
    after ``held``'s version and ``after`` (the version being withdrawn), so it is the newest.
    Deterministic: both members of the joint cell build the same withdrawal of a joint product.
    """
    allowed = {*COMMON, *REQUIRED.get(held.get("type", ""), ()), *keep}
    out = {k: copy.deepcopy(v) for k, v in held.items() if k in allowed}
    stamps = [parse_timestamp(object_version(held))] + ([parse_timestamp(after)] if after else [])
    out["modified"] = format_timestamp(max(stamps) + 1)
    out["revoked"] = True
    return out


def is_withdrawal(obj: Mapping[str, Any] | None) -> bool:
    return bool(obj) and obj.get("revoked") is True  # type: ignore[union-attr]


def due(held: Mapping[str, Any] | None, newest_allowed: bool, ours: bool) -> str:
    """What to do for one partner about one object: ``none``, ``revoke`` (release a withdrawal) or ``remove``.

    ``held``: the partner's newest version (None: it holds none); ``newest_allowed``: whether the
    policy releases the origin's newest version to it; ``ours``: whether this node may version the
    object (its creator, or the joint cell it belongs to).  Only a creator versions an object
    (STIX 2.1 s3.6); an SCO has no versions, so it is removed.
    """
    if held is None or newest_allowed or is_withdrawal(held):
        return "none"
    if ours and object_version(held) is not None:  # type: ignore[arg-type]
        return "revoke"
    return "remove"


def _keep(policy: Policy) -> tuple[str, ...]:
    clause = policy.one("joint-revocation")
    return tuple(clause.rule.keep) if clause is not None else KEEP  # type: ignore[union-attr]


def _ours(opened: OpenNode, obj: Mapping[str, Any]) -> bool:
    cfg = opened.node.config
    return obj.get("created_by_ref") in {cfg.identity, cfg.joint_identity} - {None}


# ---------------------------------------------------------------- applying a decision


def _withdraw(
    opened: OpenNode, conn: Any, partner: str, target_id: str, held: dict, after: str | None, reason: str,
    clauses: tuple[str, ...], policy: Policy, *, trigger: str, pending: list[dict] | None = None,
) -> audit.Entry | None:
    """Apply ``due`` for one held object inside ``conn``: write the withdrawal or remove the object; its audit entry.

    ``pending``: collect the withdrawal there (the caller writes a batch's withdrawals in one add) instead of writing it.
    """
    action = due(held, False, _ours(opened, held))
    if action == "none":
        return None
    detail: dict[str, Any] = {"type": held.get("type"), "reason": reason, "trigger": trigger, "withdrawn_version": object_version(held)}
    if action == "revoke":
        w = withdrawal_of(held, after, _keep(policy))
        if pending is None:
            opened.store.add_in(conn, target_id, signed(opened, target_id, [w]))
        else:
            pending.append(w)
        version = w["modified"]
        detail["action"] = "revoked-version"
    else:
        opened.store.remove_in(conn, target_id, held["id"])
        note = withdrawal_note(opened.node.config.identity, opened.node.config.title, held, trigger)
        opened.store.add_in(conn, target_id, signed(opened, target_id, [note]))
        version = object_version(held)
        detail["action"] = "removed"
        detail["note"] = note["id"]
    return audit.Entry(WITHDRAW, partner, held["id"], version, WITHDRAW, clauses, detail)


def withdrawal_note(identity: str, title: str, held: Mapping[str, Any], trigger: str) -> dict:
    """The record of a removal for an object this node may not version: a STIX 2.1 ``note`` (s4.11) by this node.

    ``labels: ["withdrawal"]``, ``object_refs`` = the removed object, the marking the partner held;
    it says nothing of why beyond the kind of change.  Deterministic (one per object version and node).
    """
    version = object_version(held) or ""
    stamp = format_timestamp((parse_timestamp(version) if version else 0) + 1)
    why = {"deleted": "deleted at the source", "withheld": "no longer released under the sharing policy",
           "relayed": "withdrawn by its origin", "joint-revocation": "the joint attribution was revoked"}.get(trigger, trigger)
    oid = held["id"]
    return {
        "type": "note", "spec_version": "2.1", "id": f"note--{uuid.uuid5(_NOTE_NS, f'{identity}|{oid}|{version}')}",
        "created": stamp, "modified": stamp, "created_by_ref": identity, "abstract": "Withdrawn",
        "content": f"{title} withdraws {held['id']} (version {version or 'unversioned'}): {why}. "
                   "It is no longer released to you; do not act on it.",
        "object_refs": [held["id"]], "labels": [WITHDRAWAL_LABEL],
        "object_marking_refs": list(held.get("object_marking_refs") or []),
    }


def is_withdrawal_note(obj: Mapping[str, Any], creator: str | None = None) -> bool:
    return (obj.get("type") == "note" and WITHDRAWAL_LABEL in (obj.get("labels") or ())
            and (creator is None or obj.get("created_by_ref") == creator))


def after_judging(
    opened: OpenNode, conn: Any, partner: str, target_id: str, src: Any, objs: Sequence[dict], decisions: Sequence[Any], policy: Policy,
    holds: Mapping[str, dict],
) -> list[audit.Entry]:
    """The release walk's hook: withdraw what ``partner`` holds of objects whose newest version it may no longer get.

    A withheld version counts only if it is the object's newest in ``src`` and not merely deferred
    (a reference not released yet); a withdrawal from the origin that the policy lets through
    (it is already written) is audited as a relayed withdrawal.  ``holds``: what ``target_id`` holds
    (last versions by id) of at least the withheld objects (``withheld_ids``; the release reads it once per group).
    """
    deferred = {c.id for c in policy.clauses_of("integrity-required-refs")}
    entries: list[audit.Entry] = []
    withheld: dict[str, tuple[dict, Any]] = {}
    for o, d in zip(objs, decisions, strict=True):
        if d.decision == "withhold":
            if not set(d.clauses) & deferred:
                withheld[o["id"]] = (o, d)
        elif o.get("revoked") is True:
            entries.append(audit.Entry(WITHDRAW, partner, o["id"], d.version, WITHDRAW, tuple(d.clauses), {
                "type": o.get("type"), "reason": "the origin revoked it; relayed as released", "trigger": "relayed",
                "action": "relayed", "source": src.alias,
            }))
    entries += _onward_notes(opened, conn, partner, target_id, src, objs, policy)
    if not withheld:
        return entries
    held = {i: holds[i] for i in withheld if i in holds}
    if not held:
        return entries
    newest = opened.store.latest_in(conn, src.id, held)
    writes: list[dict] = []
    for oid, h in held.items():
        obj, d = withheld[oid]
        top = newest.get(oid)
        if top is None or object_version(top) != object_version(obj):
            continue  # a newer version follows: judged on its own
        e = _withdraw(opened, conn, partner, target_id, h, object_version(obj), f"its newest version is withheld: {d.reason}",
                      tuple(d.clauses), policy, trigger="withheld", pending=writes)
        if e is not None:
            entries.append(e)
    opened.store.add_in(conn, target_id, signed(opened, target_id, writes))  # one write for the batch's withdrawals
    return entries


def withheld_ids(objs: Sequence[dict], decisions: Sequence[Any]) -> set[str]:
    """The ids ``after_judging`` looks up in the recipient's collection (a superset: deferred ones too)."""
    return {o["id"] for o, d in zip(objs, decisions, strict=True) if d.decision == "withhold"}


def _onward_notes(opened: OpenNode, conn: Any, partner: str, target_id: str, src: Any, objs: Sequence[dict], policy: Policy) -> list[audit.Entry]:
    """A withdrawal note from the partner whose inbox ``src`` is: what this node relayed from it goes too.

    Only objects this node holds through that partner (not in its own collection), and not already withdrawn.
    """
    if src.role != "partner-inbox":
        return []
    sender = opened.node.config.partners[src.partner].identity
    refs = {r for o in objs if is_withdrawal_note(o, sender) for r in o.get("object_refs") or () if isinstance(r, str)}
    if not refs:
        return []
    own = opened.node.config.own_collection.id
    mine = set(opened.store.latest_in(conn, own, refs))
    clause = policy.one("no-release-default")
    clauses = (clause.id,) if clause is not None else ()
    out = []
    for h in opened.store.latest_in(conn, target_id, refs - mine).values():
        if _ours(opened, h):
            continue
        e = _withdraw(opened, conn, partner, target_id, h, None, f"withdrawn by {src.partner}, its source here", clauses, policy,
                      trigger="relayed")
        if e is not None:
            out.append(e)
    return out


def withdraw_deleted(opened: OpenNode, policy: Policy | None = None) -> dict[str, int]:
    """Withdraw the versions analysts deleted from the own collection from every partner holding them.

    The deleted versions leave each read collection.  If one of them was the partner's newest,
    STIX versions only move forward (s3.6), so the partner gets a newer version: the released copy
    of the origin's remaining newest version, re-issued (when that version was released to it),
    else a withdrawal.
    """
    policy = policy or current_policy()
    cfg = opened.node.config
    own = cfg.own_collection
    key = _DELETED.format(own.id)
    store = opened.store
    counts: Counter[str] = Counter()
    if not store.get_state(key):
        return dict(counts)
    clause = policy.one("no-release-default")
    clauses = (clause.id,) if clause is not None else ()
    with store.transaction(durable=False) as conn:
        deleted: dict[str, set[str]] = {}
        for oid, versions in orjson.loads(store.get_state(key, conn) or "[]"):
            deleted.setdefault(oid, set()).update(versions)
        left = store.latest_in(conn, own.id, deleted)
        entries = []
        for partner in cfg.recipients_of(own):
            target = cfg.partner_collection(partner, "partner-read").id
            held = store.latest_in(conn, target, deleted)
            for oid, versions in deleted.items():
                store.remove_in(conn, target, oid, versions)
                h = held.get(oid)
                if h is None:
                    continue
                e = _after_deletion(opened, conn, partner, target, h, left.get(oid), versions, clauses, policy)
                if e is not None:
                    entries.append(e)
                    counts[partner] += 1
        audit.append(conn, entries)
        store.set_state(conn, key, "[]")
    return dict(counts)


def _after_deletion(
    opened: OpenNode, conn: Any, partner: str, target: str, held: dict, current: dict | None, versions: set[str],
    clauses: tuple[str, ...], policy: Policy,
) -> audit.Entry | None:
    """One partner, one object some of whose versions were deleted: re-issue, withdraw, or nothing."""
    keys = {parse_timestamp(v) for v in versions}
    hv = object_version(held)
    if hv is None:  # an SCO: no versions to move forward with
        return None if current is not None else _withdraw(opened, conn, partner, target, held, None, "deleted by an analyst",
                                                          clauses, policy, trigger="deleted")
    if current is not None and object_version(current) == hv:
        return None  # the partner's newest is still the origin's newest
    if not is_withdrawal(held) and parse_timestamp(hv) not in keys and _at_origin(opened, held["id"], hv):
        return None  # only older versions went: the partner's newest stands (a re-issued copy is no origin version)
    after = max([parse_timestamp(hv), *keys]) + 1
    released = opened.store.versions_of(target, [(current["id"], object_version(current))]) if current is not None else []
    if released and _ours(opened, held):
        again = {**released[0], "modified": format_timestamp(after)}
        opened.store.add_in(conn, target, signed(opened, target, [again]))
        return audit.Entry(WITHDRAW, partner, held["id"], again["modified"], WITHDRAW, clauses, {
            "type": held.get("type"), "trigger": "deleted", "action": "reissued", "withdrawn_version": hv,
            "reason": f"the version the partner held was deleted by an analyst; version {object_version(current)} is current again",
        })
    if is_withdrawal(held) or released:
        return None  # released: another creator's object; its remaining version is the newest here again
    reason = "deleted by an analyst" if current is None else "the version the partner held was deleted by an analyst"
    return _withdraw(opened, conn, partner, target, held, format_timestamp(after - 1), reason, clauses, policy, trigger="deleted")


def _at_origin(opened: OpenNode, oid: str, version: str) -> bool:
    """Whether ``version`` of ``oid`` is still in the own collection (a copy re-issued after a deletion never is)."""
    return bool(opened.store.versions_of(opened.node.config.own_collection.id, [(oid, version)]))


def deletions_pending(opened: OpenNode) -> bool:
    """Whether analysts deleted versions not yet withdrawn (a background releaser's cheap poll)."""
    raw = opened.store.get_state(_DELETED.format(opened.node.config.own_collection.id))
    return bool(raw) and raw != "[]"


# ---------------------------------------------------------------- joint revocation


def _joint_ids(opened: OpenNode, objs: list[dict], parties: Parties) -> dict[str, dict]:
    """Every joint product id a proposal among ``objs`` can have yielded (any version), with that proposal."""
    out: dict[str, dict] = {}
    store = opened.store
    sources = [c.id for c in opened.node.config.release_sources]
    for rel in objs:
        if rel.get("type") != "relationship" or rel.get("relationship_type") != "attributed-to":
            continue
        if rel.get("created_by_ref") not in parties.identities:
            continue
        out[joint_relationship_id(rel["id"])] = rel
        versions = {v for cid in sources for v in store.versions_list(cid, rel["id"])}
        for v in versions:
            out[joint_report_id(rel["id"], v)] = rel
    return out


def _why_ended(rel: Mapping[str, Any], state: str | None, parties: Parties) -> str:
    if rel.get("revoked"):
        return "the proposal was revoked"
    if state == "dissent":
        return "a partner dissented after concurring"
    return "the proposal was revised (concurrence reset)"


def withdraw_joint(opened: OpenNode, policy: Policy | None = None) -> dict[str, int]:
    """SCCF joint revocation: withdraw released joint products that this node's record of concurrence no longer yields."""
    policy = policy or current_policy()
    cfg = opened.node.config
    clause = policy.one("joint-revocation")
    if not cfg.joint_identity or clause is None:
        return {}
    parties = parties_of(opened, policy)
    objs = gather(opened)
    ids = _joint_ids(opened, objs, parties)
    if not ids:
        return {}
    expected = expected_products(objs, parties)
    # which party may trigger it (sccf.joint-revocation ``dissent_by``; empty: every member): a dissent by
    # another party keeps the released products; a revision or revoked proposal is the proposer's own act
    may_dissent = set(clause.rule.dissent_by) or {name for name, _ in parties.members}  # type: ignore[union-attr]
    states = {a.id: a.state for a in assess_all(objs, parties)}
    not_triggering = {a.id for a in assess_all(objs, parties)
              if a.state == "dissent" and not any(s.dissents and s.party in may_dissent for s in a.stances)}
    latest_rel = {o["id"]: o for o in objs if o.get("type") == "relationship" and o["id"] in {r["id"] for r in ids.values()}}
    counts: Counter[str] = Counter()
    store = opened.store
    with store.transaction(durable=False) as conn:
        entries = []
        for coll in cfg.collections:
            if coll.role != "partner-read":
                continue
            for oid, h in store.latest_in(conn, coll.id, ids).items():
                if h.get("created_by_ref") != parties.joint or is_withdrawal(h) or (oid, version_of(h)) in expected:
                    continue
                rel = latest_rel.get(ids[oid]["id"], ids[oid])
                if rel["id"] in not_triggering:
                    continue
                e = _withdraw(opened, conn, coll.partner, coll.id, h, None, _why_ended(rel, states.get(rel["id"]), parties),
                              (clause.id,), policy, trigger="joint-revocation")
                if e is not None:
                    entries.append(e)
                    counts[coll.partner] += 1
        audit.append(conn, entries)
    return dict(counts)


# ---------------------------------------------------------------- report


def lifecycle_report(logs: Mapping[str, list[dict]]) -> dict[str, Any]:
    """Withdrawals per direction (``node->partner``) and conflicts per node, from audit entries (pure)."""
    withdrawn: Counter[str] = Counter()
    conflicts: Counter[str] = Counter()
    for node, entries in logs.items():
        for e in entries:
            if e["event"] == WITHDRAW and e.get("partner"):
                withdrawn[f"{node}->{e['partner']}"] += 1
            elif e["event"] == "conflict":
                conflicts[node] += 1
    return {"withdrawn": dict(sorted(withdrawn.items())), "conflicts": dict(sorted(conflicts.items()))}


# ---------------------------------------------------------------- corrections are versions


def conflicts_in(store: Any, collection_id: str, objs: Sequence[dict]) -> list[tuple[dict, str]]:
    """``(posted object, stored version)`` for each object whose ``id`` and version are stored with other content.

    Two different objects with the same ``id`` and version in ``objs`` conflict too (the second one).
    STIX 2.1 s3.6: a changed object is a new version, with a later ``modified``.
    """
    from exchange.storage.store import Selection

    keyed = [(o, parse_timestamp(v)) for o in objs if isinstance(o, dict) and (v := object_version(o)) is not None]
    ids = sorted({o["id"] for o, _ in keyed})
    stored: dict[tuple[str, int], tuple[str, dict]] = {}
    for i in range(0, len(ids), 500):
        for r in store.iter_rows(Selection(collection_id, ids=tuple(ids[i : i + 500]), versions=("all",))):
            stored[(r.stix_id, parse_timestamp(r.version))] = (r.version, orjson.loads(r.body))
    out: list[tuple[dict, str]] = []
    seen: dict[tuple[str, int], dict] = {}
    for o, key in keyed:
        have = stored.get((o["id"], key))
        if have is not None and have[1] != o:
            out.append((o, have[0]))
        elif have is None and key in seen.get(o["id"], {}) and seen[o["id"]][key] != o:
            out.append((o, object_version(o)))  # type: ignore[arg-type]
        seen.setdefault(o["id"], {})[key] = o
    return out


def conflict_entries(conflicts: Sequence[tuple[dict, str]], decision: str, where: str, partner: str | None = None) -> list[audit.Entry]:
    """One audit entry ``conflict`` per conflicting object (``decision``: refused, skipped, new-version)."""
    return [
        audit.Entry("conflict", partner, o["id"], stored, decision, ("stix.same-version-differs",), {
            "type": o.get("type"), "reason": f"a different object with this id and version {stored} is already stored (STIX 2.1 s3.6)",
            "where": where,
        })
        for o, stored in conflicts
    ]


def corrected(obj: dict, stored_versions: Iterable[str], now: str) -> dict:
    """A corrected version of ``obj``: the same content with a fresh ``modified`` after every stored version (pure)."""
    floor = max((parse_timestamp(v) for v in stored_versions), default=0) + 1000
    stamp = max(parse_timestamp(now), floor)
    stamp -= stamp % 1000  # millisecond precision, as STIX producers write it
    if stamp < floor:
        stamp += 1000
    return {**obj, "modified": format_timestamp(stamp)[:-4] + "Z"}


def resolve_conflicts(opened: OpenNode, collection_id: str, objs: list[dict], on_conflict: str, source: str, now: str) -> list[dict]:
    """Apply ``load --on-conflict``: ``refuse`` (nothing written), ``skip`` or ``new-version``; audits every conflict.

    Returns the objects to write.  ``new-version`` re-stamps only objects this node created: another
    creator's object can be corrected only by its creator (STIX 2.1 s3.6).
    """
    from exchange.errors import VersionConflict

    found = conflicts_in(opened.store, collection_id, objs)
    if not found:
        return objs
    cfg = opened.node.config
    listed = ", ".join(f"{o['id']} (stored version {v})" for o, v in found)
    if on_conflict == "new-version":
        foreign = [(o, v) for o, v in found if o.get("created_by_ref") != cfg.identity]
        if foreign:
            audit.record(opened.store, conflict_entries(found, "refused", source))
            names = ", ".join(f"{o['id']} (stored version {v})" for o, v in foreign)
            raise VersionConflict(f"{source}: {len(foreign)} conflicting objects were not created by this node and cannot be "
                                  f"re-versioned here: {names}; nothing loaded")
        fixed = {id(o): corrected(o, opened.store.versions_list(collection_id, o["id"]), now) for o, _ in found}
        audit.record(opened.store, conflict_entries(found, "new-version", source))
        return [fixed.get(id(o), o) for o in objs]
    if on_conflict == "skip":
        audit.record(opened.store, conflict_entries(found, "skipped", source))
        skip = {id(o) for o, _ in found}
        return [o for o in objs if id(o) not in skip]
    audit.record(opened.store, conflict_entries(found, "refused", source))
    raise VersionConflict(f"{source}: {len(found)} objects conflict with stored versions (same id and modified, other content); "
                          f"nothing loaded: {listed}. Correct them as new versions (--on-conflict new-version) or --on-conflict skip")
