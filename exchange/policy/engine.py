"""The policy engine: ``evaluate(objects, policy, sender, recipient)`` (pure).

No I/O, no HTTP, no ``stix2`` objects: plain dict access over per-route lookup
tables precomputed once per (policy, sender, recipient).  The input is never
mutated; a redacted object is a new copy.  Given ``now`` the result is
deterministic.

Evaluation of one object (pass 1), each step naming its clause:

1. official TLP/IEP definitions and the parties' identities: shared (held by all);
2. object markings (STIX 2.1 §7.2.2 ``object_marking_refs``): the most
   restrictive TLP level wins (TLP 1.0 ids map onto TLP 2.0; an IEP 2.0 marking
   contributes its ``tlp``); an unknown marking, or an IEP marking outside its
   ``start_date``..``end_date`` window, decides by its default (withhold);
3. no TLP level: a known public source (e.g. MITRE ATT&CK) is treated as its
   configured level without rewriting it; an own critical-infrastructure
   notification is treated as the MDT level; otherwise the unmarked default;
4. the release table for the level, the origin (the sender's own object, i.e.
   ``created_by_ref`` is the sender or a joint body it belongs to, or received
   from someone else) and the recipient; the CRI ransomware clause; otherwise
   the no-release default;
5. content rules (SCCF attribution, undisclosed vulnerabilities, IEP
   permitted actions / affected-party notifications / resale / encryption);
6. redactions: IEP ``provider_attribution: must-not`` (onward), granular
   markings (§7.2.3: a field marked more restrictively than may go is removed),
   personal-data fields; removing a required property withholds the object.

Pass 2, referential integrity (to a fixpoint): marking references and required
references (relationship ends, ``sighting_of_ref`` ...) must resolve within what
is released, held by every party, already held by the recipient (``held``) or
travels as a companion; containers (report, grouping, note, opinion) drop
unresolved ``object_refs``; other optional references to withheld objects are
removed.  Identity, marking-definition and extension-definition objects that
are unmarked travel when a released object references them (``companions``).
"""

from __future__ import annotations

import copy
import gc
import secrets
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from exchange.errors import BadRequest
from exchange.policy import markings as mk
from exchange.policy.model import Clause, Policy
from exchange.stix import REF, REFS, REQUIRED, parse_timestamp, ref_properties

__all__ = ["Decision", "Explanation", "Judged", "evaluate", "evaluate_many", "explain", "companions", "SHARE", "REDACT", "WITHHOLD"]

SHARE, REDACT, WITHHOLD = "share", "redact", "withhold"
COMPANION_TYPES = frozenset({"identity", "marking-definition", "extension-definition"})
_ALWAYS_REQUIRED = ("id", "type", "spec_version", "created", "modified")


@dataclass(frozen=True)
class Decision:
    """The engine's answer for one object.

    ``shared`` is the object as it may be released: the input itself for
    ``share``, a new redacted copy for ``redact``, ``None`` for ``withhold``.
    ``clauses`` are the ids of the clauses that decided it (release clause
    first, then any redacting clauses); ``removed_fields`` are STIX 2.1
    §7.2.3.1 selectors of what a redaction removed.
    """

    id: str
    type: str
    version: str | None
    decision: str
    clauses: tuple[str, ...]
    reason: str
    shared: dict | None
    removed_fields: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "type": self.type, "decision": self.decision,
            "clauses": list(self.clauses), "removed_fields": list(self.removed_fields),
        }


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    steps: tuple[str, ...]


# ---------------------------------------------------------------- per-route tables


def _check_route(policy: Policy, sender: str, recipient: str) -> None:
    """Sender and recipient are two different parties of the policy."""
    for role, name in (("sender", sender), ("recipient", recipient)):
        if name not in policy.parties:
            raise BadRequest(f"unknown {role} party {name!r} (known: {', '.join(sorted(policy.parties))})")
    if sender == recipient:
        raise BadRequest(f"sender and recipient are both {sender!r}")


class _Route:
    """Everything about (policy, sender, recipient) that does not depend on the object."""

    def __init__(self, policy: Policy, sender: str, recipient: str, label: str | None = None) -> None:
        _check_route(policy, sender, recipient)
        self.policy, self.sender, self.recipient = policy, sender, recipient
        self.label = recipient if label is None else label  # how reasons name the recipient (``evaluate_many``: a placeholder)
        self._parties()
        self._clauses()
        self._public_sources()
        # release tables: level -> (decision, clause) or None
        self.own_table = [self._verdict(lvl, own=True) for lvl in range(5)]
        self.recv_table = [self._verdict(lvl, own=False) for lvl in range(5)]
        self._ransomware()
        self._critical_infrastructure()
        self._content_rules()
        self._field_redactions()
        self._integrity_rules()

    def _parties(self) -> None:
        """The parties' identities (clause ``party-identities``): the sender's own ones and those every party holds."""
        parties, sender = self.policy.parties, self.sender
        self.recipient_public = parties[self.recipient].public
        own = {parties[sender].identity}
        for party in parties.values():
            if sender in party.members:
                own.add(party.identity)
        own.discard(None)
        self.own_ids = frozenset(own)
        self.party_ids = frozenset(p.identity for p in parties.values() if p.identity)
        self.identity_party = {p.identity: name for name, p in parties.items() if p.identity}
        self.held_by_all = frozenset(mk.OFFICIAL_OBJECTS) | self.party_ids  # step 1 decides only these ids
        # what every party holds: those, and the publisher of the official TLP/IEP extension definitions
        # (their created_by_ref), so an official object always travels unchanged
        self.universal = self.held_by_all | {mk.CISA_IDENTITY}

    def _clauses(self) -> None:
        """The policy's single clauses of each kind (``None`` where the policy has none)."""
        one = self.policy.one
        self.c_official = one("official-markings")
        self.c_parties = one("party-identities")
        self.c_unknown = one("unknown-marking-default")
        self.c_unmarked = one("unmarked-default")
        self.c_norelease = one("no-release-default")
        self.c_public = one("public-source")
        self.c_never = one("never-automated")
        self.c_validity = one("iep-validity")
        self.c_granular = one("granular-redact")
        self.c_reqrefs = one("integrity-required-refs")
        self.c_optrefs = one("integrity-optional-refs")
        self.c_containers = one("integrity-containers")
        self.c_companions = one("companions")
        self.c_iep_attr = one("iep-provider-attribution")
        self.c_iep_actions = one("iep-permitted-actions")
        self.c_iep_affected = one("iep-affected-party")
        self.c_iep_resale = one("iep-unmodified-resale")
        self.c_iep_encrypt = one("iep-encrypt-in-transit")
        self.c_iep_transport = one("iep-encrypted-transport")
        self.c_vuln = one("undisclosed-vulnerability")
        self.c_attr_rel = one("attribution-relationship")
        self.c_attr_prod = one("attribution-product")
        self.c_joint_rev = one("joint-revocation")
        self.c_ci = one("critical-infrastructure")
        self.c_cri = one("ransomware-onward")
        self.c_sighting = one("sighting-to-producer")
        if self.c_sighting is not None:
            self.sighting_levels = frozenset(mk.parse_level(v) for v in self.c_sighting.rule.levels)
            self.sighting_types = frozenset(self.c_sighting.rule.types)

    def _public_sources(self) -> None:
        """Clause ``public-source``: the identities and statement markings of known public sources, and their level."""
        self.public_ids: frozenset[str] = frozenset()
        self.public_markings: frozenset[str] = frozenset()
        self.public_level: int | None = None
        if self.c_public is not None:
            r = self.c_public.rule
            self.public_ids = frozenset(i for s in r.sources for i in s.identities)
            self.public_markings = frozenset(m for s in r.sources for m in s.statement_markings)
            self.public_level = mk.parse_level(r.level)
            # a public source's identity and statement markings are published: every party can hold them
            self.universal = self.universal | self.public_ids | self.public_markings

    def _ransomware(self) -> None:
        """Clause ``ransomware-onward`` (CRI): the levels, types, labels and pattern markers, if the route is inside CRI."""
        self.cri_levels: frozenset[int] = frozenset()
        if self.c_cri is not None and self._inside(self.c_cri.rule.community):
            r = self.c_cri.rule
            self.cri_levels = frozenset(mk.parse_level(v) for v in r.levels)
            self.cri_types = frozenset(r.types)
            self.cri_labels = frozenset(v.lower() for v in r.labels)
            self.cri_markers = tuple(r.pattern_markers)

    def _critical_infrastructure(self) -> None:
        """Clause ``critical-infrastructure`` (MDT): which unmarked own notifications count as its level on this route."""
        self.ci_level: int | None = None
        if self.c_ci is not None:
            r = self.c_ci.rule
            self.ci_types = frozenset(r.types)
            self.ci_labels = frozenset(v.lower() for v in r.labels)
            if self._inside(r.community):
                self.ci_level = mk.parse_level(r.unmarked_as)

    def _content_rules(self) -> None:
        """SCCF attribution, undisclosed-vulnerability and IEP content clauses: does each apply (recipient outside its community)?"""
        self.attr_rel_applies = self.c_attr_rel is not None and not self._inside(self.c_attr_rel.rule.inside)
        self.attr_prod_applies = self.c_attr_prod is not None and not self._inside(self.c_attr_prod.rule.inside)
        if self.c_attr_rel is not None:
            self.attr_rel_types = frozenset(self.c_attr_rel.rule.relationship_types)
        if self.c_attr_prod is not None:
            r = self.c_attr_prod.rule
            self.attr_prod_types = frozenset(r.types)
            self.attr_prod_report_types = frozenset(r.report_types)
            self.attr_prod_labels = frozenset(v.lower() for v in r.labels)
            self.attr_prod_rel_types = frozenset(r.relationship_types)
        self.vuln_applies = self.c_vuln is not None and not self._inside(self.c_vuln.rule.inside)
        self.iep_affected_applies = self.c_iep_affected is not None and not self._inside(self.c_iep_affected.rule.inside)
        self.iep_actions = frozenset(self.c_iep_actions.rule.withhold_onward) if self.c_iep_actions else frozenset()

    def _field_redactions(self) -> None:
        """Clauses ``field-redact``: the fields removed on this route, as type -> ((clause, fields), ...)."""
        redact: dict[str, list[tuple[Clause, tuple[str, ...]]]] = {}
        for clause in self.policy.clauses_of("field-redact"):
            if not self._inside(clause.rule.inside):
                for stype, fields in clause.rule.fields.items():
                    redact.setdefault(stype, []).append((clause, fields))
        self.field_redact = {k: tuple(v) for k, v in redact.items()}

    def _integrity_rules(self) -> None:
        """Clauses ``integrity-required-refs`` and ``integrity-containers``: required references, container types and mode."""
        self.required_refs: dict[str, frozenset[str]] = {}
        if self.c_reqrefs is not None:
            self.required_refs = {k: frozenset(v) for k, v in self.c_reqrefs.rule.required.items()}
        self.container_types = frozenset(self.c_containers.rule.types) if self.c_containers else frozenset()
        self.container_mode = self.c_containers.rule.mode if self.c_containers else "withhold"

    def creators_of(self, names: Iterable[str]) -> frozenset[str]:
        parties = self.policy.parties
        return frozenset(parties[n].identity for n in names if parties[n].identity)

    def _inside(self, community: str) -> bool:
        members = self.policy.communities[community].members
        return self.sender in members and self.recipient in members

    def _verdict(self, level: int, *, own: bool) -> tuple[str, Clause, str] | None:
        name = mk.LEVEL_LABELS[level]
        lname = mk.LEVEL_NAMES[level]
        policy, recipient, label = self.policy, self.recipient, self.label
        if self.c_never is not None and lname in self.c_never.rule.levels:
            return WITHHOLD, self.c_never, f"{name} is never released by automated exchange"
        for c in policy.clauses_of("release-any"):
            if lname in c.rule.levels:
                return SHARE, c, f"{name} may be shared with anyone"
        if own:
            for c in policy.clauses_of("own-withhold"):
                if lname in c.rule.levels and recipient in c.rule.recipients:
                    return WITHHOLD, c, f"the sender's own {name} objects are not released automatically to {label}"
            for c in policy.clauses_of("own-release"):
                r = c.rule
                if lname in r.levels and self._inside(r.community) and (not r.recipients or recipient in r.recipients):
                    return SHARE, c, f"the sender's own {name} object goes to {label} ({r.community})"
        else:
            for c in policy.clauses_of("onward-community"):
                r = c.rule
                if lname in r.levels:
                    for community in r.communities:
                        if self._inside(community):
                            return SHARE, c, f"received {name} may go onward within the {community} community"
            for c in policy.clauses_of("onward-clients"):
                r = c.rule
                if lname in r.levels and recipient in r.clients.get(self.sender, ()):
                    return SHARE, c, f"received {name} may go to {label}, a client of {self.sender} named by the policy"
        return None


    def signature(self) -> tuple:
        """Everything the route decides by, with the recipient's name as ``label`` (``evaluate_many``).

        Two recipients whose routes (built with the same placeholder label) have equal signatures
        get the same decisions for the same inputs, save the recipient's identity, which only the
        clause ``sighting-to-producer`` looks at (``evaluate_many`` compares it where it matters).
        """
        sig = self.__dict__.get("_signature")
        if sig is None:
            skip = {"policy", "sender", "recipient", "label", "_signature"}
            sig = self.__dict__["_signature"] = tuple(
                (k, _frozen(v)) for k, v in sorted(self.__dict__.items()) if k not in skip
            )
        return sig


def _frozen(value: Any) -> Any:
    """A hashable, comparable copy of a route attribute (clauses by id)."""
    if isinstance(value, Clause):
        return ("clause", value.id)
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _frozen(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(_frozen(v) for v in value))
    if isinstance(value, (set, frozenset)):
        return ("set", frozenset(_frozen(v) for v in value))
    return value


def _route(policy: Policy, sender: str, recipient: str, label: str | None = None) -> _Route:
    key = ("route", sender, recipient, label)
    route = policy._cache.get(key)
    if route is None:
        route = policy._cache[key] = _Route(policy, sender, recipient, label)
    return route


def _now_micros(now: Any) -> int:
    if now is None:
        now = datetime.now(UTC)
    if isinstance(now, datetime):
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        delta = now - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(now, int):
        return now
    try:
        return parse_timestamp(now)
    except ValueError as exc:
        raise BadRequest(f"bad 'now': {exc}") from None


# ---------------------------------------------------------------- marking summaries


class _Marks:
    __slots__ = ("level", "problem", "problem_clause", "iep", "statements")

    def __init__(self, level: int | None, problem: str, problem_clause: Clause | None, iep: mk.IepPolicy | None,
                 statements: frozenset[str]) -> None:
        self.level, self.problem, self.problem_clause, self.iep, self.statements = level, problem, problem_clause, iep, statements


#: ``_refs_of``'s memo: an object's references by ``id(obj)``, with the object (so that its id cannot be reused)
RefsMemo = dict[int, tuple[dict, list]]


class _Ctx:
    """Per-call state: marking definitions known, caches, ``now``."""

    def __init__(self, route: _Route, now: int, mdefs: dict[str, dict], plain: bool = False,
                 producers: Mapping[str, str] | None = None, refs_memo: RefsMemo | None = None) -> None:
        self.route, self.now, self.mdefs = route, now, mdefs
        self.plain = plain  # the channel is not encrypted (plain HTTP)
        self.producers = producers or {}  # sighted object id -> its producer's identity (clause sighting-to-producer)
        self.info_cache: dict[str, mk.MarkingInfo] = {}
        self.marks_cache: dict[Any, _Marks] = {}
        self.held: Collection[str] = frozenset()  # ids the recipient holds (evaluate(..., held=))
        # ``_refs_of``, shared by the runs of one ``evaluate_many``
        self.refs_memo: RefsMemo = refs_memo if refs_memo is not None else {}

    def info(self, mid: str) -> mk.MarkingInfo:
        info = self.info_cache.get(mid)
        if info is None:
            md = self.mdefs.get(mid)
            # a known public source's statement is held by everyone
            public_statement = md is None and mid in self.route.public_markings
            info = mk.MarkingInfo("statement") if public_statement else mk.classify_marking_definition(md, mid)
            self.info_cache[mid] = info
        return info

    def marks(self, refs: Any) -> _Marks:
        key = tuple(refs) if isinstance(refs, list) else refs
        m = self.marks_cache.get(key)
        if m is None:
            m = self.marks_cache[key] = self._compute(key)
        return m

    def _compute(self, refs: Any) -> _Marks:
        route = self.route
        if not isinstance(refs, tuple) or not all(isinstance(r, str) for r in refs):
            return _Marks(None, "object_marking_refs is not a list of identifiers", route.c_unknown, None, frozenset())
        level: int | None = None
        ieps: list[mk.IepPolicy] = []
        statements: set[str] = set()
        for ref in refs:
            lvl = mk.LEVEL_OF.get(ref)
            if lvl is None:
                info = self.info(ref)
                if info.kind == "unknown":
                    return _Marks(None, info.problem, route.c_unknown, None, frozenset())
                if info.kind == "statement":
                    statements.add(ref)
                    continue
                assert info.iep is not None
                if not info.iep.in_force(self.now):
                    clause = route.c_validity or route.c_unknown
                    return _Marks(None, f"IEP marking {ref} is outside its start_date..end_date window", clause, None, frozenset())
                ieps.append(info.iep)
                lvl = info.level
            if lvl is not None and (level is None or lvl > level):
                level = lvl
        return _Marks(level, "", None, mk.combine_iep(ieps), frozenset(statements))

    def field_level(self, ref: str) -> int | None | str:
        """Level of one granular marking_ref; ``"unknown"`` if it cannot be interpreted."""
        lvl = mk.LEVEL_OF.get(ref)
        if lvl is not None:
            return lvl
        info = self.info(ref)
        if info.kind == "unknown":
            return "unknown"
        if info.kind == "iep" and info.iep is not None and not info.iep.in_force(self.now):
            return "unknown"
        return info.level


# ---------------------------------------------------------------- pass 1


class _Work:
    """Mutable per-object state during one evaluation."""

    __slots__ = ("obj", "decision", "clauses", "reason", "shared", "removed", "companion", "origin_own")

    def __init__(self, obj: dict) -> None:
        self.obj = obj
        self.decision = WITHHOLD
        self.clauses: tuple[str, ...] = ()
        self.reason = ""
        self.shared: dict | None = None
        self.removed: tuple[str, ...] = ()
        self.companion = False
        self.origin_own = False


def _withhold(w: _Work, clause: Clause, reason: str, trace: list[str] | None) -> _Work:
    w.decision, w.clauses, w.reason, w.shared, w.removed = WITHHOLD, (clause.id,), reason, None, ()
    if trace is not None:
        trace.append(f"withhold [{clause.id}]: {reason}")
    return w


def _judge(w: _Work, ctx: _Ctx, index: Mapping[str, dict], concurred: Collection[str], trace: list[str] | None) -> _Work:
    """Pass 1 for one object: steps 1-6 of the module docstring, each a rule function naming its clause."""
    route = ctx.route
    obj = w.obj
    # 1. objects every party holds
    oid = obj.get("id")
    if oid in route.held_by_all and _held_by_every_party(w, oid, route, trace):
        return w
    # 2. object markings (computed and cached by _Ctx.marks), then the origin
    refs = obj.get("object_marking_refs")
    marks = ctx.marks(refs) if refs else _NO_MARKS
    if trace is not None:
        _trace_marks(trace, refs, marks)
    if marks.problem:
        return _withhold(w, marks.problem_clause or route.c_unknown, marks.problem, trace)
    if ctx.plain and _must_encrypt_in_transit(obj, marks, ctx):
        return _withhold(w, route.c_iep_transport, "IEP encrypt_in_transit 'must': not sent over an unencrypted channel", trace)
    creator = obj.get("created_by_ref")
    own = w.origin_own = creator in route.own_ids
    if trace is not None:
        _trace_origin(trace, own, creator)
    # 3. no TLP level
    level = marks.level
    lead: tuple[str, ...] = ()
    if level is None:
        treated = _unmarked_level(w, marks, own, route, trace)
        if treated is None:
            return w
        level, lead = treated
    # 4. release table
    decision, clause, reason = _release_verdict(obj, level, own, route)
    if decision == WITHHOLD:
        return _withhold(w, clause, reason, trace)
    if trace is not None:
        trace.append(f"release [{clause.id}]: {reason}")
    clauses = lead + (clause.id,) if clause.id not in lead else lead
    # 5. content rules
    why = _sighting_to_producer(obj, level, route, index, ctx.producers)
    if why is not None:
        return _withhold(w, why[0], why[1], trace)
    public = bool(lead) and lead[0] == getattr(route.c_public, "id", None)
    why = _content_withhold(obj, obj.get("type"), creator, own, marks.iep, route, index, concurred, public)
    if why is not None and _joint_withdrawal(obj, creator, why[0], route, ctx.held):
        why, clauses = None, clauses + (route.c_joint_rev.id,)
        reason = "withdrawal of a joint product the recipient holds (SCCF joint revocation)"
    if why is not None:
        return _withhold(w, why[0], why[1], trace)
    # 6. redactions
    removals = _removals(obj, level, own, marks.iep, ctx)
    if isinstance(removals, str):
        return _withhold(w, route.c_granular, removals, trace)
    w.reason = reason
    if not removals:
        w.decision, w.clauses, w.shared = SHARE, clauses, obj
        return w
    return _apply_removals(w, obj, removals, clauses, trace)


_NO_MARKS = _Marks(None, "", None, None, frozenset())


# step 1: objects every party holds


def _held_by_every_party(w: _Work, oid: str, route: _Route, trace: list[str] | None) -> bool:
    """Step 1 for an id of ``route.held_by_all``: an official TLP/IEP object or a party's identity. ``True`` if decided."""
    if oid in mk.OFFICIAL_OBJECTS:
        return _official_object(w, oid, route, trace)
    return _party_identity(w, oid, route, trace)


def _official_object(w: _Work, oid: str, route: _Route, trace: list[str] | None) -> bool:
    """Clause ``official-markings``: an official TLP/IEP definition is shared; an altered copy of one is withheld."""
    obj = w.obj
    if route.c_official is not None and mk.is_official_copy(obj):
        w.decision, w.clauses, w.shared = SHARE, (route.c_official.id,), obj
        w.reason = "official TLP/IEP definition held by every party"
        if trace is not None:
            trace.append(f"share [{route.c_official.id}]: {oid} is an official object every party holds")
        return True
    # same id as an official object but different content: never pass it off as the official one
    _withhold(w, route.c_unknown, f"{oid} differs from the official object with that id", trace)
    return True


def _party_identity(w: _Work, oid: str, route: _Route, trace: list[str] | None) -> bool:
    """Clause ``party-identities``: the unmarked identity of a party named in the policy is shared. ``True`` if decided."""
    obj = w.obj
    if obj.get("type") != "identity" or route.c_parties is None or obj.get("object_marking_refs"):
        return False
    w.decision, w.clauses, w.shared = SHARE, (route.c_parties.id,), obj
    w.reason = f"identity of the party {route.identity_party[oid]!r} named in the policy"
    if trace is not None:
        trace.append(f"share [{route.c_parties.id}]: {w.reason}")
    return True


# step 2: object markings and origin


def _trace_marks(trace: list[str], refs: Any, marks: _Marks) -> None:
    """STIX 2.1 §7.2.2 ``object_marking_refs``: the most restrictive TLP 2.0 level (TLP 1.0 mapped, IEP 2.0 ``tlp``) and IEP policy."""
    trace.append(f"object markings: {list(refs) if refs else 'none'} -> {mk.level_name(marks.level)}"
                 + (f" (IEP: {marks.iep})" if marks.iep else ""))


def _must_encrypt_in_transit(obj: dict, marks: _Marks, ctx: _Ctx) -> bool:
    """Clause ``iep-encrypted-transport`` (IEP 2.0 ``encrypt_in_transit: must``): on a plain channel, nothing so marked goes."""
    return ctx.route.c_iep_transport is not None and _needs_encryption(obj, marks, ctx)


def _trace_origin(trace: list[str], own: bool, creator: Any) -> None:
    """The origin of the object: the sender's own (``created_by_ref`` is the sender or a joint body it belongs to) or received."""
    trace.append(f"origin: {'the sender' + chr(39) + 's own object' if own else 'received from ' + str(creator or 'an unattributed source')}"
                 f" (created_by_ref {creator})")


# step 3: no TLP level


def _unmarked_level(w: _Work, marks: _Marks, own: bool, route: _Route, trace: list[str] | None) -> tuple[int, tuple[str, ...]] | None:
    """An object without a TLP level: (level it is treated as, leading clause ids), or ``None`` once withheld."""
    obj = w.obj
    if _is_public_source(obj, marks, route):
        level = route.public_level
        assert level is not None and route.c_public is not None
        if trace is not None:
            trace.append(f"[{route.c_public.id}]: known public source, treated as {mk.level_name(level)} (object unchanged)")
        return level, (route.c_public.id,)
    if own and route.ci_level is not None and _is_ci(obj, route):
        assert route.c_ci is not None
        if trace is not None:
            trace.append(f"[{route.c_ci.id}]: own critical-infrastructure notification, treated as {mk.level_name(route.ci_level)} "
                         f"for {route.label}")
        return route.ci_level, (route.c_ci.id,)
    return _unmarked_default(w, route, trace)


def _is_public_source(obj: dict, marks: _Marks, route: _Route) -> bool:
    """Clause ``public-source``: published by a known public source, i.e. ``created_by_ref`` is one of its identities
    (or the object is that identity). A source's statement marking alone proves nothing: anyone can add it to their own
    object, and unmarked is never silently public (``unmarked-default``)."""
    if route.public_level is None:
        return False
    ids = route.public_ids
    return obj.get("created_by_ref") in ids or obj.get("id") in ids


def _unmarked_default(w: _Work, route: _Route, trace: list[str] | None) -> tuple[int, tuple[str, ...]] | None:
    """Clause ``unmarked-default``: an unmarked object is withheld (``None``) or treated as TLP:CLEAR, as the policy says."""
    w.companion = w.obj.get("type") in COMPANION_TYPES
    clause = route.c_unmarked
    if clause.rule.decision == WITHHOLD:
        _withhold(w, clause, "no TLP marking: the policy default withholds unmarked objects", trace)
        return None
    return mk.CLEAR, (clause.id,)


# step 4: release table


def _release_verdict(obj: dict, level: int, own: bool, route: _Route) -> tuple[str, Clause, str]:
    """The release clauses for (level, origin, recipient), then ``ransomware-onward``, then ``no-release-default``."""
    verdict = (route.own_table if own else route.recv_table)[level]
    if verdict is None:
        verdict = _ransomware_onward(obj, level, route)
    if verdict is None:
        return WITHHOLD, route.c_norelease, (f"no clause releases {'own' if own else 'received'} "
                                             f"{mk.LEVEL_LABELS[level]} objects to {route.label}")
    return verdict


def _ransomware_onward(obj: dict, level: int, route: _Route) -> tuple[str, Clause, str] | None:
    """Clause ``ransomware-onward`` (CRI): a ransomware indicator at one of its levels may go onward to CRI members."""
    if not route.cri_levels or level not in route.cri_levels or not _is_ransomware(obj, route):
        return None
    assert route.c_cri is not None
    return SHARE, route.c_cri, f"ransomware indicator at {mk.LEVEL_LABELS[level]} may go onward to CRI members"


# step 6: redactions


def _removals(obj: dict, level: int, own: bool, iep: mk.IepPolicy | None, ctx: _Ctx) -> list[tuple[str, Clause]] | str:
    """The (selector, clause) removals of IEP provider attribution, granular markings and field redactions, in that order.

    A string is the reason the granular markings cannot be interpreted (clause ``granular-redact`` withholds).
    """
    route = ctx.route
    removals = _provider_attribution_removals(obj, iep, route) if iep is not None and not own else []
    if "granular_markings" in obj and route.c_granular is not None:
        bad = _granular_removals(obj, level, own, ctx)
        if isinstance(bad, str):
            return bad
        removals.extend((sel, route.c_granular) for sel in bad)
    redact = route.field_redact.get(obj.get("type"))
    if redact is not None:
        removals.extend(_field_removals(obj, redact))
    return removals


def _provider_attribution_removals(obj: dict, iep: mk.IepPolicy, route: _Route) -> list[tuple[str, Clause]]:
    """Clause ``iep-provider-attribution`` (IEP 2.0 ``provider_attribution: must-not``): onward, the provider's fields go."""
    clause = route.c_iep_attr
    if iep.provider_attribution != "must-not" or clause is None:
        return []
    rule = clause.rule
    return [(key, clause) for key in obj
            if key in rule.remove or (rule.remove_custom_by_refs and key.startswith("x_") and key.endswith("_by_ref"))]


def _field_removals(obj: dict, redact: tuple[tuple[Clause, tuple[str, ...]], ...]) -> list[tuple[str, Clause]]:
    """Clauses ``field-redact`` (``route.field_redact`` of the type): the personal-data fields present in the object."""
    return [(key, clause) for clause, fields in redact for key in fields if key in obj]


def _needs_encryption(obj: dict, marks: _Marks, ctx: _Ctx) -> bool:
    """An object (or one of its granular markings) whose IEP marking says ``encrypt_in_transit: must``."""
    if marks.iep is not None and marks.iep.encrypt_in_transit == "must":
        return True
    granular = obj.get("granular_markings")
    if isinstance(granular, list):
        for g in granular:
            ref = g.get("marking_ref") if isinstance(g, dict) else None
            if isinstance(ref, str) and ref not in mk.LEVEL_OF:
                info = ctx.info(ref)
                if info.kind == "iep" and info.iep is not None and info.iep.encrypt_in_transit == "must":
                    return True
    return False


def _labels(obj: dict) -> set[str]:
    out = set()
    for key in ("labels", "indicator_types", "malware_types"):
        value = obj.get(key)
        if isinstance(value, list):
            out.update(v.lower() for v in value if isinstance(v, str))
    return out


def _is_ransomware(obj: dict, route: _Route) -> bool:
    if obj.get("type") not in route.cri_types:
        return False
    if route.cri_labels.isdisjoint(_labels(obj)):
        return False
    pattern = obj.get("pattern")
    if not isinstance(pattern, str):
        return obj.get("type") != "indicator"
    return any(marker in pattern for marker in route.cri_markers)


def _is_ci(obj: dict, route: _Route) -> bool:
    return obj.get("type") in route.ci_types and not route.ci_labels.isdisjoint(_labels(obj))


def _content_withhold(obj: dict, stype: Any, creator: Any, own: bool, iep: mk.IepPolicy | None, route: _Route,
                      index: Mapping[str, dict], concurred: Collection[str], public: bool) -> tuple[Clause, str] | None:
    """Step 5, the content rules in order: SCCF attribution, undisclosed vulnerabilities, then IEP 2.0 onward rules."""
    # a known public source's attribution is already public: the SCCF concerns the partners' own statements
    if public:
        return None
    why = (_attribution_relationship(obj, stype, creator, route, concurred)
           or _attribution_product(obj, stype, creator, route, index, concurred)
           or _undisclosed_vulnerability(obj, stype, route))
    if why is not None or iep is None or own:
        return why
    return (_iep_permitted_actions(iep, route) or _iep_affected_party(iep, route)
            or _iep_unmodified_resale(iep, route) or _iep_encrypt_in_transit(iep, route))


def _sighting_to_producer(obj: dict, level: int, route: _Route, index: Mapping[str, dict],
                          producers: Mapping[str, str]) -> tuple[Clause, str] | None:
    """Clause ``sighting-to-producer`` (CERT MOU, STIX 2.1 s4.10): a sighting at a listed level goes only to who produced what it sights.

    The producer is the sighted object's ``created_by_ref`` in the batch, else what the caller
    knows (``producers``: the creator, or the partner whose inbox it came from).  Unknown: the
    sender does not hold what it sights, and ``integrity-required-refs`` decides (it defers the
    sighting until the recipient holds the sighted object; then its producer is known).
    """
    c = route.c_sighting
    if c is None or obj.get("type") not in route.sighting_types or level not in route.sighting_levels:
        return None
    target = obj.get("sighting_of_ref")
    sighted = index.get(target) if isinstance(target, str) else None
    producer = (sighted or {}).get("created_by_ref") or (producers.get(target) if isinstance(target, str) else None)
    if producer is None or producer in route.creators_of([route.recipient]):
        return None
    who = route.identity_party.get(producer, producer)
    return c, (f"a {mk.LEVEL_LABELS[level]} sighting of {target} goes only to its producer ({who}), "
               f"not to {route.label}")


def _attribution_relationship(obj: dict, stype: Any, creator: Any, route: _Route, concurred: Collection[str]) -> tuple[Clause, str] | None:
    """Clause ``attribution-relationship`` (SCCF): an attribution relationship leaves the partnership only after joint concurrence."""
    if not (route.attr_rel_applies and stype == "relationship" and obj.get("relationship_type") in route.attr_rel_types):
        return None
    if _attribution_allowed(route.c_attr_rel.rule, route, creator, obj.get("id"), concurred):
        return None
    return route.c_attr_rel, (f"attribution may not go to {route.label} before joint concurrence "
                              f"(only joint products with recorded concurrence may)")


def _attribution_product(obj: dict, stype: Any, creator: Any, route: _Route, index: Mapping[str, dict],
                         concurred: Collection[str]) -> tuple[Clause, str] | None:
    """Clause ``attribution-product`` (SCCF): a product about attribution leaves the partnership only after joint concurrence."""
    if not (route.attr_prod_applies and stype in route.attr_prod_types and _is_attribution_product(obj, route, index)):
        return None
    if _attribution_allowed(route.c_attr_prod.rule, route, creator, obj.get("id"), concurred):
        return None
    return route.c_attr_prod, (f"a product about attribution may not go to {route.label} before joint "
                               f"concurrence (only joint products with recorded concurrence may)")


def _joint_withdrawal(obj: dict, creator: Any, clause: Clause, route: _Route, held: Collection[str]) -> bool:
    """Clause ``joint-revocation`` (SCCF): a withdrawal of a joint product may follow the product to whoever holds it.

    A withdrawal is a ``revoked`` version (STIX 2.1 s3.6) by the joint cell that carries only the
    common and type-required properties (and the clause's ``keep``): it tells nothing the
    recipient did not hold already, so the attribution clauses do not hold it back.
    """
    rule = getattr(route.c_joint_rev, "rule", None)
    if rule is None or clause not in (route.c_attr_rel, route.c_attr_prod) or obj.get("revoked") is not True:
        return False
    if creator not in route.creators_of(rule.creators) or obj.get("id") not in held:
        return False
    allowed = {"type", "spec_version", "id", "created", "modified", *REQUIRED.get(obj.get("type"), ()), *rule.keep}
    return set(obj) <= allowed


def _undisclosed_vulnerability(obj: dict, stype: Any, route: _Route) -> tuple[Clause, str] | None:
    """Clause ``undisclosed-vulnerability``: a vulnerability without a public identifier stays within the partnership."""
    if not (route.vuln_applies and stype == "vulnerability"):
        return None
    sources = route.c_vuln.rule.public_sources
    ext = obj.get("external_references")
    if isinstance(ext, list) and any(isinstance(e, dict) and e.get("source_name") in sources and e.get("external_id") for e in ext):
        return None
    return route.c_vuln, f"a vulnerability without a public identifier ({', '.join(sources)}) stays within the partnership"


def _iep_permitted_actions(iep: mk.IepPolicy, route: _Route) -> tuple[Clause, str] | None:
    """Clause ``iep-permitted-actions`` (IEP 2.0 ``permitted_actions``): the listed actions need the provider's consent onward."""
    if iep.permitted_actions not in route.iep_actions:
        return None
    return route.c_iep_actions, f"IEP permitted_actions '{iep.permitted_actions}': the provider must be consulted before onward release"


def _iep_affected_party(iep: mk.IepPolicy, route: _Route) -> tuple[Clause, str] | None:
    """Clause ``iep-affected-party`` (IEP 2.0 ``affected_party_notifications: must-not``): not passed to a third party."""
    if not (route.iep_affected_applies and iep.affected_party_notifications == "must-not"):
        return None
    return route.c_iep_affected, f"IEP affected_party_notifications 'must-not': not passed to third party {route.label}"


def _iep_unmodified_resale(iep: mk.IepPolicy, route: _Route) -> tuple[Clause, str] | None:
    """Clause ``iep-unmodified-resale`` (IEP 2.0 ``unmodified_resale: must-not``): no unmodified public release."""
    if not (route.recipient_public and iep.unmodified_resale == "must-not" and route.c_iep_resale is not None):
        return None
    return route.c_iep_resale, "IEP unmodified_resale 'must-not': no unmodified public release"


def _iep_encrypt_in_transit(iep: mk.IepPolicy, route: _Route) -> tuple[Clause, str] | None:
    """Clause ``iep-encrypt-in-transit`` (IEP 2.0 ``encrypt_in_transit: must``): publication is not encrypted transit."""
    if not (route.recipient_public and iep.encrypt_in_transit == "must" and route.c_iep_encrypt is not None):
        return None
    return route.c_iep_encrypt, "IEP encrypt_in_transit 'must': publication is not encrypted transit"


def _attribution_allowed(rule: Any, route: _Route, creator: Any, oid: Any, concurred: Collection[str]) -> bool:
    """SCCF: may this attribution (or product about one) leave the partnership?

    Yes if its creator is one of ``allow_creators``, or if the clause accepts
    recorded concurrence, ``oid`` is in ``concurred`` and (when the clause names
    ``concurrence_creators``) its creator is one of them.
    """
    if creator in route.creators_of(rule.allow_creators):
        return True
    if not rule.accept_recorded_concurrence or oid not in concurred:
        return False
    return not rule.concurrence_creators or creator in route.creators_of(rule.concurrence_creators)


def _is_attribution_product(obj: dict, route: _Route, index: Mapping[str, dict]) -> bool:
    rt = obj.get("report_types")
    if isinstance(rt, list) and not route.attr_prod_report_types.isdisjoint(rt):
        return True
    if not route.attr_prod_labels.isdisjoint(_labels(obj)):
        return True
    refs = obj.get("object_refs")
    if isinstance(refs, list):
        for ref in refs:
            if isinstance(ref, str) and ref.startswith("relationship--"):
                target = index.get(ref)
                if target is not None and target.get("relationship_type") in route.attr_prod_rel_types:
                    return True
    return False


# ---------------------------------------------------------------- granular markings and redaction


def parse_selector(selector: str) -> tuple[Any, ...] | None:
    """A §7.2.3.1 selector (``external_references.[0].url``) as a path; ``None`` if malformed."""
    out: list[Any] = []
    for part in selector.split("."):
        if part.startswith("[") and part.endswith("]"):
            try:
                out.append(int(part[1:-1]))
            except ValueError:
                return None
        elif part:
            out.append(part)
        else:
            return None
    return tuple(out) if out and isinstance(out[0], str) else None


def _format_path(path: tuple[Any, ...]) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else p for p in path)


def _exists(obj: Any, path: tuple[Any, ...]) -> bool:
    for p in path:
        if isinstance(p, int):
            if not isinstance(obj, list) or not 0 <= p < len(obj):
                return False
        elif not isinstance(obj, dict) or p not in obj:
            return False
        obj = obj[p]
    return True


def _granular_removals(obj: dict, level: int, own: bool, ctx: _Ctx) -> list[str] | str:
    route = ctx.route
    table = route.own_table if own else route.recv_table
    gms = obj.get("granular_markings")
    if not isinstance(gms, list):
        return "granular_markings is not a list"
    out: list[str] = []
    for gm in gms:
        if not isinstance(gm, dict):
            return "a granular marking is not an object"
        ref = gm.get("marking_ref")
        if ref is None:
            continue  # a "lang" marking (§7.2.3) restricts nothing
        flevel = ctx.field_level(ref) if isinstance(ref, str) else "unknown"
        if flevel == "unknown":
            allowed = False
        elif flevel is None or flevel <= level:
            continue
        else:
            verdict = table[flevel]
            allowed = verdict is not None and verdict[0] == SHARE
        if allowed:
            continue
        for sel in gm.get("selectors") or ():
            if isinstance(sel, str) and sel not in out:
                out.append(sel)
    return out


_Path = tuple[Any, ...]


def _apply_removals(w: _Work, obj: dict, removals: list[tuple[str, Clause]], clauses: tuple[str, ...],
                    trace: list[str] | None) -> _Work:
    """Redact a copy of ``obj`` (STIX 2.1 §7.2.3.1 selectors); withhold it if that would remove a required property."""
    stype = obj.get("type")
    required = set(REQUIRED.get(stype, ())) | set(_ALWAYS_REQUIRED)
    paths, refusal = _removal_paths(obj, removals, required, stype)
    if refusal is not None:
        return _withhold(w, refusal[0], refusal[1], trace)
    if not paths:
        w.decision, w.clauses, w.shared = SHARE, clauses, obj
        return w
    paths = _outermost_once(paths)
    out = copy.deepcopy(obj)
    removed_lists = _remove_paths(out, paths)
    refusal = _drop_emptied_lists(out, paths, removed_lists, required)
    if refusal is not None:
        return _withhold(w, refusal[0], refusal[1], trace)
    _reshape_granular_markings(out, [p for p, _ in paths], removed_lists)
    return _redacted(w, out, paths, clauses, trace)


def _removal_paths(obj: dict, removals: list[tuple[str, Clause]], required: set[str],
                   stype: Any) -> tuple[list[tuple[_Path, Clause]], tuple[Clause, str] | None]:
    """The selectors that select something, as paths; or the (clause, reason) withholding the object.

    A required property, or the markings themselves, cannot be removed (STIX 2.1 §7.2.3: removing them withholds).
    """
    paths: list[tuple[_Path, Clause]] = []
    for sel, clause in removals:
        path = parse_selector(sel)
        if path is None or not _exists(obj, path):
            continue
        if path[0] in required and len(path) == 1:
            return paths, (clause, f"{sel!r} must be removed but is a required property of a {stype}")
        if path[0] in ("granular_markings", "object_marking_refs"):
            return paths, (clause, f"{sel!r} selects the markings themselves")
        paths.append((path, clause))
    return paths, None


def _outermost_once(paths: list[tuple[_Path, Clause]]) -> list[tuple[_Path, Clause]]:
    """One removal per path (several clauses may select the same field), none inside another."""
    seen: set[_Path] = set()
    paths = [(p, c) for p, c in paths if not (p in seen or seen.add(p))]
    all_paths = {p for p, _ in paths}
    return [(p, c) for p, c in paths if not any(q != p and p[: len(q)] == q for q in all_paths)]


def _remove_paths(out: dict, paths: list[tuple[_Path, Clause]]) -> list[tuple[_Path, int]]:
    """Remove ``paths`` from ``out`` (a copy); the (list path, index) of each list element removed."""
    removed_lists: list[tuple[_Path, int]] = []
    # remove list elements highest index first so earlier indices stay valid
    ordered = sorted(paths, key=lambda pc: _sort_key(pc[0]), reverse=True)
    for path, _ in ordered:
        parent = _get(out, path[:-1])
        last = path[-1]
        del parent[last]
        if isinstance(last, int):
            removed_lists.append((path[:-1], last))
    return removed_lists


def _drop_emptied_lists(out: dict, paths: list[tuple[_Path, Clause]], removed_lists: list[tuple[_Path, int]],
                        required: set[str]) -> tuple[Clause, str] | None:
    """Empty lists are not allowed in STIX: drop them (adding them to ``paths``), or withhold if one is required."""
    for parent_path, _ in removed_lists:
        if _exists(out, parent_path) and _get(out, parent_path) == []:
            if len(parent_path) == 1 and parent_path[0] in required:
                return paths[0][1], f"removing marked elements empties the required {parent_path[0]!r}"
            _delete(out, parent_path)
            paths.append((parent_path, paths[0][1]))
    return None


def _reshape_granular_markings(out: dict, removed: list[_Path], removed_lists: list[tuple[_Path, int]]) -> None:
    """Keep the remaining granular markings (§7.2.3) consistent with the redacted shape of ``out``."""
    if "granular_markings" not in out:
        return
    kept = []
    for gm in out["granular_markings"]:
        sels = []
        for sel in gm.get("selectors") or ():
            path = parse_selector(sel) if isinstance(sel, str) else None
            if path is None:
                continue
            new = _reindex(path, removed, removed_lists)
            if new is not None:
                sels.append(_format_path(new))
        if sels:
            gm["selectors"] = sels
            kept.append(gm)
    if kept:
        out["granular_markings"] = kept
    else:
        del out["granular_markings"]


def _redacted(w: _Work, out: dict, paths: list[tuple[_Path, Clause]], clauses: tuple[str, ...], trace: list[str] | None) -> _Work:
    """Record the redaction: the removed selectors and the redacting clauses after the release clauses."""
    removed = tuple(_format_path(p) for p, _ in sorted(paths, key=lambda pc: _sort_key(pc[0])))
    extra = []
    for _, clause in paths:
        if clause.id not in clauses and clause.id not in extra:
            extra.append(clause.id)
    w.decision, w.clauses, w.shared, w.removed = REDACT, clauses + tuple(extra), out, removed
    w.reason = (w.reason + "; " if w.reason else "") + f"removed {', '.join(removed)}"
    if trace is not None:
        trace.append(f"redact [{', '.join(extra)}]: removed {', '.join(removed)}")
    return w


def _sort_key(path: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((1, x, "") if isinstance(x, int) else (0, 0, x) for x in path)


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def _delete(obj: Any, path: tuple[Any, ...]) -> None:
    parent = _get(obj, path[:-1])
    del parent[path[-1]]


def _reindex(path: tuple[Any, ...], removed: list[tuple[Any, ...]], removed_lists: list[tuple[tuple[Any, ...], int]]) -> tuple[Any, ...] | None:
    for r in removed:
        if path[: len(r)] == r:
            return None
    new = list(path)
    for parent, index in removed_lists:
        n = len(parent)
        if tuple(path[:n]) == parent and len(path) > n and isinstance(path[n], int) and path[n] > index:
            new[n] -= 1
    return tuple(new)


# ---------------------------------------------------------------- pass 2: referential integrity

_COMPANION_KEYS = ("created_by_ref", "object_marking_refs")


def _refs_of(obj: dict, memo: RefsMemo | None = None) -> list[tuple[str, str]]:
    """(property, referenced id) for every top-level reference, granular marking refs and extension ids.

    ``memo``: found lists by ``id(obj)`` (with the object, so that its id is not reused), for one batch judged for
    several recipients and then for their companions (``evaluate_many``, ``companions``); read-only for callers.
    """
    if memo is not None:
        hit = memo.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
    out = _find_refs(obj)
    if memo is not None:
        memo[id(obj)] = (obj, out)
    return out


def _find_refs(obj: dict) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, kind in ref_properties(obj):
        value = obj[key]
        if kind == REF:
            if isinstance(value, str) and "--" in value:
                out.append((key, value))
        elif kind == REFS:
            if isinstance(value, list):
                out.extend([(key, v) for v in value if isinstance(v, str) and "--" in v])
        elif key == "granular_markings" and isinstance(value, list):
            out.extend(("granular_markings", gm["marking_ref"]) for gm in value
                       if isinstance(gm, dict) and isinstance(gm.get("marking_ref"), str))
        elif key == "extensions" and isinstance(value, dict):
            out.extend(("extensions", k) for k in value if k.startswith("extension-definition--"))
    return out


def _is_companion_ref(key: str, target: str) -> bool:
    if key in ("object_marking_refs", "granular_markings", "extensions"):
        return True
    return key.endswith("_by_ref") and target.startswith("identity--")


def _integrity(works: list[_Work], ctx: _Ctx, held: Collection[str], context_ok: Any, trace_id: str | None,
               trace: list[str] | None) -> None:
    """Pass 2: references must resolve (to a fixpoint), then unmarked companions travel with what references them."""
    route = ctx.route
    released, candidates = _released_and_candidates(works)
    _resolve_references(works, route, released, candidates, held, context_ok, trace_id, trace, ctx.refs_memo)
    # companions: unmarked identities / marking / extension definitions referenced by what is released
    if route.c_companions is None or not candidates:
        return
    _share_companions(works, candidates, route.c_companions, trace_id, trace, ctx.refs_memo)


def _released_and_candidates(works: list[_Work]) -> tuple[dict[str, int], dict[str, list[_Work]]]:
    """Released ids (with how many of their versions are released) and withheld companion candidates by id."""
    released: dict[str, int] = {}
    candidates: dict[str, list[_Work]] = {}
    for w in works:
        oid = w.obj.get("id")
        if w.decision != WITHHOLD:
            released[oid] = released.get(oid, 0) + 1
        elif w.companion:
            candidates.setdefault(oid, []).append(w)
    return released, candidates


def _resolve_references(works: list[_Work], route: _Route, released: dict[str, int], candidates: dict[str, list[_Work]],
                        held: Collection[str], context_ok: Any, trace_id: str | None, trace: list[str] | None,
                        memo: RefsMemo | None = None) -> None:
    """Clauses ``integrity-required-refs`` / ``-optional-refs`` / ``-containers``: fix unresolved references to a fixpoint.

    A reference resolves to what is released, held by every party, already held by the recipient,
    or (markings, creators, extensions) a companion.  Withholding an object re-examines its referrers.
    """
    universal = route.universal

    def resolved(key: str, target: str) -> bool:
        if target in released or target in universal or target in held:
            return True
        if _is_companion_ref(key, target):
            return target in candidates or context_ok(target)
        return False

    referrers: dict[str, list[_Work]] = {}
    queue = [w for w in works if w.decision != WITHHOLD]
    while queue:
        w = queue.pop()
        if w.decision == WITHHOLD:
            continue
        current = w.shared
        assert current is not None
        bad: list[tuple[str, str]] = []
        for key, target in _refs_of(current, memo):
            if not resolved(key, target):
                bad.append((key, target))
            elif target not in universal:
                referrers.setdefault(target, []).append(w)
        if bad and not _fix_refs(w, current, bad, route, trace if w.obj.get("id") == trace_id else None):
            queue.extend(_unrelease(released, referrers, w.obj.get("id")))


def _unrelease(released: dict[str, int], referrers: dict[str, list[_Work]], oid: str) -> list[_Work]:
    """One version of ``oid`` became withheld; once none is released, the objects referring to it (to re-examine)."""
    released[oid] -= 1
    if released[oid]:
        return []
    del released[oid]
    return referrers.pop(oid, [])


def _share_companions(works: list[_Work], candidates: dict[str, list[_Work]], clause: Clause, trace_id: str | None,
                      trace: list[str] | None, memo: RefsMemo | None = None) -> None:
    """Clause ``companions``: an unmarked identity / marking / extension definition travels with an object referencing it."""
    for w in works:
        if w.decision == WITHHOLD or w.shared is None:
            continue
        for key, target in _refs_of(w.shared, memo):
            if target in candidates and _is_companion_ref(key, target):
                for cw in candidates.pop(target):
                    cw.decision, cw.clauses, cw.shared = SHARE, (clause.id,), cw.obj
                    cw.reason = f"travels with {w.obj.get('id')}, which references it ({key})"
                    if trace is not None and cw.obj.get("id") == trace_id:
                        trace.append(f"share [{clause.id}]: {cw.reason}")


def _fix_refs(w: _Work, current: dict, bad: list[tuple[str, str]], route: _Route, trace: list[str] | None) -> bool:
    """Redact or withhold ``w`` for its unresolved references; ``False`` if it became withheld."""
    stype = current.get("type")
    required = route.required_refs.get(stype, frozenset())
    for key, target in bad:
        if key in ("object_marking_refs", "granular_markings") or key in required:
            clause = route.c_reqrefs or route.c_norelease
            _withhold(w, clause, f"{key} -> {target} is not released, and the reference cannot be dropped", trace)
            return False
        if stype in route.container_types and key == "object_refs" and route.container_mode == "withhold":
            _withhold(w, route.c_containers, f"object_refs -> {target} is not released; the policy withholds such containers", trace)
            return False
    out = dict(current)
    removed = list(w.removed)
    extra: list[str] = []
    bad_by_key: dict[str, set[str]] = {}
    for key, target in bad:
        bad_by_key.setdefault(key, set()).add(target)
    for key, targets in bad_by_key.items():
        clause = route.c_containers if (stype in route.container_types and key == "object_refs") else route.c_optrefs
        if clause is None:
            _withhold(w, route.c_norelease, f"{key} -> {sorted(targets)[0]} is not released", trace)
            return False
        if clause.id not in extra:
            extra.append(clause.id)
        value = out[key]
        if key.endswith("_refs") and isinstance(value, list):
            kept = [v for v in value if v not in targets]
            for i, v in enumerate(value):
                if v in targets:
                    removed.append(f"{key}.[{i}]")
            if kept:
                out[key] = kept
            else:
                del out[key]
                if key in set(REQUIRED.get(stype, ())):
                    _withhold(w, clause, f"every entry of the required {key!r} refers to something not released", trace)
                    return False
        else:
            del out[key]
            removed.append(key)
    clauses = w.clauses + tuple(c for c in extra if c not in w.clauses)
    w.decision, w.shared, w.clauses, w.removed = REDACT, out, clauses, tuple(removed)
    w.reason = (w.reason + "; " if w.reason else "") + "dropped references to objects not released: " + ", ".join(
        sorted({t for _, t in bad}))
    if trace is not None:
        trace.append(f"redact [{', '.join(extra)}]: dropped references to objects not released ({', '.join(removed)})")
    return True


# ---------------------------------------------------------------- entry points


def _run(objects: Iterable[dict], policy: Policy, sender: str, recipient: str, *, now: Any, context: Iterable[dict],
         held: Collection[str], concurred: Collection[str], trace_id: str | None = None,
         trace: list[str] | None = None, referenced: Collection[str] = (), transport: str | None = None,
         producers: Mapping[str, str] | None = None, label: str | None = None,
         refs_memo: RefsMemo | None = None) -> list[_Work]:
    route = _route(policy, sender, recipient, label)
    objs = objects if isinstance(objects, list) else list(objects)
    index: dict[str, dict] = {}
    mdefs: dict[str, dict] = {}
    ctx_index: dict[str, dict] = {}
    for o in context:
        if isinstance(o, dict) and isinstance(o.get("id"), str):
            ctx_index[o["id"]] = o
            if o.get("type") == "marking-definition":
                mdefs[o["id"]] = o
    for i, o in enumerate(objs):
        if not isinstance(o, dict) or not isinstance(o.get("id"), str) or not isinstance(o.get("type"), str):
            raise BadRequest(f"object {i} is not a STIX object with 'type' and 'id'")
        oid = o["id"]
        index[oid] = o
        if o["type"] == "marking-definition":
            mdefs[oid] = o
    if transport not in (None, "tls", "plain"):
        raise BadRequest(f"transport {transport!r}: expected 'tls' or 'plain'")
    ctx = _Ctx(route, _now_micros(now), mdefs, plain=transport == "plain", producers=producers, refs_memo=refs_memo)
    held_set = held if isinstance(held, (set, frozenset, dict)) else frozenset(held)
    ctx.held = held_set
    works = []
    for o in objs:
        w = _Work(o)
        _judge(w, ctx, index, concurred, trace if (trace is not None and o["id"] == trace_id) else None)
        works.append(w)
    if referenced:
        for w in works:
            if w.companion and w.obj["id"] in referenced and route.c_companions is not None:
                w.decision, w.clauses, w.shared = SHARE, (route.c_companions.id,), w.obj
                w.reason = "travels with released objects that reference it"

    ctx_ok_cache: dict[str, bool] = {}

    def context_ok(target: str) -> bool:
        ok = ctx_ok_cache.get(target)
        if ok is None:
            o = ctx_index.get(target)
            ok = False
            if o is not None and o.get("type") in COMPANION_TYPES:
                cw = _judge(_Work(o), ctx, index, concurred, None)
                ok = cw.decision != WITHHOLD or (cw.companion and route.c_companions is not None)
            ctx_ok_cache[target] = ok
        return ok

    _integrity(works, ctx, held_set, context_ok, trace_id, trace)
    return works


_new = object.__new__
_set = object.__setattr__


def _decision(w: _Work) -> Decision:
    # Same fields as Decision(...), set in one step (the frozen dataclass __init__ sets them one by one).
    o = w.obj
    d = _new(Decision)
    _set(d, "__dict__", {
        "id": o["id"], "type": o["type"], "version": o.get("modified") or o.get("created"), "decision": w.decision,
        "clauses": w.clauses, "reason": w.reason, "shared": w.shared, "removed_fields": w.removed,
    })
    return d


def evaluate(objects: Iterable[dict], policy: Policy, sender: str, recipient: str, *, now: Any = None,
             context: Iterable[dict] = (), held: Collection[str] = (), concurred: Collection[str] = (),
             transport: str | None = None, producers: Mapping[str, str] | None = None) -> list[Decision]:
    """One ``Decision`` per input object, in input order.

    ``sender``/``recipient``: party names of the policy (``us``, ``rok``, ``jp``,
    ``public`` ...).  ``now``: the time IEP validity windows are judged at (a STIX
    timestamp, an aware ``datetime`` or µs since the epoch; default: the current
    time).  ``context``: marking definitions and identities the sender holds that
    are not being released now (used to interpret markings; unmarked ones count as
    companions that ``companions()`` will supply).  ``held``: ids the recipient is
    known to hold already (references to them resolve).  ``concurred``: ids of
    attribution objects with recorded joint concurrence (used only by SCCF clauses
    that set ``accept_recorded_concurrence``).  ``transport``: ``"plain"`` when the
    objects would travel over an unencrypted channel (IEP ``encrypt_in_transit: must``
    objects are then withheld), ``"tls"`` or ``None`` otherwise.  ``producers``: for
    sighted objects not in the batch, the identity of who produced each (clause
    ``sighting-to-producer``).
    """
    with _collector_paused():
        works = _run(objects, policy, sender, recipient, now=now, context=context, held=held, concurred=concurred,
                     transport=transport, producers=producers)
        return [_decision(w) for w in works]


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The engine allocates only acyclic objects: pausing the cyclic collector for a call (restored
    afterwards) avoids full-heap scans that would otherwise halve throughput."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


#: how reasons name the recipient when one evaluation serves several (``evaluate_many``); unguessable, so no
#: text an object carries into a reason (an id, a name) can be taken for it
_RECIPIENT = f"\x00recipient-{secrets.token_hex(8)}\x00"


@dataclass(frozen=True)
class Judged:
    """The decisions of ``evaluate_many`` for recipients on equivalent routes (evaluated once for all of them).

    ``decisions[r]``: one ``Decision`` per input object, in input order, as ``evaluate`` would return for ``r``
    (its reasons name ``r``); the ``shared`` copies are the same objects for every recipient of the group.
    """

    recipients: tuple[str, ...]
    decisions: Mapping[str, list[Decision]]
    generic_reasons: tuple[str, ...] = field(default=(), repr=False)  # each reason with the recipient as a placeholder

    def reasons(self, slot: str) -> list[str | None]:
        """Each decision's reason with ``slot`` where it names the recipient, for one record standing for every
        member (``None`` where the reason holds ``slot`` already: filling it in would not give each reason back)."""
        return [None if slot in r else r.replace(_RECIPIENT, slot) for r in self.generic_reasons]


def evaluate_many(objects: Iterable[dict], policy: Policy, sender: str, recipients: Sequence[str], *, now: Any = None,
                  context: Iterable[dict] = (), held: Mapping[str, Collection[str]] | None = None,
                  concurred: Collection[str] = (), transport: str | None = None,
                  producers: Mapping[str, str] | None = None,
                  refs_memo: RefsMemo | None = None) -> list[Judged]:
    """``evaluate`` for several recipients at once, once per group of recipients on equivalent routes (issue 21).

    Recipients are equivalent for this input when their routes' tables are equal
    (``_Route.signature``, the recipient's name aside), they hold the same ids of
    those the input needs (``held[r]``), and, if the input holds an object the
    clause ``sighting-to-producer`` judges, they are the same identities.  Each
    group is evaluated once; every member's decisions equal what ``evaluate``
    returns for it, reasons included.  Groups come in the order of their first
    recipient.  ``refs_memo``: a dict the caller keeps for the batch (each object's references are found once, for
    every group and then for ``companions``).
    """
    objs = objects if isinstance(objects, list) else list(objects)
    context = context if isinstance(context, list) else list(context)
    held = held or {}
    refs_memo = refs_memo if refs_memo is not None else {}
    groups: dict[Any, list[str]] = {}
    for r in dict.fromkeys(recipients):
        route = _route(policy, sender, r, _RECIPIENT)
        who = route.creators_of([r]) if _judges_sightings(route, objs) else None
        key = (route.signature(), frozenset(held.get(r, ())), who)
        groups.setdefault(key, []).append(r)
    out = []
    with _collector_paused():
        for members in groups.values():
            first = members[0]
            works = _run(objs, policy, sender, first, now=now, context=context, held=held.get(first, ()), concurred=concurred,
                         transport=transport, producers=producers, label=_RECIPIENT, refs_memo=refs_memo)
            generic = [_decision(w) for w in works]
            out.append(Judged(tuple(members), {r: _named(generic, r) for r in members}, tuple(d.reason for d in generic)))
    return out


def _judges_sightings(route: _Route, objs: list[dict]) -> bool:
    """Whether the clause ``sighting-to-producer`` (which compares the recipient's identity) may judge one of ``objs``."""
    return route.c_sighting is not None and any(isinstance(o, dict) and o.get("type") in route.sighting_types for o in objs)


def _named(generic: list[Decision], recipient: str) -> list[Decision]:
    """``generic`` with the placeholder in each reason replaced by ``recipient`` (decisions without it are shared)."""
    out = []
    for d in generic:
        if _RECIPIENT in d.reason:
            d2 = _new(Decision)
            _set(d2, "__dict__", {**d.__dict__, "reason": d.reason.replace(_RECIPIENT, recipient)})
            d = d2
        out.append(d)
    return out


def explain(object_id: str, objects: Iterable[dict], policy: Policy, sender: str, recipient: str, *, now: Any = None,
            context: Iterable[dict] = (), held: Collection[str] = (), concurred: Collection[str] = ()) -> Explanation:
    """Evaluate ``objects`` and return the decision of ``object_id`` with its steps (last version if several)."""
    objs = list(objects)
    if not any(isinstance(o, dict) and o.get("id") == object_id for o in objs):
        raise BadRequest(f"no object with id {object_id!r} in the bundle")
    steps: list[str] = []
    works = _run(objs, policy, sender, recipient, now=now, context=context, held=held, concurred=concurred,
                 trace_id=object_id, trace=steps)
    mine = [w for w in works if w.obj.get("id") == object_id]
    d = _decision(mine[-1])
    steps.append(f"decision: {d.decision} by {', '.join(d.clauses)}")
    return Explanation(d, tuple(steps))


def companions(decisions: Iterable[Decision], known_objects: Iterable[dict], policy: Policy, sender: str,
               recipient: str, *, now: Any = None, refs_memo: RefsMemo | None = None) -> list[dict]:
    """The objects that must travel with the released ones.

    Every marking definition, ``identity`` (``created_by_ref``, ``*_by_ref``) and
    extension definition referenced by a shared or redacted object and not itself
    released in ``decisions``: taken from ``known_objects`` (latest version) or the
    official objects, judged by the same policy (unmarked ones travel under the
    ``companions`` clause; marked ones only if their markings allow), and returned
    as they may be released (official objects first, then in ``known_objects`` order).  ``refs_memo``: as for
    ``evaluate_many`` (the same dict, for the same batch).
    """
    released = set()
    wanted: set[str] = set()
    decisions = list(decisions)
    for d in decisions:
        if d.shared is not None:
            released.add(d.id)
    for d in decisions:
        if d.shared is not None:
            for key, target in _refs_of(d.shared, refs_memo):
                if _is_companion_ref(key, target) and target not in released:
                    wanted.add(target)
    latest: dict[str, dict] = {}
    order: list[str] = []
    for o in known_objects:
        oid = o.get("id") if isinstance(o, dict) else None
        if oid in wanted:
            prev = latest.get(oid)
            if prev is None:
                order.append(oid)
            if prev is None or (o.get("modified") or o.get("created") or "") > (prev.get("modified") or prev.get("created") or ""):
                latest[oid] = o
    official = [mk.OFFICIAL_OBJECTS[t] for t in sorted(wanted) if t in mk.OFFICIAL_OBJECTS and t not in latest]
    candidates = official + [latest[oid] for oid in order]
    works = _run(candidates, policy, sender, recipient, now=now, context=(), held=released, concurred=(),
                 referenced=wanted)
    return [w.shared for w in works if w.shared is not None]
