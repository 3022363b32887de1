"""STIX 2.1 helpers: timestamps, versions and the ingest check (pure).

``check_object`` enforces what STIX 2.1 requires of every object (s3.2 common
properties, s2.9 identifiers, s3.2 timestamps, ``spec_version``) and the
required properties of each STIX 2.1 type (s4-s6), at tens of thousands of
objects per second.  ``check_object_strict`` additionally runs the full
``stix2`` parser (pattern grammar included), about 2,600 objects/s here.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

from exchange.errors import BadRequest

SPEC_VERSION = "2.1"
MEDIA_TYPE_STIX = "application/stix+json;version=2.1"

# RFC 3339 digits are ASCII: ``[0-9]``, never ``\d`` (which, like ``int()``, takes any Unicode digit); matched whole
_TS_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?Z", re.ASCII)
_TS_ANY_DIGITS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z")  # only to word the refusal
_TYPE_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*\Z")  # \Z: no trailing newline ($ allows one)
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_ID_RE = re.compile(r"^([a-z][a-z0-9-]{1,248}[a-z0-9])--(" + _UUID + r")\Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_TS_MEMO: dict[str, int] = {}  # objects repeat their timestamps (created = modified = valid_from ...)
_TS_MEMO_MAX = 4096

SCO_TYPES = frozenset(
    {
        "artifact", "autonomous-system", "directory", "domain-name", "email-addr", "email-message",
        "file", "ipv4-addr", "ipv6-addr", "mac-addr", "mutex", "network-traffic", "process",
        "software", "url", "user-account", "windows-registry-key", "x509-certificate",
    }
)

# Required properties per type beyond the common ones (STIX 2.1 s4, s5, s6).
REQUIRED: dict[str, tuple[str, ...]] = {
    "attack-pattern": ("name",), "campaign": ("name",), "course-of-action": ("name",),
    "grouping": ("context", "object_refs"), "identity": ("name",), "incident": ("name",),
    "indicator": ("pattern", "pattern_type", "valid_from"), "infrastructure": ("name",),
    "intrusion-set": ("name",), "malware": ("is_family",), "malware-analysis": ("product",),
    "note": ("content", "object_refs"),
    "observed-data": ("first_observed", "last_observed", "number_observed"),
    "opinion": ("opinion", "object_refs"), "report": ("name", "published", "object_refs"),
    "threat-actor": ("name",), "tool": ("name",), "vulnerability": ("name",),
    "relationship": ("relationship_type", "source_ref", "target_ref"),
    "sighting": ("sighting_of_ref",), "language-content": ("object_ref", "contents"),
    "extension-definition": ("name", "schema", "version", "extension_types"),
    "domain-name": ("value",), "ipv4-addr": ("value",), "ipv6-addr": ("value",), "url": ("value",),
    "email-addr": ("value",), "mac-addr": ("value",), "mutex": ("name",), "autonomous-system": ("number",),
    "directory": ("path",), "software": ("name",), "network-traffic": ("protocols",),
    "email-message": ("is_multipart",),
}
TIMESTAMP_PROPS = (
    "created", "modified", "valid_from", "valid_until", "first_seen", "last_seen", "first_observed",
    "last_observed", "published", "start_time", "stop_time",
)
OPINIONS = frozenset({"strongly-disagree", "disagree", "neutral", "agree", "strongly-agree"})


def parse_timestamp(value: Any) -> int:
    """A STIX/TAXII timestamp (RFC 3339, UTC, ``Z``) as integer microseconds since the epoch.

    Raises ``ValueError`` on anything else: other Unicode digits than ASCII ``0-9``
    (full-width, Arabic-Indic, ...) and anything before or after the timestamp
    (a trailing newline included).  Sub-microsecond digits are truncated.
    """
    if not isinstance(value, str):
        raise ValueError(f"timestamp must be a string, not {type(value).__name__}")
    known = _TS_MEMO.get(value)
    if known is not None:
        return known
    m = _TS_RE.fullmatch(value)
    if m is None:
        if not value.isascii() and _TS_ANY_DIGITS_RE.fullmatch(value):
            raise ValueError("timestamp must use ASCII digits (RFC 3339)")
        raise ValueError(f"{value[:64]!r} is not a STIX timestamp (YYYY-MM-DDTHH:MM:SS[.s]Z)")
    year, month, day, hour, minute, second, frac = m.groups()
    h, mi, s = int(hour), int(minute), int(second)
    try:
        days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
        if h > 23 or mi > 59 or s > 59:
            raise ValueError("hour, minute or second out of range")
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid date/time: {exc}") from None
    micros = int(frac[:6].ljust(6, "0")) if frac else 0
    result = (((days * 24 + h) * 60 + mi) * 60 + s) * 1_000_000 + micros
    if len(_TS_MEMO) >= _TS_MEMO_MAX:
        _TS_MEMO.clear()
    _TS_MEMO[value] = result
    return result


def format_timestamp(micros: int) -> str:
    """Integer microseconds since the epoch as a TAXII timestamp with microsecond precision."""
    seconds, frac = divmod(micros, 1_000_000)
    dt = datetime.fromtimestamp(seconds, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:06d}Z"


def object_version(obj: dict) -> str | None:
    """The version of an object: ``modified``, else ``created``, else ``None`` (TAXII 2.1 s3.4.3)."""
    return obj.get("modified") or obj.get("created")


def check_object(obj: Any) -> str | None:
    """``None`` if ``obj`` is an acceptable STIX 2.1 object, else what is wrong (one line)."""
    if not isinstance(obj, dict):
        return f"not a STIX object (a JSON object is required, got {type(obj).__name__})"
    stype = obj.get("type")
    if not isinstance(stype, str) or not (3 <= len(stype) <= 250) or not _TYPE_RE.match(stype):
        return "'type' is missing or not a valid STIX type name (s3.1)"
    return (
        _check_id(obj, stype)
        or _check_versioning(obj, stype)
        or _check_timestamps(obj)
        or _check_type_properties(obj, stype)
        or _check_common(obj)
    )


def _check_id(obj: dict, stype: str) -> str | None:
    """``id`` is ``<type>--<UUID>`` for the object's own type (STIX 2.1 s2.9)."""
    sid = obj.get("id")
    if not isinstance(sid, str):
        return "'id' is missing or not a string (s2.9)"
    m = _ID_RE.match(sid)
    if m is None or m.group(1) != stype:
        return f"'id' {sid[:200]!r} is not of the form '{stype}--<UUID>' (s2.9)"
    return None


def _check_versioning(obj: dict, stype: str) -> str | None:
    """``spec_version`` is 2.1 (optional for SCOs); SDOs/SROs have ``created`` and ``modified`` (STIX 2.1 s3.2)."""
    spec = obj.get("spec_version")
    is_sco = stype in SCO_TYPES
    if spec is None:
        if not is_sco:
            return "'spec_version' is required and must be '2.1' (s3.2)"
    elif spec != SPEC_VERSION:
        return f"'spec_version' {spec!r} is not supported: only STIX 2.1 objects are accepted"
    if not is_sco:
        if "created" not in obj:
            return "'created' is required (s3.2)"
        if stype != "marking-definition" and "modified" not in obj:
            return "'modified' is required (s3.2)"
    return None


def _check_timestamps(obj: dict) -> str | None:
    """Every timestamp property parses, and ``modified`` is not before ``created`` (STIX 2.1 s3.2)."""
    stamps: dict[str, int] = {}
    for prop in TIMESTAMP_PROPS:
        if prop in obj:
            try:
                stamps[prop] = parse_timestamp(obj[prop])
            except ValueError as exc:
                return f"'{prop}': {exc}"
    if "created" in stamps and "modified" in stamps and stamps["modified"] < stamps["created"]:
        return "'modified' must not be earlier than 'created' (s3.2)"
    return None


def _check_type_properties(obj: dict, stype: str) -> str | None:
    """The required properties of the object's type (STIX 2.1 s4-s7) and the opinion vocabulary."""
    for prop in REQUIRED.get(stype, ()):
        if prop not in obj:
            return f"'{prop}' is required for type '{stype}'"
    if stype == "marking-definition" and not (("definition_type" in obj and "definition" in obj) or "extensions" in obj):
        return "a marking-definition needs 'definition_type' and 'definition', or 'extensions' (s7.2.1)"
    if stype == "opinion" and obj.get("opinion") not in OPINIONS:
        return f"'opinion' must be one of {sorted(OPINIONS)}"
    return None


def _check_common(obj: dict) -> str | None:
    """The optional common properties, where present: references, markings, confidence, labels, external references."""
    problem = _check_refs(obj) or _check_markings(obj)
    if problem is not None:
        return problem
    confidence = obj.get("confidence")
    if confidence is not None and (not isinstance(confidence, int) or isinstance(confidence, bool) or not 0 <= confidence <= 100):
        return "'confidence' must be an integer from 0 to 100 (s3.2)"
    for key in ("labels",):
        value = obj.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            return f"'{key}' must be a list of strings"
    ext = obj.get("external_references")
    if ext is not None and (not isinstance(ext, list) or not all(isinstance(e, dict) and isinstance(e.get("source_name"), str) for e in ext)):
        return "'external_references' must be a list of objects with 'source_name' (s2.5)"
    return None


#: ``property_kind`` of the property names seen so far (names repeat object after object)
PROPERTY_KINDS: dict[str, int] = {}
REF, REFS, HOLDS_REFS = 1, 2, 3
_GOOD_REFS: set[str] = set()  # identifiers that matched ``_ID_RE`` (markings and creators repeat in every object)
_MEMO_MAX = 4096


def property_kind(key: str) -> int:
    """How a top-level property holds references (STIX 2.1 s2.9, s7.2.3, s7.3): ``REF`` a ``*_ref`` identifier, ``REFS``
    a ``*_refs`` list of them, ``HOLDS_REFS`` ``granular_markings`` or ``extensions`` (references inside), 0 none.
    Remembered in ``PROPERTY_KINDS`` (bounded)."""
    kind = PROPERTY_KINDS.get(key)
    if kind is None:
        kind = (REF if key.endswith("_ref") else REFS if key.endswith("_refs")
                else HOLDS_REFS if key in ("granular_markings", "extensions") else 0)
        if len(PROPERTY_KINDS) < _MEMO_MAX:
            PROPERTY_KINDS[key] = kind
    return kind


_SHAPES: dict[tuple[str, ...], tuple[tuple[str, int], ...]] = {}
_SHAPE_MAX_NAMES = 64  # an object with more property names is looked at afresh (the memo stays small whatever arrives)


def ref_properties(obj: dict) -> tuple[tuple[str, int], ...]:
    """``(name, property_kind)`` of ``obj``'s top-level properties that hold references, in ``obj``'s order.

    Remembered per set of property names in their order (bounded): objects of one kind
    from one producer repeat it, so a batch looks at each of its names once, not at
    every name of every object.
    """
    shape = tuple(obj)
    found = _SHAPES.get(shape)
    if found is None:
        found = tuple((key, kind) for key in shape if (kind := property_kind(key)))
        if len(shape) <= _SHAPE_MAX_NAMES and len(_SHAPES) < _MEMO_MAX:
            _SHAPES[shape] = found
    return found


def _is_ref(value: Any) -> bool:
    """``value`` is a string matching ``_ID_RE`` (the answer for a string seen before is remembered)."""
    if not isinstance(value, str):
        return False
    if value in _GOOD_REFS:
        return True
    if _ID_RE.match(value) is None:
        return False
    if len(_GOOD_REFS) >= _MEMO_MAX:
        _GOOD_REFS.clear()
    _GOOD_REFS.add(value)
    return True


def _check_refs(obj: dict) -> str | None:
    """Every ``*_ref`` property is an identifier and every ``*_refs`` a list of them (STIX 2.1 s2.9)."""
    for key, kind in ref_properties(obj):
        value = obj[key]
        if kind == REF:
            if not _is_ref(value):
                return f"'{key}' must be a STIX identifier (s2.9)"
        elif kind == REFS and (not isinstance(value, list) or not all(_is_ref(v) for v in value)):
            return f"'{key}' must be a list of STIX identifiers (s2.9)"
    return None


def _check_markings(obj: dict) -> str | None:
    """Object markings reference marking definitions (STIX 2.1 s7.2.2); granular markings are well formed (s7.2.3)."""
    refs = obj.get("object_marking_refs")
    if refs is not None and not all(r.startswith("marking-definition--") for r in refs):
        return "'object_marking_refs' must reference marking-definition objects (s7.2.2)"
    granular = obj.get("granular_markings")
    if granular is None:
        return None
    if not isinstance(granular, list):
        return "'granular_markings' must be a list (s7.2.3)"
    for gm in granular:
        if not isinstance(gm, dict) or not isinstance(gm.get("selectors"), list) or not gm["selectors"]:
            return "each granular marking needs a non-empty 'selectors' list (s7.2.3)"
        ref = gm.get("marking_ref")
        if ref is None and "lang" not in gm:
            return "each granular marking needs 'marking_ref' or 'lang' (s7.2.3)"
        if ref is not None and (not isinstance(ref, str) or not ref.startswith("marking-definition--")):
            return "'marking_ref' must reference a marking-definition (s7.2.3)"
    return None


def is_identifier(value: Any) -> bool:
    """True if ``value`` is a STIX identifier (``type--UUID``, s2.9)."""
    return isinstance(value, str) and len(value) <= 300 and _ID_RE.match(value) is not None


def is_type_name(value: Any) -> bool:
    """True if ``value`` is a valid STIX type name (s3.1)."""
    return isinstance(value, str) and 3 <= len(value) <= 250 and _TYPE_RE.match(value) is not None


def deeper_than(value: Any, limit: int) -> bool:
    """True if JSON ``value`` nests objects/arrays more than ``limit`` levels (a scalar is level 0).

    Iterative, and it visits containers only, so its cost is a fraction of a
    parse and a hostile value cannot exhaust the stack.
    """
    if not isinstance(value, (dict, list)):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def check_object_strict(obj: Any) -> str | None:
    """``check_object`` plus a full ``stix2`` parse (pattern grammar, vocabularies)."""
    problem = check_object(obj)
    if problem is not None:
        return problem
    import stix2
    import stix2.exceptions

    try:
        stix2.parse(obj, allow_custom=True, version="2.1")
    except (stix2.exceptions.STIXError, ValueError, TypeError) as exc:
        return f"stix2: {str(exc).splitlines()[0][:300]}"
    return None


def read_bundle(path: Path) -> list[dict]:
    """The objects of a STIX bundle, a TAXII envelope or a JSON list; ``BadRequest`` otherwise."""
    try:
        data = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise BadRequest(f"{path}: cannot read: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{path}: not JSON: {exc}") from exc
    objects = data.get("objects") if isinstance(data, dict) else data
    if not isinstance(objects, list):
        raise BadRequest(f"{path}: not a STIX bundle (expected an object with an 'objects' list)")
    return objects
