"""Database schema (SQLAlchemy Core), one database per node.

``objects`` is an index: one row per stored version of a STIX object per
collection (the collection's integer key from ``collections``, migration 0009; the
object's id, version, ``date_added`` in that collection, flags); the JSON
text of the version lives once in ``bodies``, keyed by the SHA-256 of its bytes
(migration 0007), however many collections hold it.  A redacted copy released
to a partner is simply another body.  ``seq`` is the tie-breaker of the ``(date_added,
seq)`` keyset order used for paging; ``is_first``/``is_last`` are maintained on
write so ``match[version]=first|last`` are indexed lookups, not scans.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
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

objects = Table(
    "objects",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("coll", Integer, nullable=False),  # collections.key

    Column("stix_id", String(300), nullable=False),
    Column("stix_type", String(250), nullable=False),
    Column("version", String(64), nullable=False),
    Column("version_key", BigInteger, nullable=False),
    Column("spec_version", String(8), nullable=False),
    Column("date_added", BigInteger, nullable=False),
    Column("is_first", Boolean, nullable=False),
    Column("is_last", Boolean, nullable=False),
    # the SHA-256 of the version's JSON text (``bodies.hash``); migration 0007 (the row held the text itself before)
    Column("body_hash", LargeBinary(32), nullable=False),
    # never served or pushed over plain HTTP (an IEP 2.0 marking says encrypt_in_transit: must); migration 0002
    Column("encrypt_in_transit", Boolean, nullable=False, server_default=false()),
    # what the node observed, never what the object claims (migration 0006): 'local:<account>' (a write to the own
    # collection), 'push:<partner>' / 'pull:<partner>' (arrived from that partner), 'partner:<partner>' (arrived from it
    # before origins were recorded), 'release' (written by the policy release); NULL: not known (treated by collection role)
    Column("origin", String(80), nullable=True),
    # on ``coll`` since migration 0009 (on ``collection_id`` before)
    UniqueConstraint("coll", "stix_id", "version_key", name="uq_objects_version"),
    Index("ix_objects_all", "coll", "date_added", "seq"),
    Index("ix_objects_last", "coll", "is_last", "date_added", "seq"),
    Index("ix_objects_first", "coll", "is_first", "date_added", "seq"),
    Index("ix_objects_type", "coll", "stix_type", "is_last", "date_added", "seq"),  # match[type]; migration 0004
    # only the rows flagged encrypt_in_transit (migration 0003)
    Index(
        "ix_objects_encrypted", "coll", "date_added", "seq",
        sqlite_where=text("encrypt_in_transit = 1"), postgresql_where=text("encrypt_in_transit"),
    ),
)

# each distinct JSON text of an object version once, keyed by the SHA-256 of its UTF-8 bytes (migration 0007);
# ``refs``: how many ``objects`` rows reference it (a body goes with its last row)
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

#: ``objects`` rows with their JSON text: every read of a body goes through this join
WITH_BODY = objects.join(bodies, bodies.c.hash == objects.c.body_hash)

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
    Index("ix_audit_object", "object_id"),
)
