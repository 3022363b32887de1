"""Node configuration: ``collections/<node>/node.yaml``.

A node file declares the node's STIX ``identity``, its TAXII ``api_root``, its
collections (own intelligence, one read collection per partner, one inbox per
partner), the partners it knows and the accounts with their per-collection
``read``/``write`` rights.  Passwords are never in this file: they are set with
``cti-exchange account add`` and stored only as salted hashes in the data dir.

Validated on load; a bad file is a ``ConfigError`` naming the file, line and key.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from exchange.errors import ConfigError

NODE_FILE = "node.yaml"
IDENTITIES_FILE = "identities.json"
_IDENTITY_RE = re.compile(r"^identity--[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")

# partner-receipts: receipts and audit checkpoints exchanged with that partner (exchange.node.receipts; issue 17)
Role = Literal["own", "partner-read", "partner-inbox", "partner-receipts"]


def collections_dir() -> Path:
    """Where node folders live: ``$CTI_EXCHANGE_COLLECTIONS`` or the repo's ``collections/``."""
    env = os.environ.get("CTI_EXCHANGE_COLLECTIONS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "collections"



def normalise_subject(text: str) -> str:
    """An RFC 4514 distinguished name in canonical form (``CN=rok@us``); ``ValueError`` if it is not one."""
    from cryptography import x509

    if not isinstance(text, str) or not text.strip():
        raise ValueError("expected an RFC 4514 distinguished name such as 'CN=rok@us'")
    try:
        name = x509.Name.from_rfc4514_string(text.strip())
    except ValueError as exc:
        detail = f": {exc}" if str(exc) else ""
        raise ValueError(f"{text!r} is not an RFC 4514 distinguished name such as 'CN=rok@us'{detail}") from None
    if not len(name):
        raise ValueError("expected an RFC 4514 distinguished name such as 'CN=rok@us'")
    return name.rfc4514_string()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiRootConfig(_Strict):
    path: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    title: str
    description: str = ""
    max_content_length: int = Field(default=10 * 1024 * 1024, gt=0, le=1024 * 1024 * 1024)
    # hostile input (README "Hostile input"): a POSTed envelope with more objects is refused (413)
    max_objects_per_envelope: int = Field(default=10_000, gt=0, le=1_000_000)
    # a POSTed object nesting objects/arrays deeper than this is refused (400)
    max_object_depth: int = Field(default=64, ge=4, le=200)
    # an upper bound on the JSON values a POST body may hold, checked before parsing (413):
    # parsed JSON can take 30x its size in memory (10 MB of "[]," is 300 MB of lists)
    max_json_values: int = Field(default=500_000, gt=0, le=100_000_000)


class AuthConfig(_Strict):
    """Failed-login throttling: ``max_failed_logins`` within ``failed_login_window`` seconds lock an account name."""

    max_failed_logins: int = Field(default=10, gt=0, le=1_000_000)
    failed_login_window: float = Field(default=300.0, gt=0, le=86_400)


class CollectionConfig(_Strict):
    id: str
    alias: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    title: str
    description: str = ""
    role: Role
    partner: str | None = None

    @field_validator("id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            parsed = uuid.UUID(value)
        except ValueError:
            raise ValueError("must be a UUID (TAXII 2.1 s5.2.1 collection id)") from None
        if str(parsed) != value:
            raise ValueError("must be a lower-case hyphenated UUID")
        return value

    @model_validator(mode="after")
    def _partner_needed(self) -> CollectionConfig:
        if self.role == "own" and self.partner is not None:
            raise ValueError("an 'own' collection names no partner")
        if self.role != "own" and self.partner is None:
            raise ValueError(f"a '{self.role}' collection must name its partner")
        return self


class PartnerConfig(_Strict):
    name: str
    identity: str = Field(pattern=_IDENTITY_RE.pattern)
    # The collection on the partner's node from which this node pulls, and the
    # inbox on the partner's node to which it pushes (aliases there).
    pull_from: str | None = None
    push_to: str | None = None
    # the partner's receipts collection for this node (alias there): where this node's agent sends its
    # signed audit head and reads the partner's receipts and head (exchange.sharing.receipts)
    receipts: str | None = None
    read_only: bool = False


class AccountConfig(_Strict):
    name: str = Field(pattern=_NAME_RE.pattern)
    partner: str | None = None
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    description: str = ""
    # mutual TLS: the subject (RFC 4514, e.g. "CN=rok@us") of the client certificate that
    # authenticates as this account on a node served with --client-ca; such an account must
    # present it (a password alone is refused there), and no other certificate acts as it
    certificate_subject: str | None = None

    @field_validator("certificate_subject")
    @classmethod
    def _subject(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return normalise_subject(value)


class HealthConfig(_Strict):
    """``GET /healthz``: the node answers 503 ``disk`` when its data folder has less free space than this (bytes)."""

    min_free_disk: int = Field(default=64 * 1024 * 1024, ge=0, le=2**62)


def check_public_url(value: object) -> str:
    """A node's public base URL (``public_url``, ``serve --public-url``), ending in ``/``; ``ValueError`` if it is not one.

    An absolute http(s) URL with a host, and optionally a port and a path prefix (a reverse proxy's);
    no credentials, query or fragment.
    """
    from urllib.parse import urlsplit

    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected an http(s) URL such as https://cti.example.org/")
    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) URL with a host, such as https://cti.example.org/")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a public URL carries no credentials (user:password@host)")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError(f"{text!r}: a public URL has no query or fragment")
    if any(c.isspace() for c in text):
        raise ValueError(f"{text!r}: a URL holds no whitespace")
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return f"{parts.scheme.lower()}://{parts.netloc}{path}"


class InboundConfig(_Strict):
    """What this node accepts from a partner's writes and pulls (see ``exchange.policy.inbound``)."""

    require_tlp: bool = True
    require_creator: bool = True
    # identities whose published objects a partner may relay (e.g. MITRE ATT&CK)
    public_sources: tuple[str, ...] = ("identity--c78cb6e5-0c4b-4611-8297-d1b8b55e40b5",)
    # object types that are markings or identities themselves: no TLP marking required
    exempt_types: tuple[str, ...] = ("marking-definition", "extension-definition", "identity")


class SigningConfig(_Strict):
    """Origin signatures (``exchange.node.signing``): where this node's signing key and the trust anchors are.

    ``pki_dir``: a folder made by ``cti-exchange pki init`` holding ``<node>-signing.key``/``.crt``, ``ca.crt``
    (the CA that issues the partners' signing certificates) and, if any key was revoked, ``ca.crl``; the
    environment variable ``CTI_EXCHANGE_PKI_DIR`` overrides it. ``enabled: false`` (or ``CTI_EXCHANGE_SIGNING=off``)
    turns signing and signature checks off (a benchmark's reference run).
    """

    enabled: bool = True
    pki_dir: str | None = None


def write_to_partner_read(account: str, coll: CollectionConfig) -> str:
    """Why a write grant on a ``partner-read`` collection is refused: only the releaser writes there."""
    return (f"account {account!r} may not write to {coll.alias or coll.id} (a partner-read collection): "
            "only the policy release writes what a partner reads")


class NodeConfig(_Strict):
    node: str = Field(pattern=_NAME_RE.pattern)
    title: str
    description: str = ""
    contact: str = ""
    identity: str = Field(pattern=_IDENTITY_RE.pattern)
    api_root: ApiRootConfig
    max_page_size: int = Field(default=1000, gt=0, le=10000)
    collections: tuple[CollectionConfig, ...] = Field(min_length=1)
    partners: dict[str, PartnerConfig] = {}
    accounts: tuple[AccountConfig, ...] = ()
    inbound: InboundConfig = InboundConfig()
    auth: AuthConfig = AuthConfig()
    health: HealthConfig = HealthConfig()
    signing: SigningConfig = SigningConfig()
    joint_identity: str | None = Field(default=None, pattern=_IDENTITY_RE.pattern)
    # the base URL partners reach this node at (discovery's API root URLs); without it, the
    # address the server is bound to; never the request's Host header
    public_url: str | None = None

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return None if value is None else check_public_url(value)

    @model_validator(mode="after")
    def _cross_references(self, info: ValidationInfo) -> NodeConfig:
        ids: set[str] = set()
        aliases: set[str] = set()
        for i, coll in enumerate(self.collections):
            if coll.id in ids:
                raise _at(("collections", i, "id"), f"duplicate collection id {coll.id}")
            if coll.alias in aliases:
                raise _at(("collections", i, "alias"), f"duplicate alias {coll.alias!r}")
            ids.add(coll.id)
            aliases.add(coll.alias)
            if coll.partner is not None and coll.partner not in self.partners:
                raise _at(("collections", i, "partner"), f"unknown partner {coll.partner!r}")
        if not any(c.role == "own" for c in self.collections):
            raise _at(("collections",), "a node needs one 'own' collection")
        self._check_accounts(ids | aliases)
        return self

    def _check_accounts(self, refs: set[str]) -> None:
        """Account names and certificate subjects are unique, partners and collections exist, no write to a partner-read."""
        names: set[str] = set()
        subjects: dict[str, str] = {}
        for i, acct in enumerate(self.accounts):
            if acct.name in names:
                raise _at(("accounts", i, "name"), f"duplicate account {acct.name!r}")
            names.add(acct.name)
            if acct.partner is not None and acct.partner not in self.partners:
                raise _at(("accounts", i, "partner"), f"unknown partner {acct.partner!r}")
            if acct.certificate_subject is not None:
                if acct.certificate_subject in subjects:
                    raise _at(
                        ("accounts", i, "certificate_subject"),
                        f"certificate subject {acct.certificate_subject!r} is already the account {subjects[acct.certificate_subject]!r}",
                    )
                subjects[acct.certificate_subject] = acct.name
            for perm in ("read", "write"):
                for j, ref in enumerate(getattr(acct, perm)):
                    if ref not in refs:
                        raise _at(("accounts", i, perm, j), f"unknown collection {ref!r}")
            for j, ref in enumerate(acct.write):
                coll = next(c for c in self.collections if ref in (c.id, c.alias))
                if coll.role == "partner-read":
                    raise _at(("accounts", i, "write", j), write_to_partner_read(acct.name, coll))

    # -- lookups -------------------------------------------------------------

    def collection(self, ref: str) -> CollectionConfig:
        """A collection by id or alias; ``ConfigError`` if there is none."""
        for coll in self.collections:
            if ref in (coll.id, coll.alias):
                return coll
        known = ", ".join(c.alias for c in self.collections)
        raise ConfigError(f"node {self.node!r} has no collection {ref!r} (known: {known})")

    @property
    def own_collection(self) -> CollectionConfig:
        return next(c for c in self.collections if c.role == "own")

    @property
    def release_sources(self) -> list[CollectionConfig]:
        """Where released objects come from: the own collection, then each partner's inbox (onward sharing)."""
        return [self.own_collection] + [c for c in self.collections if c.role == "partner-inbox"]

    def recipients_of(self, source: CollectionConfig) -> list[str]:
        """The partners a release source goes to: every partner, except an inbox's own sender."""
        return [p for p in self.partners if not (source.role == "partner-inbox" and source.partner == p)]

    def partner_collection(self, partner: str, role: Role) -> CollectionConfig:
        for coll in self.collections:
            if coll.partner == partner and coll.role == role:
                return coll
        raise ConfigError(f"node {self.node!r} has no {role} collection for partner {partner!r}")


class _LocatedError(ValueError):
    """A cross-reference error that knows which key it is about."""

    def __init__(self, loc: tuple, message: str) -> None:
        super().__init__(message)
        self.loc = loc


def _at(loc: tuple, message: str) -> _LocatedError:
    return _LocatedError(loc, message)


def resolve_node_dir(node: str) -> Path:
    """``NODE`` is a node name under the collections dir, or a path to a node folder/file."""
    path = Path(node)
    if path.is_file():
        return path.parent
    if path.is_dir() and (path / NODE_FILE).is_file():
        return path
    candidate = collections_dir() / node
    if (candidate / NODE_FILE).is_file():
        return candidate
    raise ConfigError(f"no node {node!r}: expected {candidate / NODE_FILE}")


def load_node(node: str) -> LoadedNode:
    """Load and validate a node's configuration and its identity object."""
    node_dir = resolve_node_dir(node)
    path = node_dir / NODE_FILE
    from pydantic import ValidationError

    from exchange._yaml import line_of, load_with_lines

    data, lines = load_with_lines(path)
    try:
        config = NodeConfig.model_validate(data)
    except ValidationError as exc:
        located = _located(exc)
        if located is not None:
            loc, msg = located
            line = line_of(lines, loc)
            key = ".".join(str(p) for p in loc)
            where = f"{path}:{line}" if line else str(path)
            raise ConfigError(f"{where}: {key}: {msg}") from exc
        from exchange._yaml import validation_error

        raise validation_error(path, lines, exc) from exc
    identities = load_identities(node_dir.parent / IDENTITIES_FILE, node_dir / IDENTITIES_FILE)
    if config.identity not in identities:
        raise ConfigError(f"{path}:{line_of(lines, ('identity',))}: identity: {config.identity} is not in {IDENTITIES_FILE}")
    for name, partner in config.partners.items():
        if partner.identity not in identities:
            raise ConfigError(
                f"{path}:{line_of(lines, ('partners', name, 'identity'))}: partners.{name}.identity: "
                f"{partner.identity} is not in {IDENTITIES_FILE}"
            )
    return LoadedNode(config=config, path=path, identity=identities[config.identity], identities=identities)


def _located(exc: ValidationError) -> tuple[tuple, str] | None:
    for err in exc.errors():
        ctx = err.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, _LocatedError):
            return tuple(err["loc"]) + inner.loc, str(inner)
    return None


def load_identities(*paths: Path) -> dict[str, dict]:
    """STIX ``identity`` objects (by id) from the bundles that exist among ``paths``."""
    found: dict[str, dict] = {}
    for path in paths:
        if not path.is_file():
            continue
        try:
            bundle = orjson.loads(path.read_bytes())
            objects = bundle["objects"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a STIX bundle with 'objects': {exc}") from exc
        for obj in objects:
            if isinstance(obj, dict) and obj.get("type") == "identity" and "id" in obj:
                found[obj["id"]] = obj
    return found


class LoadedNode(BaseModel):
    """A validated node configuration plus the objects it references."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    config: NodeConfig
    path: Path
    identity: dict
    identities: dict[str, dict]

    @property
    def name(self) -> str:
        return self.config.node
