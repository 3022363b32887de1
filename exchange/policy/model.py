"""The policy schema (pydantic, ``extra="forbid"``) and the loader.

A policy is a directory of YAML files (``policies/``): ``parties.yaml`` names the
parties (name -> STIX ``identity`` id) and the communities they form; each other
file holds the clauses of one framework.  Every clause has an ``id``, a plain
``statement``, a ``source`` (the framework and the sentence of the source text it
operationalises, quoted verbatim and checked against ``framework.source_document``),
``conservative: true`` plus a ``conservative_note`` where the text is silent, and a
``rule`` whose ``kind`` the engine knows.  Any error (unknown key, bad marking
name, a clause without a source, a misquoted sentence, an unknown party) is a
``ConfigError`` naming the file and line.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from exchange._yaml import LinePath, line_of, load_with_lines, validation_error
from exchange.errors import ConfigError
from exchange.policy import markings as mk

__all__ = ["Policy", "Clause", "Party", "Community", "load_policy", "default_policy_dir", "POLICY_ENV"]

POLICY_ENV = "CTI_EXCHANGE_POLICIES"
PARTIES_FILE = "parties.yaml"

Level = Literal["clear", "green", "amber", "amber+strict", "red"]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$", max_length=40)]
IdentityId = Annotated[str, Field(pattern=r"^identity--[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
MarkingId = Annotated[
    str, Field(pattern=r"^marking-definition--[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
]
ClauseId = Annotated[str, Field(pattern=r"^[a-z][a-z0-9]*(\.[a-z0-9][a-z0-9-]*)+$", max_length=80)]
NonEmpty = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- parties


class Party(_Strict):
    """A party of the exchange: a node, a consumer, a joint cell, or ``public``."""

    name: NonEmpty
    identity: IdentityId | None = None
    members: tuple[Name, ...] = ()  # a joint body: its objects are its members' own objects
    public: bool = False  # release to this party is publication
    description: str = ""


class Community(_Strict):
    name: NonEmpty
    members: tuple[Name, ...] = Field(min_length=1)
    description: str = ""


# ---------------------------------------------------------------- rules


class _Rule(_Strict):
    pass


class UnmarkedDefault(_Rule):
    kind: Literal["unmarked-default"]
    decision: Literal["withhold", "share"]


class UnknownMarkingDefault(_Rule):
    kind: Literal["unknown-marking-default"]
    decision: Literal["withhold"]


class NoReleaseDefault(_Rule):
    kind: Literal["no-release-default"]
    decision: Literal["withhold"]


class PublicSourceEntry(_Strict):
    name: NonEmpty
    identities: tuple[IdentityId, ...] = ()
    statement_markings: tuple[MarkingId, ...] = ()

    @model_validator(mode="after")
    def _one(self) -> PublicSourceEntry:
        if not self.identities and not self.statement_markings:
            raise ValueError("a public source needs identities or statement_markings")
        return self


class PublicSource(_Rule):
    kind: Literal["public-source"]
    level: Level = "clear"
    sources: tuple[PublicSourceEntry, ...] = Field(min_length=1)


class OfficialMarkings(_Rule):
    kind: Literal["official-markings"]


class PartyIdentities(_Rule):
    kind: Literal["party-identities"]


class NeverAutomated(_Rule):
    kind: Literal["never-automated"]
    levels: tuple[Level, ...] = Field(min_length=1)


class ReleaseAny(_Rule):
    kind: Literal["release-any"]
    levels: tuple[Level, ...] = Field(min_length=1)


class OwnRelease(_Rule):
    kind: Literal["own-release"]
    levels: tuple[Level, ...] = Field(min_length=1)
    community: Name
    recipients: tuple[Name, ...] = ()  # if given, only these members of the community


class OwnWithhold(_Rule):
    kind: Literal["own-withhold"]
    levels: tuple[Level, ...] = Field(min_length=1)
    recipients: tuple[Name, ...] = Field(min_length=1)


class OnwardCommunity(_Rule):
    kind: Literal["onward-community"]
    levels: tuple[Level, ...] = Field(min_length=1)
    communities: tuple[Name, ...] = Field(min_length=1)


class OnwardClients(_Rule):
    kind: Literal["onward-clients"]
    levels: tuple[Level, ...] = Field(min_length=1)
    clients: dict[Name, tuple[Name, ...]]


class Ransomware(_Rule):
    kind: Literal["ransomware-onward"]
    levels: tuple[Level, ...] = Field(min_length=1)
    community: Name
    types: tuple[NonEmpty, ...] = ("indicator",)
    labels: tuple[NonEmpty, ...] = ("ransomware",)
    pattern_markers: tuple[NonEmpty, ...] = Field(min_length=1)


class CriticalInfrastructure(_Rule):
    kind: Literal["critical-infrastructure"]
    labels: tuple[NonEmpty, ...] = Field(min_length=1)
    types: tuple[NonEmpty, ...] = Field(min_length=1)
    community: Name
    unmarked_as: Level


class AttributionRelationship(_Rule):
    kind: Literal["attribution-relationship"]
    relationship_types: tuple[NonEmpty, ...] = ("attributed-to",)
    inside: Name  # community that may receive attribution before joint concurrence
    allow_creators: tuple[Name, ...] = ()  # creators whose attributions go out unconditionally
    accept_recorded_concurrence: bool = False  # ids in evaluate(..., concurred=) may go out
    concurrence_creators: tuple[Name, ...] = ()  # ... if created by one of these (empty: any creator)


class AttributionProduct(_Rule):
    kind: Literal["attribution-product"]
    types: tuple[NonEmpty, ...] = ("report", "note", "opinion", "grouping")
    report_types: tuple[NonEmpty, ...] = ("attribution",)
    labels: tuple[NonEmpty, ...] = ("attribution",)
    relationship_types: tuple[NonEmpty, ...] = ("attributed-to",)
    inside: Name
    allow_creators: tuple[Name, ...] = ()
    accept_recorded_concurrence: bool = False
    concurrence_creators: tuple[Name, ...] = ()


class JointRevocation(_Rule):
    """SCCF: a released joint product is withdrawn (a ``revoked`` version) when concurrence ends."""

    kind: Literal["joint-revocation"]
    creators: tuple[Name, ...] = ("joint",)  # whose products the rule concerns (the joint cell)
    dissent_by: tuple[Name, ...] = ()  # parties whose dissent after concurrence revokes (empty: every member)
    revision_by: tuple[Literal["proposer", "any-member"], ...] = ("proposer",)  # who may revise (and so revoke)
    # properties a withdrawal may carry besides the spec-required ones of its type (STIX 2.1 s3.6)
    keep: tuple[NonEmpty, ...] = ("created_by_ref", "object_marking_refs", "revoked")


class UndisclosedVulnerability(_Rule):
    kind: Literal["undisclosed-vulnerability"]
    inside: Name
    public_sources: tuple[NonEmpty, ...] = ("cve",)


class SightingToProducer(_Rule):
    kind: Literal["sighting-to-producer"]
    levels: tuple[Level, ...] = Field(min_length=1)  # a sighting marked at one of these goes only to the producer
    types: tuple[NonEmpty, ...] = ("sighting",)


class FieldRedact(_Rule):
    kind: Literal["field-redact"]
    inside: Name  # recipients in this community (with the sender) get the fields
    fields: dict[NonEmpty, tuple[NonEmpty, ...]] = Field(min_length=1)  # STIX type -> top-level properties


class IepProviderAttribution(_Rule):
    kind: Literal["iep-provider-attribution"]
    remove: tuple[NonEmpty, ...] = ("created_by_ref",)
    remove_custom_by_refs: bool = True


class IepPermittedActions(_Rule):
    kind: Literal["iep-permitted-actions"]
    withhold_onward: tuple[
        Literal[
            "none", "contact-for-instruction", "internally-visible-actions",
            "externally-visible-indirect-actions", "externally-visible-direct-actions",
        ],
        ...,
    ] = Field(min_length=1)


class IepAffectedParty(_Rule):
    kind: Literal["iep-affected-party"]
    inside: Name


class IepResale(_Rule):
    kind: Literal["iep-unmodified-resale"]


class IepEncrypt(_Rule):
    kind: Literal["iep-encrypt-in-transit"]


class IepEncryptedTransport(_Rule):
    """IEP ``encrypt_in_transit: must``: never over an unencrypted channel (plain HTTP), whoever the recipient."""

    kind: Literal["iep-encrypted-transport"]


class IepValidity(_Rule):
    kind: Literal["iep-validity"]


class GranularRedact(_Rule):
    kind: Literal["granular-redact"]


class RequiredRefs(_Rule):
    kind: Literal["integrity-required-refs"]
    required: dict[NonEmpty, tuple[NonEmpty, ...]] = Field(min_length=1)  # type -> reference properties


class OptionalRefs(_Rule):
    kind: Literal["integrity-optional-refs"]


class ContainerRefs(_Rule):
    kind: Literal["integrity-containers"]
    types: tuple[NonEmpty, ...] = Field(min_length=1)
    mode: Literal["drop", "withhold"]


class Companions(_Rule):
    kind: Literal["companions"]


class Inbound(_Rule):
    """What a node accepts from a partner (``exchange.policy.inbound``; the rule id is the clause id)."""

    kind: Literal["inbound"]
    check: Literal[
        "identity-not-partner", "official-definition", "creator-is-partner", "tlp-required", "signature-invalid", "signature-required",
    ]


Rule = Annotated[
    UnmarkedDefault | UnknownMarkingDefault | NoReleaseDefault | PublicSource | OfficialMarkings | PartyIdentities
    | NeverAutomated | ReleaseAny | OwnRelease | OwnWithhold | OnwardCommunity | OnwardClients | Ransomware
    | CriticalInfrastructure | AttributionRelationship | AttributionProduct | JointRevocation | UndisclosedVulnerability | FieldRedact
    | SightingToProducer
    | IepProviderAttribution | IepPermittedActions | IepAffectedParty | IepResale | IepEncrypt | IepEncryptedTransport
    | IepValidity | GranularRedact | RequiredRefs | OptionalRefs | ContainerRefs | Companions | Inbound,
    Field(discriminator="kind"),
]

SINGLE_KINDS = (
    "unmarked-default", "unknown-marking-default", "no-release-default", "public-source", "official-markings",
    "party-identities", "never-automated", "granular-redact", "integrity-required-refs", "integrity-optional-refs",
    "integrity-containers", "companions", "iep-provider-attribution", "iep-permitted-actions", "iep-affected-party",
    "iep-unmodified-resale", "iep-encrypt-in-transit", "iep-encrypted-transport", "iep-validity", "undisclosed-vulnerability",
    "attribution-relationship", "attribution-product", "critical-infrastructure", "sighting-to-producer",
)
REQUIRED_KINDS = ("unmarked-default", "unknown-marking-default", "no-release-default")


class Source(_Strict):
    framework: NonEmpty
    quote: NonEmpty


class Clause(_Strict):
    id: ClauseId
    statement: NonEmpty
    source: Source
    conservative: bool = False
    conservative_note: str = ""
    rule: Rule

    @model_validator(mode="after")
    def _note(self) -> Clause:
        if self.conservative and not self.conservative_note.strip():
            raise ValueError("conservative: true needs a conservative_note saying what the text is silent on")
        if self.conservative_note and not self.conservative:
            raise ValueError("conservative_note is only for conservative: true clauses")
        return self


class Framework(_Strict):
    id: Name
    name: NonEmpty
    source_document: NonEmpty


class PolicyFile(_Strict):
    """One YAML file: a framework with its clauses, and/or the party definitions."""

    framework: Framework | None = None
    parties: dict[Name, Party] = {}
    communities: dict[Name, Community] = {}
    clauses: tuple[Clause, ...] = ()

    @model_validator(mode="after")
    def _shape(self) -> PolicyFile:
        if self.clauses and self.framework is None:
            raise ValueError("a file with clauses needs a 'framework' block")
        return self


# ---------------------------------------------------------------- the loaded policy


@dataclass(frozen=True, eq=False)
class Policy:
    """A loaded, checked policy: parties, communities, clauses (in evaluation order)."""

    parties: dict[str, Party]
    communities: dict[str, Community]
    clauses: tuple[Clause, ...]
    frameworks: dict[str, Framework]
    files: tuple[Path, ...]
    clause_files: dict[str, tuple[Path, int]] = field(default_factory=dict)  # clause id -> (file, line)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def clause(self, clause_id: str) -> Clause:
        for c in self.clauses:
            if c.id == clause_id:
                return c
        raise KeyError(clause_id)

    def clauses_of(self, kind: str) -> tuple[Clause, ...]:
        return tuple(c for c in self.clauses if c.rule.kind == kind)

    def one(self, kind: str) -> Clause | None:
        found = self.clauses_of(kind)
        return found[0] if found else None

    def identity_of(self, party: str) -> str | None:
        return self.parties[party].identity

    @property
    def clause_ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.clauses)


def default_policy_dir() -> Path:
    """``$CTI_EXCHANGE_POLICIES`` if set, else the repository's ``policies/``."""
    env = os.environ.get(POLICY_ENV)
    if env:
        return Path(env)
    import exchange

    return Path(exchange.__file__).resolve().parent.parent / "policies"


def load_policy(path: str | os.PathLike[str] | None = None) -> Policy:
    """Load a policy from a YAML file or a directory of them (default: ``default_policy_dir()``).

    A single framework file without parties is combined with the ``parties.yaml``
    beside it.  Raises ``ConfigError`` (file:line: key: message) on any bad file.
    """
    root = Path(path) if path is not None else default_policy_dir()
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise ConfigError(f"{root}: no policy files (*.yaml)")
    elif root.is_file():
        files = [root]
        beside = root.parent / PARTIES_FILE
        if root.name != PARTIES_FILE and beside.is_file():
            files.insert(0, beside)
    else:
        raise ConfigError(f"{root}: no such policy file or directory")
    return _build([(p, *_load_file(p)) for p in files])


def _load_file(path: Path) -> tuple[PolicyFile, dict[LinePath, int]]:
    data, lines = load_with_lines(path)
    if data is None:
        raise ConfigError(f"{path}: empty policy file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: (top level): a policy file must be a mapping")
    try:
        model = PolicyFile.model_validate(data)
    except ValidationError as exc:
        raise validation_error(path, lines, exc) from exc
    return model, lines


def _err(path: Path, lines: dict[LinePath, int], loc: LinePath, message: str) -> ConfigError:
    line = line_of(lines, loc)
    where = f"{path}:{line}" if line else str(path)
    key = ".".join(str(p) for p in loc) or "(top level)"
    return ConfigError(f"{where}: {key}: {message}")


_Loaded = list[tuple[Path, PolicyFile, dict[LinePath, int]]]


@dataclass(eq=False)
class _Parts:
    """What the policy files define, merged in file order; ``where``: clause id -> (file, its lines, index in the file)."""

    parties: dict[str, Party] = field(default_factory=dict)
    communities: dict[str, Community] = field(default_factory=dict)
    frameworks: dict[str, Framework] = field(default_factory=dict)
    clauses: list[Clause] = field(default_factory=list)
    where: dict[str, tuple[Path, dict[LinePath, int], int]] = field(default_factory=dict)


def _build(loaded: _Loaded) -> Policy:
    parts = _Parts()
    for path, model, lines in loaded:
        _add_file(parts, path, model, lines)
    # cross-references
    _check_members(loaded, "parties", parts.parties, parts.parties)
    _check_members(loaded, "communities", parts.communities, parts.parties)
    _check_clause_names(parts)
    _check_kinds(loaded, parts)
    if not parts.parties:
        raise ConfigError(f"{', '.join(str(p) for p, _, _ in loaded)}: no parties defined ({PARTIES_FILE})")
    return Policy(
        parties=parts.parties,
        communities=parts.communities,
        clauses=tuple(parts.clauses),
        frameworks=parts.frameworks,
        files=tuple(p for p, _, _ in loaded),
        clause_files={cid: (p, line_of(lines, ("clauses", i)) or 0) for cid, (p, lines, i) in parts.where.items()},
    )


def _add_file(parts: _Parts, path: Path, model: PolicyFile, lines: dict[LinePath, int]) -> None:
    """Merge one file: its parties, communities, framework and clauses (each defined once across the files)."""
    for name, party in model.parties.items():
        if name in parts.parties:
            raise _err(path, lines, ("parties", name), "party defined twice")
        parts.parties[name] = party
    for name, community in model.communities.items():
        if name in parts.communities:
            raise _err(path, lines, ("communities", name), "community defined twice")
        parts.communities[name] = community
    # a file with clauses has a framework (PolicyFile._shape)
    text = _add_framework(parts, path, model.framework, lines) if model.framework is not None else ""
    _add_clauses(parts, path, model, lines, text)


def _add_framework(parts: _Parts, path: Path, fw: Framework, lines: dict[LinePath, int]) -> str:
    """Register the file's framework; the text of its source document (beside the file)."""
    if fw.id in parts.frameworks:
        raise _err(path, lines, ("framework", "id"), f"framework {fw.id!r} defined twice")
    parts.frameworks[fw.id] = fw
    doc = path.parent / fw.source_document
    try:
        return doc.read_text(encoding="utf-8")
    except OSError:
        raise _err(path, lines, ("framework", "source_document"), f"cannot read source document {doc}") from None


def _add_clauses(parts: _Parts, path: Path, model: PolicyFile, lines: dict[LinePath, int], text: str) -> None:
    """Add the file's clauses: unique ids prefixed by the framework id, each quoting its source document verbatim."""
    fw = model.framework
    for i, clause in enumerate(model.clauses):
        if clause.id in parts.where:
            raise _err(path, lines, ("clauses", i, "id"), f"clause id {clause.id!r} is already used")
        if fw is not None and not clause.id.startswith(fw.id + "."):
            raise _err(path, lines, ("clauses", i, "id"), f"clause ids in this file start with '{fw.id}.'")
        if clause.source.quote not in text:
            raise _err(
                path, lines, ("clauses", i, "source", "quote"),
                f"not found verbatim in {fw.source_document if fw else '?'}",
            )
        parts.where[clause.id] = (path, lines, i)
        parts.clauses.append(clause)


def _check_members(loaded: _Loaded, section: str, defined: dict[str, Party] | dict[str, Community],
                   parties: dict[str, Party]) -> None:
    """Every member of a joint party or a community is a party."""
    for name, group in defined.items():
        for member in group.members:
            if member not in parties:
                path, lines = _file_of(loaded, section, name)
                raise _err(path, lines, (section, name, "members"), f"unknown party {member!r}")


def _check_clause_names(parts: _Parts) -> None:
    """The parties and communities a clause's rule names exist."""
    for clause in parts.clauses:
        path, lines, i = parts.where[clause.id]
        _check_names(clause, parts.parties, parts.communities, _rule_err(path, lines, i))


def _rule_err(path: Path, lines: dict[LinePath, int], i: int) -> Callable[[str, str], ConfigError]:
    """``err(key, message)``: a ``ConfigError`` at ``rule.<key>`` of clause ``i`` of ``path``."""

    def err(key: str, message: str) -> ConfigError:
        return _err(path, lines, ("clauses", i, "rule", key), message)

    return err


def _check_kinds(loaded: _Loaded, parts: _Parts) -> None:
    """At most one clause of each single kind, and the defaults stated explicitly."""
    kinds = [c.rule.kind for c in parts.clauses]
    for kind in SINGLE_KINDS:
        if kinds.count(kind) > 1:
            dup = [c for c in parts.clauses if c.rule.kind == kind][1]
            path, lines, i = parts.where[dup.id]
            raise _err(path, lines, ("clauses", i, "rule", "kind"), f"only one clause of kind {kind!r} is allowed")
    for kind in REQUIRED_KINDS:
        if kind not in kinds:
            names = ", ".join(str(p) for p, _, _ in loaded)
            raise ConfigError(f"{names}: no clause of kind {kind!r}: a policy must state its default explicitly")


def _file_of(loaded: _Loaded, section: str, name: str) -> tuple[Path, dict[LinePath, int]]:
    for path, model, lines in loaded:
        if name in getattr(model, section):
            return path, lines
    raise AssertionError(name)  # pragma: no cover


def _check_names(clause: Clause, parties: dict[str, Party], communities: dict[str, Community], err: Any) -> None:
    rule = clause.rule
    for key in ("community", "inside"):
        value = getattr(rule, key, None)
        if value is not None and value not in communities:
            raise err(key, f"unknown community {value!r}")
    for value in getattr(rule, "communities", ()) or ():
        if value not in communities:
            raise err("communities", f"unknown community {value!r}")
    for key in ("recipients", "allow_creators", "concurrence_creators"):
        for value in getattr(rule, key, ()) or ():
            if value not in parties:
                raise err(key, f"unknown party {value!r}")
    clients = getattr(rule, "clients", None)
    if clients:
        for holder, names in clients.items():
            for value in (holder, *names):
                if value not in parties:
                    raise err("clients", f"unknown party {value!r}")
    for lvl in getattr(rule, "levels", ()) or ():
        mk.parse_level(lvl)  # Literal already checked; keeps the table and the schema in step


@functools.lru_cache(maxsize=8)
def _cached_policy(path: str, mtime: float) -> Policy:
    return load_policy(path)


def current_policy(path: Path | None = None) -> Policy:
    """The policy in force (``$CTI_EXCHANGE_POLICIES`` or the repo's ``policies/``), reloaded when files change."""
    target = Path(path) if path else default_policy_dir()
    files = [target] if target.is_file() else sorted(target.glob("*.yaml"))
    mtime = max((os.stat(f).st_mtime for f in files), default=0.0)
    return _cached_policy(str(target), mtime)
