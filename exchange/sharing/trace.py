"""One object's journey, version by version, from one or both nodes' records (``cti-exchange trace``).

Read-only over each node's audit log (indexed by object id) and its collections:
where each version was loaded, every release decision per partner with its
clauses and redacted fields, withdrawals, transfers (push, pull, inbound
acceptance or refusal, with the time), the partner's receipts this node holds,
onward releases, and sightings of the object (made here or received) with their
own releases.  With one data folder the partner's side is what its receipts say;
with both, the two logs are joined (each event names the node that recorded it).

JSON: ``{"id", "versions": [{"modified", "events": [{"at", "node", "event",
"partner", "decision", "clauses", "detail"}]}]}``, versions in time order, events
in time order within each.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from exchange.config import load_node
from exchange.errors import BadRequest
from exchange.stix import format_timestamp, is_identifier, parse_timestamp
from exchange.storage import audit
from exchange.storage.store import Selection, Store, node_data


def _event(at: int, node: str, event: str, partner: str | None, decision: str | None, clauses: Iterable[str], detail: dict) -> dict:
    return {"at": format_timestamp(at), "node": node, "event": event, "partner": partner, "decision": decision,
            "clauses": list(clauses), "detail": detail, "_at": at}


def node_events(store: Store, node: str, cfg: Any, object_id: str) -> list[tuple[str | None, dict]]:
    """``(version, event)`` pairs one node recorded about ``object_id`` and about the sightings of it."""
    out: list[tuple[str | None, dict]] = []
    for e in audit.select_entries(store, object_id=object_id):
        out.append((e["version"], _event(e["at"], node, e["event"], e["partner"], e["decision"], e["clauses"], e["detail"])))
    if cfg is None:
        return out
    names = {p.identity: n for n, p in cfg.partners.items()} | {cfg.identity: cfg.node}
    for coll in cfg.collections:
        if coll.role == "own":
            for row in store.iter_rows(Selection(coll.id, ids=(object_id,), versions=("all",))):
                out.append((row.version, _event(row.date_added, node, "loaded", None, None, (), {"collection": coll.alias})))
    out += _sightings(store, node, cfg, object_id, names)
    return out


def _sightings(store: Store, node: str, cfg: Any, object_id: str, names: dict[str, str]) -> list[tuple[str | None, dict]]:
    """Sightings of ``object_id`` held by this node, and what became of each (its own audit entries)."""
    out: list[tuple[str | None, dict]] = []
    for coll in cfg.collections:
        if coll.role not in ("own", "partner-inbox"):
            continue
        for row in store.iter_rows(Selection(coll.id, types=("sighting",), versions=("last",))):
            s = orjson.loads(row.body)
            if s.get("sighting_of_ref") != object_id:
                continue
            by = names.get(s.get("created_by_ref"), s.get("created_by_ref"))
            info = {"sighting": s["id"], "by": by, "count": s.get("count"), "first_seen": s.get("first_seen"),
                    "last_seen": s.get("last_seen"), "where_sighted_refs": s.get("where_sighted_refs", []), "collection": coll.alias}
            at = parse_timestamp(s["created"]) if isinstance(s.get("created"), str) else row.date_added
            if coll.role == "partner-inbox":  # received; its arrival is among the entries below
                out.append((None, _event(at, node, "sighting-received", coll.partner, None, (), info)))
            for e in audit.select_entries(store, object_id=s["id"]):
                out.append((None, _event(e["at"], node, f"sighting-{e['event']}", e["partner"], e["decision"], e["clauses"],
                                         {**e["detail"], "sighting": s["id"], "by": by})))
    return out


def build_trace(object_id: str, per_node: Iterable[list[tuple[str | None, dict]]]) -> dict[str, Any]:
    """Group the events by version (``modified``); version-less events (sightings) join the latest version."""
    if not is_identifier(object_id):
        raise BadRequest(f"{object_id!r}: not a STIX identifier")
    versions: dict[str | None, list[dict]] = {}
    loose: list[dict] = []
    for events in per_node:
        for version, ev in events:
            if version is None:
                loose.append(ev)
            else:
                versions.setdefault(version, []).append(ev)
    order = sorted(versions, key=lambda v: (_key(v), v))
    if loose:
        if order:
            versions[order[-1]].extend(loose)
        else:
            versions[None] = loose
            order = [None]
    out = []
    for v in order:
        events = sorted(versions[v], key=lambda e: (e["_at"], e["node"], e["event"]))
        for e in events:
            e.pop("_at", None)
        out.append({"modified": v, "events": events})
    return {"id": object_id, "versions": out}


def _key(version: str) -> int:
    try:
        return parse_timestamp(version)
    except (TypeError, ValueError):
        return 0


def trace_dirs(object_id: str, data_dirs: Iterable[Path]) -> dict[str, Any]:
    """The trace of ``object_id`` from each node data folder (one: its records and receipts; two: joined)."""
    per_node = []
    for d in data_dirs:
        with node_data(d) as (store, name):
            cfg = load_node(name).config if name else None
            per_node.append(node_events(store, name or Path(d).name, cfg, object_id))
    return build_trace(object_id, per_node)
