"""Who produced what a sighting sights: input to clause ``sighting-to-producer`` (CERT MOU)."""

from __future__ import annotations

from typing import Any


def producers_of(opened: Any, objs: list[dict]) -> dict[str, str]:
    """``{sighted id: producer identity}`` for the sightings in ``objs`` whose target is not in the batch.

    The producer is the target's ``created_by_ref`` as stored here (the own collection first), or,
    for an object without one received from a partner, that partner (what the node observed).
    """
    batch = {o.get("id") for o in objs}
    targets = {o["sighting_of_ref"] for o in objs if o.get("type") == "sighting" and isinstance(o.get("sighting_of_ref"), str)} - batch
    if not targets:
        return {}
    cfg = opened.node.config
    out: dict[str, str] = {}
    for coll in [cfg.own_collection] + [c for c in cfg.collections if c.role == "partner-inbox"]:
        missing = targets - set(out)
        if not missing:
            break
        for obj in opened.store.latest_many([coll.id], missing):
            creator = obj.get("created_by_ref")
            if not creator and coll.role == "partner-inbox":
                creator = cfg.partners[coll.partner].identity
            if creator:
                out[obj["id"]] = creator
    return out
