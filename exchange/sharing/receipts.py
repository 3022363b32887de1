"""The agent's side of receipts and checkpoints (see ``exchange.node.receipts`` for the design).

At each sync, after pull and push, ``exchange_receipts``:

1. publishes this node's receipts for the partner's objects into its own
   ``partner-receipts`` collection (the partner reads them on its next sync);
2. sends this node's signed audit head to the partner's receipts collection when
   it moved since the last one sent (TAXII Add Objects, s5.5); the partner keeps it
   and answers with its own receipts and head;
3. reads the partner's receipts collection from a bookmark: each receipt about one
   of this node's object versions becomes one ``receipt`` audit entry (once per id,
   version, decision and rule), each of the partner's checkpoints is kept in this
   node's own receipts collection for that partner (append-only), where the partner's
   ``audit verify --checkpoints-from`` finds it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import orjson
from sqlalchemy import select

from exchange.node import receipts as node_receipts
from exchange.node.ops import OpenNode
from exchange.sharing.client import PartnerClient
from exchange.stix import parse_timestamp
from exchange.storage import audit
from exchange.storage.schema import audit as audit_table

log = logging.getLogger(__name__)


def exchange_receipts(opened: OpenNode, partner: str, client: PartnerClient, *, page_size: int = 1000) -> dict:
    """One round of receipts and checkpoints with ``partner``; a summary of what moved."""
    cfg = opened.node.config
    pcfg = cfg.partners[partner]
    summary = {"receipts_published": 0, "checkpoint_sent": None, "receipts_stored": 0, "checkpoints_stored": 0}
    if pcfg.receipts is None:
        return summary
    store = opened.store
    with store.transaction(durable=False) as conn:
        summary["receipts_published"] = node_receipts.publish_receipts(store, cfg, partner, conn)
        head = node_receipts.head_in(conn)
    sent_key = f"checkpoint-sent:{partner}"
    if head is not None and head.sig and store.get_state(sent_key) != str(head.seq):
        status = client.push(pcfg.receipts, [node_receipts.checkpoint_note(cfg, head)])
        if status["success_count"]:
            with store.transaction(durable=False) as conn:
                store.set_state(conn, sent_key, str(head.seq))
            summary["checkpoint_sent"] = head.seq
        else:
            log.warning("checkpoint to %s refused: %s", partner, status["failures"])
    got, cps = read_partner_receipts(opened, partner, client, page_size=page_size)
    summary["receipts_stored"], summary["checkpoints_stored"] = got, cps
    return summary


def read_partner_receipts(opened: OpenNode, partner: str, client: PartnerClient, *, page_size: int = 1000) -> tuple[int, int]:
    """Pull the partner's receipts collection from the bookmark; returns (receipt entries, checkpoints) stored."""
    cfg = opened.node.config
    store = opened.store
    ident = cfg.partners[partner].identity
    key = f"receipts-pull:{partner}"
    mark = orjson.loads(store.get_state(key) or "{}")
    own_coll = node_receipts.receipts_collection(cfg, partner)
    receipts_n = checkpoints_n = 0
    for page in client.pages(cfg.partners[partner].receipts, added_after=mark.get("added_after"), limit=page_size):  # type: ignore[arg-type]
        theirs = [o for o in page.objects if isinstance(o, dict) and o.get("created_by_ref") == ident and o.get("type") == "note"]
        cps = [o for o in theirs if node_receipts.checkpoint_of(o, ident) is not None]
        items = [(o["id"], it) for o in theirs for it in _items(o)]
        new_mark = {"added_after": page.date_added_last or mark.get("added_after")}
        with store.transaction(durable=False) as conn:
            entries = _new_receipts(conn, partner, items)
            audit.append(conn, entries)
            if cps:
                checkpoints_n += store.add_in(conn, own_coll.id, cps).added
            store.set_state(conn, key, orjson.dumps(new_mark).decode())
        mark = new_mark
        receipts_n += len(entries)
    return receipts_n, checkpoints_n


def _items(note: dict) -> list[dict]:
    payload = note.get("x_cti_receipt")
    if not isinstance(payload, list):
        return []
    decisions = ("accepted", "refused", "withdrawn")
    return [it for it in payload if isinstance(it, dict) and isinstance(it.get("id"), str) and it.get("decision") in decisions]


def _new_receipts(conn: Any, partner: str, items: list[tuple[str, dict]]) -> list[audit.Entry]:
    """``receipt`` entries for the items not recorded yet (one per id, version, decision and rule)."""
    if not items:
        return []
    ids = sorted({it["id"] for _, it in items})
    seen: set[tuple] = set()
    for i in range(0, len(ids), 500):
        rows = conn.execute(
            select(audit_table.c.object_id, audit_table.c.version, audit_table.c.decision, audit_table.c.clauses)
            .where(audit_table.c.event == "receipt", audit_table.c.partner == partner, audit.object_filter(conn, ids[i:i + 500]))
        ).all()
        seen.update((r.object_id, r.version, r.decision, (orjson.loads(r.clauses) or [None])[0]) for r in rows)
    out = []
    for note_id, it in items:
        k = (it["id"], it.get("version"), it["decision"], it.get("rule"))
        if k in seen:
            continue
        seen.add(k)
        detail: dict[str, Any] = {"receipt": note_id, "partner_event": it.get("event"), "partner_at": it.get("at")}
        if it.get("reason"):
            detail["reason"] = it["reason"]
        with contextlib.suppress(KeyError, TypeError, ValueError):
            detail["partner_at_us"] = parse_timestamp(it["at"])
        out.append(audit.Entry("receipt", partner, it["id"], it.get("version"), it["decision"], (it["rule"],) if it.get("rule") else (), detail))
    return out


def held_by_partner(opened: OpenNode, partner: str, client: PartnerClient) -> list[audit.Checkpoint]:
    """This node's checkpoints as the partner holds them, read over TAXII (its receipts collection for us)."""
    cfg = opened.node.config
    ref = cfg.partners[partner].receipts
    if ref is None:
        return []
    out = []
    for page in client.pages(ref):
        for obj in page.objects:
            head = node_receipts.checkpoint_of(obj, cfg.identity)
            if head is not None:
                out.append(audit.Checkpoint(head, partner, obj["id"]))
    return out
