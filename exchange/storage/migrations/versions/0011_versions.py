"""Each stored object version once (issue 21): ``versions`` holds an object version's id, version, ``spec_version``
and the hash of its JSON text (``bodies.hash``), whatever collections hold it, and ``objects.ver`` references it (its
``key``) instead of every collection's row repeating the id, the version and the hash.  A row keeps a ``body_hash`` of
its own only where its text differs from its version's (a redacted copy released to a partner); NULL otherwise.
``versions.rows`` counts the rows referencing a version; ``bodies.refs`` now counts the versions and the rows (own
``body_hash``) referencing a body, not every row.  ``ix_objects_last`` and ``ix_objects_first`` are gone: the flags
ride along in ``ix_objects_all``.

The upgrade, in the upgrade's one transaction (a crash rolls it back whole, the next open redoes it):

1. ``versions`` is filled in one ``INSERT ... SELECT``: one row per distinct ``(stix_id, version_key)`` of
   ``objects`` (a ``GROUP BY`` with the group's smallest ``seq`` and its row count, joined back to that row by
   ``seq``), keyed ``1, 2, ...`` in the order of each version's first row; its ``version``, ``spec_version`` and
   ``body_hash`` are that first row's.  (Rows of one ``(stix_id, version_key)`` under another version string or
   ``spec_version``, e.g. ``...00Z`` beside ``...00.000Z``, take the first row's: the schema has one per version.
   Their text differs, so each such row keeps its own body.)
2. ``objects`` is rebuilt as by 0009 (a new table filled in ``seq`` order joining ``versions``, the old one dropped,
   the new one renamed; ``seq`` values kept, PostgreSQL's sequence moved over; the constraint and the three indexes
   made under their names).
3. ``bodies.refs`` is recounted by the new rule from grouped counts (a temporary table), and a body nothing
   references any more is deleted (none, after a sound 0010 database).

The downgrade rebuilds the 0010 ``objects`` from the join (a row's text: its own, else its version's), recounts
``bodies.refs`` as rows per hash and drops ``versions``.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# the row's own columns, the same at 0010 and 0011 (after ``seq``, ``coll``)
_OWN = ("stix_type", "date_added", "is_first", "is_last", "encrypt_in_transit", "origin")
# (name, columns) of the indexes on ``objects`` besides ``ix_objects_encrypted`` (the same at both revisions)
_INDEXES_0010 = (
    ("ix_objects_all", ("coll", "date_added", "seq")),
    ("ix_objects_last", ("coll", "is_last", "date_added", "seq")),
    ("ix_objects_first", ("coll", "is_first", "date_added", "seq")),
    ("ix_objects_type", ("coll", "stix_type", "is_last", "date_added", "seq")),
)
_INDEXES_0011 = (
    ("ix_objects_all", ("coll", "date_added", "seq", "is_last", "is_first")),
    ("ix_objects_type", ("coll", "stix_type", "is_last", "date_added", "seq")),
)


def _objects_0010(name: str) -> None:
    op.create_table(
        name,
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=False),  # PostgreSQL: the old column's sequence, moved over
        sa.Column("coll", sa.Integer, nullable=False),
        sa.Column("stix_id", sa.String(300), nullable=False),
        sa.Column("stix_type", sa.String(250), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("version_key", sa.BigInteger, nullable=False),
        sa.Column("spec_version", sa.String(8), nullable=False),
        sa.Column("date_added", sa.BigInteger, nullable=False),
        sa.Column("is_first", sa.Boolean, nullable=False),
        sa.Column("is_last", sa.Boolean, nullable=False),
        sa.Column("body_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("encrypt_in_transit", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("origin", sa.String(80), nullable=True),
        sa.UniqueConstraint("coll", "stix_id", "version_key", name="uq_objects_version"),
    )


def _objects_0011(name: str) -> None:
    op.create_table(
        name,
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=False),  # PostgreSQL: the old column's sequence, moved over
        sa.Column("coll", sa.Integer, nullable=False),
        sa.Column("ver", sa.BigInteger, nullable=False),
        sa.Column("stix_type", sa.String(250), nullable=False),
        sa.Column("date_added", sa.BigInteger, nullable=False),
        sa.Column("is_first", sa.Boolean, nullable=False),
        sa.Column("is_last", sa.Boolean, nullable=False),
        sa.Column("body_hash", sa.LargeBinary(32), nullable=True),
        sa.Column("encrypt_in_transit", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("origin", sa.String(80), nullable=True),
        sa.UniqueConstraint("coll", "ver", name="uq_objects_version"),
    )


def _rebuild(make, copy: str, dropped: tuple, made: tuple) -> None:  # type: ignore[no-untyped-def]
    """Replace ``objects`` by a table made by ``make(name)`` and filled by ``copy`` (an ``INSERT ... SELECT`` into
    ``objects_new`` from the old table as ``o``): the old table's ``dropped`` indexes go first (index names are the
    schema's), ``made`` are made on the new one, ``ix_objects_encrypted`` on both."""
    conn = op.get_bind()
    pg = conn.dialect.name == "postgresql"
    for name, _ in dropped:
        op.drop_index(name, table_name="objects")
    op.drop_index("ix_objects_encrypted", table_name="objects")
    if pg:  # constraint names are the schema's on PostgreSQL (SQLite: the table's own, renamed along)
        op.drop_constraint("uq_objects_version", "objects", type_="unique")
    make("objects_new")
    conn.execute(sa.text(copy))
    if pg:
        sequence = conn.execute(sa.text("SELECT pg_get_serial_sequence('objects', 'seq')")).scalar()
        conn.execute(sa.text(f"ALTER SEQUENCE {sequence} OWNED BY objects_new.seq"))
        conn.execute(sa.text(f"ALTER TABLE objects_new ALTER COLUMN seq SET DEFAULT nextval('{sequence}'::regclass)"))
    op.drop_table("objects")
    op.rename_table("objects_new", "objects")
    if pg:
        conn.execute(sa.text("ALTER TABLE objects RENAME CONSTRAINT objects_new_pkey TO objects_pkey"))
    for name, columns in made:
        op.create_index(name, "objects", list(columns))
    op.create_index(
        "ix_objects_encrypted", "objects", ["coll", "date_added", "seq"],
        sqlite_where=sa.text("encrypt_in_transit = 1"), postgresql_where=sa.text("encrypt_in_transit"),
    )


def _recount_bodies(references: str) -> None:
    """Set every body's ``refs`` to the number of times its hash appears in ``references`` (a ``SELECT`` of one
    column ``h``, one row per reference) and delete the bodies it does not name."""
    conn = op.get_bind()
    blob = "BYTEA" if conn.dialect.name == "postgresql" else "BLOB"
    conn.execute(sa.text(f"CREATE TEMPORARY TABLE body_refs (hash {blob} PRIMARY KEY, n BIGINT NOT NULL)"))
    conn.execute(sa.text(f"INSERT INTO body_refs (hash, n) SELECT h, COUNT(*) FROM ({references}) r GROUP BY h"))
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("ANALYZE body_refs"))
    # a join on both backends (SQLite >= 3.33; 0007 already needs 3.35); only the rows whose count changes are written
    conn.execute(sa.text("UPDATE bodies SET refs = r.n FROM body_refs r WHERE r.hash = bodies.hash AND bodies.refs <> r.n"))
    conn.execute(sa.text("DELETE FROM bodies WHERE NOT EXISTS (SELECT 1 FROM body_refs r WHERE r.hash = bodies.hash)"))
    conn.execute(sa.text("DROP TABLE body_refs"))


def upgrade() -> None:
    conn = op.get_bind()
    pg = conn.dialect.name == "postgresql"
    op.create_table(
        "versions",
        sa.Column("key", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("stix_id", sa.String(300), nullable=False),
        sa.Column("version_key", sa.BigInteger, nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("spec_version", sa.String(8), nullable=False),
        sa.Column("body_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("stix_id", "version_key", name="uq_versions_id"),
    )
    # one sort (PostgreSQL: a hash) of the rows by version, then one primary-key lookup per version for its first row
    conn.execute(sa.text(
        'INSERT INTO versions (key, stix_id, version_key, version, spec_version, body_hash, "rows") '
        "SELECT ROW_NUMBER() OVER (ORDER BY g.first_seq), o.stix_id, o.version_key, o.version, o.spec_version, o.body_hash, g.n "
        "FROM (SELECT MIN(seq) AS first_seq, COUNT(*) AS n FROM objects GROUP BY stix_id, version_key) g "
        "JOIN objects o ON o.seq = g.first_seq ORDER BY g.first_seq"
    ))
    if pg:  # the keys were given explicitly: the sequence goes on after the last
        conn.execute(sa.text(
            "SELECT setval(pg_get_serial_sequence('versions', 'key'), COALESCE(MAX(key), 1), MAX(key) IS NOT NULL) FROM versions"
        ))
    own = ", ".join(_OWN)
    _rebuild(
        _objects_0011,
        f"INSERT INTO objects_new (seq, coll, ver, {own}, body_hash) "
        f"SELECT o.seq, o.coll, v.key, {', '.join('o.' + n for n in _OWN)}, "
        "CASE WHEN o.body_hash = v.body_hash THEN NULL ELSE o.body_hash END "
        "FROM objects o JOIN versions v ON v.stix_id = o.stix_id AND v.version_key = o.version_key ORDER BY o.seq",
        _INDEXES_0010, _INDEXES_0011,
    )
    _recount_bodies("SELECT body_hash AS h FROM versions UNION ALL SELECT body_hash AS h FROM objects WHERE body_hash IS NOT NULL")
    if pg:
        conn.execute(sa.text("ANALYZE objects, versions, bodies"))  # the page queries are planned from the new tables' statistics


def downgrade() -> None:
    conn = op.get_bind()
    own = ", ".join(_OWN)
    _rebuild(
        _objects_0010,
        f"INSERT INTO objects_new (seq, coll, stix_id, version, version_key, spec_version, body_hash, {own}) "
        "SELECT o.seq, o.coll, v.stix_id, v.version, v.version_key, v.spec_version, COALESCE(o.body_hash, v.body_hash), "
        f"{', '.join('o.' + n for n in _OWN)} FROM objects o JOIN versions v ON v.key = o.ver ORDER BY o.seq",
        _INDEXES_0011, _INDEXES_0010,
    )
    _recount_bodies("SELECT body_hash AS h FROM objects")
    op.drop_table("versions")
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("ANALYZE objects, bodies"))
