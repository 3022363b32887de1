"""The node's audit trail: an append-only, hash-chained log of every decision.

Every release, redaction, withholding, inbound rejection and sync transfer is
one entry (object id and version, partner, decision, clause ids, time).  Each
entry's ``hash`` is SHA-256 over the previous entry's hash and the entry's
canonical JSON, and the head (count, hash, time) is kept in ``meta``, *signed*
with the node's private key (``HeadSigner``, injected: the key never lives in
the database).  Editing, deleting, reordering or truncating entries breaks the
chain or the signed head, and ``verify`` names the first bad entry; without
the key nobody can make a shorter or rewritten chain verify.  Against the key
holder itself, the heads it sent its partners (checkpoints, ``Checkpoint``)
prove what the log already held: ``verify(..., checkpoints=...)`` fails unless
the local chain extends each of them.  Entries are appended inside the same
transaction as the data they describe, so the log and the collections never
disagree.

Group entries (issue 21): the release's decisions for several partners about one
object version are usually alike but for the recipient.  ``grouped`` merges such
entries into one entry naming every member in ``partners`` (its ``partner`` is
``None``), with the recipient's name in ``detail["reason"]`` replaced by
``PARTNER_SLOT``, only where expanding it back gives each member's own reason.
Readers (``entries``, ``select_entries``, ``row_entries``) see one entry per member
as before, plus ``"group"``: the member names.
"""

from __future__ import annotations

import base64
import hashlib
import re
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Connection, and_, delete, false, func, insert, or_, select
from sqlalchemy.exc import SQLAlchemyError

from exchange.errors import AuditChainBroken, StorageError
from exchange.storage.schema import audit, meta, object_rows
from exchange.storage.store import Store, insert_rows, now_us

GENESIS = "0" * 64
EVENTS = frozenset(
    {"share", "redact", "withhold", "inbound-accept", "inbound-reject", "push", "push-reject", "pull", "sync-error", "config",
     "transport-withhold", "withdraw", "conflict"}
)
# accountability (issue 17): receipts a partner sent about our objects, checkpoints exchanged, sightings made,
# and withdrawals (written by the lifecycle code; shown generically by ``audit show`` and ``trace``)
EVENTS = EVENTS | {"receipt", "checkpoint-sent", "checkpoint-received", "sighting", "withdraw"}
HEAD_KEY = "audit_head"


@dataclass(frozen=True)
class HeadSigner:
    """The node's head-signing key, injected by the node layer (``exchange.node.audit_key``).

    ``sign(data) -> signature`` and ``verify(data, signature) -> bool``; ``key_id``
    names the key in each signed head.  The private key never enters the database.
    """

    key_id: str
    sign: Callable[[bytes], bytes]
    verify: Callable[[bytes, bytes], bool]


_signers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def use_signer(store: Store, signer: HeadSigner | None) -> None:
    """Sign every head this store's appends write with ``signer`` (``None``: unsigned heads, which ``verify`` refuses)."""
    if signer is None:
        _signers.pop(store.engine, None)
    else:
        _signers[store.engine] = signer


def signer_of(store: Store) -> HeadSigner | None:
    """The signer ``use_signer`` installed for ``store``, if any."""
    return _signers.get(store.engine)


@dataclass(frozen=True)
class Head:
    """A signed chain head: entries ``1..seq``, the last one's ``hash``, its time ``at`` (µs)."""

    seq: int
    hash: str
    at: int
    key_id: str = ""
    sig: str = ""  # base64 of the signature over ``message()``

    def message(self) -> bytes:
        """The bytes the node key signs."""
        return f"cti-exchange audit head v1|{self.seq}|{self.hash}|{self.at}|{self.key_id}".encode("ascii")

    def encode(self) -> str:
        return f"{self.seq}:{self.hash}:{self.at}:{self.key_id}:{self.sig}"

    def as_json(self) -> dict:
        return {"seq": self.seq, "hash": self.hash, "at": self.at, "key_id": self.key_id, "sig": self.sig}

    @classmethod
    def from_json(cls, value: object) -> Head:
        if not isinstance(value, dict):
            raise ValueError("not an object")
        seq, h, at = value.get("seq"), value.get("hash"), value.get("at")
        if not (isinstance(seq, int) and isinstance(h, str) and isinstance(at, int)):
            raise ValueError("seq, hash and at are required")
        return cls(seq, h, at, str(value.get("key_id") or ""), str(value.get("sig") or ""))

    @classmethod
    def decode(cls, text: str) -> Head:
        """Parse the ``meta`` record; ``ValueError`` if it is not ``seq:hash:at:key_id:sig``."""
        parts = text.split(":", 3)
        if len(parts) == 2:  # an unsigned head (written before heads were signed, or by hand)
            parts += ["0", ":"]
        if len(parts) == 4:  # key_id:sig (the key id may hold colons; base64 never does)
            key_id, _, sig = parts.pop().rpartition(":")
            parts += [key_id, sig]
        if len(parts) != 5 or not parts[0].isascii() or not parts[0].isdigit() or not parts[2].isascii() or not parts[2].isdigit():
            raise ValueError(text[:80])
        return cls(int(parts[0]), parts[1], int(parts[2]), parts[3], parts[4])


def sign_head(signer: HeadSigner, seq: int, digest: str, at: int) -> Head:
    """A head for entries ``1..seq`` signed with the node key."""
    unsigned = Head(seq, digest, at, signer.key_id)
    return Head(seq, digest, at, signer.key_id, base64.b64encode(signer.sign(unsigned.message())).decode("ascii"))


def signature_ok(head: Head, check: Callable[[bytes, bytes], bool]) -> bool:
    """Whether ``head``'s signature verifies with ``check`` (the node key's ``verify``)."""
    if not head.sig:
        return False
    try:
        sig = base64.b64decode(head.sig, validate=True)
    except ValueError:
        return False
    return bool(check(head.message(), sig))


@dataclass(frozen=True)
class Entry:
    """One audit entry before it is chained.

    A *group entry* (``partners``: two or more names, ``partner`` ``None``) stands for one
    entry per member, alike but for the partner; ``PARTNER_SLOT`` in ``detail["reason"]``
    stands for the member's name (``grouped`` makes them, ``expand`` undoes them).
    """

    event: str
    partner: str | None = None
    object_id: str | None = None
    version: str | None = None
    decision: str | None = None
    clauses: tuple[str, ...] = ()
    detail: dict = field(default_factory=dict)
    partners: tuple[str, ...] = ()


# the release decisions (and withdrawals) that ``grouped`` merges; other events pass through
GROUPED_EVENTS = frozenset({"share", "redact", "withhold", "withdraw"})
# stands for the member's name in a group entry's reason (a reason that holds it is never grouped)
PARTNER_SLOT = "\u27e8partner\u27e9"


@cache
def _name_re(name: str) -> re.Pattern[str]:
    """``name`` as a whole word (partner names are ``[a-z][a-z0-9_-]*``: a neighbouring ``-`` or ``_`` continues it)."""
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")


def _templated(detail: dict, name: str) -> dict | None:
    """``detail`` with ``name`` in its reason replaced by ``PARTNER_SLOT``, or ``None`` if that would not be lossless."""
    reason = detail.get("reason")
    if not isinstance(reason, str):
        return detail
    template = _template(reason, name)
    if template is None:
        return None
    return detail if template == reason else {**detail, "reason": template}


@lru_cache(maxsize=4096)
def _template(reason: str, name: str) -> str | None:
    """``reason`` with ``name`` as a whole word replaced by ``PARTNER_SLOT`` (``None`` if not lossless); a batch's
    reasons repeat (one per clause and partner), so each is templated once."""
    template = _name_re(name).sub(lambda _m: PARTNER_SLOT, reason)
    if template.replace(PARTNER_SLOT, name) != reason:
        return None  # the reason already holds the slot: expanding it would not give this reason back
    return template


def _filled(detail: dict, name: str) -> dict:
    """A group entry's ``detail`` for one member (its name in place of ``PARTNER_SLOT``)."""
    reason = detail.get("reason")
    if isinstance(reason, str) and PARTNER_SLOT in reason:
        return {**detail, "reason": reason.replace(PARTNER_SLOT, name)}
    return detail


def _mergeable(e: Entry) -> bool:
    """Whether ``grouped`` may merge ``e`` (a release decision or withdrawal about one partner, not a group entry)."""
    return e.event in GROUPED_EVENTS and bool(e.partner) and not e.partners


def _merge_key(e: Entry) -> tuple:
    """What entries must share before ``grouped`` compares their details."""
    return (e.event, e.object_id, e.version, e.decision, e.clauses)


def grouped(entries: Iterable[Entry]) -> list[Entry]:
    """The entries with each set of decisions alike but for the partner merged into one group entry (pure).

    Entries of ``GROUPED_EVENTS`` with a ``partner`` merge when their event, object id,
    version, decision, clauses and detail are equal once each one's own name in its reason
    is ``PARTNER_SLOT``, and only where expanding the slot back gives each member's reason
    exactly (a name that occurs in another role stays apart).  A group takes the position
    of its first member; an entry alike to none stays as it was; a partner never appears
    twice in one group.
    """
    entries = list(entries)
    if len({e.partner for e in entries if e.partner and e.event in GROUPED_EVENTS}) < 2:
        return entries  # one recipient (or none): nothing to merge, and nothing to template
    # an entry no other one shares its event, object version, decision and clauses with merges with none: it passes
    # through as it is, untemplated (partners on different routes, as rok and jp, differ in clauses: most entries)
    keys = [_merge_key(e) if _mergeable(e) else None for e in entries]
    seen = Counter(k for k in keys if k is not None)
    slots: list[Entry | list] = []  # an entry as it was, or [template entry, member names, first member entry]
    open_groups: dict[tuple, list] = {}
    for e, k in zip(entries, keys, strict=True):
        template = _templated(e.detail, e.partner) if k is not None and seen[k] > 1 else None
        if template is None:
            slots.append(e)
            continue
        key = (*k, orjson.dumps(template, option=orjson.OPT_SORT_KEYS))
        group = open_groups.get(key)
        if group is not None and e.partner not in group[1]:
            group[1].append(e.partner)
            continue
        group = [Entry(e.event, None, e.object_id, e.version, e.decision, e.clauses, template), [e.partner], e]
        open_groups[key] = group
        slots.append(group)
    out: list[Entry] = []
    for slot in slots:
        if isinstance(slot, Entry):
            out.append(slot)
        elif len(slot[1]) == 1:
            out.append(slot[2])  # alone: exactly as it came
        else:
            t = slot[0]
            out.append(Entry(t.event, None, t.object_id, t.version, t.decision, t.clauses, t.detail, tuple(slot[1])))
    return out


def expand(e: Entry) -> list[Entry]:
    """One entry per member of a group entry (the entry itself if it is not one; pure)."""
    if not e.partners:
        return [e]
    return [Entry(e.event, name, e.object_id, e.version, e.decision, e.clauses, _filled(e.detail, name)) for name in e.partners]


def _digest(prev: str, seq: int, at: int, e: Entry, detail: bytes | None = None) -> str:
    """SHA-256 of the previous hash and the entry; a group entry's member list is hashed after the detail
    (an entry without one hashes exactly as before group entries existed).  ``detail``: the entry's detail as
    ``orjson.dumps(e.detail, option=OPT_SORT_KEYS)`` when the caller made it already (the row stores that text)."""
    if detail is None:
        detail = orjson.dumps(e.detail, option=orjson.OPT_SORT_KEYS)
    # the compact JSON of [seq, at, event, partner, object_id, version, decision, clauses, detail(, partners)],
    # sorted keys in the detail: the head of the list, the detail's text, then the members (if any)
    head = orjson.dumps([seq, at, e.event, e.partner, e.object_id, e.version, e.decision, list(e.clauses)])
    tail = b"," + orjson.dumps(list(e.partners)) + b"]" if e.partners else b"]"
    return hashlib.sha256(prev.encode("ascii") + b"|" + head[:-1] + b"," + detail + tail).hexdigest()


def _check_group(e: Entry) -> None:
    if e.partners and (len(e.partners) < 2 or e.partner is not None or len(set(e.partners)) != len(e.partners)
                       or not all(isinstance(p, str) and p for p in e.partners)):
        raise ValueError(f"a group audit entry names two or more distinct partners and no single partner: {e.partners!r}")


def partners_of(raw: str | None) -> tuple[str, ...]:
    """A stored ``audit.partners`` value as names (``()``: not a group entry); ``ValueError`` if it is not a list of names."""
    if raw is None:
        return ()
    names = orjson.loads(raw)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("audit.partners is not a list of names")
    return tuple(names)


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def involving(partner: str) -> ColumnElement[bool]:
    """SQL: the rows whose entry, or one of whose group members, is about ``partner``."""
    member = "%" + _like(orjson.dumps(partner).decode()) + "%"
    return or_(audit.c.partner == partner, audit.c.partners.like(member, escape="\\"))


def row_entries(row: Any) -> list[dict]:
    """The entries of one ``audit`` row as dicts (``entries`` shape): one per member of a group row, each
    with ``"group"`` (every member's name) besides; ``ValueError`` for an unreadable ``partners`` value."""
    base = {
        "seq": row.seq, "at": row.at, "event": row.event, "partner": row.partner, "object_id": row.object_id,
        "version": row.version, "decision": row.decision, "clauses": orjson.loads(row.clauses),
        "detail": orjson.loads(row.detail), "hash": row.hash,
    }
    names = partners_of(row.partners)
    if not names:
        return [base]
    group = list(names)
    return [{**base, "partner": name, "detail": _filled(base["detail"], name), "group": group} for name in names]


def append(conn: Connection, entries: Iterable[Entry], *, at: int | None = None) -> int:
    """Chain and insert entries inside the caller's write transaction; returns how many.

    ``AuditChainBroken`` (the transaction then writes nothing) if the log does not end
    where its head says: chaining on a cut tail and signing a new head would hide the cut.
    """
    entries = list(entries)
    if not entries:
        return 0
    rows = []
    last = conn.execute(select(audit.c.seq, audit.c.hash).order_by(audit.c.seq.desc()).limit(1)).first()
    seq, prev = (last.seq, last.hash) if last is not None else (0, GENESIS)
    _check_tail(conn.execute(select(meta.c.value).where(meta.c.key == HEAD_KEY)).scalar(), seq, prev)
    # never earlier than a row this transaction wrote: a signed head's time covers every audited row before it
    stamp = max(at or now_us(), conn.info.get("cti_last_date_added", 0))
    for e in entries:
        if e.event not in EVENTS:
            raise ValueError(f"unknown audit event {e.event!r}")
        _check_group(e)
        seq += 1
        detail = orjson.dumps(e.detail, option=orjson.OPT_SORT_KEYS)
        h = _digest(prev, seq, stamp, e, detail)
        rows.append(
            {
                "seq": seq, "at": stamp, "event": e.event, "partner": e.partner, "object_id": e.object_id,
                "version": e.version, "decision": e.decision, "clauses": orjson.dumps(list(e.clauses)).decode(),
                "detail": detail.decode(), "prev": prev, "hash": h,
                "partners": orjson.dumps(list(e.partners)).decode() if e.partners else None,
            }
        )
        prev = h
    if rows:
        insert_rows(conn, audit, rows)
        signer = _signers.get(conn.engine)
        head = sign_head(signer, seq, prev, stamp) if signer is not None else Head(seq, prev, stamp)
        conn.execute(delete(meta).where(meta.c.key == HEAD_KEY))
        conn.execute(insert(meta).values(key=HEAD_KEY, value=head.encode()))
    return len(rows)


def _check_tail(raw: str | None, seq: int, last_hash: str) -> None:
    """Refuse to extend a log whose last entry (``seq``, ``last_hash``) is not the one its stored head names.

    No head record at all is a log from before signed heads (or an empty one): its next append writes one.
    """
    if raw is None:
        return
    _head, problem = _decoded_against(raw, seq, last_hash)
    if problem is None:
        return
    raise AuditChainBroken(
        f"the audit log does not end at its signed head: {problem}; nothing more is appended to it "
        "(cti-exchange audit verify)"
    )


def current_head(store: Store) -> Head | None:
    """The head record as stored (signed or not), or ``None`` for an empty log."""
    raw = store.get_meta(HEAD_KEY)
    if raw is None:
        return None
    try:
        return Head.decode(raw)
    except ValueError:
        return None


def record(store: Store, entries: Iterable[Entry]) -> int:
    """Append entries in a transaction of their own."""
    with store.transaction() as conn:
        return append(conn, entries)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    entries: int
    problem: str | None = None
    checkpoints: int = 0  # partner checkpoints the chain was shown to extend


@dataclass(frozen=True)
class Checkpoint:
    """A signed head of this node held by a partner (``holder``), as that partner returns it."""

    head: Head
    holder: str
    ref: str = ""  # where it came from (the STIX id of the object that carried it)


def verify(
    store: Store, *, check: Callable[[bytes, bytes], bool] | None = None, audited: Sequence[str] = (),
    checkpoints: Sequence[Checkpoint] = (),
) -> Verdict:
    """Recompute the chain; the first broken link, a trimmed tail or a bad head or checkpoint is reported.

    ``check``: the node key's ``verify``; with it the head must carry a valid signature
    (without it the signature is not looked at).  ``audited``: collection ids whose
    every row is written with its audit entries (the partner-read collections and
    inboxes): a newest row later than the signed head, or any row under an empty
    log, means entries were removed.  ``checkpoints``: heads a partner holds; the
    chain must hold entry ``seq`` with that ``hash`` for each.  A database that
    cannot be read is a ``StorageError`` with one line, never a traceback.
    """
    wanted = {c.head.seq for c in checkpoints}
    try:
        with store.engine.connect() as conn:
            raw = conn.execute(select(meta.c.value).where(meta.c.key == HEAD_KEY)).scalar()
            verdict, count, prev, hashes = _walk(conn.execute(select(audit).order_by(audit.c.seq)), wanted)
            newest = _newest_row(store, conn, audited)
    except SQLAlchemyError as exc:
        first = str(exc.orig if getattr(exc, "orig", None) is not None else exc).splitlines()[0][:200]
        raise StorageError(f"cannot read the audit log: {exc.__class__.__name__}: {first}") from exc
    if verdict is not None:
        return verdict
    problem = _head_problem(raw, count, prev, check, newest)
    if problem is not None:
        return Verdict(False, count, problem)
    for cp in sorted(checkpoints, key=lambda c: c.head.seq):
        problem = _checkpoint_problem(cp, count, hashes, check)
        if problem is not None:
            return Verdict(False, count, problem)
    return Verdict(True, count, checkpoints=len(checkpoints))


def _newest_row(store: Store, conn: Connection, audited: Sequence[str]) -> tuple[int, int] | None:
    """``(rows, newest date_added)`` over the audited collections, or ``None`` if they are empty."""
    if not audited:
        return None
    n, newest = conn.execute(
        select(func.count(), func.max(object_rows.c.date_added)).where(store.where_collection(conn, list(audited), on=object_rows))
    ).one()
    return (int(n), int(newest)) if n else None


def _head_problem(
    raw: str | None, count: int, prev: str, check: Callable[[bytes, bytes], bool] | None, newest: tuple[int, int] | None,
) -> str | None:
    """What is wrong with the head record against the walked chain (``None``: nothing)."""
    if raw is None:
        if count:
            return "the chain head record is missing"
        if newest is not None:
            return (f"the log is empty but the database holds {newest[0]} released or received object versions "
                    "(entries removed)")
        return None
    head, problem = _decoded_against(raw, count, prev)
    if head is None or problem is not None:
        return problem
    if check is not None:
        if not head.sig:
            return f"the chain head (entry {head.seq}) is not signed with the node key"
        if not signature_ok(head, check):
            return f"the chain head (entry {head.seq}) signature does not verify with the node key (head rewritten)"
    if newest is not None and newest[1] > head.at:
        return (f"the signed head (entry {head.seq}) is older than the newest audited object row: "
                "the entries after it were removed")
    return None


def _decoded_against(raw: str, count: int, prev: str) -> tuple[Head | None, str | None]:
    """The stored head record decoded (``None`` if unreadable) and what is wrong with it against a chain of ``count``
    entries whose last hash is ``prev`` (``None``: it names exactly that entry). Shared by ``verify`` and ``append``."""
    try:
        head = Head.decode(raw)
    except ValueError:
        return None, f"the chain head record is unreadable ({raw[:80]!r})"
    if head.seq != count or head.hash != prev:
        return head, f"the log ends at entry {count} but its head says {head.seq} (entries removed)"
    return head, None


def _checkpoint_problem(cp: Checkpoint, count: int, hashes: dict[int, str], check: Callable[[bytes, bytes], bool] | None) -> str | None:
    """Whether the local chain extends one checkpoint a partner holds."""
    where = f"checkpoint at entry {cp.head.seq} held by {cp.holder}" + (f" ({cp.ref})" if cp.ref else "")
    if check is not None and not signature_ok(cp.head, check):
        return f"{where}: its signature does not verify with the node key"
    if cp.head.seq > count:
        return f"{where}: the log has only {count} entries (history trimmed after the checkpoint was sent)"
    if cp.head.seq > 0 and hashes.get(cp.head.seq) != cp.head.hash:
        return f"{where}: local entry {cp.head.seq} has another hash (history rewritten after the checkpoint was sent)"
    return None


def _walk(rows: Iterable, wanted: set[int] | frozenset[int] = frozenset()) -> tuple[Verdict | None, int, str, dict[int, str]]:
    """``(the first problem or None, entries walked, the last hash, {seq: hash} for ``wanted``)`` over the rows in ``seq`` order."""
    prev = GENESIS
    expected_seq = 0
    hashes: dict[int, str] = {}
    for row in rows:
        expected_seq += 1
        if row.seq != expected_seq:
            return Verdict(False, expected_seq - 1, f"entry {expected_seq} is missing (next is {row.seq})"), expected_seq - 1, prev, hashes
        if row.prev != prev:
            return Verdict(False, expected_seq - 1, f"entry {row.seq}: does not follow entry {row.seq - 1}"), expected_seq - 1, prev, hashes
        try:
            e = Entry(
                event=row.event, partner=row.partner, object_id=row.object_id, version=row.version,
                decision=row.decision, clauses=tuple(orjson.loads(row.clauses)), detail=orjson.loads(row.detail),
                partners=partners_of(row.partners),
            )
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return Verdict(False, expected_seq - 1, f"entry {row.seq}: unreadable"), expected_seq - 1, prev, hashes
        if _digest(prev, row.seq, row.at, e) != row.hash:
            return Verdict(False, expected_seq - 1, f"entry {row.seq}: content does not match its hash (edited)"), expected_seq - 1, prev, hashes
        prev = row.hash
        if row.seq in wanted:
            hashes[row.seq] = row.hash
    return None, expected_seq, prev, hashes


def entries(store: Store) -> Iterator[dict]:
    """Every entry as a dict, in order (for reports); a group row is one entry per member (``row_entries``)."""
    with store.engine.connect() as conn:
        for row in conn.execute(select(audit).order_by(audit.c.seq)):
            yield from row_entries(row)


def object_filter(conn: Connection, object_ids: str | Sequence[str]) -> ColumnElement[bool]:
    """Entries about ``object_ids`` (one id or several), as the audit's object index finds them: one probe per run
    of entries (``audit.object_bucket``, migration 0013), each an equality on both of the index's columns.  The runs
    are the database's (the newest one read from the index), whatever run length its column was made with."""
    ids = [object_ids] if isinstance(object_ids, str) else list(object_ids)
    last = conn.execute(select(func.max(audit.c.object_bucket))).scalar()
    if last is None or not ids:
        return false()
    return and_(audit.c.object_bucket.in_(range(int(last) + 1)), audit.c.object_id.in_(ids))


def select_entries(
    store: Store, *, since: int | None = None, event: Sequence[str] = (), object_id: str | None = None,
    partner: str | None = None, after_seq: int = 0,
) -> Iterator[dict]:
    """Entries matching every filter given, in ``seq`` order (``since``: µs, inclusive; ``object_id``: indexed).

    A group row is one entry per member; ``partner`` keeps that member's only.
    """
    stmt = select(audit).where(audit.c.seq > after_seq).order_by(audit.c.seq)
    if since is not None:
        stmt = stmt.where(audit.c.at >= since)
    if event:
        stmt = stmt.where(audit.c.event.in_(list(event)))
    if partner is not None:
        stmt = stmt.where(involving(partner))
    with store.engine.connect() as conn:
        if object_id is not None:
            stmt = stmt.where(object_filter(conn, object_id))
        for row in conn.execute(stmt):
            for e in row_entries(row):
                if partner is None or e["partner"] == partner:
                    yield e
