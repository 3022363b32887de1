"""Inbound rules: what a node accepts from a partner (pure, no I/O).

Applied to objects a partner writes into its inbox over TAXII and to objects
the sync agent pulls from that partner.  Each refusal names its rule id, which
appears in the TAXII status ``failures`` and in the audit log.  The rules are
about *entitlement*: a partner speaks in its own name only.

- ``inbound.identity-not-partner``: a partner may create or version its own
  ``identity`` and identities it created itself (``created_by_ref`` = the
  partner, e.g. a victim organisation), never another party's: not this
  node's, the joint cell's, a public source's, another partner's, nor an
  unattributed identity that is not its own; an exact copy of a version this
  node already holds from its own loads is accepted (it repeats, it says nothing new).
- ``inbound.official-definition``: an object with the id of an official TLP 2.0
  or IEP 2.0 marking definition or extension definition is accepted only if it
  is exactly the official object (a copy travels harmlessly; a version is never
  the partner's to make).
- ``inbound.creator-is-partner``: ``created_by_ref`` (of SDOs, SROs and marking
  definitions; SCOs have none) is the writing partner's identity.  Two
  exceptions, each proven rather than claimed: the joint cell's attribution
  products (``attributed-to`` relationships, opinions and attribution reports,
  which the release only ever passes on with this node's own record of
  concurrence), and a public source's object that is exactly a version this
  node already holds from a local load (``held_locally``).  An object without
  ``created_by_ref`` is accepted only if an IEP marking in it says
  ``provider_attribution: must-not`` (the provider was stripped on purpose).
- ``inbound.tlp-required``: every object carries a TLP marking (1.0 or 2.0) in
  ``object_marking_refs``, except marking definitions, extension definitions
  and identities, and public-source objects the node already holds.
- ``inbound.signature-invalid``: an object version with an origin signature
  (``x-cti-signature``, ``exchange.node.signing``) that does not verify (changed
  in transit, wrong or revoked key, a certificate no trusted CA issued) is refused,
  and so is a malformed signature object.
- ``inbound.signature-required``: an unsigned object version whose
  ``created_by_ref`` is a party that signs what it originates (a partner with a
  node, when signing is on) is refused.

A valid origin signature proves that its signer produced exactly that version: a
third party's object relayed by the partner (``created_by_ref`` = the signer) passes
``inbound.creator-is-partner`` and ``inbound.identity-not-partner`` (never for this
node's own identity or objects: it holds them itself).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from exchange.config import InboundConfig
from exchange.policy.markings import (
    LEVEL_OF,
    OFFICIAL_OBJECTS,
    SIGNATURE_TYPE,
    classify_marking_definition,
    is_official_copy,
    signature_members,
    signed_member,
)
from exchange.stix import SCO_TYPES, object_version

#: The rule ids this module refuses with; each is a clause of ``policies/inbound.yaml`` (kind ``inbound``, vectors in
#: ``tests/policy/vectors/inbound.yaml``).
RULE_IDS = (
    "inbound.identity-not-partner", "inbound.official-definition", "inbound.creator-is-partner", "inbound.tlp-required",
    "inbound.signature-invalid", "inbound.signature-required",
)

Resolve = Callable[[str], "dict | None"]
#: Whether this exact version of an object is already held from a local load (not from any partner).
HeldLocally = Callable[[dict], bool]

#: Joint-cell objects a partner may relay: the attribution workflow's products (``exchange.sharing.attribution``).
_JOINT_TYPES = frozenset({"relationship", "opinion", "report"})


@dataclass(frozen=True)
class SignatureState:
    """What the origin signatures found for one object version say: ``valid`` (by ``signer``), ``invalid`` (``reason``)
    or ``unsigned``; ``derived_from``: the source version a redacted copy names."""

    status: str
    signer: str | None = None
    reason: str = ""
    derived_from: dict | None = None


#: The signature state of an object (computed by the node, which holds the keys: ``exchange.node.signing``).
Signatures = Callable[[dict], SignatureState]
_UNSIGNED = SignatureState("unsigned")
_SIGNATURE_FIELDS = ("object_ref", "object_modified", "algorithm", "key_id", "certificate", "signature", "created_by_ref")
_BATCH_FIELDS = ("algorithm", "key_id", "signature", "created_by_ref", "merkle_root")


def _no_signatures(_obj: dict) -> SignatureState:
    return _UNSIGNED


def _no_lookup(_marking_id: str) -> dict | None:
    return None


def _nothing_held(_obj: dict) -> bool:
    return False


@dataclass(frozen=True)
class InboundRules:
    """The inbound rules of one node for one partner.

    ``other_parties``: the identities of every party but this partner (this node, the other
    partners); a partner can never write in their name.
    """

    config: InboundConfig
    partner_identity: str
    joint_identity: str | None = None
    other_parties: frozenset[str] = frozenset()
    #: this node's own identity (its objects and identity are never accepted from a partner, signed or not)
    node_identity: str | None = None
    #: parties that sign every version they originate: an unsigned object created by one is refused
    signing_parties: frozenset[str] = frozenset()

    def judge(
        self, objs: Sequence[dict], resolve: Resolve = _no_lookup, held_locally: HeldLocally = _nothing_held,
        signatures: Signatures = _no_signatures,
    ) -> dict[int, str]:
        """``{index: "rule-id: reason"}`` for each refused object; the rest are accepted.

        ``resolve`` finds marking definitions that are not in ``objs`` (e.g. stored earlier);
        ``held_locally`` says whether a version is already held from this node's own loads;
        ``signatures`` gives each object's origin-signature state (verified by the node).
        A signature object of a refused object in the same batch is refused with it.
        """
        in_batch = {o["id"]: o for o in objs if o.get("type") == "marking-definition"}

        def marking(ref: str) -> dict | None:
            return in_batch.get(ref) or resolve(ref)

        refused: dict[int, str] = {}
        sigs: list[int] = []
        for i, obj in enumerate(objs):
            if obj.get("type") == SIGNATURE_TYPE:
                sigs.append(i)
                continue
            state = signatures(obj)
            why = (
                self._signature(obj, state)
                or self._identity(obj, held_locally, state)
                or _official(obj)
                or self._creator(obj, marking, held_locally, state)
                or self._tlp(obj, marking, held_locally)
            )
            if why:
                refused[i] = why
        self._signature_objects(objs, sigs, refused)
        return refused

    def _signature_objects(self, objs: Sequence[dict], sigs: list[int], refused: dict[int, str]) -> None:
        """Signature objects: well-formed, and not signing only versions refused in this batch (they say nothing alone).

        A batch signature (``members``) is kept while any version it covers is accepted here or is not in this batch
        (it may come in a later envelope or page)."""
        dropped = {(objs[i].get("id"), object_version(objs[i])): why for i, why in refused.items()}
        batch: dict[str, int] | None = None
        for i in sigs:
            sig = objs[i]
            if "members" in sig:
                if batch is None:  # the member key of each version in this batch -> its index
                    batch = {signed_member(o["id"], v): j for j, o in enumerate(objs)
                             if isinstance(o.get("id"), str) and (v := object_version(o)) is not None}
                self._batch_signature(sig, i, batch, refused)
                continue
            missing = [k for k in _SIGNATURE_FIELDS if not isinstance(sig.get(k), str)]
            if missing:
                refused[i] = f"inbound.signature-invalid: signature object lacks {', '.join(missing)}"
                continue
            why = dropped.get((sig["object_ref"], sig["object_modified"]))
            if why is not None:
                refused[i] = f"{why.split(':', 1)[0]}: signs {sig['object_ref']} at {sig['object_modified']}, refused here"

    @staticmethod
    def _batch_signature(sig: dict, i: int, batch: dict[str, int], refused: dict[int, str]) -> None:
        missing = [k for k in _BATCH_FIELDS if not isinstance(sig.get(k), str)]
        members = signature_members(sig)
        if missing or not members or len(members) != len(sig["members"]):
            refused[i] = f"inbound.signature-invalid: batch signature object lacks {', '.join(missing) or 'well-formed members'}"
            return
        here = [batch.get(m) for m in members]
        if all(j is not None and j in refused for j in here):
            why = refused[here[0]]  # type: ignore[index]
            refused[i] = f"{why.split(':', 1)[0]}: signs only versions refused here"

    def _signature(self, obj: dict, state: SignatureState) -> str | None:
        """``inbound.signature-invalid`` / ``inbound.signature-required``."""
        if state.status == "invalid":
            return f"inbound.signature-invalid: {obj.get('id')}: {state.reason}"
        creator = obj.get("created_by_ref")
        if state.status == "unsigned" and creator in self.signing_parties and object_version(obj) is not None:
            return f"inbound.signature-required: {creator} signs every object version it originates; this one carries no signature"
        return None

    def _proven(self, state: SignatureState, who: object) -> bool:
        """A valid origin signature by ``who`` (never this node: it holds its own objects itself)."""
        return state.status == "valid" and state.signer == who and who != self.node_identity

    def _identity(self, obj: dict, held_locally: HeldLocally, state: SignatureState = _UNSIGNED) -> str | None:
        """``inbound.identity-not-partner``: the partner versions its own identity and identities it created, no other
        (an exact copy of a version this node holds from its own loads repeats, it does not speak; a version
        signed by that party itself, or by its creator, is that party's word)."""
        if obj.get("type") != "identity" or obj.get("id") == self.partner_identity or held_locally(obj):
            return None
        oid, creator = obj.get("id"), obj.get("created_by_ref")
        if self._proven(state, oid) or (creator is not None and self._proven(state, creator)):
            return None
        if oid in self._parties() or oid in self.config.public_sources:
            return f"inbound.identity-not-partner: {oid} is another party's identity; only that party may create or version it"
        if creator != self.partner_identity:
            return (f"inbound.identity-not-partner: identity {oid} is neither the partner's own ({self.partner_identity}) "
                    "nor created by it")
        return None

    def _parties(self) -> frozenset[str]:
        return self.other_parties | ({self.joint_identity} if self.joint_identity else frozenset())

    def _creator(self, obj: dict, marking: Resolve, held_locally: HeldLocally, state: SignatureState = _UNSIGNED) -> str | None:
        """``inbound.creator-is-partner``: the partner's own objects, proven joint products, public objects already held,
        a third party's objects with that party's valid origin signature."""
        if not self.config.require_creator:
            return None
        stype, creator = obj.get("type"), obj.get("created_by_ref")
        if stype in SCO_TYPES or stype == "extension-definition" or creator == self.partner_identity:
            return None  # SCOs have no created_by_ref in STIX 2.1 (s3.2, s6)
        if creator is not None and self._proven(state, creator):
            return None
        if creator is None:
            if stype in self.config.exempt_types or _provider_stripped(obj, marking):
                return None
            return "inbound.creator-is-partner: object has no created_by_ref"
        if creator == self.joint_identity and self._joint_product(obj):
            return None
        if creator in self.config.public_sources and held_locally(obj):
            return None
        return f"inbound.creator-is-partner: created_by_ref {creator} is not the partner's identity ({self.partner_identity})" + _why_not(
            creator, self.joint_identity, self.config.public_sources
        )

    @staticmethod
    def _joint_product(obj: dict) -> bool:
        """A joint-attribution workflow product (SCCF): released onward only with this node's own record of concurrence."""
        stype = obj.get("type")
        if stype == "relationship":
            return obj.get("relationship_type") == "attributed-to"
        if stype == "report":
            return "attribution" in (obj.get("report_types") or ())
        return stype in _JOINT_TYPES

    def _tlp(self, obj: dict, marking: Resolve, held_locally: HeldLocally) -> str | None:
        """``inbound.tlp-required``: a TLP marking in ``object_marking_refs`` (an IEP 2.0 marking with a TLP level counts)."""
        cfg = self.config
        if not cfg.require_tlp or obj.get("type") in cfg.exempt_types:
            return None
        if any(ref in LEVEL_OF or _iep_tlp(marking(ref), ref) for ref in obj.get("object_marking_refs", ())):
            return None
        if obj.get("created_by_ref") in cfg.public_sources and held_locally(obj):
            return None
        return "inbound.tlp-required: object carries no TLP marking in object_marking_refs"


def _official(obj: dict) -> str | None:
    """``inbound.official-definition``: an official definition's id carries exactly the official object."""
    oid = obj.get("id")
    if oid in OFFICIAL_OBJECTS and not is_official_copy(obj):
        return f"inbound.official-definition: {oid} is an official definition; this object differs from it"
    return None


def _provider_stripped(obj: dict, marking: Resolve) -> bool:
    """An IEP 2.0 marking with ``provider_attribution: must-not``: the provider was removed on purpose."""
    for ref in obj.get("object_marking_refs", ()):
        info = classify_marking_definition(marking(ref), ref)
        if info.iep is not None and info.iep.provider_attribution == "must-not":
            return True
    return False


def _why_not(creator: str, joint: str | None, public: Sequence[str]) -> str:
    if creator == joint:
        return "; the joint cell's objects are accepted only as attribution products"
    if creator in public:
        return "; a public source's object is accepted only as an exact copy of a version this node loaded itself"
    return ""


def _iep_tlp(md: dict | None, ref: str) -> bool:
    """An IEP 2.0 marking that carries a TLP level counts as a TLP marking."""
    return ref.startswith("marking-definition--") and classify_marking_definition(md, ref).level is not None
