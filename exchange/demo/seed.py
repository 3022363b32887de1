"""Seed content: published DPRK indicators (CSV) as STIX 2.1 bundles.

``advisory_bundle`` turns rows of ``../shared/data/real/advisory-iocs.csv``
into STIX 2.1 ``indicator`` objects, one per value, with deterministic ids
(UUIDv5 of source and value), the advisory cited in ``external_references``,
where the value was read in the ``description``, TLP:CLEAR (the advisories
are public), and an ``indicates`` relationship to the ATT&CK malware of the
same name where the bundle has one.  A corrected row is a new version of
its indicator (STIX 2.1 s3.6: same id, later ``modified``): give the row a
``modified`` column (a date or a STIX timestamp), or pass ``modified=`` for
every row; ``created`` stays the advisory date.  The output is committed under
``collections/<node>/seed/`` (``advisory-indicators.json``); a test checks it still matches the CSV.

Retired for new content: ``cti-exchange import`` (``exchange.sharing.importer``) makes valid STIX 2.1
from the same CSV (creator identity in the bundle, ``valid_until``, a report, ``indicates``
relationships, wallets as ``user-account`` patterns instead of the undefined
``cryptocurrency-wallet`` type this helper writes).
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterable
from pathlib import Path

NAMESPACE = uuid.UUID("6f0c7c53-8f33-4a52-9a3e-8e4cb0e0a5a1")
TLP_CLEAR = "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487"

_PATTERNS = {
    "md5": "[file:hashes.MD5 = '{v}']",
    "sha1": "[file:hashes.'SHA-1' = '{v}']",
    "sha256": "[file:hashes.'SHA-256' = '{v}']",
    "ipv4": "[ipv4-addr:value = '{v}']",
    "domain": "[domain-name:value = '{v}']",
    "url": "[url:value = '{v}']",
    "email": "[email-addr:value = '{v}']",
    "btc_wallet": "[cryptocurrency-wallet:value = '{v}']",
    "eth_wallet": "[cryptocurrency-wallet:value = '{v}']",
}
_LABELS = {
    "md5": "file-hash", "sha1": "file-hash", "sha256": "file-hash", "ipv4": "network", "domain": "network",
    "url": "network", "email": "email", "btc_wallet": "cryptocurrency-wallet", "eth_wallet": "cryptocurrency-wallet",
}


def read_rows(csv_path: Path, sources: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> list[dict]:
    """Rows of the advisory CSV, optionally only some ``source_id`` values."""
    wanted = set(sources) if sources is not None else None
    skipped = set(exclude)
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r for r in rows if (wanted is None or r["source_id"] in wanted) and r["source_id"] not in skipped]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _stamp(date: str) -> str:
    """A STIX timestamp for a (possibly partial, e.g. ``2017-12``) publication date."""
    parts = (date.split("-") + ["01", "01"])[:3]
    return f"{parts[0]}-{parts[1]}-{parts[2]}T00:00:00.000Z"


def _revision(row: dict, modified: str | None, created: str) -> str:
    """The indicator's ``modified``: the row's own ``modified`` column, else ``modified``, else the advisory date."""
    value = (row.get("modified") or "").strip() or modified
    if not value:
        return created
    return value if "T" in value else _stamp(value)


def indicator_for(row: dict, creator: str, modified: str | None = None) -> dict:
    """One STIX 2.1 indicator for one CSV row (``modified``: a correction's version, see the module docstring)."""
    kind = row["type"]
    stamp = _stamp(row["source_date"])
    version = _revision(row, modified, stamp)
    ident = uuid.uuid5(NAMESPACE, f"{row['source_id']}|{kind}|{row['value']}")
    about = row["malware"] or row["actor"]
    labels = [_LABELS[kind]]
    if row["malware"]:
        labels.append(row["malware"].lower())
    ransomware = row["malware"] == "Maui" or row["source_id"] == "AA23-040A"
    if ransomware:
        labels.append("ransomware")
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{ident}",
        "created_by_ref": creator,
        "created": stamp,
        "modified": version,
        "name": f"{about}: {kind} {row['value']}",
        "description": (
            f"Published in {row['source_id']} \"{row['source_title']}\" ({row['source_agencies']}, {row['source_date']}). "
            f"Actor: {row['actor']}. Value read from the public copy {row['source_ref']}. {row['notes']}"
        ).strip(),
        "indicator_types": ["malicious-activity"],
        "pattern": _PATTERNS[kind].format(v=_escape(row["value"])),
        "pattern_type": "stix",
        "valid_from": stamp,
        "labels": labels,
        "external_references": [{"source_name": row["source_id"], "description": row["source_title"]}],
        "object_marking_refs": [TLP_CLEAR],
    }


def advisory_bundle(rows: list[dict], creator: str, attack_objects: list[dict] | None = None, modified: str | None = None) -> dict:
    """A STIX bundle of indicators (and ``indicates`` links to ATT&CK malware) for ``rows``."""
    malware = {
        o["name"].lower(): o["id"]
        for o in (attack_objects or [])
        if o.get("type") == "malware" and isinstance(o.get("name"), str)
    }
    objects: list[dict] = []
    for row in rows:
        ind = indicator_for(row, creator, modified)
        objects.append(ind)
        target = malware.get(row["malware"].lower()) if row["malware"] else None
        if target:
            rid = uuid.uuid5(NAMESPACE, f"indicates|{ind['id']}|{target}")
            objects.append(
                {
                    "type": "relationship",
                    "spec_version": "2.1",
                    "id": f"relationship--{rid}",
                    "created_by_ref": creator,
                    "created": ind["created"],
                    "modified": ind["modified"],
                    "relationship_type": "indicates",
                    "source_ref": ind["id"],
                    "target_ref": target,
                    "object_marking_refs": [TLP_CLEAR],
                }
            )
    bundle_id = uuid.uuid5(NAMESPACE, "bundle|" + creator + "|" + ",".join(sorted({r["source_id"] for r in rows})))
    return {"type": "bundle", "id": f"bundle--{bundle_id}", "objects": objects}
