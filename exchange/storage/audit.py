"""The node's audit trail: an append-only, hash-chained log of every decision.

Every release, redaction, withholding, inbound rejection and sync transfer is
one entry (object id and version, partner, decision, clause ids, time).  Each
entry's ``hash`` is SHA-256 over the previous entry's hash and the entry's
canonical JSON, and the head (count, hash) is also kept in ``meta``: editing,
deleting, reordering or truncating entries breaks the chain and ``verify``
names the first bad entry.  Entries are appended inside the same transaction
as the data they describe, so the log and the collections never disagree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import orjson
from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.exc import SQLAlchemyError

from exchange.errors import StorageError
from exchange.storage.schema import audit, meta
from exchange.storage.store import Store, insert_rows, now_us

GENESIS = "0" * 64
EVENTS = frozenset(
    {"share", "redact", "withhold", "inbound-accept", "inbound-reject", "push", "push-reject", "pull", "sync-error", "config",
     "transport-withhold", "withdraw", "conflict"}
)


@dataclass(frozen=True)
class Entry:
    """One audit entry before it is chained."""

    event: str
    partner: str | None = None
    object_id: str | None = None
    version: str | None = None
    decision: str | None = None
    clauses: tuple[str, ...] = ()
    detail: dict = field(default_factory=dict)


def _digest(prev: str, seq: int, at: int, e: Entry) -> str:
    body = orjson.dumps(
        [seq, at, e.event, e.partner, e.object_id, e.version, e.decision, list(e.clauses), e.detail],
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(prev.encode("ascii") + b"|" + body).hexdigest()


def append(conn: Connection, entries: Iterable[Entry], *, at: int | None = None) -> int:
    """Chain and insert entries inside the caller's write transaction; returns how many."""
    rows = []
    last = conn.execute(select(audit.c.seq, audit.c.hash).order_by(audit.c.seq.desc()).limit(1)).first()
    seq, prev = (last.seq, last.hash) if last is not None else (0, GENESIS)
    stamp = at or now_us()
    for e in entries:
        if e.event not in EVENTS:
            raise ValueError(f"unknown audit event {e.event!r}")
        seq += 1
        h = _digest(prev, seq, stamp, e)
        rows.append(
            {
                "seq": seq, "at": stamp, "event": e.event, "partner": e.partner, "object_id": e.object_id,
                "version": e.version, "decision": e.decision, "clauses": orjson.dumps(list(e.clauses)).decode(),
                "detail": orjson.dumps(e.detail, option=orjson.OPT_SORT_KEYS).decode(), "prev": prev, "hash": h,
            }
        )
        prev = h
    if rows:
        insert_rows(conn, audit, rows)
        conn.execute(delete(meta).where(meta.c.key == "audit_head"))
        conn.execute(insert(meta).values(key="audit_head", value=f"{seq}:{prev}"))
    return len(rows)


def record(store: Store, entries: Iterable[Entry]) -> int:
    """Append entries in a transaction of their own."""
    with store.transaction() as conn:
        return append(conn, entries)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    entries: int
    problem: str | None = None


def verify(store: Store) -> Verdict:
    """Recompute the chain; the first broken link (or a truncated tail) is reported.

    A database that cannot be read (damaged pages, a missing table) is a ``StorageError``
    with one line, never a traceback.
    """
    try:
        with store.engine.connect() as conn:
            head = conn.execute(select(meta.c.value).where(meta.c.key == "audit_head")).scalar()
            verdict, count, prev = _walk(conn.execute(select(audit).order_by(audit.c.seq)))
    except SQLAlchemyError as exc:
        first = str(exc.orig if getattr(exc, "orig", None) is not None else exc).splitlines()[0][:200]
        raise StorageError(f"cannot read the audit log: {exc.__class__.__name__}: {first}") from exc
    if verdict is not None:
        return verdict
    if head is None:
        if count:
            return Verdict(False, count, "the chain head record is missing")
        return Verdict(True, 0)
    head_seq, _, head_hash = head.partition(":")
    if not head_seq.isascii() or not head_seq.isdigit():
        return Verdict(False, count, f"the chain head record is unreadable ({head[:80]!r})")
    if int(head_seq) != count or head_hash != prev:
        return Verdict(False, count, f"the log ends at entry {count} but its head says {head_seq} (entries removed)")
    return Verdict(True, count)


def _walk(rows: Iterable) -> tuple[Verdict | None, int, str]:
    """``(the first problem or None, entries walked, the last hash)`` over the audit rows in ``seq`` order."""
    prev = GENESIS
    expected_seq = 0
    for row in rows:
        expected_seq += 1
        if row.seq != expected_seq:
            return Verdict(False, expected_seq - 1, f"entry {expected_seq} is missing (next is {row.seq})"), expected_seq - 1, prev
        if row.prev != prev:
            return Verdict(False, expected_seq - 1, f"entry {row.seq}: does not follow entry {row.seq - 1}"), expected_seq - 1, prev
        try:
            e = Entry(
                event=row.event, partner=row.partner, object_id=row.object_id, version=row.version,
                decision=row.decision, clauses=tuple(orjson.loads(row.clauses)), detail=orjson.loads(row.detail),
            )
        except (orjson.JSONDecodeError, TypeError):
            return Verdict(False, expected_seq - 1, f"entry {row.seq}: unreadable"), expected_seq - 1, prev
        if _digest(prev, row.seq, row.at, e) != row.hash:
            return Verdict(False, expected_seq - 1, f"entry {row.seq}: content does not match its hash (edited)"), expected_seq - 1, prev
        prev = row.hash
    return None, expected_seq, prev


def entries(store: Store) -> Iterator[dict]:
    """Every entry as a dict, in order (for reports)."""
    with store.engine.connect() as conn:
        for row in conn.execute(select(audit).order_by(audit.c.seq)):
            yield {
                "seq": row.seq, "at": row.at, "event": row.event, "partner": row.partner, "object_id": row.object_id,
                "version": row.version, "decision": row.decision, "clauses": orjson.loads(row.clauses),
                "detail": orjson.loads(row.detail),
            }
