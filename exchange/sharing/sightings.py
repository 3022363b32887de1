"""Sightings back to the producer (STIX 2.1 s4.10, CERT MOU feedback).

``record_sighting`` writes a ``sighting`` of an indicator (or any SDO) by this
node's identity into its own collection, marked with the TLP level of what it
sights, and releases it under the policy: clause ``cert.sighting-to-producer``
sends a sighting of a partner's TLP:AMBER (or AMBER+STRICT) object to that
producer only, and the usual clauses decide the rest.  ``sightings_of`` lists
what this node holds (made here, or received from partners) per sighted object.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

import orjson

from exchange.errors import BadRequest
from exchange.node.ops import OpenNode
from exchange.policy.markings import tlp_name
from exchange.sharing.release import Released, release_all
from exchange.stix import format_timestamp, is_identifier, object_version, parse_timestamp
from exchange.storage import audit
from exchange.storage.store import Selection, now_us

TLP_IDS = {
    "TLP:CLEAR": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "TLP:GREEN": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "TLP:AMBER": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "TLP:AMBER+STRICT": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "TLP:RED": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}


def find_sighted(opened: OpenNode, object_id: str) -> tuple[dict, Any] | None:
    """The latest version of ``object_id`` this node holds (own collection first, then the partners' inboxes) and where."""
    cfg = opened.node.config
    for coll in [cfg.own_collection] + [c for c in cfg.collections if c.role == "partner-inbox"]:
        obj = opened.store.latest(coll.id, object_id)
        if obj is not None:
            return obj, coll
    return None


def _timestamp(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return format_timestamp(parse_timestamp(value))
    except ValueError as exc:
        raise BadRequest(f"{name} {value!r}: {exc}") from exc


def build_sighting(
    opened: OpenNode, object_id: str, *, count: int | None = None, first_seen: str | None = None, last_seen: str | None = None,
    where_sighted: str | None = None, now: int | None = None,
) -> tuple[dict, dict, Any]:
    """``(sighting, sighted object, its collection)``: a STIX 2.1 sighting (s4.10) by this node's identity."""
    cfg = opened.node.config
    if not is_identifier(object_id):
        raise BadRequest(f"--of {object_id!r}: not a STIX identifier")
    found = find_sighted(opened, object_id)
    if found is None:
        raise BadRequest(f"node {cfg.node!r} holds no object {object_id} (its own collection or a partner's inbox)")
    sighted, coll = found
    first, last = _timestamp("--first-seen", first_seen), _timestamp("--last-seen", last_seen)
    if first and last and parse_timestamp(last) < parse_timestamp(first):
        raise BadRequest("--last-seen must not be earlier than --first-seen (STIX 2.1 s4.10)")
    if where_sighted is not None and not where_sighted.startswith("identity--"):
        raise BadRequest(f"--where-sighted {where_sighted!r}: expected an identity id (where_sighted_refs, s4.10)")
    ts = format_timestamp(now or now_us())
    level = tlp_name(sighted)
    sighting: dict[str, Any] = {
        "type": "sighting", "spec_version": "2.1", "id": f"sighting--{uuid.uuid4()}", "created": ts, "modified": ts,
        "created_by_ref": cfg.identity, "sighting_of_ref": object_id,
        # the sighting says as much as what it sights: it carries the same TLP level (TLP:AMBER if none)
        "object_marking_refs": [TLP_IDS.get(level, TLP_IDS["TLP:AMBER"])],
    }
    if count is not None:
        sighting["count"] = count
    if first:
        sighting["first_seen"] = first
    if last:
        sighting["last_seen"] = last
    if where_sighted:
        sighting["where_sighted_refs"] = [where_sighted]
    return sighting, sighted, coll


def record_sighting(opened: OpenNode, object_id: str, **kwargs: Any) -> tuple[dict, dict[str, Released]]:
    """Store a new sighting in the own collection (with its ``sighting`` audit entry), then release it."""
    sighting, sighted, coll = build_sighting(opened, object_id, **kwargs)
    cfg = opened.node.config
    producer = coll.partner if coll.role == "partner-inbox" else None
    with opened.store.transaction() as conn:
        opened.store.add_in(conn, cfg.own_collection.id, [sighting])
        audit.append(conn, [audit.Entry(
            "sighting", producer, object_id, object_version(sighted), "recorded", (),
            {"sighting": sighting["id"], "count": sighting.get("count"), "tlp": tlp_name(sighting), "type": sighted.get("type")},
        )])
    return sighting, release_all(opened)


def sightings_of(opened: OpenNode, object_id: str | None = None) -> dict[str, list[dict]]:
    """``{sighted object id: [sightings]}`` held here (own and received), each with ``by`` (party) and ``collection``."""
    cfg = opened.node.config
    names = {p.identity: n for n, p in cfg.partners.items()} | {cfg.identity: cfg.node}
    out: dict[str, list[dict]] = defaultdict(list)
    for coll in [cfg.own_collection] + [c for c in cfg.collections if c.role == "partner-inbox"]:
        for row in opened.store.iter_rows(Selection(coll.id, types=("sighting",), versions=("last",))):
            s = orjson.loads(row.body)
            target = s.get("sighting_of_ref")
            if object_id is not None and target != object_id:
                continue
            out[target].append({
                "id": s["id"], "by": names.get(s.get("created_by_ref"), s.get("created_by_ref")), "collection": coll.alias,
                "count": s.get("count"), "first_seen": s.get("first_seen"), "last_seen": s.get("last_seen"),
                "where_sighted_refs": s.get("where_sighted_refs", []), "tlp": tlp_name(s), "created": s.get("created"),
            })
    return dict(out)
