"""What the node's web page reads: its audit log (folded incrementally), decisions, one object's journey, partners.

``AuditView`` keeps a ``Tally`` per server process and, at each look, reads only
the audit entries appended since the previous one, checking each new entry's
hash link as ``exchange.storage.audit.verify`` does (so the chain status is
that of every entry up to the head, verified incrementally since the process
started; ``cti-exchange audit verify`` re-reads the whole chain).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import and_, func, select

from exchange.sharing.report import DECISIONS, Tally
from exchange.storage import audit as audit_log
from exchange.storage.schema import BODY, WITH_BODY, audit, meta, objects, sync_state
from exchange.storage.store import Store, now_us

#: sync_state keys the page may show (the node's other state, like its secret in ``meta``, never is)
STATE_PREFIXES = ("pull:", "push:", "release:", "deferred:")


@dataclass
class ChainStatus:
    verified: bool
    length: int
    head: str | None
    problem: str | None
    checkpoints: list[tuple[str, str]] = field(default_factory=list)
    checked_at: int = 0


@dataclass(frozen=True)
class Snapshot:
    seq: int
    report: dict[str, Any]
    events: dict[tuple, int]
    last_at: dict[tuple, int]
    timeline: tuple[str, list]


class AuditView:
    """The node's audit log as the page shows it: one ``Tally`` per process, caught up at each look."""

    def __init__(self, store: Store, node: str) -> None:
        self.store = store
        self.node = node
        self.tally = Tally()
        self._lock = threading.Lock()
        self._seq = 0
        self._prev = audit_log.GENESIS
        self._problem: str | None = None
        self._snapshot: Snapshot | None = None

    def refresh(self, batch: int = 20_000) -> None:
        """Fold the entries appended since the last look, checking their hash chain."""
        cols = (audit.c.seq, audit.c.at, audit.c.event, audit.c.partner, audit.c.object_id, audit.c.version, audit.c.decision,
                audit.c.clauses, audit.c.detail, audit.c.prev, audit.c.hash, audit.c.partners)
        with self._lock:
            while self._problem is None:
                with self.store.engine.connect() as conn:
                    rows = conn.execute(select(*cols).where(audit.c.seq > self._seq).order_by(audit.c.seq).limit(batch)).all()
                for row in rows:
                    if not self._fold(*row):
                        break
                if len(rows) < batch:
                    break

    def _fold(self, seq: int, at: int, event: str, partner: str | None, object_id: str | None, version: str | None,
              decision: str | None, clauses_text: str, detail_text: str, prev: str, digest: str, partners_text: str | None = None) -> bool:
        """Check one entry's link in the chain (as ``audit.verify``) and fold it into the tally."""
        if seq != self._seq + 1:
            self._problem = f"entry {self._seq + 1} is missing (next is {seq})"
            return False
        if prev != self._prev:
            self._problem = f"entry {seq}: does not follow entry {self._seq}"
            return False
        try:
            clauses, detail = orjson.loads(clauses_text), orjson.loads(detail_text)
            members = audit_log.partners_of(partners_text)
        except (orjson.JSONDecodeError, ValueError):
            self._problem = f"entry {seq}: unreadable"
            return False
        entry = audit_log.Entry(event, partner, object_id, version, decision, tuple(clauses), detail, members)
        if audit_log._digest(prev, seq, at, entry) != digest:
            self._problem = f"entry {seq}: content does not match its hash (edited)"
            return False
        self._seq, self._prev = seq, digest
        for e in audit_log.expand(entry):  # a group entry: one decision per member partner
            self.tally.add(self.node, {"seq": seq, "at": at, "event": e.event, "partner": e.partner, "object_id": object_id,
                                       "version": version, "decision": decision, "clauses": clauses, "detail": e.detail})
        return True

    def snapshot(self) -> Snapshot:
        """The summary and the tally's other tables, consistent with each other (recomputed only when entries arrived)."""
        self.refresh()
        with self._lock:
            if self._snapshot is None or self._snapshot.seq != self._seq:
                t = self.tally
                self._snapshot = Snapshot(self._seq, t.summary(), dict(t.events), dict(t.last_at), t.timeline_rows())
            return self._snapshot

    def summary(self) -> dict[str, Any]:
        """``Tally.summary()`` of the log so far."""
        return self.snapshot().report

    def tlp_label(self, tlp: str | None, clauses: list[str]) -> str:
        return self.tally.tlp_label(tlp, clauses)

    def chain(self) -> ChainStatus:
        """Verified (every entry's link up to the stored head), length, head and any checkpoint records."""
        self.refresh()
        with self.store.engine.connect() as conn:
            head = conn.execute(select(meta.c.value).where(meta.c.key == "audit_head")).scalar()
            marks = conn.execute(select(meta.c.key, meta.c.value).where(meta.c.key.like("audit_checkpoint%")).order_by(meta.c.key)).all()
        with self._lock:
            problem = self._problem
            seq, prev = self._seq, self._prev
        if problem is None and head is not None:
            try:
                signed = audit_log.Head.decode(head)  # seq:hash:at:key_id:sig (exchange.storage.audit)
            except (ValueError, TypeError):
                signed = None
            if signed is None:
                problem = "the chain head record cannot be read"
            elif signed.seq == seq and signed.hash != prev:
                problem = "the chain head record does not match the last entry"
            elif signed.seq < seq:
                problem = f"the log holds {seq} entries but its head says {signed.seq}"
        elif problem is None and seq:
            problem = "the chain head record is missing"
        return ChainStatus(problem is None, seq, head, problem, [(k, v[:120]) for k, v in marks], now_us())


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class DecisionFilter:
    partner: str = ""
    decision: str = ""
    clause: str = ""
    tlp: str = ""
    type: str = ""
    since: int | None = None  # µs
    until: int | None = None

    def where(self) -> list:
        cond = [audit.c.event.in_(DECISIONS)]
        if self.partner:
            cond.append(audit_log.involving(self.partner))  # also the group entries that include it
        if self.decision:
            cond.append(audit.c.decision == self.decision)
        if self.clause:
            cond.append(audit.c.clauses.like("%" + _like(orjson.dumps(self.clause).decode()) + "%", escape="\\"))
        if self.tlp:
            cond.append(audit.c.detail.like("%" + _like('"tlp":' + orjson.dumps(self.tlp).decode()) + "%", escape="\\"))
        if self.type:
            cond.append(audit.c.detail.like("%" + _like('"type":' + orjson.dumps(self.type).decode()) + "%", escape="\\"))
        if self.since is not None:
            cond.append(audit.c.at >= self.since)
        if self.until is not None:
            cond.append(audit.c.at <= self.until)
        return cond


def decisions_page(store: Store, flt: DecisionFilter, page: int, per_page: int) -> tuple[list[dict], int]:
    """One page of release decision records (newest first) matching ``flt``, and how many match.

    A group row (``exchange.storage.audit.grouped``) is one record per member partner (with ``partner``:
    that member's only), so counts and pages are in records, as before group rows.
    """
    cond = and_(*flt.where())
    with store.engine.connect() as conn:
        if flt.partner:  # each matching row is one record: the partner's
            total = conn.execute(select(func.count()).select_from(audit).where(cond)).scalar() or 0
            rows = conn.execute(select(audit).where(cond).order_by(audit.c.seq.desc()).limit(per_page).offset((page - 1) * per_page)).all()
            return [e for r in rows for e in _entries(r) if e["partner"] == flt.partner], total
        total = sum(n * max(1, len(audit_log.partners_of(members)))
                    for members, n in conn.execute(select(audit.c.partners, func.count()).where(cond).group_by(audit.c.partners)))
        skip = (page - 1) * per_page
        start: int | None = None  # the seq of the page's first row, and how many of its records the page skips
        for seq, members in conn.execute(select(audit.c.seq, audit.c.partners).where(cond).order_by(audit.c.seq.desc())):
            n = max(1, len(audit_log.partners_of(members)))
            if skip < n:
                start = seq
                break
            skip -= n
        if start is None:
            return [], total
        out: list[dict] = []
        rows = conn.execute(select(audit).where(cond, audit.c.seq <= start).order_by(audit.c.seq.desc()).limit(per_page)).all()
        for r in rows:
            out += _entries(r)
    return out[skip:skip + per_page], total


def _entries(r: Any) -> list[dict]:
    """One row's records (one per member of a group row), without the hash."""
    return [{k: v for k, v in e.items() if k != "hash"} for e in audit_log.row_entries(r)]


def journey(store: Store, object_id: str) -> list[dict]:
    """Every audit entry about ``object_id``, oldest first, whatever its event type (a group row: one per member)."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(audit).where(audit_log.object_filter(conn, object_id)).order_by(audit.c.seq)).all()
    return [e for r in rows for e in _entries(r)]


@dataclass
class StoredVersion:
    collection: str
    version: str
    date_added: int
    body: dict | None  # None: the viewer may not see it over this transport
    encrypt_in_transit: bool


def versions(store: Store, collection_aliases: dict[str, str], readable: frozenset[str], object_id: str, *, tls: bool) -> list[StoredVersion]:
    """The stored versions of ``object_id`` in the collections the viewer may read (an IEP ``encrypt_in_transit: must``
    version's content is not shown over plain HTTP)."""
    ids = [c for c in collection_aliases if c in readable]
    if not ids:
        return []
    with store.engine.connect() as conn:
        named = {key: cid for cid, key in store.collection_keys(conn, ids).items()}
        rows = conn.execute(
            select(objects.c.coll, objects.c.version_key, objects.c.version, objects.c.date_added, BODY, objects.c.encrypt_in_transit)
            .select_from(WITH_BODY).where(store.where_collection(conn, ids), objects.c.stix_id == object_id)
        ).all()
    # by version, then collection id (the rows name their collection by its key: ``Store.collection_keys``)
    rows.sort(key=lambda r: (r.version_key, named[r.coll]))
    return [StoredVersion(collection_aliases[named[r.coll]], r.version, r.date_added,
                          None if (r.encrypt_in_transit and not tls) else orjson.loads(r.body), bool(r.encrypt_in_transit)) for r in rows]


def sightings(store: Store, collection_aliases: dict[str, str], readable: frozenset[str], object_id: str, *, tls: bool) -> list[tuple[str, dict]]:
    """``sighting`` objects (STIX 2.1 s4.15) of ``object_id`` in the collections the viewer may read, newest versions."""
    ids = [c for c in collection_aliases if c in readable]
    if not ids:
        return []
    needle = "%" + _like('"sighting_of_ref":' + orjson.dumps(object_id).decode()) + "%"
    with store.engine.connect() as conn:
        named = {key: cid for cid, key in store.collection_keys(conn, ids).items()}
        cond = [store.where_collection(conn, ids), objects.c.stix_type == "sighting", objects.c.is_last.is_(True),
                BODY.like(needle, escape="\\")]
        if not tls:
            cond.append(objects.c.encrypt_in_transit.is_(False))
        rows = conn.execute(select(objects.c.coll, BODY).select_from(WITH_BODY).where(*cond).limit(200)).all()
    return [(collection_aliases[named[r.coll]], orjson.loads(r.body)) for r in rows]


def sync_states(store: Store) -> list[tuple[str, Any]]:
    """The sync agent's and releaser's bookmarks (pull/push cursors, release bookmarks, deferred versions)."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(sync_state.c.name, sync_state.c.value).order_by(sync_state.c.name)).all()
    out = []
    for name, value in rows:
        if name.startswith(STATE_PREFIXES):
            try:
                out.append((name, orjson.loads(value)))
            except orjson.JSONDecodeError:
                out.append((name, value[:200]))
    return out


@dataclass(frozen=True)
class CertInfo:
    what: str
    subject: str
    issuer: str
    not_after: str
    days_left: float


def certificates(path: str | Path | None, what: str) -> list[CertInfo]:
    """Subject, issuer and expiry of each certificate in a PEM file (the server's certificate, the client CA bundle)."""
    if not path:
        return []
    import datetime as dt

    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError):
        return []
    now = dt.datetime.now(dt.UTC)
    return [CertInfo(what, c.subject.rfc4514_string(), c.issuer.rfc4514_string(), c.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%SZ"),
                     round((c.not_valid_after_utc - now).total_seconds() / 86400, 1)) for c in certs]
