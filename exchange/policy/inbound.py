"""Inbound rules: what a node accepts from a partner (pure, no I/O).

Applied to objects a partner writes into its inbox over TAXII and to objects
the sync agent pulls from that partner.  Each refusal names its rule id, which
appears in the TAXII status ``failures`` and in the audit log:

- ``inbound.tlp-required``: every object carries a TLP marking (1.0 or 2.0) in
  ``object_marking_refs``, except marking definitions, extension definitions
  and identities, and objects published by a known public source (ATT&CK).
- ``inbound.creator-is-partner``: ``created_by_ref`` (of SDOs and SROs; SCOs
  have none) is the writing partner's
  identity, the joint cell's, or a known public source's; a partner cannot
  write objects claiming another creator (this node's included).  An object
  without ``created_by_ref`` is accepted only if an IEP marking in it says
  ``provider_attribution: must-not`` (the provider was stripped on purpose).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from exchange.config import InboundConfig
from exchange.policy.markings import LEVEL_OF, classify_marking_definition
from exchange.stix import SCO_TYPES

Resolve = Callable[[str], "dict | None"]


def _no_lookup(_marking_id: str) -> dict | None:
    return None


@dataclass(frozen=True)
class InboundRules:
    """The inbound rules of one node for one partner."""

    config: InboundConfig
    partner_identity: str
    joint_identity: str | None = None

    def judge(self, objs: Sequence[dict], resolve: Resolve = _no_lookup) -> dict[int, str]:
        """``{index: "rule-id: reason"}`` for each refused object; the rest are accepted.

        ``resolve`` finds marking definitions that are not in ``objs`` (e.g. stored earlier).
        """
        cfg = self.config
        in_batch = {o["id"]: o for o in objs if o.get("type") == "marking-definition"}

        def provider_stripped(obj: dict) -> bool:
            for ref in obj.get("object_marking_refs", ()):
                info = classify_marking_definition(in_batch.get(ref) or resolve(ref), ref)
                if info.iep is not None and info.iep.provider_attribution == "must-not":
                    return True
            return False

        allowed = {self.partner_identity, *cfg.public_sources}
        if self.joint_identity:
            allowed.add(self.joint_identity)
        refused: dict[int, str] = {}
        for i, obj in enumerate(objs):
            stype = obj.get("type")
            creator = obj.get("created_by_ref")
            # governance objects, and SCOs, which have no created_by_ref in STIX 2.1 (s3.2, s6)
            governance = stype in ("marking-definition", "extension-definition") or stype in SCO_TYPES
            if cfg.require_creator and not governance:
                if creator is None:
                    if stype not in cfg.exempt_types and not provider_stripped(obj):
                        refused[i] = "inbound.creator-is-partner: object has no created_by_ref"
                        continue
                elif creator not in allowed:
                    refused[i] = (
                        f"inbound.creator-is-partner: created_by_ref {creator} is not the partner's identity "
                        f"({self.partner_identity})"
                    )
                    continue
            if cfg.require_tlp and stype not in cfg.exempt_types and creator not in cfg.public_sources:
                if not any(ref in LEVEL_OF or _iep_tlp(in_batch.get(ref) or resolve(ref), ref) for ref in obj.get("object_marking_refs", ())):
                    refused[i] = "inbound.tlp-required: object carries no TLP marking in object_marking_refs"
        return refused


def _iep_tlp(md: dict | None, ref: str) -> bool:
    """An IEP 2.0 marking that carries a TLP level counts as a TLP marking."""
    return ref.startswith("marking-definition--") and classify_marking_definition(md, ref).level is not None
