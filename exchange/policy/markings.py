"""Marking lookup tables (pure: no I/O, no ``stix2`` import).

STIX 2.1 data markings (OASIS STIX 2.1 §7.2): an object's ``object_marking_refs``
(§7.2.2) apply to the whole object, ``granular_markings`` (§7.2.3) to the
properties their ``selectors`` name.  Marking definitions (§7.2.1) are either
the built-in ``definition_type: "tlp"`` objects of TLP 1.0 (§7.2.1.4) or, as
STIX 2.1 extensions (§7.3), the FIRST TLP 2.0 and FIRST IEP 2.0 definitions
published in ``oasis-open/cti-stix-common-objects``.

What this module gives:

* ``TLP2_MARKINGS`` - the five official TLP 2.0 marking definitions, and
  ``TLP2_EXTENSION_DEFINITION`` / ``IEP2_EXTENSION_DEFINITION``; their content
  and key order equal the official objects (the same objects ship as JSON in
  ``exchange/data/``; ``tests/unit/test_markings.py`` pins all three copies);
* ``TLP1_MARKINGS`` and ``TLP1_TO_TLP2`` - the ``stix2`` TLP 1.0 constants
  mapped onto TLP 2.0 (WHITE -> CLEAR, GREEN -> GREEN, AMBER -> AMBER,
  RED -> RED);
* ``LEVEL_OF`` - marking-definition id -> TLP level (an ``int``; higher is
  more restrictive) for every official TLP 1.0 and 2.0 id;
* ``parse_iep`` / ``IepPolicy`` / ``combine_iep`` - FIRST IEP 2.0 extension
  fields; ``most_restrictive`` - several markings: the most restrictive wins.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from exchange.stix import parse_timestamp

__all__ = [
    "AMBER", "AMBER_STRICT", "CLEAR", "GREEN", "RED", "LEVEL_NAMES", "LEVEL_LABELS",
    "TLP2_EXTENSION_ID", "IEP2_EXTENSION_ID", "TLP2_IDS", "TLP2_MARKINGS", "TLP2_EXTENSION_DEFINITION",
    "IEP2_EXTENSION_DEFINITION", "SIGNATURE_EXTENSION_DEFINITION", "SIGNATURE_EXTENSION_ID", "SIGNATURE_TYPE", "PROJECT_IDENTITY",
    "TLP1_MARKINGS", "TLP1_TO_TLP2", "LEVEL_OF", "OFFICIAL_OBJECTS",
    "IepPolicy", "MarkingInfo", "parse_level", "level_name", "most_restrictive", "parse_iep", "combine_iep",
    "classify_marking_definition", "official_marking", "marking_refs", "encryption_required", "signature_members", "signed_member",
]

# TLP levels, least to most restrictive (FIRST TLP 2.0).
CLEAR, GREEN, AMBER, AMBER_STRICT, RED = 0, 1, 2, 3, 4
LEVEL_NAMES: tuple[str, ...] = ("clear", "green", "amber", "amber+strict", "red")
LEVEL_LABELS: tuple[str, ...] = ("TLP:CLEAR", "TLP:GREEN", "TLP:AMBER", "TLP:AMBER+STRICT", "TLP:RED")

TLP2_EXTENSION_ID = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
IEP2_EXTENSION_ID = "extension-definition--762e2e97-ee51-43e5-a9ea-165fbb862c4a"
CISA_IDENTITY = "identity--b3bca3c2-1f3d-4b54-b44f-dac42c3a8f01"

TLP2_IDS: dict[int, str] = {
    CLEAR: "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    GREEN: "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    AMBER: "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    AMBER_STRICT: "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    RED: "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}


def _tlp2_object(level: int) -> dict[str, Any]:
    # Key order as in oasis-open/cti-stix-common-objects objects/marking-definition/*.json
    return {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": TLP2_IDS[level],
        "created": "2022-10-01T00:00:00.000Z",
        "name": LEVEL_LABELS[level],
        "extensions": {
            TLP2_EXTENSION_ID: {"extension_type": "property-extension", "tlp_2_0": LEVEL_NAMES[level]},
        },
    }


TLP2_MARKINGS: dict[str, dict[str, Any]] = {TLP2_IDS[lvl]: _tlp2_object(lvl) for lvl in range(5)}

TLP2_EXTENSION_DEFINITION: dict[str, Any] = {
    "id": TLP2_EXTENSION_ID,
    "type": "extension-definition",
    "spec_version": "2.1",
    "name": "TLP 2.0",
    "description": "This defines TLP 2.0 as a STIX extension",
    "created": "2022-10-01T00:00:00.000Z",
    "modified": "2022-10-01T00:00:00.000Z",
    "created_by_ref": CISA_IDENTITY,
    "schema": "https://github.com/oasis-open/cti-stix-common-objects/tree/master/extension-definition-specifications/tlp-2.0",
    "version": "1.0.0",
    "extension_types": ["property-extension"],
}

IEP2_EXTENSION_DEFINITION: dict[str, Any] = {
    "id": IEP2_EXTENSION_ID,
    "type": "extension-definition",
    "spec_version": "2.1",
    "name": "IEP 2.0",
    "description": "This defines IEP 2.0 as a STIX extension",
    "created": "2022-12-19T00:00:00.000Z",
    "modified": "2022-12-19T00:00:00.000Z",
    "created_by_ref": CISA_IDENTITY,
    "schema": "https://github.com/oasis-open/cti-stix-common-objects/tree/master/extension-definition-specifications/iep-marking-definition-762",
    "version": "1.0.0",
    "extension_types": ["property-extension"],
}


def _tlp1_object(uuid: str, color: str) -> dict[str, Any]:
    # As serialised by stix2 3.0.2 (stix2/v21/common.py TLP_WHITE ... TLP_RED; STIX 2.1 §7.2.1.4)
    return {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": f"marking-definition--{uuid}",
        "created": "2017-01-20T00:00:00.000Z",
        "definition_type": "tlp",
        "name": f"TLP:{color.upper()}",
        "definition": {"tlp": color},
    }


_TLP1 = (
    ("613f2e26-407d-48c7-9eca-b8e91df99dc9", "white", CLEAR),
    ("34098fce-860f-48ae-8e50-ebd3cc5e41da", "green", GREEN),
    ("f88d31f6-486f-44da-b317-01333bde0b82", "amber", AMBER),
    ("5e57c739-391a-4eb3-b6be-7d15ca92d5ed", "red", RED),
)
TLP1_MARKINGS: dict[str, dict[str, Any]] = {f"marking-definition--{u}": _tlp1_object(u, c) for u, c, _ in _TLP1}
TLP1_TO_TLP2: dict[str, str] = {f"marking-definition--{u}": TLP2_IDS[lvl] for u, _, lvl in _TLP1}

LEVEL_OF: dict[str, int] = {**{v: k for k, v in TLP2_IDS.items()}, **{f"marking-definition--{u}": lvl for u, _, lvl in _TLP1}}

#: The cti-exchange project's identity: creator of the signature extension definition (not a party; never a signer).
PROJECT_IDENTITY = "identity--afbc64dc-7a05-4fe0-9f3c-c072a8eedf2a"
#: ``x-cti-signature``: the detached origin signatures (``exchange.node.signing``), a new SDO (STIX 2.1 s7.3).
SIGNATURE_EXTENSION_ID = "extension-definition--4401ff74-f589-4188-be7e-75ffebabc0c9"
SIGNATURE_TYPE = "x-cti-signature"
_SIGNATURE_1_1_0: dict[str, Any] = {
    "id": SIGNATURE_EXTENSION_ID,
    "type": "extension-definition",
    "spec_version": "2.1",
    "name": "cti-exchange origin signature",
    "description": (
        "Defines the x-cti-signature object: a detached Ed25519 signature by the node that originated or redacted "
        "the object version named by object_ref and object_modified. A consumer that does not know it ignores it; "
        "the signed object is never changed. Version 1.1.0: one Ed25519 signature covers a batch of versions "
        "through a Merkle root; each version's object carries its Merkle path."
    ),
    "created": "2026-12-01T00:00:00.000Z",
    "modified": "2026-12-02T00:00:00.000Z",
    "created_by_ref": PROJECT_IDENTITY,
    "schema": (
        "x-cti-signature properties (besides the common ones; created_by_ref is the signer's identity; modified equals "
        "created): object_ref (identifier, required), object_modified (timestamp, required), algorithm ('Ed25519', "
        "required), canonicalization ('RFC8785', required), key_id ('sha256:' + hex SHA-256 of the signer certificate's "
        "DER, required), certificate (base64 DER X.509 signing certificate, required), signature (base64 Ed25519 "
        "signature, required), merkle_root (base64 SHA-256 Merkle root, required from 1.1.0), merkle_path (list of "
        "base64 SHA-256 sibling hashes from the leaf up, each prefixed 'L' or 'R' by the sibling's side, required from "
        "1.1.0), derived_from ({id, modified} of the version a redacted copy was made from, optional). Leaf: SHA-256 of "
        "0x00 followed by the RFC 8785 canonical JSON of {object_ref, object_modified, derived_from (if present), "
        "signed_object: the signed object}; inner node: SHA-256 of 0x01, left, right; an odd last node is carried up "
        "unchanged. The signature is over the RFC 8785 canonical JSON of {type, created, created_by_ref, key_id, "
        "algorithm, canonicalization, merkle_root}. Before 1.1.0 (no merkle_root) the signature is over the RFC 8785 "
        "canonical JSON of this object without its signature property, with the signed object as the member "
        "signed_object."
    ),
    "version": "1.1.0",
    "extension_types": ["new-sdo"],
}

SIGNATURE_EXTENSION_DEFINITION: dict[str, Any] = {
    **_SIGNATURE_1_1_0,
    "description": (
        "Defines the x-cti-signature object: a detached Ed25519 signature by the node that originated or redacted "
        "object versions. A consumer that does not know it ignores it; the signed objects are never changed. "
        "Version 1.2.0: one x-cti-signature object per batch (one Ed25519 signature over a Merkle root) lists the "
        "leaf of each version it covers, so any member verifies with it alone (1.1.0: one object per version "
        "carrying its Merkle path; 1.0.0: one signature per version)."
    ),
    "modified": "2026-12-03T00:00:00.000Z",
    "schema": (
        "x-cti-signature properties (besides the common ones; created_by_ref is the signer's identity; modified equals "
        "created). Batch form (1.2.0): algorithm ('Ed25519', required), canonicalization ('RFC8785', required), key_id "
        "('sha256:' + hex SHA-256 of the signer certificate's DER, required), certificate (base64 DER X.509 signing "
        "certificate, optional: a verifier may hold it already), signature (base64 Ed25519 signature, required), "
        "merkle_root (base64 SHA-256 Merkle root, required), members (required: one entry per leaf, in leaf order, "
        "each {member: hex of the first 16 bytes of SHA-256 of '<object_ref>|<object_modified>' (UTF-8), leaf: base64 "
        "SHA-256 leaf, derived_from: {id, modified} of the version a redacted copy was made from, optional, or "
        "derived_from_same: true when that is the member's own id and version}). Leaf: "
        "SHA-256 of 0x00 followed by the RFC 8785 canonical JSON of {object_ref, object_modified, derived_from (if "
        "present), signed_object: the signed object}; inner node: SHA-256 of 0x01, left, right; an odd last node is "
        "carried up unchanged. The signature is over the RFC 8785 canonical JSON of {type, created, created_by_ref, "
        "key_id, algorithm, canonicalization, merkle_root}. Per-version form (1.1.0, still valid): object_ref, "
        "object_modified, certificate, derived_from (optional) and merkle_path (list of base64 SHA-256 sibling hashes "
        "from the leaf up, each prefixed 'L' or 'R' by the sibling's side) instead of members, same leaf, tree and "
        "statement. Before 1.1.0 (no merkle_root) the signature is over the RFC 8785 canonical JSON of this object "
        "without its signature property, with the signed object as the member signed_object."
    ),
    "version": "1.2.0",
}

#: Earlier versions of official definitions that a party may still hold and relay (accepted as official too).
FORMER_OFFICIAL: dict[str, tuple[dict[str, Any], ...]] = {
    SIGNATURE_EXTENSION_ID: (
        {  # version 1.0.0 (one signature per version): the 1.1.0 definition but for these members
            **_SIGNATURE_1_1_0,
            "description": (
                "Defines the x-cti-signature object: a detached Ed25519 signature by the node that originated or redacted "
                "the object version named by object_ref and object_modified. A consumer that does not know it ignores it; "
                "the signed object is never changed."
            ),
            "modified": "2026-12-01T00:00:00.000Z",
            "schema": (
                "x-cti-signature properties (besides the common ones; created_by_ref is the signer's identity): "
                "object_ref (identifier, required), object_modified (timestamp, required), algorithm ('Ed25519', required), "
                "canonicalization ('RFC8785', required), key_id ('sha256:' + hex SHA-256 of the signer certificate's DER, required), "
                "certificate (base64 DER X.509 signing certificate, required), signature (base64 Ed25519 signature, required), "
                "derived_from ({id, modified} of the version a redacted copy was made from, optional). The signature is over the "
                "RFC 8785 canonical JSON of this object without its signature property, with the signed object as the member "
                "signed_object."
            ),
            "version": "1.0.0",
        },
        _SIGNATURE_1_1_0,  # version 1.1.0 (one object per version, each with its Merkle path)
    ),
}


def signed_member(object_id: str, version: str) -> str:
    """How a batch ``x-cti-signature`` (1.2.0) names one version it covers: hex of the first 16 bytes of
    SHA-256 of ``"<id>|<version>"`` (a recipient of a subset learns no id of the versions it did not get)."""
    return hashlib.sha256(f"{object_id}|{version}".encode()).hexdigest()[:32]


#: the most members a batch ``x-cti-signature`` may list (cti-exchange writes at most 128): a longer list is malformed
MAX_SIGNATURE_MEMBERS = 4096


def signature_members(obj: Any) -> list[str]:
    """The member keys (``signed_member``) a batch ``x-cti-signature`` lists; ``[]`` for anything else (and for a
    list longer than ``MAX_SIGNATURE_MEMBERS``)."""
    if not isinstance(obj, dict) or obj.get("type") != SIGNATURE_TYPE or not isinstance(obj.get("members"), list):
        return []
    if len(obj["members"]) > MAX_SIGNATURE_MEMBERS:
        return []
    return [m["member"] for m in obj["members"] if isinstance(m, dict) and isinstance(m.get("member"), str) and len(m["member"]) == 32]


OFFICIAL_OBJECTS: dict[str, dict[str, Any]] = {
    **TLP2_MARKINGS,
    **TLP1_MARKINGS,
    TLP2_EXTENSION_ID: TLP2_EXTENSION_DEFINITION,
    IEP2_EXTENSION_ID: IEP2_EXTENSION_DEFINITION,
    SIGNATURE_EXTENSION_ID: SIGNATURE_EXTENSION_DEFINITION,
}
"""Objects every party holds: official TLP 1.0/2.0 marking definitions, the TLP/IEP 2.0 extension definitions and the
origin signature's extension definition shipped with cti-exchange."""


def is_official_copy(obj: Any) -> bool:
    """Whether ``obj`` is exactly an official object: its current version or a former one (``FORMER_OFFICIAL``)."""
    oid = obj.get("id") if isinstance(obj, dict) else None
    return oid in OFFICIAL_OBJECTS and (obj == OFFICIAL_OBJECTS[oid] or obj in FORMER_OFFICIAL.get(oid, ()))


def parse_level(name: str) -> int:
    """``"amber+strict"``, ``"TLP:AMBER+STRICT"``, ``"white"`` (TLP 1.0) -> level; ``ValueError`` otherwise."""
    key = str(name).strip().lower()
    if key.startswith("tlp:"):
        key = key[4:]
    if key == "white":
        return CLEAR
    try:
        return LEVEL_NAMES.index(key)
    except ValueError:
        raise ValueError(f"unknown TLP level {name!r} (expected one of {', '.join(LEVEL_NAMES)})") from None


def level_name(level: int | None) -> str:
    return "unmarked" if level is None else LEVEL_LABELS[level]


def most_restrictive(levels: Iterable[int | None]) -> int | None:
    """Several markings on one object: the most restrictive wins (``None`` = no TLP level)."""
    best: int | None = None
    for lvl in levels:
        if lvl is not None and (best is None or lvl > best):
            best = lvl
    return best


def official_marking(marking_id: str) -> dict[str, Any] | None:
    return OFFICIAL_OBJECTS.get(marking_id)


# ---------------------------------------------------------------- IEP 2.0

IEP_ENUMS: dict[str, tuple[str, ...]] = {
    "encrypt_in_transit": ("may", "must"),
    "permitted_actions": (
        "none", "contact-for-instruction", "internally-visible-actions",
        "externally-visible-indirect-actions", "externally-visible-direct-actions",
    ),
    "affected_party_notifications": ("may", "must-not"),
    "tlp": ("white", "green", "amber", "red"),
    "provider_attribution": ("may", "must", "must-not"),
    "unmodified_resale": ("may", "must-not"),
}
# Required by the STIX IEP 2.0 extension (its schema's "tlp_ref"/"policy_name" are not defined
# properties; the defined ones are "tlp" and the top-level "name", so those are not required here).
IEP_REQUIRED = (
    "extension_type", "encrypt_in_transit", "permitted_actions", "affected_party_notifications",
    "provider_attribution", "unmodified_resale", "iep_id", "iep_version", "description", "start_date",
)
# FIRST's own IEP JSON spellings that the STIX extension renamed; pinned as *not* accepted.
IEP_FIRST_SPELLINGS = {"attribution": "provider_attribution", "id": "iep_id"}
IEP_TLP_LEVEL = {"white": CLEAR, "green": GREEN, "amber": AMBER, "red": RED}


@dataclass(frozen=True, slots=True)
class IepPolicy:
    """The IEP 2.0 fields of one (or several combined) IEP marking definitions."""

    encrypt_in_transit: str = "may"
    permitted_actions: str = "externally-visible-direct-actions"
    affected_party_notifications: str = "may"
    tlp: int | None = None
    provider_attribution: str = "may"
    unmodified_resale: str = "may"
    start: int | None = None  # microseconds since the epoch
    end: int | None = None

    def in_force(self, now: int) -> bool:
        """Whether ``now`` (µs since the epoch) lies inside ``start_date`` .. ``end_date``."""
        return (self.start is None or self.start <= now) and (self.end is None or now <= self.end)


def parse_iep(marking_definition: Mapping[str, Any]) -> IepPolicy | None:
    """The IEP 2.0 policy of a marking definition, ``None`` if it has no IEP 2.0 extension.

    Accepts only the STIX extension spelling (``provider_attribution``, ``iep_id``);
    FIRST's IEP JSON spelling (``attribution``, ``id``) raises ``ValueError``, as do a
    missing required field, a value outside the enumerations or a bad timestamp.
    """
    ext = (marking_definition.get("extensions") or {}).get(IEP2_EXTENSION_ID)
    if ext is None:
        return None
    if not isinstance(ext, Mapping):
        raise ValueError("IEP 2.0 extension is not an object")
    for first, stix in IEP_FIRST_SPELLINGS.items():
        if first in ext:
            raise ValueError(f"IEP 2.0 field {first!r} is FIRST's JSON spelling; the STIX extension uses {stix!r}")
    missing = [k for k in IEP_REQUIRED if k not in ext]
    if missing:
        raise ValueError(f"IEP 2.0 extension lacks {', '.join(missing)}")
    if ext["extension_type"] != "property-extension":
        raise ValueError("IEP 2.0 extension_type must be 'property-extension'")
    if ext["iep_version"] != 2.0 or isinstance(ext["iep_version"], bool):
        raise ValueError("IEP 2.0 iep_version must be 2.0")
    for key, allowed in IEP_ENUMS.items():
        if key in ext and ext[key] not in allowed:
            raise ValueError(f"IEP 2.0 {key} {ext[key]!r} is not one of {', '.join(allowed)}")
    start = _iep_time(ext["start_date"], "start_date")
    end = _iep_time(ext["end_date"], "end_date") if "end_date" in ext else None
    return IepPolicy(
        encrypt_in_transit=ext["encrypt_in_transit"],
        permitted_actions=ext["permitted_actions"],
        affected_party_notifications=ext["affected_party_notifications"],
        tlp=IEP_TLP_LEVEL[ext["tlp"]] if "tlp" in ext else None,
        provider_attribution=ext["provider_attribution"],
        unmodified_resale=ext["unmodified_resale"],
        start=start,
        end=end,
    )


def _iep_time(value: Any, key: str) -> int:
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise ValueError(f"IEP 2.0 {key}: {exc}") from None


_PERMITTED_ORDER = IEP_ENUMS["permitted_actions"]


def combine_iep(policies: Iterable[IepPolicy]) -> IepPolicy | None:
    """Several IEP markings on one object: each field takes its most restrictive value."""
    items = list(policies)
    if not items:
        return None
    if len(items) == 1:
        return items[0]
    starts = [p.start for p in items if p.start is not None]
    ends = [p.end for p in items if p.end is not None]
    return IepPolicy(
        encrypt_in_transit="must" if any(p.encrypt_in_transit == "must" for p in items) else "may",
        permitted_actions=min((p.permitted_actions for p in items), key=_PERMITTED_ORDER.index),
        affected_party_notifications="must-not" if any(p.affected_party_notifications == "must-not" for p in items) else "may",
        tlp=most_restrictive(p.tlp for p in items),
        provider_attribution=(
            "must-not" if any(p.provider_attribution == "must-not" for p in items)
            else "must" if any(p.provider_attribution == "must" for p in items) else "may"
        ),
        unmodified_resale="must-not" if any(p.unmodified_resale == "must-not" for p in items) else "may",
        start=max(starts) if starts else None,
        end=min(ends) if ends else None,
    )


# ---------------------------------------------------------------- classification


@dataclass(frozen=True, slots=True)
class MarkingInfo:
    """What one marking definition means to the engine.

    ``kind``: ``"tlp"`` (TLP 1.0 or 2.0), ``"iep"`` (IEP 2.0, maybe with a TLP level),
    ``"statement"`` (a copyright/terms statement, §7.2.1.3: no dissemination limit) or
    ``"unknown"`` (anything else, including a malformed IEP marking: ``problem`` says why).
    """

    kind: str
    level: int | None = None
    iep: IepPolicy | None = None
    problem: str = ""


def classify_marking_definition(md: Mapping[str, Any] | None, marking_id: str | None = None) -> MarkingInfo:
    """Classify a marking definition (or an id alone, when ``md`` is ``None``)."""
    mid = marking_id or (md or {}).get("id")
    if mid in LEVEL_OF:
        return MarkingInfo("tlp", LEVEL_OF[mid])
    if md is None:
        return MarkingInfo("unknown", problem=f"marking definition {mid} is not known")
    ext = md.get("extensions") or {}
    if TLP2_EXTENSION_ID in ext:
        # A TLP 2.0 extension on a non-official id: not one of the five official objects.
        return MarkingInfo("unknown", problem=f"{mid} uses the TLP 2.0 extension but is not an official TLP 2.0 marking")
    if IEP2_EXTENSION_ID in ext:
        try:
            iep = parse_iep(md)
        except ValueError as exc:
            return MarkingInfo("unknown", problem=f"{mid}: {exc}")
        assert iep is not None
        return MarkingInfo("iep", iep.tlp, iep)
    dtype = md.get("definition_type")
    if dtype == "statement" and isinstance((md.get("definition") or {}).get("statement"), str) and not ext:
        return MarkingInfo("statement")
    if dtype == "tlp":
        return MarkingInfo("unknown", problem=f"{mid} claims definition_type 'tlp' but is not an official TLP 1.0 id")
    return MarkingInfo("unknown", problem=f"{mid} is not a TLP, IEP 2.0 or statement marking")


# ---------------------------------------------------------------- transport


def marking_refs(obj: Mapping[str, Any]) -> list[str]:
    """Every marking definition an object references: ``object_marking_refs`` and granular ``marking_ref``s."""
    out: list[str] = []
    refs = obj.get("object_marking_refs")
    if isinstance(refs, list):
        out += [r for r in refs if isinstance(r, str)]
    granular = obj.get("granular_markings")
    if isinstance(granular, list):
        out += [g["marking_ref"] for g in granular if isinstance(g, Mapping) and isinstance(g.get("marking_ref"), str)]
    return out


def encryption_required(obj: Mapping[str, Any], definitions: Mapping[str, Mapping[str, Any] | None]) -> bool:
    """Whether an object may travel only over an encrypted channel.

    True if any of its markings (whole-object or granular) is an IEP 2.0 marking
    with ``encrypt_in_transit: must``, or is a marking this node cannot interpret
    (not in ``definitions``, or neither TLP, IEP 2.0 nor a statement): an unread
    handling instruction is treated as requiring encryption.  ``definitions``:
    marking-definition id -> object (official TLP ids need not be in it).
    """
    for ref in marking_refs(obj):
        if ref in LEVEL_OF:
            continue
        info = classify_marking_definition(definitions.get(ref), ref)
        if info.kind == "unknown" or (info.kind == "iep" and info.iep is not None and info.iep.encrypt_in_transit == "must"):
            return True
    return False


def tlp_name(obj: dict) -> str:
    """The most restrictive TLP level among an object's own markings, for reports (``none`` if unmarked)."""
    levels = [LEVEL_OF[r] for r in obj.get("object_marking_refs", ()) if r in LEVEL_OF]
    return level_name(most_restrictive(levels)) if levels else "none"
