"""Import indicators from CSV or plain lists into a node (``cti-exchange import``).

Analysts receive indicators of compromise as CSV (advisories) or as plain lists
(partner e-mails, defanged: ``hxxp``, ``[.]``).  Each row becomes one STIX 2.1
``indicator`` (STIX 2.1 s4.7) with a STIX pattern (s9), created by the node's
identity, marked with the chosen TLP 2.0 marking, valid from the source's date
(or the first import) until ``valid_days`` after its first import; one ``report``
(s4.14) groups the import with its source and URL, and ``indicates``
relationships (s5.2) link each indicator to the ``--about`` objects (an ATT&CK
intrusion set or malware, by name, alias, ATT&CK id or STIX id, looked up in the
node's own collection).

Types are detected (plain lists, CSV rows without a type) and checked (CSV rows
with one) by ``ioc-finder`` after refanging with ``ioc-fanger``; cryptocurrency
addresses by ``coinaddrvalidator``.  A wallet is a pattern on the STIX 2.1
``user-account`` SCO (s6.16; a ledger address is an account on that ledger):
``[user-account:account_type = 'bitcoin' AND user-account:user_id = '<address>']``,
the address byte for byte (EIP-55 mixed case kept), so strict validators accept it
without a custom object type.

Idempotent: an indicator's id is a UUIDv5 of its source, type and value, so the
same row imported again is the same object (``unchanged``, nothing written); a
row whose content changed becomes a new version with a fresh ``modified``
(``updated``).  Rows that cannot be imported are listed with their line and
reason, never dropped silently; a file that cannot be read writes nothing.
Everything is written in one transaction through the same path as ``load``
(``exchange.sharing.loading``), so the release policy applies on the way out.
"""

from __future__ import annotations

import csv
import hashlib
import io
import mimetypes
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exchange.errors import BadRequest, NotFound
from exchange.node.ops import OpenNode
from exchange.policy.markings import OFFICIAL_OBJECTS, TLP2_EXTENSION_ID, TLP2_IDS, parse_level
from exchange.sharing.loading import LoadOutcome, load_and_release
from exchange.sharing.release import own_identity
from exchange.stix import check_object, format_timestamp, parse_timestamp
from exchange.storage.store import Selection

#: The namespace of every deterministic id the importer makes (``name_based_id``).
NAMESPACE = uuid.UUID("6f0c7c53-8f33-4a52-9a3e-8e4cb0e0a5a1")

#: The CSV columns the importer knows (``../shared/data/real/advisory-iocs.csv``); ``--columns`` maps others onto them.
FIELDS = ("value", "type", "actor", "malware", "source_id", "source_title", "source_date", "source_agencies", "source_ref", "notes")

FORMATS = ("auto", "csv", "text", "stix")
TLP_CHOICES = ("clear", "green", "amber", "amber+strict", "red")

#: The kinds of indicator, with the names a CSV ``type`` column may use for them.
KIND_NAMES = {
    "domain": ("domain", "domain-name", "hostname", "fqdn"),
    "ipv4": ("ipv4", "ip", "ipv4-addr", "ip-dst", "ip-src"),
    "ipv6": ("ipv6", "ipv6-addr"),
    "url": ("url", "uri", "link"),
    "email": ("email", "email-addr", "email-src", "e-mail"),
    "md5": ("md5",),
    "sha1": ("sha1", "sha-1"),
    "sha256": ("sha256", "sha-256"),
    "file": ("file", "filename", "file-name", "file_name"),
    "btc_wallet": ("btc_wallet", "btc", "bitcoin", "bitcoin-wallet"),
    "eth_wallet": ("eth_wallet", "eth", "ethereum", "ethereum-wallet"),
    "ltc_wallet": ("ltc_wallet", "ltc", "litecoin", "litecoin-wallet"),
}
_KIND_OF = {name: kind for kind, names in KIND_NAMES.items() for name in names}

#: ioc-finder's result key per kind, in the order a whole-line match is preferred.
_FINDER_KEYS = (
    ("url", "urls"), ("email", "email_addresses"), ("ipv4", "ipv4s"), ("ipv6", "ipv6s"),
    ("sha256", "sha256s"), ("sha1", "sha1s"), ("md5", "md5s"), ("domain", "domains"),
)
_FINDER_KEY = dict(_FINDER_KEYS)

#: wallet kind -> (coinaddrvalidator currency, ``user-account`` ``account_type``)
_LEDGERS = {"btc_wallet": ("btc", "bitcoin"), "eth_wallet": ("eth", "ethereum"), "ltc_wallet": ("ltc", "litecoin")}

_PATTERNS = {
    "md5": "[file:hashes.MD5 = '{v}']",
    "sha1": "[file:hashes.'SHA-1' = '{v}']",
    "sha256": "[file:hashes.'SHA-256' = '{v}']",
    "ipv4": "[ipv4-addr:value = '{v}']",
    "ipv6": "[ipv6-addr:value = '{v}']",
    "domain": "[domain-name:value = '{v}']",
    "url": "[url:value = '{v}']",
    "email": "[email-addr:value = '{v}']",
    "file": "[file:name = '{v}']",
}
_WALLET_PATTERN = "[user-account:account_type = '{ledger}' AND user-account:user_id = '{v}']"

#: The kinds of object ``--about`` may name (the indicator ``indicates`` them, STIX 2.1 s4.7 relationships).
ABOUT_TYPES = ("intrusion-set", "malware", "threat-actor", "campaign", "tool", "attack-pattern", "infrastructure")

# shape checks for a *declared* wallet row whose checksum the library rejects (as published in an advisory)
_SHAPES = {
    "btc_wallet": re.compile(r"(?:[13][1-9A-HJ-NP-Za-km-z]{24,34}|bc1[02-9ac-hj-np-z0-9]{8,87})"),
    "eth_wallet": re.compile(r"0x[0-9a-fA-F]{40}"),
    "ltc_wallet": re.compile(r"(?:[LM3][1-9A-HJ-NP-Za-km-z]{24,34}|ltc1[02-9ac-hj-np-z0-9]{8,87})"),
}
_FILE_EXTRA = {".ps1", ".lnk", ".vbs", ".sys", ".scr", ".jar", ".msi", ".iso", ".hta", ".dll", ".exe", ".bat", ".cmd", ".js", ".elf", ".apk", ".dmg"}


def name_based_id(kind: str, name: str) -> str:
    """A deterministic STIX id for ``name``: UUIDv5's SHA-1 name hash in the UUIDv4 layout.

    STIX 2.1 s2.9: the UUID of an SDO or SRO id SHOULD be version 4; a hash of the name is as
    unpredictable as a random one, and the same name always gives the same id (idempotent imports).
    """
    raw = bytearray(uuid.uuid5(NAMESPACE, name).bytes)
    raw[6] = (raw[6] & 0x0F) | 0x40
    return f"{kind}--{uuid.UUID(bytes=bytes(raw))}"


@dataclass(frozen=True)
class Refused:
    """A row that was not imported: its line in the file, its value, why."""

    line: int
    value: str
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"line": self.line, "value": self.value, "reason": self.reason}


@dataclass(frozen=True)
class Detected:
    """A row's indicator: its kind, the value as it goes in the pattern, and a note (e.g. a checksum that fails)."""

    kind: str
    value: str
    note: str = ""


@dataclass
class Row:
    """One indicator row: its line, the raw value, and the other known columns."""

    line: int
    value: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class ImportResult:
    """The outcome of one import (``--json`` prints ``as_json()``)."""

    indicators: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    refused: list[Refused] = field(default_factory=list)
    objects: list[dict] = field(default_factory=list)  # the import's bundle: every object, as stored
    loaded: LoadOutcome | None = None

    def as_json(self) -> dict[str, Any]:
        """``{"indicators", "created", "updated", "unchanged", "refused": [{"line", "value", "reason"}]}``."""
        return {
            "indicators": self.indicators, "created": self.created, "updated": self.updated, "unchanged": self.unchanged,
            "refused": [r.as_json() for r in self.refused],
        }

    def bundle(self) -> dict[str, Any]:
        """The import as a STIX 2.1 bundle (s8)."""
        ids = ",".join(sorted(o["id"] + "|" + str(o.get("modified", "")) for o in self.objects))
        return {"type": "bundle", "id": name_based_id("bundle", "bundle|" + ids), "objects": self.objects}


# --- reading -------------------------------------------------------------------------------------------------


def parse_columns(spec: str | None) -> dict[str, str]:
    """``--columns value=indicator,type=kind``: field -> the file's column name; ``BadRequest`` on unknown fields."""
    mapping: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, sep, column = part.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not column:
            raise BadRequest(f"--columns {part!r}: use FIELD=COLUMN (FIELD one of {', '.join(FIELDS)})")
        if name not in FIELDS:
            raise BadRequest(f"--columns: unknown field {name!r} (known: {', '.join(FIELDS)})")
        mapping[name] = column
    return mapping


def read_text_file(path: Path) -> str:
    """The file's text (UTF-8, a BOM allowed); ``BadRequest`` if it cannot be read (then nothing is written)."""
    try:
        return Path(path).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise BadRequest(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{path}: not UTF-8 text (byte {exc.start}): nothing imported") from exc


def guess_format(path: Path, text: str, columns: dict[str, str]) -> str:
    """``csv`` for a header naming the value column, ``stix`` for a JSON bundle, else ``text`` (one indicator a line)."""
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" or stripped.startswith("{"):
        return "stix"
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
    try:
        header = next(csv.reader([first]))
    except (csv.Error, StopIteration):
        header = []
    value_column = columns.get("value", "value")
    if path.suffix.lower() in (".csv", ".tsv") or value_column in [h.strip() for h in header]:
        return "csv"
    return "text"


def read_csv_rows(text: str, columns: dict[str, str], where: str) -> list[Row]:
    """Rows of a CSV file with a header; the columns named by ``FIELDS`` (or mapped by ``columns``) are read."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    wanted = {f: columns.get(f, f) for f in FIELDS}
    if wanted["value"] not in header:
        raise BadRequest(f"{where}: no {wanted['value']!r} column in the CSV header ({', '.join(header) or 'empty'}); "
                         "name it with --columns value=COLUMN")
    missing = [c for f, c in columns.items() if c not in header]
    if missing:
        raise BadRequest(f"{where}: --columns names {', '.join(map(repr, missing))}, not in the CSV header ({', '.join(header)})")
    rows = []
    for record in reader:
        line = reader.line_num
        fields = {f: (record.get(c) or "").strip() for f, c in wanted.items() if c in header}
        rows.append(Row(line=line, value=fields.pop("value"), fields=fields))
    return rows


def read_text_rows(text: str) -> list[Row]:
    """One indicator per line; blank lines and ``#`` comments are skipped."""
    return [
        Row(line=n, value=ln.strip())
        for n, ln in enumerate(text.splitlines(), start=1)
        if ln.strip() and not ln.lstrip().startswith("#")
    ]


# --- detection -----------------------------------------------------------------------------------------------


def _wallet(value: str, kind: str) -> bool:
    currency = _LEDGERS[kind][0]
    if currency == "eth" and not value.startswith("0x"):
        return False  # 40 hex digits alone are a SHA-1 hash; an Ethereum address is written with 0x
    try:
        import coinaddrvalidator  # imported when used: every CLI command would pay for it at start

        return bool(coinaddrvalidator.validate(currency, value.encode("ascii")).valid)
    except (UnicodeEncodeError, ValueError, TypeError):
        return False


def _finder(value: str) -> dict[str, list[str]]:
    from ioc_finder import find_iocs  # ~1 s of grammar building at import: only when importing

    return find_iocs(value)


def _is_file_name(value: str) -> bool:
    if any(c in value for c in "/\\:*?\"<>|") or " " in value.strip() or "." not in value:
        return False
    suffix = Path(value).suffix.lower()
    return suffix in _FILE_EXTRA or mimetypes.guess_type(value, strict=False)[0] is not None


def detect(value: str, declared: str | None = None) -> Detected:
    """The indicator in ``value`` (refanged); ``declared``: a CSV ``type`` to check instead of guessing.

    ``ValueError`` with a reason if the value is not one indicator (of the declared type).
    """
    raw = value.strip()
    if not raw:
        raise ValueError("empty value")
    if declared:
        kind = _KIND_OF.get(declared.strip().lower())
        if kind is None:
            raise ValueError(f"unknown type {declared!r} (known: {', '.join(sorted(_KIND_OF))})")
        return _check_declared(raw, kind)
    for kind in _LEDGERS:
        if _wallet(raw, kind):
            return Detected(kind, raw)
    if _SHAPES["eth_wallet"].fullmatch(raw):
        raise ValueError("an Ethereum address whose mixed case fails its EIP-55 checksum")
    import ioc_fanger

    fanged = ioc_fanger.fang(raw).strip()
    found = _finder(fanged)
    whole = [(kind, v) for kind, key in _FINDER_KEYS for v in found.get(key, ()) if v.lower() == fanged.lower()]
    if whole:
        kind, v = whole[0]
        return Detected(kind, _canonical(kind, fanged, v))
    if _is_file_name(fanged):
        return Detected("file", fanged)
    seen = [f"{kind} {v}" for kind, key in _FINDER_KEYS for v in found.get(key, ())]
    if seen:
        raise ValueError(f"not one indicator: found {', '.join(seen[:3])}")
    raise ValueError("no indicator recognised (domain, IP address, URL, e-mail address, MD5/SHA-1/SHA-256, file name or wallet)")


def _canonical(kind: str, fanged: str, found: str) -> str:
    """Hashes in lower case (STIX hash values are case-insensitive hex), domains as the library normalised them, others as given."""
    return found.lower() if kind in ("md5", "sha1", "sha256", "domain") else fanged


def _check_declared(raw: str, kind: str) -> Detected:
    if kind in _LEDGERS:
        return _check_wallet(raw, kind)
    if kind == "file":
        if any(c in raw for c in "/\\\n\r\x00"):
            raise ValueError("a file name has no path separators")
        return Detected(kind, raw)
    import ioc_fanger

    fanged = ioc_fanger.fang(raw).strip()
    found = _finder(fanged).get(_FINDER_KEY[kind], ())
    match = next((v for v in found if v.lower() == fanged.lower()), None)
    if match is None:
        raise ValueError(f"not a valid {kind}")
    return Detected(kind, _canonical(kind, fanged, match))


def _check_wallet(raw: str, declared: str) -> Detected:
    """A declared wallet: valid on its ledger; else valid on another (noted); else of the ledger's form (imported as published, noted)."""
    if _wallet(raw, declared):
        return Detected(declared, raw)
    said = _LEDGERS[declared][1]
    for kind in _LEDGERS:
        if kind != declared and _wallet(raw, kind):
            return Detected(kind, raw, note=f"Declared a {said} address; it is a valid {_LEDGERS[kind][1]} address.")
    for kind in (declared, *(k for k in _LEDGERS if k != declared)):
        if _SHAPES[kind].fullmatch(raw):
            form = "" if kind == declared else f" (declared {said}; it has the form of a {_LEDGERS[kind][1]} address)"
            return Detected(kind, raw, note=f"The address does not pass the {_LEDGERS[kind][1]} checksum{form}; imported as published.")
    raise ValueError(f"not a {said} address")


def pattern_for(found: Detected) -> str:
    """The STIX 2.1 pattern (s9) of an indicator; string literals escaped per s9.3."""
    escaped = found.value.replace("\\", "\\\\").replace("'", "\\'")
    if found.kind in _LEDGERS:
        return _WALLET_PATTERN.format(ledger=_LEDGERS[found.kind][1], v=escaped)
    return _PATTERNS[found.kind].format(v=escaped)


# --- building the objects ------------------------------------------------------------------------------------


def _stamp(date: str) -> str | None:
    """A STIX timestamp for a (possibly partial: ``2017-12``) publication date, or ``None`` if it is not one."""
    parts = date.strip().split("-")
    if not date.strip() or len(parts) > 3 or not all(p.isdigit() for p in parts):
        return None
    parts = (parts + ["01", "01"])[:3]
    try:
        return datetime(int(parts[0]), int(parts[1]), int(parts[2]), tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    except ValueError:
        return None


@dataclass
class _Context:
    node: str
    creator: str
    marking: str
    source_name: str
    source_url: str | None
    valid_days: int
    now: str
    stored: dict[str, dict]
    about: list[str]
    malware: dict[str, str]
    file_sha256: str = ""


def _versioned(ctx: _Context, obj: dict) -> tuple[dict, str]:
    """``obj`` with ``created``/``modified`` set against the stored version: (object, created|updated|unchanged)."""
    old = ctx.stored.get(obj["id"])
    if old is None:
        obj.setdefault("created", ctx.now)
        obj["modified"] = obj["created"]
        return obj, "created"
    obj["created"] = old["created"]
    obj["modified"] = old["modified"]
    if obj.get("type") == "report":
        obj["published"] = old.get("published", obj["published"])
    if obj == old:
        return old, "unchanged"
    later = max(parse_timestamp(ctx.now), parse_timestamp(old["modified"]) + 1000)
    obj["modified"] = format_timestamp(later)
    return obj, "updated"


def _valid_until(created: str, valid_days: int) -> str:
    return format_timestamp(parse_timestamp(created) + valid_days * 86_400_000_000)


def _indicator(ctx: _Context, row: Row, found: Detected) -> dict:
    f = row.fields
    source = f.get("source_id") or ctx.source_name
    oid = name_based_id("indicator", f"{source}|{found.kind}|{found.value}")
    created = ctx.stored[oid]["created"] if oid in ctx.stored else ctx.now
    valid_from = _stamp(f.get("source_date", "")) or created
    valid_until = _valid_until(created, ctx.valid_days)
    if parse_timestamp(valid_until) <= parse_timestamp(valid_from):
        raise ValueError(f"valid_until ({valid_until}) would not be after valid_from ({valid_from}); give a larger --valid-days")
    label = found.kind.replace("_", " ")
    about = f.get("malware") or f.get("actor")
    title = f.get("source_title") or ctx.source_name
    said = [f"Imported from {title}" + (f" ({f['source_agencies']}, {f['source_date']})" if f.get("source_agencies") else "") + "."]
    if f.get("actor"):
        said.append(f"Actor: {f['actor']}.")
    if f.get("source_ref"):
        said.append(f"Value read from {f['source_ref']}.")
    said += [s for s in (f.get("notes", ""), found.note) if s]
    ref: dict[str, Any] = {"source_name": source, "description": f.get("source_title") or f"the source of import {ctx.source_name}"}
    if ctx.source_url and source == ctx.source_name:
        ref["url"] = ctx.source_url
        ref["hashes"] = {"SHA-256": ctx.file_sha256}
    labels = [found.kind.split("_")[0] if found.kind in _LEDGERS else found.kind]
    if found.kind in _LEDGERS:
        labels = ["cryptocurrency-wallet", _LEDGERS[found.kind][1]]
    return {
        "type": "indicator", "spec_version": "2.1", "id": oid, "created_by_ref": ctx.creator, "created": created,
        "name": f"{about}: {label} {found.value}" if about else f"{label} {found.value}",
        "description": " ".join(said),
        "indicator_types": ["malicious-activity"],
        "pattern": pattern_for(found), "pattern_type": "stix", "pattern_version": "2.1",
        "valid_from": valid_from, "valid_until": valid_until,
        "labels": labels,
        "external_references": [ref],
        "object_marking_refs": [ctx.marking],
    }


def relationship_id(indicator_id: str, target: str) -> str:
    """The deterministic id of the ``indicates`` relationship from an indicator to ``target``."""
    return name_based_id("relationship", f"indicates|{indicator_id}|{target}")


def _relationship(ctx: _Context, indicator: dict, target: str) -> dict:
    rid = relationship_id(indicator["id"], target)
    created = ctx.stored[rid]["created"] if rid in ctx.stored else ctx.now
    return {
        "type": "relationship", "spec_version": "2.1", "id": rid, "created_by_ref": ctx.creator, "created": created,
        "relationship_type": "indicates", "source_ref": indicator["id"], "target_ref": target,
        "description": f"{indicator['name']} indicates {target}.",
        "object_marking_refs": [ctx.marking],
    }


def _report(ctx: _Context, refs: list[str]) -> dict:
    oid = report_id(ctx.node, ctx.source_name)
    created = ctx.stored[oid]["created"] if oid in ctx.stored else ctx.now
    ref: dict[str, Any] = {"source_name": ctx.source_name, "description": "the source of the imported indicators"}
    if ctx.source_url:  # the file was published there: its hash lets a reader check the copy (STIX 2.1 s2.5)
        ref["url"] = ctx.source_url
        ref["hashes"] = {"SHA-256": ctx.file_sha256}
    return {
        "type": "report", "spec_version": "2.1", "id": oid, "created_by_ref": ctx.creator, "created": created,
        "name": f"Indicators imported from {ctx.source_name}",
        "description": f"The indicators of one import of {ctx.source_name}" + (f" ({ctx.source_url})" if ctx.source_url else "")
                       + f" into node {ctx.node}, and what they indicate.",
        "report_types": ["indicator"], "published": created,
        "object_refs": sorted(refs),
        "external_references": [ref],
        "object_marking_refs": [ctx.marking],
    }


# --- the node's side: --about lookups, stored versions, writing ----------------------------------------------


def _candidates(opened: OpenNode) -> Iterable[dict]:
    import orjson

    for coll in opened.node.config.collections:
        if coll.role == "own":
            for row in opened.store.iter_rows(Selection(coll.id, types=ABOUT_TYPES)):
                yield orjson.loads(row.body)


def _names(obj: dict) -> set[str]:
    names = {obj.get("name", "")} | set(obj.get("aliases") or ()) | set(obj.get("x_mitre_aliases") or ())
    names |= {r.get("external_id", "") for r in obj.get("external_references") or () if isinstance(r, dict)}
    return {n.lower() for n in names if isinstance(n, str) and n}


def resolve_about(opened: OpenNode, refs: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The STIX ids of the ``--about`` objects, and the node's malware by lower-case name (for a CSV ``malware`` column).

    A name matches an object's ``name``, ``aliases``/``x_mitre_aliases`` or ATT&CK id (``G0032``); revoked or
    deprecated objects are skipped.  ``NotFound`` (one line) for a name that matches nothing or more than one object.
    """
    live = [o for o in _candidates(opened) if not o.get("revoked") and not o.get("x_mitre_deprecated")]
    by_id = {o["id"]: o for o in live}
    malware = {n: o["id"] for o in live if o.get("type") == "malware" for n in _names(o)}
    found: list[str] = []
    node = opened.node.config.node
    for ref in refs:
        if ref in by_id:
            found.append(ref)
            continue
        hits = sorted({o["id"]: o for o in live if ref.lower() in _names(o)}.values(), key=lambda o: o["id"])
        if len(hits) == 1:
            found.append(hits[0]["id"])
        elif not hits:
            raise NotFound(f"--about {ref!r}: no {', '.join(ABOUT_TYPES[:2])} or other {'/'.join(ABOUT_TYPES[2:])} of that name, alias "
                           f"or id in node {node!r}'s own collection (ATT&CK: cti-exchange load {node} "
                           "collections/attack-dprk/attack-dprk.json first)")
        else:
            raise BadRequest(f"--about {ref!r} names {len(hits)} objects: " + ", ".join(f"{o['type']} {o.get('name')} ({o['id']})" for o in hits[:4])
                             + "; give the id")
    return list(dict.fromkeys(found)), malware


def _node_identity(opened: OpenNode) -> dict:
    cfg = opened.node.config
    stored = opened.store.latest_many([c.id for c in cfg.collections if c.role == "own"], [cfg.identity])
    return stored[0] if stored else own_identity(cfg)


def _marking_objects(marking: str) -> list[dict]:
    return [OFFICIAL_OBJECTS[TLP2_EXTENSION_ID], OFFICIAL_OBJECTS[marking]]


# --- the import ----------------------------------------------------------------------------------------------


@dataclass
class ImportOptions:
    """What ``cti-exchange import`` was asked (see ``import_file``)."""

    tlp: str
    fmt: str = "auto"
    source_name: str | None = None
    source_url: str | None = None
    about: Sequence[str] = ()
    valid_days: int = 365
    columns: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False


def read_rows(path: Path, options: ImportOptions) -> tuple[str, list[Row]]:
    """The file's format and rows; ``BadRequest`` if it cannot be read or parsed (nothing is written then)."""
    if options.fmt not in FORMATS:
        raise BadRequest(f"--format {options.fmt!r}: one of {', '.join(FORMATS)}")
    text = read_text_file(path)
    fmt = guess_format(path, text, options.columns) if options.fmt == "auto" else options.fmt
    if fmt == "stix":
        return fmt, _stix_rows(path, text)
    try:
        return fmt, read_csv_rows(text, options.columns, str(path)) if fmt == "csv" else read_text_rows(text)
    except csv.Error as exc:
        raise BadRequest(f"{path}: not CSV: {exc}; nothing imported") from exc


def _stix_rows(path: Path, text: str) -> list[Row]:
    """``--format stix``: the indicators of a STIX 2.1 bundle (e.g. a partner's e-mail) become rows of their STIX pattern's value.

    Only simple ``[type:property = 'value']`` patterns can be re-made here; others are refused with their line (object index).
    """
    import orjson

    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{path}: not JSON: {exc}; nothing imported") from exc
    objs = data.get("objects") if isinstance(data, dict) else data
    if not isinstance(objs, list):
        raise BadRequest(f"{path}: not a STIX bundle (expected an object with an 'objects' list)")
    rows = []
    simple = re.compile(r"\[\s*[a-z0-9-]+:[a-zA-Z0-9_.'-]+\s*=\s*'((?:[^'\\]|\\.)*)'\s*\]")
    for n, obj in enumerate(objs, start=1):
        if not isinstance(obj, dict) or obj.get("type") != "indicator":
            continue
        m = simple.fullmatch(str(obj.get("pattern", "")).strip())
        value = m.group(1).replace("\\'", "'").replace("\\\\", "\\") if m else str(obj.get("pattern", ""))
        rows.append(Row(line=n, value=value, fields={"source_id": "", "notes": str(obj.get("description", ""))[:500]}))
    return rows


def import_file(opened: OpenNode, path: Path, options: ImportOptions, *, now: str | None = None) -> ImportResult:
    """Import ``path`` into ``opened``'s own collection and release it under policy; see the module docstring."""
    _fmt, rows = read_rows(path, options)
    try:
        marking = TLP2_IDS[parse_level(options.tlp)]
    except ValueError as exc:
        raise BadRequest(f"--tlp {options.tlp!r}: one of {', '.join(TLP_CHOICES)}") from exc
    if options.valid_days < 1:
        raise BadRequest("--valid-days must be at least 1")
    cfg = opened.node.config
    about, malware = resolve_about(opened, options.about)
    stamp = now or format_timestamp(int(datetime.now(UTC).timestamp() * 1_000_000))
    source_name = options.source_name or path.name
    result = ImportResult()
    detected: list[tuple[Row, Detected]] = []
    for row in rows:
        try:
            detected.append((row, detect(row.value, row.fields.get("type") or None)))
        except ValueError as exc:
            result.refused.append(Refused(row.line, row.value, str(exc)))
    own_ids = [c.id for c in cfg.collections if c.role == "own"]
    ctx = _Context(cfg.node, cfg.identity, marking, source_name, options.source_url, options.valid_days, stamp, {}, about, malware,
                   file_sha256=hashlib.sha256(Path(path).read_bytes()).hexdigest())
    # the stored versions of every id this import could make, read once
    probe = [_indicator_id(ctx, row, d) for row, d in detected]
    ctx.stored = {o["id"]: o for o in opened.store.latest_many(own_ids, probe)}
    rel_ids = [relationship_id(i, t) for i in probe for t in _targets(ctx, None)]
    ctx.stored.update({o["id"]: o for o in opened.store.latest_many(own_ids, [*rel_ids, report_id(cfg.node, source_name)])})
    _build(ctx, detected, result, opened, own_ids)
    if not result.indicators:
        return result
    identity = _node_identity(opened)
    result.objects = [identity, *_marking_objects(marking), *result.objects]
    problems = [(o["id"], p) for o in result.objects if (p := check_object(o)) is not None]
    if problems:  # a bug, not bad input: never store what the node itself would refuse
        raise BadRequest(f"{path}: the import made an invalid object ({problems[0][0]}: {problems[0][1]}); nothing imported")
    if not options.dry_run:
        result.loaded = load_and_release(opened, cfg.own_collection.id, result.objects, origin="local:import")
    return result


def _indicator_id(ctx: _Context, row: Row, found: Detected) -> str:
    source = row.fields.get("source_id") or ctx.source_name
    return name_based_id("indicator", f"{source}|{found.kind}|{found.value}")


def report_id(node: str, source_name: str) -> str:
    """The id of the report grouping a node's imports from one source."""
    return name_based_id("report", f"report|{node}|{source_name}")


def _targets(ctx: _Context, row: Row | None) -> list[str]:
    extra = ctx.malware.get((row.fields.get("malware") or "").lower()) if row is not None else None
    return list(dict.fromkeys([*ctx.about, *([extra] if extra else [])]))


def _build(ctx: _Context, detected: list[tuple[Row, Detected]], result: ImportResult, opened: OpenNode, own_ids: list[str]) -> None:
    """Indicators, their ``indicates`` relationships and the import's report, versioned against the store."""
    seen: dict[str, int] = {}
    refs: list[str] = []
    made: list[dict] = []
    extra_rel_ids = []
    for row, found in detected:
        oid = _indicator_id(ctx, row, found)
        if oid in seen:
            result.refused.append(Refused(row.line, row.value, f"the same indicator as line {seen[oid]} (same source, type and value)"))
            continue
        try:
            ind = _indicator(ctx, row, found)
        except ValueError as exc:
            result.refused.append(Refused(row.line, row.value, str(exc)))
            continue
        seen[oid] = row.line
        ind, state = _versioned(ctx, ind)
        setattr(result, state, getattr(result, state) + 1)
        result.indicators += 1
        made.append(ind)
        refs.append(ind["id"])
        for target in _targets(ctx, row):
            rel = _relationship(ctx, ind, target)
            if rel["id"] not in ctx.stored:
                extra_rel_ids.append(rel["id"])
            made.append(rel)
    if extra_rel_ids:  # relationships to a CSV row's malware: their stored versions, if any
        ctx.stored.update({o["id"]: o for o in opened.store.latest_many(own_ids, extra_rel_ids)})
    out = []
    for obj in made:
        if obj["type"] == "relationship":
            obj, _state = _versioned(ctx, obj)
            refs.append(obj["id"])
        out.append(obj)
    if result.indicators:
        report, _state = _versioned(ctx, _report(ctx, refs))
        out.append(report)
    result.objects = out
    result.refused.sort(key=lambda r: r.line)
