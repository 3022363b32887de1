"""Expand the compact test-vector objects of ``tests/policy/vectors/*.yaml`` into STIX 2.1 dicts.

A vector object is a dict with the STIX properties it wants plus these shorthands:

* ``alias`` - names the object; its id is ``<type>--uuid5(alias)``.  ``alias: a#2``
  is another version of ``a`` (same id) whose expectation is keyed ``a#2``;
* ``creator`` - a party name (``us``, ``rok``, ``jp``, ``joint``), ``mitre`` or an identity id;
* ``tlp`` - a TLP 2.0 level name or a list of them (``object_marking_refs``);
  ``tlp1`` - a TLP 1.0 colour; ``markings`` - extra marking ids or ``@alias``;
* ``granular`` - list of ``{tlp: level | marking: id-or-@alias, selectors: [...]}``;
* ``iep`` - for a ``marking-definition``: IEP 2.0 fields overriding FIRST's TLP-AMBER example;
* any string ``@alias`` anywhere is replaced by that alias's id.
"""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import yaml

from exchange.policy import markings as mk

VECTORS = Path(__file__).parent / "vectors"
NS = uuid.UUID("6f1c1f38-8f0e-4d4e-9d55-0c0de0c7e5a1")
PARTY_IDS = {
    "us": "identity--371ec1f1-c078-4fd3-9eff-c233c753c388",
    "rok": "identity--99da2a3b-3031-468d-b273-2f29aec7f816",
    "jp": "identity--1a0aa608-42e5-4348-afbb-9c3a6e11535e",
    "joint": "identity--9909a483-dc4f-404a-96a0-33f5fd316e10",
    "mitre": "identity--c78cb6e5-0c4b-4611-8297-d1b8b55e40b5",
    "vendor": "identity--5b1d3c2e-7a44-4d0e-9a51-2f8f4f3f6a10",
}
MITRE_STATEMENT = "marking-definition--fa42a846-8d90-4e51-bc29-71d5b4802168"
TLP1 = {"white": "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
        "green": "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
        "amber": "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82",
        "red": "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed"}
T0 = "2024-01-01T00:00:00.000Z"

TEMPLATES: dict[str, dict[str, Any]] = {
    "indicator": {"name": "DPRK C2 address", "description": "Lazarus command-and-control address.",
                  "indicator_types": ["malicious-activity"], "pattern": "[ipv4-addr:value = '198.51.100.7']",
                  "pattern_type": "stix", "valid_from": "2024-01-01T00:00:00Z"},
    "malware": {"name": "Maui", "is_family": True, "malware_types": ["ransomware"]},
    "threat-actor": {"name": "RGB Bureau 121", "threat_actor_types": ["nation-state"]},
    "intrusion-set": {"name": "Andariel"},
    "campaign": {"name": "Operation Dream Job"},
    "relationship": {"relationship_type": "uses"},
    "report": {"name": "DPRK activity report", "published": "2024-01-02T00:00:00Z", "report_types": ["threat-report"]},
    "note": {"content": "Analyst note."},
    "opinion": {"opinion": "agree"},
    "grouping": {"context": "suspicious-activity"},
    "identity": {"name": "Example organisation", "identity_class": "organization"},
    "sighting": {"count": 1},
    "incident": {"name": "Intrusion at a power utility"},
    "vulnerability": {"name": "Unpatched update server flaw"},
    "observed-data": {"first_observed": "2024-01-01T00:00:00Z", "last_observed": "2024-01-01T00:00:00Z", "number_observed": 1},
    "email-addr": {"value": "analyst@example.org"},
    "user-account": {"user_id": "1001", "account_login": "jdoe", "display_name": "J. Doe"},
    "ipv4-addr": {"value": "198.51.100.7"},
    "marking-definition": {},
}
SCO = {"email-addr", "user-account", "ipv4-addr"}
IEP_DEFAULT = {  # FIRST's reference TLP-AMBER IEP, in the STIX extension's spelling
    "extension_type": "property-extension", "encrypt_in_transit": "may",
    "permitted_actions": "externally-visible-direct-actions", "affected_party_notifications": "may",
    "tlp": "amber", "provider_attribution": "may", "unmodified_resale": "may",
    "iep_id": "0224bfdf-ea3a-49c3-96f6-66d908bb1845", "iep_version": 2.0,
    "description": "Test IEP", "start_date": "2022-10-01T00:00:00Z",
}


def alias_id(stype: str, alias: str) -> str:
    return f"{stype}--{uuid.uuid5(NS, alias.split('#')[0])}"


def _tlp_ids(value: Any) -> list[str]:
    names = value if isinstance(value, list) else [value]
    return [mk.TLP2_IDS[mk.parse_level(n)] for n in names]


def expand(specs: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """The STIX objects of a vector and alias -> id."""
    ids = _alias_ids(specs)
    out = []
    for spec in specs:
        spec = copy.deepcopy(spec)
        if "official" in spec:
            out.append(copy.deepcopy(mk.TLP2_MARKINGS[ids[spec["alias"]]]))
            continue
        obj = _base_object(spec, ids)
        _add_markings(obj, spec, ids)
        if "iep" in spec:
            _add_iep(obj, spec.pop("iep"))
        for k, v in spec.items():
            obj[k] = _sub(v, ids)
        out.append(obj)
    return out, ids


def _alias_ids(specs: list[dict]) -> dict[str, str]:
    """alias -> id for every object of a vector (official TLP markings, party identities, given ids, uuid5 of the alias)."""
    ids = {}
    for spec in specs:
        if "official" in spec:
            ids[spec["alias"]] = mk.TLP2_IDS[mk.parse_level(spec["official"])]
        elif "party" in spec:
            ids[spec["alias"]] = PARTY_IDS[spec["party"]]
        elif "id" in spec:
            ids[spec["alias"]] = spec["id"]
        else:
            ids[spec["alias"].split("#")[0]] = alias_id(spec["type"], spec["alias"])
    return ids


def _sub(value: Any, ids: dict[str, str]) -> Any:
    """``value`` with every ``@alias`` string in it replaced by that alias's id."""
    if isinstance(value, str) and value.startswith("@"):
        return ids[value[1:]]
    if isinstance(value, list):
        return [_sub(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _sub(v, ids) for k, v in value.items()}
    return value


def _base_object(spec: dict, ids: dict[str, str]) -> dict[str, Any]:
    """The object's type, id, timestamps, template properties and creator (popping their shorthands off ``spec``)."""
    stype = spec.pop("type")
    alias = spec.pop("alias")
    obj: dict[str, Any] = {"type": stype, "spec_version": "2.1", "id": ids.get(alias, alias_id(stype, alias))}
    if "party" in spec:
        spec.pop("party")
        spec.setdefault("name", "Party identity")
    spec.pop("id", None)
    if stype not in SCO:
        obj["created"] = T0
        if stype != "marking-definition":
            obj["modified"] = spec.pop("modified", T0)
    obj.update(copy.deepcopy(TEMPLATES[stype]))
    creator = spec.pop("creator", None)
    if creator is not None:
        obj["created_by_ref"] = PARTY_IDS.get(creator, creator)
    return obj


def _add_markings(obj: dict[str, Any], spec: dict, ids: dict[str, str]) -> None:
    """``object_marking_refs`` from ``tlp``/``tlp1``/``markings`` and ``granular_markings`` from ``granular`` (popped off ``spec``)."""
    refs: list[str] = []
    if "tlp" in spec:
        refs += _tlp_ids(spec.pop("tlp"))
    if "tlp1" in spec:
        refs.append(TLP1[spec.pop("tlp1")])
    for m in spec.pop("markings", []):
        refs.append(MITRE_STATEMENT if m == "mitre" else _sub(m, ids))
    if refs:
        obj["object_marking_refs"] = refs
    if "granular" in spec:
        obj["granular_markings"] = [
            {"marking_ref": _tlp_ids(g["tlp"])[0] if "tlp" in g else _sub(g["marking"], ids), "selectors": g["selectors"]}
            for g in spec.pop("granular")
        ]


def _add_iep(obj: dict[str, Any], overrides: dict | None) -> None:
    """Make ``obj`` an IEP 2.0 marking: FIRST's TLP-AMBER example with ``overrides`` (a ``None`` value drops the field)."""
    fields = dict(IEP_DEFAULT)
    for k, v in (overrides or {}).items():
        if v is None:
            fields.pop(k, None)
        else:
            fields[k] = v
    obj["name"] = "IEP test marking"
    obj["extensions"] = {mk.IEP2_EXTENSION_ID: fields}


def load_vectors() -> list[tuple[str, dict]]:
    """(file:name, vector) for every vector file."""
    out = []
    for path in sorted(VECTORS.glob("*.yaml")):
        for vector in yaml.safe_load(path.read_text(encoding="utf-8")) or []:
            out.append((f"{path.stem}:{vector['name']}", vector))
    return out
