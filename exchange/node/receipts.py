"""Receipts and audit checkpoints: what a node tells its partner, over TAXII (issue 17).

Each node has, per partner, one ``partner-receipts`` collection (``us-receipts``
on the ROK node) that the partner's account may read and write.  It holds STIX
2.1 ``note`` objects (s4.9) of two kinds, created by the node that wrote them:

* **receipts** (``x_cti_receipt``): what this node did with the object versions
  that partner sent: ``accepted``, ``refused`` (with the inbound rule id and its
  reason) or ``withdrawn``.  ``object_refs`` lists the object ids; nothing of an
  object's content is repeated.  They are built from this node's own audit entries
  (``inbound-accept``, ``pull``, ``inbound-reject``, ``withdraw``), so every later
  decision is reported too;
* **checkpoints** (``x_cti_checkpoint``): a node's signed audit head (seq, hash,
  time, key id, signature).  The partner's agent *writes* its own head here at each
  sync; this node keeps it (the collection is append-only: no one may delete from it)
  and answers with its own head in the same transaction.  ``audit verify
  --checkpoints-from`` reads them back.

Nothing here goes through the sharing policy: receipts say only what the partner
already knows (ids and versions it sent) and checkpoints only hashes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import orjson
from sqlalchemy import Connection, select

from exchange.config import NodeConfig
from exchange.stix import format_timestamp
from exchange.storage import audit
from exchange.storage.schema import audit as audit_table
from exchange.storage.schema import meta
from exchange.storage.store import Selection, Store, now_us

NS = uuid.UUID("0b7f3c55-2d7e-4d8c-8f6a-4f1e3c2b9a17")
TLP_AMBER = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"
RECEIPT_ABSTRACT = "cti-exchange receipt"
CHECKPOINT_ABSTRACT = "cti-exchange audit checkpoint"
_ACCEPTED = {"inbound-accept", "pull"}
_PER_NOTE = 1000


def receipts_collection(cfg: NodeConfig, partner: str) -> Any:
    """This node's ``partner-receipts`` collection for ``partner``."""
    return cfg.partner_collection(partner, "partner-receipts")


def _note(cfg: NodeConfig, kind: str, key: str, at: int, refs: list[str], content: str, payload: Any) -> dict:
    ts = format_timestamp(at)
    return {
        "type": "note", "spec_version": "2.1", "id": f"note--{uuid.uuid5(NS, f'{cfg.node}|{kind}|{key}')}",
        "created": ts, "modified": ts, "created_by_ref": cfg.identity,
        "abstract": RECEIPT_ABSTRACT if kind == "receipt" else CHECKPOINT_ABSTRACT,
        "content": content, "object_refs": refs, "object_marking_refs": [TLP_AMBER],
        f"x_cti_{kind}": payload,
    }


def receipt_items(entries: Iterable[dict], inbox_ids: set[str] | None = None) -> list[dict]:
    """Receipt items from audit entries about one partner's objects (one per id, version, decision and rule)."""
    out: dict[tuple, dict] = {}
    for e in entries:
        if not e["object_id"]:
            continue
        if e["event"] in _ACCEPTED:
            decision, rule, reason = "accepted", None, None
        elif e["event"] == "inbound-reject":
            decision, rule, reason = "refused", (e["clauses"] or [None])[0], e["detail"].get("reason")
        elif e["event"] == "withdraw" and (inbox_ids is None or e["object_id"] in inbox_ids):
            decision, rule, reason = "withdrawn", (e["clauses"] or [None])[0], e["detail"].get("reason")
        else:
            continue
        key = (e["object_id"], e["version"], decision, rule)
        out.setdefault(key, {
            "id": e["object_id"], "version": e["version"], "decision": decision, "rule": rule, "reason": reason,
            "at": format_timestamp(e["at"]), "event": e["event"],
        })
    return list(out.values())


def _entries_after(conn: Connection, partner: str, seq: int) -> tuple[list[dict], int]:
    rows = conn.execute(
        select(audit_table).where(audit_table.c.seq > seq, audit.involving(partner),
                                  audit_table.c.event.in_(sorted(_ACCEPTED | {"inbound-reject", "withdraw"})))
        .order_by(audit_table.c.seq)
    ).all()
    last = conn.execute(select(audit_table.c.seq).order_by(audit_table.c.seq.desc()).limit(1)).scalar() or seq
    return [  # a group row (withdrawals to several partners): this partner's entry of it
        {"seq": e["seq"], "at": e["at"], "event": e["event"], "object_id": e["object_id"], "version": e["version"],
         "clauses": e["clauses"], "detail": e["detail"]}
        for r in rows for e in audit.row_entries(r) if e["partner"] == partner
    ], last


def publish_receipts(store: Store, cfg: NodeConfig, partner: str, conn: Connection) -> int:
    """Write receipts for the partner's objects decided since the last ones (inside the caller's write transaction)."""
    key = f"receipts-published:{partner}"
    done = int(store.get_state(key, conn) or 0)
    entries, last = _entries_after(conn, partner, done)
    if last == done:
        return 0
    inbox = next((c for c in cfg.collections if c.role == "partner-inbox" and c.partner == partner), None)
    withdrawn = {e["object_id"] for e in entries if e["event"] == "withdraw"}
    inbox_ids = store.existing_ids(inbox.id, withdrawn) if inbox is not None and withdrawn else set()
    items = receipt_items(entries, inbox_ids)
    notes = []
    for i in range(0, len(items), _PER_NOTE):
        chunk = items[i:i + _PER_NOTE]
        counts: dict[str, int] = {}
        for it in chunk:
            counts[it["decision"]] = counts.get(it["decision"], 0) + 1
        text = f"{cfg.node} receipt for {len(chunk)} object versions from {partner}: " + ", ".join(f"{n} {d}" for d, n in sorted(counts.items()))
        notes.append(_note(cfg, "receipt", f"{partner}|{done}|{last}|{i}", now_us(), sorted({it["id"] for it in chunk}), text, chunk))
    if notes:
        store.add_in(conn, receipts_collection(cfg, partner).id, notes)
    store.set_state(conn, key, str(last))
    return len(items)


def head_in(conn: Connection) -> audit.Head | None:
    """The head record as the caller's transaction sees it."""
    raw = conn.execute(select(meta.c.value).where(meta.c.key == audit.HEAD_KEY)).scalar()
    try:
        return audit.Head.decode(raw) if raw else None
    except ValueError:
        return None


def checkpoint_note(cfg: NodeConfig, head: audit.Head) -> dict:
    """This node's signed audit head as a STIX note (its id fixed by the head: a re-send is idempotent)."""
    return _note(cfg, "checkpoint", f"{head.seq}|{head.hash}", head.at, [cfg.identity],
                 f"audit head of {cfg.node}: entry {head.seq}", {"node": cfg.node, **head.as_json()})


def write_own_checkpoint(store: Store, cfg: NodeConfig, partner: str, conn: Connection) -> audit.Head | None:
    """Put this node's current signed head into the partner's receipts collection (once per head)."""
    head = head_in(conn)
    if head is None or not head.sig:
        return None
    store.add_in(conn, receipts_collection(cfg, partner).id, [checkpoint_note(cfg, head)])
    return head


def checkpoint_of(obj: Any, identity: str) -> audit.Head | None:
    """The head a checkpoint note carries, if it is one created by ``identity``."""
    if not isinstance(obj, dict) or obj.get("type") != "note" or obj.get("created_by_ref") != identity:
        return None
    try:
        return audit.Head.from_json(obj.get("x_cti_checkpoint"))
    except ValueError:
        return None


def refusal(obj: dict, partner_identity: str) -> str | None:
    """Why a partner's write to its receipts collection here is refused (``None``: it is its own checkpoint)."""
    if checkpoint_of(obj, partner_identity) is None:
        return ("receipts.checkpoint-only: a partner writes only its own audit checkpoints here "
                "(a note created by its identity carrying x_cti_checkpoint)")
    return None


def on_partner_checkpoint(store: Store, cfg: NodeConfig, partner: str, conn: Connection) -> None:
    """After a partner stored its checkpoint here: publish its receipts and answer with this node's own head."""
    publish_receipts(store, cfg, partner, conn)
    write_own_checkpoint(store, cfg, partner, conn)


def held_checkpoints(store: Store, cfg: NodeConfig, of: str) -> list[audit.Checkpoint]:
    """The checkpoints of party ``of`` (a partner name) that this node holds, every version."""
    identity = cfg.partners[of].identity
    coll = receipts_collection(cfg, of)
    out = []
    for row in store.iter_rows(Selection(coll.id, versions=("all",))):
        obj = orjson.loads(row.body)
        head = checkpoint_of(obj, identity)
        if head is not None:
            out.append(audit.Checkpoint(head, cfg.node, obj["id"]))
    return out


def audited_collections(cfg: NodeConfig) -> list[str]:
    """The collections whose every row is written in the same transaction as its audit entries."""
    return [c.id for c in cfg.collections if c.role in ("partner-read", "partner-inbox")]
