"""Database schema (SQLAlchemy Core), one database per node.

Each stored object version is one row of ``versions`` (its id, version and the
SHA-256 of its JSON text, migration 0011), whatever collections hold it; the
text lives once in ``version_bodies``, keyed by the version's key (migration
0012: in insertion order, so a push appends to it instead of inserting into a
random-keyed index).  ``bodies`` holds only the texts of rows that differ from
their version's (redacted copies), keyed by hash (migration 0007).  ``objects``
is an index of collections' rows referencing versions: per collection (its
integer key from ``collections``, migration 0009) the version's ``date_added``
there, its first/last flags, where it came from, and a body of its own only
when it differs (a redacted copy released to a partner).  ``seq`` is the
tie-breaker of the ``(date_added, seq)`` keyset order used for paging;
``is_first``/``is_last`` are maintained on write so ``match[version]=first|last``
are index walks, not scans.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Computed,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    case,
    false,
    func,
    select,
    text,
)

metadata = MetaData()

_SEQ = BigInteger().with_variant(Integer, "sqlite")  # INTEGER PRIMARY KEY = rowid on SQLite

# each collection that ever held a row, by a small integer ``key`` (migration 0009): ``objects.coll`` holds the key, not
# the collection's id (a 36-character UUID repeated in every row, its unique constraint and its five indexes).  A key is
# made by the first write to the collection, in that write's transaction, and never changes nor goes
collections = Table(
    "collections",
    metadata,
    Column("key", Integer, primary_key=True, autoincrement=True),
    Column("collection_id", String(64), nullable=False),
    UniqueConstraint("collection_id", name="uq_collections_id"),
)

# each stored object version once (issue 21, migration 0011): its id, version and JSON text (``body_hash``) whatever
# collections hold it.  ``rows``: how many ``objects`` rows reference it (a version goes with its last row, and its
# body's reference with it).  A collection's rows carry only what is their own (``objects``)
versions = Table(
    "versions",
    metadata,
    Column("key", _SEQ, primary_key=True, autoincrement=True),
    Column("stix_id", String(300), nullable=False),
    Column("version_key", BigInteger, nullable=False),
    Column("version", String(64), nullable=False),
    Column("spec_version", String(8), nullable=False),
    Column("body_hash", LargeBinary(32), nullable=False),
    Column("rows", BigInteger, nullable=False),
    UniqueConstraint("stix_id", "version_key", name="uq_versions_id"),
)

# each version's own JSON text (issue 21, migration 0012), keyed by its ``versions.key``: a new version's text is
# appended (SQLite: the rowid) where a text keyed by its hash (``bodies``) went into a random place of the hash's index,
# about 40% of the pages a push wrote at 100,000 stored objects (bench/wal_bench.py).  It goes with its version
version_bodies = Table(
    "version_bodies",
    metadata,
    Column("key", _SEQ, primary_key=True, autoincrement=False),  # versions.key
    Column("body", Text, nullable=False),
)

#: the ``objects`` table itself: one row per version per collection (what ``object_rows`` writes; reads go through
#: ``objects`` below, which joins in the version's id, version and body)
object_rows = Table(
    "objects",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("coll", Integer, nullable=False),  # collections.key
    Column("ver", BigInteger, nullable=False),  # versions.key (migration 0011: the id, version and spec_version were here)
    Column("stix_type", String(250), nullable=False),  # the version's, kept in the row for ix_objects_type
    Column("date_added", BigInteger, nullable=False),
    Column("is_first", Boolean, nullable=False),
    Column("is_last", Boolean, nullable=False),
    # the SHA-256 of this row's JSON text (``bodies.hash``) where it differs from its version's (a redacted copy released
    # to a partner); NULL: the version's own (``versions.body_hash``), the usual case (migration 0011)
    Column("body_hash", LargeBinary(32), nullable=True),
    # never served or pushed over plain HTTP (an IEP 2.0 marking says encrypt_in_transit: must); migration 0002
    Column("encrypt_in_transit", Boolean, nullable=False, server_default=false()),
    # what the node observed, never what the object claims (migration 0006): 'local:<account>' (a write to the own
    # collection), 'push:<partner>' / 'pull:<partner>' (arrived from that partner), 'partner:<partner>' (arrived from it
    # before origins were recorded), 'release' (written by the policy release); NULL: not known (treated by collection role)
    Column("origin", String(80), nullable=True),
    # on (coll, ver) since migration 0011 (coll, stix_id, version_key before)
    UniqueConstraint("coll", "ver", name="uq_objects_version"),
    # the keyset walk of every page; the flags ride along, so match[version]=last|first pages filter in the index
    # (migration 0011: they had an index each)
    Index("ix_objects_all", "coll", "date_added", "seq", "is_last", "is_first"),
    Index("ix_objects_type", "coll", "stix_type", "is_last", "date_added", "seq"),  # match[type]; migration 0004
    # only the rows flagged encrypt_in_transit (migration 0003)
    Index(
        "ix_objects_encrypted", "coll", "date_added", "seq",
        sqlite_where=text("encrypt_in_transit = 1"), postgresql_where=text("encrypt_in_transit"),
    ),
)

#: what readers query as ``objects``: each row with its version's id, version and spec_version joined in, and
#: ``body_hash`` the row's own text or else its version's (SQLite and PostgreSQL flatten it into the outer query)
objects = (
    select(
        object_rows.c.seq, object_rows.c.coll, versions.c.stix_id, object_rows.c.stix_type, versions.c.version,
        versions.c.version_key, versions.c.spec_version, object_rows.c.date_added, object_rows.c.is_first,
        object_rows.c.is_last, func.coalesce(object_rows.c.body_hash, versions.c.body_hash).label("body_hash"),
        object_rows.c.encrypt_in_transit, object_rows.c.origin, object_rows.c.ver,
        object_rows.c.body_hash.label("own_body_hash"), versions.c.body_hash.label("version_body_hash"),
    )
    .select_from(object_rows.join(versions, versions.c.key == object_rows.c.ver))
    .subquery("obj")
)

# each distinct JSON text of a row that differs from its version's (a redacted copy) once, keyed by the SHA-256 of its
# UTF-8 bytes (migration 0007); ``refs``: how many ``objects`` rows reference it by their own ``body_hash`` (a body goes
# with its last row).  Versions' own texts are in ``version_bodies`` (migration 0012)
bodies = Table(
    "bodies",
    metadata,
    Column("hash", LargeBinary(32), primary_key=True),
    Column("body", Text, nullable=False),
    Column("refs", BigInteger, nullable=False),
)

# which stored batch signature (``x-cti-signature`` with ``members``, extension 1.2.0) covers which object version in a
# collection (migration 0008): ``member`` is the version's member key (``exchange.policy.markings.signed_member``), so
# a release, a push or an inbound check finds the companion of a version without a scan; written with the companion
signature_members = Table(
    "signature_members",
    metadata,
    Column("collection_id", String(64), nullable=False),
    Column("member", String(32), nullable=False),
    Column("signature_id", String(300), nullable=False),
    Index("ix_signature_members", "collection_id", "member"),
)

#: ``objects`` rows joined to their versions' texts: every read of a body selects ``BODY`` from this
WITH_BODY = objects.join(version_bodies, version_bodies.c.key == objects.c.ver)


def body_of(own_hash, version_body):  # type: ignore[no-untyped-def]
    """A row's JSON text: its own (``bodies``, looked up by hash only for a row that has one) or else its version's."""
    return case(
        (own_hash.is_(None), version_body),
        else_=select(bodies.c.body).where(bodies.c.hash == own_hash).scalar_subquery(),
    ).label("body")


#: the JSON text of a row of ``WITH_BODY``
BODY = body_of(objects.c.own_body_hash, version_bodies.c.body)

statuses = Table(
    "statuses",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("api_root", String(64), nullable=False),
    Column("account", String(64), nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("body", Text, nullable=False),
)

accounts = Table(
    "accounts",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("password_hash", String(256), nullable=True),
    Column("partner", String(64), nullable=True),
    Column("updated", BigInteger, nullable=False),
)

grants = Table(
    "grants",
    metadata,
    Column("account", String(64), nullable=False),
    Column("collection_id", String(64), nullable=False),
    Column("permission", String(8), nullable=False),  # 'read' | 'write'
    Column("source", String(8), nullable=False),  # 'config' | 'cli'
    PrimaryKeyConstraint("account", "collection_id", "permission", "source"),
)

# failed logins per account name, shared by every worker on the database (migration 0005):
# the throttle counts the rows of a name within the window
login_failures = Table(
    "login_failures",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("name", String(256), nullable=False),
    Column("at", BigInteger, nullable=False),  # microseconds since the epoch (wall clock: several processes)
    Index("ix_login_failures_name", "name", "at"),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

sync_state = Table(
    "sync_state",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("value", Text, nullable=False),
)

#: entries per run of the audit's object index (``audit.object_bucket``)
AUDIT_BUCKET = 8192

audit = Table(
    "audit",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=False),
    Column("at", BigInteger, nullable=False),
    Column("event", String(32), nullable=False),
    Column("partner", String(64), nullable=True),
    Column("object_id", String(300), nullable=True),
    Column("version", String(64), nullable=True),
    Column("decision", String(32), nullable=True),
    Column("clauses", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # a group entry (issue 21, migration 0010): the JSON list of the partners it stands for, e.g. ``["p1","p2"]``
    # (``partner`` is then NULL); NULL for an entry about one partner or none (``exchange.storage.audit.grouped``)
    Column("partners", Text, nullable=True),
    # which run of ``AUDIT_BUCKET`` consecutive entries the row is in (migration 0013): computed by the database from
    # ``seq``, never written, not hashed.  The object index leads with it, so the entries a batch appends go into the
    # newest run's part of the index (a few hundred pages), not into random places of one index over the whole log, most
    # of whose leaves a release batch touched (bench/README.md); a lookup by object probes each run (``audit.object_filter``)
    Column("object_bucket", BigInteger, Computed(f"seq / {AUDIT_BUCKET}"), nullable=True),
    Index("ix_audit_object_bucket", "object_bucket", "object_id"),
)
