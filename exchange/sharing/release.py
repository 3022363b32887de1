"""Policy on the way out: what each partner's read collection holds.

A partner account only ever reads its read collection, and that collection
holds only what the policy (sender = this node, recipient = that partner)
released, already redacted: every TAXII endpoint (objects, object, versions,
manifest), the ``X-TAXII-Date-Added-*`` headers and paging are consistent with
what is served by construction, and nothing withheld can be read by any
endpoint because it is never written there.

``release`` walks the sources (the node's own collection, and for onward
sharing the inboxes of *other* partners) from a keyset bookmark, evaluates each
batch of object versions with the pure engine, writes the shared copies, the
companions they reference (identities, marking definitions) and one audit
entry per decision, and moves the bookmark, all in one transaction.  Each
version is judged on its own markings.

A batch is read, parsed and prepared once for all its recipients (issue 21):
the references of each object, its TLP and the producers of what it sights
do not depend on the recipient, and the audit entries of every recipient are
chained in one append.  A released copy identical for several partners (or to
the original) is one stored body (``exchange.storage.store``): each partner's
read collection gets index rows only.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from exchange.node.ops import OpenNode
from exchange.policy import Judged, Policy, companions, current_policy, evaluate_many
from exchange.policy.markings import OFFICIAL_OBJECTS, tlp_name
from exchange.sharing import lifecycle
from exchange.sharing.attribution import concurred_for
from exchange.sharing.producers import producers_of
from exchange.sharing.signatures import interleaved, is_partner_origin, release_signatures, without_signature_rows
from exchange.stix import REF, REFS, object_version, ref_properties
from exchange.storage import audit
from exchange.storage.store import Selection

_BATCH = 2000
_REF_KEYS = ("created_by_ref", "object_marking_refs")


@dataclass
class Released:
    """Tally of one release run towards one partner."""

    evaluated: int = 0
    shared: int = 0
    redacted: int = 0
    withheld: int = 0
    companions: int = 0
    withdrawn: int = 0  # withdrawals released or objects removed (exchange.sharing.lifecycle)

    def add(self, other: Released) -> None:
        for key in self.__dict__:
            setattr(self, key, getattr(self, key) + getattr(other, key))


def release_all(
    opened: OpenNode, policy: Policy | None = None, *, now: str | None = None, pause: Callable[[], None] | None = None
) -> dict[str, Released]:
    """Release new objects to every partner of the node.

    Each source (the own collection, each partner's inbox) is walked once: a
    batch is read and parsed once, judged for every recipient, and written with
    its audit entries and every recipient's bookmark in one transaction.
    ``pause`` runs between batches (a server's releaser lets waiting writers in).
    """
    policy = policy or current_policy()
    cfg = opened.node.config
    totals = {p: Released() for p in cfg.partners}
    cache: dict[Any, dict | None] = {}  # identities and marking definitions, looked up once per run
    deferred_kinds = {c.id for c in policy.clauses_of("integrity-required-refs")}
    for p, n in lifecycle.withdraw_deleted(opened, policy).items():  # analysts' deletions since the last run
        totals[p].withdrawn += n
    for src in cfg.release_sources:
        recipients = cfg.recipients_of(src)
        for p in recipients:
            totals[p].add(_retry_deferred(opened, p, policy, src, deferred_kinds, now, cache))
        _walk(opened, src, recipients, policy, deferred_kinds, now, cache, totals, pause)
    for p, n in lifecycle.withdraw_joint(opened, policy).items():  # SCCF joint revocation
        totals[p].withdrawn += n
    return totals


def pending(opened: OpenNode) -> bool:
    """Whether any source holds rows past some recipient's bookmark (read-only, a few index probes).

    Lets a background releaser poll cheaply for objects written by another
    process (a sync agent storing what it pulled) without taking the write lock.
    """
    cfg = opened.node.config
    store = opened.store
    for src in cfg.release_sources:
        last = store.last_key(src.id)
        if last is None:
            continue
        for p in cfg.recipients_of(src):
            mark = _mark(store.get_state(_bookmark(p, src.id)))
            if mark is None or mark < last:
                return True
    return lifecycle.deletions_pending(opened)


def newest_write(opened: OpenNode) -> int | None:
    """The ``date_added`` (microseconds) of the newest row in any release source, through any worker or process."""
    keys = [opened.store.last_key(c.id) for c in opened.node.config.release_sources]
    return max((k[0] for k in keys if k is not None), default=None)


def release(opened: OpenNode, partner: str, policy: Policy, *, now: str | None = None) -> Released:
    """Release new objects to one partner (``release_all`` does every partner in one pass)."""
    cfg = opened.node.config
    total = {partner: Released()}
    cache: dict[Any, dict | None] = {}
    deferred_kinds = {c.id for c in policy.clauses_of("integrity-required-refs")}
    for src in [s for s in cfg.release_sources if partner in cfg.recipients_of(s)]:
        total[partner].add(_retry_deferred(opened, partner, policy, src, deferred_kinds, now, cache))
        _walk(opened, src, [partner], policy, deferred_kinds, now, cache, total)
    return total[partner]


def _walk(
    opened: OpenNode, src: Any, recipients: list[str], policy: Policy, deferred_kinds: set[str], now: str | None,
    cache: dict[Any, dict | None], totals: dict[str, Released], pause: Callable[[], None] | None = None,
) -> None:
    """Judge every object version of ``src`` after each recipient's bookmark, batch by batch.

    An object withheld only because something it must reference is not (yet)
    released to the recipient is *deferred*: judged again on every later run,
    and released once its references resolve.
    """
    sel = Selection(src.id, versions=("all",))
    keys = {p: _bookmark(p, src.id) for p in recipients}
    while recipients:
        # the batch runs in a function of its own: what it made (rows, parsed objects, decisions, audit entries) is
        # freed as it returns, before the collector is on again, instead of being the young generation its first
        # collection walks (12 ms a batch of 2,000 objects to two partners, 5% of the release)
        with _collector_paused():
            more = _release_batch(opened, src, recipients, keys, sel, policy, deferred_kinds, now, cache, totals)
        if not more:
            return
        if pause is not None:
            pause()


def _release_batch(
    opened: OpenNode, src: Any, recipients: list[str], keys: dict[str, str], sel: Selection, policy: Policy,
    deferred_kinds: set[str], now: str | None, cache: dict[Any, dict | None], totals: dict[str, Released],
) -> bool:
    """Judge and write the next batch of ``src`` after the recipients' bookmarks, in one transaction; whether more follow."""
    store = opened.store
    # the write lock also serialises concurrent releasers; redone after a power loss
    with store.transaction(durable=False) as conn:
        marks = {p: _mark(store.get_state(keys[p], conn)) for p in recipients}
        starts = list(marks.values())
        after = None if any(m is None for m in starts) else min(starts)  # type: ignore[type-var]
        rows, more = store.page(sel, limit=_BATCH, after=after)
        if not rows:
            return False
        judged_rows, objs = without_signature_rows(rows)  # signature rows are not parsed: they travel beside what they sign
        concurred = concurred_for(opened, objs, policy)
        from_partner = {(r.stix_id, r.version) for r in judged_rows if is_partner_origin(r.origin, src.role)}
        work = _Work(opened, objs)  # what does not depend on the recipient, once for all of them
        behind: dict[Any, list[str]] = {}  # recipients by where their bookmark is in this batch (usually all alike)
        for p in recipients:
            mark = marks[p]
            behind.setdefault(None if mark is None or mark == after else mark, []).append(p)
        batches: dict[str, _Batch] = {}
        for mark, alike in behind.items():
            mine = objs if mark is None else [o for r, o in zip(judged_rows, objs, strict=True) if (r.date_added, r.seq) > mark]
            if mine:
                batches.update(_judge_and_write_many(opened, conn, alike, policy, src, mine, now, cache, concurred, from_partner, work))
        entries: list[audit.Entry] = []
        for p in recipients:  # in recipient order, as before
            batch = batches.get(p)
            if batch is None:
                continue
            entries += batch.entries
            deferred = [d for d in batch.decisions if d.decision == "withhold" and set(d.clauses) & deferred_kinds]
            if deferred:
                dkey = f"deferred:{p}:{src.id}"
                old = orjson.loads(store.get_state(dkey, conn) or "[]")
                new = old + [[d.id, d.version] for d in deferred]
                store.set_state(conn, dkey, orjson.dumps(new[-_MAX_DEFERRED:]).decode())
            totals[p].add(batch.tally)
        audit.append(conn, audit.grouped(entries))  # every recipient's decisions, alike ones as one group entry: one chain extension per batch
        for p in recipients:
            store.set_state(conn, keys[p], orjson.dumps([rows[-1].date_added, rows[-1].seq]).decode())
    return more


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for one batch (restored after, as ``evaluate`` does).

    A batch allocates hundreds of thousands of acyclic dicts at 8 partners (rows, audit
    entries); the collections they trigger scanned the whole heap: 40% of a 50,000-object
    release to 8 partners. What the batch leaves in cycles is collected once it is on again.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _bookmark(partner: str, source_id: str) -> str:
    """The sync-state key of ``partner``'s release bookmark in a source collection."""
    return f"release:{partner}:{source_id}"


def _mark(raw: str | None) -> tuple[int, int] | None:
    return tuple(orjson.loads(raw)) if raw else None  # type: ignore[return-value]


def _referenced(obj: dict) -> set[str]:
    refs: set[str] = set()
    for key, kind in ref_properties(obj):
        value = obj[key]
        if kind == REF:
            if isinstance(value, str):
                refs.add(value)
        elif kind == REFS:
            if isinstance(value, list):
                refs.update(v for v in value if isinstance(v, str))
        elif key == "granular_markings" and isinstance(value, list):
            refs.update(gm["marking_ref"] for gm in value if isinstance(gm, dict) and isinstance(gm.get("marking_ref"), str))
    return refs


_MAX_DEFERRED = 10000


@dataclass
class _Batch:
    decisions: list
    tally: Released
    entries: list  # the audit entries, appended by the caller


class _Work:
    """The recipient-independent part of judging one batch (references, TLP, producers), computed on first use."""

    def __init__(self, opened: OpenNode, objs: list[dict]) -> None:
        self._opened, self._objs = opened, objs
        self._refs: dict[int, set[str]] = {}
        self._tlp: dict[int, str | None] = {}
        self._producers: dict[str, str] | None = None
        #: the engine's references of each object judged (``evaluate_many``, ``companions``), found once for all recipients
        self.refs_memo: dict[int, tuple[dict, list]] = {}
        #: the Merkle leaves of the batch's objects shared unchanged, signed once for all recipients (signatures.release_signatures)
        self.leaves: dict[int, tuple[dict, bytes]] = {}

    def refs(self, obj: dict) -> set[str]:
        key = id(obj)
        if key not in self._refs:
            self._refs[key] = _referenced(obj)
        return self._refs[key]

    def tlp(self, obj: dict) -> str | None:
        key = id(obj)
        if key not in self._tlp:
            self._tlp[key] = tlp_name(obj)
        return self._tlp[key]

    def producers(self, objs: list[dict]) -> dict[str, str]:
        """``producers_of`` for ``objs``: shared when they are the whole batch (a recipient behind in its bookmark gets its own)."""
        if objs is not self._objs:
            return producers_of(self._opened, objs)
        if self._producers is None:
            self._producers = producers_of(self._opened, objs)
        return self._producers


def _judge_and_write(
    opened: OpenNode, conn: Any, partner: str, policy: Policy, src: Any, objs: list[dict], now: str | None,
    cache: dict[Any, dict | None], concurred: Any = (), from_partner: set[tuple[str, str]] | None = None,
    work: _Work | None = None,
) -> _Batch:
    """Evaluate one batch for one partner, write shared copies and companions; its audit entries are returned."""
    return _judge_and_write_many(opened, conn, [partner], policy, src, objs, now, cache, concurred, from_partner, work)[partner]


def _judge_and_write_many(
    opened: OpenNode, conn: Any, partners: list[str], policy: Policy, src: Any, objs: list[dict], now: str | None,
    cache: dict[Any, dict | None], concurred: Any = (), from_partner: set[tuple[str, str]] | None = None,
    work: _Work | None = None,
) -> dict[str, _Batch]:
    """Evaluate one batch for several partners, write each one's shared copies and companions; its audit entries are returned.

    Partners on equivalent routes that hold the same references are evaluated once
    (``exchange.policy.evaluate_many``) and share their companions; each still gets its
    own rows, audit entries and withdrawals.  ``work``: the batch's recipient-independent
    preparation, shared by its recipients.
    """
    cfg = opened.node.config
    work = work if work is not None else _Work(opened, objs)
    targets = {p: cfg.partner_collection(p, "partner-read") for p in partners}
    batch_ids = {o["id"] for o in objs}
    outside = set().union(*(work.refs(o) for o in objs)) - batch_ids
    revoked = {o["id"] for o in objs if o.get("revoked") is True}
    # scf.integrity-required-refs: the recipient holds what this node released to it, the official and
    # party objects the engine knows, and what it sent us itself; an id it pushed proves nothing about an
    # object of ours with that id (its copy is not ours: ``_held_by``)
    held = {p: _held_by(opened, p, targets[p].id, outside | revoked) for p in partners}
    # marking definitions and identities are always needed to interpret the batch: from trusted sources only
    context = _context(opened, [r for r in outside if _is_context(r)], cache, src)
    # SCCF: joint attribution products go outside the partnership only with this node's own record of concurrence
    judged = evaluate_many(objs, policy, cfg.node, partners, now=now, context=context, held=held, concurred=concurred,
                           producers=work.producers(objs),  # CERT MOU: an AMBER sighting goes to its producer only
                           refs_memo=work.refs_memo)
    plans: dict[str, tuple[list, list[dict], list[dict]]] = {}  # partner -> (decisions, companions to travel, rows to write)
    for group in judged:
        first = group.recipients[0]
        travel = companions(group.decisions[first], context + objs, policy, cfg.node, first, now=now,
                            refs_memo=work.refs_memo)  # alike for the group
        for p in group.recipients:
            plans[p] = (group.decisions[p], *_to_write(opened, targets[p], src, group.decisions[p], travel, from_partner, work))
    # every partner's rows in one write: a body shared by several is made and stored once
    opened.store.add_in_many(conn, [(targets[p].id, plans[p][2]) for p in partners], origin="release", index_signatures=False)
    out: dict[str, _Batch] = {}
    # what each partner holds of the objects withheld from it, one lookup per group (its withheld ids are alike)
    holds: dict[str, dict[str, dict]] = {}
    for group in judged:
        ids = lifecycle.withheld_ids(objs, group.decisions[group.recipients[0]])
        if ids:
            holds.update(opened.store.latest_in_many(conn, [targets[p].id for p in group.recipients], ids))
    for group in judged:
        for p in group.recipients:
            out[p] = _judged(opened, conn, p, targets[p], policy, src, objs, plans[p][0], plans[p][1], holds.get(targets[p].id, {}))
        out[group.recipients[0]].entries[:0] = _decision_entries(group, src, objs, work)  # recorded once for the group
    return {p: out[p] for p in partners}


def _decision_entries(group: Judged, src: Any, objs: list[dict], work: _Work) -> list[audit.Entry]:
    """The audit entries of a group's decisions, one per object: for a group of several, one group entry for all
    members (``audit.Entry.partners``), each reason with ``audit.PARTNER_SLOT`` for the member's name; per member
    where that would not be lossless."""
    members = group.recipients
    first = group.decisions[members[0]]
    alone = len(members) == 1
    out: list[audit.Entry] = []
    for i, (d, reason, obj) in enumerate(zip(first, group.reasons(audit.PARTNER_SLOT), objs, strict=True)):
        base = {"type": d.type, "removed_fields": list(d.removed_fields), "source": src.alias, "tlp": work.tlp(obj)}
        if alone or reason is None:  # one member, or the reason holds the slot already: each member's own entry
            out += [audit.Entry(d.decision, p, d.id, d.version, d.decision, tuple(d.clauses),
                                {**base, "reason": group.decisions[p][i].reason}) for p in members]
        else:
            out.append(audit.Entry(d.decision, None, d.id, d.version, d.decision, tuple(d.clauses), {**base, "reason": reason},
                                   members))
    return out


def _to_write(
    opened: OpenNode, target: Any, src: Any, decisions: list, travel: list[dict], from_partner: set[tuple[str, str]] | None,
    work: _Work,
) -> tuple[list[dict], list[dict]]:
    """``(companions it does not hold yet, rows to write)`` of one partner: its shared copies, after their signatures."""
    store = opened.store
    if travel:  # a companion already released at this version need not travel (nor be audited) again
        present = {(o["id"], object_version(o)) for o in store.versions_of(target.id, [(o["id"], object_version(o)) for o in travel])}
        travel = [o for o in travel if (o["id"], object_version(o)) not in present]
    shared = [d.shared for d in decisions if d.shared is not None]
    # origin signatures (exchange/sharing/signatures.py): ours on what this node originated or redacted, the
    # origin's on what it relays (``from_partner``: rows a partner sent, by their recorded origin), before the objects
    def relayed(oid: str, version: str) -> bool:
        return (oid, version) in from_partner if from_partner is not None else src.role == "partner-inbox"

    signatures = release_signatures(opened, target.id, src, decisions, travel, relayed, work.leaves)
    # a partner's read collection is only paged in order (each signature before what it signs): no signature lookups
    return travel, interleaved(signatures, travel + shared)


def _judged(
    opened: OpenNode, conn: Any, partner: str, target: Any, policy: Policy, src: Any, objs: list[dict], decisions: list,
    travel: list[dict], holds: dict[str, dict],
) -> _Batch:
    """After one partner's rows are written: the audit entries of its companions and withdrawals, and its tally
    (its decisions' entries are its group's: ``_decision_entries``).  ``holds``: what it holds of what is withheld
    from it (``lifecycle.withheld_ids``)."""
    companion_clause = policy.one("companions")
    entries = [
        audit.Entry(
            "share", partner, o["id"], object_version(o), "share",
            (companion_clause.id,) if companion_clause else (),
            {"type": o.get("type"), "reason": "travels with released objects that reference it", "removed_fields": [],
             "source": src.alias, "tlp": tlp_name(o)},
        )
        for o in travel
    ]
    withdrawals = lifecycle.after_judging(opened, conn, partner, target.id, src, objs, decisions, policy, holds)
    tally = Released(evaluated=len(decisions), companions=len(travel), withdrawn=len(withdrawals))
    for d in decisions:
        if d.decision == "share":
            tally.shared += 1
        elif d.decision == "redact":
            tally.redacted += 1
        else:
            tally.withheld += 1
    return _Batch(decisions, tally, entries + withdrawals)


def _held_by(opened: OpenNode, partner: str, target_id: str, ids: set[str]) -> set[str]:
    """The ids among ``ids`` that ``partner`` holds: released to it, or objects it sent that are not ours.

    An id in the partner's inbox that this node's own collection also holds is this node's object
    (withheld or not): the partner pushing something under that id does not make it hold ours.
    """
    store = opened.store
    held = store.existing_ids(target_id, ids)
    rest = ids - held
    inbox = next((c for c in opened.node.config.collections if c.role == "partner-inbox" and c.partner == partner), None)
    if inbox is None or not rest:
        return held
    sent = store.existing_ids(inbox.id, rest)
    if sent:
        for coll in opened.node.config.collections:
            if coll.role == "own":
                sent -= store.existing_ids(coll.id, sent)
    return held | sent


def _retry_deferred(
    opened: OpenNode, partner: str, policy: Policy, src: Any, kinds: set[str], now: str | None, cache: dict[Any, dict | None]
) -> Released:
    """Judge deferred objects again; those whose references now resolve are released."""
    dkey = f"deferred:{partner}:{src.id}"
    if not opened.store.get_state(dkey):
        return Released()
    with opened.store.transaction(durable=False) as conn:
        pending = [tuple(x) for x in orjson.loads(opened.store.get_state(dkey, conn) or "[]")]
        if not pending:
            return Released()
        objs = opened.store.versions_of(src.id, pending)
        batch = _judge_and_write(opened, conn, partner, policy, src, objs, now, cache, concurred_for(opened, objs, policy))
        audit.append(conn, batch.entries)  # one partner: nothing to group
        still = [[d.id, d.version] for d in batch.decisions if d.decision == "withhold" and set(d.clauses) & kinds]
        opened.store.set_state(conn, dkey, orjson.dumps(still).decode())
    return Released(shared=batch.tally.shared, redacted=batch.tally.redacted, companions=batch.tally.companions)


def _context(opened: OpenNode, ids: list[str], cache: dict[Any, dict | None], src: Any) -> list[dict]:
    """The identities and marking definitions among ``ids`` that may travel with ``src``'s objects.

    Trusted sources only: the official TLP/IEP objects (built in), this node's own collections and
    its own identity from its configuration; for a partner's content relayed onward, also that
    partner's inbox (what it says of itself: inbound rules let no partner version another party's
    identity). Never another partner's inbox.
    """
    cfg = opened.node.config
    where = [c.id for c in cfg.collections if c.role == "own"]
    if src.role == "partner-inbox":
        where.append(src.id)
    scope = ",".join(where)
    missing = [i for i in ids if (scope, i) not in cache and i not in OFFICIAL_OBJECTS]
    if missing:
        found = {o["id"]: o for o in opened.store.latest_many(where, missing)}
        if cfg.identity in missing and cfg.identity not in found:
            found[cfg.identity] = own_identity(cfg)
        for i in missing:
            cache[(scope, i)] = found.get(i)
    return [cache[(scope, i)] for i in ids if cache.get((scope, i)) is not None]  # type: ignore[misc]


def own_identity(cfg: Any) -> dict:
    """This node's own STIX ``identity`` from its configuration (``node.yaml``), for when its collections hold none.

    Deterministic (fixed timestamps), so every release of it is the same version.
    """
    obj = {
        "type": "identity", "spec_version": "2.1", "id": cfg.identity,
        "created": "2023-04-26T00:00:00.000Z", "modified": "2023-04-26T00:00:00.000Z",
        "name": cfg.title, "identity_class": "organization",
    }
    if cfg.description:
        obj["description"] = cfg.description
    if cfg.contact:
        obj["contact_information"] = cfg.contact
    return obj


def _is_context(ref: str) -> bool:
    return ref.startswith(("marking-definition--", "identity--", "extension-definition--"))
